//! Prometheus metric names and help texts, every one of them, and nothing
//! else: pure constants that the renderer (`admin::metrics`), the probe
//! histograms (`health::histograms`) and the tests all read.

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
/// Where the backend is now and where it came from.
pub const BACKEND_INFO: Metric = (
    "dbsplice_backend_info",
    "Always 1: the backend's address as written, the IP it is reached at now (ip) and where it came from (origin: file, dns, srv, discovered)",
);
/// Its host name fails to resolve.
pub const BACKEND_UNRESOLVED: Metric = (
    "dbsplice_backend_unresolved",
    "1 while the backend's host name does not resolve (its last address is kept)",
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
    "Clients refused by the listener, by reason (limit, access, no_backend, local_shortage)",
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
/// Primaries put in place by dbsplice, by kind (switchover, failover).
pub const POOL_PROMOTIONS: Metric = (
    "dbsplice_pool_promotions_total",
    "Replicas dbsplice promoted to primary, by kind: switchover (asked for) or failover (by itself)",
);
/// Failovers found blocked, by reason.
pub const POOL_FAILOVER_BLOCKED: Metric = (
    "dbsplice_pool_failover_blocked_total",
    "Times a dead primary's replacement was found blocked, by reason (counted when the reason changes)",
);
/// Writer changes.
pub const POOL_WRITER_CHANGES: Metric = (
    "dbsplice_pool_writer_changes_total",
    "Times a writer pool's writer changed",
);
/// Held clients.
pub const POOL_HELD: Metric = (
    "dbsplice_pool_held_clients",
    "Clients waiting now for a backend of the pool to take them (hold_timeout)",
);
/// Hold timeouts.
pub const POOL_HOLD_TIMEOUTS: Metric = (
    "dbsplice_pool_hold_timeouts_total",
    "Clients refused after waiting the pool's whole hold_timeout for a backend",
);
/// Held, then served.
pub const POOL_HELD_SERVED: Metric = (
    "dbsplice_pool_held_served_total",
    "Clients that waited for a backend and were then connected",
);
/// How long held clients waited.
pub const POOL_HOLD_SECONDS: Metric = (
    "dbsplice_pool_hold_seconds",
    "How long clients waited for a backend of the pool, however the wait ended",
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

/// CPU time, the name every Prometheus exporter uses.
pub const PROCESS_CPU_SECONDS: Metric = (
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
);
/// Resident memory.
pub const PROCESS_RESIDENT_MEMORY: Metric = (
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
);
/// Virtual memory.
pub const PROCESS_VIRTUAL_MEMORY: Metric = (
    "process_virtual_memory_bytes",
    "Virtual memory size in bytes.",
);
/// Threads.
pub const PROCESS_THREADS: Metric = ("process_threads", "Number of OS threads in the process.");
/// Start time.
pub const PROCESS_START_TIME: Metric = (
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
);
/// Open descriptors, the standard name.
pub const PROCESS_OPEN_FDS_STD: Metric = ("process_open_fds", "Number of open file descriptors.");
/// Descriptor limit, the standard name.
pub const PROCESS_MAX_FDS_STD: Metric = (
    "process_max_fds",
    "Maximum number of open file descriptors.",
);
/// Build.
pub const BUILD_INFO: Metric = (
    "dbsplice_build_info",
    "Always 1: the running binary's version and commit as labels",
);

/// Probe durations.
pub const BACKEND_PROBE_DURATION: Metric = (
    "dbsplice_backend_probe_duration_seconds",
    "Duration of health probes",
);

/// Bucket bounds for probe durations, in seconds.
pub const PROBE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
