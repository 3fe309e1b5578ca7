//! Holding a healthy backend out of rotation: fail-back delay for a backend
//! that returns from down (`failback = "auto" | "manual" | "<duration>"`), and
//! flap damping for one that changes state too often (an exponential
//! hold-down). Pure code: time comes in as a parameter.

use std::collections::VecDeque;
use std::time::Instant;

use crate::vocabulary::{Failback, Health, HoldPolicy};

/// Why a healthy backend is held out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Flapping: held down until the hold-down ends.
    Flapping,
    /// Back from down: waiting for the fail-back rule.
    Failback,
}

impl Held {
    /// Lower-case words for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Flapping => "flapping",
            Held::Failback => "fail-back",
        }
    }
}

/// What the controller remembers about one member between decisions.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    last: Option<Health>,
    up_since: Option<Instant>,
    returned: bool,
    approved: bool,
    flips: VecDeque<Instant>,
    damped_until: Option<Instant>,
    level: u32,
}

/// A [`Memory`] with its moments as ages at one instant: what crosses to
/// another process, whose clock has other instants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aged {
    /// The health last seen.
    pub last: Option<Health>,
    /// How long it has been up, if it is.
    pub up_for: Option<std::time::Duration>,
    /// It came back from down and waits for its fail-back.
    pub returned: bool,
    /// An operator approved the fail-back.
    pub approved: bool,
    /// How long ago each recent change of state was.
    pub flips_ago: Vec<std::time::Duration>,
    /// How long the hold-down still lasts.
    pub damped_for: Option<std::time::Duration>,
    /// The hold-down's level.
    pub level: u32,
}

impl Memory {
    /// This memory as ages at `now`.
    pub fn aged(&self, now: Instant) -> Aged {
        Aged {
            last: self.last,
            up_for: self.up_since.map(|t| now.saturating_duration_since(t)),
            returned: self.returned,
            approved: self.approved,
            flips_ago: self
                .flips
                .iter()
                .map(|t| now.saturating_duration_since(*t))
                .collect(),
            damped_for: self.damped_until.map(|t| t.saturating_duration_since(now)),
            level: self.level,
        }
    }

    /// The memory `aged` describes, at `now`.
    pub fn from_aged(aged: &Aged, now: Instant) -> Memory {
        let ago = |d: std::time::Duration| now.checked_sub(d).unwrap_or(now);
        Memory {
            last: aged.last,
            up_since: aged.up_for.map(ago),
            returned: aged.returned,
            approved: aged.approved,
            flips: aged.flips_ago.iter().map(|d| ago(*d)).collect(),
            damped_until: aged.damped_for.map(|d| now + d),
            level: aged.level,
        }
    }

    /// Takes the backend's health at `now`; returns whether it is held out
    /// and when the answer may change by itself.
    pub fn update(
        &mut self,
        health: Health,
        now: Instant,
        policy: &HoldPolicy,
    ) -> (Option<Held>, Option<Instant>) {
        if self.last != Some(health) {
            self.transition(health, now, policy);
        }
        let mut wake = None;
        if let Some(until) = self.damped_until {
            if until > now {
                return (Some(Held::Flapping), Some(until));
            }
            // Quiet for a whole window after the last hold-down: start over.
            if self.flips.is_empty() && now >= until + policy.flap_window {
                self.level = 0;
                self.damped_until = None;
            } else {
                wake = Some(until + policy.flap_window);
            }
        }
        if health != Health::Up || !self.returned {
            return (None, wake);
        }
        match policy.failback {
            Failback::Auto => self.returned = false,
            Failback::Manual if self.approved => self.returned = false,
            Failback::Manual => return (Some(Held::Failback), wake),
            Failback::After(d) => {
                let ready = self.up_since.map_or(now, |t| t + d);
                if ready > now {
                    return (Some(Held::Failback), Some(ready));
                }
                self.returned = false;
            }
        }
        (None, wake)
    }

    /// An operator allows a held returning backend back in.
    pub fn approve(&mut self) {
        self.approved = true;
    }

    fn transition(&mut self, health: Health, now: Instant, policy: &HoldPolicy) {
        let before = self.last.replace(health);
        if before.is_some_and(|h| h != Health::Unknown) {
            self.flips.push_back(now);
        }
        if health == Health::Up {
            self.up_since = Some(now);
            self.returned = before == Some(Health::Down);
            self.approved = false;
        }
        while self
            .flips
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > policy.flap_window)
        {
            self.flips.pop_front();
        }
        let threshold = usize::try_from(policy.flap_threshold).unwrap_or(usize::MAX);
        if threshold > 0 && self.flips.len() >= threshold {
            let factor = 1u32.checked_shl(self.level).unwrap_or(u32::MAX);
            let hold = policy
                .flap_hold
                .saturating_mul(factor)
                .min(policy.flap_hold_max);
            self.damped_until = Some(now + hold);
            self.level = self.level.saturating_add(1);
            self.flips.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use Health::{Down, Up};

    fn policy(failback: Failback) -> HoldPolicy {
        HoldPolicy {
            failback,
            flap_threshold: 4,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(10),
            flap_hold_max: Duration::from_secs(25),
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    /// A memory carried to another process (another clock) as ages decides
    /// the same from there on: a held fail-back stays held, a flapping
    /// backend stays damped for what was left.
    #[test]
    fn a_memory_carried_as_ages_decides_the_same() {
        let t0 = Instant::now();
        let p = policy(Failback::Manual);
        let mut flapping = Memory::default();
        let mut returned = Memory::default();
        for (i, h) in [Up, Down, Up, Down, Up, Down, Up].into_iter().enumerate() {
            let at = secs(t0, i as u64);
            flapping.update(h, at, &p);
        }
        returned.update(Up, t0, &p);
        returned.update(Down, secs(t0, 1), &p);
        returned.update(Up, secs(t0, 2), &p);
        let then = secs(t0, 7);
        // The other process's clock is an hour further on.
        let elsewhere = then + Duration::from_secs(3600);
        for m in [&flapping, &returned] {
            let carried = Memory::from_aged(&m.aged(then), elsewhere);
            assert_eq!(carried.aged(elsewhere), m.aged(then));
            for later in [1, 5, 30, 120] {
                let (mut here, mut there) = (m.clone(), carried.clone());
                assert_eq!(
                    here.update(Up, secs(then, later), &p).0,
                    there.update(Up, secs(elsewhere, later), &p).0,
                    "{later}s on"
                );
            }
        }
        assert!(
            flapping.clone().update(Up, then, &p).0.is_some(),
            "the flapping one is held"
        );
        assert_eq!(
            returned.clone().update(Up, then, &p).0,
            Some(Held::Failback)
        );
    }

    #[test]
    fn the_first_up_is_never_held() {
        let t0 = Instant::now();
        for fb in [
            Failback::Auto,
            Failback::Manual,
            Failback::After(Duration::from_secs(30)),
        ] {
            let mut m = Memory::default();
            assert_eq!(m.update(Health::Unknown, t0, &policy(fb)).0, None);
            assert_eq!(m.update(Up, secs(t0, 1), &policy(fb)).0, None, "{fb:?}");
        }
    }

    #[test]
    fn failback_after_a_stable_period() {
        let t0 = Instant::now();
        let p = policy(Failback::After(Duration::from_secs(30)));
        let mut m = Memory::default();
        m.update(Up, t0, &p);
        m.update(Down, secs(t0, 5), &p);
        assert_eq!(
            m.update(Up, secs(t0, 10), &p),
            (Some(Held::Failback), Some(secs(t0, 40)))
        );
        assert_eq!(m.update(Up, secs(t0, 39), &p).0, Some(Held::Failback));
        assert_eq!(m.update(Up, secs(t0, 40), &p).0, None);
        // Going down again inside the period restarts it (damping off here:
        // four transitions in a minute would count as flapping).
        let p = HoldPolicy {
            flap_threshold: 0,
            ..p
        };
        let mut m = Memory::default();
        m.update(Up, t0, &p);
        m.update(Down, secs(t0, 1), &p);
        m.update(Up, secs(t0, 2), &p);
        m.update(Down, secs(t0, 20), &p);
        assert_eq!(m.update(Up, secs(t0, 25), &p).1, Some(secs(t0, 55)));
    }

    #[test]
    fn manual_failback_waits_for_the_operator() {
        let t0 = Instant::now();
        let p = policy(Failback::Manual);
        let mut m = Memory::default();
        m.update(Up, t0, &p);
        m.update(Down, secs(t0, 1), &p);
        assert_eq!(m.update(Up, secs(t0, 2), &p).0, Some(Held::Failback));
        assert_eq!(m.update(Up, secs(t0, 3600), &p).0, Some(Held::Failback));
        m.approve();
        assert_eq!(m.update(Up, secs(t0, 3601), &p).0, None);
        assert_eq!(
            Memory::default().update(Up, t0, &p).0,
            None,
            "auto on first start"
        );
    }

    #[test]
    fn flapping_is_held_down_longer_each_time() {
        let t0 = Instant::now();
        let p = policy(Failback::Auto);
        let mut m = Memory::default();
        m.update(Up, t0, &p);
        // Four transitions within the window: held for 10 s.
        for (s, h) in [(1, Down), (2, Up), (3, Down)] {
            assert_eq!(m.update(h, secs(t0, s), &p).0, None);
        }
        assert_eq!(
            m.update(Up, secs(t0, 4), &p),
            (Some(Held::Flapping), Some(secs(t0, 14)))
        );
        assert_eq!(m.update(Up, secs(t0, 13), &p).0, Some(Held::Flapping));
        assert_eq!(m.update(Up, secs(t0, 14), &p).0, None);
        // Flapping again: 20 s, then capped at 25 s.
        for (s, h) in [(15, Down), (16, Up), (17, Down)] {
            m.update(h, secs(t0, s), &p);
        }
        assert_eq!(m.update(Up, secs(t0, 18), &p).1, Some(secs(t0, 38)));
        for (s, h) in [(40, Down), (41, Up), (42, Down)] {
            m.update(h, secs(t0, s), &p);
        }
        assert_eq!(m.update(Up, secs(t0, 43), &p).1, Some(secs(t0, 68)));
        // A quiet window after the hold-down forgets the history.
        assert_eq!(m.update(Up, secs(t0, 128), &p).0, None);
        for (s, h) in [(130, Down), (131, Up), (132, Down)] {
            m.update(h, secs(t0, s), &p);
        }
        assert_eq!(
            m.update(Up, secs(t0, 133), &p).1,
            Some(secs(t0, 143)),
            "back to the first hold"
        );
    }

    #[test]
    fn slow_transitions_are_not_flapping() {
        let t0 = Instant::now();
        let p = policy(Failback::Auto);
        let mut m = Memory::default();
        for (i, h) in [Up, Down, Up, Down, Up, Down, Up].iter().enumerate() {
            let at = secs(t0, 100 * u64::try_from(i).unwrap());
            assert_eq!(m.update(*h, at, &p).0, None);
        }
        let off = HoldPolicy {
            flap_threshold: 0,
            ..p
        };
        let mut m = Memory::default();
        for (i, h) in [Up, Down, Up, Down, Up].iter().enumerate() {
            assert_eq!(
                m.update(*h, secs(t0, u64::try_from(i).unwrap()), &off).0,
                None
            );
        }
    }
}
