//! Prometheus metrics: every name and help text lives here. Values are read
//! from the atomics the data path and checkers keep anyway and rendered at
//! scrape time into a fresh recorder, so the hot path pays nothing and a
//! removed backend leaves no stale series behind.

use std::sync::atomic::{AtomicU32, Ordering};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::app::Shared;
use crate::vocabulary::Health;
use crate::vocabulary::Tier;
use crate::vocabulary::{Lag, Role};

/// A metric's name and help text.
pub type Metric = (&'static str, &'static str);

/// 1 when the backend may take new sessions in the pool.
pub const BACKEND_ELIGIBLE: Metric = (
    "dbsplice_backend_eligible",
    "1 when the backend takes new sessions in the pool",
);
/// Health as the checker sees it.
pub const BACKEND_UP: Metric = (
    "dbsplice_backend_up",
    "1 when the backend's health checks pass",
);
/// Role.
pub const BACKEND_WRITABLE: Metric = (
    "dbsplice_backend_writable",
    "1 when the server is writable (read_only off), 0 when read-only, -1 unknown",
);
/// Lag.
pub const BACKEND_LAG: Metric = (
    "dbsplice_backend_replication_lag_seconds",
    "Replication lag; absent when unknown, 0 for a server that replicates from no one",
);
/// Sessions open.
pub const BACKEND_ACTIVE: Metric = (
    "dbsplice_backend_active_sessions",
    "Sessions open to the backend now",
);
/// Sessions ever.
pub const BACKEND_SESSIONS: Metric = (
    "dbsplice_backend_sessions_total",
    "Sessions started to the backend",
);
/// Connect failures.
pub const BACKEND_CONNECT_FAILURES: Metric = (
    "dbsplice_backend_connect_failures_total",
    "Failed connects from the data path to the backend",
);
/// Bytes each way.
pub const BACKEND_BYTES: Metric = (
    "dbsplice_backend_bytes_total",
    "Bytes moved through finished sessions, by direction (to_backend, to_client)",
);
/// Connect failures by reason.
pub const BACKEND_CONNECT_FAILURES_BY_REASON: Metric = (
    "dbsplice_backend_connect_failures_by_reason_total",
    "Failed connects from the data path, by reason (refused, timeout, greeting, other)",
);
/// Probe results.
pub const BACKEND_PROBES: Metric = (
    "dbsplice_backend_probes_total",
    "Health probes, by outcome (pass, fail)",
);
/// Probe time.
pub const BACKEND_PROBE_SECONDS: Metric = (
    "dbsplice_backend_probe_time_seconds",
    "Total time spent in health probes; divided by dbsplice_backend_probes_total, the mean",
);
/// Accepted clients.
pub const LISTENER_ACCEPTED: Metric = (
    "dbsplice_listener_accepted_total",
    "Clients accepted by the listener",
);
/// Rejected clients.
pub const LISTENER_REJECTED: Metric = (
    "dbsplice_listener_rejected_total",
    "Clients refused by the listener, by reason (limit, access, no_backend)",
);
/// Open sessions per listener.
pub const LISTENER_ACTIVE: Metric = (
    "dbsplice_listener_active_sessions",
    "Sessions open through the listener now",
);
/// Accept errors.
pub const LISTENER_ACCEPT_ERRORS: Metric = (
    "dbsplice_listener_accept_errors_total",
    "Failed accept calls (for example out of file descriptors)",
);
/// Tier taking sessions.
pub const POOL_STANDBY_ACTIVE: Metric = (
    "dbsplice_pool_on_standby",
    "1 while the pool's new sessions go to standbys",
);
/// Failovers.
pub const POOL_FAILOVERS: Metric = (
    "dbsplice_pool_failovers_total",
    "Times the pool's new sessions moved to standbys",
);
/// Writer changes.
pub const POOL_WRITER_CHANGES: Metric = (
    "dbsplice_pool_writer_changes_total",
    "Times a writer pool's writer changed",
);
/// Writer pools' writer.
pub const POOL_WRITER: Metric = (
    "dbsplice_pool_writer",
    "1 for the backend that is the writer pool's writer",
);
/// Reloads.
pub const RELOADS: Metric = (
    "dbsplice_config_reloads_total",
    "Config reloads by result (applied, unchanged, rejected)",
);
/// Generation.
pub const CONFIG_GENERATION: Metric = (
    "dbsplice_config_generation",
    "Generation of the running config, 1 at start",
);
/// Last good reload.
pub const CONFIG_LAST_RELOAD: Metric = (
    "dbsplice_config_last_reload_timestamp_seconds",
    "Unix time of the last applied reload, 0 if none",
);
/// Waits at the session cap.
pub const LISTENER_CAP_WAITS: Metric = (
    "dbsplice_listener_session_cap_waits_total",
    "Times the listener stopped accepting because the process had all the sessions its open-files limit allows (clients wait in the backlog)",
);
/// Session cap.
pub const PROCESS_MAX_SESSIONS: Metric = (
    "dbsplice_process_max_sessions",
    "Sessions the open-files limit allows at once (two descriptors each, some kept in reserve)",
);
/// Sessions holding a place under the cap.
pub const PROCESS_SESSIONS: Metric = (
    "dbsplice_process_sessions",
    "Sessions open now, counted against dbsplice_process_max_sessions",
);
/// Open descriptors.
pub const PROCESS_OPEN_FDS: Metric = ("dbsplice_process_open_fds", "Open file descriptors");
/// Descriptor limit.
pub const PROCESS_MAX_FDS: Metric = (
    "dbsplice_process_max_fds",
    "Soft limit on open file descriptors",
);

/// Probe durations.
pub const BACKEND_PROBE_DURATION: Metric = (
    "dbsplice_backend_probe_duration_seconds",
    "Duration of health probes",
);

/// Bucket bounds for probe durations, in seconds.
const PROBE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Probes recorded between two folds of the pending samples into the
/// buckets: at most this many samples wait, whether or not anyone scrapes.
const PROBES_PER_UPKEEP: u32 = 256;

/// Probe-duration histograms: unlike the other metrics they accumulate
/// observations, so they live in one recorder for the life of the process
/// (a removed backend's histogram stays until restart).
///
/// The exporter keeps each observation as a raw sample until it is folded
/// into the buckets, which a scrape does; dbsplice folds them itself every
/// `PROBES_PER_UPKEEP` probes, so a balancer nobody scrapes (or one without
/// `[admin]`) does not grow by every probe it ever ran.
pub struct ProbeHistograms {
    recorder: metrics_exporter_prometheus::PrometheusRecorder,
    recorded: AtomicU32,
}

impl std::fmt::Debug for ProbeHistograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeHistograms")
    }
}

impl Default for ProbeHistograms {
    fn default() -> Self {
        let builder = PrometheusBuilder::new().set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BACKEND_PROBE_DURATION.0.to_owned()),
            &PROBE_BUCKETS,
        );
        // Setting buckets fails only for an empty list; without them the
        // exporter would render a summary, which is still valid text.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        metrics::with_local_recorder(&recorder, || {
            describe_histogram!(BACKEND_PROBE_DURATION.0, BACKEND_PROBE_DURATION.1)
        });
        ProbeHistograms {
            recorder,
            recorded: AtomicU32::new(0),
        }
    }
}

impl ProbeHistograms {
    /// Records one probe of the backend at `address`.
    pub fn record(&self, address: &str, seconds: f64) {
        metrics::with_local_recorder(&self.recorder, || {
            histogram!(BACKEND_PROBE_DURATION.0, "address" => address.to_owned()).record(seconds);
        });
        let recorded = self.recorded.fetch_add(1, Ordering::Relaxed);
        if recorded % PROBES_PER_UPKEEP == PROBES_PER_UPKEEP - 1 {
            self.recorder.handle().run_upkeep();
        }
    }

    /// The histograms in the Prometheus text format.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

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
    text
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
    ] {
        describe_counter!(name, help);
    }
    describe_gauge!(BACKEND_PROBE_SECONDS.0, BACKEND_PROBE_SECONDS.1);
    for (name, help) in [
        BACKEND_ELIGIBLE,
        BACKEND_UP,
        BACKEND_WRITABLE,
        BACKEND_LAG,
        BACKEND_ACTIVE,
        LISTENER_ACTIVE,
        POOL_STANDBY_ACTIVE,
        POOL_WRITER,
        CONFIG_GENERATION,
        CONFIG_LAST_RELOAD,
        PROCESS_OPEN_FDS,
        PROCESS_MAX_FDS,
        PROCESS_MAX_SESSIONS,
        PROCESS_SESSIONS,
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
        let decided = pool.decided.lock().map(|d| d.clone()).unwrap_or_default();
        gauge!(POOL_STANDBY_ACTIVE.0, "pool" => pool.config.name.clone())
            .set(flag(decided.tier == Some(Tier::Standby)));
        counter!(POOL_FAILOVERS.0, "pool" => pool.config.name.clone()).absolute(decided.failovers);
        counter!(POOL_WRITER_CHANGES.0, "pool" => pool.config.name.clone())
            .absolute(decided.writer_changes);
        for (i, m) in pool.members.iter().enumerate() {
            let labels = [
                ("pool", pool.config.name.clone()),
                ("backend", m.name.clone()),
                ("address", m.state.address.clone()),
            ];
            let s = &m.state;
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
                gauge!(POOL_WRITER.0, &labels).set(flag(decided.writer == Some(i)));
            }
        }
    }
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
    let listeners = shared
        .listeners
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    for l in listeners {
        let stats = &l.stats;
        counter!(LISTENER_ACCEPTED.0, "listener" => l.name.clone())
            .absolute(stats.accepted.load(Ordering::Relaxed));
        for (reason, value) in [
            ("limit", &stats.rejected_limit),
            ("access", &stats.rejected_access),
            ("no_backend", &stats.rejected_no_backend),
        ] {
            counter!(LISTENER_REJECTED.0, "listener" => l.name.clone(), "reason" => reason)
                .absolute(value.load(Ordering::Relaxed));
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
    gauge!(PROCESS_MAX_SESSIONS.0).set(shared.session_cap.limit() as f64);
    gauge!(PROCESS_SESSIONS.0).set(shared.session_cap.open() as f64);
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        gauge!(PROCESS_OPEN_FDS.0).set(entries.count() as f64);
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        gauge!(PROCESS_MAX_FDS.0).set(soft as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_histograms_render_buckets() {
        let h = ProbeHistograms::default();
        h.record("db1:3306", 0.003);
        h.record("db1:3306", 0.2);
        let text = h.render();
        assert!(text.contains("dbsplice_backend_probe_duration_seconds_bucket{address=\"db1:3306\",le=\"0.005\"} 1"), "{text}");
        assert!(
            text.contains("dbsplice_backend_probe_duration_seconds_count{address=\"db1:3306\"} 2"),
            "{text}"
        );
    }
}
