//! Classifying IO errors for the operator: whether dbsplice itself is short of
//! resources (so no backend is to blame), and words for a failed connect.

use std::io;

/// Whether a failed connect (or accept) ran into dbsplice's own limits
/// rather than anything the peer did: out of file descriptors (per process
/// or system-wide), socket buffers or memory. No backend is to blame, and
/// another backend would fare no better.
pub fn is_local_shortage(e: &io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e).is_some_and(|errno| {
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&errno)
    })
}

/// Words for a failed connect that an operator can act on.
pub fn describe_connect_error(e: &io::Error) -> String {
    if is_local_shortage(e) {
        return format!("dbsplice is short of resources, not the backend at fault: {e}");
    }
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
