//! The control module's one inbox: every change to the running state arrives
//! here as a typed [`Event`], from the service (signals, file events), the
//! admin server (operator actions), the checkers (health transitions) and the
//! app's own lifecycle (shutdown). Where a caller waits for the outcome, the
//! event carries a reply channel. The events and their outcomes are plain
//! data; only the control module acts on them.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use crate::cluster::backend::Override;
use crate::config::{ConfigDiff, ConfigError};
use crate::health::state::Transition;
use crate::replication::plan::Server;
use crate::replication::report::Report;

/// Events waiting for the control module at most; a sender beyond that waits
/// (operator actions) or relies on the events already queued (health, see
/// [`Inbox::health_changed`]).
pub const INBOX_CAPACITY: usize = 256;

/// One thing the control module is asked to do.
#[derive(Debug)]
pub enum Event {
    /// Read the config file again and apply it.
    Reload {
        /// File event (identical bytes do nothing) or forced.
        trigger: Trigger,
        /// Where the outcome goes.
        reply: oneshot::Sender<ReloadOutcome>,
    },
    /// An operator drains, disables or re-enables (`None`) every backend of
    /// that name; the reply is how many matched.
    Override {
        /// The backend's name in its pools.
        backend: String,
        /// The override, or `None` to clear it.
        value: Option<Override>,
        /// How many backends matched.
        reply: oneshot::Sender<usize>,
    },
    /// An operator asks for a switchover of `pool` to `to` (or to the most
    /// advanced replica); the reply is its report, once it is over.
    Switchover {
        /// The pool's name.
        pool: String,
        /// The backend to promote, by name.
        to: Option<String>,
        /// Who asked, in words.
        origin: String,
        /// What happened.
        reply: oneshot::Sender<Report>,
    },
    /// A pool's watcher read every server's replication facts.
    Topology {
        /// The pool's name.
        pool: String,
        /// Each server as configured and as seen, in config order.
        servers: Vec<Server>,
    },
    /// Fences and rejoins the control module started are over.
    RepairsDone {
        /// The pool's name.
        pool: String,
        /// Whether one of them failed.
        failed: bool,
    },
    /// A switchover the control module started is over.
    PromotionDone {
        /// What happened.
        report: Box<Report>,
        /// Where the one who asked waits.
        reply: oneshot::Sender<Report>,
    },
    /// An operator lets the backends of `pool` held after returning from
    /// down take traffic again; the reply is how many were held (`None`: no
    /// such pool).
    Failback {
        /// The pool's name.
        pool: String,
        /// How many were held.
        reply: oneshot::Sender<Option<usize>>,
    },
    /// An operator pauses `pool` for `duration`: its new clients are held as
    /// if it had no backend; the reply is whether the pool exists.
    Pause {
        /// The pool's name.
        pool: String,
        /// How long, at most.
        duration: std::time::Duration,
        /// Who asked, in words.
        origin: String,
        /// Whether there is such a pool.
        reply: oneshot::Sender<bool>,
    },
    /// An operator ends a pause at once; the reply is how many clients were
    /// held (`None`: no such pool).
    Resume {
        /// The pool's name.
        pool: String,
        /// Who asked, in words.
        origin: String,
        /// Every backend of the pool has been probed since the operator
        /// asked: the pause ends now. Without, the control module has them
        /// probed first.
        probed: bool,
        /// How many clients were held.
        reply: oneshot::Sender<Option<usize>>,
    },
    /// A checker saw the backend at `address` change health, role or lag.
    Health {
        /// The backend's address as written in the config.
        address: String,
        /// The change of health, when there was one.
        transition: Option<Transition>,
    },
    /// A backend's host name was resolved again.
    Resolved {
        /// The backend's address as written in the config.
        address: String,
        /// Its host name.
        host: String,
        /// Its addresses (IPv4 first), or why it did not resolve.
        result: Result<Vec<std::net::SocketAddr>, String>,
    },
    /// A source of a pool's members (a `resolve = "all"` name, an SRV
    /// record) was looked up again.
    Expanded {
        /// The pool's name.
        pool: String,
        /// The source's key.
        source: String,
        /// The members it gives now, or why the lookup failed.
        result: Result<Vec<crate::config::BackendConfig>, String>,
    },
    /// A round of discovery found the members the cluster lists beside the
    /// pool's own.
    Discovered {
        /// The pool's name.
        pool: String,
        /// Every member to keep: those listed now, and those no longer
        /// listed within `forget_after`.
        members: Vec<crate::config::BackendConfig>,
        /// Of those, the addresses no longer listed: drained.
        leaving: Vec<String>,
    },
    /// A probe of the backend at `address` failed: its host name should be
    /// resolved again soon (it may have moved).
    ResolveSoon {
        /// The backend's address as written in the config.
        address: String,
    },
    /// What the control module remembers, for a hand-over to a new process.
    Remember {
        /// The memory, its moments as ages now.
        reply: oneshot::Sender<crate::handover::format::Memory>,
    },
    /// Answer at once: the watchdog's proof that the control module still
    /// handles events.
    Ping {
        /// Answered when handled.
        reply: oneshot::Sender<()>,
    },
    /// Stop the checkers and the control module; replied once they stopped.
    Shutdown {
        /// Answered when stopped.
        reply: oneshot::Sender<()>,
    },
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
    Rejected(ReloadError),
}

/// Why a reload was rejected; the running config stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading the files and resolving host names took too long.
    #[error(
        "{}: reading the config and resolving its host names took longer than {seconds}s; \
         check the resolver (/etc/resolv.conf) or write IP addresses",
        file.display()
    )]
    Timeout {
        /// The config file.
        file: PathBuf,
        /// The deadline.
        seconds: u64,
    },
    /// The thread loading the config failed.
    #[error("{}: the config could not be read: {reason}", file.display())]
    Load {
        /// The config file.
        file: PathBuf,
        /// What happened to the loading thread.
        reason: String,
    },
    /// A new or moved listener could not bind its address.
    #[error("listener '{listener}': cannot bind {listen}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address as written.
        listen: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// This dbsplice was started from a config with no file behind it.
    #[error("no config file to reload: this dbsplice was started from a config in memory")]
    NoFile,
    /// The control module is gone (shutting down).
    #[error("dbsplice is shutting down")]
    Stopped,
}

/// The sending side of the inbox; cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Event>,
}

/// A reply that never came: the control module stopped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("dbsplice is shutting down")]
pub struct Stopped;

impl Inbox {
    /// A new inbox and the receiving end the control module reads.
    pub fn new() -> (Inbox, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        (Inbox { tx }, rx)
    }

    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(event(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Reloads the config file and waits for the outcome.
    pub async fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        self.ask(|reply| Event::Reload { trigger, reply })
            .await
            .unwrap_or(ReloadOutcome::Rejected(ReloadError::Stopped))
    }

    /// Sets (or, with `None`, clears) an operator's override on every
    /// backend named `backend`; returns how many matched.
    pub async fn set_override(
        &self,
        backend: &str,
        value: Option<Override>,
    ) -> Result<usize, Stopped> {
        let backend = backend.to_owned();
        self.ask(|reply| Event::Override {
            backend,
            value,
            reply,
        })
        .await
    }

    /// Manual fail-back in `pool`: how many backends were held (`None`: no
    /// such pool).
    pub async fn failback(&self, pool: &str) -> Result<Option<usize>, Stopped> {
        let pool = pool.to_owned();
        self.ask(|reply| Event::Failback { pool, reply }).await
    }

    /// Switches `pool`'s primary over to `to` (or the most advanced
    /// replica) and waits for the report.
    pub async fn switchover(
        &self,
        pool: &str,
        to: Option<String>,
        origin: String,
    ) -> Result<Report, Stopped> {
        let pool = pool.to_owned();
        self.ask(|reply| Event::Switchover {
            pool,
            to,
            origin,
            reply,
        })
        .await
    }

    /// Hands the control module what a pool's servers said; an error when
    /// it has stopped.
    pub async fn topology(&self, pool: String, servers: Vec<Server>) -> Result<(), Stopped> {
        self.tx
            .send(Event::Topology { pool, servers })
            .await
            .map_err(|_| Stopped)
    }

    /// Tells the control module that the repairs it started on `pool` are
    /// over.
    pub async fn repairs_done(&self, pool: String, failed: bool) {
        let _ = self.tx.send(Event::RepairsDone { pool, failed }).await;
    }

    /// Tells the control module that a switchover it started is over; it
    /// records the report and answers `reply`.
    pub async fn promotion_done(&self, report: Report, reply: oneshot::Sender<Report>) {
        let report = Box::new(report);
        // Stopping: the one who asked still hears what happened.
        if let Err(mpsc::error::SendError(Event::PromotionDone { report, reply })) =
            self.tx.send(Event::PromotionDone { report, reply }).await
        {
            let _ = reply.send(*report);
        }
    }

    /// Pauses `pool` for `duration`; false when there is no such pool.
    pub async fn pause(
        &self,
        pool: &str,
        duration: std::time::Duration,
        origin: String,
    ) -> Result<bool, Stopped> {
        let pool = pool.to_owned();
        self.ask(|reply| Event::Pause {
            pool,
            duration,
            origin,
            reply,
        })
        .await
    }

    /// Resumes `pool`: how many clients were held (`None`: no such pool).
    pub async fn resume(&self, pool: &str, origin: String) -> Result<Option<usize>, Stopped> {
        let pool = pool.to_owned();
        self.ask(|reply| Event::Resume {
            pool,
            origin,
            probed: false,
            reply,
        })
        .await
    }

    /// Ends the pause of `pool` now that its backends were probed again (the
    /// control module's second step of a resume).
    pub async fn resume_probed(
        &self,
        pool: String,
        origin: String,
    ) -> Result<Option<usize>, Stopped> {
        self.ask(|reply| Event::Resume {
            pool,
            origin,
            probed: true,
            reply,
        })
        .await
    }

    /// Tells the control module that a checker wrote new facts for
    /// `address`. Never waits: when the inbox is full, the events already
    /// queued are handled after the facts were written, and every event
    /// makes the control module decide again from the facts as they are
    /// then, so nothing is lost by dropping this one.
    pub fn health_changed(&self, address: &str, transition: Option<Transition>) {
        let _ = self.tx.try_send(Event::Health {
            address: address.to_owned(),
            transition,
        });
    }

    /// Tells the control module what a backend's host name resolves to now.
    pub async fn resolved(
        &self,
        address: String,
        host: String,
        result: Result<Vec<std::net::SocketAddr>, String>,
    ) {
        let _ = self
            .tx
            .send(Event::Resolved {
                address,
                host,
                result,
            })
            .await;
    }

    /// Tells the control module what a source of `pool`'s members gives now.
    pub async fn expanded(
        &self,
        pool: String,
        source: String,
        result: Result<Vec<crate::config::BackendConfig>, String>,
    ) {
        let _ = self
            .tx
            .send(Event::Expanded {
                pool,
                source,
                result,
            })
            .await;
    }

    /// Tells the control module what a round of discovery found in `pool`'s
    /// cluster.
    pub async fn discovered(
        &self,
        pool: String,
        members: Vec<crate::config::BackendConfig>,
        leaving: Vec<String>,
    ) {
        let _ = self
            .tx
            .send(Event::Discovered {
                pool,
                members,
                leaving,
            })
            .await;
    }

    /// Asks for the backend's host name to be resolved again soon; dropped
    /// when the inbox is full (the next failed probe asks again).
    pub fn resolve_soon(&self, address: &str) {
        let _ = self.tx.try_send(Event::ResolveSoon {
            address: address.to_owned(),
        });
    }

    /// What the control module remembers now, for a hand-over.
    pub async fn remember(&self) -> Result<crate::handover::format::Memory, Stopped> {
        self.ask(|reply| Event::Remember { reply }).await
    }

    /// Whether the control module handles an event within `within`.
    pub async fn alive(&self, within: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.ask(|reply| Event::Ping { reply })).await,
            Ok(Ok(()))
        )
    }

    /// Stops the control module and its checkers; returns once they stopped.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Event::Shutdown { reply }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn alive_only_while_someone_answers() {
        let within = std::time::Duration::from_secs(1);
        let (inbox, mut events) = Inbox::new();
        // A control module that never gets to its inbox.
        assert!(!inbox.alive(within).await, "a wedged receiver is not alive");
        let _ = events.try_recv();
        let answering = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::Ping { reply } = event {
                    let _ = reply.send(());
                }
            }
        });
        assert!(inbox.alive(within).await);
        answering.abort();
        let _ = answering.await;
        assert!(!inbox.alive(within).await, "a stopped one is not");
    }

    #[tokio::test]
    async fn a_full_inbox_drops_health_events_without_waiting() {
        let (inbox, mut events) = Inbox::new();
        for _ in 0..INBOX_CAPACITY + 10 {
            inbox.health_changed("db:3306", None);
        }
        let mut queued = 0;
        while events.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, INBOX_CAPACITY);
    }
}
