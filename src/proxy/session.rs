//! One client session: pick a backend, connect (retrying other backends while
//! the client has seen nothing), then splice until either side is done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::park::{Board, Parked, Stage, Ticket, Verdict};
use super::splice::{CloseReason, Spliced};
use super::{greeting, sockopt, splice};
use crate::cluster::backend::ConnectFailure;
use crate::cluster::waiting::{Held, Waiting};
use crate::cluster::{Member, Pool, SessionGuard, Snapshot};
use crate::config::format_duration;
use crate::mysql::{err_packet, ER_CON_COUNT_ERROR};
use crate::net::proxy_header;
use crate::net::{describe_connect_error, is_local_shortage};

/// How soon a held client whose backends all failed to connect tries again
/// without a turn.
const HOLD_RETRY: Duration = Duration::from_millis(250);

/// How long dbsplice spends handing a refused client its error packet.
const ERR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A backend connection ready to splice.
struct Connected {
    stream: TcpStream,
    guard: SessionGuard,
    /// The member's index in the pool.
    index: usize,
    /// Bytes the greeting gate already read from the server.
    greeting: Vec<u8>,
}

/// Why a client was refused before any backend took it. [`Refusal::to_client`]
/// is what the client, who has not authenticated and must learn nothing
/// about the backends, is told; the `Display` text is for dbsplice's log.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No member of the pool was eligible.
    #[error("dbsplice: no backend of pool '{pool}' is available")]
    NoBackend {
        /// The pool.
        pool: String,
    },
    /// Every member tried failed to connect or to greet.
    #[error("dbsplice: no backend of pool '{pool}' accepted a connection ({})", failures.join("; "))]
    AllFailed {
        /// The pool.
        pool: String,
        /// Each backend tried and what it said.
        failures: Vec<String>,
    },
    /// dbsplice itself is out of descriptors, buffers or memory: no backend
    /// is to blame, and another would fare no better.
    #[error(
        "dbsplice: cannot open a connection to a backend of pool '{pool}': {}",
        describe_connect_error(source)
    )]
    LocalShortage {
        /// The pool.
        pool: String,
        /// The connect error.
        source: io::Error,
    },
    /// The client's local address, which the PROXY header needs, cannot be
    /// read: without the header the session would reach the server as
    /// dbsplice's own address, past whatever the server grants by client.
    #[error("the client's local address cannot be read for the PROXY header ({source}); refused")]
    NoLocalAddress {
        /// The pool.
        pool: String,
        /// Why the address cannot be read.
        source: io::Error,
    },
    /// No backend could take the client, and `hold_max` clients were already
    /// waiting for one.
    #[error("dbsplice: no backend of pool '{pool}' can take the client, and {max} clients are already held (hold_max)")]
    HoldFull {
        /// The pool.
        pool: String,
        /// Its `hold_max`.
        max: u32,
    },
    /// Held for the pool's whole `hold_timeout`, and still no backend.
    #[error("{last} (after holding the client {:.1}s)", waited.as_secs_f64())]
    HeldTooLong {
        /// How long the client waited.
        waited: Duration,
        /// Why the last try found no backend.
        last: Box<Refusal>,
    },
    /// dbsplice began to stop while the client was held.
    #[error("dbsplice: shutting down while the client waited for a backend of pool '{pool}'")]
    ShuttingDown {
        /// The pool.
        pool: String,
    },
}

/// What a listener counts a refusal as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No backend could take the client.
    NoBackend,
    /// dbsplice was short of its own resources.
    LocalShortage,
}

impl Refusal {
    /// The ERR packet's text: the pool and the cause, nothing about backends.
    pub fn to_client(&self) -> String {
        match self {
            Refusal::NoBackend { pool } => {
                format!("dbsplice: no backend of pool '{pool}' is available")
            }
            Refusal::AllFailed { pool, failures } => format!(
                "dbsplice: no backend of pool '{pool}' accepted a connection ({} tried)",
                failures.len()
            ),
            Refusal::LocalShortage { pool, .. } => format!(
                "dbsplice: pool '{pool}' cannot take this connection: dbsplice is short of resources"
            ),
            Refusal::NoLocalAddress { pool, .. } => {
                format!("dbsplice: pool '{pool}' cannot take this connection now")
            }
            Refusal::HoldFull { pool, max } => format!(
                "dbsplice: no backend of pool '{pool}' is available, and {max} clients already wait for one"
            ),
            Refusal::HeldTooLong { waited, last } => format!(
                "{} (waited {:.1}s)",
                last.to_client(),
                waited.as_secs_f64()
            ),
            Refusal::ShuttingDown { .. } => "dbsplice: shutting down".to_owned(),
        }
    }

    /// What the listener counts it as.
    pub fn cause(&self) -> Cause {
        match self {
            Refusal::NoBackend { .. }
            | Refusal::AllFailed { .. }
            | Refusal::HoldFull { .. }
            | Refusal::ShuttingDown { .. } => Cause::NoBackend,
            Refusal::HeldTooLong { last, .. } => last.cause(),
            Refusal::LocalShortage { .. } | Refusal::NoLocalAddress { .. } => Cause::LocalShortage,
        }
    }
}

/// Why one backend could not take the client; the next one is tried.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    /// The connect failed.
    #[error("{}", describe_connect_error(.0))]
    Connect(io::Error),
    /// No answer within `connect_timeout`.
    #[error("connect timed out after {}", format_duration(*.0))]
    Timeout(Duration),
    /// The PROXY header could not be sent.
    #[error("sending the PROXY header failed: {0}")]
    ProxyHeader(io::Error),
    /// The greeting gate saw an error greeting, or none.
    #[error("{0}")]
    Greeting(greeting::GateError),
}

impl Attempt {
    /// The counter it adds to.
    fn kind(&self) -> ConnectFailure {
        match self {
            Attempt::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                ConnectFailure::Refused
            }
            Attempt::Connect(_) => ConnectFailure::Other,
            Attempt::Timeout(_) => ConnectFailure::Timeout,
            Attempt::ProxyHeader(_) | Attempt::Greeting(_) => ConnectFailure::Greeting,
        }
    }
}

/// Serves one accepted client until it ends (or a new process takes it
/// over); why it was refused when no backend could take it.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    pool: Arc<Pool>,
    timeouts: splice::Timeouts,
    kill: CancellationToken,
    holding: &Holding,
) -> Result<(), Refusal> {
    let mut seat = Seat::new(holding, peer, &pool.config.name, unix_ms_now());
    // The client socket inherited TCP_NODELAY and keepalive from its listener.
    let opened = match proxy_header_for(&client, peer, &pool) {
        Ok(header) => open(pool, header.as_deref(), holding, &client, &mut seat).await,
        Err(refusal) => Err(refusal),
    };
    match opened {
        Ok(Some((pool, mut backend))) => {
            let progress = splice::Progress {
                backend_pending: std::mem::take(&mut backend.greeting),
                ..splice::Progress::default()
            };
            relay(client, &pool, backend, timeouts, kill, seat, progress).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(refusal) => {
            refuse(&mut client, &refusal.to_client()).await;
            Err(refusal)
        }
    }
}

/// A session taken over from the process before this one, spliced to its
/// backend: carries on from where it stood.
#[derive(Debug)]
pub struct Resumed {
    /// The client.
    pub client: TcpStream,
    /// Its backend.
    pub backend: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The backend's address as the config names it.
    pub address: String,
    /// Where the splice stood.
    pub progress: splice::Progress,
    /// When the session began, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

/// Carries a taken-over session on in `pool` (as this process's config has
/// it) until it ends, or the next hand-over takes it.
pub async fn resume(
    resumed: Resumed,
    pool: Arc<Pool>,
    backend: Arc<crate::cluster::BackendState>,
    timeouts: splice::Timeouts,
    kill: CancellationToken,
    holding: &Holding,
) {
    let seat = Seat::new(
        holding,
        resumed.peer,
        &pool.config.name,
        resumed.started_unix_ms,
    );
    let index = pool
        .members
        .iter()
        .position(|m| Arc::ptr_eq(&m.state, &backend))
        .unwrap_or(usize::MAX);
    let mut guard = backend.session();
    guard.established();
    let connected = Connected {
        stream: resumed.backend,
        guard,
        index,
        greeting: Vec::new(),
    };
    relay(
        resumed.client,
        &pool,
        connected,
        timeouts,
        kill,
        seat,
        resumed.progress,
    )
    .await;
}

/// A session as a hand-over names it, and its place on the board.
struct Seat {
    listener: String,
    peer: SocketAddr,
    pool: String,
    started_unix_ms: u64,
    ticket: Ticket,
}

impl Seat {
    fn new(holding: &Holding, peer: SocketAddr, pool: &str, started_unix_ms: u64) -> Seat {
        Seat {
            listener: holding.listener.to_string(),
            peer,
            pool: pool.to_owned(),
            started_unix_ms,
            ticket: holding.board.ticket(),
        }
    }

    /// Leaves the session on the board (with copies of its sockets) and
    /// waits for the verdict. A socket that cannot be copied (out of
    /// descriptors) keeps the session here: the hand-over, missing it,
    /// fails and every session resumes.
    async fn park(&self, client: &TcpStream, stage: impl FnOnce() -> io::Result<Stage>) -> Verdict {
        use std::os::fd::AsFd;
        let parked = client.as_fd().try_clone_to_owned().and_then(|client| {
            Ok(Parked {
                listener: self.listener.clone(),
                peer: self.peer,
                pool: self.pool.clone(),
                client: Some(client),
                started_unix_ms: self.started_unix_ms,
                stage: stage()?,
            })
        });
        match parked {
            Ok(parked) => self.ticket.park(parked).await,
            Err(e) => {
                tracing::warn!(client = %self.peer, "cannot copy a session's sockets for the hand-over: {e}");
                Verdict::Resume
            }
        }
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a held client needs: where to find its pool again (a reload may have
/// replaced it meanwhile), and the token cancelled when dbsplice stops
/// accepting, which ends every wait.
#[derive(Debug, Clone)]
pub struct Holding {
    /// The current routing snapshot.
    pub routes: Arc<ArcSwap<Snapshot>>,
    /// Cancelled when shutdown begins.
    pub draining: CancellationToken,
    /// The listener that accepted the client.
    pub listener: Arc<str>,
    /// Where sessions pause for a hand-over.
    pub board: Arc<Board>,
}

/// Connects the client to a backend of `pool`. While none can take it, the
/// client (which has seen nothing: a MySQL server speaks first) waits in the
/// pool's line for up to its `hold_timeout`, looking again at each turn it is
/// given, in the pool as the newest config has it. A client that finds others
/// held queues behind them.
async fn open(
    mut pool: Arc<Pool>,
    header: Option<&[u8]>,
    holding: &Holding,
    client: &TcpStream,
    seat: &mut Seat,
) -> Result<Option<(Arc<Pool>, Connected)>, Refusal> {
    let mut held = queue_behind(&pool)?;
    let mut look_now = held.as_ref().is_none_or(|h| !h.behind());
    // The most telling refusal so far: backends that were tried and failed
    // say more than finding none eligible a moment later.
    let mut worst: Option<Refusal> = None;
    loop {
        let waiting = Arc::clone(&pool.waiting);
        let refusal = if look_now {
            match look(&pool, &waiting, header).await {
                Ok(connected) => {
                    if let Some(h) = held {
                        h.served();
                    }
                    return Ok(Some((pool, connected)));
                }
                Err(r @ (Refusal::NoBackend { .. } | Refusal::AllFailed { .. })) => r,
                Err(r) => return Err(r),
            }
        } else {
            Refusal::NoBackend {
                pool: pool.config.name.clone(),
            }
        };
        look_now = true;
        let refusal = match (refusal, worst.take()) {
            (r @ Refusal::AllFailed { .. }, _) | (r, None) => r,
            (_, Some(earlier)) => earlier,
        };
        let (h, wait, refusal) = keep_holding(&pool, &waiting, held.take(), refusal)?;
        worst = Some(refusal);
        tokio::select! {
            () = h.turn() => {}
            () = tokio::time::sleep(wait) => {}
            () = holding.draining.cancelled() => {
                return Err(Refusal::ShuttingDown { pool: pool.config.name.clone() });
            }
            () = seat.ticket.pause_asked() => {
                let waited = h.waited();
                if seat.park(client, || Ok(Stage::Held { waited })).await == Verdict::Gone {
                    return Ok(None);
                }
            }
        }
        held = Some(h);
        pool = newest(holding, &pool)?;
    }
}

/// The pool as the newest config has it; gone, nothing can take the client.
fn newest(holding: &Holding, pool: &Pool) -> Result<Arc<Pool>, Refusal> {
    holding
        .routes
        .load()
        .pool(&pool.config.name)
        .map(Arc::clone)
        .ok_or_else(|| Refusal::NoBackend {
            pool: pool.config.name.clone(),
        })
}

/// A place in line for a client that finds others held already (first come,
/// first served: the slot they wait for is not its to take), or none if no
/// one is held or the pool does not hold clients.
fn queue_behind(pool: &Arc<Pool>) -> Result<Option<Held>, Refusal> {
    let routing = &pool.config.routing;
    if routing.hold_timeout.is_zero() || pool.waiting.held() == 0 {
        return Ok(None);
    }
    match pool.waiting.enter(routing.hold_max) {
        Some(h) => Ok(Some(h)),
        None => Err(Refusal::HoldFull {
            pool: pool.config.name.clone(),
            max: routing.hold_max,
        }),
    }
}

/// One look at the pool: a connected backend, or why none took the client.
async fn look(pool: &Pool, waiting: &Waiting, header: Option<&[u8]>) -> Result<Connected, Refusal> {
    if waiting.is_paused() {
        // Paused by an operator: held as if no backend could take it.
        return Err(Refusal::NoBackend {
            pool: pool.config.name.clone(),
        });
    }
    connect(pool, header).await
}

/// Whether a client that found no backend goes on waiting: its place in
/// line (taken now if it had none), how long to wait for a turn before
/// looking anyway, and the refusal kept for when `hold_timeout` runs out; or
/// the refusal it gets now.
fn keep_holding(
    pool: &Pool,
    waiting: &Arc<Waiting>,
    held: Option<Held>,
    refusal: Refusal,
) -> Result<(Held, Duration, Refusal), Refusal> {
    let routing = &pool.config.routing;
    if routing.hold_timeout.is_zero() {
        return Err(refusal);
    }
    let h = match held {
        Some(h) => h,
        None => waiting
            .enter(routing.hold_max)
            .ok_or_else(|| Refusal::HoldFull {
                pool: pool.config.name.clone(),
                max: routing.hold_max,
            })?,
    };
    let left = routing.hold_timeout.saturating_sub(h.waited());
    if left.is_zero() {
        let waited = h.waited();
        h.timed_out();
        return Err(Refusal::HeldTooLong {
            waited,
            last: Box::new(refusal),
        });
    }
    // No room after all: wait for another turn, keeping the place.
    h.again();
    let mut wait = left;
    if matches!(refusal, Refusal::AllFailed { .. }) {
        // A backend that failed to connect and came back before its checker
        // noticed announces nothing.
        wait = wait.min(HOLD_RETRY);
    }
    if let Some(pause) = waiting.paused_for() {
        // A pause that lapses by itself announces nothing either.
        wait = wait.min(pause);
    }
    Ok((h, wait, refusal))
}

/// The PROXY header the pool sends first, if it sends one.
fn proxy_header_for(
    client: &TcpStream,
    peer: SocketAddr,
    pool: &Pool,
) -> Result<Option<Vec<u8>>, Refusal> {
    let Some(version) = pool.config.routing.send_proxy else {
        return Ok(None);
    };
    match client.local_addr() {
        Ok(local) => Ok(Some(proxy_header::header(version, peer, local))),
        Err(source) => Err(Refusal::NoLocalAddress {
            pool: pool.config.name.clone(),
            source,
        }),
    }
}

/// Splices from `progress` (for a new session: the greeting already read,
/// pending for the client) until either side is done, pausing whenever a
/// hand-over asks, and accounts for the session; one taken over by a new
/// process ends here untouched.
async fn relay(
    mut client: TcpStream,
    pool: &Pool,
    mut backend: Connected,
    timeouts: splice::Timeouts,
    kill: CancellationToken,
    mut seat: Seat,
    mut progress: splice::Progress,
) {
    let address = backend.guard.backend().address.clone();
    tracing::Span::current().record("backend", tracing::field::display(&address));
    sockopt::tune(&backend.stream);
    let started = Instant::now();
    let evict = pool
        .members
        .get(backend.index)
        .map(|m| m.evict_token())
        .unwrap_or_default();
    let outcome = loop {
        let stop = async {
            tokio::select! {
                () = kill.cancelled() => CloseReason::Killed,
                () = evict.cancelled() => CloseReason::Evicted,
            }
        };
        let pause = seat.ticket.pause_asked();
        match splice::splice(
            &mut client,
            &mut backend.stream,
            timeouts,
            progress,
            stop,
            pause,
        )
        .await
        {
            Spliced::Ended(outcome) => break outcome,
            Spliced::Paused(now) => {
                let stage = || {
                    use std::os::fd::AsFd;
                    Ok(Stage::Spliced {
                        backend: Some(backend.stream.as_fd().try_clone_to_owned()?),
                        address: address.clone(),
                        progress: now.clone(),
                    })
                };
                if seat.park(&client, stage).await == Verdict::Gone {
                    tracing::debug!(client = %seat.peer, backend = %address, "session handed over");
                    return;
                }
                progress = now;
            }
        }
    };
    account(&backend, &seat, &outcome, started);
}

/// Counts a finished session's bytes and logs its end.
fn account(backend: &Connected, seat: &Seat, outcome: &splice::Outcome, started: Instant) {
    let state = backend.guard.backend();
    state
        .counters
        .session_bytes(outcome.to_backend, outcome.to_client);
    tracing::debug!(
        client = %seat.peer,
        backend = %state.address,
        to_backend = outcome.to_backend,
        to_client = outcome.to_client,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        reason = %outcome.reason,
        "session closed"
    );
}

/// Connects to an eligible backend, trying up to `connect_attempts` distinct
/// ones. A MySQL server speaks first, so a retry is invisible to the client;
/// with the greeting gate, a server that greets with an error (or not at all)
/// is skipped the same way.
async fn connect(pool: &Pool, proxy_header: Option<&[u8]>) -> Result<Connected, Refusal> {
    let mut excluded = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..pool.config.connect_attempts {
        let Some(index) = pool.pick(&excluded) else {
            break;
        };
        let Some(member) = pool.members.get(index) else {
            break;
        };
        // Counted before the connect so least-connections sees pending ones.
        let guard = member.state.session();
        let failed = match attempt(pool, member, proxy_header).await {
            Ok((stream, greeting)) => {
                let mut guard = guard;
                guard.established();
                return Ok(Connected {
                    stream,
                    guard,
                    index,
                    greeting,
                });
            }
            // dbsplice's own shortage: no backend is to blame, none is
            // asked for an early probe, and another would fare no better.
            Err(Attempt::Connect(source)) if is_local_shortage(&source) => {
                return Err(Refusal::LocalShortage {
                    pool: pool.config.name.clone(),
                    source,
                });
            }
            Err(failed) => failed,
        };
        if matches!(&failed, Attempt::Greeting(g) if g.is_full()) {
            // Full, not down: skipped until a session here ends or a probe
            // finds room.
            member.state.set_full(true);
        }
        tracing::info!(backend = %member.state.address, pool = %pool.config.name, "connect failed, trying another backend: {failed}");
        member.state.connect_failed(failed.kind());
        // Only failed backends are remembered: the usual first-try success
        // allocates nothing here.
        excluded.push(index);
        failures.push(format!("{}: {failed}", member.name));
    }
    let pool = pool.config.name.clone();
    Err(if failures.is_empty() {
        Refusal::NoBackend { pool }
    } else {
        Refusal::AllFailed { pool, failures }
    })
}

/// One backend: connect within `connect_timeout`, then ready the connection.
async fn attempt(
    pool: &Pool,
    member: &Member,
    proxy_header: Option<&[u8]>,
) -> Result<(TcpStream, Vec<u8>), Attempt> {
    let connect = tokio::time::timeout(
        pool.config.connect_timeout,
        TcpStream::connect(member.state.addr()),
    );
    match connect.await {
        Ok(Ok(stream)) => prepare(stream, &pool.config.routing, proxy_header).await,
        Ok(Err(e)) => Err(Attempt::Connect(e)),
        Err(_) => Err(Attempt::Timeout(pool.config.connect_timeout)),
    }
}

/// Readies a fresh backend connection: the PROXY header first, then, with
/// the greeting gate, the server's greeting (returned to forward).
async fn prepare(
    mut stream: TcpStream,
    routing: &crate::config::Routing,
    proxy_header: Option<&[u8]>,
) -> Result<(TcpStream, Vec<u8>), Attempt> {
    if let Some(header) = proxy_header {
        stream
            .write_all(header)
            .await
            .map_err(Attempt::ProxyHeader)?;
    }
    let greeting = if routing.greeting_gate {
        greeting::read(&mut stream, routing.greeting_timeout)
            .await
            .map_err(Attempt::Greeting)?
    } else {
        Vec::new()
    };
    Ok((stream, greeting))
}

/// Tells a client that no server can take it, as a server would.
pub async fn refuse(client: &mut TcpStream, message: &str) {
    let packet = err_packet(ER_CON_COUNT_ERROR, message);
    let send = async {
        client.write_all(&packet).await?;
        client.shutdown().await
    };
    let _ = tokio::time::timeout(ERR_WRITE_TIMEOUT, send).await;
}
