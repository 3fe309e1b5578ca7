//! Moving bytes both ways between a client and its backend, with half-close.
//!
//! Each direction waits for readability without holding a buffer, then reads
//! into a buffer it frees again once the socket has nothing more to give, so an
//! idle session costs two sockets and a task but no copy buffers. When one
//! side stops sending (EOF), the other side's write half is shut down and the
//! opposite direction carries on until it ends too.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read in one go before they are written on.
const CHUNK: usize = 32 * 1024;

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
    /// Milliseconds from `start` to the last byte, kept only with an idle timeout.
    last_activity: Option<(Instant, AtomicU64)>,
}

impl Tally {
    fn touch(&self) {
        if let Some((start, last)) = &self.last_activity {
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            last.store(ms, Ordering::Relaxed);
        }
    }
}

/// Splices until both directions end, one fails, the session idles out or
/// `stop` resolves (shutdown, or the pool's `on_down` policy) with its reason.
pub async fn splice(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle_timeout: Option<Duration>,
    stop: impl std::future::Future<Output = CloseReason>,
) -> Outcome {
    let tally = Tally {
        to_backend: AtomicU64::new(0),
        to_client: AtomicU64::new(0),
        first_eof: AtomicU8::new(0),
        last_activity: idle_timeout.map(|_| (Instant::now(), AtomicU64::new(0))),
    };
    let (client_read, mut client_write) = client.split();
    let (backend_read, mut backend_write) = backend.split();
    let both = async {
        tokio::try_join!(
            pump(
                &client_read,
                &mut backend_write,
                Side::Client,
                &tally.to_backend,
                &tally
            ),
            pump(
                &backend_read,
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
    src: &ReadHalf<'_>,
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
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            buf.clear();
            match src.try_read_buf(&mut buf) {
                Ok(0) => {
                    let code = if from == Side::Client { 1 } else { 2 };
                    let _ = tally.first_eof.compare_exchange(
                        0,
                        code,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    return dst.shutdown().await.map_err(|e| (to, e));
                }
                Ok(n) => {
                    dst.write_all(&buf).await.map_err(|e| (to, e))?;
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    tally.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err((from, e)),
            }
        }
    }
}

/// Resolves once no byte has moved for `timeout`; never without a timeout.
async fn idle_watch(timeout: Option<Duration>, tally: &Tally) {
    let (Some(timeout), Some((start, last))) = (timeout, &tally.last_activity) else {
        return std::future::pending().await;
    };
    loop {
        let last = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = *start + last + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
