//! Keeps exactly one checker task per backend address, with the check settings
//! of the first pool (by name) that lists the address.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::checker::Checker;
use super::probe::Prober;
use super::state::Health;
use crate::cluster::Registry;
use crate::config::{BackendConfig, CheckConfig, Config};

/// Probes in flight at once across all backends: a large pool does not open
/// hundreds of connections in the same instant.
const MAX_PROBES_IN_FLIGHT: usize = 64;

/// The running checkers.
#[derive(Debug)]
pub struct Supervisor {
    checkers: HashMap<String, (CheckConfig, CancellationToken)>,
    slots: Arc<Semaphore>,
    changed: Arc<Notify>,
}

impl Supervisor {
    /// A supervisor whose checkers tell `changed` about every change.
    pub fn new(changed: Arc<Notify>) -> Supervisor {
        let slots = Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT));
        Supervisor {
            checkers: HashMap::new(),
            slots,
            changed,
        }
    }

    /// Starts checkers for new addresses, restarts those whose settings
    /// changed (keeping their state) and stops those no longer configured.
    pub fn reconcile(
        &mut self,
        config: &Config,
        registry: &Registry,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        let mut wanted: HashMap<&str, (&CheckConfig, &BackendConfig)> = HashMap::new();
        for pool in config.pools.values() {
            for b in &pool.backends {
                wanted
                    .entry(b.address.text.as_str())
                    .or_insert((&pool.check, b));
            }
        }
        self.checkers.retain(|address, (check, stop)| {
            let keep = wanted
                .get(address.as_str())
                .is_some_and(|(w, _)| *w == check);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (address, (check, backend)) in wanted {
            if self.checkers.contains_key(address) {
                continue;
            }
            let Some(state) = registry.get(address) else {
                continue;
            };
            let stop = parent.child_token();
            match Prober::new(check, &backend.address.host) {
                Ok(prober) => {
                    let slots = Arc::clone(&self.slots);
                    let checker = Checker {
                        state: Arc::clone(state),
                        check: check.clone(),
                        prober,
                        slots,
                        changed: Arc::clone(&self.changed),
                    };
                    tasks.spawn(checker.run(stop.clone()));
                }
                Err(reason) => {
                    tracing::error!(backend = %address, "health check misconfigured: {reason}");
                    state.set_health(Health::Down, &format!("check misconfigured: {reason}"));
                    self.changed.notify_one();
                }
            }
            self.checkers
                .insert(address.to_owned(), (check.clone(), stop));
        }
    }
}
