//! The admin HTTP server (hyper 1): health and readiness, Prometheus
//! metrics, JSON status, and the operator's actions (reload, fail-back).
//! Reads go straight to the shared state; actions are sent to the control
//! loop that owns the app and answered through a reply channel.

mod auth;
pub mod cli;
pub mod client;
mod status;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::app::Shared;
use crate::cluster::backend::{Override, OverrideMode};

/// An action only the control loop may carry out.
#[derive(Debug)]
pub enum Command {
    /// Reload the config file now; reply with the outcome in words.
    Reload(oneshot::Sender<(bool, String)>),
    /// Manual fail-back in a pool; reply with how many backends were held
    /// (`None`: no such pool).
    Failback(String, oneshot::Sender<Option<usize>>),
}

/// What request handlers need.
#[derive(Debug)]
pub struct Admin {
    /// Shared state to read.
    pub shared: Arc<Shared>,
    /// Where actions go.
    pub commands: mpsc::Sender<Command>,
    /// The TLS acceptor for the certificate files as last read.
    tls: tls::Cache,
}

impl Admin {
    /// An admin server over `shared`, sending actions to `commands`.
    pub fn new(shared: Arc<Shared>, commands: mpsc::Sender<Command>) -> Admin {
        Admin {
            shared,
            commands,
            tls: tls::Cache::default(),
        }
    }
}

/// Serves admin requests on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = match admin.tls.acceptor(&admin.shared) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("admin HTTPS is misconfigured, refusing connections: {e}");
                continue;
            }
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(admin, stream, peer).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve_connection(admin, tls, peer).await,
                    Err(e) => tracing::debug!(client = %peer, "admin TLS handshake failed: {e}"),
                },
            }
        });
    }
}

async fn serve_connection<S>(admin: Arc<Admin>, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let admin = Arc::clone(&admin);
        async move { Ok::<_, Infallible>(handle(&admin, req, peer).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(client = %peer, "admin connection ended: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

/// The status page: self-contained, nothing fetched from elsewhere.
const STATUS_PAGE: &str = include_str!("page.html");

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
    let path: Vec<&str> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = req.method().clone();
    let read_only = matches!(
        path.as_slice(),
        [] | ["healthz"]
            | ["readyz"]
            | ["metrics"]
            | ["api", "status"]
            | ["api", "backends", _, "why"]
    );
    match (read_only, &method) {
        (true, &Method::GET | &Method::HEAD) => return read(admin, &path),
        (true, _) => return error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (false, &Method::POST) => {}
        (false, _) if is_action(&path) => return error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        (false, _) => return error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
    if !is_action(&path) {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    let token = admin
        .shared
        .routes
        .load()
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.clone());
    if let Err((status, message)) = auth::check(req.headers(), token.as_ref()) {
        tracing::warn!(client = %peer, path = %req.uri().path(), "admin request refused: {message}");
        return error(status, message);
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    act(admin, &path, &query, peer).await
}

fn is_action(path: &[&str]) -> bool {
    matches!(
        path,
        ["api", "reload"]
            | ["api", "pools", _, "failback"]
            | ["api", "backends", _, "drain" | "disable" | "enable"]
    )
}

fn read(admin: &Admin, path: &[&str]) -> Reply {
    match path {
        [] => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
        ["healthz"] => reply(StatusCode::OK, "text/plain", "ok\n"),
        ["readyz"] if admin.shared.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n"),
        ["readyz"] => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        ["metrics"] => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&admin.shared),
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
        ["api", "backends", name, action] => {
            let mode = match *action {
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
            match admin.shared.set_override(name, value) {
                0 => error(StatusCode::NOT_FOUND, "no backend of that name"),
                n => json(
                    StatusCode::OK,
                    &serde_json::json!({ "backend": name, "state": action, "backends": n }),
                ),
            }
        }
        ["api", "reload"] => {
            let (tx, rx) = oneshot::channel();
            if admin.commands.send(Command::Reload(tx)).await.is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            }
            match rx.await {
                Ok((true, outcome)) => {
                    json(StatusCode::OK, &serde_json::json!({ "outcome": outcome }))
                }
                Ok((false, why)) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "error": why }),
                ),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            }
        }
        ["api", "pools", pool, "failback"] => {
            let (tx, rx) = oneshot::channel();
            if admin
                .commands
                .send(Command::Failback((*pool).to_owned(), tx))
                .await
                .is_err()
            {
                return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
            }
            match rx.await {
                Ok(Some(held)) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "pool": pool, "released": held }),
                ),
                Ok(None) => error(StatusCode::NOT_FOUND, "no such pool"),
                Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}
