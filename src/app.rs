//! A running dbsplice, as its starter holds it: start the control module on
//! bound sockets, ask it things through its inbox, read what it publishes, and
//! drain on shutdown. The library never installs signal handlers or picks
//! ports itself; `main.rs` and tests pass those in.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::shared::Shared;
use crate::cluster::{BackendState, Snapshot};
use crate::config::Config;
use crate::control::{self, Lifecycle};
use crate::inbox::{Inbox, ReloadOutcome, Stopped, Trigger};
use crate::proxy::bind::BoundListener;
use crate::proxy::ListenerStats;
use crate::workers::WorkerSet;

/// Longest time listeners hold clients in the backlog while the first probes
/// run.
pub const FIRST_PROBES_WAIT: Duration = Duration::from_secs(10);

/// Opens the listeners once every backend has been probed (or after
/// [`FIRST_PROBES_WAIT`]).
async fn open_when_probed(shared: Arc<Shared>, open: tokio_util::sync::CancellationToken) {
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

/// Raises the soft open-files limit to the hard one; returns the new limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// A running dbsplice: its inbox, what it publishes, and how to stop it.
#[derive(Debug)]
pub struct App {
    inbox: Inbox,
    shared: Arc<Shared>,
    life: Lifecycle,
    /// The worker threads that accept and carry sessions; `None`: the
    /// runtime `App::start` was called on does.
    workers: Option<Arc<WorkerSet>>,
    /// The accept loops, shared with the control module.
    listeners: Arc<std::sync::Mutex<crate::control::listeners::Listeners>>,
}

impl App {
    /// Starts checkers and accept loops for `config` on the `bound` sockets.
    /// Must be called inside a tokio runtime, which then also carries the
    /// control module and the sessions. Reloads are refused: there is no file.
    pub fn start(config: Config, bound: Vec<BoundListener>) -> io::Result<App> {
        App::launch(config, None, bound, Vec::new(), None)
    }

    /// Like [`App::start`], with every listener accepted on each of the
    /// `workers` runtimes and the sessions carried there (see
    /// [`crate::workers`]).
    pub fn start_on(
        config: Config,
        bound: Vec<BoundListener>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> io::Result<App> {
        App::launch(config, None, bound, workers, None)
    }

    /// Like [`App::start_on`], for `config` as read from `file`, which
    /// reloads read again.
    pub fn start_from_file(
        config: Config,
        file: &Path,
        bound: Vec<BoundListener>,
        workers: Vec<tokio::runtime::Handle>,
    ) -> io::Result<App> {
        App::launch(config, Some(file), bound, workers, None)
    }

    /// Like [`App::start_from_file`], on listening sockets taken over from
    /// the process before this one, and starting from what it knew of each
    /// backend and remembered between decisions (`inherited`). Nothing is
    /// accepted until [`App::open_now`].
    pub fn take_over(
        config: Config,
        file: &Path,
        bound: Vec<BoundListener>,
        workers: Vec<tokio::runtime::Handle>,
        inherited: &crate::handover::format::State,
    ) -> io::Result<App> {
        App::launch(config, Some(file), bound, workers, Some(inherited))
    }

    fn launch(
        config: Config,
        file: Option<&Path>,
        bound: Vec<BoundListener>,
        workers: Vec<tokio::runtime::Handle>,
        inherited: Option<&crate::handover::format::State>,
    ) -> io::Result<App> {
        let workers = (!workers.is_empty()).then(|| Arc::new(WorkerSet::new(workers)));
        let started = control::start(config, file, bound, workers.clone(), inherited)?;
        if inherited.is_none() {
            started.life.tasks.spawn(open_when_probed(
                Arc::clone(&started.shared),
                started.life.open.clone(),
            ));
        }
        Ok(App {
            inbox: started.inbox,
            shared: started.shared,
            life: started.life,
            workers,
            listeners: started.listeners,
        })
    }

    /// Opens the listeners now (a process that took over).
    pub fn open_now(&self) {
        self.life.open.cancel();
    }

    /// Where sessions pause for a hand-over.
    pub fn board(&self) -> &Arc<crate::proxy::park::Board> {
        &self.life.board
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, crate::control::listeners::Listeners> {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting on every listener (clients wait in the backlog)
    /// and resolves once no accept loop runs.
    pub async fn suspend_accepting(&self) {
        let stopped = self.listeners().suspend();
        stopped.await;
    }

    /// Accepts again after [`App::suspend_accepting`].
    pub fn resume_accepting(&self) {
        self.listeners().resume();
    }

    /// Copies of every listening socket, by listener name.
    pub fn listener_sockets(&self) -> io::Result<Vec<(String, std::net::TcpListener)>> {
        self.listeners().sockets()
    }

    /// Where listener `name` carries sessions taken over.
    pub fn adopter(&self, name: &str) -> Option<crate::proxy::Adopter> {
        self.listeners().adopter(name)
    }

    /// Resolves once the listeners accept (every backend probed once, or
    /// [`FIRST_PROBES_WAIT`] passed).
    pub async fn accepting(&self) {
        self.life.open.cancelled().await;
    }

    /// What the admin server reads.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Where events for the control module go.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Reads the config file again and applies it; see [`Inbox::reload`].
    pub async fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        self.inbox.reload(trigger).await
    }

    /// The address a listener is bound to.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        let listeners = self.shared.listeners();
        listeners
            .iter()
            .find(|l| l.name == listener)
            .map(|l| l.addr)
    }

    /// A listener's counters.
    pub fn listener_stats(&self, listener: &str) -> Option<Arc<ListenerStats>> {
        let listeners = self.shared.listeners();
        listeners
            .iter()
            .find(|l| l.name == listener)
            .map(|l| Arc::clone(&l.stats))
    }

    /// The live state of a backend, by its address as written in the config.
    pub fn backend(&self, address: &str) -> Option<Arc<BackendState>> {
        self.snapshot().backend(address).cloned()
    }

    /// Lets backends held after returning from down take traffic again in
    /// `pool` (`failback = "manual"`). Returns how many were held, or `None`
    /// for an unknown pool.
    pub async fn failback(&self, pool: &str) -> Result<Option<usize>, Stopped> {
        self.inbox.failback(pool).await
    }

    /// Sessions each worker thread carries now (empty without workers).
    pub fn worker_sessions(&self) -> Vec<usize> {
        self.workers.as_ref().map_or_else(Vec::new, |w| {
            (0..w.handles().len()).map(|i| w.active(i)).collect()
        })
    }

    /// The current routing snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.routes.load_full()
    }

    /// Stops accepting, lets open sessions finish for up to `grace`, closes the
    /// rest, then stops the checkers and the control module. Returns the
    /// number of sessions closed by force.
    pub async fn shutdown(self, grace: Duration) -> usize {
        let life = &self.life;
        self.shared.draining.store(true, Ordering::Relaxed);
        life.stop_accepting.cancel();
        // An accept loop on a worker thread may admit one more client before
        // it sees the cancellation: that session must be counted below.
        life.accept_loops.close();
        life.accept_loops.wait().await;
        self.listeners().close_all();
        life.sessions.close();
        let open = life.sessions.len();
        if open > 0 {
            tracing::info!(sessions = open, "draining sessions for up to {grace:?}");
        }
        let mut forced = 0;
        if tokio::time::timeout(grace, life.sessions.wait())
            .await
            .is_err()
        {
            forced = life.sessions.len();
            tracing::warn!(
                sessions = forced,
                "shutdown grace over, closing the remaining sessions"
            );
            life.kill_sessions.cancel();
            life.sessions.wait().await;
        }
        self.inbox.shutdown().await;
        // Whatever happened to the control module, the checkers stop.
        life.stop_checks.cancel();
        life.tasks.close();
        life.tasks.wait().await;
        forced
    }
}
