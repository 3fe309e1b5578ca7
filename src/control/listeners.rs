//! The running accept loops, by listener name: started at start and by a
//! reload that adds or moves a listener, stopped by one that removes it, and
//! published for the admin server.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::Lifecycle;
use crate::admin::shared::{ListenerView, Shared};
use crate::cluster::Snapshot;
use crate::proxy::bind::BoundListener;
use crate::proxy::cap::SessionCap;
use crate::proxy::{AcceptLoop, Adopter, ListenerStats};
use crate::workers::WorkerSet;

/// A running accept loop.
#[derive(Debug)]
struct Handle {
    /// Where it is bound.
    addr: SocketAddr,
    /// Its counters.
    stats: Arc<ListenerStats>,
    /// Cancelled to stop accepting on it alone.
    stop: CancellationToken,
    /// A copy of the socket: for a hand-over, and to accept again after one
    /// that failed.
    socket: std::net::TcpListener,
    /// Its accept loops.
    loops: Vec<tokio::task::JoinHandle<()>>,
}

/// Every running listener and what a new one needs.
#[derive(Debug)]
pub struct Listeners {
    running: HashMap<String, Handle>,
    routes: Arc<ArcSwap<Snapshot>>,
    cap: Arc<SessionCap>,
    /// The worker threads that accept and carry sessions; `None`: the
    /// runtime the control module runs on does.
    workers: Option<Arc<WorkerSet>>,
    life: Lifecycle,
}

impl Listeners {
    /// No listener yet.
    pub fn new(
        routes: Arc<ArcSwap<Snapshot>>,
        cap: Arc<SessionCap>,
        workers: Option<Arc<WorkerSet>>,
        life: Lifecycle,
    ) -> Listeners {
        Listeners {
            running: HashMap::new(),
            routes,
            cap,
            workers,
            life,
        }
    }

    /// Starts accepting on `bound` (replacing a listener of the same name).
    pub fn start(&mut self, bound: BoundListener) -> io::Result<()> {
        let stats = Arc::new(ListenerStats::default());
        self.start_counting(bound, stats)
    }

    /// Starts accepting on `bound`, counting in `stats`.
    fn start_counting(
        &mut self,
        bound: BoundListener,
        stats: Arc<ListenerStats>,
    ) -> io::Result<()> {
        let addr = bound.socket.local_addr()?;
        tracing::info!(listener = %bound.name, %addr, "listening");
        let stop = self.life.stop_accepting.child_token();
        let loops = self.spawn_loops(&bound, &stats, &stop)?;
        let handle = Handle {
            addr,
            stats,
            stop,
            socket: bound.socket,
            loops,
        };
        if let Some(old) = self.running.insert(bound.name, handle) {
            old.stop.cancel();
        }
        Ok(())
    }

    /// The accept loops of one listener, on copies of its socket.
    fn spawn_loops(
        &self,
        bound: &BoundListener,
        stats: &Arc<ListenerStats>,
        stop: &CancellationToken,
    ) -> io::Result<Vec<tokio::task::JoinHandle<()>>> {
        let accept = |listener, worker| AcceptLoop {
            name: bound.name.clone(),
            worker,
            listener,
            routes: Arc::clone(&self.routes),
            stats: Arc::clone(stats),
            sessions: self.life.sessions.clone(),
            stop: stop.clone(),
            draining: self.life.stop_accepting.clone(),
            kill: self.life.kill_sessions.clone(),
            cap: Arc::clone(&self.cap),
            board: Arc::clone(&self.life.board),
            open: self.life.open.clone(),
        };
        let Some(workers) = &self.workers else {
            let listener = tokio::net::TcpListener::from_std(bound.socket.try_clone()?)?;
            return Ok(vec![self
                .life
                .accept_loops
                .spawn(accept(listener, None).run())]);
        };
        // One accept loop per worker, each on its own duplicate of the socket,
        // registered with that worker's runtime.
        let mut loops = Vec::new();
        for (index, handle) in workers.handles().iter().enumerate() {
            let listener = {
                let _entered = handle.enter();
                tokio::net::TcpListener::from_std(bound.socket.try_clone()?)?
            };
            let worker = Some((index, Arc::clone(workers)));
            loops.push(
                self.life
                    .accept_loops
                    .spawn_on(accept(listener, worker).run(), handle),
            );
        }
        Ok(loops)
    }

    /// Stops every accept loop and waits for them to end (clients wait in
    /// the kernel's backlog meanwhile); the sockets stay open.
    pub fn suspend(&mut self) -> impl std::future::Future<Output = ()> {
        let mut loops = Vec::new();
        for handle in self.running.values_mut() {
            handle.stop.cancel();
            loops.append(&mut handle.loops);
        }
        async move {
            for l in loops {
                let _ = l.await;
            }
        }
    }

    /// Accepts again on every listener [`Listeners::suspend`] stopped.
    pub fn resume(&mut self) {
        let names: Vec<String> = self
            .running
            .iter()
            .filter(|(_, h)| h.loops.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(old) = self.running.remove(&name) else {
                continue;
            };
            let again = old.socket.try_clone().and_then(|socket| {
                self.start_counting(
                    BoundListener {
                        name: name.clone(),
                        socket,
                    },
                    Arc::clone(&old.stats),
                )
            });
            if let Err(e) = again {
                tracing::error!(listener = %name, "cannot accept again after the hand-over failed: {e}");
                self.running.insert(name, old);
            }
        }
    }

    /// Forgets every listener, closing the copies of their sockets kept
    /// here: at shutdown, once the accept loops have ended, new clients are
    /// refused instead of queueing in a backlog no one reads.
    pub fn close_all(&mut self) {
        for handle in self.running.values() {
            handle.stop.cancel();
        }
        self.running.clear();
    }

    /// Copies of every listening socket, by listener name.
    pub fn sockets(&self) -> io::Result<Vec<(String, std::net::TcpListener)>> {
        self.running
            .iter()
            .map(|(name, h)| Ok((name.clone(), h.socket.try_clone()?)))
            .collect()
    }

    /// Where listener `name` carries sessions taken over from the process
    /// before this one.
    pub fn adopter(&self, name: &str) -> Option<Adopter> {
        let handle = self.running.get(name)?;
        Some(Adopter {
            name: name.to_owned(),
            stats: Arc::clone(&handle.stats),
            routes: Arc::clone(&self.routes),
            sessions: self.life.sessions.clone(),
            draining: self.life.stop_accepting.clone(),
            kill: self.life.kill_sessions.clone(),
            cap: Arc::clone(&self.cap),
            board: Arc::clone(&self.life.board),
            workers: self.workers.clone(),
        })
    }

    /// Stops accepting on the listener `name`; its sessions continue.
    pub fn stop(&mut self, name: &str) {
        if let Some(handle) = self.running.remove(name) {
            tracing::info!(listener = %name, "listener removed: no longer accepting; its sessions continue");
            handle.stop.cancel();
        }
    }

    /// Publishes the running listeners for the admin server.
    pub fn publish(&self, shared: &Shared) {
        let mut views: Vec<ListenerView> = self
            .running
            .iter()
            .map(|(name, l)| ListenerView {
                name: name.clone(),
                addr: l.addr,
                stats: Arc::clone(&l.stats),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        *shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = views;
    }
}
