//! Backends that move, and members that come and go: a backend's host name
//! resolved again (the backend moves to the new address, its sessions at
//! the old one follow `on_down` once that stops answering; or it keeps its
//! last address and says the name fails), a source's answer (`resolve =
//! "all"`, SRV) and a discovery round, each put in place through the
//! reload's `apply`.

use std::net::SocketAddr;

use super::Control;
use crate::cluster::backend::Override;
use crate::config::{discover, expand, BackendConfig};
use crate::health::probe::{Outcome, Prober};
use crate::inbox::Event;
use crate::vocabulary::OnDown;
use crate::vocabulary::{Origin, OverrideMode};

impl Control {
    /// An answer from the resolver, or a name to pass on to it.
    pub(super) fn resolver_event(&mut self, event: Event) {
        match event {
            Event::Resolved {
                address,
                host,
                result,
            } => self.resolved(&address, &host, result),
            Event::Expanded {
                pool,
                source,
                result,
            } => self.expanded(&pool, &source, result),
            Event::Discovered {
                pool,
                members,
                leaving,
            } => self.discovered(&pool, members, &leaving),
            // Dropped when the resolver is behind: the next failed probe
            // asks again.
            Event::ResolveSoon { address } => drop(self.resolve_soon.try_send(address)),
            _ => {}
        }
    }

    /// Applies what the resolver found for the backend at `address`.
    pub(super) fn resolved(
        &mut self,
        address: &str,
        host: &str,
        result: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(state) = self.registry.get(address).cloned() else {
            return; // gone from the config meanwhile
        };
        let snapshot = self.routes.load();
        let mut names = super::names_of(&snapshot, address);
        names.sort_unstable();
        names.dedup();
        let who = super::who(&names, address);
        let was = state.addr();
        let failing = state.unresolved();
        let text = match result.as_deref() {
            Ok([first, ..]) => {
                if state.set_addr(*first) {
                    tracing::warn!(backend = address, from = %was, to = %first, "backend's host name resolves to a new address: new sessions go there");
                    state.request_probe();
                    self.watch_old_address(address, was);
                    format!(
                        "{who}: {host} now resolves to {first} (was {was}); new sessions go there"
                    )
                } else if failing.is_some() {
                    tracing::info!(backend = address, at = %first, "backend's host name resolves again");
                    format!("{who}: {host} resolves again, to {first}")
                } else {
                    return;
                }
            }
            Ok([]) => return,
            Err(why) => {
                state.set_unresolved(why);
                if failing.as_deref() == Some(why.as_str()) {
                    return;
                }
                tracing::warn!(backend = address, at = %was, "backend's host name does not resolve, keeping its last address: {why}");
                format!("{who}: {host} does not resolve ({why}); keeping {was}")
            }
        };
        self.shared.timeline.push("dns", text);
    }

    /// Puts what source `source` of `pool` gives now in place of what it
    /// gave: members it no longer gives leave as a reload removes them
    /// (`on_remove`), new ones are probed. A failed lookup keeps them.
    fn expanded(&mut self, pool: &str, source: &str, result: Result<Vec<BackendConfig>, String>) {
        let failure = result.as_ref().err().map(String::as_str);
        if self.memory.source_answered(pool, source, failure) {
            let text = match failure {
                Some(why) => {
                    tracing::warn!(
                        pool,
                        source,
                        "lookup failed, the members it gave stay: {why}"
                    );
                    format!("{pool}: {source} does not resolve ({why}); the members it gave stay")
                }
                None => {
                    tracing::info!(pool, source, "resolves again");
                    format!("{pool}: {source} resolves again")
                }
            };
            self.shared.timeline.push("dns", text);
        }
        let Ok(members) = result else {
            return; // said above when it started failing
        };
        let mut config = self.running_config();
        let Some(p) = config.pools.get_mut(pool) else {
            return;
        };
        if !p.sources.iter().any(|s| s.key == source) {
            return; // gone from the config meanwhile
        }
        if !expand::replace(p, source, members) {
            return;
        }
        let n = p
            .backends
            .iter()
            .filter(|b| b.source.as_deref() == Some(source))
            .count();
        match self.apply(config) {
            Ok(diff) if diff.is_empty() => {}
            Ok(diff) => {
                tracing::warn!(pool, source, members = n, "members changed: {diff}");
                self.shared.timeline.push(
                    "dns",
                    format!("{pool}: {source} gives {n} member(s): {diff}"),
                );
            }
            Err(e) => tracing::error!(pool, source, "members not changed: {e}"),
        }
    }

    /// Puts what discovery found in place of what it found before, drains
    /// the members the cluster no longer lists and lets those listed again
    /// take sessions.
    fn discovered(&mut self, pool: &str, members: Vec<BackendConfig>, leaving: &[String]) {
        let mut config = self.running_config();
        let Some(p) = config.pools.get_mut(pool).filter(|p| p.discover.is_some()) else {
            return;
        };
        if expand::replace(p, discover::SOURCE, members) {
            match self.apply(config) {
                Ok(diff) if diff.is_empty() => {}
                Ok(diff) => {
                    tracing::warn!(pool, "discovered members changed: {diff}");
                    self.shared
                        .timeline
                        .push("discovery", format!("{pool}: {diff}"));
                }
                Err(e) => tracing::error!(pool, "discovered members not changed: {e}"),
            }
        }
        let snapshot = self.routes.load_full();
        let Some(p) = snapshot.pool(pool) else { return };
        let now = std::time::Instant::now();
        for m in p.members.iter().filter(|m| m.origin == Origin::Discovered) {
            let gone = leaving.contains(&m.state.address);
            let current = m.state.admin_override(now);
            let ours = current
                .as_ref()
                .is_some_and(|o| o.origin == LEFT_THE_CLUSTER);
            if gone && current.is_none() {
                m.state.set_admin_override(Some(Override {
                    mode: OverrideMode::Drain,
                    origin: LEFT_THE_CLUSTER.to_owned(),
                    since_unix: crate::replication::report::unix_now(),
                    until: None,
                }));
                tracing::warn!(pool, backend = %m.name, "the cluster no longer lists it: drained until forget_after");
                self.shared.timeline.push(
                    "discovery",
                    format!(
                        "{pool}: {} left the cluster: drained, dropped after forget_after",
                        m.name
                    ),
                );
            } else if !gone && ours {
                m.state.set_admin_override(None);
                tracing::info!(pool, backend = %m.name, "the cluster lists it again");
                self.shared.timeline.push(
                    "discovery",
                    format!("{pool}: {} is back in the cluster", m.name),
                );
            }
        }
    }

    /// The running config with each member at the address it resolves to
    /// now (the config keeps the one found when it was applied): what a
    /// change of members is applied to, so that it moves no backend back.
    fn running_config(&self) -> crate::config::Config {
        let snapshot = self.routes.load_full();
        let mut config = (*snapshot.config).clone();
        for (name, pool) in &mut config.pools {
            if let Some(now) = snapshot.pool(name) {
                *pool = now.config_now();
            }
        }
        config
    }

    /// Watches the former address of each backend that a config just
    /// applied moved (its name resolved elsewhere at the load); `before`:
    /// where each was reached until then.
    pub(super) fn watch_moved(&self, before: Vec<(String, SocketAddr)>) {
        for (address, was) in before {
            if self.registry.get(&address).is_some_and(|s| s.addr() != was) {
                self.watch_old_address(&address, was);
            }
        }
    }

    /// The sessions open at `old` when the backend at `address` moved
    /// keep their own evict token; a task probes `old` and, once it fails
    /// the check's `fall` probes in a row, closes them per each pool's
    /// `on_down`, as if the backend had gone down. It ends then, when the
    /// backend moves back to `old`, or at shutdown.
    fn watch_old_address(&self, address: &str, old: SocketAddr) {
        let snapshot = self.routes.load_full();
        let mut tokens = Vec::new();
        let mut check = None;
        for pool in snapshot.pools() {
            for m in pool.members.iter().filter(|m| m.state.address == address) {
                tokens.push((pool.config.routing.on_down, m.decision.take_evict_token()));
                let host = pool
                    .config
                    .backends
                    .iter()
                    .find(|b| b.address.text == address)
                    .map_or("", |b| b.address.host.as_str());
                check.get_or_insert_with(|| {
                    let prober =
                        Prober::new(&pool.config.check, host, pool.config.routing.send_proxy);
                    (
                        prober,
                        pool.config.check.clone(),
                        std::sync::Arc::clone(&m.state),
                    )
                });
            }
        }
        let Some((Ok(prober), check, state)) = check else {
            return;
        };
        let stop = self.life.stop_checks.child_token();
        let address = address.to_owned();
        self.life.tasks.spawn(async move {
            let mut failed = 0;
            while failed < check.fall {
                let pause = tokio::time::sleep(check.interval);
                if stop.run_until_cancelled(pause).await.is_none() || state.addr() == old {
                    return;
                }
                match prober.probe(old).await {
                    Outcome::Pass { .. } | Outcome::Full { .. } => failed = 0,
                    Outcome::Fail { .. } => failed += 1,
                    Outcome::Skipped { .. } => {} // neither: the next one says
                }
            }
            tracing::warn!(backend = %address, at = %old, "the backend's former address stopped answering: its sessions there follow on_down");
            for (policy, token) in tokens {
                match policy {
                    OnDown::Keep => {}
                    OnDown::Close => token.cancel(),
                    OnDown::Drain(grace) => {
                        tokio::time::sleep(grace).await;
                        token.cancel();
                    }
                }
            }
        });
    }
}

/// The origin of the drain discovery puts on a member that left.
const LEFT_THE_CLUSTER: &str = "discovery: the cluster no longer lists it";
