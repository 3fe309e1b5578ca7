//! A small HTTP/1.1 client for the `dbsplice` CLI commands that talk to a
//! running instance's admin server, over HTTPS when the server serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer the CLI reads.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// HTTPS to the admin server: whom to trust and the name to check.
#[derive(Clone)]
pub struct Https {
    /// Trust and verification settings.
    pub config: Arc<rustls::ClientConfig>,
    /// The name (or address) the certificate must be valid for.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https").field("name", &self.name).finish()
    }
}

/// Why a request to the admin server got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepted the connection.
    #[error("cannot reach the admin server at {addr}: {source}")]
    Connect {
        /// The admin address.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (an untrusted or mismatched certificate).
    #[error(
        "HTTPS to the admin server at {addr} failed: {source} \
         (give the CA with --ca-file, or --insecure to skip the check)"
    )]
    Tls {
        /// The admin address.
        addr: SocketAddr,
        /// The handshake error.
        source: std::io::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("{0}")]
    Malformed(&'static str),
    /// No answer in time.
    #[error("{addr}: no answer within 30s")]
    Timeout {
        /// The admin address.
        addr: SocketAddr,
    },
}

/// Sends one request and returns the status code and body. The token, when
/// given, goes in an `Authorization` header.
pub async fn request(
    addr: SocketAddr,
    https: Option<&Https>,
    method: &str,
    path: &str,
    token: Option<&str>,
    within: Duration,
) -> Result<(u16, String), ClientError> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n");
        match https {
            None => send(stream, &head).await,
            Some(https) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&https.config));
                let tls = connector
                    .connect(https.name.clone(), stream)
                    .await
                    .map_err(|source| ClientError::Tls { addr, source })?;
                send(tls, &head).await
            }
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| ClientError::Timeout { addr })?
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &str,
) -> Result<(u16, String), ClientError> {
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    // A server that closes without TLS's close_notify still sent its answer.
    if let Err(e) = (&mut stream).take(MAX_RESPONSE).read_to_end(&mut raw).await {
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(e.into());
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<(u16, String), ClientError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::Malformed("malformed HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::Malformed("malformed HTTP status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(rest.get(..n).unwrap_or_default());
        body = rest.get(n..).unwrap_or_default().trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap(),
            (200, "ok".into())
        );
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (404, "abcde".into()));
        assert!(parse(b"garbage").is_err());
    }
}
