//! `GET /api/status`: what dbsplice believes, as JSON.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{json, Value};

use super::shared::{ListenerView, PoolView, Shared};
use crate::cluster::{Member, Pool};
use crate::proxy::listener::Rejected;
use crate::vocabulary::{Health, Lag, OverrideMode, PoolRole, Role, Tier};

/// The status document.
pub fn status(shared: &Shared) -> Value {
    let snapshot = shared.routes.load();
    let listeners: Vec<Value> = shared.listeners().iter().map(listener).collect();
    let pools: Vec<Value> = snapshot.pools().map(|p| pool(shared, p)).collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("DBSPLICE_COMMIT"),
        "pid": std::process::id(),
        "generation": snapshot.generation,
        "ready": shared.is_ready(),
        "reloads": {
            "applied": shared.reload_stats.applied.load(Ordering::Relaxed),
            "unchanged": shared.reload_stats.unchanged.load(Ordering::Relaxed),
            "rejected": shared.reload_stats.rejected.load(Ordering::Relaxed),
        },
        "listeners": listeners,
        "pools": pools,
        "timeline": shared.timeline.recent().iter().map(|n| json!({
            "unix_ms": n.unix_ms,
            "kind": n.kind,
            "text": n.text,
        })).collect::<Vec<Value>>(),
    })
}

fn listener(l: &ListenerView) -> Value {
    let s = &l.stats;
    json!({
        "name": l.name,
        "address": l.addr.to_string(),
        "active": s.active(),
        "accepted": s.accepted.load(Ordering::Relaxed),
        "rejected": Rejected::ALL
            .iter()
            .map(|&cause| (cause.as_str().to_owned(), json!(s.rejected(cause))))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

fn pool(shared: &Shared, pool: &Pool) -> Value {
    let decided = shared.pool(&pool.config.name);
    let backends: Vec<Value> = pool
        .members
        .iter()
        .map(|m| backend(pool, &decided, m))
        .collect();
    let writer = decided
        .writer
        .as_ref()
        .and_then(|w| pool.members.iter().find(|m| &m.state.address == w))
        .map(|m| m.name.clone());
    json!({
        "name": pool.config.name,
        "role": format!("{:?}", pool.config.routing.role).to_lowercase(),
        "balance": pool.config.balance.as_str(),
        "tier": decided.tier.map(|t| t.as_str()),
        "writer": writer,
        "fallback": decided.fallback,
        "held_clients": pool.waiting.held(),
        "paused_for_seconds": pool.waiting.paused_for().map(|d| d.as_secs_f64()),
        "hold_timeouts": pool.waiting.timeouts(),
        "replication": pool.config.replication.as_ref().map(|r| replication(r, &decided.replication)),
        "sources": pool.config.sources.iter().map(|s| json!({
            "key": s.key,
            "failing": decided.source_failures.get(&s.key),
        })).collect::<Vec<Value>>(),
        "discover": pool.config.discover.map(|d| d.as_str()),
        "backends": backends,
    })
}

/// A `[replication]` pool's topology and what dbsplice did with it.
fn replication(
    config: &crate::config::replication::ReplicationConfig,
    state: &crate::admin::shared::ReplicationState,
) -> Value {
    use crate::replication::plan::Seen;
    let topology: Vec<Value> = state
        .topology
        .iter()
        .map(|s| match &s.seen {
            Seen::Unreachable(why) => json!({ "name": s.name, "reachable": false, "error": why }),
            Seen::Unusable(why) => json!({ "name": s.name, "reachable": true, "error": why }),
            Seen::Answered(f) => json!({
                "name": s.name,
                "reachable": true,
                "server_id": f.server_id,
                "read_only": f.read_only,
                "gtid_binlog_pos": f.binlog_pos.to_string(),
                "gtid_current_pos": f.current_pos.to_string(),
                "replicates_from": f.source.as_ref().map(|src| json!({
                    "host": src.host,
                    "port": src.port,
                    "server_id": src.server_id,
                    "io_running": src.io_running,
                    "sql_running": src.sql_running,
                    "gtid_io_pos": src.io_pos.to_string(),
                })),
            }),
        })
        .collect();
    json!({
        "failover": config.failover.as_str(),
        "failover_after_seconds": config.failover_after.as_secs_f64(),
        "rejoin": config.rejoin,
        "lock": config.lock.as_str(),
        "promoting": state.promoting,
        "switchovers": state.switchovers,
        "failovers": state.failovers,
        "failover_blocked": state.failover_blocked.as_ref().map(|(_, why)| why),
        "manual_repair": state.manual_repair,
        "last_promotion": state.last_promotion,
        "topology": topology,
    })
}

fn backend(pool: &Pool, decided: &PoolView, m: &Member) -> Value {
    let s = &m.state;
    let (lag, lag_known) = match s.lag() {
        Some(Lag::Seconds(l)) => (json!(l), true),
        Some(Lag::NotReplica) => (json!(0), true),
        _ => (Value::Null, false),
    };
    let now = Instant::now();
    json!({
        "name": m.name,
        "address": s.address,
        "ip": s.addr().to_string(),
        "origin": m.origin.as_str(),
        "unresolved": s.unresolved().map(|why| why.to_string()),
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
        "bytes_to_backend": s.counters.bytes_to_backend.load(Ordering::Relaxed),
        "bytes_to_client": s.counters.bytes_to_client.load(Ordering::Relaxed),
        "last_probe_ms": s.counters.last_probe_micros.load(Ordering::Relaxed) as f64 / 1000.0,
        "state": label(pool, decided, m),
        "why": explain(pool, decided, m),
        "admin": s.admin_override(now).map(|o| json!({
            "state": o.mode.as_str(),
            "origin": o.origin,
            "since_unix": o.since_unix,
            "expires_in_seconds": o.until.map(|u| u.saturating_duration_since(now).as_secs()),
        })),
    })
}

/// `GET /api/backends/NAME/why`: in plain words, per pool, why the backend
/// does or does not take new sessions. `None` when no backend has that name.
pub fn why(shared: &Shared, name: &str) -> Option<Value> {
    let snapshot = shared.routes.load();
    let mut answers = Vec::new();
    for pool in snapshot.pools() {
        let decided = shared.pool(&pool.config.name);
        for m in pool.members.iter().filter(|m| m.name == name) {
            let mut answer = json!({ "pool": pool.config.name, "eligible": m.is_eligible(), "why": explain(pool, &decided, m) });
            if let Value::Object(fields) = &mut answer {
                if let Some(failover) = failover_words(&decided, m) {
                    fields.insert("failover".into(), json!(failover));
                }
                if let Some(why) = m.state.unresolved() {
                    fields.insert(
                        "dns".into(),
                        json!(format!(
                            "its host name does not resolve ({why}); it is reached at its last address, {}",
                            m.state.addr()
                        )),
                    );
                }
            }
            answers.push(answer);
        }
    }
    (!answers.is_empty()).then(|| json!({ "backend": name, "pools": answers }))
}

/// What the replication side says of `m`: why the dead primary was not
/// replaced, or that a former primary waits for a person.
fn failover_words(decided: &PoolView, m: &Member) -> Option<String> {
    let r = &decided.replication;
    if let Some(extra) = r.manual_repair.get(&m.name) {
        return Some(format!(
            "manual repair: it has {extra} transaction(s) the primary lacks; left read-only and out of rotation"
        ));
    }
    let dead_primary = decided.writer.is_none()
        && decided.last_writer.as_deref() == Some(m.state.address.as_str());
    match &r.failover_blocked {
        Some((_, why)) if dead_primary => Some(format!("no failover: {why}")),
        _ => None,
    }
}

/// The status page's word for where a member stands, one of a few fixed
/// labels (the page's legend lists them); [`explain`] says why in a sentence.
fn label(pool: &Pool, decided: &PoolView, m: &Member) -> &'static str {
    let s = &m.state;
    if let Some(o) = s.admin_override(Instant::now()) {
        return match o.mode {
            OverrideMode::Drain => "drained",
            OverrideMode::Disable => "disabled",
        };
    }
    match s.health() {
        Health::Unknown => return "not probed",
        Health::Down => return "down",
        Health::Up => {}
    }
    if s.is_full() {
        return "full";
    }
    let role = pool.config.routing.role;
    if m.is_eligible() {
        return match (role, m.tier) {
            (PoolRole::Writer, _) => "writer",
            (PoolRole::Reader, _) if decided.fallback => "writer, taking reads",
            (_, Tier::Standby) => "standby, serving",
            _ => "in rotation",
        };
    }
    if decided.lagged_out.contains(&s.address) {
        return "lagging";
    }
    match decided.held.get(&s.address).copied() {
        Some("flapping") => return "held down: flapping",
        Some(_) => return "held: fail-back",
        None => {}
    }
    match (role, s.role()) {
        (PoolRole::Writer, _) => "not writer",
        (PoolRole::Reader, Role::Writable) => "writer, not a replica",
        (PoolRole::Reader, _) if s.lag().is_none() => "lag unknown",
        _ if m.tier == Tier::Standby => "standby",
        _ => "out",
    }
}

fn explain(pool: &Pool, decided: &PoolView, m: &Member) -> String {
    let s = &m.state;
    if let Some(o) = s.admin_override(Instant::now()) {
        return format!("an operator set it to {} ({})", o.mode.as_str(), o.origin);
    }
    match s.health() {
        Health::Unknown => return "it has not been probed yet".to_owned(),
        Health::Down => return format!("its health check fails: {}", s.reason()),
        Health::Up => {}
    }
    if s.is_full() {
        return "the server answered 1040 (too many connections): new sessions skip it until a \
                session there ends or a probe finds room; it is not down"
            .to_owned();
    }
    if m.is_eligible() {
        return why_in(pool, decided, m);
    }
    if decided.lagged_out.contains(&s.address) {
        return format!(
            "its replication lag ({:?}) is above max_lag; it returns at or below readmit_lag",
            s.lag()
        );
    }
    if let Some(why) = why_not_by_role(pool, decided, m) {
        return why.to_owned();
    }
    if m.tier == Tier::Standby && decided.tier == Some(Tier::Primary) {
        return "it is a standby and a primary is eligible".to_owned();
    }
    match decided.held.get(&m.state.address).copied() {
        Some("flapping") => {
            "it changed state too often: held down until its hold-down ends (flap_threshold)"
                .to_owned()
        }
        Some(_) => "it is back from down and waits for the fail-back rule (failback)".to_owned(),
        None => "it is held back after returning from down (fail-back) or for flapping".to_owned(),
    }
}

/// Why an eligible, healthy member takes sessions.
fn why_in(pool: &Pool, decided: &PoolView, m: &Member) -> String {
    let tier = if m.tier == Tier::Standby {
        " as a standby, because no primary is eligible"
    } else {
        ""
    };
    match pool.config.routing.role {
        PoolRole::Writer => format!("it is the pool's writer{tier}"),
        PoolRole::Reader if decided.fallback => {
            "no replica is eligible, so reads fall back to it (a writer)".to_owned()
        }
        _ => format!("it is healthy and takes new sessions{tier}"),
    }
}

/// Why a healthy member's role keeps it out of the pool, if it does.
fn why_not_by_role(pool: &Pool, decided: &PoolView, m: &Member) -> Option<&'static str> {
    let s = &m.state;
    let routing = &pool.config.routing;
    match (routing.role, s.role()) {
        (PoolRole::Writer, Role::Writable)
            if decided.writer.as_ref().is_some_and(|w| w != &s.address) =>
        {
            Some("another writable backend is the pool's writer (one writer at a time)")
        }
        (PoolRole::Writer, Role::Writable) => {
            Some("several servers are writable and on_multiple_writers = \"refuse\"")
        }
        (PoolRole::Writer, _) => Some("it is not writable (read_only is on)"),
        (PoolRole::Reader, Role::Writable) => {
            Some("it is writable, and a reader pool uses read-only replicas")
        }
        (PoolRole::Reader, _) if s.lag().is_none() && routing.max_lag.is_some() => {
            Some("its replication lag is unknown and lag_unknown = \"exclude\"")
        }
        _ => None,
    }
}
