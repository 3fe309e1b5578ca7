//! The accept loop of one listener: enforce its connection limit, find its
//! pool in the current snapshot and hand each client to a session task.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cap::{SessionCap, Slot};
use super::session;
use crate::cluster::Snapshot;
use crate::logging::RateLimit;
use crate::mysql::{err_packet, ER_CON_COUNT_ERROR};
use crate::workers::{WorkerSession, WorkerSet};

/// Back-off bounds after a failed accept (EMFILE and the like).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Clients accepted and handed to a session.
    pub accepted: AtomicU64,
    /// Clients closed at once because `max_connections` were open.
    pub rejected_limit: AtomicU64,
    /// Clients refused because no backend of the pool could take them.
    pub rejected_no_backend: AtomicU64,
    /// Clients closed because their address is not in the `allow` list.
    pub rejected_access: AtomicU64,
    denied_log: RateLimit,
    cap_log: RateLimit,
    refused_log: RateLimit,
    /// Accept calls that failed (for example out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Times the listener stopped accepting because the process had all the
    /// sessions its open-files limit allows.
    pub waits_at_cap: AtomicU64,
    active: AtomicU64,
}

impl ListenerStats {
    /// Sessions open now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

struct ActiveGuard(Arc<ListenerStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an accept loop needs from the rest of the process.
pub struct AcceptLoop {
    /// The listener's name in the config.
    pub name: String,
    /// Which worker runs this loop, and all of them; `None`: sessions run
    /// on the loop's own runtime.
    pub worker: Option<(usize, Arc<WorkerSet>)>,
    /// The bound socket.
    pub listener: TcpListener,
    /// The current routing snapshot.
    pub routes: Arc<ArcSwap<Snapshot>>,
    /// This listener's counters.
    pub stats: Arc<ListenerStats>,
    /// Where session tasks are tracked for draining.
    pub sessions: TaskTracker,
    /// Cancelled to stop accepting.
    pub stop: CancellationToken,
    /// Cancelled to close open sessions.
    pub kill: CancellationToken,
    /// The process-wide session cap the open-files limit allows.
    pub cap: Arc<SessionCap>,
    /// Cancelled once accepting makes sense: every backend has been probed
    /// (until then clients wait in the kernel's backlog instead of getting
    /// "no backend" from a process that has not looked yet).
    pub open: CancellationToken,
}

impl AcceptLoop {
    /// Accepts until `stop` is cancelled; accept errors back off, never end it.
    pub async fn run(self) {
        tokio::select! {
            () = self.stop.cancelled() => return,
            () = self.open.cancelled() => {}
        }
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let slot = match self.cap.try_slot() {
                Some(slot) => slot,
                None => {
                    self.stats.waits_at_cap.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.stats.cap_log.ready() {
                        tracing::warn!(listener = %self.name, suppressed, "{} sessions open, all the open-files limit allows: new clients wait in the backlog", self.cap.limit());
                    }
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        slot = self.cap.slot() => slot,
                    }
                }
            };
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((client, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    self.admit(client, peer, slot);
                }
                Err(e) => {
                    self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    log_accept_error(&self.name, &e, backoff);
                    if self
                        .stop
                        .run_until_cancelled(tokio::time::sleep(backoff))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    fn admit(&self, client: tokio::net::TcpStream, peer: std::net::SocketAddr, slot: Slot) {
        let snapshot = self.routes.load();
        // A listener removed from the config, or its pool: the socket closes on drop.
        let Some(listener) = snapshot.listener(&self.name) else {
            return;
        };
        let Some(pool) = snapshot.pool(&listener.pool) else {
            return;
        };
        if !listener.allows(peer.ip()) {
            // Closed before any backend is touched; logged at most once a second.
            self.stats.rejected_access.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.stats.denied_log.ready() {
                tracing::warn!(listener = %self.name, client = %peer, suppressed, "client not in the listener's allow list, closed");
            }
            return;
        }
        if self.stats.active.load(Ordering::Relaxed) >= u64::from(listener.max_connections) {
            self.stats.rejected_limit.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %self.name, client = %peer, "max_connections reached, closing client");
            // Best effort and never waiting: the limit exists to shed load.
            let message = format!(
                "dbsplice: listener '{}' is at max_connections ({})",
                self.name, listener.max_connections
            );
            let _ = client.try_write(&err_packet(ER_CON_COUNT_ERROR, &message));
            return;
        }
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&self.stats));
        let pool = Arc::clone(pool);
        let timeouts = super::splice::Timeouts {
            idle: listener.idle_timeout,
            half_close: listener.half_close_timeout,
        };
        let kill = self.kill.clone();
        let span = tracing::debug_span!("session", listener = %self.name, client = %peer, backend = tracing::field::Empty);
        let serve = move |client, on_worker: Option<WorkerSession>| async move {
            if let Err(refusal) = session::serve(client, peer, pool, timeouts, kill).await {
                let message = refusal.detail;
                let stats = &guard.0;
                stats.rejected_no_backend.fetch_add(1, Ordering::Relaxed);
                // At most a line a second: a dead pool under load would
                // otherwise write one per client.
                if let Some(suppressed) = stats.refused_log.ready() {
                    tracing::warn!(client = %peer, suppressed, "refusing client: {message}");
                }
            }
            drop((guard, on_worker, slot));
        };
        let Some((here, workers)) = &self.worker else {
            self.sessions.spawn(serve(client, None).instrument(span));
            return;
        };
        let there = workers.place(*here);
        let Some(handle) = workers.handles().get(there).filter(|_| there != *here) else {
            let on_worker = workers.session(*here);
            self.sessions
                .spawn(serve(client, Some(on_worker)).instrument(span));
            return;
        };
        // Moved to a less busy worker: the socket leaves this runtime's
        // poller and joins that one's.
        let client = match client.into_std() {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(listener = %self.name, client = %peer, "cannot move a client to another worker: {e}");
                return;
            }
        };
        let on_worker = workers.session(there);
        let moved = async move {
            match tokio::net::TcpStream::from_std(client) {
                Ok(client) => serve(client, Some(on_worker)).await,
                Err(e) => tracing::warn!(client = %peer, "cannot register a moved client: {e}"),
            }
        };
        self.sessions.spawn_on(moved.instrument(span), handle);
    }
}

fn log_accept_error(listener: &str, e: &io::Error, backoff: Duration) {
    if crate::net::is_local_shortage(e) {
        tracing::warn!(
            listener,
            "accept failed, out of file descriptors or memory ({e}); retrying in {backoff:?}"
        );
    } else {
        tracing::warn!(listener, "accept failed: {e}; retrying in {backoff:?}");
    }
}
