//! `GET /api/status`: what dbsplice believes, as JSON.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::app::Shared;
use crate::mysql::Lag;

/// The status document.
pub(super) fn status(shared: &Shared) -> Value {
    let snapshot = shared.routes.load();
    let listeners: Vec<Value> = shared
        .listeners
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
        .iter()
        .map(|l| {
            let s = &l.stats;
            json!({
                "name": l.name,
                "address": l.addr.to_string(),
                "active": s.active(),
                "accepted": s.accepted.load(Ordering::Relaxed),
                "rejected": {
                    "limit": s.rejected_limit.load(Ordering::Relaxed),
                    "access": s.rejected_access.load(Ordering::Relaxed),
                    "no_backend": s.rejected_no_backend.load(Ordering::Relaxed),
                },
            })
        })
        .collect();
    let pools: Vec<Value> = snapshot
        .pools()
        .map(|pool| {
            let decided = pool.decided.lock().map(|d| d.clone()).unwrap_or_default();
            let backends: Vec<Value> = pool
                .members
                .iter()
                .map(|m| {
                    let s = &m.state;
                    let (lag, lag_known) = match s.lag() {
                        Some(Lag::Seconds(l)) => (json!(l), true),
                        Some(Lag::NotReplica) => (json!(0), true),
                        _ => (Value::Null, false),
                    };
                    json!({
                        "name": m.name,
                        "address": s.address,
                        "tier": m.tier.as_str(),
                        "weight": m.weight,
                        "health": s.health().as_str(),
                        "eligible": m.is_eligible(),
                        "reason": s.reason().to_string(),
                        "role": s.role().as_str(),
                        "lag_seconds": lag,
                        "lag_known": lag_known,
                        "active_sessions": s.active(),
                        "total_sessions": s.total(),
                        "connect_failures": s.connect_failures(),
                    })
                })
                .collect();
            let writer = decided
                .writer
                .and_then(|w| pool.members.get(w))
                .map(|m| m.name.clone());
            json!({
                "name": pool.config.name,
                "role": format!("{:?}", pool.config.routing.role).to_lowercase(),
                "balance": pool.config.balance.as_str(),
                "tier": decided.tier.map(|t| t.as_str()),
                "writer": writer,
                "fallback": decided.fallback,
                "backends": backends,
            })
        })
        .collect();
    json!({
        "generation": snapshot.generation,
        "ready": shared.is_ready(),
        "reloads": {
            "applied": shared.reload_stats.applied.load(Ordering::Relaxed),
            "unchanged": shared.reload_stats.unchanged.load(Ordering::Relaxed),
            "rejected": shared.reload_stats.rejected.load(Ordering::Relaxed),
        },
        "listeners": listeners,
        "pools": pools,
    })
}
