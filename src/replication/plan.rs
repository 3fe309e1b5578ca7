//! Who is primary, who may replace it, and what a switchover does: pure
//! decisions over what each server said, each refusal typed with its reason.

use super::gtid::Gtid;
use crate::vocabulary::Tier;

/// What one server said when dbsplice looked, or why it could not look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It answered.
    Answered(ServerFacts),
    /// It let dbsplice's admin login in, but its replication facts could
    /// not be read (a missing privilege, a server dbsplice does not manage
    /// such as MySQL today); in words. Alive: never taken for dead.
    Unusable(String),
    /// It did not; in words.
    Unreachable(String),
}

/// The server's kind, from its greeting's version: which statements
/// dbsplice sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavour {
    /// MariaDB: domain-based GTID, `read_only`, `MASTER_GTID_WAIT`.
    #[default]
    MariaDb,
    /// MySQL 8: GTID sets, `super_read_only`, `WAIT_FOR_EXECUTED_GTID_SET`.
    MySql,
}

impl Flavour {
    /// The flavour of a server whose greeting says `version`.
    pub fn of(version: &str) -> Flavour {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavour::MariaDb
        } else {
            Flavour::MySql
        }
    }
}

/// One server's replication facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// Which statements it understands.
    pub flavour: Flavour,
    /// `@@server_id`.
    pub server_id: u32,
    /// `@@server_uuid` (MySQL; empty on MariaDB).
    pub server_uuid: String,
    /// `read_only` is on.
    pub read_only: bool,
    /// `@@gtid_binlog_pos`: what it has written to its binary log.
    pub binlog_pos: Gtid,
    /// `@@gtid_current_pos`: the most recent of its own and its applied
    /// transactions.
    pub current_pos: Gtid,
    /// `@@gtid_binlog_state`: the last transaction of each server in each
    /// domain of its binary log (replicas log what they apply with
    /// `log_slave_updates`).
    pub binlog_state: Gtid,
    /// Whom it replicates from, if anyone.
    pub source: Option<Source>,
    /// `rpl_semi_sync_master_enabled`: as a primary, it waits for a
    /// replica's acknowledgement before a commit returns.
    pub semi_sync: bool,
}

/// A replica's link to its primary (`SHOW SLAVE STATUS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// `Master_Host`.
    pub host: String,
    /// `Master_Port`.
    pub port: u16,
    /// `Master_Server_Id` (0 until the IO thread has connected once).
    pub server_id: u32,
    /// `Slave_IO_Running` is `Yes`: connected to the primary now.
    pub io_running: bool,
    /// `Slave_SQL_Running` is `Yes`.
    pub sql_running: bool,
    /// `Using_Gtid` is not `No`.
    pub using_gtid: bool,
    /// `Gtid_IO_Pos`: what it has received from the primary, applied or not.
    pub io_pos: Gtid,
}

/// One server of the pool, as configured and as seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The backend's name.
    pub name: String,
    /// Host as written in the config: what replicas are pointed at.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Its tier.
    pub tier: Tier,
    /// May be promoted.
    pub candidate: bool,
    /// What it said.
    pub seen: Seen,
    /// Its `server_id` when it last answered, if it ever did: how its
    /// replicas name it (`Master_Server_Id`) once it is gone.
    pub last_server_id: Option<u32>,
    /// Whether it waited for semi-synchronous acknowledgements when it last
    /// answered: a primary that dies with it on is replaced by one with it on.
    pub last_semi_sync: Option<bool>,
}

impl Server {
    /// Whether `source` is a link to this server: by server id, or by the
    /// host and port the config writes.
    fn is_source(&self, source: &Source) -> bool {
        let id = self.facts().map(|f| f.server_id).or(self.last_server_id);
        id.is_some_and(|id| id != 0 && source.server_id == id)
            || (source.host == self.host && source.port == self.port)
    }
}

impl Server {
    fn facts(&self) -> Option<&ServerFacts> {
        match &self.seen {
            Seen::Answered(f) => Some(f),
            Seen::Unusable(_) | Seen::Unreachable(_) => None,
        }
    }
}

/// A switchover to carry out, by index into the servers given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverPlan {
    /// The primary now.
    pub old: usize,
    /// The replica to promote.
    pub new: usize,
    /// The other reachable replicas, to re-point at `new`.
    pub others: Vec<usize>,
}

/// Why no switchover can be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No reachable server is writable.
    #[error("no reachable server is writable: there is no primary to switch over from")]
    NoPrimary,
    /// More than one is.
    #[error("{0} are all writable: fix that before a switchover")]
    SeveralWriters(String),
    /// The named target is not in the pool.
    #[error("the pool has no backend named \"{0}\"")]
    UnknownTarget(String),
    /// The named target cannot be promoted.
    #[error("{name} cannot be promoted: {why}")]
    NotCandidate {
        /// The backend.
        name: String,
        /// Why.
        why: String,
    },
    /// No replica can be promoted; each one's reason.
    #[error("no replica can be promoted: {0}")]
    NoCandidate(String),
}

/// The indexes of the servers that answered writable.
fn writable(servers: &[Server]) -> Vec<usize> {
    (0..servers.len())
        .filter(|&i| {
            servers
                .get(i)
                .and_then(Server::facts)
                .is_some_and(|f| !f.read_only)
        })
        .collect()
}

/// Plans a switchover from the one writable server to `to` (or, without it,
/// the most advanced replica that may be promoted; ties by tier, then by
/// config order).
pub fn switchover(servers: &[Server], to: Option<&str>) -> Result<SwitchoverPlan, Refusal> {
    let writable = writable(servers);
    let old = match writable.as_slice() {
        [] => return Err(Refusal::NoPrimary),
        [one] => *one,
        many => {
            let names: Vec<&str> = many
                .iter()
                .filter_map(|&i| servers.get(i).map(|s| s.name.as_str()))
                .collect();
            return Err(Refusal::SeveralWriters(names.join(", ")));
        }
    };
    let primary = servers
        .get(old)
        .and_then(Server::facts)
        .ok_or(Refusal::NoPrimary)?;
    let judged: Vec<(usize, Result<&ServerFacts, String>)> = (0..servers.len())
        .filter(|&i| i != old)
        .filter_map(|i| Some((i, servers.get(i)?)))
        .map(|(i, s)| (i, promotable(s, primary)))
        .collect();
    let new = match to {
        Some(name) => {
            let (i, verdict) = judged
                .iter()
                .find(|(i, _)| servers.get(*i).is_some_and(|s| s.name == name))
                .ok_or_else(|| match servers.get(old) {
                    Some(s) if s.name == name => Refusal::NotCandidate {
                        name: name.to_owned(),
                        why: "it is the primary already".into(),
                    },
                    _ => Refusal::UnknownTarget(name.to_owned()),
                })?;
            verdict.as_ref().map_err(|why| Refusal::NotCandidate {
                name: name.to_owned(),
                why: why.clone(),
            })?;
            *i
        }
        None => most_advanced(servers, &judged)?,
    };
    let others = (0..servers.len())
        .filter(|&i| i != old && i != new)
        .filter(|&i| servers.get(i).and_then(Server::facts).is_some())
        .collect();
    Ok(SwitchoverPlan { old, new, others })
}

/// What `server` said, when it answered and may be promoted at all; why
/// not otherwise.
fn candidate_facts(server: &Server) -> Result<&ServerFacts, String> {
    let facts = match &server.seen {
        Seen::Answered(f) => f,
        Seen::Unusable(why) => return Err(format!("its replication cannot be read ({why})")),
        Seen::Unreachable(why) => return Err(format!("unreachable ({why})")),
    };
    if !server.candidate {
        return Err("candidate = false in the config".into());
    }
    Ok(facts)
}

/// Whether `server` may replace the primary whose facts are `primary`.
fn promotable<'a>(server: &'a Server, primary: &ServerFacts) -> Result<&'a ServerFacts, String> {
    let facts = candidate_facts(server)?;
    let Some(source) = &facts.source else {
        return Err("it replicates from no one".into());
    };
    if source.server_id != primary.server_id {
        return Err(format!(
            "it replicates from server id {} ({}:{}), not from the primary (server id {})",
            source.server_id, source.host, source.port, primary.server_id
        ));
    }
    if !source.using_gtid {
        return Err("it replicates without GTID (Using_Gtid = No)".into());
    }
    if !source.sql_running {
        return Err("its SQL thread is stopped: it would not apply what it has".into());
    }
    // Server by server, leaving out the primary's own stream (read a moment
    // later, the replica may be further along it than the primary's answer).
    let errant = facts.binlog_state.state_ahead_of(
        &primary.binlog_state,
        Some(primary.server_id),
        Some(&primary.server_uuid),
    );
    if errant > 0 {
        return Err(format!(
            "it has {errant} transaction(s) the primary lacks (errant GTIDs, {} against {})",
            facts.binlog_state, primary.binlog_state
        ));
    }
    Ok(facts)
}

/// The promotable replica furthest along; ties by tier, then config order.
fn most_advanced(
    servers: &[Server],
    judged: &[(usize, Result<&ServerFacts, String>)],
) -> Result<usize, Refusal> {
    let mut best: Option<(usize, &ServerFacts)> = None;
    for (i, verdict) in judged {
        let Ok(facts) = verdict else { continue };
        let better = match best {
            None => true,
            Some((b, bf)) => {
                let ahead = facts.current_pos.contains(&bf.current_pos)
                    && !bf.current_pos.contains(&facts.current_pos);
                let level = bf.current_pos.contains(&facts.current_pos)
                    && facts.current_pos.contains(&bf.current_pos);
                let tier = |j: usize| servers.get(j).map(|s| s.tier);
                ahead || (level && tier(*i) < tier(b))
            }
        };
        if better {
            best = Some((*i, facts));
        }
    }
    best.map(|(i, _)| i).ok_or_else(|| {
        let reasons: Vec<String> = judged
            .iter()
            .filter_map(|(i, v)| {
                let why = v.as_ref().err()?;
                Some(format!("{}: {why}", servers.get(*i)?.name))
            })
            .collect();
        Refusal::NoCandidate(if reasons.is_empty() {
            "the pool has no other server".into()
        } else {
            reasons.join("; ")
        })
    })
}

/// The server every answering replica replicates from, when they all name
/// the same one: who the primary was, for an instance that never saw it
/// answer (started while it was dead).
pub fn followed(servers: &[Server]) -> Option<usize> {
    let mut found = None;
    for source in servers
        .iter()
        .filter_map(Server::facts)
        .filter_map(|f| f.source.as_ref())
    {
        let i = servers.iter().position(|s| s.is_source(source))?;
        if found.is_some_and(|j| j != i) {
            return None;
        }
        found = Some(i);
    }
    found
}

/// A failover to carry out, by index into the servers given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverPlan {
    /// The dead primary.
    pub old: usize,
    /// The replica to promote.
    pub new: usize,
    /// What `new` has received: it applies all of it before taking writes.
    pub apply: Gtid,
    /// The other reachable replicas, to re-point at `new`.
    pub others: Vec<usize>,
}

/// Why a failover does not happen now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// dbsplice's admin login still reaches the primary.
    #[error("the primary {0} still answers dbsplice's admin login")]
    PrimaryAnswers(String),
    /// A replica still receives from the primary: cut off from dbsplice
    /// alone is not dead.
    #[error("replica {0} still sees the primary (its IO thread is connected)")]
    ReplicaSeesPrimary(String),
    /// A replica lets dbsplice in but its replication cannot be read: it
    /// may still receive from the primary.
    #[error("replica {0} answers but its replication cannot be read ({1}): it may still see the primary")]
    ReplicaUnknown(String, String),
    /// Another server already takes writes.
    #[error("{0} is writable already")]
    AnotherWriter(String),
    /// No replica may be promoted; each one's reason.
    #[error("no replica can be promoted: {0}")]
    NoCandidate(String),
}

impl Blocked {
    /// Every `reason` label, for metrics that show each from zero.
    pub const LABELS: [&'static str; 6] = [
        "primary_answers",
        "replica_sees_primary",
        "replica_unknown",
        "another_writer",
        "no_candidate",
        // A failover that was tried and did not happen (lock, catch-up).
        "attempt_failed",
    ];

    /// The `reason` label of `dbsplice_pool_failover_blocked_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Blocked::PrimaryAnswers(_) => "primary_answers",
            Blocked::ReplicaSeesPrimary(_) => "replica_sees_primary",
            Blocked::ReplicaUnknown(..) => "replica_unknown",
            Blocked::AnotherWriter(_) => "another_writer",
            Blocked::NoCandidate(_) => "no_candidate",
        }
    }
}

/// Plans the promotion of a replica in place of `old`, the primary the
/// checks found dead: only when no reachable server still answers as or
/// reaches it (nor hides whether it does), and only a replica of it that received with GTID and has
/// nothing of its own (the most advanced by what it received; ties by
/// tier, then config order).
pub fn failover(servers: &[Server], old: usize) -> Result<FailoverPlan, Blocked> {
    let primary = servers
        .get(old)
        .ok_or_else(|| Blocked::NoCandidate("no primary".into()))?;
    if !matches!(primary.seen, Seen::Unreachable(_)) {
        return Err(Blocked::PrimaryAnswers(primary.name.clone()));
    }
    let followers = |s: &Server| {
        s.facts()
            .and_then(|f| f.source.as_ref())
            .is_some_and(|src| primary.is_source(src))
    };
    nothing_sees(servers, old, &followers)?;
    let mut best: Option<(usize, &Source)> = None;
    let mut reasons = Vec::new();
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != old) {
        let others: Vec<&ServerFacts> = servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i && *j != old)
            .filter_map(|(_, o)| o.facts())
            .collect();
        match failover_candidate(s, followers(s), &others) {
            Err(why) => reasons.push(format!("{}: {why}", s.name)),
            Ok(src) => {
                let better = best.is_none_or(|(b, bsrc)| {
                    let ahead =
                        src.io_pos.contains(&bsrc.io_pos) && !bsrc.io_pos.contains(&src.io_pos);
                    let level = src.io_pos == bsrc.io_pos;
                    let tier = |j: usize| servers.get(j).map(|s| s.tier);
                    ahead || (level && tier(i) < tier(b))
                });
                if better {
                    best = Some((i, src));
                }
            }
        }
    }
    let (new, src) = best.ok_or_else(|| Blocked::NoCandidate(reasons.join("; ")))?;
    let others = (0..servers.len())
        .filter(|&i| i != old && i != new)
        .filter(|&i| servers.get(i).and_then(Server::facts).is_some())
        .collect();
    Ok(FailoverPlan {
        old,
        new,
        apply: src.io_pos.clone(),
        others,
    })
}

/// Refuses a failover while a reachable server takes writes, still
/// receives from the dead primary `old`, or hides whether it does.
fn nothing_sees(
    servers: &[Server],
    old: usize,
    followers: &dyn Fn(&Server) -> bool,
) -> Result<(), Blocked> {
    let others = servers.iter().enumerate().filter(|(i, _)| *i != old);
    for s in others.map(|(_, s)| s) {
        if let Seen::Unusable(why) = &s.seen {
            return Err(Blocked::ReplicaUnknown(s.name.clone(), why.clone()));
        }
        let Some(f) = s.facts() else { continue };
        if !f.read_only {
            return Err(Blocked::AnotherWriter(s.name.clone()));
        }
        if followers(s) && f.source.as_ref().is_some_and(|src| src.io_running) {
            return Err(Blocked::ReplicaSeesPrimary(s.name.clone()));
        }
    }
    Ok(())
}

/// Whether `server`, a replica of the dead primary when `follows`, may
/// replace it (`others`: what the other reachable servers said); its link
/// to the primary if so.
fn failover_candidate<'a>(
    server: &'a Server,
    follows: bool,
    others: &[&ServerFacts],
) -> Result<&'a Source, String> {
    let facts = candidate_facts(server)?;
    let Some(source) = facts.source.as_ref().filter(|_| follows) else {
        return Err("it does not replicate from the primary".into());
    };
    if !source.using_gtid {
        return Err("it replicates without GTID (Using_Gtid = No)".into());
    }
    let errant = errant_of_replica(facts, source, others);
    if errant > 0 {
        return Err(format!(
            "it has {errant} transaction(s) of its own (errant GTIDs, {} against {} received)",
            facts.current_pos, source.io_pos
        ));
    }
    Ok(source)
}

/// Transactions a replica has that came from no primary. MariaDB: applied
/// but never received. MySQL, whose received set includes what it
/// executed: those of its own `server_uuid` that no other reachable server
/// has (a former primary's own transactions, replicated to the others, are
/// not errant).
fn errant_of_replica(facts: &ServerFacts, source: &Source, others: &[&ServerFacts]) -> u64 {
    match &facts.current_pos {
        Gtid::MySql(executed) => {
            let mut elsewhere = super::gtid::GtidSet::default();
            for o in others {
                if let Gtid::MySql(set) = &o.current_pos {
                    elsewhere = elsewhere.union(set);
                }
            }
            executed
                .only(&facts.server_uuid)
                .missing_from(&elsewhere, None)
        }
        Gtid::MariaDb(_) => facts.current_pos.ahead_of(&source.io_pos),
    }
}

/// What to do with a server that takes writes beside the pool's primary,
/// or one that replicates from no one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Writable beside the primary, with no replica of its own: a former
    /// primary back from the dead. Make it read-only at once.
    Fence(usize),
    /// Read-only, replicating from no one, with nothing the primary lacks:
    /// point it at the primary.
    Rejoin {
        /// The server.
        server: usize,
        /// The primary.
        primary: usize,
    },
    /// Read-only, replicating from no one, with transactions the primary
    /// lacks: left for a person, out of rotation.
    ManualRepair {
        /// The server.
        server: usize,
        /// Transactions it has that the primary lacks.
        extra: u64,
    },
}

/// The repairs the topology calls for: the primary is the writable server
/// the replicas follow; any other writable server is fenced, and servers
/// that replicate from no one are rejoined (with `rejoin`) or reported.
/// Nothing when who is primary is not clear.
pub fn repairs(servers: &[Server], rejoin: bool) -> Vec<Repair> {
    let writable = writable(servers);
    let followed = |i: usize| {
        let Some(p) = servers.get(i) else {
            return false;
        };
        servers
            .iter()
            .filter_map(Server::facts)
            .any(|f| f.source.as_ref().is_some_and(|s| p.is_source(s)))
    };
    let led: Vec<usize> = writable.iter().copied().filter(|&i| followed(i)).collect();
    let primary = match (writable.as_slice(), led.as_slice()) {
        ([one], _) | (_, [one]) => *one,
        _ => return Vec::new(),
    };
    let Some(pf) = servers.get(primary).and_then(Server::facts) else {
        return Vec::new();
    };
    let mut out: Vec<Repair> = writable
        .iter()
        .copied()
        .filter(|&i| i != primary)
        .map(Repair::Fence)
        .collect();
    for (i, s) in servers.iter().enumerate() {
        let Some(f) = s.facts() else { continue };
        if i == primary || !f.read_only || f.source.is_some() {
            continue;
        }
        // Server by server: a former primary's last transactions that never
        // left it are missing here even when the new primary's sequence
        // numbers went past them.
        let extra = f.binlog_state.state_ahead_of(&pf.binlog_state, None, None);
        out.push(match (extra, rejoin) {
            (0, true) => Repair::Rejoin { server: i, primary },
            (0, false) => continue,
            (extra, _) => Repair::ManualRepair { server: i, extra },
        });
    }
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
