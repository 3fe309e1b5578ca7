//! One probe of one backend, bounded by one deadline.
//!
//! The TCP probe only connects. It is the explicit `kind = "tcp"` choice; the
//! MySQL-protocol probe (log in, COM_PING, COM_QUIT) slots in beside it as
//! another [`CheckKind`] arm, because a bare connect-and-close counts as an
//! aborted handshake on a MySQL server.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{format_duration, CheckKind};

/// Runs one probe of `kind` against `addr`; `Err` carries the reason in words.
pub async fn probe(
    kind: CheckKind,
    addr: SocketAddr,
    deadline: Duration,
) -> Result<String, String> {
    let work = async {
        match kind {
            CheckKind::Tcp => tcp(addr).await,
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within the check timeout ({})",
            format_duration(deadline)
        )),
    }
}

async fn tcp(addr: SocketAddr) -> Result<String, String> {
    match TcpStream::connect(addr).await {
        Ok(_stream) => Ok("tcp connect succeeded".to_owned()),
        Err(e) => Err(describe_connect_error(&e)),
    }
}

/// Words for a failed connect that an operator can act on.
pub fn describe_connect_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens on the port".to_owned()
        }
        io::ErrorKind::TimedOut => "connect timed out".to_owned(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            format!("unreachable: {e}")
        }
        _ => format!("connect failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_probe_passes_on_a_listening_port_and_fails_on_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(probe(CheckKind::Tcp, addr, Duration::from_secs(5))
            .await
            .is_ok());
        drop(listener);
        let err = probe(CheckKind::Tcp, addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
