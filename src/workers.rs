//! The threads that carry client sessions.
//!
//! Each worker is one OS thread running its own single-threaded tokio
//! runtime with its own accept loop on every listener (duplicates of the same
//! listening socket). A session stays on the thread that accepted it, so its
//! two sockets, its buffers and its wake-ups never cross threads: no work
//! stealing, no cross-thread notifications on the hot path. The kernel hands
//! each new connection to whichever worker is waiting in `accept`; a worker
//! that is two sessions ahead of the least busy one passes the new session
//! on ([`WorkerSet::place`]). Health checks, the control module and the admin
//! server run on the main runtime.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Running worker threads; stopped (and joined) on drop.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
            stop: stop.clone(),
        };
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("dbsplice-w{i}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The workers' runtimes, to spawn accept loops on.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// The number of worker threads for this machine: one per CPU.
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// The worker runtimes with the number of sessions each carries, for
/// keeping them even: the kernel gives a new connection to whichever worker
/// wins the race to `accept`, which can leave one worker with most of a
/// pool of long-lived connections while the other idles.
#[derive(Debug)]
pub struct WorkerSet {
    handles: Vec<Handle>,
    active: Vec<AtomicUsize>,
}

/// Counts a session on its worker for as long as it lives.
#[derive(Debug)]
pub struct WorkerSession {
    set: Arc<WorkerSet>,
    index: usize,
}

impl WorkerSet {
    /// A set over these runtimes, none carrying a session yet.
    pub fn new(handles: Vec<Handle>) -> WorkerSet {
        let active = handles.iter().map(|_| AtomicUsize::new(0)).collect();
        WorkerSet { handles, active }
    }

    /// The runtimes, in worker order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Where a session accepted on worker `here` should run: here, unless
    /// that would leave this worker two or more sessions ahead of the
    /// least busy one. A move costs a deregistration and a registration, so
    /// a difference of one is left alone.
    pub fn place(&self, here: usize) -> usize {
        let load = |i: usize| self.active.get(i).map_or(0, |a| a.load(Ordering::Relaxed));
        let least = (0..self.active.len())
            .min_by_key(|&i| load(i))
            .unwrap_or(here);
        if load(here) > load(least) + 1 {
            least
        } else {
            here
        }
    }

    /// Counts a session on worker `index`.
    pub fn session(self: &Arc<Self>, index: usize) -> WorkerSession {
        if let Some(a) = self.active.get(index) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        WorkerSession {
            set: Arc::clone(self),
            index,
        }
    }

    /// Sessions worker `index` carries now.
    pub fn active(&self, index: usize) -> usize {
        self.active
            .get(index)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        if let Some(a) = self.set.active.get(self.index) {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_moves_only_when_its_worker_is_two_ahead() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let set = Arc::new(WorkerSet::new(vec![
            runtime.handle().clone(),
            runtime.handle().clone(),
        ]));
        assert_eq!(set.place(0), 0);
        let a = set.session(0);
        assert_eq!(set.place(0), 0, "one ahead stays");
        let b = set.session(0);
        assert_eq!(set.place(0), 1, "two ahead moves to the idle worker");
        assert_eq!(set.place(1), 1);
        let c = set.session(1);
        assert_eq!(set.place(0), 0);
        drop((a, b, c));
        assert_eq!((set.active(0), set.active(1)), (0, 0), "guards count down");
    }
}
