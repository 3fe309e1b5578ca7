//! The greeting gate: read a server's first packet before the client sees
//! anything, so that a server refusing connections (1040 too many
//! connections, 1129 host blocked, 1047) or not greeting at all is skipped
//! like a failed connect.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::format_duration;
use crate::mysql::packet::parse_err;

/// Why a server cannot take the client, by its first bytes or their absence.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// It greeted with an error (1040 too many connections, 1129 host
    /// blocked, ...).
    #[error("greeting error {}: {}", .0.code, .0.message)]
    Refused(crate::mysql::ServerError),
    /// Its first bytes are not a MySQL greeting.
    #[error("{0}")]
    NotMysql(String),
    /// It closed, or reading failed, before greeting.
    #[error("{0}")]
    Closed(String),
    /// No greeting within `greeting_timeout`.
    #[error("no greeting within greeting_timeout ({})", format_duration(*.0))]
    Timeout(Duration),
}

impl GateError {
    /// The server said it has no connection to spare (1040): full, not down.
    pub fn is_full(&self) -> bool {
        matches!(self, GateError::Refused(e) if e.code == crate::mysql::ER_CON_COUNT_ERROR)
    }
}

/// A greeting is small; anything longer is not one.
const MAX_GREETING: usize = 16 * 1024;

/// The gate's judgement of a server's first bytes, fed as they arrive:
/// sans-IO, so that every split of hostile bytes can be tested and fuzzed.
#[derive(Debug, Default)]
pub struct Gate {
    bytes: Vec<u8>,
}

impl Gate {
    /// Takes bytes from the server: `None` while the first packet is
    /// incomplete, then every byte read (to forward to the client) or why
    /// the server cannot take the client.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Result<Vec<u8>, GateError>> {
        self.bytes.extend_from_slice(chunk);
        let &[a, b, c, _] = self.bytes.get(..4)? else {
            return None;
        };
        let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
        if len > MAX_GREETING {
            return Some(Err(GateError::NotMysql(format!(
                "greeting of {len} bytes announced: not a MySQL server"
            ))));
        }
        let end = len.saturating_add(4);
        if self.bytes.len() < end {
            return None;
        }
        if self.bytes.get(4) == Some(&0xff) {
            return Some(
                match parse_err(self.bytes.get(4..end).unwrap_or_default()) {
                    Ok(e) => Err(GateError::Refused(e)),
                    Err(e) => Err(GateError::NotMysql(format!(
                        "malformed error greeting: {e}"
                    ))),
                },
            );
        }
        Some(Ok(std::mem::take(&mut self.bytes)))
    }
}

/// Reads the first packet; returns every byte read (to forward to the client)
/// or why the server cannot take the client.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, GateError> {
    let mut gate = Gate::default();
    let whole = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => {
                    return Err(GateError::Closed(
                        "the server closed the connection before greeting".to_owned(),
                    ))
                }
                Ok(n) => {
                    if let Some(verdict) = gate.feed(chunk.get(..n).unwrap_or_default()) {
                        return verdict;
                    }
                }
                Err(e) => {
                    return Err(GateError::Closed(format!(
                        "reading the greeting failed: {e}"
                    )))
                }
            }
        }
    };
    tokio::time::timeout(timeout, whole)
        .await
        .unwrap_or(Err(GateError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_waits_for_the_whole_first_packet_and_judges_it() {
        let mut greeting = vec![5, 0, 0, 0, 10, b'1', b'0', b'.', 0];
        greeting.extend_from_slice(b"rest");
        let mut gate = Gate::default();
        for byte in &greeting[..8] {
            assert!(gate.feed(&[*byte]).is_none(), "incomplete");
        }
        assert_eq!(gate.feed(&greeting[8..]).unwrap().unwrap(), greeting);

        let mut refused = vec![0xff, 0x10, 0x04];
        refused.extend_from_slice(b"Too many\nconnections");
        let mut packet = vec![u8::try_from(refused.len()).unwrap(), 0, 0, 0];
        packet.extend_from_slice(&refused);
        let verdict = Gate::default().feed(&packet).unwrap().unwrap_err();
        assert!(verdict.is_full(), "1040 is a full server");
        let verdict = verdict.to_string();
        assert!(verdict.starts_with("greeting error 1040"), "{verdict}");
        assert!(
            !verdict.contains('\n'),
            "server text is printable: {verdict:?}"
        );

        let absurd = Gate::default()
            .feed(&[0xff, 0xff, 0xff, 0])
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(absurd.contains("not a MySQL server"), "{absurd}");
    }
}
