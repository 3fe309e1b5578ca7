//! Classifying IO errors for the operator: whether dbsplice itself is short of
//! resources (so no backend is to blame), and words for a failed connect.

use std::io;

/// Whether a failed connect (or accept) ran into dbsplice's own limits
/// rather than anything the peer did: out of file descriptors (per process
/// or system-wide), socket buffers or memory. No backend is to blame, and
/// another backend would fare no better.
pub fn is_local_shortage(e: &io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|errno| SHORTAGES.contains(&errno))
}

/// EMFILE, ENFILE, ENOBUFS and ENOMEM, as Linux numbers them (the same on
/// every architecture dbsplice is built for).
const SHORTAGES: [i32; 4] = [24, 23, 105, 12];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortage_numbers_are_the_kernel_s() {
        for errno in [
            rustix::io::Errno::MFILE,
            rustix::io::Errno::NFILE,
            rustix::io::Errno::NOBUFS,
            rustix::io::Errno::NOMEM,
        ] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(is_local_shortage(&e), "{e}");
        }
        for other in [
            rustix::io::Errno::CONNREFUSED,
            rustix::io::Errno::AGAIN,
            rustix::io::Errno::INTR,
        ] {
            let e = io::Error::from_raw_os_error(other.raw_os_error());
            assert!(!is_local_shortage(&e), "{e}");
        }
    }
}
