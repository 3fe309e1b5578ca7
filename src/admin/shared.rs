//! What the admin server reads while dbsplice runs: the routing snapshot, the
//! listeners, the control module's published pool decisions and the reload
//! counters. The control module writes all of it; the admin server and the
//! metrics renderer only read.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::cluster::Snapshot;
use crate::health::histograms::ProbeHistograms;
use crate::inbox::ReloadOutcome;
use crate::proxy::cap::SessionCap;
use crate::proxy::ListenerStats;
use crate::vocabulary::{Health, Tier};

/// The state the admin server and metrics read while dbsplice runs.
#[derive(Debug)]
pub struct Shared {
    /// The routing snapshot.
    pub routes: Arc<ArcSwap<Snapshot>>,
    /// The running listeners.
    pub listeners: Mutex<Vec<ListenerView>>,
    /// The control module's last decision per pool, by pool name.
    pub pools: Mutex<BTreeMap<String, PoolView>>,
    /// Reload counters.
    pub reload_stats: ReloadStats,
    /// What happened lately, for the status page.
    pub timeline: Timeline,
    /// Set once shutdown begins: not ready any more.
    pub draining: AtomicBool,
    /// Probe-duration histograms, recorded by the checkers.
    pub probe_histograms: Arc<ProbeHistograms>,
    /// The process-wide session cap, for its metrics.
    pub session_cap: Arc<SessionCap>,
}

/// One running listener, as the admin server sees it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    /// Its name.
    pub name: String,
    /// Where it is bound.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<ListenerStats>,
}

/// The pool-wide part of the control module's last decision, by backend
/// address (member indexes change with every config).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// A writer pool's writer.
    pub writer: Option<String>,
    /// The tier taking new sessions, if any.
    pub tier: Option<Tier>,
    /// A reader pool fell back to its writers.
    pub fallback: bool,
    /// Members out of a reader pool for lag.
    pub lagged_out: Vec<String>,
    /// Healthy members held out, and why ("flapping", "fail-back").
    pub held: BTreeMap<String, &'static str>,
    /// Times new sessions moved to standbys (kept across reloads).
    pub failovers: u64,
    /// Times a writer pool's writer changed (kept across reloads).
    pub writer_changes: u64,
    /// A writer pool's last writer, kept when there is none any more.
    pub last_writer: Option<String>,
    /// What dbsplice knows and did of the pool's replication.
    pub replication: ReplicationState,
    /// The pool's sources whose last lookup failed, and why, by key.
    pub source_failures: BTreeMap<String, String>,
}

/// A pool's replication as dbsplice manages it (`[replication]` pools).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplicationState {
    /// What each server said at the watcher's last look.
    pub topology: Vec<crate::replication::plan::Server>,
    /// A switchover or failover is being carried out now.
    pub promoting: bool,
    /// Fences or rejoins are being carried out now.
    pub repairing: bool,
    /// Switchovers that put a new primary in place.
    pub switchovers: u64,
    /// Failovers that did.
    pub failovers: u64,
    /// The last switchover or failover carried out, step by step.
    pub last_promotion: Option<crate::replication::report::Report>,
    /// Why the dead primary is not replaced now, with its metric label.
    pub failover_blocked: Option<(&'static str, String)>,
    /// Times a failover was found blocked, by reason label (counted when
    /// the reason changes).
    pub blocked: std::collections::BTreeMap<&'static str, u64>,
    /// Servers left read-only and out of rotation for a person, with the
    /// transactions they have that the primary lacks.
    pub manual_repair: std::collections::BTreeMap<String, u64>,
    /// No automatic failover before this (the cool-down after one).
    pub quiet_until: Option<tokio::time::Instant>,
    /// No fence or rejoin tried again before this (a rejoin failed).
    pub repair_quiet_until: Option<tokio::time::Instant>,
}

/// Entries the timeline keeps: the oldest go first.
pub const TIMELINE_ENTRIES: usize = 200;

/// One thing that happened: a backend up or down, a writer change, a
/// failover, a reload, an operator's action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What kind: "backend", "pool", "reload" or "admin".
    pub kind: &'static str,
    /// In words.
    pub text: String,
}

/// The last [`TIMELINE_ENTRIES`] notes, written by the control module.
#[derive(Debug, Default)]
pub struct Timeline {
    notes: Mutex<VecDeque<Note>>,
}

impl Timeline {
    /// Adds a note stamped now.
    pub fn push(&self, kind: &'static str, text: String) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        if notes.len() == TIMELINE_ENTRIES {
            notes.pop_front();
        }
        notes.push_back(Note {
            unix_ms,
            kind,
            text,
        });
    }

    /// Every note kept, newest first.
    pub fn recent(&self) -> Vec<Note> {
        let notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        notes.iter().rev().cloned().collect()
    }
}

/// Reload counters, for metrics and status.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads that applied a new config.
    pub applied: AtomicU64,
    /// Reloads that found nothing to change.
    pub unchanged: AtomicU64,
    /// Reloads rejected (the running config stayed).
    pub rejected: AtomicU64,
    /// Seconds since the Unix epoch of the last applied reload (0: none).
    pub last_applied_unix: AtomicU64,
}

impl ReloadStats {
    /// Counts one reload's outcome.
    pub fn count(&self, outcome: &ReloadOutcome) {
        let counter = match outcome {
            ReloadOutcome::Unchanged => &self.unchanged,
            ReloadOutcome::Applied { .. } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_applied_unix.store(now, Ordering::Relaxed);
                &self.applied
            }
            ReloadOutcome::Rejected(_) => &self.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Nothing published yet, over `routes`.
    pub fn new(
        routes: Arc<ArcSwap<Snapshot>>,
        probe_histograms: Arc<ProbeHistograms>,
        session_cap: Arc<SessionCap>,
    ) -> Shared {
        Shared {
            routes,
            listeners: Mutex::new(Vec::new()),
            pools: Mutex::new(BTreeMap::new()),
            reload_stats: ReloadStats::default(),
            timeline: Timeline::default(),
            draining: AtomicBool::new(false),
            probe_histograms,
            session_cap,
        }
    }

    /// Ready for traffic: not draining, and every backend probed at least once.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.all_probed()
    }

    /// Every backend has had its first probe.
    pub fn all_probed(&self) -> bool {
        let snapshot = self.routes.load();
        let probed = snapshot.pools().all(|p| {
            p.members
                .iter()
                .all(|m| m.state.health() != Health::Unknown)
        });
        probed
    }

    /// The running listeners, by name.
    pub fn listeners(&self) -> Vec<ListenerView> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last decision published for `pool`.
    pub fn pool(&self, pool: &str) -> PoolView {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pool)
            .cloned()
            .unwrap_or_default()
    }
}
