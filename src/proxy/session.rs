//! One client session: pick a backend, connect (retrying other backends while
//! the client has seen nothing), then splice until either side is done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::splice::CloseReason;
use super::{greeting, sockopt, splice};
use crate::cluster::backend::ConnectFailure;
use crate::cluster::{Pool, SessionGuard};
use crate::config::format_duration;
use crate::mysql::{err_packet, ER_CON_COUNT_ERROR};
use crate::net::proxy_header;
use crate::net::{describe_connect_error, is_local_shortage};

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

/// Why a client was refused before any backend took it: a short message for
/// the client, who has not authenticated and must learn nothing about the
/// backends, and the details for dbsplice's log.
#[derive(Debug)]
pub struct Refusal {
    /// Sent to the client in an ERR packet: the pool and the cause.
    pub to_client: String,
    /// Logged: every backend tried and what each said.
    pub detail: String,
}

impl Refusal {
    fn same(message: String) -> Refusal {
        Refusal {
            to_client: message.clone(),
            detail: message,
        }
    }
}

/// Serves one accepted client until it ends; why it was refused when no
/// backend could take it.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    pool: Arc<Pool>,
    timeouts: splice::Timeouts,
    kill: CancellationToken,
) -> Result<(), Refusal> {
    // The client socket inherited TCP_NODELAY and keepalive from its listener.
    let header = match pool.config.routing.send_proxy {
        None => None,
        // Without the local address the header cannot be written, and a
        // session without it would reach the server as dbsplice's own
        // address, past whatever the server grants by client address.
        Some(version) => match client.local_addr() {
            Ok(local) => Some(proxy_header::header(version, peer, local)),
            Err(e) => {
                let refusal = Refusal {
                    to_client: format!(
                        "dbsplice: pool '{}' cannot take this connection now",
                        pool.config.name
                    ),
                    detail: format!(
                        "the client's local address cannot be read for the PROXY header ({e}); refused"
                    ),
                };
                refuse(&mut client, &refusal.to_client).await;
                return Err(refusal);
            }
        },
    };
    let mut backend = match connect(&pool, header.as_deref()).await {
        Ok(connected) => connected,
        Err(refusal) => {
            refuse(&mut client, &refusal.to_client).await;
            return Err(refusal);
        }
    };
    let address = &backend.guard.backend().address;
    tracing::Span::current().record("backend", tracing::field::display(address));
    sockopt::tune(&backend.stream);
    let started = Instant::now();
    let evict = pool
        .members
        .get(backend.index)
        .map(|m| m.evict_token())
        .unwrap_or_default();
    let stop = async {
        tokio::select! {
            () = kill.cancelled() => CloseReason::Killed,
            () = evict.cancelled() => CloseReason::Evicted,
        }
    };
    let outcome =
        if backend.greeting.is_empty() || client.write_all(&backend.greeting).await.is_ok() {
            Some(splice::splice(&mut client, &mut backend.stream, timeouts, stop).await)
        } else {
            None
        };
    if let Some(outcome) = outcome {
        let to_client = outcome.to_client + backend.greeting.len() as u64;
        backend
            .guard
            .backend()
            .counters
            .session_bytes(outcome.to_backend, to_client);
        tracing::debug!(
            client = %peer,
            backend = %address,
            to_backend = outcome.to_backend,
            to_client,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            reason = %outcome.reason,
            "session closed"
        );
    }
    Ok(())
}

/// Connects to an eligible backend, trying up to `connect_attempts` distinct
/// ones. A MySQL server speaks first, so a retry is invisible to the client;
/// with the greeting gate, a server that greets with an error (or not at all)
/// is skipped the same way.
async fn connect(pool: &Pool, proxy_header: Option<&[u8]>) -> Result<Connected, Refusal> {
    let mut excluded = Vec::new();
    let mut failures = Vec::new();
    let routing = &pool.config.routing;
    for _ in 0..pool.config.connect_attempts {
        let Some(index) = pool.pick(&excluded) else {
            break;
        };
        let Some(member) = pool.members.get(index) else {
            break;
        };
        // Counted before the connect so least-connections sees pending ones.
        let guard = member.state.session();
        let connect = tokio::time::timeout(
            pool.config.connect_timeout,
            TcpStream::connect(member.state.addr),
        );
        let (kind, error) = match connect.await {
            Ok(Ok(stream)) => match prepare(stream, routing, proxy_header).await {
                Ok((stream, greeting)) => {
                    return Ok(Connected {
                        stream,
                        guard,
                        index,
                        greeting,
                    })
                }
                Err(e) => (ConnectFailure::Greeting, e),
            },
            Ok(Err(e)) if is_local_shortage(&e) => {
                // dbsplice's own shortage: no backend is to blame, none is
                // asked for an early probe, and another would fare no better.
                return Err(Refusal {
                    to_client: format!(
                        "dbsplice: pool '{}' cannot take this connection: dbsplice is short of resources",
                        pool.config.name
                    ),
                    detail: format!(
                        "dbsplice: cannot open a connection to a backend of pool '{}': {}",
                        pool.config.name,
                        describe_connect_error(&e)
                    ),
                });
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                (ConnectFailure::Refused, describe_connect_error(&e))
            }
            Ok(Err(e)) => (ConnectFailure::Other, describe_connect_error(&e)),
            Err(_) => (
                ConnectFailure::Timeout,
                format!(
                    "connect timed out after {}",
                    format_duration(pool.config.connect_timeout)
                ),
            ),
        };
        tracing::info!(backend = %member.state.address, pool = %pool.config.name, "connect failed, trying another backend: {error}");
        member.state.connect_failed(kind);
        // Only failed backends are remembered: the usual first-try success
        // allocates nothing here.
        excluded.push(index);
        failures.push(format!("{}: {error}", member.name));
    }
    Err(if failures.is_empty() {
        Refusal::same(format!(
            "dbsplice: no backend of pool '{}' is available",
            pool.config.name
        ))
    } else {
        Refusal {
            to_client: format!(
                "dbsplice: no backend of pool '{}' accepted a connection ({} tried)",
                pool.config.name,
                failures.len()
            ),
            detail: format!(
                "dbsplice: no backend of pool '{}' accepted a connection ({})",
                pool.config.name,
                failures.join("; ")
            ),
        }
    })
}

/// Readies a fresh backend connection: the PROXY header first, then, with
/// the greeting gate, the server's greeting (returned to forward).
async fn prepare(
    mut stream: TcpStream,
    routing: &crate::config::Routing,
    proxy_header: Option<&[u8]>,
) -> Result<(TcpStream, Vec<u8>), String> {
    if let Some(header) = proxy_header {
        stream
            .write_all(header)
            .await
            .map_err(|e| format!("sending the PROXY header failed: {e}"))?;
    }
    let greeting = if routing.greeting_gate {
        greeting::read(&mut stream, routing.greeting_timeout).await?
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
