//! systemd integration without libsystemd: the notify protocol (datagrams to
//! `$NOTIFY_SOCKET`: READY, RELOADING, STATUS, STOPPING, WATCHDOG) and socket
//! activation (`$LISTEN_FDS`, matched to listeners by `$LISTEN_FDNAMES` or
//! address). Outside systemd every call here does nothing.
//!
//! Not the `sd-notify` crate: the protocol is one datagram and three
//! environment variables, and dbsplice needs exactly its own cut of it
//! (`MONOTONIC_USEC` with `RELOADING=1` for `Type=notify-reload`, passed
//! sockets matched to listeners by name, the variables cleared before any
//! thread starts), which the suite checks on a notify socket of its own and
//! through `systemd-socket-activate`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Talks to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|us| *us > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Sends one message (`KEY=value` lines); failures are logged, never fatal.
    pub fn notify(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::debug!("cannot notify the service manager: {e}");
            }
        }
    }

    /// Ready to serve, with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload begins (systemd wants the monotonic time with it).
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutdown begins.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// The watchdog interval systemd asked for, in microseconds.
    pub fn watchdog_usec(&self) -> Option<u64> {
        self.watchdog
            .map(|w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX))
    }

    /// Takes on the watchdog interval a former process was asked for (its
    /// `WATCHDOG_PID` named that process, not this one).
    pub fn set_watchdog(&mut self, usec: Option<u64>) {
        if let Some(usec) = usec.filter(|u| *u > 0) {
            self.watchdog = Some(Duration::from_micros(usec));
        }
    }

    /// How often to send WATCHDOG=1: half the interval systemd asked for.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }
}

fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000
}

/// Listening sockets passed by the service manager, with their names.
pub fn inherited_listeners() -> Vec<(Option<String>, std::net::TcpListener)> {
    let mut fds = listenfd::ListenFd::from_env();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        match fds.take_tcp_listener(i) {
            Ok(Some(listener)) => {
                out.push((names.get(i).filter(|n| !n.is_empty()).cloned(), listener))
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("passed socket {i} is not a TCP listener: {e}"),
        }
    }
    // Children must not see them again.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_at_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("dbsplice-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                std::os::unix::net::SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(10)),
        };
        notifier.ready("serving\\nwell");
        notifier.reloading();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving\\nwell");
        let n = receiver.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            text.starts_with("RELOADING=1\nMONOTONIC_USEC=") && text.len() > 30,
            "{text}"
        );
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
