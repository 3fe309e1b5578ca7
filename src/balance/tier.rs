//! Standby tiers: standbys carry traffic only while no primary is eligible,
//! and primaries take new sessions again as soon as one is.

use crate::vocabulary::Tier;

/// The tier that new sessions go to, given the tiers of the usable backends;
/// `None` when there are none.
pub fn active_tier(usable: impl IntoIterator<Item = Tier>) -> Option<Tier> {
    usable.into_iter().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Tier::{Primary as P, Standby as S};
        let table: [(&[Tier], Option<Tier>); 5] = [
            (&[], None),
            (&[P], Some(P)),
            (&[S], Some(S)),
            (&[S, P, S], Some(P)),
            (&[S, S], Some(S)),
        ];
        for (usable, want) in table {
            assert_eq!(active_tier(usable.iter().copied()), want, "{usable:?}");
        }
    }
}
