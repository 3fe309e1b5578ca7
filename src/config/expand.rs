//! Members that names give: a backend with `resolve = "all"` one per
//! address, a `[[pool.NAME.backend_srv]]` one per SRV target. Pure: the
//! lookups are `config::resolve`'s (at load and while running); here their
//! answers become members, and replace what the same source gave before.

use std::net::SocketAddr;

use super::{Address, BackendConfig, PoolConfig};
use crate::dns::Srv;
use crate::vocabulary::{Origin, Tier};

/// Members one source gives at most (the first in its answer): a DNS
/// answer or a cluster's list, however long, cannot make a pool probe
/// more servers than this.
pub const MAX_MEMBERS: usize = 64;

/// A name whose answer gives some of a pool's members.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Identifies it among the pool's sources, and marks its members.
    pub key: String,
    /// Where the file writes it, for errors (`pool.main.backend_srv[0].name`).
    pub config_key: String,
    /// What it is.
    pub kind: SourceKind,
}

/// What a source is.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// A backend with `resolve = "all"`: every member is like it, at one of
    /// its name's addresses.
    All(BackendConfig),
    /// An SRV record's name; its targets' members take at most
    /// `max_connections` sessions each.
    Srv {
        /// The record's name, such as `_mysql._tcp.db.example`.
        name: String,
        /// Each member's `max_connections`.
        max_connections: Option<u32>,
    },
}

impl Source {
    /// The source of a backend with `resolve = "all"`.
    pub fn all(config_key: String, template: BackendConfig) -> Source {
        Source {
            key: format!("all:{}", template.address.text),
            config_key,
            kind: SourceKind::All(template),
        }
    }

    /// The source of a `[[backend_srv]]`.
    pub fn srv(config_key: String, name: String, max_connections: Option<u32>) -> Source {
        Source {
            key: format!("srv:{name}"),
            config_key,
            kind: SourceKind::Srv {
                name,
                max_connections,
            },
        }
    }
}

/// The members a backend with `resolve = "all"` gives at `addrs`: each like
/// `template`, named `NAME#IP`, its identity the template's address and
/// the IP.
pub fn from_addresses(
    key: &str,
    template: &BackendConfig,
    addrs: &[SocketAddr],
) -> Vec<BackendConfig> {
    addrs
        .iter()
        .take(MAX_MEMBERS)
        .map(|addr| {
            let ip = addr.ip();
            BackendConfig {
                name: format!("{}#{ip}", template.name),
                address: Address {
                    text: format!("{}#{ip}", template.address.text),
                    host: template.address.host.clone(),
                    port: template.address.port,
                },
                addr: *addr,
                origin: Origin::Dns,
                source: Some(key.to_owned()),
                ..template.clone()
            }
        })
        .collect()
}

/// The members the SRV records `targets` give, each with the address its
/// target resolved to: the record's weight as the member's (1 to 256), the
/// lowest priority present as the primary tier and every other as standby.
pub fn from_services(
    key: &str,
    max_connections: Option<u32>,
    targets: &[(Srv, SocketAddr)],
) -> Vec<BackendConfig> {
    let best = targets.iter().map(|(s, _)| s.priority).min();
    let mut out: Vec<BackendConfig> = Vec::new();
    for (srv, addr) in targets.iter() {
        if out.len() == MAX_MEMBERS {
            break;
        }
        let text = format!("{}:{}", srv.target, srv.port);
        if out.iter().any(|b| b.address.text == text) {
            continue; // the same target twice: one member
        }
        out.push(BackendConfig {
            name: text.clone(),
            address: Address {
                text,
                host: srv.target.clone(),
                port: srv.port,
            },
            addr: *addr,
            weight: u32::from(srv.weight).clamp(1, 256),
            tier: if Some(srv.priority) == best {
                Tier::Primary
            } else {
                Tier::Standby
            },
            max_connections,
            candidate: true,
            origin: Origin::Srv,
            source: Some(key.to_owned()),
        });
    }
    out
}

/// Puts `members` in place of what source `key` gave `pool` before, where
/// the first of those stood (or last); whether anything changed.
pub fn replace(pool: &mut PoolConfig, key: &str, members: Vec<BackendConfig>) -> bool {
    let mine = |b: &BackendConfig| b.source.as_deref() == Some(key);
    let before: Vec<&BackendConfig> = pool.backends.iter().filter(|b| mine(b)).collect();
    if before.len() == members.len() && before.iter().zip(&members).all(|(a, b)| *a == b) {
        return false;
    }
    let at = pool.backends.iter().position(mine);
    pool.backends.retain(|b| !mine(b));
    let at = at.unwrap_or(pool.backends.len()).min(pool.backends.len());
    pool.backends.splice(at..at, members);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> BackendConfig {
        BackendConfig {
            name: "db".into(),
            address: Address {
                text: "db.example:3306".into(),
                host: "db.example".into(),
                port: 3306,
            },
            addr: "10.0.0.1:3306".parse().unwrap(),
            weight: 3,
            tier: Tier::Primary,
            max_connections: Some(10),
            candidate: false,
            origin: Origin::File,
            source: None,
        }
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 3306,
            target: target.into(),
        }
    }

    #[test]
    fn every_address_is_a_member_like_the_backend() {
        let addrs: Vec<SocketAddr> = vec![
            "10.0.0.5:3306".parse().unwrap(),
            "[fd00::5]:3306".parse().unwrap(),
        ];
        let m = from_addresses("all:db.example:3306", &template(), &addrs);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].name.as_str(), m[0].address.text.as_str()),
            ("db#10.0.0.5", "db.example:3306#10.0.0.5")
        );
        assert_eq!(m[1].name, "db#fd00::5");
        assert_eq!(
            (m[0].weight, m[0].max_connections, m[0].candidate),
            (3, Some(10), false)
        );
        assert_eq!(m[0].origin, Origin::Dns);
    }

    #[test]
    fn srv_weights_and_priorities_become_weights_and_tiers() {
        let at: SocketAddr = "10.0.0.9:3306".parse().unwrap();
        let targets = [
            (srv(10, 0, "a.example"), at),
            (srv(10, 900, "b.example"), at),
            (srv(20, 5, "c.example"), at),
            (srv(10, 5, "a.example"), at),
        ];
        let m = from_services("srv:_mysql._tcp.db", None, &targets);
        let seen: Vec<(&str, u32, Tier)> = m
            .iter()
            .map(|b| (b.name.as_str(), b.weight, b.tier))
            .collect();
        assert_eq!(
            seen,
            [
                ("a.example:3306", 1, Tier::Primary),
                ("b.example:3306", 256, Tier::Primary),
                ("c.example:3306", 5, Tier::Standby)
            ]
        );
    }

    #[test]
    fn a_source_s_members_are_replaced_in_place() {
        let text = "[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\
                    [pool.main]\n[pool.main.check]\nkind = \"tcp\"\n[[pool.main.backend]]\naddress = \"10.0.0.1:3306\"\nname = \"db\"\n";
        let literal = |a: &Address| Ok(SocketAddr::new(a.host.parse().unwrap(), a.port));
        let config =
            crate::config::Config::from_toml(std::path::Path::new("t.toml"), text, &literal)
                .unwrap();
        let mut pool = config.pools["main"].clone();
        let key = "srv:x";
        let targets = [(srv(1, 1, "a.example"), "10.0.0.2:3306".parse().unwrap())];
        assert!(replace(&mut pool, key, from_services(key, None, &targets)));
        assert!(
            !replace(&mut pool, key, from_services(key, None, &targets)),
            "the same answer changes nothing"
        );
        let names = |p: &PoolConfig| {
            p.backends
                .iter()
                .map(|b| b.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&pool), ["db", "a.example:3306"]);
        assert!(replace(&mut pool, key, Vec::new()));
        assert_eq!(names(&pool), ["db"]);
    }
}
