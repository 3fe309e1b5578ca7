//! The threads that carry client sessions.
//!
//! Each worker is one OS thread running its own single-threaded tokio
//! runtime with its own accept loop on every listener (duplicates of the same
//! listening socket). A session stays on the thread that accepted it, so its
//! two sockets, its buffers and its wake-ups never cross threads: no work
//! stealing, no cross-thread notifications on the hot path. The kernel hands
//! each new connection to whichever worker is waiting in `accept`, so a busy
//! worker takes fewer new sessions. Health checks, the control loop and the
//! admin server run on the main runtime.

use std::io;
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
