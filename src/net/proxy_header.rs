//! PROXY protocol headers (v1 text, v2 binary) sent to backends first, so a
//! server configured with `proxy_protocol_networks` sees the real client
//! address instead of dbsplice's.
//!
//! Not the `ppp` crate: dbsplice only writes these headers, never parses
//! one, and writing them is a few lines per version with no allocation
//! beyond the header itself; a parser on the data path would buy nothing.

use std::net::SocketAddr;

pub use crate::config::ProxyVersion;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a client at `source` that connected to `destination` (the
/// listener's address).
pub fn header(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    // A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6; servers
    // expect plain IPv4 then.
    let (source, destination) = (unmap(source), unmap(destination));
    match version {
        ProxyVersion::V1 => {
            let family = match (source, destination) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
                (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
                _ => return b"PROXY UNKNOWN\r\n".to_vec(),
            };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => {
            let mut addresses = Vec::with_capacity(36);
            let family = match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    addresses.extend_from_slice(&s.ip().octets());
                    addresses.extend_from_slice(&d.ip().octets());
                    0x11
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    addresses.extend_from_slice(&s.ip().octets());
                    addresses.extend_from_slice(&d.ip().octets());
                    0x21
                }
                _ => return local(ProxyVersion::V2),
            };
            addresses.extend_from_slice(&source.port().to_be_bytes());
            addresses.extend_from_slice(&destination.port().to_be_bytes());
            v2(0x21, family, &addresses)
        }
    }
}

/// The header for a connection of dbsplice's own (a health probe): v1
/// `UNKNOWN`, v2 `LOCAL`. The server uses the connection's real address.
pub fn local(version: ProxyVersion) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V2 => v2(0x20, 0x00, &[]),
    }
}

fn v2(version_command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + addresses.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(version_command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(addresses.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(addresses);
    out
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(addr, |ip| SocketAddr::new(ip.into(), v6.port())),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let h = header(
            ProxyVersion::V1,
            addr("192.0.2.7:51000"),
            addr("10.0.0.1:3306"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 3306\r\n");
        let h = header(
            ProxyVersion::V1,
            addr("[2001:db8::7]:51000"),
            addr("[2001:db8::1]:3306"),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 3306\r\n");
        let h = header(
            ProxyVersion::V1,
            addr("[::ffff:192.0.2.7]:1"),
            addr("[::ffff:10.0.0.1]:2"),
        );
        assert_eq!(
            h, b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n",
            "mapped addresses unmapped"
        );
        assert_eq!(local(ProxyVersion::V1), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_headers() {
        let h = header(
            ProxyVersion::V2,
            addr("192.0.2.7:51000"),
            addr("10.0.0.1:3306"),
        );
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(
            &h[16..],
            &[192, 0, 2, 7, 10, 0, 0, 1, 0xc7, 0x38, 0x0c, 0xea]
        );
        let h = header(
            ProxyVersion::V2,
            addr("[2001:db8::7]:1"),
            addr("[2001:db8::1]:2"),
        );
        assert_eq!((h[13], h[15], h.len()), (0x21, 36, 16 + 36));
        assert_eq!(local(ProxyVersion::V2)[12..], [0x20, 0, 0, 0]);
    }
}
