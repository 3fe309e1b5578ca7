//! Which backends of a pool may take new sessions, given what the checkers
//! learned: pure code, table-tested.
//!
//! - `any`: healthy.
//! - `writer`: exactly one healthy, writable backend. The current writer is
//!   kept while it stays writable; otherwise the first by tier, then config
//!   order, so several dbsplice instances with one config agree without
//!   talking. Several writable backends keep the current one (and alert), or
//!   refuse all writes with `on_multiple_writers = "refuse"`. No writer is
//!   elected while a higher-ranked backend is still unprobed.
//! - `reader`: healthy, read-only, lag within `max_lag` (out above it, back in
//!   at or below `readmit_lag`); unknown lag per `lag_unknown`; with none
//!   eligible, `fallback = "writer"` uses the pool's writable backends.

use crate::config::Routing;
use crate::vocabulary::{Fallback, Health, Lag, LagUnknown, MultipleWriters, PoolRole, Role, Tier};

/// One backend at the moment of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The checker's verdict.
    pub health: Health,
    /// Writable or read-only.
    pub role: Role,
    /// Replication lag (unknown until a probe learns it).
    pub lag: Lag,
    /// Primary or standby in this pool.
    pub tier: Tier,
    /// Taken out for lag at the previous decision (hysteresis).
    pub lagged_out: bool,
    /// Held out although healthy (fail-back delay, flap damping).
    pub held: bool,
}

impl View {
    /// Healthy and not held out.
    fn up(&self) -> bool {
        self.health == Health::Up && !self.held
    }
}

/// The outcome for a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Per backend: may take new sessions.
    pub eligible: Vec<bool>,
    /// Per backend: out of a reader pool for lag.
    pub lagged_out: Vec<bool>,
    /// A writer pool's writer.
    pub writer: Option<usize>,
    /// The healthy, writable backends (for a writer pool's alert).
    pub writable: Vec<usize>,
    /// A reader pool fell back to its writable backends.
    pub fallback: bool,
}

/// Decides eligibility for a pool with `routing` over `views`.
pub fn decide(routing: &Routing, views: &[View], current_writer: Option<usize>) -> Decision {
    let writable: Vec<usize> = (0..views.len())
        .filter(|&i| {
            views
                .get(i)
                .is_some_and(|v| v.up() && v.role == Role::Writable)
        })
        .collect();
    let mut decision = Decision {
        eligible: vec![false; views.len()],
        lagged_out: vec![false; views.len()],
        writer: None,
        writable,
        fallback: false,
    };
    match routing.role {
        PoolRole::Any => {
            for (e, v) in decision.eligible.iter_mut().zip(views) {
                *e = v.up();
            }
        }
        PoolRole::Writer => {
            decision.writer = choose_writer(routing, views, &decision.writable, current_writer);
            if let Some(e) = decision.writer.and_then(|w| decision.eligible.get_mut(w)) {
                *e = true;
            }
        }
        PoolRole::Reader => decide_readers(routing, views, &mut decision),
    }
    decision
}

fn choose_writer(
    routing: &Routing,
    views: &[View],
    writable: &[usize],
    current: Option<usize>,
) -> Option<usize> {
    if writable.len() > 1 && routing.on_multiple_writers == MultipleWriters::Refuse {
        return None;
    }
    if let Some(c) = current.filter(|c| writable.contains(c)) {
        return Some(c);
    }
    let rank = |i: usize| (views.get(i).map(|v| v.tier), i);
    let best = writable.iter().copied().min_by_key(|&i| rank(i))?;
    // A backend that ranks higher but has not been probed yet may turn out
    // writable: electing now would make the choice depend on probe timing.
    let undecided = (0..views.len())
        .any(|i| rank(i) < rank(best) && views.get(i).is_some_and(|v| v.health == Health::Unknown));
    (!undecided).then_some(best)
}

fn decide_readers(routing: &Routing, views: &[View], decision: &mut Decision) {
    let max = routing.max_lag.map(|d| d.as_secs());
    let readmit = routing.readmit_lag.map(|d| d.as_secs()).or(max);
    for (i, v) in views.iter().enumerate() {
        let out = match (&v.lag, max, readmit) {
            (Lag::Seconds(s), Some(max), Some(readmit)) => {
                if v.lagged_out {
                    *s > readmit
                } else {
                    *s > max
                }
            }
            _ => false,
        };
        let lag_ok = match v.lag {
            Lag::Unknown(_) => max.is_none() || routing.lag_unknown == LagUnknown::Include,
            Lag::Seconds(_) | Lag::NotReplica => !out,
        };
        if let Some(l) = decision.lagged_out.get_mut(i) {
            *l = out;
        }
        if let Some(e) = decision.eligible.get_mut(i) {
            *e = v.up() && v.role == Role::ReadOnly && lag_ok;
        }
    }
    if !decision.eligible.contains(&true)
        && routing.fallback == Fallback::Writer
        && !decision.writable.is_empty()
    {
        decision.fallback = true;
        for &w in &decision.writable {
            if let Some(e) = decision.eligible.get_mut(w) {
                *e = true;
            }
        }
    }
}

#[cfg(test)]
#[path = "eligibility_tests.rs"]
mod tests;
