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
use crate::proxy::{AcceptLoop, ListenerStats};
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
        let addr = bound.socket.local_addr()?;
        let stats = Arc::new(ListenerStats::default());
        tracing::info!(listener = %bound.name, %addr, "listening");
        let stop = self.life.stop_accepting.child_token();
        let handle = Handle {
            addr,
            stats: Arc::clone(&stats),
            stop: stop.clone(),
        };
        if let Some(old) = self.running.insert(bound.name.clone(), handle) {
            old.stop.cancel();
        }
        let accept = |listener, worker| AcceptLoop {
            name: bound.name.clone(),
            worker,
            listener,
            routes: Arc::clone(&self.routes),
            stats: Arc::clone(&stats),
            sessions: self.life.sessions.clone(),
            stop: stop.clone(),
            draining: self.life.stop_accepting.clone(),
            kill: self.life.kill_sessions.clone(),
            cap: Arc::clone(&self.cap),
            open: self.life.open.clone(),
        };
        let Some(workers) = &self.workers else {
            let listener = tokio::net::TcpListener::from_std(bound.socket)?;
            self.life.accept_loops.spawn(accept(listener, None).run());
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
            self.life
                .accept_loops
                .spawn_on(accept(listener, worker).run(), handle);
        }
        Ok(())
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
