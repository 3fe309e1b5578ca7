//! Pausing every session for a hand-over to a new process: the board that
//! asks them to stop, the place where each leaves what the new process
//! needs (a copy of its sockets, where its splice stands), and the verdict
//! each waits for: carry on here, or end here because the new process has
//! taken it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};

use super::splice::Progress;

/// What a parked session is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The hand-over failed or was called off: carry on.
    Resume,
    /// The new process carries the session: end here without touching the
    /// sockets (the new process holds them open).
    Gone,
}

/// Where a paused client stood.
#[derive(Debug)]
pub enum Stage {
    /// Spliced to a backend.
    Spliced {
        /// A copy of the backend socket (taken by the hand-over).
        backend: Option<OwnedFd>,
        /// The backend's address as the config names it.
        address: String,
        /// Where the splice stands.
        progress: Progress,
    },
    /// Held: waiting for a backend of its pool, having seen nothing.
    Held {
        /// How long it has waited so far.
        waited: Duration,
    },
}

/// One paused session, as the new process needs it.
#[derive(Debug)]
pub struct Parked {
    /// The listener that accepted it.
    pub listener: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its pool.
    pub pool: String,
    /// A copy of the client socket (taken by the hand-over).
    pub client: Option<OwnedFd>,
    /// When the session began, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Spliced or held.
    pub stage: Stage,
}

/// A parked session and where its verdict goes.
#[derive(Debug)]
pub struct Entry {
    /// What the new process needs.
    pub parked: Parked,
    /// Where the verdict goes.
    pub verdict: oneshot::Sender<Verdict>,
}

/// The sessions of this process, and the pause they are asked for.
#[derive(Debug)]
pub struct Board {
    /// `Some(n)` while pause number `n` is asked for.
    asked: watch::Sender<Option<u64>>,
    /// Sessions alive now (accepted, not yet ended).
    live: AtomicUsize,
    parked: Mutex<Vec<Entry>>,
    /// Told whenever a session parks or ends.
    changed: Notify,
}

impl Default for Board {
    fn default() -> Board {
        Board {
            asked: watch::Sender::new(None),
            live: AtomicUsize::new(0),
            parked: Mutex::new(Vec::new()),
            changed: Notify::new(),
        }
    }
}

/// A session's place on the board: counted alive while it exists.
#[derive(Debug)]
pub struct Ticket {
    board: Arc<Board>,
    asked: watch::Receiver<Option<u64>>,
    /// The last pause this session answered.
    answered: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.board.live.fetch_sub(1, Ordering::AcqRel);
        self.board.changed.notify_waiters();
    }
}

impl Ticket {
    /// Resolves when a pause this session has not answered yet is asked for.
    pub async fn pause_asked(&mut self) {
        let answered = self.answered;
        let asked = self
            .asked
            .wait_for(|a| a.is_some_and(|n| n > answered))
            .await
            .map(|a| *a);
        match asked {
            Ok(Some(n)) => self.answered = n,
            // The board is gone, or never asks: never.
            _ => std::future::pending().await,
        }
    }

    /// Leaves `parked` on the board and waits for the verdict; a board that
    /// drops the entry without one means resume.
    pub async fn park(&self, parked: Parked) -> Verdict {
        let (verdict, told) = oneshot::channel();
        self.board
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Entry { parked, verdict });
        self.board.changed.notify_waiters();
        told.await.unwrap_or(Verdict::Resume)
    }
}

impl Board {
    /// A place for a new session.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        self.live.fetch_add(1, Ordering::AcqRel);
        let asked = self.asked.subscribe();
        // A session that starts during a pause answers it at once.
        let answered = 0;
        Ticket {
            board: Arc::clone(self),
            asked,
            answered,
        }
    }

    /// Sessions alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Asks every session to pause, and waits up to `within` for all of them
    /// to park (or end). Returns every parked entry; `Err` with them when
    /// some did not park in time (the caller resumes them).
    pub async fn pause_all(&self, within: Duration) -> Result<Vec<Entry>, Vec<Entry>> {
        let mut number = 0;
        self.asked.send_modify(|a| {
            number = a.map_or(1, |n| n + 1);
            *a = Some(number);
        });
        let deadline = tokio::time::Instant::now() + within;
        let all_parked = loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.parked_count() >= self.live() {
                break true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break self.parked_count() >= self.live();
            }
        };
        // Sessions that start from now on are not asked again.
        self.asked.send_replace(None);
        let entries =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner));
        if all_parked {
            Ok(entries)
        } else {
            Err(entries)
        }
    }

    fn parked_count(&self) -> usize {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Tells every entry the same verdict.
pub fn tell(entries: Vec<Entry>, verdict: Verdict) {
    for entry in entries {
        let _ = entry.verdict.send(verdict);
    }
}
