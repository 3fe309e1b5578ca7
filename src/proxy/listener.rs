//! The accept loop of one listener: enforce its connection limit, find its
//! pool in the current snapshot and hand each client to a session task.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cap::{SessionCap, Slot};
use super::session::{self, Cause};
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
    /// Clients refused because dbsplice itself was short of descriptors,
    /// buffers or memory when it connected to a backend.
    pub rejected_local_shortage: AtomicU64,
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

/// Why a listener refused a client, as its metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The listener was at `max_connections`.
    Limit,
    /// The client's address is not in the `allow` list.
    Access,
    /// No backend of the pool could take the client.
    NoBackend,
    /// dbsplice was short of its own resources.
    LocalShortage,
}

impl Rejected {
    /// Every cause, in the order metrics and status list them.
    pub const ALL: [Rejected; 4] = [
        Rejected::Limit,
        Rejected::Access,
        Rejected::NoBackend,
        Rejected::LocalShortage,
    ];

    /// The `reason` label and the status key.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Limit => "limit",
            Rejected::Access => "access",
            Rejected::NoBackend => "no_backend",
            Rejected::LocalShortage => "local_shortage",
        }
    }
}

impl ListenerStats {
    /// Sessions open now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    fn counter(&self, cause: Rejected) -> &AtomicU64 {
        match cause {
            Rejected::Limit => &self.rejected_limit,
            Rejected::Access => &self.rejected_access,
            Rejected::NoBackend => &self.rejected_no_backend,
            Rejected::LocalShortage => &self.rejected_local_shortage,
        }
    }

    /// Counts one refused client.
    pub fn reject(&self, cause: Rejected) {
        self.counter(cause).fetch_add(1, Ordering::Relaxed);
    }

    /// Clients refused for `cause` so far.
    pub fn rejected(&self, cause: Rejected) -> u64 {
        self.counter(cause).load(Ordering::Relaxed)
    }
}

/// A place under a listener's `max_connections`, given back on drop.
struct ActiveGuard(Arc<ListenerStats>);

impl ActiveGuard {
    /// Takes a place if fewer than `max` are taken: the check and the count
    /// are one step, whichever worker's accept loop asks.
    fn take(stats: &Arc<ListenerStats>, max: u32) -> Option<ActiveGuard> {
        stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < u64::from(max)).then_some(n + 1)
            })
            .ok()
            .map(|_| ActiveGuard(Arc::clone(stats)))
    }
}

impl ActiveGuard {
    /// A place taken whatever the limit: for a session admitted before.
    fn adopt(stats: &Arc<ListenerStats>) -> ActiveGuard {
        stats.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(stats))
    }
}

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
    /// Cancelled when shutdown begins: held clients are refused.
    pub draining: CancellationToken,
    /// Cancelled to close open sessions.
    pub kill: CancellationToken,
    /// The process-wide session cap the open-files limit allows.
    pub cap: Arc<SessionCap>,
    /// Where sessions pause for a hand-over.
    pub board: Arc<super::park::Board>,
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

    /// One accepted client: admitted by the listener's rules, then placed on
    /// a worker.
    fn admit(&self, client: TcpStream, peer: SocketAddr, slot: Slot) {
        let Some((pool, listener)) = self.admission(&client, peer) else {
            return;
        };
        let timeouts = super::splice::Timeouts {
            idle: listener.idle_timeout,
            half_close: listener.half_close_timeout,
        };
        let kill = self.kill.clone();
        let holding = session::Holding {
            routes: Arc::clone(&self.routes),
            draining: self.draining.clone(),
            listener: Arc::from(self.name.as_str()),
            board: Arc::clone(&self.board),
        };
        let serve = move |client, on_worker: Option<WorkerSession>| async move {
            if let Err(refusal) = session::serve(client, peer, pool, timeouts, kill, &holding).await
            {
                let stats = &listener.guard.0;
                stats.reject(match refusal.cause() {
                    Cause::NoBackend => Rejected::NoBackend,
                    Cause::LocalShortage => Rejected::LocalShortage,
                });
                // At most a line a second: a dead pool under load would
                // otherwise write one per client.
                if let Some(suppressed) = stats.refused_log.ready() {
                    tracing::warn!(client = %peer, suppressed, "refusing client: {refusal}");
                }
            }
            drop((listener.guard, on_worker, slot));
        };
        let span = tracing::debug_span!("session", listener = %self.name, client = %peer, backend = tracing::field::Empty);
        self.place(client, peer, span, serve);
    }

    /// The listener's own rules, before any backend is touched: it and its
    /// pool still exist, the client's address is allowed, and a place under
    /// `max_connections` is taken (in one atomic step, so that accept loops
    /// on several workers never overshoot it).
    fn admission(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
    ) -> Option<(Arc<crate::cluster::Pool>, Admitted)> {
        let snapshot = self.routes.load();
        // A listener removed from the config, or its pool: the socket closes on drop.
        let listener = snapshot.listener(&self.name)?;
        let pool = snapshot.pool(&listener.pool)?;
        if !listener.allows(peer.ip()) {
            // Closed before any backend is touched; logged at most once a second.
            self.stats.reject(Rejected::Access);
            if let Some(suppressed) = self.stats.denied_log.ready() {
                tracing::warn!(listener = %self.name, client = %peer, suppressed, "client not in the listener's allow list, closed");
            }
            return None;
        }
        let Some(guard) = ActiveGuard::take(&self.stats, listener.max_connections) else {
            self.stats.reject(Rejected::Limit);
            tracing::debug!(listener = %self.name, client = %peer, "max_connections reached, closing client");
            // Best effort and never waiting: the limit exists to shed load.
            let message = format!(
                "dbsplice: listener '{}' is at max_connections ({})",
                self.name, listener.max_connections
            );
            let _ = client.try_write(&err_packet(ER_CON_COUNT_ERROR, &message));
            return None;
        };
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some((
            Arc::clone(pool),
            Admitted {
                guard,
                idle_timeout: listener.idle_timeout,
                half_close_timeout: listener.half_close_timeout,
            },
        ))
    }

    /// Runs `serve` for the client on the least busy worker (or on this
    /// loop's runtime without workers).
    fn place<F, Fut>(&self, client: TcpStream, peer: SocketAddr, span: tracing::Span, serve: F)
    where
        F: FnOnce(TcpStream, Option<WorkerSession>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
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
            match TcpStream::from_std(client) {
                Ok(client) => serve(client, Some(on_worker)).await,
                Err(e) => tracing::warn!(client = %peer, "cannot register a moved client: {e}"),
            }
        };
        self.sessions.spawn_on(moved.instrument(span), handle);
    }
}

/// A session taken over from the process before this one.
#[derive(Debug)]
pub enum Taken {
    /// Spliced to a backend: carries on where it stood.
    Spliced {
        /// The client socket.
        client: std::net::TcpStream,
        /// The backend socket.
        backend: std::net::TcpStream,
        /// The client's address.
        peer: SocketAddr,
        /// The backend's address as the config names it.
        address: String,
        /// Where the splice stood.
        progress: super::splice::Progress,
        /// When it began, in milliseconds since the Unix epoch.
        started_unix_ms: u64,
    },
    /// Held: looks for a backend of its pool again.
    Held {
        /// The client socket.
        client: std::net::TcpStream,
        /// The client's address.
        peer: SocketAddr,
    },
}

/// Where a listener carries the sessions it takes over.
#[derive(Debug)]
pub struct Adopter {
    /// The listener's name.
    pub name: String,
    /// Its counters: a taken-over session counts in `active`, even past
    /// `max_connections` (it was admitted before).
    pub stats: Arc<ListenerStats>,
    /// The current routing snapshot.
    pub routes: Arc<ArcSwap<Snapshot>>,
    /// Where session tasks are tracked.
    pub sessions: TaskTracker,
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
    /// Cancelled to close open sessions.
    pub kill: CancellationToken,
    /// The session cap (a taken-over session takes a place where there is one).
    pub cap: Arc<SessionCap>,
    /// Where sessions pause for the next hand-over.
    pub board: Arc<super::park::Board>,
    /// The worker threads, if sessions run on them.
    pub workers: Option<Arc<WorkerSet>>,
}

impl Adopter {
    /// Carries `taken` on, in `pool`, once `go` is cancelled (the process
    /// that gave it has let go); `backend` is its backend's state here.
    pub fn adopt(
        &self,
        taken: Taken,
        pool: Arc<crate::cluster::Pool>,
        backend: Arc<crate::cluster::BackendState>,
        go: CancellationToken,
    ) {
        let guard = ActiveGuard::adopt(&self.stats);
        let slot = self.cap.try_slot();
        let (idle, half_close) = {
            let snapshot = self.routes.load();
            snapshot
                .listener(&self.name)
                .map_or((None, Duration::from_secs(30)), |l| {
                    (l.idle_timeout, l.half_close_timeout)
                })
        };
        let timeouts = super::splice::Timeouts { idle, half_close };
        let holding = session::Holding {
            routes: Arc::clone(&self.routes),
            draining: self.draining.clone(),
            listener: Arc::from(self.name.as_str()),
            board: Arc::clone(&self.board),
        };
        let kill = self.kill.clone();
        let on_worker = self.workers.as_ref().map(|w| {
            let there = w.place(0);
            (w.handles().get(there).cloned(), w.session(there))
        });
        let peer = match &taken {
            Taken::Spliced { peer, .. } | Taken::Held { peer, .. } => *peer,
        };
        let span = tracing::debug_span!("session", listener = %self.name, client = %peer, backend = tracing::field::Empty);
        let carry = async move {
            go.cancelled().await;
            carry_on(taken, pool, backend, timeouts, kill, &holding).await;
            drop((guard, slot));
        };
        match on_worker {
            Some((Some(handle), on_worker)) => {
                self.sessions.spawn_on(
                    async move {
                        carry.await;
                        drop(on_worker);
                    }
                    .instrument(span),
                    &handle,
                );
            }
            _ => {
                self.sessions.spawn(carry.instrument(span));
            }
        }
    }
}

/// Registers a taken-over session's sockets here and carries it on.
async fn carry_on(
    taken: Taken,
    pool: Arc<crate::cluster::Pool>,
    backend: Arc<crate::cluster::BackendState>,
    timeouts: super::splice::Timeouts,
    kill: CancellationToken,
    holding: &session::Holding,
) {
    match taken {
        Taken::Spliced {
            client,
            backend: backend_socket,
            peer,
            address,
            progress,
            started_unix_ms,
        } => {
            let (client, backend_socket) = match (
                TcpStream::from_std(client),
                TcpStream::from_std(backend_socket),
            ) {
                (Ok(c), Ok(b)) => (c, b),
                (Err(e), _) | (_, Err(e)) => {
                    return tracing::error!(client = %peer, "cannot carry a taken-over session: {e}");
                }
            };
            let resumed = session::Resumed {
                client,
                backend: backend_socket,
                peer,
                address,
                progress,
                started_unix_ms,
            };
            session::resume(resumed, pool, backend, timeouts, kill, holding).await;
        }
        Taken::Held { client, peer } => match TcpStream::from_std(client) {
            Ok(client) => {
                if let Err(refusal) =
                    session::serve(client, peer, pool, timeouts, kill, holding).await
                {
                    tracing::warn!(client = %peer, "refusing a taken-over client: {refusal}");
                }
            }
            Err(e) => tracing::error!(client = %peer, "cannot carry a taken-over client: {e}"),
        },
    }
}

/// What admission hands the session: its place under `max_connections` and
/// the listener's deadlines.
struct Admitted {
    guard: ActiveGuard,
    idle_timeout: Option<Duration>,
    half_close_timeout: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_is_never_overshot_by_racing_accept_loops() {
        let stats = Arc::new(ListenerStats::default());
        let max = 5;
        let taken: Vec<Vec<ActiveGuard>> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let stats = Arc::clone(&stats);
                    scope.spawn(move || {
                        (0..1000)
                            .filter_map(|_| ActiveGuard::take(&stats, max))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let held: usize = taken.iter().map(Vec::len).sum();
        assert_eq!(held, 5, "exactly max_connections places");
        assert_eq!(stats.active(), 5);
        drop(taken);
        assert_eq!(stats.active(), 0, "every place given back");
        assert!(ActiveGuard::take(&stats, max).is_some());
    }
}
