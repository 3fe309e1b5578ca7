//! Members found in the cluster itself, for pools with `discover`: every
//! check `interval` the pool's members are asked (with the check's login)
//! who else is in the cluster (`wsrep_incoming_addresses`, `SHOW SLAVE
//! HOSTS` or `performance_schema.replication_group_members`) and who they
//! are themselves (`wsrep_gcomm_uuid`, `@@server_id`, `@@server_uuid`), so
//! that a server reached under two names is one member. What is found goes
//! to the control module (`Event::Discovered`); a member that is no longer
//! listed stays, drained, for `forget_after`, then goes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::expand::MAX_MEMBERS;
use super::raw::Address;
use super::resolve::Lookup;
use super::{BackendConfig, PoolConfig};
use crate::cluster::Snapshot;
use crate::health::probe::Prober;
use crate::inbox::Inbox;
use crate::mysql::resultset::{QueryOutcome, TextResult};
use crate::vocabulary::{DiscoverMode, Origin, Tier};

/// The source key of discovered members.
pub const SOURCE: &str = "discover";

/// Slack over the check's timeout for one discovery session.
const SESSION_SLACK: Duration = Duration::from_secs(2);

/// A server another one lists as a member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Host as listed.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Its identity, when the list says it.
    pub id: Option<String>,
}

/// What one server says of itself and of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    /// Its own identity.
    pub id: String,
    /// The members it lists (empty when its view does not count, such as a
    /// Galera node outside the primary component).
    pub listed: Vec<Listed>,
}

/// The statements that ask a server who it is and who is in its cluster.
pub fn statements(mode: DiscoverMode) -> Vec<String> {
    let sql: &[&str] = match mode {
        DiscoverMode::Galera => &[
            "SHOW GLOBAL STATUS LIKE 'wsrep_gcomm_uuid'",
            "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'",
            "SHOW GLOBAL STATUS LIKE 'wsrep_incoming_addresses'",
        ],
        DiscoverMode::Replicas => &["SELECT @@server_id AS id", "SHOW SLAVE HOSTS"],
        DiscoverMode::GroupReplication => &[
            "SELECT @@server_uuid AS id",
            "SELECT MEMBER_ID, MEMBER_HOST, MEMBER_PORT, MEMBER_STATE FROM performance_schema.replication_group_members",
        ],
    };
    sql.iter().map(|s| (*s).to_owned()).collect()
}

fn rows(answers: &[QueryOutcome], i: usize) -> Result<&TextResult, String> {
    match answers.get(i) {
        Some(QueryOutcome::Rows(r)) => Ok(r),
        Some(QueryOutcome::Failed(e)) => Err(e.to_string()),
        _ => Err("the server did not answer every question".into()),
    }
}

/// The column `name` of `row` in `result`.
fn cell<'a>(result: &'a TextResult, row: &'a [Option<String>], name: &str) -> Option<&'a str> {
    let i = result
        .columns
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))?;
    row.get(i)?.as_deref()
}

/// `host:port`, `[v6]:port`, or a bare host (with `default_port`).
fn host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        _ if !text.is_empty() => Some((text.to_owned(), default_port)),
        _ => None,
    }
}

/// What the answers to [`statements`] say.
pub fn told(mode: DiscoverMode, answers: &[QueryOutcome]) -> Result<Told, String> {
    match mode {
        DiscoverMode::Galera => galera(answers),
        DiscoverMode::Replicas => replicas(answers),
        DiscoverMode::GroupReplication => group_members(answers),
    }
}

/// A Galera node's identity and, from the primary component, the nodes'
/// incoming addresses.
fn galera(answers: &[QueryOutcome]) -> Result<Told, String> {
    let var = |i: usize| -> Result<String, String> {
        Ok(rows(answers, i)?
            .rows
            .first()
            .and_then(|r| r.get(1)?.clone())
            .unwrap_or_default())
    };
    let (id, status, incoming) = (var(0)?, var(1)?, var(2)?);
    if id.is_empty() {
        return Err("it is not a Galera node (no wsrep_gcomm_uuid)".into());
    }
    let listed = if status.eq_ignore_ascii_case("Primary") {
        // "AUTO": a node without wsrep_node_incoming_address whose address
        // the server could not tell.
        incoming
            .split(',')
            .filter(|a| !a.trim().eq_ignore_ascii_case("AUTO"))
            .filter_map(|a| host_port(a, 3306))
            .map(|(host, port)| Listed {
                host,
                port,
                id: None,
            })
            .collect()
    } else {
        Vec::new() // outside the primary component: its list is stale
    };
    Ok(Told { id, listed })
}

/// A primary's server id and its replicas that report a host.
fn replicas(answers: &[QueryOutcome]) -> Result<Told, String> {
    let id = rows(answers, 0)?.first("id").unwrap_or_default().to_owned();
    let hosts = rows(answers, 1)?;
    let listed = hosts
        .rows
        .iter()
        .filter_map(|r| {
            let host = cell(hosts, r, "Host").filter(|h| !h.is_empty())?;
            let port = cell(hosts, r, "Port")?.parse().ok().filter(|p| *p != 0)?;
            let id = cell(hosts, r, "Server_id").map(str::to_owned);
            Some(Listed {
                host: host.to_owned(),
                port,
                id,
            })
        })
        .collect();
    Ok(Told { id, listed })
}

/// A group member's uuid and the members online or recovering.
fn group_members(answers: &[QueryOutcome]) -> Result<Told, String> {
    let id = rows(answers, 0)?
        .first("id")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let members = rows(answers, 1)?;
    let member = |r: &[Option<String>]| {
        cell(members, r, "MEMBER_STATE").is_some_and(|s| {
            s.eq_ignore_ascii_case("ONLINE") || s.eq_ignore_ascii_case("RECOVERING")
        })
    };
    let listed = members
        .rows
        .iter()
        .filter(|r| member(r))
        .filter_map(|r| {
            let host = cell(members, r, "MEMBER_HOST").filter(|h| !h.is_empty())?;
            let port = cell(members, r, "MEMBER_PORT")?.parse().ok()?;
            let id = cell(members, r, "MEMBER_ID").map(str::to_ascii_lowercase);
            Some(Listed {
                host: host.to_owned(),
                port,
                id,
            })
        })
        .collect();
    Ok(Told { id, listed })
}

/// A discovered member: like the pool's defaults, named and identified
/// by `host:port`.
pub fn member(host: &str, port: u16, addr: SocketAddr) -> BackendConfig {
    let text = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    BackendConfig {
        name: text.clone(),
        address: Address {
            text,
            host: host.to_owned(),
            port,
        },
        addr,
        weight: 1,
        tier: Tier::Primary,
        max_connections: None,
        candidate: true,
        origin: Origin::Discovered,
        source: Some(SOURCE.to_owned()),
    }
}

/// Asks `addr` who it is and who is in its cluster.
async fn ask(
    prober: &Prober,
    addr: SocketAddr,
    mode: DiscoverMode,
    timeout: Duration,
) -> Result<Told, String> {
    let facts = prober
        .run_statements(addr, statements(mode), timeout)
        .await?;
    told(mode, &facts.answers)
}

/// What the pool's members say: the identities of its own (not
/// discovered) members, each answering member's identity by address, and
/// everyone listed.
struct Answers {
    own_ids: HashSet<String>,
    id_at: HashMap<SocketAddr, String>,
    listed: Vec<Listed>,
}

/// Asks every member of `pool` at once.
async fn ask_members(pool: &PoolConfig, mode: DiscoverMode, timeout: Duration) -> Answers {
    let asks: Vec<_> = pool
        .backends
        .iter()
        .filter_map(|b| {
            let prober = Prober::new(&pool.check, &b.address.host, pool.routing.send_proxy).ok()?;
            let (addr, own) = (b.addr, b.origin != Origin::Discovered);
            Some(tokio::spawn(async move {
                (addr, own, ask(&prober, addr, mode, timeout).await)
            }))
        })
        .collect();
    let mut answers = Answers {
        own_ids: HashSet::new(),
        id_at: HashMap::new(),
        listed: Vec::new(),
    };
    for answer in asks {
        match answer.await {
            Ok((addr, own, Ok(told))) => {
                if own {
                    answers.own_ids.insert(told.id.clone());
                }
                answers.id_at.insert(addr, told.id);
                answers.listed.extend(told.listed);
            }
            Ok((addr, _, Err(why))) => {
                tracing::debug!(pool = %pool.name, %addr, "discovery: no answer: {why}");
            }
            Err(_) => {}
        }
    }
    answers
}

/// One round of discovery for `pool`: the members the cluster lists that
/// are not the pool's own (by identity or address), with their address;
/// `None` when no member answered (nothing is known, nothing changes).
async fn round(
    pool: &PoolConfig,
    mode: DiscoverMode,
    lookup: Lookup,
) -> Option<Vec<BackendConfig>> {
    let timeout = pool.check.timeout + SESSION_SLACK;
    let answers = ask_members(pool, mode, timeout).await;
    if answers.id_at.is_empty() {
        return None;
    }
    let own: HashSet<SocketAddr> = pool
        .backends
        .iter()
        .filter(|b| b.origin != Origin::Discovered)
        .map(|b| b.addr)
        .collect();
    let mut found: Vec<BackendConfig> = Vec::new();
    let mut found_ids: HashSet<String> = HashSet::new();
    // A member's list is bytes from a server: only so many are looked at.
    for l in answers.listed.into_iter().take(4 * MAX_MEMBERS) {
        if found.len() == MAX_MEMBERS {
            tracing::warn!(pool = %pool.name, "the cluster lists more than {MAX_MEMBERS} members: the rest are left out");
            break;
        }
        let Ok(addrs) = lookup.addresses(&l.host, l.port).await else {
            continue;
        };
        let Some(addr) = addrs.first().copied() else {
            continue;
        };
        if own.contains(&addr) || found.iter().any(|f| f.addr == addr) {
            continue;
        }
        // Who it is: listed, known, or asked (Galera lists addresses only).
        let id = match l.id.or_else(|| answers.id_at.get(&addr).cloned()) {
            Some(id) => Some(id),
            None => match Prober::new(&pool.check, &l.host, pool.routing.send_proxy) {
                Ok(prober) => ask(&prober, addr, mode, timeout).await.ok().map(|t| t.id),
                Err(_) => None,
            },
        };
        let Some(id) = id else { continue };
        if answers.own_ids.contains(&id) || !found_ids.insert(id) {
            continue; // a member reached under another name
        }
        found.push(member(&l.host, l.port, addr));
    }
    Some(found)
}

/// Discovers members for every pool with `discover` until `stop`, a round
/// per pool every check `interval`; each round's answer goes to the
/// control module with the members that left within `forget_after`.
pub async fn run(routes: Arc<ArcSwap<Snapshot>>, inbox: Inbox, stop: CancellationToken) {
    // By pool: when its last round ran, and when each member found was
    // last listed.
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut listed_at: HashMap<String, HashMap<String, (Instant, BackendConfig)>> = HashMap::new();
    loop {
        let snapshot = routes.load_full();
        let lookup = Lookup {
            server: snapshot.config.resolver,
        };
        let now = Instant::now();
        let pools: Vec<_> = snapshot
            .pools()
            .filter_map(|p| Some((p.config_now(), p.config.discover?)))
            .collect();
        last.retain(|name, _| pools.iter().any(|(p, _)| &p.name == name));
        listed_at.retain(|name, _| pools.iter().any(|(p, _)| &p.name == name));
        for (pool, mode) in &pools {
            if last
                .get(&pool.name)
                .is_some_and(|t| now < *t + pool.check.interval)
            {
                continue;
            }
            last.insert(pool.name.clone(), now);
            let Some(found) = stop.run_until_cancelled(round(pool, *mode, lookup)).await else {
                return;
            };
            let Some(found) = found else { continue };
            let memory = listed_at.entry(pool.name.clone()).or_default();
            let now = Instant::now();
            for f in found {
                memory.insert(f.address.text.clone(), (now, f));
            }
            memory.retain(|_, (at, _)| now < *at + pool.forget_after);
            let mut members: Vec<(Instant, BackendConfig)> = memory.values().cloned().collect();
            members.sort_by(|a, b| a.1.address.text.cmp(&b.1.address.text));
            let leaving = members
                .iter()
                .filter(|(at, _)| *at < now)
                .map(|(_, b)| b.address.text.clone())
                .collect();
            let members = members.into_iter().map(|(_, b)| b).collect();
            inbox.discovered(pool.name.clone(), members, leaving).await;
        }
        let pause = tokio::time::sleep(Duration::from_millis(250));
        if stop.run_until_cancelled(pause).await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(columns: &[&str], rows: &[&[&str]]) -> QueryOutcome {
        QueryOutcome::Rows(TextResult {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|v| Some((*v).to_owned())).collect())
                .collect(),
        })
    }

    fn var(name: &str, value: &str) -> QueryOutcome {
        result(&["Variable_name", "Value"], &[&[name, value]])
    }

    #[test]
    fn galera_lists_addresses_from_the_primary_component_only() {
        let answers = [
            var("wsrep_gcomm_uuid", "u1"),
            var("wsrep_cluster_status", "Primary"),
            var(
                "wsrep_incoming_addresses",
                "10.0.0.1:3306,db2.example:3307,[fd00::3]:3306,10.0.0.4",
            ),
        ];
        let t = told(DiscoverMode::Galera, &answers).unwrap();
        assert_eq!(t.id, "u1");
        let hosts: Vec<(&str, u16)> = t.listed.iter().map(|l| (l.host.as_str(), l.port)).collect();
        assert_eq!(
            hosts,
            [
                ("10.0.0.1", 3306),
                ("db2.example", 3307),
                ("fd00::3", 3306),
                ("10.0.0.4", 3306)
            ]
        );
        let mut outside = answers.clone();
        outside[1] = var("wsrep_cluster_status", "non-Primary");
        assert!(told(DiscoverMode::Galera, &outside)
            .unwrap()
            .listed
            .is_empty());
        let not_galera = [var("wsrep_gcomm_uuid", ""), var("x", ""), var("y", "")];
        assert!(told(DiscoverMode::Galera, &not_galera).is_err());
    }

    #[test]
    fn replicas_and_group_members_come_with_their_identity() {
        let answers = [
            result(&["id"], &[&["1"]]),
            result(
                &["Server_id", "Host", "Port", "Master_id"],
                &[&["2", "db2.example", "3306", "1"], &["3", "", "3306", "1"]],
            ),
        ];
        let t = told(DiscoverMode::Replicas, &answers).unwrap();
        assert_eq!(t.id, "1");
        assert_eq!(
            t.listed,
            [Listed {
                host: "db2.example".into(),
                port: 3306,
                id: Some("2".into())
            }],
            "a replica without report_host is left out"
        );
        let answers = [
            result(&["id"], &[&["AAA"]]),
            result(
                &["MEMBER_ID", "MEMBER_HOST", "MEMBER_PORT", "MEMBER_STATE"],
                &[
                    &["AAA", "db1", "3306", "ONLINE"],
                    &["BBB", "db2", "3306", "RECOVERING"],
                    &["CCC", "db3", "3306", "OFFLINE"],
                ],
            ),
        ];
        let t = told(DiscoverMode::GroupReplication, &answers).unwrap();
        assert_eq!(t.id, "aaa");
        let ids: Vec<Option<&str>> = t.listed.iter().map(|l| l.id.as_deref()).collect();
        assert_eq!(
            ids,
            [Some("aaa"), Some("bbb")],
            "offline members are not members"
        );
    }
}
