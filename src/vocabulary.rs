//! The words dbsplice decides with, in one place and free of IO: what a
//! checker believes about a backend ([`Health`]), what the server says it is
//! ([`Role`], [`Lag`]), and the operator's routing vocabulary (tiers,
//! balance policy, pool role, what happens to sessions, fail-back and
//! hold-down). Config parsing, the probe, the balancer, the control module
//! and the admin server all speak these types.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// What the checker currently believes about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not probed yet: takes no sessions.
    Unknown = 0,
    /// Passing its checks: eligible.
    Up = 1,
    /// Failing its checks: takes no new sessions.
    Down = 2,
}

impl Health {
    /// Decodes the value stored in a backend's atomic.
    pub fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// Lower-case name for logs and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a server takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Not learned yet.
    #[default]
    Unknown,
    /// `read_only` (and `super_read_only`) off.
    Writable,
    /// `read_only` or `super_read_only` on.
    ReadOnly,
}

impl Role {
    /// Lower-case name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Writable => "writable",
            Role::ReadOnly => "read-only",
        }
    }
}

/// Replication lag as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lag {
    /// The server replicates from no one.
    NotReplica,
    /// `Seconds_Behind_Master` (or `_Source`).
    Seconds(u64),
    /// Lag cannot be known: a stopped replication thread (NULL), or a check
    /// user without the privilege to ask. Never treated as 0.
    Unknown(String),
}

/// When a returning backend takes traffic back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// As soon as it is up.
    Auto,
    /// After an operator's fail-back call.
    Manual,
    /// After staying up this long.
    After(Duration),
}

/// A pool's hold settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// Fail-back rule.
    pub failback: Failback,
    /// Transitions within `flap_window` that count as flapping; 0 disables damping.
    pub flap_threshold: u32,
    /// The window for counting transitions.
    pub flap_window: Duration,
    /// First hold-down; each further one doubles, up to `flap_hold_max`.
    pub flap_hold: Duration,
    /// Longest hold-down.
    pub flap_hold_max: Duration,
}

/// What a pool's clients may be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolRole {
    /// Any healthy backend.
    Any,
    /// The one writable backend.
    Writer,
    /// Read-only backends within `max_lag`.
    Reader,
}

/// A writer pool's answer to seeing more than one writable backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MultipleWriters {
    /// Keep sending writes to the current writer, and alert.
    Keep,
    /// Send writes nowhere until only one backend is writable.
    Refuse,
}

/// Whether a replica whose lag is unknown may take reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LagUnknown {
    /// No: unknown lag may be any lag.
    Exclude,
    /// Yes.
    Include,
}

/// Where a reader pool sends clients when no replica is eligible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// To the pool's writable backends.
    Writer,
    /// Nowhere: clients get an error.
    None,
}

/// What happens to open sessions on a backend that leaves rotation (down, or
/// demoted in a writer pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDown {
    /// Leave them be.
    Keep,
    /// Close them at once, so clients reconnect to an eligible backend.
    Close,
    /// Close them after this long.
    Drain(std::time::Duration),
}

/// Whether dbsplice promotes a replica by itself when a GTID primary dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Never: a switchover is asked for, a failover is left to a person or
    /// another tool.
    Off,
    /// When the primary has failed every probe for `failover_after` and no
    /// replica still sees it.
    Auto,
}

impl FailoverMode {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Off => "off",
            FailoverMode::Auto => "auto",
        }
    }
}

/// Of which servers an instance must hold the promotion lock before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockScope {
    /// More than half of the pool's configured servers.
    MajorityOfAll,
    /// More than half of those that answer.
    MajorityOfRunning,
}

impl LockScope {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::MajorityOfAll => "majority_of_all",
            LockScope::MajorityOfRunning => "majority_of_running",
        }
    }
}

/// How a pool chooses among its eligible backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Fewest active sessions per unit of weight.
    LeastConnections,
    /// Smooth weighted round robin: picks interleaved in proportion to weight.
    WeightedRoundRobin,
}

impl Balance {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastConnections => "least-connections",
            Balance::WeightedRoundRobin => "weighted-round-robin",
        }
    }
}

/// Whether a backend takes traffic normally or only when no primary can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Takes traffic whenever it is eligible.
    Primary,
    /// Takes traffic only while no primary of its pool is eligible.
    Standby,
}

impl Tier {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Primary => "primary",
            Tier::Standby => "standby",
        }
    }
}

/// What an operator asked of a backend through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideMode {
    /// No new sessions; open ones continue.
    Drain,
    /// No new sessions, and open ones are closed.
    Disable,
}

impl OverrideMode {
    /// Lower-case name for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            OverrideMode::Drain => "drain",
            OverrideMode::Disable => "disable",
        }
    }
}

/// How many members a backend whose host name has several addresses gives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolveMode {
    /// One member, at the first address (IPv4 before IPv6).
    #[default]
    First,
    /// One member per address, named `NAME#IP`.
    All,
}

impl ResolveMode {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolveMode::First => "first",
            ResolveMode::All => "all",
        }
    }
}

/// Where a pool member came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Origin {
    /// A `[[pool.NAME.backend]]` table of the file.
    #[default]
    File,
    /// One address of a backend with `resolve = "all"`.
    Dns,
    /// A target of a `[[pool.NAME.backend_srv]]` record.
    Srv,
    /// Found in the cluster by `discover`.
    Discovered,
}

impl Origin {
    /// The word status and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Dns => "dns",
            Origin::Srv => "srv",
            Origin::Discovered => "discovered",
        }
    }
}

/// Where a pool learns its cluster's other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscoverMode {
    /// A Galera node's `wsrep_incoming_addresses`.
    Galera,
    /// A primary's `SHOW SLAVE HOSTS` (replicas with `report_host`).
    Replicas,
    /// MySQL group replication's `replication_group_members`.
    GroupReplication,
}

impl DiscoverMode {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoverMode::Galera => "galera",
            DiscoverMode::Replicas => "replicas",
            DiscoverMode::GroupReplication => "group_replication",
        }
    }
}
