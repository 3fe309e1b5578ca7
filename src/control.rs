//! The routing side of the control loop: whenever a checker reports a change,
//! decide again which backends of each pool may take new sessions
//! ([`crate::balance::eligibility`]), publish it into the members' atomics,
//! log each transition once, and close the sessions that a pool's `on_down`
//! policy says must go.

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::balance::eligibility::{decide, Decision, View};
use crate::cluster::snapshot::PoolDecision;
use crate::cluster::{Member, Pool, Snapshot};
use crate::vocabulary::{Health, HoldPolicy, Lag, OnDown, PoolRole, Role, Tier};

/// Decides again on every change, and when a hold ends, until `stop` is
/// cancelled.
pub async fn run(routes: Arc<ArcSwap<Snapshot>>, changed: Arc<Notify>, stop: CancellationToken) {
    loop {
        let snapshot = routes.load_full();
        let now = Instant::now();
        let wake = snapshot
            .pools()
            .filter_map(|pool| evaluate(pool, now))
            .min();
        let next = async {
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = changed.notified() => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => changed.notified().await,
            }
        };
        if stop.run_until_cancelled(next).await.is_none() {
            return;
        }
    }
}

/// Decides one pool at `now` and applies the decision; returns when a hold
/// ends by itself and the pool must be decided again.
pub fn evaluate(pool: &Pool, now: Instant) -> Option<Instant> {
    let mut wake = None;
    let views: Vec<View> = pool
        .members
        .iter()
        .map(|m| {
            let (view, member_wake) = view(m, &pool.config.routing.hold, now);
            wake = wake.into_iter().chain(member_wake).min();
            if view.held && m.is_eligible() && m.state.admin_override(now).is_none() {
                tracing::info!(pool = %pool.config.name, backend = %m.name, "backend held out: flapping (hold-down)");
            }
            view
        })
        .collect();
    let mut decided = pool.decided.lock().unwrap_or_else(PoisonError::into_inner);
    let decision = decide(&pool.config.routing, &views, decided.writer);
    for ((member, view), (&eligible, &lagged_out)) in pool
        .members
        .iter()
        .zip(&views)
        .zip(decision.eligible.iter().zip(&decision.lagged_out))
    {
        if member.set_lagged_out(lagged_out) != lagged_out {
            let lag = member
                .state
                .lag()
                .map_or_else(|| "unknown".to_owned(), |l| format!("{l:?}"));
            if lagged_out {
                tracing::warn!(pool = %pool.config.name, backend = %member.name, "replica out of rotation: lag {lag} above max_lag");
            } else {
                tracing::info!(pool = %pool.config.name, backend = %member.name, "replica back in rotation: lag {lag}");
            }
        }
        if member.set_eligible(eligible) && !eligible {
            left_rotation(pool, member, view);
        }
    }
    let mut next = pool_decision(pool, &decision);
    // A failover moves new sessions from primaries to standbys; the order in
    // which the first probes answer at start is not one.
    next.failovers = decided.failovers
        + u64::from(next.tier == Some(Tier::Standby) && decided.tier == Some(Tier::Primary));
    next.writer_changes = decided.writer_changes
        + u64::from(decided.writer.is_some() && next.writer != decided.writer);
    log_pool_changes(pool, &decided, &next);
    if decided.tier == Some(Tier::Standby) && next.tier == Some(Tier::Primary) {
        for standby in pool.members.iter().filter(|m| m.tier == Tier::Standby) {
            evict(
                pool,
                standby,
                pool.config.routing.on_primary_return,
                "a primary is back",
            );
        }
    }
    *decided = next;
    wake
}

fn view(member: &Member, hold: &HoldPolicy, now: Instant) -> (View, Option<Instant>) {
    let health = member.state.health();
    let (held, mut wake) = member
        .memory
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .update(health, now, hold);
    let admin = member.state.admin_override(now);
    if let Some(until) = admin.as_ref().and_then(|o| o.until) {
        wake = Some(wake.map_or(until, |w| w.min(until)));
    }
    let view = View {
        health,
        role: member.state.role(),
        lag: member.state.lag().unwrap_or(Lag::Unknown(String::new())),
        tier: member.tier,
        lagged_out: member.lagged_out(),
        held: held.is_some() || admin.is_some(),
    };
    (view, wake)
}

/// A member stopped taking new sessions: if it is gone (down, or demoted from
/// a writer pool), its open sessions follow the pool's `on_down`.
fn left_rotation(pool: &Pool, member: &Member, view: &View) {
    let demoted = pool.config.routing.role == PoolRole::Writer && view.role != Role::Writable;
    if view.health == Health::Up && !demoted {
        return;
    }
    let why = if view.health == Health::Up {
        "backend demoted"
    } else {
        "backend down"
    };
    evict(pool, member, pool.config.routing.on_down, why);
}

/// Closes `member`'s sessions in `pool` as `policy` says.
pub(crate) fn evict(pool: &Pool, member: &Member, policy: OnDown, why: &str) {
    match policy {
        OnDown::Keep => {}
        OnDown::Close => {
            tracing::info!(pool = %pool.config.name, backend = %member.name, "{why}: closing its sessions");
            member.take_evict_token().cancel();
        }
        OnDown::Drain(grace) => {
            tracing::info!(pool = %pool.config.name, backend = %member.name, "{why}: closing its sessions in {grace:?}");
            let token = member.take_evict_token();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                token.cancel();
            });
        }
    }
}

fn pool_decision(pool: &Pool, decision: &Decision) -> PoolDecision {
    let tier = pool
        .members
        .iter()
        .zip(&decision.eligible)
        .filter(|(_, e)| **e)
        .map(|(m, _)| m.tier)
        .min();
    PoolDecision {
        writer: decision.writer,
        multiple_writers: if decision.writable.len() > 1
            && pool.config.routing.role == PoolRole::Writer
        {
            decision.writable.clone()
        } else {
            Vec::new()
        },
        tier,
        fallback: decision.fallback,
        // Counted by the caller, which knows the previous decision.
        failovers: 0,
        writer_changes: 0,
    }
}

fn log_pool_changes(pool: &Pool, before: &PoolDecision, after: &PoolDecision) {
    let name = &pool.config.name;
    let member = |i: Option<usize>| {
        i.and_then(|i| pool.members.get(i))
            .map_or("none", |m| m.name.as_str())
    };
    if before.writer != after.writer {
        tracing::warn!(pool = %name, from = member(before.writer), to = member(after.writer), "writer changed");
    }
    if before.multiple_writers != after.multiple_writers && !after.multiple_writers.is_empty() {
        let names: Vec<&str> = after
            .multiple_writers
            .iter()
            .map(|&i| member(Some(i)))
            .collect();
        let action = match after.writer {
            Some(w) => format!("keeping {}", member(Some(w))),
            None => "refusing writes (on_multiple_writers = \"refuse\")".to_owned(),
        };
        tracing::error!(pool = %name, writable = ?names, "several writable servers; {action}");
    }
    if before.tier != after.tier {
        match after.tier {
            Some(Tier::Standby) => {
                tracing::warn!(pool = %name, "no primary eligible: failing over to standbys")
            }
            Some(Tier::Primary) if before.tier == Some(Tier::Standby) => {
                tracing::info!(pool = %name, "a primary is eligible again: new sessions go back to primaries");
            }
            None => tracing::warn!(pool = %name, "no backend eligible: clients get an error"),
            Some(Tier::Primary) => {}
        }
    }
    if before.fallback != after.fallback {
        if after.fallback {
            tracing::warn!(pool = %name, "no replica eligible: reads fall back to the writer");
        } else {
            tracing::info!(pool = %name, "replicas eligible again: reads leave the writer");
        }
    }
}
