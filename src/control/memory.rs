//! What the control module remembers between two decisions, keyed by pool and
//! backend address so that it survives every reload that keeps the member:
//! fail-back and flap history, lag hysteresis, the current writer, the tier in
//! use, and the counts of failovers and writer changes. The snapshot carries
//! none of it.

use std::collections::{BTreeMap, HashMap};

use crate::admin::shared::PoolView;
use crate::balance::hold;
use crate::handover::format;
use crate::vocabulary::{Health, Tier};

/// The control module's memory.
#[derive(Debug, Default)]
pub struct Memory {
    /// By pool name, then backend address.
    members: HashMap<(String, String), MemberMemory>,
    /// By pool name.
    pools: HashMap<String, PoolMemory>,
    /// By pool name: replication managed by dbsplice.
    replication: HashMap<String, crate::admin::shared::ReplicationState>,
    /// By pool, then source key: why its last lookup failed, while it does.
    source_failures: HashMap<String, BTreeMap<String, String>>,
    /// By backend address: since when its checker has found it down.
    down_since: HashMap<String, tokio::time::Instant>,
    /// What the last decisions changed, in words, for the timeline.
    notes: Vec<(&'static str, String)>,
}

/// What is remembered of one backend in one pool.
#[derive(Debug, Default, Clone)]
pub struct MemberMemory {
    /// Fail-back and flap history.
    pub hold: hold::Memory,
    /// Out of a reader pool for lag at the last decision (hysteresis).
    pub lagged_out: bool,
    /// Held out although healthy at the last decision, and why.
    pub held: Option<hold::Held>,
}

/// What is remembered of one pool.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolMemory {
    /// A writer pool's writer, by address.
    pub writer: Option<String>,
    /// The writable backends when there were several (alerted once per set).
    pub multiple_writers: Vec<String>,
    /// The tier taking new sessions, if any.
    pub tier: Option<Tier>,
    /// A reader pool fell back to its writers.
    pub fallback: bool,
    /// Times new sessions moved to standbys.
    pub failovers: u64,
    /// Times a writer pool's writer changed.
    pub writer_changes: u64,
    /// A writer pool's last writer, kept when there is none any more: the
    /// primary a failover replaces.
    pub last_writer: Option<String>,
}

impl Memory {
    /// The memory of `address` in `pool`, new if never decided.
    pub fn member(&mut self, pool: &str, address: &str) -> &mut MemberMemory {
        self.members
            .entry((pool.to_owned(), address.to_owned()))
            .or_default()
    }

    /// The memory of `pool`, new if never decided.
    pub fn pool(&mut self, pool: &str) -> &mut PoolMemory {
        self.pools.entry(pool.to_owned()).or_default()
    }

    /// The replication state of `pool`, new if never touched.
    pub fn replication(&mut self, pool: &str) -> &mut crate::admin::shared::ReplicationState {
        self.replication.entry(pool.to_owned()).or_default()
    }

    /// Whether a switchover or failover of `pool` is under way.
    pub fn is_promoting(&self, pool: &str) -> bool {
        self.replication.get(pool).is_some_and(|r| r.promoting)
    }

    /// Notes a health transition of `address` for the failover clock.
    pub fn health_changed(&mut self, address: &str, down: bool, now: tokio::time::Instant) {
        if down {
            self.down_since.entry(address.to_owned()).or_insert(now);
        } else {
            self.down_since.remove(address);
        }
    }

    /// Since when `address` has been down, if it is.
    pub fn down_since(&self, address: &str) -> Option<tokio::time::Instant> {
        self.down_since.get(address).copied()
    }

    /// Records a change for the timeline.
    pub fn note(&mut self, kind: &'static str, text: String) {
        self.notes.push((kind, text));
    }

    /// The changes recorded since the last call.
    pub fn take_notes(&mut self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut self.notes)
    }

    /// Lets every held returning member of `pool` back in (manual fail-back).
    pub fn approve_failback(&mut self, pool: &str) {
        for ((p, _), m) in &mut self.members {
            if p == pool {
                m.hold.approve();
            }
        }
    }

    /// Forgets members for which `keep(pool, address)` is false, and pools
    /// without members; a forgotten writer is no writer.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.members
            .retain(|(pool, address), _| keep(pool, address));
        for (pool, memory) in &mut self.pools {
            if memory.writer.as_deref().is_some_and(|w| !keep(pool, w)) {
                memory.writer = None;
            }
        }
        let members = &self.members;
        self.pools
            .retain(|pool, _| members.keys().any(|(p, _)| p == pool));
    }

    /// Records how source `key` of `pool` last answered (`Err`: why it
    /// failed); whether that changed.
    pub fn source_answered(&mut self, pool: &str, key: &str, failure: Option<&str>) -> bool {
        let failures = self.source_failures.entry(pool.to_owned()).or_default();
        let changed = failures.get(key).map(String::as_str) != failure;
        match failure {
            Some(why) => failures.insert(key.to_owned(), why.to_owned()),
            None => failures.remove(key),
        };
        changed
    }

    /// This memory for a hand-over, its moments as ages now, with each
    /// pool's operator pause from `snapshot`.
    pub fn carried(&self, snapshot: &crate::cluster::Snapshot) -> format::Memory {
        let now = std::time::Instant::now();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let pools = snapshot
            .pools()
            .map(|p| {
                let name = &p.config.name;
                let m = self.pools.get(name).cloned().unwrap_or_default();
                format::PoolMemory {
                    pool: name.clone(),
                    writer: m.writer,
                    last_writer: m.last_writer,
                    tier: m.tier.map(|t| t.as_str().to_owned()),
                    fallback: m.fallback,
                    failovers: m.failovers,
                    writer_changes: m.writer_changes,
                    paused_ms: p.waiting.paused_for().map(ms),
                }
            })
            .collect();
        let members = self
            .members
            .iter()
            .map(|((pool, address), m)| {
                let aged = m.hold.aged(now);
                format::MemberMemory {
                    pool: pool.clone(),
                    address: address.clone(),
                    lagged_out: m.lagged_out,
                    hold: format::Hold {
                        last: aged.last.map(|h| h.as_str().to_owned()),
                        up_ms: aged.up_for.map(ms),
                        returned: aged.returned,
                        approved: aged.approved,
                        flips_ago_ms: aged.flips_ago.into_iter().map(ms).collect(),
                        damped_ms: aged.damped_for.map(ms),
                        level: aged.level,
                    },
                }
            })
            .collect();
        let tokio_now = tokio::time::Instant::now();
        let down = self
            .down_since
            .iter()
            .map(|(address, since)| format::Down {
                address: address.clone(),
                for_ms: ms(tokio_now.saturating_duration_since(*since)),
            })
            .collect();
        format::Memory {
            pools,
            members,
            down,
        }
    }

    /// Takes on what a former process remembered (see [`Memory::carried`]).
    pub fn restore(&mut self, carried: &format::Memory, snapshot: &crate::cluster::Snapshot) {
        let now = std::time::Instant::now();
        let tokio_now = tokio::time::Instant::now();
        let ms = std::time::Duration::from_millis;
        for p in &carried.pools {
            let memory = self.pool(&p.pool);
            memory.writer = p.writer.clone();
            memory.last_writer = p.last_writer.clone();
            memory.tier = p.tier.as_deref().and_then(|t| match t {
                "primary" => Some(Tier::Primary),
                "standby" => Some(Tier::Standby),
                _ => None,
            });
            memory.fallback = p.fallback;
            memory.failovers = p.failovers;
            memory.writer_changes = p.writer_changes;
            if let (Some(left), Some(pool)) = (p.paused_ms, snapshot.pool(&p.pool)) {
                pool.waiting.pause(tokio_now + ms(left));
            }
        }
        for m in &carried.members {
            let health = |h: &str| match h {
                "up" => Some(Health::Up),
                "down" => Some(Health::Down),
                _ => None,
            };
            let aged = hold::Aged {
                last: m.hold.last.as_deref().and_then(health),
                up_for: m.hold.up_ms.map(ms),
                returned: m.hold.returned,
                approved: m.hold.approved,
                flips_ago: m.hold.flips_ago_ms.iter().copied().map(ms).collect(),
                damped_for: m.hold.damped_ms.map(ms),
                level: m.hold.level,
            };
            let member = self.member(&m.pool, &m.address);
            member.lagged_out = m.lagged_out;
            member.hold = hold::Memory::from_aged(&aged, now);
        }
        for d in &carried.down {
            let since = tokio_now.checked_sub(ms(d.for_ms)).unwrap_or(tokio_now);
            self.down_since.insert(d.address.clone(), since);
        }
    }

    /// What the admin server shows of `pool`.
    pub fn view(&self, pool: &str) -> PoolView {
        let memory = self.pools.get(pool).cloned().unwrap_or_default();
        let mut lagged_out: Vec<String> = self
            .members
            .iter()
            .filter(|((p, _), m)| p == pool && m.lagged_out)
            .map(|((_, address), _)| address.clone())
            .collect();
        lagged_out.sort();
        let held = self
            .members
            .iter()
            .filter(|((p, _), _)| p == pool)
            .filter_map(|((_, address), m)| Some((address.clone(), m.held?.as_str())))
            .collect();
        PoolView {
            held,
            writer: memory.writer,
            tier: memory.tier,
            fallback: memory.fallback,
            lagged_out,
            failovers: memory.failovers,
            writer_changes: memory.writer_changes,
            last_writer: memory.last_writer,
            replication: self.replication.get(pool).cloned().unwrap_or_default(),
            source_failures: self.source_failures.get(pool).cloned().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_member_takes_its_history_and_its_writer_role_along() {
        let mut memory = Memory::default();
        memory.member("w", "db1:3306").lagged_out = true;
        memory.member("w", "db2:3306");
        memory.member("r", "db1:3306").lagged_out = true;
        memory.pool("w").writer = Some("db1:3306".to_owned());
        memory.pool("w").failovers = 3;
        // db1 leaves pool w only.
        memory.retain(|pool, address| !(pool == "w" && address == "db1:3306"));
        assert_eq!(
            memory.pool("w").writer,
            None,
            "a removed writer is no writer"
        );
        assert_eq!(memory.pool("w").failovers, 3, "counts stay with the pool");
        assert!(
            !memory.member("w", "db1:3306").lagged_out,
            "history starts over"
        );
        assert_eq!(
            memory.view("r").lagged_out,
            ["db1:3306"],
            "other pools keep theirs"
        );
        // A pool with no members left is forgotten.
        memory.retain(|pool, _| pool != "r");
        assert_eq!(memory.view("r"), PoolView::default());
    }
}
