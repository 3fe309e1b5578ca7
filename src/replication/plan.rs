//! Who is primary, who may replace it, and what a switchover does: pure
//! decisions over what each server said, each refusal typed with its reason.

use super::gtid::GtidPos;
use crate::vocabulary::Tier;

/// What one server said when dbsplice looked, or why it could not look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// It answered.
    Answered(ServerFacts),
    /// It did not; in words.
    Unreachable(String),
}

/// One server's replication facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// `@@server_id`.
    pub server_id: u32,
    /// `read_only` is on.
    pub read_only: bool,
    /// `@@gtid_binlog_pos`: what it has written to its binary log.
    pub binlog_pos: GtidPos,
    /// `@@gtid_current_pos`: the most recent of its own and its applied
    /// transactions.
    pub current_pos: GtidPos,
    /// Whom it replicates from, if anyone.
    pub source: Option<Source>,
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
}

impl Server {
    fn facts(&self) -> Option<&ServerFacts> {
        match &self.seen {
            Seen::Answered(f) => Some(f),
            Seen::Unreachable(_) => None,
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

/// Plans a switchover from the one writable server to `to` (or, without it,
/// the most advanced replica that may be promoted; ties by tier, then by
/// config order).
pub fn switchover(servers: &[Server], to: Option<&str>) -> Result<SwitchoverPlan, Refusal> {
    let writable: Vec<usize> = (0..servers.len())
        .filter(|&i| {
            servers
                .get(i)
                .and_then(Server::facts)
                .is_some_and(|f| !f.read_only)
        })
        .collect();
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

/// Whether `server` may replace the primary whose facts are `primary`.
fn promotable<'a>(server: &'a Server, primary: &ServerFacts) -> Result<&'a ServerFacts, String> {
    let facts = match &server.seen {
        Seen::Answered(f) => f,
        Seen::Unreachable(why) => return Err(format!("unreachable ({why})")),
    };
    if !server.candidate {
        return Err("candidate = false in the config".into());
    }
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
    let errant = facts.current_pos.ahead_of(&primary.binlog_pos);
    if errant > 0 {
        return Err(format!(
            "it has {errant} transaction(s) the primary lacks (errant GTIDs, {} against {})",
            facts.current_pos, primary.binlog_pos
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

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
