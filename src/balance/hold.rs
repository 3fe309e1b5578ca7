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

impl Memory {
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
