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
            // Only copy buffers: a resumed session's pending bytes came in
            // one of their own size.
            if b.len() < CACHED_PER_THREAD && buf.len() == CHUNK {
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

/// Where one direction of a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowState {
    /// Bytes may still come.
    #[default]
    Open,
    /// Its source sent EOF, not yet passed on to the other side.
    Eof,
    /// Its source sent EOF and that was passed on (or needed not be).
    Done,
}

/// A session between two chunks: what a pause hands over and a resume
/// starts from. A new session starts from [`Progress::default`], or with the
/// greeting the gate read as bytes pending for the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes written to the backend so far.
    pub to_backend: u64,
    /// Bytes written to the client so far.
    pub to_client: u64,
    /// Read from the client, not yet written to the backend.
    pub client_pending: Vec<u8>,
    /// Read from the backend, not yet written to the client.
    pub backend_pending: Vec<u8>,
    /// The client-to-backend direction.
    pub client_flow: FlowState,
    /// The backend-to-client direction.
    pub backend_flow: FlowState,
    /// Which side sent EOF first, if one did.
    pub first_eof: Option<Side>,
    /// How long before the pause the last byte moved.
    pub idle_for: Duration,
}

/// What [`splice`] ended with.
#[derive(Debug)]
pub enum Spliced {
    /// The session is over.
    Ended(Outcome),
    /// Paused between chunks: where it stands. Its sockets were not touched
    /// since, and a resume from this carries on exactly.
    Paused(Progress),
}

/// One direction's bytes that a pause must not lose: the buffer read into
/// and how much of it is still to write.
struct Carry {
    buf: Buffer,
    start: usize,
    end: usize,
}

/// One direction: what it carries and where it stands.
struct Flow {
    carry: Option<Carry>,
    state: FlowState,
}

impl Flow {
    fn new(pending: Vec<u8>, state: FlowState) -> Flow {
        let carry = (!pending.is_empty()).then(|| Carry {
            start: 0,
            end: pending.len(),
            buf: Buffer(pending.into_boxed_slice()),
        });
        Flow { carry, state }
    }

    /// The bytes still to write, taken out.
    fn pending(&mut self) -> Vec<u8> {
        self.carry
            .take()
            .and_then(|c| c.buf.0.get(c.start..c.end).map(<[u8]>::to_vec))
            .unwrap_or_default()
    }
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
    fn new(progress: &Progress, idle_timeout: Option<Duration>) -> Tally {
        let now = Instant::now();
        let tally = Tally {
            to_backend: AtomicU64::new(progress.to_backend),
            to_client: AtomicU64::new(progress.to_client),
            first_eof: AtomicU8::new(progress.first_eof.map_or(0, eof_code)),
            backend_done: tokio::sync::Notify::new(),
            half_closed: tokio::sync::Notify::new(),
            // A resumed session's silence goes on counting from its last byte.
            last_activity: idle_timeout.map(|_| {
                let start = now.checked_sub(progress.idle_for).unwrap_or(now);
                (start, AtomicU64::new(0))
            }),
        };
        if progress.first_eof.is_some() {
            tally.half_closed.notify_one();
        }
        if progress.backend_flow == FlowState::Done {
            tally.backend_done.notify_one();
        }
        tally
    }

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

    /// How long ago the last byte moved (zero without an idle timeout).
    fn idle_for(&self) -> Duration {
        self.last_activity
            .as_ref()
            .map_or(Duration::ZERO, |(start, last)| {
                start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)))
            })
    }

    fn first_eof(&self) -> Option<Side> {
        match self.first_eof.load(Ordering::Relaxed) {
            1 => Some(Side::Client),
            2 => Some(Side::Backend),
            _ => None,
        }
    }
}

fn eof_code(side: Side) -> u8 {
    match side {
        Side::Client => 1,
        Side::Backend => 2,
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

/// Why the select in [`splice`] ended.
enum Stopped {
    Ended(CloseReason),
    Paused,
}

/// Splices from `progress` until both directions end, one fails, the
/// session idles out or stays half-closed too long, or `stop` resolves
/// (shutdown, or the pool's `on_down` policy) with its reason; or, when
/// `pause` resolves first, stops between two writes and says where it stands.
pub async fn splice(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    timeouts: Timeouts,
    progress: Progress,
    stop: impl std::future::Future<Output = CloseReason>,
    pause: impl std::future::Future<Output = ()>,
) -> Spliced {
    let idle_timeout = timeouts.idle;
    let tally = Tally::new(&progress, idle_timeout);
    let mut up = Flow::new(progress.client_pending, progress.client_flow);
    let mut down = Flow::new(progress.backend_pending, progress.backend_flow);
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let stopped = {
        let both = async {
            tokio::try_join!(
                pump(
                    &mut client_read,
                    &mut backend_write,
                    Side::Client,
                    &mut up,
                    &tally
                ),
                pump(
                    &mut backend_read,
                    &mut client_write,
                    Side::Backend,
                    &mut down,
                    &tally
                ),
            )
        };
        tokio::select! {
            r = both => Stopped::Ended(match r {
                Ok(((), ())) => CloseReason::Closed(tally.first_eof().unwrap_or(Side::Client)),
                Err((side, e)) => CloseReason::Error(side, e),
            }),
            () = idle_watch(idle_timeout, &tally) => Stopped::Ended(CloseReason::IdleTimeout),
            side = half_close_watch(timeouts.half_close, &tally) => Stopped::Ended(CloseReason::HalfCloseTimeout(side)),
            reason = stop => Stopped::Ended(reason),
            () = pause => Stopped::Paused,
        }
    };
    match stopped {
        Stopped::Ended(reason) => Spliced::Ended(Outcome {
            to_backend: tally.to_backend.load(Ordering::Relaxed),
            to_client: tally.to_client.load(Ordering::Relaxed),
            reason,
        }),
        Stopped::Paused => Spliced::Paused(where_it_stands(&tally, up, down)),
    }
}

/// A paused session's progress.
fn where_it_stands(tally: &Tally, mut up: Flow, mut down: Flow) -> Progress {
    Progress {
        to_backend: tally.to_backend.load(Ordering::Relaxed),
        to_client: tally.to_client.load(Ordering::Relaxed),
        client_pending: up.pending(),
        backend_pending: down.pending(),
        client_flow: up.state,
        backend_flow: down.state,
        first_eof: tally.first_eof(),
        idle_for: tally.idle_for(),
    }
}

/// Copies from `src` (on side `from`) to `dst` until EOF, then shuts `dst`'s
/// write half so the peer sees the half-close. Whatever it has read and not
/// yet written stays in `flow`, so that the future may be dropped at any
/// await (a pause) and nothing is lost.
async fn pump(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    from: Side,
    flow: &mut Flow,
    tally: &Tally,
) -> Result<(), (Side, io::Error)> {
    let to = other(from);
    match flow.state {
        FlowState::Open => {}
        FlowState::Eof => {
            let first = tally.first_eof() == Some(from);
            pass_eof(from, dst, tally, !first).await?;
            flow.state = FlowState::Done;
            return Ok(());
        }
        FlowState::Done => return Ok(()),
    }
    loop {
        if let Some(carry) = flow.carry.as_mut() {
            match write_carry(dst, carry, from, tally).await {
                Ok(()) => {}
                Err(e) if peer_gone(&e, to, tally) => return Ok(()),
                Err(e) => return Err((to, e)),
            }
            let full = carry.end == CHUNK;
            let Some(Carry { buf, .. }) = flow.carry.take() else {
                continue;
            };
            if full {
                // The socket may hold more: read again before waiting.
                if read_into(src, buf, flow, from, dst, tally).await? {
                    return Ok(());
                }
                continue;
            }
        }
        src.readable().await.map_err(|e| (from, e))?;
        if read_into(src, Buffer::take(), flow, from, dst, tally).await? {
            return Ok(());
        }
    }
}

/// One read into `buf`: what it got is left in `flow` to write, an empty
/// socket (or a spent scheduling budget) leaves nothing, and EOF ends the
/// direction (true).
async fn read_into(
    src: &mut ReadHalf<'_>,
    mut buf: Buffer,
    flow: &mut Flow,
    from: Side,
    dst: &mut WriteHalf<'_>,
    tally: &Tally,
) -> Result<bool, (Side, io::Error)> {
    match read_now(src, &mut buf.0).await {
        None => {
            drop(buf);
            // Either the socket is empty (its readiness is cleared and the
            // wait that follows is real) or the task used up its scheduling
            // budget, which only a yield restores: `readable` alone would
            // spin.
            tokio::task::consume_budget().await;
            Ok(false)
        }
        Some(Ok(0)) => {
            drop(buf);
            flow.state = FlowState::Eof;
            ended(from, dst, tally).await?;
            flow.state = FlowState::Done;
            Ok(true)
        }
        Some(Ok(n)) => {
            flow.carry = Some(Carry {
                buf,
                start: 0,
                end: n,
            });
            Ok(false)
        }
        Some(Err(e)) => Err((from, e)),
    }
}

/// Writes what `carry` holds, counting each write as it lands.
async fn write_carry(
    dst: &mut WriteHalf<'_>,
    carry: &mut Carry,
    from: Side,
    tally: &Tally,
) -> io::Result<()> {
    let moved = match from {
        Side::Client => &tally.to_backend,
        Side::Backend => &tally.to_client,
    };
    while carry.start < carry.end {
        let data = carry.buf.0.get(carry.start..carry.end).unwrap_or_default();
        let n = dst.write(data).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        carry.start += n;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        tally.touch();
    }
    Ok(())
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
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
    let other_ended_first = tally
        .first_eof
        .compare_exchange(0, eof_code(from), Ordering::Relaxed, Ordering::Relaxed)
        .is_err();
    if !other_ended_first {
        tally.half_closed.notify_one();
    }
    pass_eof(from, dst, tally, other_ended_first).await
}

/// The rest of [`ended`], where a resumed session that paused in it picks up.
async fn pass_eof(
    from: Side,
    dst: &mut WriteHalf<'_>,
    tally: &Tally,
    other_ended_first: bool,
) -> Result<(), (Side, io::Error)> {
    let to = other(from);
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
            let spliced = splice(
                &mut client_inner,
                &mut backend_inner,
                timeouts,
                Progress::default(),
                std::future::pending(),
                std::future::pending(),
            )
            .await;
            match spliced {
                Spliced::Ended(outcome) => outcome,
                Spliced::Paused(_) => unreachable!("never paused"),
            }
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

    /// A session paused over and over while both directions stream, each
    /// time carried on from where it stood: every byte arrives once, in order.
    #[tokio::test]
    async fn a_session_paused_and_resumed_mid_stream_loses_no_byte() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut client_inner) = pair().await;
        let (mut backend_inner, mut backend) = pair().await;
        // Small socket buffers: the kernel cannot take the whole stream at
        // once, so writes wait and pauses find bytes in the middle.
        for s in [&client, &client_inner, &backend_inner, &backend] {
            let s = socket2::SockRef::from(s);
            s.set_send_buffer_size(4096).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
        }
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (up, down) = (data.clone(), data.clone());
        let (mut client_read, mut client_write) = client.split();
        let (mut backend_read, mut backend_write) = backend.split();
        let ends = async {
            let mut got_by_client = Vec::new();
            let mut got_by_backend = Vec::new();
            tokio::join!(
                async {
                    client_write.write_all(&up).await.unwrap();
                    client_write.shutdown().await.unwrap();
                },
                async {
                    backend_write.write_all(&down).await.unwrap();
                    backend_write.shutdown().await.unwrap();
                },
                async {
                    // A slow reader: writes to it block, and pauses find
                    // bytes read and not yet written.
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = client_read.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        got_by_client.extend_from_slice(&buf[..n]);
                        tokio::task::yield_now().await;
                    }
                },
                async {
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = backend_read.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        got_by_backend.extend_from_slice(&buf[..n]);
                        tokio::task::yield_now().await;
                    }
                },
            );
            (got_by_client, got_by_backend)
        };
        // Owned, so that the sockets close (and send their FIN) once done.
        let middle = async move {
            let timeouts = Timeouts {
                idle: Some(Duration::from_secs(60)),
                half_close: Duration::from_secs(30),
            };
            let mut progress = Progress::default();
            let mut pauses = 0;
            let mut carried = 0;
            loop {
                // Pauses at uneven times: wherever the pumps are.
                let pause = tokio::time::sleep(Duration::from_micros(1000 + pauses % 7 * 300));
                match splice(
                    &mut client_inner,
                    &mut backend_inner,
                    timeouts,
                    progress,
                    std::future::pending(),
                    pause,
                )
                .await
                {
                    Spliced::Ended(outcome) => break (outcome, pauses, carried),
                    Spliced::Paused(now) => {
                        carried += now.backend_pending.len() + now.client_pending.len();
                        pauses += 1;
                        progress = now;
                    }
                }
            }
        };
        let ((got_by_client, got_by_backend), (outcome, pauses, carried)) =
            tokio::join!(ends, middle);
        assert!(pauses > 20, "paused {pauses} times");
        assert!(carried > 0, "no pause found bytes read and not yet written");
        assert!(
            got_by_client == data,
            "the client got every byte once, in order"
        );
        assert!(
            got_by_backend == data,
            "the backend got every byte once, in order"
        );
        assert_eq!(outcome.to_client, data.len() as u64);
        assert_eq!(outcome.to_backend, data.len() as u64);
        assert!(
            matches!(outcome.reason, CloseReason::Closed(_)),
            "{}",
            outcome.reason
        );
    }

    fn tally_with_idle_timeout() -> Tally {
        Tally::new(&Progress::default(), Some(Duration::from_secs(1)))
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
