//! Moving bytes both ways between a client and its backend, with half-close.
//!
//! Each direction waits for readability without holding a buffer, then
//! borrows one from its thread's cache, reads and writes until the socket has
//! nothing more to give and hands the buffer back, so an idle session costs
//! two sockets and a task but no copy buffers. A read shorter than the buffer
//! means the socket is drained: the direction goes back to waiting without
//! the extra read that would only say "would block". When one side stops
//! sending (EOF), the other side's write half is shut down and the opposite
//! direction carries on until it ends too, for the listener's
//! `half_close_timeout` at most.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read in one go before they are written on.
const CHUNK: usize = 32 * 1024;

/// Buffers a thread keeps for its next readable socket: enough for the
/// sessions that move data at the same moment, few enough to be cheap.
const CACHED_PER_THREAD: usize = 32;

/// How long a client's EOF waits for the server to close on its own before
/// dbsplice passes the EOF on. A MySQL server closes at once after COM_QUIT;
/// letting it close first leaves the TIME_WAIT entry with the server instead
/// of with dbsplice, whose connects to that server would otherwise have to
/// search past thousands of such entries for a free source port under
/// connection churn.
const SERVER_CLOSES_FIRST: Duration = Duration::from_millis(100);

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from the thread's cache while data flows.
struct Buffer(Box<[u8]>);

impl Buffer {
    fn take() -> Buffer {
        let cached = BUFFERS.with(|b| b.borrow_mut().pop());
        Buffer(cached.unwrap_or_else(|| vec![0; CHUNK].into_boxed_slice()))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // A task may move threads between taking and dropping; the cache of
        // whichever thread drops it keeps it.
        let _ = BUFFERS.try_with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < CACHED_PER_THREAD {
                b.push(buf);
            }
        });
    }
}

/// Which end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The application's connection to dbsplice.
    Client,
    /// dbsplice's connection to the server.
    Backend,
}

/// Why a session ended.
#[derive(Debug)]
pub enum CloseReason {
    /// Both directions ended with EOF; this side stopped sending first.
    Closed(Side),
    /// A read or write on this side failed.
    Error(Side, io::Error),
    /// No byte moved either way for the listener's `idle_timeout`.
    IdleTimeout,
    /// One side had closed and the other had not for the listener's
    /// `half_close_timeout`; the side that closed first.
    HalfCloseTimeout(Side),
    /// dbsplice closed it: the shutdown grace ran out.
    Killed,
    /// dbsplice closed it: the backend left rotation and the pool's
    /// `on_down` policy closes its sessions.
    Evicted,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Closed(Side::Client) => f.write_str("client closed"),
            CloseReason::Closed(Side::Backend) => f.write_str("backend closed"),
            CloseReason::Error(Side::Client, e) => write!(f, "client error: {e}"),
            CloseReason::Error(Side::Backend, e) => write!(f, "backend error: {e}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::HalfCloseTimeout(Side::Client) => {
                f.write_str("half-close timeout: the client closed, the backend never did")
            }
            CloseReason::HalfCloseTimeout(Side::Backend) => {
                f.write_str("half-close timeout: the backend closed, the client never did")
            }
            CloseReason::Killed => f.write_str("closed by dbsplice at shutdown"),
            CloseReason::Evicted => {
                f.write_str("closed by dbsplice: the backend left rotation (on_down)")
            }
        }
    }
}

/// What a finished session moved and why it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes from the client to the backend.
    pub to_backend: u64,
    /// Bytes from the backend to the client.
    pub to_client: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

/// Shared between the two directions of one session.
struct Tally {
    to_backend: AtomicU64,
    to_client: AtomicU64,
    /// 0 until a side sends EOF; then 1 (client) or 2 (backend) for the first.
    first_eof: AtomicU8,
    /// Told when the backend's EOF has been passed to the client.
    backend_done: tokio::sync::Notify,
    /// Told when the first side sends EOF.
    half_closed: tokio::sync::Notify,
    /// Milliseconds from `start` to the last byte, rounded up so a session is
    /// never closed before a full `idle_timeout` of silence; kept only with an
    /// idle timeout.
    last_activity: Option<(Instant, AtomicU64)>,
}

impl Tally {
    fn touch(&self) {
        if let Some((start, last)) = &self.last_activity {
            let ms =
                u64::try_from(start.elapsed().as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
            last.store(ms, Ordering::Relaxed);
        }
    }

    /// When the session idles out if no byte moves before then.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let (start, last) = self.last_activity.as_ref()?;
        Some(*start + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout)
    }
}

/// A listener's deadlines for its sessions.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No byte either way for this long ends the session.
    pub idle: Option<Duration>,
    /// One side closed and the other not for this long ends it.
    pub half_close: Duration,
}

/// Splices until both directions end, one fails, the session idles out or
/// stays half-closed too long, or `stop` resolves (shutdown, or the pool's
/// `on_down` policy) with its reason.
pub async fn splice(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    timeouts: Timeouts,
    stop: impl std::future::Future<Output = CloseReason>,
) -> Outcome {
    let idle_timeout = timeouts.idle;
    let tally = Tally {
        to_backend: AtomicU64::new(0),
        to_client: AtomicU64::new(0),
        first_eof: AtomicU8::new(0),
        backend_done: tokio::sync::Notify::new(),
        half_closed: tokio::sync::Notify::new(),
        last_activity: idle_timeout.map(|_| (Instant::now(), AtomicU64::new(0))),
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let both = async {
        tokio::try_join!(
            pump(
                &mut client_read,
                &mut backend_write,
                Side::Client,
                &tally.to_backend,
                &tally
            ),
            pump(
                &mut backend_read,
                &mut client_write,
                Side::Backend,
                &tally.to_client,
                &tally
            ),
        )
    };
    let reason = tokio::select! {
        r = both => match r {
            Ok(((), ())) => CloseReason::Closed(if tally.first_eof.load(Ordering::Relaxed) == 2 { Side::Backend } else { Side::Client }),
            Err((side, e)) => CloseReason::Error(side, e),
        },
        () = idle_watch(idle_timeout, &tally) => CloseReason::IdleTimeout,
        side = half_close_watch(timeouts.half_close, &tally) => CloseReason::HalfCloseTimeout(side),
        reason = stop => reason,
    };
    Outcome {
        to_backend: tally.to_backend.load(Ordering::Relaxed),
        to_client: tally.to_client.load(Ordering::Relaxed),
        reason,
    }
}

/// Copies from `src` (on side `from`) to `dst` until EOF, then shuts `dst`'s
/// write half so the peer sees the half-close.
async fn pump(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    from: Side,
    moved: &AtomicU64,
    tally: &Tally,
) -> Result<(), (Side, io::Error)> {
    let to = match from {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    };
    loop {
        src.readable().await.map_err(|e| (from, e))?;
        let mut buf = Buffer::take();
        loop {
            match read_now(src, &mut buf.0).await {
                None => {
                    drop(buf);
                    // Either the socket is empty (its readiness is cleared
                    // and the wait below is real) or the task used up its
                    // scheduling budget, which only a yield restores:
                    // `readable` alone would spin.
                    tokio::task::consume_budget().await;
                    break;
                }
                Some(Ok(0)) => {
                    drop(buf);
                    return ended(from, dst, tally).await;
                }
                Some(Ok(n)) => {
                    let data = buf.0.get(..n).unwrap_or_default();
                    if let Err(e) = dst.write_all(data).await {
                        return if peer_gone(&e, to, tally) {
                            Ok(())
                        } else {
                            Err((to, e))
                        };
                    }
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    tally.touch();
                    if n < buf.0.len() {
                        // Drained: tokio cleared the socket's readiness.
                        break;
                    }
                }
                Some(Err(e)) => return Err((from, e)),
            }
        }
    }
}

/// Whether a failed write to `to` is the normal end of a session: `to` had
/// already ended its own direction and has now closed its socket (a TLS
/// client's close alert sent after the server closed on COM_QUIT, say).
/// Nothing more can reach it; this direction ends as if at EOF.
fn peer_gone(e: &io::Error, to: Side, tally: &Tally) -> bool {
    let code = if to == Side::Client { 1 } else { 2 };
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    ) && tally.first_eof.load(Ordering::Relaxed) == code
}

/// `from` reached EOF: passes the half-close on to `dst` unless the other
/// direction ended first (closing both sockets sends the FIN then).
async fn ended(
    from: Side,
    dst: &mut WriteHalf<'_>,
    tally: &Tally,
) -> Result<(), (Side, io::Error)> {
    let to = match from {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    };
    let code = if from == Side::Client { 1 } else { 2 };
    let other_ended_first = tally
        .first_eof
        .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed)
        .is_err();
    if !other_ended_first {
        tally.half_closed.notify_one();
    }
    // Once both directions have ended the session closes both sockets, and
    // the close sends the FIN: a shutdown call is needed only to pass on a
    // half-close.
    if from == Side::Client {
        // A permit stored by a backend EOF that came first ends the wait at
        // once.
        let server_closed = other_ended_first
            || tokio::time::timeout(SERVER_CLOSES_FIRST, tally.backend_done.notified())
                .await
                .is_ok();
        if server_closed {
            return Ok(());
        }
        return dst.shutdown().await.map_err(|e| (to, e));
    }
    let shut = if other_ended_first {
        Ok(())
    } else {
        dst.shutdown().await.map_err(|e| (to, e))
    };
    tally.backend_done.notify_one();
    shut
}

/// One read of what the socket holds now: `None` when it holds nothing (the
/// task is then registered for its next readiness). Unlike `try_read`, a
/// short read clears the socket's readiness, which saves the read that would
/// only fail with "would block".
async fn read_now(src: &mut ReadHalf<'_>, buf: &mut [u8]) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *src).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(read.filled().len()))),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    })
    .await
}

/// Resolves `timeout` after the first side sent EOF, with that side.
async fn half_close_watch(timeout: Duration, tally: &Tally) -> Side {
    tally.half_closed.notified().await;
    tokio::time::sleep(timeout).await;
    if tally.first_eof.load(Ordering::Relaxed) == 2 {
        Side::Backend
    } else {
        Side::Client
    }
}

/// Resolves once no byte has moved for `timeout`; never without a timeout.
async fn idle_watch(timeout: Option<Duration>, tally: &Tally) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let Some(deadline) = tally.idle_deadline(timeout) else {
            return std::future::pending().await;
        };
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (outer, inner) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (outer.unwrap(), inner.unwrap().0)
    }

    #[tokio::test]
    async fn writing_to_a_backend_that_ended_and_closed_is_a_normal_end() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut client_inner) = pair().await;
        let (mut backend_inner, backend) = pair().await;
        // The server answers COM_QUIT by closing.
        let splicing = tokio::spawn(async move {
            let timeouts = Timeouts {
                idle: None,
                half_close: Duration::from_secs(30),
            };
            splice(
                &mut client_inner,
                &mut backend_inner,
                timeouts,
                std::future::pending(),
            )
            .await
        });
        let mut backend = backend;
        backend.write_all(b"bye").await.unwrap();
        drop(backend);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"bye", "the server's last bytes, then its EOF");
        // The client's late close alert: writes until the session ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !splicing.is_finished() && Instant::now() < deadline {
            let _ = client.write_all(b"alert").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(1), splicing)
            .await
            .expect("the session ended")
            .unwrap();
        assert!(
            matches!(outcome.reason, CloseReason::Closed(Side::Backend)),
            "{}",
            outcome.reason
        );
    }

    fn tally_with_idle_timeout() -> Tally {
        Tally {
            to_backend: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            first_eof: AtomicU8::new(0),
            backend_done: tokio::sync::Notify::new(),
            half_closed: tokio::sync::Notify::new(),
            last_activity: Some((Instant::now(), AtomicU64::new(0))),
        }
    }

    /// A byte moved part-way through a millisecond still buys a full timeout.
    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_is_a_full_timeout_after_the_last_byte() {
        let timeout = Duration::from_millis(400);
        let tally = tally_with_idle_timeout();
        tokio::time::advance(Duration::from_micros(5_900)).await;
        tally.touch();
        let last_byte = Instant::now();
        let deadline = tally.idle_deadline(timeout).unwrap();
        assert!(
            deadline >= last_byte + timeout,
            "closes after {:?} of silence",
            deadline - last_byte
        );
        assert!(deadline < last_byte + timeout + Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_session_ends_a_full_timeout_after_the_first_eof() {
        let timeout = Duration::from_secs(30);
        let tally = tally_with_idle_timeout();
        let watch = half_close_watch(timeout, &tally);
        tokio::pin!(watch);
        tokio::select! {
            _ = &mut watch => panic!("a session where neither side closed timed out"),
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        tally.first_eof.store(2, Ordering::Relaxed);
        tally.half_closed.notify_one();
        let closed = Instant::now();
        assert_eq!(watch.await, Side::Backend);
        assert_eq!(closed.elapsed(), timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_the_idle_watch_waiting() {
        let timeout = Duration::from_millis(400);
        let tally = tally_with_idle_timeout();
        let watch = idle_watch(Some(timeout), &tally);
        tokio::pin!(watch);
        for _ in 0..10 {
            tokio::select! {
                () = &mut watch => panic!("a session with traffic every 300 ms idled out"),
                () = tokio::time::sleep(Duration::from_millis(300)) => tally.touch(),
            }
        }
        let last_byte = Instant::now();
        watch.await;
        assert!(last_byte.elapsed() >= timeout);
    }
}
