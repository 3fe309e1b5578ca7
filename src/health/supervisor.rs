//! Keeps exactly one checker task per backend address, with the check settings
//! of the first pool (by name) that lists the address.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Registry;
use crate::config::{CheckConfig, Config};

/// The running checkers.
#[derive(Debug, Default)]
pub struct Supervisor {
    checkers: HashMap<String, (CheckConfig, CancellationToken)>,
}

impl Supervisor {
    /// Starts checkers for new addresses, restarts those whose settings
    /// changed (keeping their state) and stops those no longer configured.
    pub fn reconcile(
        &mut self,
        config: &Config,
        registry: &Registry,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        let mut wanted: HashMap<&str, &CheckConfig> = HashMap::new();
        for pool in config.pools.values() {
            for b in &pool.backends {
                wanted.entry(b.address.text.as_str()).or_insert(&pool.check);
            }
        }
        self.checkers.retain(|address, (check, stop)| {
            let keep = wanted.get(address.as_str()).is_some_and(|w| *w == check);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (address, check) in wanted {
            if self.checkers.contains_key(address) {
                continue;
            }
            let Some(state) = registry.get(address) else {
                continue;
            };
            let stop = parent.child_token();
            tasks.spawn(super::checker::run(
                state.clone(),
                check.clone(),
                stop.clone(),
            ));
            self.checkers
                .insert(address.to_owned(), (check.clone(), stop));
        }
    }
}
