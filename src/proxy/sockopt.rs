//! Socket options for both legs of a session.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first keepalive probe: finds peers that vanished
/// without a FIN (a crashed host, a dropped NAT entry) long before the
/// kernel's two-hour default.
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// TCP_NODELAY (MySQL packets are small and latency-bound) and keepalive
/// on a backend connection. Failures are logged and ignored: the session
/// works without them.
pub fn tune(stream: &TcpStream) {
    set(SockRef::from(stream));
}

/// The same options on a listening socket: Linux copies them to every
/// socket it accepts, which saves five system calls per client.
pub fn tune_listener(listener: &std::net::TcpListener) {
    set(SockRef::from(listener));
}

fn set(socket: SockRef<'_>) {
    if let Err(e) = socket.set_tcp_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot set TCP keepalive: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tune_listener(&listener);
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let accepted = SockRef::from(&accepted);
        assert!(accepted.tcp_nodelay().unwrap());
        assert!(accepted.keepalive().unwrap());
        assert_eq!(accepted.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
        assert_eq!(
            accepted.tcp_keepalive_interval().unwrap(),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(accepted.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
