//! One reload, inside the control module: the file's text (unchanged bytes
//! stop here), then a [`Config`] parsed and resolved on a thread of its own
//! within [`RESOLVE_DEADLINE`], then applied in one swap of the snapshot, and
//! an explicit [`ReloadOutcome`] counted, logged once and replied. An invalid
//! file keeps the running config.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Control;
use crate::cluster::{Pool, Snapshot};
use crate::config::{Config, ConfigDiff, ConfigError};
use crate::inbox::{ReloadError, ReloadOutcome, Trigger};
use crate::proxy::bind::{bind_one, BoundListener};

/// Longest a reload may spend reading its files and resolving host names.
pub const RESOLVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads one config file, remembering what it last read.
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

    /// The file's text when there is something to load; otherwise the
    /// outcome already known.
    pub fn read(&mut self, trigger: Trigger) -> Result<String, ReloadOutcome> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| {
            // Mid-rename or deleted: the next event or poll tries again.
            ReloadOutcome::Rejected(ReloadError::Config(ConfigError::Read {
                file: self.path.clone(),
                source,
            }))
        })?;
        let digest = hash(text.as_bytes());
        if trigger == Trigger::File && self.last_hash == Some(digest) {
            return Err(ReloadOutcome::Unchanged);
        }
        // Remembered even when the content is bad: the same bad bytes are
        // not retried (and logged) on every poll, only the next change is.
        self.last_hash = Some(digest);
        Ok(text)
    }

    /// Parses `text`, reads the files it names and resolves its host names
    /// (blocking calls) on a thread of their own, within
    /// [`RESOLVE_DEADLINE`]: the control module goes on deciding meanwhile.
    pub fn load(&self, text: String) -> impl Future<Output = Result<Config, ReloadError>> {
        let path = self.path.clone();
        async move {
            let file = path.clone();
            let load = tokio::task::spawn_blocking(move || Config::from_file_text(&file, &text));
            match tokio::time::timeout(RESOLVE_DEADLINE, load).await {
                Ok(Ok(loaded)) => loaded.map_err(ReloadError::from),
                Ok(Err(e)) => Err(ReloadError::Load {
                    file: path,
                    reason: e.to_string(),
                }),
                Err(_) => Err(ReloadError::Timeout {
                    file: path,
                    seconds: RESOLVE_DEADLINE.as_secs(),
                }),
            }
        }
    }

    /// Logs one line for `outcome` (nothing above debug for unchanged bytes).
    pub fn report(&self, outcome: &ReloadOutcome) {
        match outcome {
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
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Control {
    /// Applies a loaded config: the outcome of one reload.
    pub(super) fn finish_reload(&mut self, loaded: Result<Config, ReloadError>) -> ReloadOutcome {
        let outcome = match loaded.and_then(|config| self.apply(config)) {
            Ok(diff) if diff.is_empty() => ReloadOutcome::Unchanged,
            Ok(diff) => ReloadOutcome::Applied {
                generation: self.routes.load().generation,
                diff: Box::new(diff),
            },
            Err(e) => ReloadOutcome::Rejected(e),
        };
        self.record_reload(&outcome);
        outcome
    }

    /// Counts, logs and notes one reload's outcome.
    pub(super) fn record_reload(&self, outcome: &ReloadOutcome) {
        self.shared.reload_stats.count(outcome);
        if let Some(reloader) = &self.reloader {
            reloader.report(outcome);
        }
        match outcome {
            ReloadOutcome::Applied { generation, diff } => self
                .shared
                .timeline
                .push("reload", format!("config generation {generation}: {diff}")),
            ReloadOutcome::Rejected(e) => self.shared.timeline.push(
                "reload",
                format!("reload rejected, the running config stays: {e}"),
            ),
            ReloadOutcome::Unchanged => {}
        }
    }

    /// Applies `config` in one swap of the routing snapshot. Listeners that
    /// are new or moved are bound first, so a bind error rejects the whole
    /// config and nothing is half-applied.
    pub(super) fn apply(&mut self, config: Config) -> Result<ConfigDiff, ReloadError> {
        let current = self.routes.load_full();
        let diff = ConfigDiff::between(&current.config, &config);
        if diff.is_empty() {
            return Ok(diff);
        }
        let bound = bind_new_listeners(&current.config, &config)?;
        let config = Arc::new(config);
        let addresses = self.registry.addresses();
        let next = Arc::new(Snapshot::build(
            Arc::clone(&config),
            current.generation + 1,
            &mut self.registry,
        ));
        self.routes.store(Arc::clone(&next));
        self.watch_moved(addresses);
        for name in &diff.listeners_removed {
            self.listeners().stop(name);
        }
        for b in bound {
            let name = b.name.clone();
            if let Err(e) = self.listeners().start(b) {
                tracing::error!(listener = %name, "cannot start the listener: {e}");
            }
        }
        self.listeners().publish(&self.shared);
        self.supervisor.reconcile(
            &config,
            &self.registry,
            &self.life.tasks,
            &self.life.stop_checks,
        );
        self.reconcile_watchers();
        evict_removed(&current, &next);
        // What a kept member was decided stays; a removed one, or an address
        // that now resolves to another server, starts over.
        let kept = |pool: &str, address: &str| {
            let now = next.pool(pool).and_then(|p| member_at(p, address));
            let before = current.pool(pool).and_then(|p| member_at(p, address));
            now.zip(before)
                .is_some_and(|(n, b)| Arc::ptr_eq(&n.state, &b.state))
        };
        self.memory.retain(kept);
        self.registry.retain(|pool, address| {
            next.pool(pool)
                .and_then(|p| member_at(p, address))
                .is_some()
        });
        Ok(diff)
    }
}

fn member_at<'a>(pool: &'a Pool, address: &str) -> Option<&'a crate::cluster::Member> {
    pool.members.iter().find(|m| m.state.address == address)
}

/// Binds the listeners of `next` that `current` lacks or had elsewhere.
fn bind_new_listeners(current: &Config, next: &Config) -> Result<Vec<BoundListener>, ReloadError> {
    let mut bound = Vec::new();
    for l in &next.listeners {
        let old = current.listeners.iter().find(|o| o.name == l.name);
        if old.is_none_or(|o| o.listen != l.listen) {
            let socket = bind_one(l.addr).map_err(|source| ReloadError::Bind {
                listener: l.name.clone(),
                listen: l.listen.to_string(),
                source,
            })?;
            bound.push(BoundListener {
                name: l.name.clone(),
                socket,
            });
        }
    }
    Ok(bound)
}

/// Sessions on backends that a reload removed from a pool follow that pool's
/// `on_remove`.
fn evict_removed(before: &Snapshot, after: &Snapshot) {
    for old in before.pools() {
        let still = after.pool(&old.config.name).map(Arc::as_ref);
        for member in &old.members {
            let kept = still.is_some_and(|p: &Pool| p.member_for(&member.state).is_some());
            if !kept {
                super::evict::evict(
                    old,
                    member,
                    old.config.routing.on_remove,
                    "backend removed from the config",
                );
            }
        }
    }
}
