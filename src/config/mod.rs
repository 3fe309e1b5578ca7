//! The validated configuration and how it is loaded from a TOML file.
//!
//! Loading is read, parse (`raw`), validate (`validate`); every failure is a
//! [`ConfigError`] naming the file, the line or key, and what to write instead.
//! Nothing here binds or connects: host names are resolved through a resolver
//! passed in, so the same code checks a file, loads it at start and reloads it.

mod check;
mod cidr;
mod diff;
pub mod discover;
mod duration;
pub mod expand;
pub mod load;
mod raw;
pub mod replication;
pub mod resolve;
mod routing;
mod validate;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::vocabulary::{
    Balance, Fallback, HoldPolicy, LagUnknown, MultipleWriters, OnDown, PoolRole, Tier,
};

pub use check::{CheckConfig, MysqlCheck, Secret};
pub use cidr::Cidr;
pub use diff::ConfigDiff;
pub use duration::{format_duration, parse_duration};
pub use raw::{Address, CheckKind, ProxyVersion, TlsSetting, Verify, MAX_WEIGHT};
pub use validate::validate;

/// A complete, valid configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How long sessions may run on after SIGTERM before they are closed.
    pub shutdown_grace: Duration,
    /// How often the config file is read again as a safety net for missed
    /// file events.
    pub reload_poll: Duration,
    /// Threads that accept and carry client sessions; `None`: one per CPU.
    pub workers: Option<usize>,
    /// The DNS server asked for every host name (`IP:port`); `None`: the
    /// system's resolver.
    pub resolver: Option<SocketAddr>,
    /// The admin server, if enabled.
    pub admin: Option<AdminConfig>,
    /// Listeners in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
}

/// `[admin]`: the HTTP server for status, metrics and operator actions.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// The address as written.
    pub listen: Address,
    /// Resolved.
    pub addr: SocketAddr,
    /// Where the bearer token for mutating endpoints is read from.
    pub token_file: Option<PathBuf>,
    /// The token, read at load.
    pub token: Option<Secret>,
    /// Certificate chain (PEM) for HTTPS; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) for HTTPS.
    pub key_file: Option<PathBuf>,
    /// Both files' contents, read at load (so a reload picks up new ones).
    pub tls_pem: Option<(Vec<u8>, Secret)>,
    /// Most admin connections open at once (within the admin server's share
    /// of the open-files limit).
    pub max_connections: usize,
    /// Host names, besides IP addresses, `localhost`, the listen host and
    /// this machine's name, that requests may carry in their `Host` header
    /// (lower case; `"*"` allows any).
    pub allowed_hosts: Vec<String>,
}

/// One listening address and the pool it routes to.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name, used in logs, metrics and socket activation.
    pub name: String,
    /// The address as written.
    pub listen: Address,
    /// The address to bind, resolved.
    pub addr: SocketAddr,
    /// Name of the pool that serves this listener's clients.
    pub pool: String,
    /// Sessions beyond this many are closed at accept.
    pub max_connections: u32,
    /// Close a session after this long without a byte either way; `None` leaves
    /// idle sessions to the server's `wait_timeout`.
    pub idle_timeout: Option<Duration>,
    /// Once either side of a session has closed its sending half, the
    /// session ends after this long at the latest.
    pub half_close_timeout: Duration,
    /// Client address ranges allowed to connect; `None` allows everyone.
    pub allow: Option<Vec<Cidr>>,
}

impl ListenerConfig {
    /// Whether a client from `ip` may connect.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|r| r.contains(ip)))
    }
}

/// A set of backends with a balance policy and a health check.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name (its key under `[pool]`).
    pub name: String,
    /// How a backend is chosen.
    pub balance: Balance,
    /// Time allowed for one TCP connect to a backend.
    pub connect_timeout: Duration,
    /// Distinct backends tried for one client before it gets an error.
    pub connect_attempts: u32,
    /// How often a backend's host name is resolved again (and at once
    /// after a failed probe).
    pub resolve_interval: Duration,
    /// How backends are checked.
    pub check: CheckConfig,
    /// Which backends may take clients, and what happens to sessions.
    pub routing: Routing,
    /// Members: the file's backends in file order, each `resolve = "all"`
    /// backend replaced by one per address, then what the `sources` found.
    pub backends: Vec<BackendConfig>,
    /// Names whose answers give members, looked up again while running.
    pub sources: Vec<expand::Source>,
    /// Where the cluster's other members are learned, if anywhere.
    pub discover: Option<crate::vocabulary::DiscoverMode>,
    /// A discovered member no longer listed is drained, and dropped after
    /// this long.
    pub forget_after: Duration,
    /// How dbsplice manages the pool's GTID replication, if it does.
    pub replication: Option<replication::ReplicationConfig>,
}

/// A pool's routing policy: roles, lag limits, fallback, session handling.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Any, writer or reader.
    pub role: PoolRole,
    /// A writer pool's answer to several writable backends.
    pub on_multiple_writers: MultipleWriters,
    /// A reader pool takes a replica out above this lag.
    pub max_lag: Option<Duration>,
    /// ... and back in at or below this one.
    pub readmit_lag: Option<Duration>,
    /// Whether unknown lag is acceptable.
    pub lag_unknown: LagUnknown,
    /// Where a reader pool goes when no replica is eligible.
    pub fallback: Fallback,
    /// Sessions on a backend that leaves rotation.
    pub on_down: OnDown,
    /// Read the server's greeting before splicing, and retry elsewhere on an
    /// ERR greeting or none.
    pub greeting_gate: bool,
    /// How long the gate waits for a greeting.
    pub greeting_timeout: Duration,
    /// How long a new client waits for a backend when none can take it
    /// (zero: refused at once).
    pub hold_timeout: Duration,
    /// Clients held at once at most; past it, refused at once.
    pub hold_max: u32,
    /// Fail-back and flap damping.
    pub hold: HoldPolicy,
    /// Sessions on standbys once a primary is eligible again.
    pub on_primary_return: OnDown,
    /// Sessions on a backend removed from the pool by a reload.
    pub on_remove: OnDown,
    /// PROXY protocol header sent to backends (sessions and probes).
    pub send_proxy: Option<ProxyVersion>,
    /// After a backend returns from down, its weight ramps up over this long.
    pub slow_start: Option<Duration>,
}

/// One backend server of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Name shown in logs and used by the admin API; defaults to the address.
    pub name: String,
    /// The address as written: the backend's identity across reloads.
    pub address: Address,
    /// The address to connect to, resolved.
    pub addr: SocketAddr,
    /// Relative share of new sessions, `1..=256`.
    pub weight: u32,
    /// Primary, or standby for when no primary is eligible.
    pub tier: Tier,
    /// Sessions this backend takes at most (across all pools); `None`: no limit.
    pub max_connections: Option<u32>,
    /// May be promoted to primary (`candidate = false`: never).
    pub candidate: bool,
    /// Where it came from: the file, or what one of the pool's `sources`
    /// (its key) found.
    pub origin: crate::vocabulary::Origin,
    /// The key of the source that gave it (`None` for the file's own).
    pub source: Option<String>,
}

/// One thing wrong with a config, found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, such as `pool.main.backend[1].weight`.
    pub key: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the config's shape.
    #[error("{}:{line}:{column}: {message}\n    {source_line}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the mistake.
        line: usize,
        /// 1-based column of the mistake.
        column: usize,
        /// What is wrong and, where the parser knows, what was expected.
        message: String,
        /// The offending line as written.
        source_line: String,
    },
    /// The file parsed but its content is inconsistent.
    #[error("{}", ProblemList { file, problems })]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found, in file order where possible.
        problems: Vec<Problem>,
    },
}

struct ProblemList<'a> {
    file: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: key `{}`: {}", self.file.display(), p.key, p.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Parses and validates `text`, naming `path` in errors.
    pub fn from_toml(
        path: &Path,
        text: &str,
        resolve: &Resolver<'_>,
    ) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        validate(raw, resolve).map_err(|problems| ConfigError::Invalid {
            file: path.to_owned(),
            problems,
        })
    }

    /// A few lines describing what the config sets up, for `dbsplice check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for l in &self.listeners {
            out.push_str(&format!(
                "listener {} on {} -> pool {}\n",
                l.name, l.listen, l.pool
            ));
        }
        for p in self.pools.values() {
            let backends: Vec<String> = p
                .backends
                .iter()
                .map(|b| {
                    format!(
                        "{} ({}, weight {}, {:?})",
                        b.name, b.address, b.weight, b.tier
                    )
                    .to_lowercase()
                })
                .collect();
            out.push_str(&format!(
                "pool {}: {}, check {} every {}; backends: {}\n",
                p.name,
                p.balance.as_str(),
                p.check.kind.as_str(),
                format_duration(p.check.interval),
                backends.join(", ")
            ));
        }
        out.trim_end().to_owned()
    }
}

/// Turns a written address into a socket address, or says why it cannot.
pub type Resolver<'a> = dyn Fn(&Address) -> Result<SocketAddr, String> + 'a;

fn parse_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let source_line = text.lines().nth(line - 1).unwrap_or("").trim_end();
    let message = plain_types(err.message().trim_end());
    let (message, source_line) = if holds_secret(source_line) {
        // The log, systemd's status line and the admin API's reply all show
        // this error: a password on the line must reach none of them.
        let key = source_line.split('=').next().unwrap_or_default().trim_end();
        (
            redact_quoted(&message),
            format!("{key} = <value hidden: the key holds a secret>"),
        )
    } else {
        (message, source_line.to_owned())
    };
    ConfigError::Parse {
        file: path.to_owned(),
        line,
        column,
        message,
        source_line,
    }
}

/// Whether a config line sets a key whose value is a secret (a password or
/// token written inline, not the name of a file holding one).
fn holds_secret(line: &str) -> bool {
    let Some((key, _)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim().trim_matches('"').to_ascii_lowercase();
    let key = key.rsplit('.').next().unwrap_or_default();
    !key.ends_with("_file")
        && ["password", "token", "secret"]
            .iter()
            .any(|w| key.contains(w))
}

/// The parser's message with anything it quotes from the file taken out.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside: Option<char> = None;
    for c in message.chars() {
        match inside {
            Some(close) if c == close => {
                out.push('…');
                out.push(c);
                inside = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                inside = Some(c);
            }
            None => out.push(c),
        }
    }
    if inside.is_some() {
        out.push('…');
    }
    out
}

/// Says "a whole number" where the parser names a Rust integer type.
fn plain_types(message: &str) -> String {
    ["u16", "u32", "u64", "i64"]
        .iter()
        .fold(message.to_owned(), |m, t| {
            m.replace(
                &format!("expected {t}"),
                "expected a whole number (integer), written without quotes",
            )
        })
}

#[cfg(test)]
mod tests;
