//! Smooth weighted round robin: each pick adds every allowed backend's weight
//! to its counter, takes the highest counter and subtracts the total from it.
//! Weights 5, 1, 1 give `a a b a c a a`: interleaved, never in bursts.

use super::Candidate;

/// Counters, one per member index; grows to the pool's size on first use.
#[derive(Debug, Default, Clone)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// Picks among members for which `allowed(index, member)` holds.
    pub fn pick<C: Candidate>(
        &mut self,
        members: &[C],
        allowed: impl Fn(usize, &C) -> bool,
    ) -> Option<usize> {
        if self.current.len() != members.len() {
            self.current = vec![0; members.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        let mut best_value = i64::MIN;
        for (i, (c, current)) in members.iter().zip(self.current.iter_mut()).enumerate() {
            if !allowed(i, c) {
                continue;
            }
            let weight = i64::from(c.weight());
            *current += weight;
            total += weight;
            if *current > best_value {
                best_value = *current;
                best = Some(i);
            }
        }
        let chosen = best?;
        if let Some(c) = self.current.get_mut(chosen) {
            *c -= total;
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{member, Member};
    use super::*;
    use proptest::prelude::*;

    fn sequence(weights: &[u32], n: usize) -> String {
        let members: Vec<Member> = weights.iter().map(|&w| member(w)).collect();
        let mut wrr = SmoothWrr::default();
        (0..n)
            .map(|_| {
                char::from(b'a' + u8::try_from(wrr.pick(&members, |_, _| true).unwrap()).unwrap())
            })
            .collect()
    }

    #[test]
    fn interleaves_by_weight() {
        let table: [(&[u32], &str); 5] = [
            (&[5, 1, 1], "aabacaa"),
            (&[1, 1], "abab"),
            (&[3, 1], "aaba"),
            (&[1, 2, 3], "cbacbc"),
            (&[1], "aaa"),
        ];
        for (weights, want) in table {
            assert_eq!(sequence(weights, want.len()), want, "{weights:?}");
        }
    }

    #[test]
    fn skips_disallowed_members() {
        let members = [member(5), member(1), member(1)];
        let mut wrr = SmoothWrr::default();
        let picks: Vec<_> = (0..4)
            .map(|_| wrr.pick(&members, |i, _| i != 0).unwrap())
            .collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        assert_eq!(wrr.pick(&members, |_, _| false), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]
        #[test]
        fn each_round_gives_exactly_weight_picks(weights in prop::collection::vec(1u32..=256, 1..12), rounds in 1usize..4) {
            let members: Vec<Member> = weights.iter().map(|&w| member(w)).collect();
            let sum: usize = weights.iter().map(|&w| w as usize).sum();
            let mut wrr = SmoothWrr::default();
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..rounds * sum {
                counts[wrr.pick(&members, |_, _| true).unwrap()] += 1;
            }
            let want: Vec<usize> = weights.iter().map(|&w| rounds * w as usize).collect();
            prop_assert_eq!(counts, want);
        }
    }
}
