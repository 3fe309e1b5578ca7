//! `GET /metrics`: values are read from the atomics the data path and
//! checkers keep anyway and rendered at scrape time into a fresh recorder, so
//! the hot path pays nothing and a removed backend leaves no stale series
//! behind. Names and help texts come from [`crate::metrics`].

use std::sync::atomic::Ordering;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::shared::Shared;
use crate::metrics::*;
use crate::proxy::listener::Rejected;
use crate::vocabulary::{Health, Lag, Role, Tier};

/// Renders every metric in the Prometheus text format.
pub fn render(shared: &Shared) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        backends(shared);
        listeners(shared);
        config(shared);
        process(shared);
    });
    let mut text = handle.render();
    text.push_str(&shared.probe_histograms.render());
    text.push_str(&hold_seconds(shared));
    text.push_str(&super::process::render());
    text
}

/// `dbsplice_pool_hold_seconds`, written by hand: the waits are counted in
/// the pools' own atomics, so a histogram costs the data path no recorder.
fn hold_seconds(shared: &Shared) -> String {
    use std::fmt::Write as _;
    let (name, help) = POOL_HOLD_SECONDS;
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
    let snapshot = shared.routes.load();
    for pool in snapshot.pools() {
        let (buckets, count, sum) = pool.waiting.waits.cumulative();
        let p = &pool.config.name;
        for (bound, n) in buckets {
            let _ = writeln!(out, "{name}_bucket{{pool=\"{p}\",le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{pool=\"{p}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{pool=\"{p}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{pool=\"{p}\"}} {count}");
    }
    out
}

fn describe() {
    for (name, help) in [
        BACKEND_SESSIONS,
        BACKEND_CONNECT_FAILURES,
        BACKEND_BYTES,
        BACKEND_CONNECT_FAILURES_BY_REASON,
        BACKEND_PROBES,
        LISTENER_ACCEPTED,
        LISTENER_REJECTED,
        LISTENER_ACCEPT_ERRORS,
        LISTENER_CAP_WAITS,
        RELOADS,
        POOL_FAILOVERS,
        POOL_WRITER_CHANGES,
        POOL_PROMOTIONS,
        POOL_FAILOVER_BLOCKED,
        POOL_HOLD_TIMEOUTS,
        POOL_HELD_SERVED,
    ] {
        describe_counter!(name, help);
    }
    describe_gauge!(BACKEND_PROBE_SECONDS.0, BACKEND_PROBE_SECONDS.1);
    for (name, help) in [
        BACKEND_INFO,
        BACKEND_UNRESOLVED,
        BACKEND_ELIGIBLE,
        BACKEND_UP,
        BACKEND_WRITABLE,
        BACKEND_LAG,
        BACKEND_ACTIVE,
        LISTENER_ACTIVE,
        POOL_STANDBY_ACTIVE,
        POOL_WRITER,
        POOL_HELD,
        CONFIG_GENERATION,
        CONFIG_LAST_RELOAD,
        PROCESS_OPEN_FDS,
        PROCESS_MAX_FDS,
        PROCESS_MAX_SESSIONS,
        PROCESS_SESSIONS,
        BUILD_INFO,
    ] {
        describe_gauge!(name, help);
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn backends(shared: &Shared) {
    let snapshot = shared.routes.load();
    for pool in snapshot.pools() {
        let decided = shared.pool(&pool.config.name);
        gauge!(POOL_STANDBY_ACTIVE.0, "pool" => pool.config.name.clone())
            .set(flag(decided.tier == Some(Tier::Standby)));
        counter!(POOL_FAILOVERS.0, "pool" => pool.config.name.clone()).absolute(decided.failovers);
        counter!(POOL_WRITER_CHANGES.0, "pool" => pool.config.name.clone())
            .absolute(decided.writer_changes);
        if pool.config.replication.is_some() {
            let r = &decided.replication;
            counter!(POOL_PROMOTIONS.0, "pool" => pool.config.name.clone(), "kind" => "switchover")
                .absolute(r.switchovers);
            counter!(POOL_PROMOTIONS.0, "pool" => pool.config.name.clone(), "kind" => "failover")
                .absolute(r.failovers);
            for reason in crate::replication::plan::Blocked::LABELS {
                counter!(POOL_FAILOVER_BLOCKED.0, "pool" => pool.config.name.clone(), "reason" => reason)
                    .absolute(r.blocked.get(reason).copied().unwrap_or(0));
            }
        }
        gauge!(POOL_HELD.0, "pool" => pool.config.name.clone()).set(pool.waiting.held() as f64);
        counter!(POOL_HOLD_TIMEOUTS.0, "pool" => pool.config.name.clone())
            .absolute(pool.waiting.timeouts());
        counter!(POOL_HELD_SERVED.0, "pool" => pool.config.name.clone())
            .absolute(pool.waiting.served());
        for m in &pool.members {
            let labels = [
                ("pool", pool.config.name.clone()),
                ("backend", m.name.clone()),
                ("address", m.state.address.clone()),
            ];
            let s = &m.state;
            whereabouts(&labels, s, m.origin);
            gauge!(BACKEND_ELIGIBLE.0, &labels).set(flag(m.is_eligible()));
            gauge!(BACKEND_UP.0, &labels).set(flag(s.health() == Health::Up));
            let writable = match s.role() {
                Role::Writable => 1.0,
                Role::ReadOnly => 0.0,
                Role::Unknown => -1.0,
            };
            gauge!(BACKEND_WRITABLE.0, &labels).set(writable);
            match s.lag() {
                Some(Lag::Seconds(l)) => gauge!(BACKEND_LAG.0, &labels).set(l as f64),
                Some(Lag::NotReplica) => gauge!(BACKEND_LAG.0, &labels).set(0.0),
                _ => {}
            }
            gauge!(BACKEND_ACTIVE.0, &labels).set(s.active() as f64);
            counter!(BACKEND_SESSIONS.0, &labels).absolute(s.total());
            counter!(BACKEND_CONNECT_FAILURES.0, &labels).absolute(s.connect_failures());
            counters(&labels, &s.counters);
            if pool.config.routing.role == crate::vocabulary::PoolRole::Writer {
                gauge!(POOL_WRITER.0, &labels)
                    .set(flag(decided.writer.as_ref() == Some(&m.state.address)));
            }
        }
    }
}

/// Where the backend is reached now, where it came from, and whether its
/// name resolves.
fn whereabouts(
    labels: &[(&'static str, String); 3],
    s: &crate::cluster::BackendState,
    origin: crate::vocabulary::Origin,
) {
    let mut info = labels.to_vec();
    info.push(("ip", s.addr().to_string()));
    info.push(("origin", origin.as_str().to_owned()));
    gauge!(BACKEND_INFO.0, &info).set(1.0);
    gauge!(BACKEND_UNRESOLVED.0, labels).set(flag(s.unresolved().is_some()));
}

#[allow(clippy::cast_precision_loss)]
fn counters(labels: &[(&'static str, String); 3], c: &crate::cluster::backend::Counters) {
    let with = |key: &'static str, value: &'static str| {
        let mut l: Vec<(&'static str, String)> = labels.to_vec();
        l.push((key, value.to_owned()));
        l
    };
    counter!(BACKEND_BYTES.0, &with("direction", "to_backend"))
        .absolute(c.bytes_to_backend.load(Ordering::Relaxed));
    counter!(BACKEND_BYTES.0, &with("direction", "to_client"))
        .absolute(c.bytes_to_client.load(Ordering::Relaxed));
    for (reason, value) in ["refused", "timeout", "greeting", "other"]
        .iter()
        .zip(&c.connect_failures)
    {
        counter!(
            BACKEND_CONNECT_FAILURES_BY_REASON.0,
            &with("reason", reason)
        )
        .absolute(value.load(Ordering::Relaxed));
    }
    counter!(BACKEND_PROBES.0, &with("outcome", "pass"))
        .absolute(c.probes_passed.load(Ordering::Relaxed));
    counter!(BACKEND_PROBES.0, &with("outcome", "fail"))
        .absolute(c.probes_failed.load(Ordering::Relaxed));
    // A float counter: the metrics facade has none, so a gauge set to the total.
    gauge!(BACKEND_PROBE_SECONDS.0, labels)
        .set(c.probe_micros.load(Ordering::Relaxed) as f64 / 1e6);
}

#[allow(clippy::cast_precision_loss)]
fn listeners(shared: &Shared) {
    for l in shared.listeners() {
        let stats = &l.stats;
        counter!(LISTENER_ACCEPTED.0, "listener" => l.name.clone())
            .absolute(stats.accepted.load(Ordering::Relaxed));
        for cause in Rejected::ALL {
            counter!(LISTENER_REJECTED.0, "listener" => l.name.clone(), "reason" => cause.as_str())
                .absolute(stats.rejected(cause));
        }
        counter!(LISTENER_ACCEPT_ERRORS.0, "listener" => l.name.clone())
            .absolute(stats.accept_errors.load(Ordering::Relaxed));
        counter!(LISTENER_CAP_WAITS.0, "listener" => l.name.clone())
            .absolute(stats.waits_at_cap.load(Ordering::Relaxed));
        gauge!(LISTENER_ACTIVE.0, "listener" => l.name.clone()).set(stats.active() as f64);
    }
}

#[allow(clippy::cast_precision_loss)]
fn config(shared: &Shared) {
    let r = &shared.reload_stats;
    for (result, value) in [
        ("applied", &r.applied),
        ("unchanged", &r.unchanged),
        ("rejected", &r.rejected),
    ] {
        counter!(RELOADS.0, "result" => result).absolute(value.load(Ordering::Relaxed));
    }
    gauge!(CONFIG_GENERATION.0).set(shared.routes.load().generation as f64);
    gauge!(CONFIG_LAST_RELOAD.0).set(r.last_applied_unix.load(Ordering::Relaxed) as f64);
}

#[allow(clippy::cast_precision_loss)]
fn process(shared: &Shared) {
    gauge!(
        BUILD_INFO.0,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("DBSPLICE_COMMIT")
    )
    .set(1.0);
    gauge!(PROCESS_MAX_SESSIONS.0).set(shared.session_cap.limit() as f64);
    gauge!(PROCESS_SESSIONS.0).set(shared.session_cap.open() as f64);
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        gauge!(PROCESS_OPEN_FDS.0).set(entries.count() as f64);
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        gauge!(PROCESS_MAX_FDS.0).set(soft as f64);
    }
}
