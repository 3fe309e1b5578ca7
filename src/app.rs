//! Wiring: bind listeners, build the first snapshot, start checkers and
//! accept loops, and drain on shutdown. The library never installs signal
//! handlers or picks ports itself; `main.rs` and tests pass those in.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{BackendState, Registry, Snapshot};
use crate::config::Config;
use crate::health::Supervisor;
use crate::proxy::{AcceptLoop, ListenerStats};
use crate::workers::WorkerSet;

/// Longest time listeners hold clients in the backlog while the first probes
/// run.
pub const FIRST_PROBES_WAIT: Duration = Duration::from_secs(10);

/// Opens the listeners once every backend has been probed (or after
/// [`FIRST_PROBES_WAIT`]).
async fn open_when_probed(shared: Arc<Shared>, open: CancellationToken) {
    let probed = async {
        while !shared.all_probed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(FIRST_PROBES_WAIT, probed)
        .await
        .is_err()
    {
        tracing::warn!("not every backend answered its first probe within {FIRST_PROBES_WAIT:?}; accepting anyway");
    }
    open.cancel();
}

/// Pending connections the kernel queues per listener before accept.
const LISTEN_BACKLOG: i32 = 1024;

/// A listener socket bound for the config's `[[listener]]` of that name.
#[derive(Debug)]
pub struct BoundListener {
    /// The listener's name.
    pub name: String,
    /// The bound, non-blocking socket.
    pub socket: std::net::TcpListener,
}

/// Binds every listener of `config`, using a socket passed by the service
/// manager where one matches the listener's name or address.
pub fn bind_with(
    config: &Config,
    mut inherited: Vec<(Option<String>, std::net::TcpListener)>,
) -> io::Result<Vec<BoundListener>> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let passed = inherited.iter().position(|(name, socket)| {
            name.as_deref() == Some(l.name.as_str())
                || (l.addr.port() != 0 && socket.local_addr().ok() == Some(l.addr))
        });
        let socket = match passed {
            Some(i) => {
                let (_, socket) = inherited.swap_remove(i);
                socket.set_nonblocking(true)?;
                tracing::info!(listener = %l.name, "using the socket passed by the service manager");
                socket
            }
            None => bind_one(l.addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listener '{}': cannot bind {}: {e}", l.name, l.listen),
                )
            })?,
        };
        crate::proxy::sockopt::tune_listener(&socket);
        out.push(BoundListener {
            name: l.name.clone(),
            socket,
        });
    }
    for (name, socket) in inherited {
        tracing::warn!(name = ?name, addr = ?socket.local_addr().ok(), "a passed socket matches no listener; closing it");
    }
    Ok(out)
}

/// Binds every listener of `config` (port 0 picks a free port).
pub fn bind(config: &Config) -> io::Result<Vec<BoundListener>> {
    bind_with(config, Vec::new())
}

/// Binds one listening socket (reuse-address, non-blocking, backlog 1024).
pub fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Raises the soft open-files limit to the hard one; returns the new limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// A running dbsplice: its tasks and the handles to observe and stop them.
#[derive(Debug)]
pub struct App {
    pub(crate) routes: Arc<ArcSwap<Snapshot>>,
    pub(crate) registry: Registry,
    pub(crate) supervisor: Supervisor,
    pub(crate) listeners: HashMap<String, ListenerHandle>,
    pub(crate) tasks: TaskTracker,
    /// The accept loops, apart: shutdown waits for them to end before it
    /// counts sessions, so that no client accepted meanwhile is dropped.
    accept_loops: TaskTracker,
    sessions: TaskTracker,
    /// Sessions open against what the open-files limit allows.
    cap: Arc<crate::proxy::cap::SessionCap>,
    /// The worker threads that accept and carry sessions; `None`: the
    /// runtime `App::start` was called on does.
    workers: Option<Arc<WorkerSet>>,
    stop_accepting: CancellationToken,
    kill_sessions: CancellationToken,
    pub(crate) stop_checks: CancellationToken,
    /// Cancelled when the first probe round is done: accept loops start.
    open: CancellationToken,
    pub(crate) changed: Arc<tokio::sync::Notify>,
    /// What the admin server reads.
    pub(crate) shared: Arc<Shared>,
}

/// The state the admin server and metrics read while dbsplice runs.
#[derive(Debug)]
pub struct Shared {
    /// The routing snapshot.
    pub routes: Arc<ArcSwap<Snapshot>>,
    /// The running listeners.
    pub listeners: Mutex<Vec<ListenerView>>,
    /// Reload counters.
    pub reload_stats: crate::reload::ReloadStats,
    /// Set once shutdown begins: not ready any more.
    pub draining: AtomicBool,
    /// Wakes the control loop to decide routing again.
    pub changed: Arc<tokio::sync::Notify>,
    /// Probe-duration histograms, recorded by the checkers.
    pub probe_histograms: Arc<crate::health::histograms::ProbeHistograms>,
    /// The process-wide session cap, for its metrics.
    pub session_cap: Arc<crate::proxy::cap::SessionCap>,
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

impl Shared {
    /// Sets (or, with `None`, clears) an operator's override on every backend
    /// named `name` in any pool; `disable` also closes their sessions at once.
    /// Returns how many backends matched.
    pub fn set_override(
        &self,
        name: &str,
        value: Option<crate::cluster::backend::Override>,
    ) -> usize {
        let snapshot = self.routes.load();
        let mut matched = 0;
        for pool in snapshot.pools() {
            for member in pool.members.iter().filter(|m| m.name == name) {
                matched += 1;
                member.state.set_admin_override(value.clone());
                if value
                    .as_ref()
                    .is_some_and(|o| o.mode == crate::vocabulary::OverrideMode::Disable)
                {
                    member.take_evict_token().cancel();
                }
            }
        }
        if matched > 0 {
            tracing::info!(
                backend = name,
                state = value.as_ref().map_or("enabled", |o| o.mode.as_str()),
                "admin override"
            );
            self.changed.notify_one();
        }
        matched
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
                .all(|m| m.state.health() != crate::vocabulary::Health::Unknown)
        });
        probed
    }
}

/// A running accept loop.
#[derive(Debug)]
pub(crate) struct ListenerHandle {
    /// Where it is bound.
    pub(crate) addr: SocketAddr,
    /// Its counters.
    pub(crate) stats: Arc<ListenerStats>,
    /// Cancelled to stop accepting on it alone.
    pub(crate) stop: CancellationToken,
}

impl App {
    /// Starts checkers and accept loops for `config` on the `bound` sockets.
    /// Must be called inside a tokio runtime, which then also carries the
    /// sessions.
    pub fn start(config: Config, bound: Vec<BoundListener>) -> io::Result<App> {
        App::start_on(config, bound, Vec::new())
    }

    /// Like [`App::start`], with every listener accepted on each of the
    /// `workers` runtimes and the sessions carried there (see
    /// [`crate::workers`]).
    pub fn start_on(
        config: Config,
        bound: Vec<BoundListener>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> io::Result<App> {
        let mut registry = Registry::default();
        let snapshot = Snapshot::build(Arc::new(config), 1, &mut registry, None);
        let routes = Arc::new(ArcSwap::from_pointee(snapshot));
        let routes_for_shared = Arc::clone(&routes);
        let changed = Arc::new(tokio::sync::Notify::new());
        let histograms = Arc::new(crate::health::histograms::ProbeHistograms::default());
        let cap = Arc::new(crate::proxy::cap::SessionCap::for_this_process());
        let mut app = App {
            routes,
            registry,
            supervisor: Supervisor::new(Arc::clone(&changed), Arc::clone(&histograms)),
            listeners: HashMap::new(),
            tasks: TaskTracker::new(),
            accept_loops: TaskTracker::new(),
            sessions: TaskTracker::new(),
            cap: Arc::clone(&cap),
            workers: (!workers.is_empty()).then(|| Arc::new(WorkerSet::new(workers))),
            stop_accepting: CancellationToken::new(),
            kill_sessions: CancellationToken::new(),
            stop_checks: CancellationToken::new(),
            open: CancellationToken::new(),
            changed: Arc::clone(&changed),
            shared: Arc::new(Shared {
                routes: Arc::clone(&routes_for_shared),
                listeners: Mutex::new(Vec::new()),
                reload_stats: crate::reload::ReloadStats::default(),
                draining: AtomicBool::new(false),
                changed: Arc::clone(&changed),
                probe_histograms: histograms,
                session_cap: cap,
            }),
        };
        app.supervisor.reconcile(
            &app.routes.load().config,
            &app.registry,
            &app.tasks,
            &app.stop_checks,
        );
        tracing::info!(
            max_sessions = app.cap.limit(),
            "at most {} sessions at once: two open files each, within the open-files limit",
            app.cap.limit()
        );
        app.tasks.spawn(crate::control::run(
            Arc::clone(&app.routes),
            changed,
            app.stop_checks.clone(),
        ));
        for b in bound {
            app.spawn_listener(b)?;
        }
        app.publish_listeners();
        app.tasks
            .spawn(open_when_probed(Arc::clone(&app.shared), app.open.clone()));
        Ok(app)
    }

    pub(crate) fn spawn_listener(&mut self, bound: BoundListener) -> io::Result<()> {
        let addr = bound.socket.local_addr()?;
        let stats = Arc::new(ListenerStats::default());
        tracing::info!(listener = %bound.name, %addr, "listening");
        let stop = self.stop_accepting.child_token();
        let handle = ListenerHandle {
            addr,
            stats: Arc::clone(&stats),
            stop: stop.clone(),
        };
        if let Some(old) = self.listeners.insert(bound.name.clone(), handle) {
            old.stop.cancel();
        }
        let accept = |listener, worker| AcceptLoop {
            name: bound.name.clone(),
            worker,
            listener,
            routes: Arc::clone(&self.routes),
            stats: Arc::clone(&stats),
            sessions: self.sessions.clone(),
            stop: stop.clone(),
            kill: self.kill_sessions.clone(),
            cap: Arc::clone(&self.cap),
            open: self.open.clone(),
        };
        let Some(workers) = &self.workers else {
            let listener = tokio::net::TcpListener::from_std(bound.socket)?;
            self.accept_loops.spawn(accept(listener, None).run());
            return Ok(());
        };
        // One accept loop per worker, each on its own duplicate of the socket,
        // registered with that worker's runtime.
        let handles = workers.handles();
        let mut sockets = Vec::with_capacity(handles.len());
        for _ in 1..handles.len() {
            sockets.push(bound.socket.try_clone()?);
        }
        sockets.push(bound.socket);
        for (index, (socket, handle)) in sockets.into_iter().zip(handles).enumerate() {
            let listener = {
                let _entered = handle.enter();
                tokio::net::TcpListener::from_std(socket)?
            };
            let worker = Some((index, Arc::clone(workers)));
            self.accept_loops
                .spawn_on(accept(listener, worker).run(), handle);
        }
        Ok(())
    }

    /// Resolves once the listeners accept (every backend probed once, or
    /// [`FIRST_PROBES_WAIT`] passed).
    pub async fn accepting(&self) {
        self.open.cancelled().await;
    }

    /// What the admin server reads.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Publishes the running listeners for the admin server.
    pub(crate) fn publish_listeners(&self) {
        let mut views: Vec<ListenerView> = self
            .listeners
            .iter()
            .map(|(name, l)| ListenerView {
                name: name.clone(),
                addr: l.addr,
                stats: Arc::clone(&l.stats),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        *self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = views;
    }

    /// The address a listener is bound to.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.get(listener).map(|l| l.addr)
    }

    /// A listener's counters.
    pub fn listener_stats(&self, listener: &str) -> Option<Arc<ListenerStats>> {
        self.listeners.get(listener).map(|l| Arc::clone(&l.stats))
    }

    /// The live state of a backend, by its address as written in the config.
    pub fn backend(&self, address: &str) -> Option<Arc<BackendState>> {
        self.registry.get(address).cloned()
    }

    /// Lets backends held after returning from down take traffic again in
    /// `pool` (`failback = "manual"`). Returns how many were held, or `None`
    /// for an unknown pool.
    pub fn failback(&self, pool: &str) -> Option<usize> {
        let snapshot = self.routes.load();
        let held = snapshot.pool(pool)?.approve_failback();
        self.changed.notify_one();
        tracing::info!(pool, held, "manual fail-back");
        Some(held)
    }

    /// Sessions each worker thread carries now (empty without workers).
    pub fn worker_sessions(&self) -> Vec<usize> {
        self.workers.as_ref().map_or_else(Vec::new, |w| {
            (0..w.handles().len()).map(|i| w.active(i)).collect()
        })
    }

    /// The current routing snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.routes.load_full()
    }

    /// Stops accepting, lets open sessions finish for up to `grace`, closes the
    /// rest, then stops the checkers. Returns the number of sessions closed by force.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.stop_accepting.cancel();
        // An accept loop on a worker thread may admit one more client before
        // it sees the cancellation: that session must be counted below.
        self.accept_loops.close();
        self.accept_loops.wait().await;
        self.sessions.close();
        let open = self.sessions.len();
        if open > 0 {
            tracing::info!(sessions = open, "draining sessions for up to {grace:?}");
        }
        let mut forced = 0;
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            forced = self.sessions.len();
            tracing::warn!(
                sessions = forced,
                "shutdown grace over, closing the remaining sessions"
            );
            self.kill_sessions.cancel();
            self.sessions.wait().await;
        }
        self.stop_checks.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        forced
    }
}
