//! Weighted least-connections: the backend with the fewest active sessions per
//! unit of weight. Ties go to the first tied backend at or after a rotating
//! start, so equal backends share a stream of short sessions.

use std::cmp::Ordering;

use super::Candidate;

/// Picks among members for which `allowed(index, member)` holds.
pub fn pick<C: Candidate>(
    members: &[C],
    allowed: impl Fn(usize, &C) -> bool,
    start: usize,
) -> Option<usize> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let mut best: Option<(usize, &C)> = None;
    for offset in 0..n {
        let i = (start.wrapping_add(offset)) % n;
        let Some(c) = members.get(i) else { continue };
        if !allowed(i, c) {
            continue;
        }
        if best.is_none_or(|(_, b)| load_cmp(c, b) == Ordering::Less) {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

/// Compares active/weight without division: a.active * b.weight vs b.active * a.weight.
fn load_cmp<C: Candidate>(a: &C, b: &C) -> Ordering {
    let left = u128::from(a.active()) * u128::from(b.weight());
    let right = u128::from(b.active()) * u128::from(a.weight());
    left.cmp(&right)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{member, Member};
    use super::*;

    fn with_active(weight: u32, active: u64) -> Member {
        Member {
            active,
            ..member(weight)
        }
    }

    #[test]
    fn fewest_sessions_per_weight_wins() {
        let all = |_: usize, _: &Member| true;
        let table: [(&[Member], Option<usize>); 5] = [
            (&[], None),
            (&[with_active(1, 5), with_active(1, 2)], Some(1)),
            // 4/2 = 2 per weight beats 3/1.
            (&[with_active(1, 3), with_active(2, 4)], Some(1)),
            // 6/3 = 2 equals 2/1: tie, the first from start 0 wins.
            (
                &[with_active(3, 6), with_active(1, 2), with_active(1, 3)],
                Some(0),
            ),
            (
                &[with_active(256, u64::MAX), with_active(1, u64::MAX)],
                Some(0),
            ),
        ];
        for (members, want) in table {
            assert_eq!(pick(members, all, 0), want, "{members:?}");
        }
    }

    #[test]
    fn ties_rotate_with_the_start() {
        let members = [member(1), member(1), member(1)];
        let picks: Vec<_> = (0..6)
            .map(|s| pick(&members, |_, _| true, s).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn disallowed_members_are_skipped() {
        let members = [with_active(1, 0), with_active(1, 9)];
        assert_eq!(pick(&members, |i, _| i != 0, 0), Some(1));
        assert_eq!(pick(&members, |_, _| false, 0), None);
    }

    #[test]
    fn long_lived_sessions_even_out() {
        // Each pick opens a session that stays open: 40 picks over two equal
        // backends must end 20/20, and over weights 3:1 end 30/10.
        for (weights, want) in [([1, 1], [20u64, 20]), ([3, 1], [30, 10])] {
            let mut members = weights.map(member);
            for s in 0..40 {
                let i = pick(&members, |_, _| true, s).unwrap();
                members[i].active += 1;
            }
            assert_eq!(members.map(|m| m.active), want);
        }
    }
}
