//! Choosing one backend of a pool for a new session: pure code, no IO.
//!
//! [`pick`] first narrows the pool to one tier ([`tier`]): primaries while any
//! primary is eligible, otherwise standbys. Within that tier it applies the
//! pool's policy: weighted least-connections ([`least_conn`]) or smooth
//! weighted round robin ([`wrr`]). Backends already tried for this client are
//! excluded, so a connect retry lands elsewhere.

pub mod eligibility;
pub mod hold;
pub mod least_conn;
pub mod tier;
pub mod wrr;

use crate::vocabulary::{Balance, Tier};
pub use wrr::SmoothWrr;

/// What the balancer needs to know about one backend at the moment of a pick.
pub trait Candidate {
    /// Relative share, `1..=256`.
    fn weight(&self) -> u32;
    /// Primary or standby.
    fn tier(&self) -> Tier;
    /// Sessions open to it now.
    fn active(&self) -> u64;
    /// Healthy and allowed to take new sessions.
    fn eligible(&self) -> bool;
}

/// The weight of a backend `since` its return from down, ramping linearly
/// from 1 to `weight` over `window` (slow start); full weight outside it.
pub fn ramped_weight(
    weight: u32,
    since: Option<std::time::Duration>,
    window: std::time::Duration,
) -> u32 {
    match since {
        Some(elapsed) if elapsed < window && !window.is_zero() => {
            let share = u128::from(weight) * elapsed.as_millis() / window.as_millis();
            u32::try_from(share)
                .unwrap_or(weight)
                .clamp(1, weight.max(1))
        }
        _ => weight,
    }
}

/// Per-pool state that a policy keeps between picks.
#[derive(Debug, Default)]
pub struct PickState {
    /// Rotates the starting point of least-connections scans so that equal
    /// backends share short sessions instead of the first one taking them all.
    pub rotation: usize,
    /// Smooth round-robin counters.
    pub wrr: SmoothWrr,
}

/// Picks a backend index from `members`, skipping `excluded`; `None` when no
/// backend is eligible.
pub fn pick<C: Candidate>(
    policy: Balance,
    members: &[C],
    excluded: &[usize],
    state: &mut PickState,
) -> Option<usize> {
    let usable = |i: usize, c: &C| c.eligible() && !excluded.contains(&i);
    let tier = tier::active_tier(
        members
            .iter()
            .enumerate()
            .filter(|(i, c)| usable(*i, c))
            .map(|(_, c)| c.tier()),
    )?;
    let allowed = |i: usize, c: &C| usable(i, c) && c.tier() == tier;
    match policy {
        Balance::LeastConnections => {
            state.rotation = state.rotation.wrapping_add(1);
            least_conn::pick(members, allowed, state.rotation)
        }
        Balance::WeightedRoundRobin => state.wrr.pick(members, allowed),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A plain candidate for table tests.
    use super::Candidate;
    use crate::vocabulary::Tier;

    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Member {
        pub(crate) weight: u32,
        pub(crate) tier: Tier,
        pub(crate) active: u64,
        pub(crate) eligible: bool,
    }

    pub(crate) fn member(weight: u32) -> Member {
        Member {
            weight,
            tier: Tier::Primary,
            active: 0,
            eligible: true,
        }
    }

    impl Candidate for Member {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn tier(&self) -> Tier {
            self.tier
        }
        fn active(&self) -> u64 {
            self.active
        }
        fn eligible(&self) -> bool {
            self.eligible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{member, Member};
    use super::*;

    fn standby(weight: u32) -> Member {
        Member {
            tier: Tier::Standby,
            ..member(weight)
        }
    }

    #[test]
    fn standbys_only_while_no_primary_is_eligible() {
        let mut members = vec![member(1), member(1), standby(1)];
        let mut state = PickState::default();
        for policy in [Balance::LeastConnections, Balance::WeightedRoundRobin] {
            members[0].eligible = true;
            members[1].eligible = false;
            assert_eq!(pick(policy, &members, &[], &mut state), Some(0));
            members[0].eligible = false;
            assert_eq!(
                pick(policy, &members, &[], &mut state),
                Some(2),
                "all primaries down"
            );
            members[1].eligible = true;
            assert_eq!(
                pick(policy, &members, &[], &mut state),
                Some(1),
                "a primary is back"
            );
        }
    }

    #[test]
    fn excluded_backends_are_skipped_down_to_standbys() {
        let members = vec![member(1), member(1), standby(1)];
        let mut state = PickState::default();
        let first = pick(Balance::LeastConnections, &members, &[], &mut state).unwrap();
        let second = pick(Balance::LeastConnections, &members, &[first], &mut state).unwrap();
        assert_ne!(first, second);
        assert!(second < 2, "another primary comes before the standby");
        assert_eq!(
            pick(Balance::WeightedRoundRobin, &members, &[0, 1], &mut state),
            Some(2)
        );
        assert_eq!(
            pick(
                Balance::WeightedRoundRobin,
                &members,
                &[0, 1, 2],
                &mut state
            ),
            None
        );
    }

    #[test]
    fn slow_start_ramps_the_weight() {
        let window = std::time::Duration::from_secs(100);
        let at = |s: u64| Some(std::time::Duration::from_secs(s));
        let table = [
            (None, 200),
            (at(0), 1),
            (at(10), 20),
            (at(50), 100),
            (at(99), 198),
            (at(100), 200),
            (at(500), 200),
        ];
        for (since, want) in table {
            assert_eq!(ramped_weight(200, since, window), want, "{since:?}");
        }
        assert_eq!(ramped_weight(1, at(10), window), 1);
    }

    #[test]
    fn nothing_eligible_gives_none() {
        let members = vec![
            Member {
                eligible: false,
                ..member(1)
            },
            Member {
                eligible: false,
                ..standby(1)
            },
        ];
        let mut state = PickState::default();
        assert_eq!(
            pick(Balance::LeastConnections, &members, &[], &mut state),
            None
        );
        assert_eq!(
            pick(
                Balance::WeightedRoundRobin,
                &[] as &[Member],
                &[],
                &mut state
            ),
            None
        );
    }
}
