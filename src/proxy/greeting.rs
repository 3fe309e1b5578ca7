//! The greeting gate: read a server's first packet before the client sees
//! anything, so that a server refusing connections (1040 too many
//! connections, 1129 host blocked, 1047) or not greeting at all is skipped
//! like a failed connect.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::format_duration;
use crate::mysql::packet::parse_err;

/// A greeting is small; anything longer is not one.
const MAX_GREETING: usize = 16 * 1024;

/// Reads the first packet; returns every byte read (to forward to the client)
/// or why the server cannot take the client.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(128);
    let whole = async {
        loop {
            if let Some(&[a, b, c, _]) = bytes.get(..4) {
                let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
                if len > MAX_GREETING {
                    return Err(format!(
                        "greeting of {len} bytes announced: not a MySQL server"
                    ));
                }
                if bytes.len() >= 4 + len {
                    return Ok(());
                }
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) => return Err("the server closed the connection before greeting".to_owned()),
                Ok(n) => bytes.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) => return Err(format!("reading the greeting failed: {e}")),
            }
        }
    };
    match tokio::time::timeout(timeout, whole).await {
        Err(_) => Err(format!(
            "no greeting within greeting_timeout ({})",
            format_duration(timeout)
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) if bytes.get(4) == Some(&0xff) => {
            let end = bytes.len().min(4 + MAX_GREETING);
            match parse_err(bytes.get(4..end).unwrap_or_default()) {
                Ok(e) => Err(format!("greeting error {}: {}", e.code, e.message)),
                Err(e) => Err(format!("malformed error greeting: {e}")),
            }
        }
        Ok(Ok(())) => Ok(bytes),
    }
}
