//! Table tests for eligibility decisions.

use std::time::Duration;

use super::*;
use crate::vocabulary::OnDown;

fn routing(role: PoolRole) -> Routing {
    Routing {
        role,
        on_multiple_writers: MultipleWriters::Keep,
        max_lag: None,
        readmit_lag: None,
        lag_unknown: LagUnknown::Exclude,
        fallback: Fallback::Writer,
        on_down: OnDown::Keep,
        greeting_gate: false,
        greeting_timeout: Duration::from_secs(1),
        hold_timeout: Duration::from_secs(5),
        hold_max: 1000,
        slow_start: None,
        on_primary_return: OnDown::Keep,
        on_remove: OnDown::Keep,
        send_proxy: None,
        hold: crate::vocabulary::HoldPolicy {
            failback: crate::vocabulary::Failback::Auto,
            flap_threshold: 0,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(10),
            flap_hold_max: Duration::from_secs(10),
        },
    }
}

fn view(health: Health, role: Role) -> View {
    View {
        health,
        role,
        lag: Lag::NotReplica,
        tier: Tier::Primary,
        lagged_out: false,
        held: false,
    }
}

const UP_W: View = View {
    health: Health::Up,
    role: Role::Writable,
    lag: Lag::NotReplica,
    tier: Tier::Primary,
    lagged_out: false,
    held: false,
};
const UP_R: View = View {
    health: Health::Up,
    role: Role::ReadOnly,
    lag: Lag::Seconds(0),
    tier: Tier::Primary,
    lagged_out: false,
    held: false,
};
const DOWN: View = View {
    health: Health::Down,
    role: Role::Writable,
    lag: Lag::Unknown(String::new()),
    tier: Tier::Primary,
    lagged_out: false,
    held: false,
};

#[test]
fn any_pools_take_every_healthy_backend() {
    let d = decide(
        &routing(PoolRole::Any),
        &[UP_W, UP_R, DOWN, view(Health::Unknown, Role::Unknown)],
        None,
    );
    assert_eq!(d.eligible, [true, true, false, false]);
}

#[test]
fn a_writer_pool_has_at_most_one_writer() {
    let r = routing(PoolRole::Writer);
    let table: [(&[View], Option<usize>, Option<usize>); 6] = [
        (&[UP_R, UP_W, UP_R], None, Some(1)),
        (&[UP_W, UP_W], None, Some(0)), // deterministic: config order
        (&[UP_W, UP_W], Some(1), Some(1)), // sticky: the current writer stays
        (&[DOWN, UP_W], Some(0), Some(1)), // the current writer died
        (&[UP_R, UP_R], Some(0), None), // demoted, nobody writable
        (
            &[
                View {
                    tier: Tier::Standby,
                    ..UP_W
                },
                UP_W,
            ],
            None,
            Some(1),
        ), // primaries before standbys
    ];
    for (views, current, want) in table {
        let d = decide(&r, views, current);
        assert_eq!(d.writer, want, "{views:?} current {current:?}");
        assert_eq!(
            d.eligible.iter().filter(|e| **e).count(),
            usize::from(want.is_some())
        );
    }
    let unknown = View {
        health: Health::Unknown,
        ..UP_W
    };
    assert_eq!(
        decide(&r, &[unknown.clone(), UP_W], None).writer,
        None,
        "wait for the higher-ranked backend's first probe"
    );
    assert_eq!(
        decide(&r, &[UP_W, unknown.clone()], None).writer,
        Some(0),
        "a lower-ranked unknown does not matter"
    );
    assert_eq!(
        decide(&r, &[unknown.clone(), UP_W], Some(1)).writer,
        Some(1),
        "a current writer is kept"
    );
    let refuse = Routing {
        on_multiple_writers: MultipleWriters::Refuse,
        ..r
    };
    let d = decide(&refuse, &[UP_W, UP_W], Some(0));
    assert_eq!(
        (d.writer, d.writable.len()),
        (None, 2),
        "refuse sends writes nowhere"
    );
    assert_eq!(decide(&refuse, &[UP_W, UP_R], None).writer, Some(0));
}

#[test]
fn readers_follow_lag_with_hysteresis() {
    let r = Routing {
        max_lag: Some(Duration::from_secs(10)),
        readmit_lag: Some(Duration::from_secs(5)),
        ..routing(PoolRole::Reader)
    };
    let lagging = |s: u64, out: bool| View {
        lag: Lag::Seconds(s),
        lagged_out: out,
        ..UP_R
    };
    let table = [
        (lagging(3, false), true, false),
        (lagging(10, false), true, false), // at the limit: still in
        (lagging(11, false), false, true), // above: out
        (lagging(7, true), false, true),   // between the limits: stays out
        (lagging(5, true), true, false),   // at readmit: back in
    ];
    for (v, eligible, out) in table {
        let d = decide(&r, &[v.clone(), UP_W], None);
        assert_eq!((d.eligible[0], d.lagged_out[0]), (eligible, out), "{v:?}");
    }
}

#[test]
fn unknown_lag_writers_and_fallback() {
    let r = Routing {
        max_lag: Some(Duration::from_secs(10)),
        ..routing(PoolRole::Reader)
    };
    let unknown = View {
        lag: Lag::Unknown(String::new()),
        ..UP_R
    };
    let d = decide(&r, &[unknown.clone(), UP_W], None);
    assert_eq!(
        (d.eligible.clone(), d.fallback),
        (vec![false, true], true),
        "excluded, then fallback to the writer"
    );
    let include = Routing {
        lag_unknown: LagUnknown::Include,
        ..r.clone()
    };
    assert_eq!(
        decide(&include, &[unknown.clone(), UP_W], None).eligible,
        [true, false]
    );
    let none = Routing {
        fallback: Fallback::None,
        ..r.clone()
    };
    let d = decide(&none, &[unknown.clone(), UP_W], None);
    assert_eq!((d.eligible, d.fallback), (vec![false, false], false));
    assert_eq!(
        decide(
            &routing(PoolRole::Reader),
            std::slice::from_ref(&unknown),
            None
        )
        .eligible,
        [true],
        "no max_lag: lag is not judged"
    );
}

#[test]
fn held_backends_are_not_eligible() {
    let held = View { held: true, ..UP_W };
    assert_eq!(
        decide(&routing(PoolRole::Any), &[held.clone(), UP_R], None).eligible,
        [false, true]
    );
    assert_eq!(
        decide(&routing(PoolRole::Writer), &[held.clone(), UP_W], Some(0)).writer,
        Some(1)
    );
}
