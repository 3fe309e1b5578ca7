//! Host names to addresses, when the config is loaded and again while it
//! runs: through the system's resolver (`getaddrinfo`, so `/etc/hosts`
//! too), or with `resolver = "IP:PORT"` by asking that DNS server directly
//! over UDP. Every lookup has a deadline; an IP literal never touches DNS.
//!
//! [`run`] re-resolves the running config's backend names every pool's
//! `resolve_interval`, and at once when a checker says a probe failed, and
//! tells the control module each answer (`Event::Resolved`): the module
//! moves the backend, or keeps its last address and says the name fails.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Snapshot;
use crate::inbox::Inbox;
use crate::net::dns::{self, Answer, Failure, Kind};

/// One lookup, all tries included, takes at most this long.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// One UDP try waits this long for its answer.
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// A name is not asked again within this of its last lookup, whatever
/// fails meanwhile.
const MIN_GAP: Duration = Duration::from_secs(1);
/// Largest DNS answer over UDP (EDNS is not asked for: 512 bytes).
const MAX_UDP: usize = 1232;

/// Where host names are resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The DNS server to ask; `None`: the system's resolver.
    pub server: Option<SocketAddr>,
}

impl Lookup {
    /// The addresses `host` has, each with `port`: IPv4 first, then IPv6.
    pub async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = match self.server {
            None => tokio::time::timeout(LOOKUP_DEADLINE, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| format!("no answer within {}s", LOOKUP_DEADLINE.as_secs()))?
                .map(Iterator::collect::<Vec<_>>)
                .map_err(|e| e.to_string())?,
            Some(server) => {
                tokio::time::timeout(LOOKUP_DEADLINE, ask_addresses(server, host, port))
                    .await
                    .map_err(|_| {
                        format!(
                            "{server} gave no answer within {}s",
                            LOOKUP_DEADLINE.as_secs()
                        )
                    })??
            }
        };
        ordered(host, found)
    }

    /// [`Lookup::addresses`] for a thread that may block (the config load).
    pub fn addresses_blocking(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = match self.server {
            None => std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .map(Iterator::collect::<Vec<_>>)
                .map_err(|e| e.to_string())?,
            Some(server) => {
                let mut found = Vec::new();
                for kind in [Kind::A, Kind::Aaaa] {
                    let answer = exchange_blocking(server, host, kind)?;
                    found.extend(addresses_of(answer, port));
                }
                found
            }
        };
        ordered(host, found)
    }
}

/// IPv4 before IPv6, each in the order given, without repeats; an error
/// when there are none.
fn ordered(host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(found.len());
    for want_v4 in [true, false] {
        for a in &found {
            if a.is_ipv4() == want_v4 && !out.contains(a) {
                out.push(*a);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("\"{host}\" has no address (no A or AAAA record)"));
    }
    Ok(out)
}

fn addresses_of(answer: Answer, port: u16) -> Vec<SocketAddr> {
    match answer {
        Answer::Addresses(ips) => ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        Answer::Services(_) => Vec::new(),
    }
}

/// A and AAAA records of `host` from `server`.
async fn ask_addresses(
    server: SocketAddr,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    let mut found = Vec::new();
    for kind in [Kind::A, Kind::Aaaa] {
        found.extend(addresses_of(exchange(server, host, kind).await?, port));
    }
    Ok(found)
}

/// A local socket of `server`'s family, connected to it: only its
/// datagrams are received.
fn local_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

/// Asks `server` for `name`'s `kind` records over UDP: two tries, each a
/// new random id; datagrams that are not the answer are ignored.
async fn exchange(server: SocketAddr, name: &str, kind: Kind) -> Result<Answer, String> {
    let socket = tokio::net::UdpSocket::bind(local_for(server))
        .await
        .map_err(|e| format!("no UDP socket: {e}"))?;
    socket
        .connect(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; MAX_UDP];
    let mut last = format!("{server} gave no answer");
    for _ in 0..2 {
        let id = fastrand::u16(..);
        let query = dns::query(id, name, kind)?;
        socket
            .send(&query)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let deadline = Instant::now() + TRY_TIMEOUT;
        loop {
            let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await
            else {
                break;
            };
            let n = received.map_err(|e| format!("{server}: {e}"))?;
            match dns::parse(buf.get(..n).unwrap_or_default(), id, kind) {
                Err(Failure::NotOurs) => continue,
                Ok(answer) => return Ok(answer),
                Err(failure) => {
                    last = format!("{server}: {failure}");
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// [`exchange`] for a thread that may block.
fn exchange_blocking(server: SocketAddr, name: &str, kind: Kind) -> Result<Answer, String> {
    let socket =
        std::net::UdpSocket::bind(local_for(server)).map_err(|e| format!("no UDP socket: {e}"))?;
    socket
        .connect(server)
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; MAX_UDP];
    for _ in 0..2 {
        let id = fastrand::u16(..);
        let query = dns::query(id, name, kind)?;
        socket.send(&query).map_err(|e| format!("{server}: {e}"))?;
        let deadline = std::time::Instant::now() + TRY_TIMEOUT;
        while let Some(left) = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| format!("{server}: {e}"))?;
            let Ok(n) = socket.recv(&mut buf) else { break };
            match dns::parse(buf.get(..n).unwrap_or_default(), id, kind) {
                Err(Failure::NotOurs) => continue,
                Ok(answer) => return Ok(answer),
                Err(failure) => return Err(format!("{server}: {failure}")),
            }
        }
    }
    Err(format!("{server} gave no answer"))
}

/// One backend address whose host is a name.
#[derive(Debug, Clone)]
struct Name {
    host: String,
    port: u16,
    /// The shortest `resolve_interval` of the pools that have it.
    every: Duration,
}

/// The backend addresses of `snapshot` whose host is a name, by address.
fn names(snapshot: &Snapshot) -> HashMap<String, Name> {
    let mut out: HashMap<String, Name> = HashMap::new();
    for pool in snapshot.config.pools.values() {
        for b in &pool.backends {
            if b.address.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            out.entry(b.address.text.clone())
                .and_modify(|n| n.every = n.every.min(pool.resolve_interval))
                .or_insert_with(|| Name {
                    host: b.address.host.clone(),
                    port: b.address.port,
                    every: pool.resolve_interval,
                });
        }
    }
    out
}

/// Re-resolves the running config's backend names until `stop`: each every
/// `resolve_interval` after it was last asked, and at once (but not within
/// a second of the last lookup) when `soon` names it. Each answer goes to
/// the control module.
pub async fn run(
    routes: Arc<ArcSwap<Snapshot>>,
    inbox: Inbox,
    mut soon: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    // When each name was last asked; a name first seen was just resolved by
    // the config's load.
    let mut asked: HashMap<String, Instant> = HashMap::new();
    loop {
        let snapshot = routes.load_full();
        let lookup = Lookup {
            server: snapshot.config.resolver,
        };
        let names = names(&snapshot);
        let now = Instant::now();
        asked.retain(|a, _| names.contains_key(a));
        for address in names.keys() {
            asked.entry(address.clone()).or_insert(now);
        }
        for (address, name) in &names {
            if asked.get(address).is_some_and(|t| now >= *t + name.every) {
                asked.insert(address.clone(), now);
                let (inbox, address, name) = (inbox.clone(), address.clone(), name.clone());
                tokio::spawn(async move {
                    let result = lookup.addresses(&name.host, name.port).await;
                    inbox.resolved(address, name.host, result).await;
                });
            }
        }
        let next = names
            .iter()
            .filter_map(|(a, n)| asked.get(a).map(|t| *t + n.every))
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            hint = soon.recv() => {
                let Some(address) = hint else { return };
                // Due at once, unless asked within the last second.
                let now = Instant::now();
                if let (Some(t), Some(n)) = (asked.get_mut(&address), names.get(&address)) {
                    if now >= *t + MIN_GAP {
                        *t = now.checked_sub(n.every).unwrap_or(*t);
                    }
                }
            }
        }
    }
}
