//! One health transition's effect: decide again which backends of a pool may
//! take new sessions ([`crate::balance::eligibility`]) from the facts the
//! checkers wrote and the control module's [`Memory`], publish it into the
//! members' [`crate::cluster::MemberState`], log each change once, and close
//! the sessions that a pool's `on_down` or `on_primary_return` says must go.

use std::time::Instant;

use super::evict::evict;
use super::memory::{Memory, PoolMemory};
use crate::balance::eligibility::{decide, Decision, View};
use crate::cluster::{Member, Pool};
use crate::vocabulary::{Health, HoldPolicy, Lag, PoolRole, Role, Tier};

/// Decides `pool` at `now` and applies the decision; returns when a hold
/// ends by itself and the pool must be decided again.
pub fn evaluate(pool: &Pool, memory: &mut Memory, now: Instant) -> Option<Instant> {
    let name = pool.config.name.as_str();
    let mut wake = None;
    let views: Vec<View> = pool
        .members
        .iter()
        .map(|m| {
            let (view, member_wake) = view(m, memory, name, &pool.config.routing.hold, now);
            wake = wake.into_iter().chain(member_wake).min();
            if view.held && m.is_eligible() && m.state.admin_override(now).is_none() {
                tracing::info!(pool = %name, backend = %m.name, "backend held out: flapping (hold-down)");
                memory.note("pool", format!("{name}: {} held out, flapping (hold-down)", m.name));
            }
            view
        })
        .collect();
    let before = memory.pool(name).clone();
    let current = before
        .writer
        .as_deref()
        .and_then(|w| pool.members.iter().position(|m| m.state.address == w));
    let decision = decide(&pool.config.routing, &views, current);
    for ((member, view), (&eligible, &lagged_out)) in pool
        .members
        .iter()
        .zip(&views)
        .zip(decision.eligible.iter().zip(&decision.lagged_out))
    {
        let remembered = &mut memory.member(name, &member.state.address).lagged_out;
        if std::mem::replace(remembered, lagged_out) != lagged_out {
            memory.note("pool", log_lag(pool, member, lagged_out));
        }
        if member.decision.set_eligible(eligible) && !eligible {
            left_rotation(pool, member, view);
        }
    }
    let next = pool_memory(pool, &decision, &before);
    // While dbsplice itself moves the primary, the probes may for a moment
    // see the new primary writable before the old one read-only: no alert.
    let mut shown = next.clone();
    if memory.is_promoting(name) {
        shown.multiple_writers.clone_from(&before.multiple_writers);
    }
    for note in log_pool_changes(pool, &before, &shown) {
        memory.note("pool", note);
    }
    if before.tier == Some(Tier::Standby) && next.tier == Some(Tier::Primary) {
        for standby in pool.members.iter().filter(|m| m.tier == Tier::Standby) {
            evict(
                pool,
                standby,
                pool.config.routing.on_primary_return,
                "a primary is back",
            );
        }
    }
    *memory.pool(name) = next;
    wake
}

/// Logs a replica leaving or rejoining a reader pool for lag; returns the
/// words for the timeline.
fn log_lag(pool: &Pool, member: &Member, lagged_out: bool) -> String {
    let lag = member
        .state
        .lag()
        .map_or_else(|| "unknown".to_owned(), |l| format!("{l:?}"));
    let name = &pool.config.name;
    if lagged_out {
        tracing::warn!(pool = %name, backend = %member.name, "replica out of rotation: lag {lag} above max_lag");
        format!(
            "{name}: {} out of rotation, lag {lag} above max_lag",
            member.name
        )
    } else {
        tracing::info!(pool = %name, backend = %member.name, "replica back in rotation: lag {lag}");
        format!("{name}: {} back in rotation, lag {lag}", member.name)
    }
}

fn view(
    member: &Member,
    memory: &mut Memory,
    pool: &str,
    hold: &HoldPolicy,
    now: Instant,
) -> (View, Option<Instant>) {
    let health = member.state.health();
    let remembered = memory.member(pool, &member.state.address);
    let (held, mut wake) = remembered.hold.update(health, now, hold);
    remembered.held = held;
    let admin = member.state.admin_override(now);
    if let Some(until) = admin.as_ref().and_then(|o| o.until) {
        wake = Some(wake.map_or(until, |w| w.min(until)));
    }
    let view = View {
        health,
        role: member.state.role(),
        lag: member.state.lag().unwrap_or(Lag::Unknown(String::new())),
        tier: member.tier,
        lagged_out: remembered.lagged_out,
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

/// The pool-wide part of `decision`, counted on from `before`.
fn pool_memory(pool: &Pool, decision: &Decision, before: &PoolMemory) -> PoolMemory {
    let address = |i: usize| pool.members.get(i).map(|m| m.state.address.clone());
    let tier = pool
        .members
        .iter()
        .zip(&decision.eligible)
        .filter(|(_, e)| **e)
        .map(|(m, _)| m.tier)
        .min();
    let writer = decision.writer.and_then(address);
    PoolMemory {
        multiple_writers: if decision.writable.len() > 1
            && pool.config.routing.role == PoolRole::Writer
        {
            decision
                .writable
                .iter()
                .filter_map(|&i| address(i))
                .collect()
        } else {
            Vec::new()
        },
        tier,
        fallback: decision.fallback,
        // A failover moves new sessions from primaries to standbys; the order
        // in which the first probes answer at start is not one.
        failovers: before.failovers
            + u64::from(tier == Some(Tier::Standby) && before.tier == Some(Tier::Primary)),
        writer_changes: before.writer_changes
            + u64::from(before.writer.is_some() && writer != before.writer),
        last_writer: writer.clone().or_else(|| before.last_writer.clone()),
        writer,
    }
}

/// Logs each pool-wide change once; returns the words for the timeline.
fn log_pool_changes(pool: &Pool, before: &PoolMemory, after: &PoolMemory) -> Vec<String> {
    let name = &pool.config.name;
    let mut notes = log_writer_changes(pool, before, after);
    if before.tier != after.tier {
        let note = match after.tier {
            Some(Tier::Standby) => {
                tracing::warn!(pool = %name, "no primary eligible: failing over to standbys");
                Some("no primary eligible: failing over to standbys")
            }
            Some(Tier::Primary) if before.tier == Some(Tier::Standby) => {
                tracing::info!(pool = %name, "a primary is eligible again: new sessions go back to primaries");
                Some("a primary is eligible again: new sessions go back to primaries")
            }
            None => {
                tracing::warn!(pool = %name, "no backend eligible: clients get an error");
                Some("no backend eligible: clients get an error")
            }
            Some(Tier::Primary) => None,
        };
        notes.extend(note.map(|n| format!("{name}: {n}")));
    }
    if before.fallback != after.fallback {
        let note = if after.fallback {
            tracing::warn!(pool = %name, "no replica eligible: reads fall back to the writer");
            "no replica eligible: reads fall back to the writer"
        } else {
            tracing::info!(pool = %name, "replicas eligible again: reads leave the writer");
            "replicas eligible again: reads leave the writer"
        };
        notes.push(format!("{name}: {note}"));
    }
    notes
}

/// A writer pool's writer changing, and several servers turning writable.
fn log_writer_changes(pool: &Pool, before: &PoolMemory, after: &PoolMemory) -> Vec<String> {
    let name = &pool.config.name;
    let member = |address: Option<&String>| {
        address
            .and_then(|a| pool.members.iter().find(|m| &m.state.address == a))
            .map_or("none", |m| m.name.as_str())
    };
    let mut notes = Vec::new();
    if before.writer != after.writer {
        let (from, to) = (
            member(before.writer.as_ref()),
            member(after.writer.as_ref()),
        );
        tracing::warn!(pool = %name, from, to, "writer changed");
        notes.push(format!("{name}: writer {from} -> {to}"));
    }
    if before.multiple_writers != after.multiple_writers && !after.multiple_writers.is_empty() {
        let names: Vec<&str> = after
            .multiple_writers
            .iter()
            .map(|a| member(Some(a)))
            .collect();
        let action = match &after.writer {
            Some(w) => format!("keeping {}", member(Some(w))),
            None => "refusing writes (on_multiple_writers = \"refuse\")".to_owned(),
        };
        tracing::error!(pool = %name, writable = ?names, "several writable servers; {action}");
        notes.push(format!(
            "{name}: several writable servers ({}); {action}",
            names.join(", ")
        ));
    }
    notes
}
