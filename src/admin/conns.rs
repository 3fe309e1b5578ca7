//! The admin server's connections, bounded so that whoever can reach its
//! port cannot exhaust dbsplice without a token: a cap inside its own share
//! of the descriptor budget, eviction of the oldest connection with no
//! request in progress when the cap is reached, and a deadline on any
//! connection that makes no progress.
//!
//! Eviction rather than refusal keeps the server usable under a flood of
//! unfinished connections: a client that sends its request at once (a
//! health check, a scrape, the CLI) is served before enough newer
//! connections arrive to push it out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The admin server's share of the descriptors kept outside sessions: a
/// quarter of them, at least 4. The rest stays for probes, listeners and
/// the process itself, so a full admin server never starves the data path.
pub fn admin_share(reserved_fds: u64) -> usize {
    usize::try_from((reserved_fds / 4).max(4)).unwrap_or(usize::MAX)
}

/// The open admin connections, oldest first.
#[derive(Debug)]
pub(super) struct Table {
    inner: Mutex<Inner>,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    open: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    busy: Arc<AtomicBool>,
    evict: CancellationToken,
    last: Arc<AtomicU64>,
}

/// Why a new connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Full;

impl Table {
    pub(super) fn new() -> Table {
        Table {
            inner: Mutex::new(Inner::default()),
            epoch: Instant::now(),
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more connection under `cap`. At the cap the
    /// connection with no request in progress where a byte moved longest ago
    /// (the oldest of those on a tie) is told to close: one still writing an
    /// answer has just moved bytes and stays. When every one is serving a
    /// request, [`Full`].
    pub(super) fn admit(self: &Arc<Self>, cap: usize) -> Result<Conn, Full> {
        let mut inner = self.lock();
        while inner.open.len() >= cap.max(1) {
            let idle = inner
                .open
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.busy.load(Ordering::Acquire))
                .min_by_key(|(i, e)| (e.last.load(Ordering::Relaxed), *i))
                .map(|(i, _)| i)
                .ok_or(Full)?;
            if let Some(entry) = inner.open.remove(idle) {
                entry.evict.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        let last = Arc::new(AtomicU64::new(self.millis_since_epoch()));
        inner.open.push_back(Entry {
            id,
            busy: Arc::clone(&busy),
            evict: evict.clone(),
            last: Arc::clone(&last),
        });
        Ok(Conn {
            id,
            busy,
            evict,
            last,
            table: Arc::clone(self),
        })
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One admitted connection; leaves the table when dropped.
#[derive(Debug)]
pub(super) struct Conn {
    id: u64,
    busy: Arc<AtomicBool>,
    evict: CancellationToken,
    /// Milliseconds after the table's epoch when a byte last moved.
    last: Arc<AtomicU64>,
    table: Arc<Table>,
}

impl Conn {
    /// Marks a request in progress until the guard drops: a connection
    /// serving a request is never evicted.
    pub(super) fn busy(&self) -> BusyGuard {
        self.busy.store(true, Ordering::Release);
        BusyGuard {
            busy: Arc::clone(&self.busy),
            last: Arc::clone(&self.last),
            table: Arc::clone(&self.table),
        }
    }

    /// The connection's stream, noting every byte that moves.
    pub(super) fn track<S>(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            last: Arc::clone(&self.last),
            table: Arc::clone(&self.table),
        }
    }

    /// Resolves when the connection must end: evicted, or `stalled` passed
    /// with no byte moving either way while no request was in progress (a
    /// request waits for its answer, not for the client).
    pub(super) async fn ended(&self, stalled: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.table.epoch + last + stalled;
            tokio::select! {
                () = self.evict.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {}
            }
            let quiet = self
                .table
                .millis_since_epoch()
                .saturating_sub(self.last.load(Ordering::Relaxed));
            if quiet >= u64::try_from(stalled.as_millis()).unwrap_or(u64::MAX)
                && !self.busy.load(Ordering::Acquire)
            {
                return;
            }
            if self.busy.load(Ordering::Acquire) {
                self.last
                    .store(self.table.millis_since_epoch(), Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        if let Some(at) = inner.open.iter().position(|e| e.id == self.id) {
            inner.open.remove(at);
        }
    }
}

/// Clears a connection's request-in-progress mark on drop; the deadline
/// for the next request counts from then.
#[derive(Debug)]
pub(super) struct BusyGuard {
    busy: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    table: Arc<Table>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.last
            .store(self.table.millis_since_epoch(), Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
    }
}

/// A stream that notes when a byte last moved.
#[derive(Debug)]
pub(super) struct Tracked<S> {
    inner: S,
    last: Arc<AtomicU64>,
    table: Arc<Table>,
}

impl<S> Tracked<S> {
    fn moved(&self, poll: &Poll<std::io::Result<()>>, moved: bool) {
        if moved && matches!(poll, Poll::Ready(Ok(()))) {
            self.last
                .store(self.table.millis_since_epoch(), Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.moved(&poll, moved);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.moved(&Poll::Ready(Ok(())), n > 0);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let table = Arc::new(Table::new());
        let first = table.admit(2).unwrap();
        let second = table.admit(2).unwrap();
        let serving = first.busy();
        let third = table.admit(2).unwrap();
        assert!(!first.evict.is_cancelled(), "a request in progress stays");
        assert!(second.evict.is_cancelled(), "the oldest idle one goes");
        assert_eq!(table.len(), 2);
        let _fourth_in_waiting = third.busy();
        assert_eq!(table.admit(2).unwrap_err(), Full, "every one is busy");
        drop(serving);
        let _fourth = table.admit(2).unwrap();
        assert!(first.evict.is_cancelled());
        drop(second);
        assert_eq!(table.len(), 2, "an evicted connection left at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_still_moving_bytes_outlives_older_silent_ones() {
        let table = Arc::new(Table::new());
        let writing = table.admit(2).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let silent = table.admit(2).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        // An answer going out on the older connection.
        let (mut client, server) = tokio::io::duplex(64);
        let mut tracked = writing.track(server);
        tokio::io::AsyncWriteExt::write_all(&mut tracked, b"HTTP/1.1 200 OK")
            .await
            .unwrap();
        let mut seen = [0u8; 15];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut seen)
            .await
            .unwrap();
        let _third = table.admit(2).unwrap();
        assert!(silent.evict.is_cancelled(), "the silent one goes");
        assert!(!writing.evict.is_cancelled(), "the one writing stays");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_where_nothing_moves_ends_at_its_deadline() {
        let table = Arc::new(Table::new());
        let conn = table.admit(4).unwrap();
        let (mut ours, theirs) = tokio::io::duplex(64);
        let mut tracked = conn.track(theirs);
        let started = Instant::now();
        let stalled = Duration::from_secs(10);
        tokio::select! {
            () = conn.ended(stalled) => panic!("ended while bytes were moving"),
            () = async {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    tokio::io::AsyncWriteExt::write_all(&mut ours, b"x").await.unwrap();
                    let mut b = [0u8; 1];
                    tokio::io::AsyncReadExt::read_exact(&mut tracked, &mut b).await.unwrap();
                }
            } => {}
        }
        let quiet_from = Instant::now();
        assert!(quiet_from - started >= Duration::from_secs(30));
        let busy = conn.busy();
        tokio::select! {
            () = conn.ended(stalled) => panic!("ended while a request was in progress"),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        drop(busy);
        let before = Instant::now();
        conn.ended(stalled).await;
        let waited = Instant::now() - before;
        assert_eq!(waited, stalled, "a full deadline after the request ended");
    }
}
