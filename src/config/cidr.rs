//! Client address ranges for a listener's `allow` list: `"10.0.0.0/8"`,
//! `"2001:db8::/32"`, or a bare address for one host.
//!
//! Not the `ipnet` crate: it wants every range written with its prefix (no
//! bare host), matches an IPv4-mapped client (`::ffff:10.0.0.1`, what a
//! dual-stack listener sees) against no IPv4 range, and its errors name no
//! fix; this module does all three.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// One address range.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// Parses `address/prefix` or a bare address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let hint = "write a range such as \"10.0.0.0/8\", \"127.0.0.1\" or \"2001:db8::/32\"";
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("\"{text}\" is not an address range; {hint}"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| {
                    format!("\"{text}\" has an invalid prefix length (0 to {max}); {hint}")
                })?,
        };
        // Clients are matched as IPv4 when they come as IPv4-mapped IPv6
        // addresses, so a mapped range is the IPv4 range it maps.
        if let IpAddr::V6(v6) = network {
            if let Some(v4) = v6.to_ipv4_mapped() {
                let Some(prefix) = prefix.checked_sub(96) else {
                    return Err(format!(
                        "\"{text}\" reaches beyond the IPv4-mapped range ::ffff:0:0/96; write the IPv4 range, such as \"{v4}/8\""
                    ));
                };
                return Ok(Cidr {
                    network: IpAddr::V4(v4),
                    prefix,
                });
            }
        }
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is in the range. IPv4 clients seen as IPv4-mapped IPv6
    /// addresses (on a dual-stack listener) match IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = [
            ("127.0.0.2/32", "127.0.0.2", true),
            ("127.0.0.2/32", "127.0.0.3", false),
            ("127.0.0.2", "127.0.0.2", true),
            ("10.0.0.0/8", "10.200.1.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "192.0.2.7", true),
            ("2001:db8::/32", "2001:db8:1::5", true),
            ("2001:db8::/32", "2001:db9::5", false),
            ("127.0.0.0/8", "::ffff:127.0.0.9", true),
            ("::/0", "127.0.0.1", false),
            // Written IPv4-mapped: the IPv4 range it maps.
            ("::ffff:10.1.2.3", "10.1.2.3", true),
            ("::ffff:10.1.2.3", "::ffff:10.1.2.3", true),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("::ffff:10.0.0.0/104", "11.0.0.1", false),
        ];
        for (range, addr, want) in table {
            assert_eq!(
                Cidr::parse(range).unwrap().contains(ip(addr)),
                want,
                "{range} {addr}"
            );
        }
        for bad in [
            "10.0.0.0/33",
            "nonsense",
            "10.0.0/8",
            "::1/129",
            "1.2.3.4/x",
            "::ffff:10.0.0.0/80",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
