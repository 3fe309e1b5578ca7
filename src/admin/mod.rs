//! The admin HTTP server (hyper 1): health and readiness, Prometheus
//! metrics, JSON status, and the operator's actions (reload, fail-back).
//! Reads go straight to the shared state the control module publishes;
//! actions are events in its inbox, answered through a reply channel.

mod auth;
pub mod cli;
pub mod client;
pub mod conns;
pub mod gate;
mod headers;
pub mod metrics;
mod process;
pub mod shared;
pub mod status;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::backend::Override;
use crate::inbox::{Inbox, ReloadOutcome, Trigger};
use crate::logging::RateLimit;
use crate::vocabulary::OverrideMode;
pub use shared::Shared;

/// What request handlers need.
#[derive(Debug)]
pub struct Admin {
    /// Shared state to read.
    pub shared: Arc<Shared>,
    /// Where actions go.
    pub inbox: Inbox,
    /// The TLS acceptor for the certificate files as last read.
    tls: tls::Cache,
    /// Log lines that a flood must not multiply.
    logs: Logs,
    /// Where upgrade requests go (the process's owner), if it takes them.
    upgrades: Option<tokio::sync::mpsc::Sender<UpgradeAsk>>,
}

/// An operator's request to hand every session to a new process, for the
/// owner of the process to carry out.
#[derive(Debug)]
pub struct UpgradeAsk {
    /// The binary to start, if not the running one's.
    pub binary: Option<std::path::PathBuf>,
    /// Who asked, in words.
    pub origin: String,
    /// The outcome: what moved, or why nothing did.
    pub reply: tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>,
}

/// The admin server's rate-limited log lines.
#[derive(Debug, Default)]
struct Logs {
    accept: RateLimit,
    full: RateLimit,
    tls: RateLimit,
    refused: RateLimit,
    host: RateLimit,
}

impl Admin {
    /// An admin server over `shared`, sending actions to `inbox`.
    pub fn new(shared: Arc<Shared>, inbox: Inbox) -> Admin {
        Admin {
            shared,
            inbox,
            tls: tls::Cache::default(),
            logs: Logs::default(),
            upgrades: None,
        }
    }

    /// The same, sending `POST /api/upgrade` to `upgrades`.
    pub fn with_upgrades(mut self, upgrades: tokio::sync::mpsc::Sender<UpgradeAsk>) -> Admin {
        self.upgrades = Some(upgrades);
        self
    }
}

/// A connection must send a request's headers within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS handshake must finish within this long.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection where nothing moves for this long is closed.
const STALLED_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of unfinished request headers buffered per connection
/// (hyper's smallest allowed buffer is 8 KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Back-off bounds after a failed accept (out of descriptors, say).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves admin requests on `listener` until `stop` is cancelled.
///
/// Whatever its config says, the admin server holds at most its share of
/// the descriptors kept outside sessions ([`conns::admin_share`]).
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let share = conns::admin_share(admin.shared.session_cap.reserved());
    let table = Arc::new(conns::Table::new());
    let connections = tokio_util::task::TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    while let Some((stream, peer)) = accept(&listener, &admin, &stop, &mut backoff).await {
        let cap = admin
            .shared
            .routes
            .load()
            .config
            .admin
            .as_ref()
            .map_or(share, |a| a.max_connections.min(share));
        let conn = match table.admit(cap) {
            Ok(conn) => conn,
            Err(conns::Full) => {
                if let Some(suppressed) = admin.logs.full.ready() {
                    tracing::warn!(
                        client = %peer,
                        "admin connection refused: all {cap} are serving requests ({suppressed} more not logged)"
                    );
                }
                continue;
            }
        };
        let acceptor = match admin.tls.acceptor(&admin.shared) {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = admin.logs.tls.ready() {
                    tracing::error!(
                        "admin HTTPS is misconfigured, refusing connections: {e} ({suppressed} more not logged)"
                    );
                }
                continue;
            }
        };
        connections.spawn(connection(Arc::clone(&admin), conn, acceptor, stream, peer));
        // Let a connection this admission evicted close its socket before the
        // next accept: under a flood the admin runtime would otherwise accept
        // faster than evicted connections give their descriptors back, and
        // run the whole process out of them.
        tokio::task::yield_now().await;
    }
    // Answers being written (the reply to an upgrade, say) get a moment.
    connections.close();
    let _ = tokio::time::timeout(FINISH_WITHIN, connections.wait()).await;
}

/// How long a stopping admin server lets its connections finish.
const FINISH_WITHIN: Duration = Duration::from_secs(2);

/// The next accepted connection, backing off after failed accepts (out of
/// descriptors, say); `None` once `stop` is cancelled.
async fn accept(
    listener: &TcpListener,
    admin: &Admin,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(a) => {
                *backoff = ACCEPT_BACKOFF_MIN;
                return Some(a);
            }
            Err(e) => {
                if let Some(suppressed) = admin.logs.accept.ready() {
                    tracing::warn!(
                        "admin accept failed: {e}; retrying in {backoff:?} ({suppressed} more failures not logged)"
                    );
                }
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(*backoff) => {}
                }
                *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// One admitted connection, from the TLS handshake (if any) until it ends,
/// is evicted or stalls.
async fn connection(
    admin: Arc<Admin>,
    conn: conns::Conn,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let stream = conn.track(stream);
    let work = async {
        let Some(acceptor) = acceptor else {
            return serve_connection(&admin, &conn, stream, peer).await;
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => serve_connection(&admin, &conn, tls, peer).await,
            Ok(Err(e)) => tracing::debug!(client = %peer, "admin TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(client = %peer, "admin TLS handshake timed out"),
        }
    };
    tokio::select! {
        () = work => {}
        () = conn.ended(STALLED_TIMEOUT) => {
            tracing::debug!(client = %peer, "admin connection closed: idle, stalled or evicted");
        }
    }
}

async fn serve_connection<S>(admin: &Arc<Admin>, conn: &conns::Conn, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|req| {
        let admin = Arc::clone(admin);
        let busy = conn.busy();
        async move {
            let response = handle(&admin, req, peer).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(client = %peer, "admin connection ended: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

/// The status page: self-contained, nothing fetched from elsewhere.
const STATUS_PAGE: &str = include_str!("page.html");
const STATUS_SCRIPT: &str = include_str!("page.js");
const STATUS_STYLE: &str = include_str!("page.css");

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

async fn handle(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let mut response = route(admin, req, peer).await;
    headers::secure(response.headers_mut());
    response
}

async fn route(admin: &Admin, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let decided = {
        let snapshot = admin.shared.routes.load();
        gate::admit(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
            snapshot.config.admin.as_ref(),
        )
    };
    match decided {
        Ok(gate::Admitted::Read(path)) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            read(admin, &path)
        }
        Ok(gate::Admitted::Action(path, query)) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            act(admin, &path, &query, peer).await
        }
        Err(refused) => {
            let limit = match refused.kind {
                gate::RefusedKind::Host => Some(&admin.logs.host),
                gate::RefusedKind::Token => Some(&admin.logs.refused),
                gate::RefusedKind::Route => None,
            };
            if let Some(suppressed) = limit.and_then(RateLimit::ready) {
                tracing::warn!(
                    client = %peer,
                    path = %req.uri().path(),
                    host = ?req.headers().get(hyper::header::HOST),
                    "admin request refused: {} ({suppressed} more refusals not logged)",
                    refused.message
                );
            }
            error(refused.status, refused.message)
        }
    }
}

fn read(admin: &Admin, path: &[&str]) -> Reply {
    match path {
        [] => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
        ["page.js"] => reply(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            STATUS_SCRIPT,
        ),
        ["page.css"] => reply(StatusCode::OK, "text/css; charset=utf-8", STATUS_STYLE),
        ["healthz"] => reply(StatusCode::OK, "text/plain", "ok\n"),
        ["readyz"] if admin.shared.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n"),
        ["readyz"] => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        ["metrics"] => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(&admin.shared),
        ),
        ["api", "backends", name, "why"] => match status::why(&admin.shared, name) {
            Some(answer) => json(StatusCode::OK, &answer),
            None => error(StatusCode::NOT_FOUND, "no backend of that name"),
        },
        _ => json(StatusCode::OK, &status::status(&admin.shared)),
    }
}

async fn act(admin: &Admin, path: &[&str], query: &str, peer: SocketAddr) -> Reply {
    match path {
        ["api", "backends", name, action] => set_override(admin, name, action, query, peer).await,
        ["api", "reload"] => reload(admin).await,
        ["api", "upgrade"] => upgrade(admin, query, peer).await,
        ["api", "pools", pool, "pause"] => pause(admin, pool, query, peer).await,
        ["api", "pools", pool, "switchover"] => switchover(admin, pool, query, peer).await,
        ["api", "pools", pool, "resume"] => {
            match admin
                .inbox
                .resume(pool, format!("admin API from {peer}"))
                .await
            {
                Ok(Some(held)) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "pool": pool, "resumed": true, "released": held }),
                ),
                Ok(None) => error(StatusCode::NOT_FOUND, "no such pool"),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            }
        }
        ["api", "pools", pool, "failback"] => match admin.inbox.failback(pool).await {
            Ok(Some(held)) => json(
                StatusCode::OK,
                &serde_json::json!({ "pool": pool, "released": held }),
            ),
            Ok(None) => error(StatusCode::NOT_FOUND, "no such pool"),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        },
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// `POST /api/backends/NAME/{drain,disable,enable}[?for=DURATION]`.
async fn set_override(
    admin: &Admin,
    name: &str,
    action: &str,
    query: &str,
    peer: SocketAddr,
) -> Reply {
    let mode = match action {
        "drain" => Some(OverrideMode::Drain),
        "disable" => Some(OverrideMode::Disable),
        _ => None,
    };
    let until = match query.split('&').find_map(|kv| kv.strip_prefix("for=")) {
        None => None,
        Some(d) => match crate::config::parse_duration(d) {
            Ok(d) => Some(std::time::Instant::now() + d),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("for: {e}")),
        },
    };
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let value = mode.map(|mode| Override {
        mode,
        origin: format!("admin API from {peer}"),
        since_unix,
        until,
    });
    match admin.inbox.set_override(name, value).await {
        Ok(0) => error(StatusCode::NOT_FOUND, "no backend of that name"),
        Ok(n) => json(
            StatusCode::OK,
            &serde_json::json!({ "backend": name, "state": action, "backends": n }),
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// `POST /api/pools/NAME/switchover[?to=BACKEND]`: the report, step by
/// step, once it is over; 409 when it did not happen.
async fn switchover(admin: &Admin, pool: &str, query: &str, peer: SocketAddr) -> Reply {
    let to = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("to="))
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    match admin
        .inbox
        .switchover(pool, to, format!("admin API from {peer}"))
        .await
    {
        Ok(report) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            json(status, &serde_json::to_value(&report).unwrap_or_default())
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// A pause lasts this long unless `?for=` says otherwise.
const DEFAULT_PAUSE: Duration = Duration::from_secs(30);

/// `POST /api/pools/NAME/pause[?for=DURATION]`.
async fn pause(admin: &Admin, pool: &str, query: &str, peer: SocketAddr) -> Reply {
    let duration = match query.split('&').find_map(|kv| kv.strip_prefix("for=")) {
        None => DEFAULT_PAUSE,
        Some(d) => match crate::config::parse_duration(d) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "for: 0s pauses nothing; to end a pause, POST .../resume",
                )
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("for: {e}")),
        },
    };
    match admin
        .inbox
        .pause(pool, duration, format!("admin API from {peer}"))
        .await
    {
        Ok(true) => json(
            StatusCode::OK,
            &serde_json::json!({ "pool": pool, "paused_for_seconds": duration.as_secs_f64() }),
        ),
        Ok(false) => error(StatusCode::NOT_FOUND, "no such pool"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// `POST /api/upgrade[?binary=PATH]`: what moved to the new process, or
/// (409) why nothing did and everything stays here.
async fn upgrade(admin: &Admin, query: &str, peer: SocketAddr) -> Reply {
    let Some(upgrades) = &admin.upgrades else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this process cannot be upgraded in place (not started by `dbsplice run`)",
        );
    };
    let binary = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("binary="))
        .map(|b| std::path::PathBuf::from(gate::percent_decoded(b)));
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let ask = UpgradeAsk {
        binary,
        origin: format!("admin API from {peer}"),
        reply,
    };
    if upgrades.send(ask).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match outcome.await {
        Ok(Ok(done)) => json(StatusCode::OK, &done),
        Ok(Err(why)) => json(StatusCode::CONFLICT, &serde_json::json!({ "error": why })),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// `POST /api/reload`: the outcome in words; 422 when the file was rejected.
async fn reload(admin: &Admin) -> Reply {
    match admin.inbox.reload(Trigger::Forced).await {
        ReloadOutcome::Unchanged => json(
            StatusCode::OK,
            &serde_json::json!({ "outcome": "unchanged" }),
        ),
        ReloadOutcome::Applied { generation, diff } => json(
            StatusCode::OK,
            &serde_json::json!({ "outcome": format!("applied generation {generation}: {diff}") }),
        ),
        ReloadOutcome::Rejected(crate::inbox::ReloadError::Stopped) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
        ReloadOutcome::Rejected(why) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "error": why.to_string() }),
        ),
    }
}
