//! Live reload: read, parse, validate, diff, apply in one swap, report. Every
//! trigger (file events, the poll, SIGHUP, later the admin API) ends in
//! [`Reloader::reload`]; an invalid file keeps the running config.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::{bind_one, App, BoundListener};
use crate::cluster::{Pool, Snapshot};
use crate::config::{Config, ConfigDiff};

/// Longest a reload may spend reading its files and resolving host names.
pub const RESOLVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The file's bytes (or the resulting config) did not change.
    Unchanged,
    /// A new config runs.
    Applied {
        /// Its generation.
        generation: u64,
        /// What changed.
        diff: Box<ConfigDiff>,
    },
    /// The file could not be used; the running config stays.
    Rejected(String),
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
    fn count(&self, outcome: &ReloadOutcome) {
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

/// What made a reload happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file event or the poll: identical bytes do nothing.
    File,
    /// SIGHUP or an explicit request: read everything again, including the
    /// files the config names (a rotated password file).
    Forced,
}

/// Reloads one config file into one app.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    last_hash: Option<u64>,
}

impl Reloader {
    /// A reloader for `path`, whose current content is the running config.
    pub fn new(path: &Path) -> Reloader {
        let last_hash = std::fs::read(path).ok().map(|b| hash(&b));
        Reloader {
            path: path.to_owned(),
            last_hash,
        }
    }

    /// Reads the file and applies it if it changed; logs one line either way
    /// (nothing for unchanged bytes). Host names are resolved on the calling
    /// thread: the service uses [`Reloader::reload_off_thread`].
    pub fn reload(&mut self, app: &mut App, trigger: Trigger) -> ReloadOutcome {
        let outcome = match self.read(trigger) {
            Ok(text) => {
                let loaded = Config::from_file_text(&self.path, &text).map_err(|e| e.to_string());
                self.apply(app, loaded)
            }
            Err(outcome) => outcome,
        };
        self.report(app, outcome)
    }

    /// The same as [`Reloader::reload`], with the parse, the files the
    /// config names and the resolution of its host names (blocking calls)
    /// on a thread of their own, within [`RESOLVE_DEADLINE`]: the probes and
    /// the watchdog sharing the caller's runtime keep running meanwhile.
    pub async fn reload_off_thread(&mut self, app: &mut App, trigger: Trigger) -> ReloadOutcome {
        let outcome = match self.read(trigger) {
            Ok(text) => {
                let path = self.path.clone();
                let load = tokio::task::spawn_blocking(move || {
                    Config::from_file_text(&path, &text).map_err(|e| e.to_string())
                });
                let loaded = match tokio::time::timeout(RESOLVE_DEADLINE, load).await {
                    Ok(Ok(loaded)) => loaded,
                    Ok(Err(e)) => Err(format!(
                        "{}: the config could not be read: {e}",
                        self.path.display()
                    )),
                    Err(_) => Err(format!(
                        "{}: reading the config and resolving its host names took longer than {}s; \
                         check the resolver (/etc/resolv.conf) or write IP addresses",
                        self.path.display(),
                        RESOLVE_DEADLINE.as_secs()
                    )),
                };
                self.apply(app, loaded)
            }
            Err(outcome) => outcome,
        };
        self.report(app, outcome)
    }

    fn report(&self, app: &App, outcome: ReloadOutcome) -> ReloadOutcome {
        app.shared.reload_stats.count(&outcome);
        match &outcome {
            ReloadOutcome::Unchanged => {
                tracing::debug!(file = %self.path.display(), "config unchanged")
            }
            ReloadOutcome::Applied { generation, diff } => {
                tracing::info!(file = %self.path.display(), generation, "config reloaded: {diff}");
            }
            ReloadOutcome::Rejected(e) => {
                tracing::error!("config reload rejected, the running config stays: {e}")
            }
        }
        outcome
    }

    /// The file's text when there is something to load; otherwise the
    /// outcome already known.
    fn read(&mut self, trigger: Trigger) -> Result<String, ReloadOutcome> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            // Mid-rename or deleted: the next event or poll tries again.
            Err(e) => {
                return Err(ReloadOutcome::Rejected(format!(
                    "{}: cannot read the config file: {e}",
                    self.path.display()
                )))
            }
        };
        let digest = hash(text.as_bytes());
        if trigger == Trigger::File && self.last_hash == Some(digest) {
            return Err(ReloadOutcome::Unchanged);
        }
        // Remembered even when the content is bad: the same bad bytes are
        // not retried (and logged) on every poll, only the next change is.
        self.last_hash = Some(digest);
        Ok(text)
    }

    fn apply(&self, app: &mut App, loaded: Result<Config, String>) -> ReloadOutcome {
        let config = match loaded {
            Ok(c) => c,
            Err(e) => return ReloadOutcome::Rejected(e),
        };
        match app.apply(config) {
            Ok(diff) if diff.is_empty() => ReloadOutcome::Unchanged,
            Ok(diff) => ReloadOutcome::Applied {
                generation: app.snapshot().generation,
                diff: Box::new(diff),
            },
            Err(e) => ReloadOutcome::Rejected(e),
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl App {
    /// Applies `config` in one swap of the routing snapshot. Listeners that
    /// are new or moved are bound first, so a bind error rejects the whole
    /// config and nothing is half-applied.
    pub fn apply(&mut self, config: Config) -> Result<ConfigDiff, String> {
        let current = self.routes.load_full();
        let diff = ConfigDiff::between(&current.config, &config);
        if diff.is_empty() {
            return Ok(diff);
        }
        let mut bound = Vec::new();
        for l in &config.listeners {
            let old = current.config.listeners.iter().find(|o| o.name == l.name);
            if old.is_none_or(|o| o.listen != l.listen) {
                let socket = bind_one(l.addr)
                    .map_err(|e| format!("listener '{}': cannot bind {}: {e}", l.name, l.listen))?;
                bound.push(BoundListener {
                    name: l.name.clone(),
                    socket,
                });
            }
        }
        let config = Arc::new(config);
        let next = Arc::new(Snapshot::build(
            Arc::clone(&config),
            current.generation + 1,
            &mut self.registry,
            Some(&current),
        ));
        self.routes.store(Arc::clone(&next));

        for name in &diff.listeners_removed {
            if let Some(handle) = self.listeners.remove(name) {
                tracing::info!(listener = %name, "listener removed: no longer accepting; its sessions continue");
                handle.stop.cancel();
            }
        }
        for b in bound {
            let name = b.name.clone();
            if let Err(e) = self.spawn_listener(b) {
                tracing::error!(listener = %name, "cannot start the listener: {e}");
            }
        }
        self.publish_listeners();
        self.supervisor
            .reconcile(&config, &self.registry, &self.tasks, &self.stop_checks);
        evict_removed(&current, &next);
        let wanted: HashSet<&str> = config
            .pools
            .values()
            .flat_map(|p| p.backends.iter().map(|b| b.address.text.as_str()))
            .collect();
        self.registry.retain(|address| wanted.contains(address));
        self.changed.notify_one();
        Ok(diff)
    }
}

/// Sessions on backends that a reload removed from a pool follow that pool's
/// `on_remove`.
fn evict_removed(before: &Snapshot, after: &Snapshot) {
    for old in before.pools() {
        let still = after.pool(&old.config.name).map(Arc::as_ref);
        for member in &old.members {
            let kept = still.is_some_and(|p: &Pool| p.member_for(&member.state).is_some());
            if !kept {
                crate::control::evict(
                    old,
                    member,
                    old.config.routing.on_remove,
                    "backend removed from the config",
                );
            }
        }
    }
}
