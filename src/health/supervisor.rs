//! Keeps exactly one checker task per backend address. Pools that list the
//! same address have the same check settings (the config refuses others),
//! except `lag`, which is asked when any of them asks.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::checker::Checker;
use super::histograms::ProbeHistograms;
use super::probe::Prober;
use crate::cluster::{BackendState, Registry};
use crate::config::{BackendConfig, CheckConfig, Config, ProxyVersion};
use crate::inbox::Inbox;
use crate::vocabulary::Health;

/// Probes in flight at once across all backends: a large pool does not open
/// hundreds of connections in the same instant.
const MAX_PROBES_IN_FLIGHT: usize = 64;

/// The running checkers.
#[derive(Debug)]
pub struct Supervisor {
    checkers: HashMap<String, (Settings, CancellationToken)>,
    slots: Arc<Semaphore>,
    inbox: Inbox,
    histograms: Arc<ProbeHistograms>,
}

impl Supervisor {
    /// A supervisor whose checkers tell the control module's `inbox` about
    /// every change.
    pub fn new(inbox: Inbox, histograms: Arc<ProbeHistograms>) -> Supervisor {
        let slots = Arc::new(Semaphore::new(MAX_PROBES_IN_FLIGHT));
        Supervisor {
            checkers: HashMap::new(),
            slots,
            histograms,
            inbox,
        }
    }

    /// Starts checkers for new addresses, restarts those whose settings (or
    /// state, after a new resolution) changed, and stops those no longer
    /// configured. A restarted checker carries on from the backend's state.
    pub fn reconcile(
        &mut self,
        config: &Config,
        registry: &Registry,
        tasks: &TaskTracker,
        parent: &CancellationToken,
    ) {
        let wanted = wanted(config, registry);
        self.checkers.retain(|address, (running, stop)| {
            let keep = wanted
                .get(address.as_str())
                .is_some_and(|(w, _)| w == running);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (address, (settings, backend)) in wanted {
            if self.checkers.contains_key(address) {
                continue;
            }
            let stop = parent.child_token();
            self.spawn(address, &settings, backend, tasks, &stop);
            self.checkers.insert(address.to_owned(), (settings, stop));
        }
    }

    /// Starts the checker for `address`, or marks it down when its check
    /// cannot be built.
    fn spawn(
        &self,
        address: &str,
        settings: &Settings,
        backend: &BackendConfig,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) {
        let state = &settings.state;
        match Prober::new(&settings.check, &backend.address.host, settings.proxy) {
            Ok(prober) => {
                let checker = Checker {
                    state: Arc::clone(state),
                    check: settings.check.clone(),
                    prober,
                    slots: Arc::clone(&self.slots),
                    inbox: self.inbox.clone(),
                    histograms: Arc::clone(&self.histograms),
                    named: backend.address.host.parse::<std::net::IpAddr>().is_err(),
                };
                tasks.spawn(checker.run(stop.clone()));
            }
            Err(reason) => {
                tracing::error!(backend = %address, "health check misconfigured: {reason}");
                state.set_health(Health::Down, &format!("check misconfigured: {reason}"));
                self.inbox.health_changed(
                    address,
                    Some(super::state::Transition {
                        from: Health::Unknown,
                        to: Health::Down,
                    }),
                );
            }
        }
    }
}

/// The checker each configured address needs. Pools that share a server
/// agree on its check (the config says so), but for lag: asked when any of
/// them asks.
fn wanted<'a>(
    config: &'a Config,
    registry: &Registry,
) -> HashMap<&'a str, (Settings, &'a BackendConfig)> {
    let mut wanted: HashMap<&str, (Settings, &BackendConfig)> = HashMap::new();
    for pool in config.pools.values() {
        for b in &pool.backends {
            let Some(state) = registry.get(&b.address.text) else {
                continue;
            };
            let settings = Settings {
                check: pool.check.clone(),
                proxy: pool.routing.send_proxy,
                state: Arc::clone(state),
            };
            wanted
                .entry(b.address.text.as_str())
                .and_modify(|(first, _)| {
                    if let (Some(m), Some(n)) = (first.check.mysql.as_mut(), &pool.check.mysql) {
                        m.lag |= n.lag;
                    }
                })
                .or_insert((settings, b));
        }
    }
    wanted
}

/// What a checker was started with; any difference restarts it.
#[derive(Debug)]
struct Settings {
    check: CheckConfig,
    proxy: Option<ProxyVersion>,
    state: Arc<BackendState>,
}

impl PartialEq for Settings {
    fn eq(&self, other: &Settings) -> bool {
        self.check == other.check
            && self.proxy == other.proxy
            && Arc::ptr_eq(&self.state, &other.state)
    }
}
