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

use super::expand::{self, Source, SourceKind};
use super::BackendConfig;
use crate::cluster::Snapshot;
use crate::dns::{self, Answer, Failure, Kind, Srv};
use crate::inbox::Inbox;

/// One lookup, all tries included, takes at most this long.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// A source's lookup (an SRV record and each of its targets) takes at most
/// this long.
pub const MEMBERS_DEADLINE: Duration = Duration::from_secs(15);
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
    /// Looked up on a blocking thread, within [`LOOKUP_DEADLINE`].
    pub async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let (lookup, host) = (*self, host.to_owned());
        off_thread(LOOKUP_DEADLINE, move || {
            lookup.addresses_blocking(&host, port)
        })
        .await
    }

    /// The members source `source` gives now, looked up on a blocking
    /// thread within [`MEMBERS_DEADLINE`].
    pub async fn members(&self, source: &Source) -> Result<Vec<BackendConfig>, String> {
        let (lookup, source) = (*self, source.clone());
        off_thread(MEMBERS_DEADLINE, move || lookup.members_blocking(&source)).await
    }

    /// [`Lookup::addresses`] on the caller's thread, which may block (the
    /// config load).
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
                    let answer = exchange(server, host, kind)?;
                    found.extend(addresses_of(answer, port));
                }
                found
            }
        };
        ordered(host, found)
    }

    /// The DNS server SRV questions go to: `resolver`, or the first
    /// `nameserver` of `/etc/resolv.conf`.
    fn dns_server(&self) -> Result<SocketAddr, String> {
        match self.server {
            Some(server) => Ok(server),
            None => system_nameserver(),
        }
    }

    /// [`Lookup::members`] on the caller's thread, which may block (the
    /// config load).
    pub fn members_blocking(&self, source: &Source) -> Result<Vec<BackendConfig>, String> {
        match &source.kind {
            SourceKind::All(template) => {
                let found =
                    self.addresses_blocking(&template.address.host, template.address.port)?;
                Ok(expand::from_addresses(&source.key, template, &found))
            }
            SourceKind::Srv {
                name,
                max_connections,
            } => {
                let records = exchange(self.dns_server()?, name, Kind::Srv)?;
                let mut targets = Vec::new();
                for srv in services(name, records)? {
                    if let Ok(found) = self.addresses_blocking(&srv.target, srv.port) {
                        targets.extend(found.first().map(|a| (srv.clone(), *a)));
                    }
                }
                srv_members(&source.key, name, *max_connections, &targets)
            }
        }
    }
}

/// The SRV records in `answer`, the target `.` (no such service) left out.
fn services(name: &str, answer: Answer) -> Result<Vec<Srv>, String> {
    match answer {
        Answer::Services(records) => Ok(records
            .into_iter()
            .filter(|s| !s.target.is_empty())
            .collect()),
        Answer::Addresses(_) => Err(format!("\"{name}\" gave no SRV records")),
    }
}

/// The members of SRV records whose targets resolved; an error when the
/// name has records but no target resolves.
fn srv_members(
    key: &str,
    name: &str,
    max_connections: Option<u32>,
    targets: &[(Srv, SocketAddr)],
) -> Result<Vec<BackendConfig>, String> {
    if targets.is_empty() {
        return Err(format!("\"{name}\" has no SRV target that resolves"));
    }
    Ok(expand::from_services(key, max_connections, targets))
}

/// The first `nameserver` of `/etc/resolv.conf`, on port 53.
fn system_nameserver() -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| {
        format!("cannot read /etc/resolv.conf for a DNS server ({e}); set resolver = \"IP:PORT\"")
    })?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| {
            "/etc/resolv.conf names no nameserver; set resolver = \"IP:PORT\"".to_owned()
        })
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

/// Runs `lookup` on a blocking thread (getaddrinfo and the UDP exchange
/// block), giving up on it after `deadline`.
async fn off_thread<T: Send + 'static>(
    deadline: Duration,
    lookup: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(lookup)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => Err(format!("the lookup failed: {e}")),
        Err(_) => Err(format!("no answer within {}s", deadline.as_secs())),
    }
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
/// new random id, each waiting [`TRY_TIMEOUT`]; datagrams that are not the
/// answer are ignored.
fn exchange(server: SocketAddr, name: &str, kind: Kind) -> Result<Answer, String> {
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
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(format!("{server}: {e}")),
            };
            match dns::parse(buf.get(..n).unwrap_or_default(), id, kind) {
                Err(Failure::NotOurs) => continue,
                Ok(answer) => return Ok(answer),
                Err(failure) => return Err(format!("{server}: {failure}")),
            }
        }
    }
    Err(format!("{server} gave no answer"))
}

/// One lookup the resolver repeats.
#[derive(Debug, Clone)]
enum Job {
    /// A member's host name, re-resolved in place.
    Name { host: String, port: u16 },
    /// A source of members of `pool`.
    Source { pool: String, source: Source },
}

/// A job and how often it is due: the shortest `resolve_interval` of the
/// pools that have it.
#[derive(Debug, Clone)]
struct Due {
    job: Job,
    every: Duration,
}

/// What the resolver repeats for `snapshot`, by key (a name's address as
/// written, or the pool and a source's key); and for each member that a
/// source gave, that source's key: a failed probe of it looks again.
fn jobs(snapshot: &Snapshot) -> (HashMap<String, Due>, HashMap<String, Vec<String>>) {
    let mut jobs: HashMap<String, Due> = HashMap::new();
    let mut sources_of: HashMap<String, Vec<String>> = HashMap::new();
    for pool in snapshot.config.pools.values() {
        let every = pool.resolve_interval;
        for source in &pool.sources {
            let job = Job::Source {
                pool: pool.name.clone(),
                source: source.clone(),
            };
            jobs.insert(
                format!("{}\u{0}{}", pool.name, source.key),
                Due { job, every },
            );
        }
        for b in &pool.backends {
            if let Some(s) = &b.source {
                let key = format!("{}\u{0}{s}", pool.name);
                sources_of
                    .entry(b.address.text.clone())
                    .or_default()
                    .push(key);
            }
            // One address of a name's several stays at it.
            let fixed = b.origin == crate::vocabulary::Origin::Dns;
            if fixed || b.address.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            let job = Job::Name {
                host: b.address.host.clone(),
                port: b.address.port,
            };
            let due = jobs
                .entry(b.address.text.clone())
                .or_insert(Due { job, every });
            due.every = due.every.min(every);
        }
    }
    (jobs, sources_of)
}

/// Runs one job on a task of its own; its answer goes to the control module.
fn start(lookup: Lookup, key: &str, job: &Job, inbox: &Inbox) {
    let (inbox, key, job) = (inbox.clone(), key.to_owned(), job.clone());
    tokio::spawn(async move {
        match job {
            Job::Name { host, port } => {
                let result = lookup.addresses(&host, port).await;
                inbox.resolved(key, host, result).await;
            }
            Job::Source { pool, source } => {
                let result = lookup.members(&source).await;
                inbox.expanded(pool, source.key, result).await;
            }
        }
    });
}

/// Re-resolves the running config's names until `stop`: each member's
/// host name and each pool's sources, every `resolve_interval` after it
/// was last asked, and at once (but not within a second of the last
/// lookup) when `soon` names a member whose probe failed. Each answer goes
/// to the control module.
pub async fn run(
    routes: Arc<ArcSwap<Snapshot>>,
    inbox: Inbox,
    mut soon: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    // When each job was last run; one first seen was just run by the
    // config's load.
    let mut asked: HashMap<String, Instant> = HashMap::new();
    loop {
        let snapshot = routes.load_full();
        let lookup = Lookup {
            server: snapshot.config.resolver,
        };
        let (jobs, sources_of) = jobs(&snapshot);
        let now = Instant::now();
        asked.retain(|key, _| jobs.contains_key(key));
        for key in jobs.keys() {
            asked.entry(key.clone()).or_insert(now);
        }
        for (key, due) in &jobs {
            if asked.get(key).is_some_and(|t| now >= *t + due.every) {
                asked.insert(key.clone(), now);
                start(lookup, key, &due.job, &inbox);
            }
        }
        let next = jobs
            .iter()
            .filter_map(|(key, due)| asked.get(key).map(|t| *t + due.every))
            .min()
            .unwrap_or(now + Duration::from_secs(60));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
            hint = soon.recv() => {
                let Some(address) = hint else { return };
                let now = Instant::now();
                let also = sources_of.get(&address).cloned().unwrap_or_default();
                for key in std::iter::once(address).chain(also) {
                    // Due at once, unless asked within the last second.
                    if let (Some(t), Some(due)) = (asked.get_mut(&key), jobs.get(&key)) {
                        if now >= *t + MIN_GAP {
                            *t = now.checked_sub(due.every).unwrap_or(*t);
                        }
                    }
                }
            }
        }
    }
}
