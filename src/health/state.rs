//! Rise/fall thresholds: from a stream of probe results to state transitions.
//!
//! A backend starts [`Health::Unknown`] and ineligible; its first result
//! decides whether it is up or down. After that it takes `fall` consecutive
//! failures to go down and `rise` consecutive passes to come back, so one lost
//! probe neither takes a server out nor puts a flapping one back.

use crate::vocabulary::Health;

/// A change of state, returned once when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: Health,
    /// State after.
    pub to: Health,
}

/// Counts consecutive results against the thresholds.
#[derive(Debug, Clone)]
pub struct Tracker {
    health: Health,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Tracker {
    /// A tracker for a backend not yet probed; thresholds below 1 count as 1.
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            health: Health::Unknown,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// A tracker that carries on from a known state (a restarted checker).
    pub fn resume(health: Health, rise: u32, fall: u32) -> Tracker {
        Tracker {
            health,
            ..Tracker::new(rise, fall)
        }
    }

    /// The current state.
    pub fn health(&self) -> Health {
        self.health
    }

    /// True while results disagree with the state (on the way to `rise` or
    /// `fall`): the time to probe faster.
    pub fn settling(&self) -> bool {
        self.streak > 0
    }

    /// Feeds one probe result; returns the transition it caused, if any.
    pub fn observe(&mut self, passed: bool) -> Option<Transition> {
        let to = match (self.health, passed) {
            (Health::Unknown, true) => Health::Up,
            (Health::Unknown, false) => Health::Down,
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                return None;
            }
            (Health::Up, false) | (Health::Down, true) => {
                self.streak += 1;
                let needed = if passed { self.rise } else { self.fall };
                if self.streak < needed {
                    return None;
                }
                if passed {
                    Health::Up
                } else {
                    Health::Down
                }
            }
        };
        let from = self.health;
        self.health = to;
        self.streak = 0;
        Some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Down, Unknown, Up};

    /// Feeds results (`+` pass, `-` fail) and lists the states after each
    /// transition.
    fn run(rise: u32, fall: u32, results: &str) -> Vec<Health> {
        let mut t = Tracker::new(rise, fall);
        results
            .chars()
            .filter_map(|c| t.observe(c == '+'))
            .map(|tr| tr.to)
            .collect()
    }

    #[test]
    fn table() {
        let table: [(u32, u32, &str, &[Health]); 8] = [
            (2, 3, "", &[]),
            (2, 3, "+", &[Up]),
            (2, 3, "-", &[Down]),
            (2, 3, "+--", &[Up]),
            (2, 3, "+---", &[Up, Down]),
            (2, 3, "+--+---", &[Up, Down]),
            (2, 3, "-+-+", &[Down]),
            (2, 3, "-++", &[Down, Up]),
        ];
        for (rise, fall, results, want) in table {
            assert_eq!(
                run(rise, fall, results),
                want,
                "rise {rise} fall {fall} {results}"
            );
        }
        assert_eq!(run(1, 1, "+-+-"), [Up, Down, Up, Down]);
        assert_eq!(run(0, 0, "+-"), [Up, Down], "zero thresholds act as one");
    }

    #[test]
    fn transitions_name_both_ends() {
        let mut t = Tracker::new(1, 1);
        assert_eq!(t.health(), Unknown);
        assert_eq!(
            t.observe(false),
            Some(Transition {
                from: Unknown,
                to: Down
            })
        );
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), Some(Transition { from: Down, to: Up }));
    }

    #[test]
    fn resumes_from_a_known_state() {
        let mut t = Tracker::resume(Up, 2, 1);
        assert_eq!(t.health(), Up);
        assert_eq!(t.observe(false).map(|tr| tr.to), Some(Down));
    }

    #[test]
    fn health_round_trips_through_u8() {
        for h in [Unknown, Up, Down] {
            assert_eq!(Health::from_u8(h as u8), h);
        }
    }
}
