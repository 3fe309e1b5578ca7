//! Binding listener sockets: reuse-address, non-blocking, a deep backlog, and
//! the sockets a service manager passed in matched to listeners by name or
//! address.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

use crate::config::Config;

/// Pending connections the kernel queues per listener before accept.
const LISTEN_BACKLOG: i32 = 1024;

/// A listener socket bound for the config's `[[listener]]` of that name.
#[derive(Debug)]
pub struct BoundListener {
    /// The listener's name.
    pub name: String,
    /// The bound, non-blocking socket.
    pub socket: std::net::TcpListener,
}

/// Binds every listener of `config`, using a socket passed by the service
/// manager where one matches the listener's name or address.
pub fn bind_with(
    config: &Config,
    mut inherited: Vec<(Option<String>, std::net::TcpListener)>,
) -> io::Result<Vec<BoundListener>> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let passed = inherited.iter().position(|(name, socket)| {
            name.as_deref() == Some(l.name.as_str())
                || (l.addr.port() != 0 && socket.local_addr().ok() == Some(l.addr))
        });
        let socket = match passed {
            Some(i) => {
                let (_, socket) = inherited.swap_remove(i);
                socket.set_nonblocking(true)?;
                tracing::info!(listener = %l.name, "using the socket passed by the service manager");
                socket
            }
            None => bind_one(l.addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listener '{}': cannot bind {}: {e}", l.name, l.listen),
                )
            })?,
        };
        super::sockopt::tune_listener(&socket);
        out.push(BoundListener {
            name: l.name.clone(),
            socket,
        });
    }
    for (name, socket) in inherited {
        tracing::warn!(name = ?name, addr = ?socket.local_addr().ok(), "a passed socket matches no listener; closing it");
    }
    Ok(out)
}

/// Binds every listener of `config` (port 0 picks a free port).
pub fn bind(config: &Config) -> io::Result<Vec<BoundListener>> {
    bind_with(config, Vec::new())
}

/// Binds one listening socket (reuse-address, non-blocking, backlog 1024).
pub fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
