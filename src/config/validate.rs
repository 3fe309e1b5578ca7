//! From the file's shape to a usable [`Config`]: defaults, cross-references,
//! uniqueness and resolution, collecting every problem rather than the first.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::raw::{Address, RawBackend, RawConfig, RawListener, RawPool};
use super::{BackendConfig, Config, ListenerConfig, PoolConfig, Problem, Resolver};
use crate::vocabulary::{Balance, Tier};

const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(10);
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;

pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn resolve(
        &mut self,
        key: String,
        address: &Address,
        resolve: &Resolver<'_>,
    ) -> Option<std::net::SocketAddr> {
        resolve(address).map_err(|m| self.add(key, m)).ok()
    }
}

/// How often host names are resolved again unless a pool says otherwise.
pub(super) const DEFAULT_RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a discovered member the cluster no longer lists stays, drained.
const DEFAULT_FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// The shortest `resolve_interval`.
const MIN_RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The `resolver` key: a DNS server's `IP:port`.
fn resolver(text: &str, problems: &mut Problems) -> Option<std::net::SocketAddr> {
    let parsed = text.parse().ok();
    if parsed.is_none() {
        problems.add(
            "resolver",
            format!("\"{text}\" is not a DNS server's IP:port; write for example \"127.0.0.53:53\", or remove the key for the system's resolver"),
        );
    }
    parsed
}

/// A pool's `resolve_interval`, at least a second.
fn resolve_interval(
    key: &str,
    raw: Option<super::duration::ConfigDuration>,
    problems: &mut Problems,
) -> std::time::Duration {
    let every = raw.map_or(DEFAULT_RESOLVE_INTERVAL, |d| d.0);
    if every < MIN_RESOLVE_INTERVAL {
        problems.add(
            format!("{key}.resolve_interval"),
            "names would be asked of DNS more than once a second; write \"1s\" or more (\"30s\" is the default)",
        );
    }
    every
}

/// Most session threads a config may ask for.
const MAX_WORKERS: usize = 1024;

/// Checks a parsed file and fills in defaults; returns every problem found.
pub fn validate(raw: RawConfig, resolve: &Resolver<'_>) -> Result<Config, Vec<Problem>> {
    let mut problems = Problems(Vec::new());
    if raw.listener.is_empty() {
        problems.add(
            "listener",
            "no listener is defined; add a [[listener]] table with name, listen and pool",
        );
    }
    if raw.pool.is_empty() {
        problems.add(
            "pool",
            "no pool is defined; add a [pool.NAME] table with at least one [[pool.NAME.backend]]",
        );
    }
    let pools: BTreeMap<String, PoolConfig> = raw
        .pool
        .into_iter()
        .filter_map(|(name, pool)| {
            pool_config(&name, pool, resolve, &mut problems).map(|p| (name, p))
        })
        .collect();
    super::check::shared_addresses(&pools, &mut problems);
    let listeners = listener_configs(raw.listener, &pools, resolve, &mut problems);
    let admin = raw
        .admin
        .and_then(|a| admin_config(a, resolve, &mut problems));
    let workers = raw.workers.and_then(|n| match usize::try_from(n) {
        Ok(n @ 1..=MAX_WORKERS) => Some(n),
        _ => {
            problems.add(
                "workers",
                format!("{n} is not a thread count from 1 to {MAX_WORKERS}; remove the key for one per CPU"),
            );
            None
        }
    });
    let resolver = raw.resolver.and_then(|text| resolver(&text, &mut problems));
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    Ok(Config {
        resolver,
        admin,
        reload_poll: raw
            .reload_poll
            .map_or(DEFAULT_RELOAD_POLL, |d| d.0)
            .max(std::time::Duration::from_millis(100)),
        shutdown_grace: raw.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        workers,
        listeners,
        pools,
    })
}

fn listener_configs(
    raw: Vec<RawListener>,
    pools: &BTreeMap<String, PoolConfig>,
    resolve: &Resolver<'_>,
    problems: &mut Problems,
) -> Vec<ListenerConfig> {
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let key = format!("listener[{i}]");
        check_name(&format!("{key}.name"), &l.name, problems);
        if !names.insert(l.name.clone()) {
            problems.add(
                format!("{key}.name"),
                format!(
                    "listener name \"{}\" is used twice; give each listener its own name",
                    l.name
                ),
            );
        }
        if !pools.contains_key(&l.pool) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            problems.add(
                format!("{key}.pool"),
                format!(
                    "pool \"{}\" is not defined; write one of {known:?} or add a [pool.{}] table",
                    l.pool, l.pool
                ),
            );
        }
        check_listener_limits(&key, &l, problems);
        let Some(addr) = problems.resolve(format!("{key}.listen"), &l.listen, resolve) else {
            continue;
        };
        if addr.port() != 0 && !addrs.insert(addr) {
            problems.add(
                format!("{key}.listen"),
                format!(
                    "{} is already used by another listener; give each listener its own address",
                    l.listen
                ),
            );
        }
        out.push(ListenerConfig {
            name: l.name,
            listen: l.listen,
            addr,
            pool: l.pool,
            max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            idle_timeout: l.idle_timeout.map(|d| d.0),
            half_close_timeout: l
                .half_close_timeout
                .map_or(DEFAULT_HALF_CLOSE_TIMEOUT, |d| d.0),
            allow: l.allow,
        });
    }
    out
}

/// A listener's limits and deadlines: zero is never meant.
fn check_listener_limits(key: &str, l: &RawListener, problems: &mut Problems) {
    if l.max_connections == Some(0) {
        problems.add(
            format!("{key}.max_connections"),
            "0 would refuse every client; write a number of 1 or more",
        );
    }
    if l.idle_timeout.is_some_and(|d| d.0.is_zero()) {
        problems.add(
            format!("{key}.idle_timeout"),
            "0s would close every session; remove the key to keep idle sessions open",
        );
    }
    if l.half_close_timeout.is_some_and(|d| d.0.is_zero()) {
        problems.add(
            format!("{key}.half_close_timeout"),
            "0s would cut off the answer to a client's last request; write for example \"30s\"",
        );
    }
}

fn pool_config(
    name: &str,
    mut raw: RawPool,
    resolve: &Resolver<'_>,
    problems: &mut Problems,
) -> Option<PoolConfig> {
    let key = format!("pool.{name}");
    check_name(&key, name, problems);
    if raw.connect_attempts == Some(0) {
        problems.add(
            format!("{key}.connect_attempts"),
            "0 would never connect; write 1 or more (3 is the default)",
        );
    }
    if raw.connect_timeout.is_some_and(|d| d.0.is_zero()) {
        problems.add(
            format!("{key}.connect_timeout"),
            "0s would fail every connect; write for example \"1s\"",
        );
    }
    let mut check = super::check::check_config(
        &format!("{key}.check"),
        raw.check.take().unwrap_or_default(),
        problems,
    );
    let routing = super::routing::routing(&key, &raw, &mut check, problems);
    let replication = raw
        .replication
        .take()
        .and_then(|r| super::replication::replication_config(&key, r, routing.role, problems));
    let resolve_interval = resolve_interval(&key, raw.resolve_interval, problems);
    let discover = discovery(&key, &raw, &check, problems);
    let (backends, sources) = members(&key, name, &mut raw, resolve, problems);
    Some(PoolConfig {
        name: name.to_owned(),
        balance: raw.balance.unwrap_or(Balance::LeastConnections),
        connect_timeout: raw.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
        connect_attempts: raw.connect_attempts.unwrap_or(DEFAULT_CONNECT_ATTEMPTS),
        resolve_interval,
        check,
        routing,
        backends,
        sources,
        discover,
        forget_after: raw.forget_after.map_or(DEFAULT_FORGET_AFTER, |d| d.0),
        replication,
    })
}

/// The pool's `discover`, which asks the members with the MySQL check's
/// login and starts from the file's members.
fn discovery(
    key: &str,
    raw: &RawPool,
    check: &super::CheckConfig,
    problems: &mut Problems,
) -> Option<crate::vocabulary::DiscoverMode> {
    let mode = raw.discover?;
    if check.mysql.is_none() {
        problems.add(
            format!("{key}.discover"),
            format!("discover = \"{}\" asks the members with the check's login; set [{key}.check] kind = \"mysql\" with a user", mode.as_str()),
        );
    }
    if raw.backend.is_empty() {
        problems.add(
            format!("{key}.discover"),
            "discovery starts from the members the file lists; add a [[backend]] table for a seed server",
        );
    }
    if raw.forget_after.is_some_and(|d| d.0.is_zero()) {
        problems.add(
            format!("{key}.forget_after"),
            "0s would drop a member at its first missed listing; write for example \"10m\"",
        );
    }
    Some(mode)
}

/// The pool's members as the file lists them (each `resolve = "all"`
/// backend at its first address until the load looks up the rest), and
/// the names whose answers give more.
fn members(
    key: &str,
    name: &str,
    raw: &mut RawPool,
    resolve: &Resolver<'_>,
    problems: &mut Problems,
) -> (Vec<BackendConfig>, Vec<super::expand::Source>) {
    let written = raw.backend.len();
    let srv = std::mem::take(&mut raw.backend_srv);
    let mut backends = backend_configs(key, std::mem::take(&mut raw.backend), resolve, problems);
    // A backend dropped for an unresolvable address was reported already.
    if written == 0 && srv.is_empty() {
        problems.add(
            format!("{key}.backend"),
            format!("pool \"{name}\" has no backend; add a [[{key}.backend]] with an address, or a [[{key}.backend_srv]] with an SRV name"),
        );
    } else if srv.is_empty()
        && backends.len() == written
        && !backends.iter().any(|b| b.tier == Tier::Primary)
    {
        problems.add(
            format!("{key}.backend"),
            format!("pool \"{name}\" has no primary backend; write tier = \"primary\" on at least one backend"),
        );
    }
    let mut sources = Vec::new();
    if raw.resolve == Some(crate::vocabulary::ResolveMode::All) {
        for (i, b) in backends.iter_mut().enumerate() {
            if b.address.host.parse::<std::net::IpAddr>().is_err() {
                let source =
                    super::expand::Source::all(format!("{key}.backend[{i}].address"), b.clone());
                if let Some(first) = super::expand::from_addresses(&source.key, b, &[b.addr]).pop()
                {
                    *b = first;
                }
                sources.push(source);
            }
        }
    }
    sources.extend(srv_sources(key, srv, problems));
    (backends, sources)
}

/// The sources of the pool's `[[backend_srv]]` tables.
fn srv_sources(
    key: &str,
    srv: Vec<super::raw::RawBackendSrv>,
    problems: &mut Problems,
) -> Vec<super::expand::Source> {
    let mut sources = Vec::new();
    for (i, s) in srv.into_iter().enumerate() {
        let config_key = format!("{key}.backend_srv[{i}]");
        if s.name.trim_end_matches('.').is_empty() || s.name.contains(char::is_whitespace) {
            problems.add(
                format!("{config_key}.name"),
                format!(
                    "\"{}\" is not an SRV name; write for example \"_mysql._tcp.db.example\"",
                    s.name
                ),
            );
            continue;
        }
        if s.max_connections == Some(0) {
            problems.add(
                format!("{config_key}.max_connections"),
                "0 would refuse every session; write 1 or more, or remove the key",
            );
        }
        let name = s.name.trim_end_matches('.').to_owned();
        sources.push(super::expand::Source::srv(
            format!("{config_key}.name"),
            name,
            s.max_connections,
        ));
    }
    sources
}

fn backend_configs(
    pool_key: &str,
    raw: Vec<RawBackend>,
    resolve: &Resolver<'_>,
    problems: &mut Problems,
) -> Vec<BackendConfig> {
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut out = Vec::new();
    for (i, b) in raw.into_iter().enumerate() {
        let key = format!("{pool_key}.backend[{i}]");
        let name = b.name.unwrap_or_else(|| b.address.text.clone());
        check_name(&format!("{key}.name"), &name, problems);
        if !names.insert(name.clone()) {
            problems.add(format!("{key}.name"), format!("backend name \"{name}\" is used twice in this pool; give each backend its own name"));
        }
        if !addresses.insert(b.address.text.clone()) {
            problems.add(
                format!("{key}.address"),
                format!(
                    "{} is listed twice in this pool; remove one (raise weight instead)",
                    b.address
                ),
            );
        }
        if b.max_connections == Some(0) {
            problems.add(
                format!("{key}.max_connections"),
                "0 would refuse every session; write 1 or more, or remove the key",
            );
        }
        let Some(addr) = problems.resolve(format!("{key}.address"), &b.address, resolve) else {
            continue;
        };
        if addr.port() == 0 {
            problems.add(
                format!("{key}.address"),
                format!(
                    "{}: port 0 cannot be connected to; write the server's port",
                    b.address
                ),
            );
        }
        out.push(BackendConfig {
            name,
            address: b.address,
            addr,
            weight: b.weight.map_or(1, |w| w.0),
            tier: b.tier.unwrap_or(Tier::Primary),
            max_connections: b.max_connections,
            candidate: b.candidate.unwrap_or(true),
            origin: crate::vocabulary::Origin::File,
            source: None,
        });
    }
    out
}

/// Names appear in logs, metrics labels and URLs: keep them plain.
fn check_name(key: &str, name: &str, problems: &mut Problems) {
    let plain =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '[' | ']');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        problems.add(key, format!("\"{name}\" is not a usable name; use 1 to 64 letters, digits, '-', '_', '.' or ':'"));
    }
}

/// How long a half-closed session may stay open unless a listener says.
const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Admin connections open at once unless `[admin] max_connections` says.
const DEFAULT_ADMIN_CONNECTIONS: usize = 32;

fn admin_config(
    raw: super::raw::RawAdmin,
    resolve: &Resolver<'_>,
    problems: &mut Problems,
) -> Option<super::AdminConfig> {
    let addr = problems.resolve("admin.listen".to_owned(), &raw.listen, resolve)?;
    if !addr.ip().is_loopback() && raw.token_file.is_none() {
        problems.add(
            "admin.token_file",
            format!(
                "the admin server listens on {}, beyond this host, without a token: add token_file = \"/etc/dbsplice/admin.token\" or listen on 127.0.0.1",
                raw.listen
            ),
        );
    }
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        problems.add(
            "admin.key_file",
            "HTTPS needs both cert_file and key_file; give both, or neither for plain HTTP",
        );
    }
    if raw.max_connections == Some(0) {
        problems.add(
            "admin.max_connections",
            "0 would refuse every admin request; write 1 or more (default 32)",
        );
    }
    let allowed_hosts = raw.allowed_hosts.unwrap_or_default();
    for (i, host) in allowed_hosts.iter().enumerate() {
        if host.is_empty() || host.contains([':', '/', ' ']) {
            problems.add(
                format!("admin.allowed_hosts[{i}]"),
                format!("\"{host}\" is not a host name; write the name alone, without scheme or port, e.g. \"dbsplice-1.example.com\""),
            );
        }
    }
    Some(super::AdminConfig {
        listen: raw.listen,
        addr,
        token_file: raw.token_file,
        token: None,
        cert_file: raw.cert_file,
        key_file: raw.key_file,
        tls_pem: None,
        max_connections: raw.max_connections.map_or(DEFAULT_ADMIN_CONNECTIONS, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        allowed_hosts: allowed_hosts
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}
