//! Replication managed by dbsplice: the control module starts one watcher
//! per `[replication]` pool, and from what the watchers see decides
//! fences, rejoins and automatic failovers; it starts switchovers asked for.
//! Each action runs on a task of its own (the loop keeps deciding; the
//! executor pauses and resumes pools through the inbox like any operator),
//! one action at a time per pool, and its end comes back as an event.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Control;
use crate::replication::plan::{self, Repair, Server};
use crate::replication::report::Report;
use crate::replication::{execute, watch};
use crate::vocabulary::{FailoverMode, Health};

/// No second automatic failover of a pool within this of the last one: a
/// cluster that loses primaries this fast needs a person, not more
/// promotions.
pub const FAILOVER_COOLDOWN: Duration = Duration::from_secs(300);

/// A rejoin that failed is not tried again for this long: its cause (a
/// privilege, a server that refuses) is for a person to fix. (A fence is
/// tried again at every look.)
pub const REPAIR_BACKOFF: Duration = Duration::from_secs(30);

impl Control {
    /// Starts a watcher for each pool with a `[replication]` table that has
    /// none, and stops those of pools that lost theirs.
    pub(super) fn reconcile_watchers(&mut self) {
        let snapshot = self.routes.load_full();
        let wanted: Vec<String> = snapshot
            .pools()
            .filter(|p| p.config.replication.is_some())
            .map(|p| p.config.name.clone())
            .collect();
        self.watchers.retain(|pool, (stop, _)| {
            let keep = wanted.contains(pool);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for pool in wanted {
            if self.watchers.contains_key(&pool) {
                continue;
            }
            let stop = self.life.stop_checks.child_token();
            let now = std::sync::Arc::new(tokio::sync::Notify::new());
            self.watchers
                .insert(pool.clone(), (stop.clone(), std::sync::Arc::clone(&now)));
            let (routes, inbox) = (self.routes.clone(), self.inbox.clone());
            self.life
                .tasks
                .spawn(watch::run(pool, routes, inbox, stop, now));
        }
    }

    /// Has the watchers of the pools with `address` look again at once.
    pub(super) fn poke_watchers(&self, address: &str) {
        let snapshot = self.routes.load();
        for pool in snapshot.pools() {
            if pool.members.iter().any(|m| m.state.address == address) {
                if let Some((_, now)) = self.watchers.get(&pool.config.name) {
                    now.notify_one();
                }
            }
        }
    }

    /// Starts a switchover of pool `name`, or answers at once why not.
    pub(super) fn switchover(
        &mut self,
        name: String,
        to: Option<String>,
        origin: String,
        reply: oneshot::Sender<Report>,
    ) {
        let refuse = |why: String| {
            tracing::warn!(pool = %name, origin = %origin, "switchover refused: {why}");
            Report::refused(&name, &origin, Vec::new(), None, why)
        };
        let (config, admins) = match self.ready_to_act(&name) {
            Ok(ready) => ready,
            Err(why) => {
                let _ = reply.send(refuse(why));
                return;
            }
        };
        tracing::warn!(pool = %name, origin = %origin, to = ?to, "switchover starting");
        self.shared
            .timeline
            .push("admin", format!("{name}: switchover asked by {origin}"));
        self.memory.replication(&name).promoting = true;
        let inbox = self.inbox.clone();
        self.life.tasks.spawn(async move {
            let report = execute::switchover(&config, admins, inbox.clone(), to, origin).await;
            inbox.promotion_done(report, reply).await;
        });
    }

    /// The pool's config and admin logins, when nothing stands in the way of
    /// an action on its replication.
    fn ready_to_act(
        &mut self,
        name: &str,
    ) -> Result<(crate::config::PoolConfig, Vec<crate::health::probe::Prober>), String> {
        let snapshot = self.routes.load();
        let pool = snapshot
            .pool(name)
            .ok_or_else(|| format!("there is no pool named \"{name}\""))?;
        if pool.config.replication.is_none() {
            return Err(format!(
                "pool \"{name}\" has no [pool.{name}.replication] table: dbsplice does not manage its replication"
            ));
        }
        let state = self.memory.replication(name);
        if state.promoting || state.repairing {
            return Err(format!(
                "a switchover, failover or repair of pool \"{name}\" is under way; wait for its report"
            ));
        }
        let admins = execute::admins(&pool.config)?;
        Ok((pool.config_now(), admins))
    }

    /// Records a finished switchover or failover and answers whoever asked.
    pub(super) fn promotion_done(&mut self, report: Report, reply: oneshot::Sender<Report>) {
        let state = self.memory.replication(&report.pool);
        state.promoting = false;
        if report.ok && report.kind == "failover" {
            state.failovers += 1;
            state.quiet_until = Some(Instant::now() + FAILOVER_COOLDOWN);
            state.failover_blocked = None;
        } else if report.ok {
            state.switchovers += 1;
        } else if report.kind == "failover" {
            *state.blocked.entry("attempt_failed").or_default() += 1;
            state.failover_blocked = Some(("attempt_failed", report.summary.clone()));
        }
        // A refusal changed nothing: the last one carried out stays shown.
        if report.carried_out {
            state.last_promotion = Some(report.clone());
        }
        let text = match (&report.from, &report.to) {
            (Some(from), Some(to)) if report.ok => {
                format!("{}: {} from {from} to {to} done", report.pool, report.kind)
            }
            _ => format!(
                "{}: {} did not happen: {}",
                report.pool, report.kind, report.summary
            ),
        };
        if report.ok {
            tracing::warn!(pool = %report.pool, kind = report.kind, from = ?report.from, to = ?report.to, "promotion done");
        } else {
            tracing::error!(pool = %report.pool, kind = report.kind, "promotion did not happen: {}", report.summary);
        }
        self.shared.timeline.push("failover", text);
        let _ = reply.send(report);
    }

    /// What a pool's watcher saw: kept for the status, then fences, rejoins
    /// or a failover when the topology calls for one.
    pub(super) fn topology(&mut self, name: String, servers: Vec<Server>) {
        let Some(rejoin) = self
            .routes
            .load()
            .pool(&name)
            .and_then(|p| p.config.replication.as_ref())
            .map(|r| r.rejoin)
        else {
            return;
        };
        let state = self.memory.replication(&name);
        state.topology = servers.clone();
        if state.promoting || state.repairing {
            return;
        }
        let repairs = plan::repairs(&servers, rejoin);
        let mut manual = std::collections::BTreeMap::new();
        for r in &repairs {
            if let Repair::ManualRepair { server, extra } = r {
                if let Some(s) = servers.get(*server) {
                    manual.insert(s.name.clone(), *extra);
                }
            }
        }
        self.note_manual_repairs(&name, manual);
        // After a failed rejoin, rejoins wait; fences never do.
        let quiet = self
            .memory
            .replication(&name)
            .repair_quiet_until
            .is_some_and(|q| Instant::now() < q);
        let actions: Vec<Repair> = repairs
            .into_iter()
            .filter(|r| match r {
                Repair::ManualRepair { .. } => false,
                Repair::Rejoin { .. } => !quiet,
                Repair::Fence(_) => true,
            })
            .collect();
        if !actions.is_empty() {
            self.repair(name, servers, actions);
            return;
        }
        self.consider_failover(&name, &servers);
    }

    /// Logs the servers left for a person when that list changes.
    fn note_manual_repairs(&mut self, name: &str, manual: std::collections::BTreeMap<String, u64>) {
        let state = self.memory.replication(name);
        if state.manual_repair == manual {
            return;
        }
        for (server, extra) in &manual {
            tracing::error!(pool = name, backend = %server, extra, "manual repair: {server} has {extra} transaction(s) the primary lacks; left read-only and out of rotation");
            self.shared.timeline.push(
                "failover",
                format!("{name}: {server} needs a manual repair: {extra} transaction(s) the primary lacks"),
            );
        }
        self.memory.replication(name).manual_repair = manual;
    }

    /// Fences and rejoins, one after the other on a task of their own.
    fn repair(&mut self, name: String, servers: Vec<Server>, actions: Vec<Repair>) {
        let Ok((config, admins)) = self.ready_to_act(&name) else {
            return;
        };
        self.memory.replication(&name).repairing = true;
        let inbox = self.inbox.clone();
        self.life.tasks.spawn(async move {
            let mut failed = false;
            for action in actions {
                // A fence that fails is tried again at the next look (a
                // writable former primary must not wait); a rejoin waits.
                let rejoin = matches!(action, Repair::Rejoin { .. });
                let (what, result) = match action {
                    Repair::Fence(i) => {
                        let Some(s) = servers.get(i) else { continue };
                        let r = execute::fence(&config, admins.clone(), inbox.clone(), s, i).await;
                        (
                            format!("fenced {} (writable beside the primary)", s.name),
                            r,
                        )
                    }
                    Repair::Rejoin { server, primary } => {
                        let (Some(s), Some(p)) = (servers.get(server), servers.get(primary)) else {
                            continue;
                        };
                        let r =
                            execute::rejoin(&config, admins.clone(), inbox.clone(), s, server, p)
                                .await;
                        (format!("rejoined {} as a replica of {}", s.name, p.name), r)
                    }
                    Repair::ManualRepair { .. } => continue,
                };
                match result {
                    Ok(()) => tracing::warn!(pool = %config.name, "{what}"),
                    Err(why) if rejoin => {
                        failed = true;
                        tracing::error!(pool = %config.name, "not {what}: {why}; tried again in {}s", REPAIR_BACKOFF.as_secs());
                    }
                    Err(why) => tracing::error!(pool = %config.name, "not {what}: {why}"),
                }
            }
            inbox.repairs_done(config.name.clone(), failed).await;
        });
    }

    /// Fences and rejoins of `name` are over.
    pub(super) fn repairs_done(&mut self, name: &str, failed: bool) {
        let state = self.memory.replication(name);
        state.repairing = false;
        state.repair_quiet_until = failed.then(|| Instant::now() + REPAIR_BACKOFF);
    }

    /// Starts a failover of pool `name` when its last primary has failed
    /// every probe for `failover_after` and the topology allows one;
    /// otherwise records why not.
    fn consider_failover(&mut self, name: &str, servers: &[Server]) {
        let snapshot = self.routes.load_full();
        let Some(pool) = snapshot.pool(name) else {
            return;
        };
        let Some(r) = pool.config.replication.as_ref() else {
            return;
        };
        if r.failover != FailoverMode::Auto {
            return;
        }
        // The last writer; for an instance that has seen none (started while
        // the primary was dead), the server the replicas follow.
        let old = match self.memory.pool(name).last_writer.clone() {
            Some(primary) => pool.members.iter().position(|m| m.state.address == primary),
            None => plan::followed(servers),
        };
        let Some((old, primary)) = old.and_then(|i| Some((i, pool.members.get(i)?))) else {
            return;
        };
        let primary = primary.state.address.clone();
        let down_long_enough = pool
            .members
            .get(old)
            .is_some_and(|m| m.state.health() == Health::Down)
            && self
                .memory
                .down_since(&primary)
                .is_some_and(|since| since.elapsed() >= r.failover_after);
        let state = self.memory.replication(name);
        if !down_long_enough || state.quiet_until.is_some_and(|q| Instant::now() < q) {
            return;
        }
        match plan::failover(servers, old) {
            Ok(plan) => self.start_failover(name, servers.to_vec(), plan),
            Err(blocked) => self.failover_blocked(name, &blocked),
        }
    }

    fn failover_blocked(&mut self, name: &str, blocked: &plan::Blocked) {
        let state = self.memory.replication(name);
        let text = blocked.to_string();
        if state.failover_blocked.as_ref().map(|(_, t)| t) == Some(&text) {
            return;
        }
        *state.blocked.entry(blocked.label()).or_default() += 1;
        state.failover_blocked = Some((blocked.label(), text.clone()));
        tracing::warn!(pool = name, reason = blocked.label(), "no failover: {text}");
        self.shared
            .timeline
            .push("failover", format!("{name}: no failover: {text}"));
    }

    fn start_failover(&mut self, name: &str, servers: Vec<Server>, plan: plan::FailoverPlan) {
        let Ok((config, admins)) = self.ready_to_act(name) else {
            return;
        };
        let new = servers
            .get(plan.new)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        tracing::warn!(pool = name, candidate = %new, "the primary is dead: failing over");
        self.shared.timeline.push(
            "failover",
            format!("{name}: the primary is dead: promoting {new}"),
        );
        self.memory.replication(name).promoting = true;
        let inbox = self.inbox.clone();
        self.life.tasks.spawn(async move {
            let report = execute::failover(&config, admins, inbox.clone(), &servers, &plan).await;
            let (reply, _) = oneshot::channel();
            inbox.promotion_done(report, reply).await;
        });
    }
}
