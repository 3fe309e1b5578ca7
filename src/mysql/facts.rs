//! What a probe learns and how it fails: the check queries, how their answers
//! become a role, a replication lag and a Galera state, and the reasons an
//! operator reads when a backend is not up.

use std::fmt;

use super::packet::ServerError;
use super::probe::ProbeOptions;
use super::resultset::{QueryOutcome, TextResult};
use crate::vocabulary::{Lag, Role};

/// Galera node state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Galera {
    /// `wsrep_ready`.
    pub ready: bool,
    /// `wsrep_local_state` (4 synced, 2 donor).
    pub local_state: Option<u8>,
    /// `wsrep_cluster_status` ("Primary" when in the quorum).
    pub cluster_status: String,
    /// `wsrep_reject_queries`: anything but NONE refuses clients' queries
    /// (with error 1047) while the node still looks synced.
    pub reject_queries: String,
    /// `wsrep_desync`: desynced on purpose (a backup, a rolling schema
    /// change), which reports state 2 as a donor does.
    pub desync: bool,
}

/// Everything one successful probe learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The greeting's version string.
    pub server_version: String,
    /// Writable or read-only.
    pub role: Role,
    /// Replication lag, when the pool asked for it.
    pub lag: Option<Lag>,
    /// Galera state, when the pool asked for it.
    pub galera: Option<Galera>,
    /// Group replication membership, when the pool asked for it.
    pub group: Option<GroupMember>,
    /// An admin session's answers, one per statement sent, in order.
    pub answers: Vec<QueryOutcome>,
}

/// This server's place in a MySQL group replication group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// `MEMBER_STATE` (ONLINE, RECOVERING, ERROR, OFFLINE, UNREACHABLE), empty
    /// when the server is in no group.
    pub state: String,
    /// `MEMBER_ROLE` (PRIMARY or SECONDARY).
    pub role: String,
    /// Members ONLINE as this server sees them.
    pub online: u32,
    /// All members it sees.
    pub members: u32,
}

/// Why a probe failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// An ERR packet instead of a greeting (1040 too many connections, ...).
    Greeting(ServerError),
    /// Error 1129: the server blocked dbsplice's host.
    HostBlocked(ServerError),
    /// The check user could not log in: the check is misconfigured (or the
    /// server wants TLS); the server itself answered.
    AuthFailed {
        /// The server's error.
        error: ServerError,
        /// What may fix it.
        hint: Option<&'static str>,
    },
    /// `tls = "required"` but the server does not offer TLS.
    TlsUnavailable,
    /// Something the check cannot do (an unknown auth plugin).
    Unsupported(String),
    /// A check command failed.
    Query {
        /// Which command.
        what: &'static str,
        /// The server's error.
        error: ServerError,
    },
    /// A Galera node that must not take traffic.
    GaleraNotReady(String),
    /// A group replication member that must not take traffic.
    GroupNotReady(String),
    /// The server closed the connection.
    Closed(&'static str),
    /// Bytes that are not the MySQL protocol.
    Protocol(String),
}

impl ProbeError {
    /// True when the check itself is misconfigured rather than the server down.
    pub fn is_check_misconfigured(&self) -> bool {
        matches!(
            self,
            ProbeError::AuthFailed { .. } | ProbeError::Unsupported(_)
        )
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Greeting(e) => write!(f, "greeting error {}: {}", e.code, e.message),
            ProbeError::HostBlocked(e) => write!(
                f,
                "blocked by 1129 ({}): the server blocked dbsplice's host after too many aborted connects; \
                 run FLUSH HOSTS on it (and raise max_connect_errors)",
                e.message
            ),
            ProbeError::AuthFailed { error, hint } => {
                write!(f, "auth failed (check misconfigured), error {}: {}", error.code, error.message)?;
                match hint {
                    Some(h) => write!(f, "; {h}"),
                    None => Ok(()),
                }
            }
            ProbeError::TlsUnavailable => f.write_str("TLS required by the check, but the server does not offer TLS"),
            ProbeError::Unsupported(reason) => write!(f, "check misconfigured: {reason}"),
            ProbeError::Query { what, error } => write!(f, "{what} failed, error {}: {}", error.code, error.message),
            ProbeError::GaleraNotReady(reason) => write!(f, "galera node not ready: {reason}"),
            ProbeError::GroupNotReady(reason) => write!(f, "group replication member not ready: {reason}"),
            ProbeError::Closed(during) => write!(f, "the server closed the connection {during}"),
            ProbeError::Protocol(reason) => write!(f, "protocol error: {reason}"),
        }
    }
}

/// The classification of an ERR greeting.
pub(crate) fn greeting_error(error: ServerError) -> ProbeError {
    if error.code == 1129 {
        ProbeError::HostBlocked(error)
    } else {
        ProbeError::Greeting(error)
    }
}

/// What to check after an access denied: the usual causes, including the
/// one that survives a correct password (an anonymous user for the host
/// dbsplice connects from ranks above the check user's `'%'`).
const ACCESS_DENIED_HINT: &str = "check user and password, and the host part: the server \
    matches the most specific host first, so an anonymous user such as ''@'localhost' or \
    ''@'127.0.0.1' outranks the check user's '%' for connections from that host; create the \
    check user for that host too, or drop the anonymous users";

/// The same, when the login went without TLS.
const ACCESS_DENIED_WITHOUT_TLS_HINT: &str = "check user and password, and the host part: the \
    server matches the most specific host first, so an anonymous user such as ''@'localhost' or \
    ''@'127.0.0.1' outranks the check user's '%' for connections from that host; create the \
    check user for that host too, or drop the anonymous users. A server with \
    require_secure_transport=ON also refuses logins without TLS with this error: then set \
    tls = \"required\"";

/// The classification of an ERR answer to the login.
pub(crate) fn login_error(error: ServerError, over_tls: bool) -> ProbeError {
    match error.code {
        // Access denied (1045, 1698), unknown database (1049), no matching
        // plugin (1251): the check's settings, not the server's health.
        1045 | 1698 => ProbeError::AuthFailed {
            hint: Some(if over_tls {
                ACCESS_DENIED_HINT
            } else {
                ACCESS_DENIED_WITHOUT_TLS_HINT
            }),
            error,
        },
        1251 => ProbeError::AuthFailed { error, hint: None },
        // MySQL 8's explicit "insecure transport prohibited".
        3159 => ProbeError::AuthFailed {
            error,
            hint: Some("the server requires TLS: set tls = \"required\""),
        },
        1129 => ProbeError::HostBlocked(error),
        _ => ProbeError::Greeting(error),
    }
}

/// The check queries a probe runs after COM_PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `read_only` and, where it exists, `super_read_only`.
    Role,
    /// `SHOW REPLICA STATUS` (MariaDB 10.5+, MySQL 8.0.22+).
    Replica,
    /// `SHOW SLAVE STATUS`, for servers older than that.
    Slave,
    /// wsrep status variables.
    Galera,
    /// wsrep settings an operator changes on a running node.
    GaleraSettings,
    /// This member's state and role, and the group's ONLINE count.
    Group,
}

impl Query {
    /// The SQL sent.
    pub fn sql(self) -> &'static str {
        match self {
            Query::Role => "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('read_only', 'super_read_only')",
            Query::Replica => "SHOW REPLICA STATUS",
            Query::Slave => "SHOW SLAVE STATUS",
            Query::Galera => {
                "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state', 'wsrep_cluster_status')"
            }
            Query::GaleraSettings => {
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('wsrep_reject_queries', 'wsrep_desync')"
            }
            Query::Group => {
                "SELECT \
                 (SELECT MEMBER_STATE FROM performance_schema.replication_group_members WHERE MEMBER_ID = @@server_uuid) AS state, \
                 (SELECT MEMBER_ROLE FROM performance_schema.replication_group_members WHERE MEMBER_ID = @@server_uuid) AS role, \
                 (SELECT COUNT(*) FROM performance_schema.replication_group_members WHERE MEMBER_STATE = 'ONLINE') AS online, \
                 (SELECT COUNT(*) FROM performance_schema.replication_group_members) AS members"
            }
        }
    }
}

/// The queries for these options, in order.
pub(crate) fn queries(opts: &ProbeOptions) -> std::collections::VecDeque<Query> {
    let mut q = std::collections::VecDeque::from([Query::Role]);
    if opts.lag {
        q.push_back(Query::Replica);
    }
    if opts.galera {
        q.push_back(Query::Galera);
        q.push_back(Query::GaleraSettings);
    }
    if opts.group_replication {
        q.push_back(Query::Group);
    }
    q
}

/// Server errors that mean "this statement does not exist here".
const ER_PARSE_ERROR: u16 = 1064;
/// Server errors that mean "the check user may not ask".
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
const ER_ACCESS_DENIED: u16 = 1045;

impl Facts {
    /// Takes one query's answer; returns a query to run instead, if any.
    pub(crate) fn learn(
        &mut self,
        query: Query,
        outcome: QueryOutcome,
    ) -> Result<Option<Query>, ProbeError> {
        let rows = match outcome {
            QueryOutcome::Rows(rows) => rows,
            QueryOutcome::Done => TextResult::default(),
            QueryOutcome::Failed(error) => return self.learn_failure(query, error),
        };
        match query {
            Query::Role => self.role = role(&rows),
            Query::Replica | Query::Slave => self.lag = Some(lag(&rows)),
            Query::Galera => self.galera = Some(galera(&rows)),
            Query::GaleraSettings => {
                if let Some(g) = self.galera.as_mut() {
                    g.reject_queries = rows
                        .variable("wsrep_reject_queries")
                        .unwrap_or_default()
                        .to_owned();
                    g.desync = is_on(rows.variable("wsrep_desync"));
                }
            }
            Query::Group => self.group = Some(group(&rows)),
        }
        Ok(None)
    }

    fn learn_failure(
        &mut self,
        query: Query,
        error: ServerError,
    ) -> Result<Option<Query>, ProbeError> {
        match (query, error.code) {
            (Query::Replica, ER_PARSE_ERROR) => Ok(Some(Query::Slave)),
            (Query::Replica | Query::Slave, ER_SPECIFIC_ACCESS_DENIED | ER_ACCESS_DENIED) => {
                self.lag = Some(Lag::Unknown(format!(
                    "the check user may not read replication status ({}); grant it SLAVE MONITOR \
                     (MariaDB 10.5+) or REPLICATION CLIENT (MySQL)",
                    error.message
                )));
                Ok(None)
            }
            _ => Err(ProbeError::Query {
                what: query.sql(),
                error,
            }),
        }
    }

    /// The probe's verdict: Galera nodes must be synced (or donors, when
    /// allowed), accept queries and not be desynced on purpose.
    pub(crate) fn verdict(self, opts: &ProbeOptions) -> Result<Facts, ProbeError> {
        if let Some(g) = &self.galera {
            if !g.reject_queries.is_empty() && !g.reject_queries.eq_ignore_ascii_case("NONE") {
                return Err(ProbeError::GaleraNotReady(format!(
                    "wsrep_reject_queries={}: the node refuses clients' queries (error 1047)",
                    g.reject_queries
                )));
            }
            if g.desync {
                return Err(ProbeError::GaleraNotReady(
                    "wsrep_desync=ON: desynced on purpose (a backup or schema change), \
                     falling behind the cluster"
                        .to_owned(),
                ));
            }
            let state_ok = match g.local_state {
                Some(4) => true,
                Some(2) => opts.galera_donor_ok,
                _ => false,
            };
            if !g.ready || !state_ok || !g.cluster_status.eq_ignore_ascii_case("Primary") {
                return Err(ProbeError::GaleraNotReady(format!(
                    "wsrep_ready={}, wsrep_local_state={}, wsrep_cluster_status={}",
                    if g.ready { "ON" } else { "OFF" },
                    g.local_state
                        .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                    if g.cluster_status.is_empty() {
                        "?"
                    } else {
                        &g.cluster_status
                    }
                )));
            }
        }
        if let Some(g) = &self.group {
            // Counts come from the server: widened, so no value overflows.
            let no_majority = u64::from(g.online) * 2 <= u64::from(g.members);
            if g.state != "ONLINE" || no_majority {
                return Err(ProbeError::GroupNotReady(format!(
                    "member state {}, {} of {} members online{}",
                    if g.state.is_empty() {
                        "none (not in a group)"
                    } else {
                        &g.state
                    },
                    g.online,
                    g.members,
                    if no_majority { ": no majority" } else { "" }
                )));
            }
        }
        Ok(self)
    }
}

/// Any value but OFF/0 is read-only (MariaDB 11 adds levels such as NO_LOCK).
fn is_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.eq_ignore_ascii_case("OFF") && v != "0" && !v.is_empty())
}

fn role(rows: &TextResult) -> Role {
    if is_on(rows.variable("read_only")) || is_on(rows.variable("super_read_only")) {
        Role::ReadOnly
    } else if rows.variable("read_only").is_some() {
        Role::Writable
    } else {
        Role::Unknown
    }
}

fn lag(rows: &TextResult) -> Lag {
    if rows.rows.is_empty() {
        return Lag::NotReplica;
    }
    let seconds = rows
        .first("Seconds_Behind_Master")
        .or_else(|| rows.first("Seconds_Behind_Source"));
    match seconds.map(str::parse::<u64>) {
        Some(Ok(s)) => Lag::Seconds(s),
        _ => {
            let io = rows
                .first("Slave_IO_Running")
                .or_else(|| rows.first("Replica_IO_Running"))
                .unwrap_or("?");
            let sql = rows
                .first("Slave_SQL_Running")
                .or_else(|| rows.first("Replica_SQL_Running"))
                .unwrap_or("?");
            Lag::Unknown(format!(
                "replication is not running (IO thread {io}, SQL thread {sql}): lag is NULL"
            ))
        }
    }
}

fn group(rows: &TextResult) -> GroupMember {
    let count = |c: &str| rows.first(c).and_then(|v| v.parse().ok()).unwrap_or(0);
    GroupMember {
        state: rows.first("state").unwrap_or_default().to_owned(),
        role: rows.first("role").unwrap_or_default().to_owned(),
        online: count("online"),
        members: count("members"),
    }
}

fn galera(rows: &TextResult) -> Galera {
    Galera {
        ready: is_on(rows.variable("wsrep_ready")),
        local_state: rows
            .variable("wsrep_local_state")
            .and_then(|s| s.parse().ok()),
        cluster_status: rows
            .variable("wsrep_cluster_status")
            .unwrap_or_default()
            .to_owned(),
        reject_queries: String::new(),
        desync: false,
    }
}

#[cfg(test)]
#[path = "facts_tests.rs"]
mod tests;
