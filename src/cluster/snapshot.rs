//! The routing snapshot: an immutable picture of listeners, pools and their
//! backends, built once per config and replaced whole by the control module.
//! Nothing in it changes after it is stored: a session loads it once and reads
//! live health and counts through each member's `Arc<BackendState>`, and the
//! control module's decision through its `Arc<MemberState>`. What the
//! controller remembers between decisions lives in the control module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::balance::{self, Candidate, PickState};
use crate::config::{Config, ListenerConfig, PoolConfig};
use crate::vocabulary::Tier;

use super::backend::BackendState;
use super::member::MemberState;
use super::registry::Registry;
use super::waiting::Waiting;

/// One generation of the routing structure.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with each applied config.
    pub generation: u64,
    /// The config this snapshot was built from.
    pub config: Arc<Config>,
    pools: HashMap<String, Arc<Pool>>,
}

/// A pool ready to route: its settings, members and balancing state.
#[derive(Debug)]
pub struct Pool {
    /// Settings from the config.
    pub config: PoolConfig,
    /// Backends in config order.
    pub members: Vec<Member>,
    pick_state: Mutex<PickState>,
    /// Its held clients, shared with the pool of the same name in every
    /// snapshot.
    pub waiting: Arc<Waiting>,
}

/// One backend as a member of a pool.
#[derive(Debug)]
pub struct Member {
    /// The backend's name in this pool.
    pub name: String,
    /// Its weight in this pool.
    pub weight: u32,
    /// Its tier in this pool.
    pub tier: Tier,
    /// Sessions it takes at most (its own `max_connections`).
    pub max_connections: Option<u32>,
    /// The pool's slow start.
    pub slow_start: Option<std::time::Duration>,
    /// Where it came from.
    pub origin: crate::vocabulary::Origin,
    /// Live state shared with the checker and other pools.
    pub state: Arc<BackendState>,
    /// The control module's decision for this backend in this pool.
    pub decision: Arc<MemberState>,
}

impl Member {
    /// Whether the controller lets new sessions come here.
    pub fn is_eligible(&self) -> bool {
        self.decision.is_eligible()
    }

    /// The token a new session on this member watches.
    pub fn evict_token(&self) -> CancellationToken {
        self.decision.evict_token()
    }
}

impl Candidate for Member {
    fn weight(&self) -> u32 {
        match self.slow_start {
            None => self.weight,
            Some(window) => balance::ramped_weight(self.weight, self.state.recovered_for(), window),
        }
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn active(&self) -> u64 {
        self.state.active()
    }
    fn eligible(&self) -> bool {
        self.is_eligible()
            && !self.state.is_full()
            && self
                .max_connections
                .is_none_or(|max| self.state.active() < u64::from(max))
    }
}

impl Snapshot {
    /// Builds the snapshot for `config`, taking each backend's state and
    /// each pool member's decision from the registry (created there when
    /// new), so a reload changes only what it must.
    pub fn build(config: Arc<Config>, generation: u64, registry: &mut Registry) -> Snapshot {
        let pools = config
            .pools
            .values()
            .map(|p| (p.name.clone(), Arc::new(Pool::build(p, registry))))
            .collect();
        tell_backends_their_waiters(&pools);
        Snapshot {
            generation,
            config,
            pools,
        }
    }

    /// Every pool.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// A listener's settings by name.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.config.listeners.iter().find(|l| l.name == name)
    }

    /// The live state of the backend at `address` (as written in the config).
    pub fn backend(&self, address: &str) -> Option<&Arc<BackendState>> {
        self.pools()
            .flat_map(|p| p.members.iter())
            .map(|m| &m.state)
            .find(|s| s.address == address)
    }
}

/// Hands each backend the held clients of the pools that have it, so that a
/// session ending there gives one of them a turn.
fn tell_backends_their_waiters(pools: &HashMap<String, Arc<Pool>>) {
    let mut waiters: HashMap<&str, (&Arc<BackendState>, Vec<Arc<Waiting>>)> = HashMap::new();
    for pool in pools.values() {
        for member in &pool.members {
            let entry = waiters
                .entry(member.state.address.as_str())
                .or_insert_with(|| (&member.state, Vec::new()));
            if !entry.1.iter().any(|w| Arc::ptr_eq(w, &pool.waiting)) {
                entry.1.push(Arc::clone(&pool.waiting));
            }
        }
    }
    for (state, list) in waiters.into_values() {
        state.set_waiters(list);
    }
}

impl Pool {
    /// The pool's settings with each backend's address as it resolves now
    /// (the config's is the one found when it was loaded).
    pub fn config_now(&self) -> PoolConfig {
        let mut config = self.config.clone();
        for (b, m) in config.backends.iter_mut().zip(&self.members) {
            b.addr = m.state.addr();
        }
        config
    }

    fn build(config: &PoolConfig, registry: &mut Registry) -> Pool {
        let members: Vec<Member> = config
            .backends
            .iter()
            .map(|b| Member {
                name: b.name.clone(),
                weight: b.weight,
                tier: b.tier,
                max_connections: b.max_connections,
                slow_start: config.routing.slow_start,
                origin: b.origin,
                state: registry.get_or_insert(&b.address.text, b.addr),
                decision: registry.member(&config.name, &b.address.text),
            })
            .collect();
        Pool {
            config: config.clone(),
            members,
            pick_state: Mutex::new(PickState::default()),
            waiting: registry.waiting(&config.name),
        }
    }

    /// The member backed by `state`, if this pool has it.
    pub fn member_for(&self, state: &Arc<BackendState>) -> Option<&Member> {
        self.members.iter().find(|m| Arc::ptr_eq(&m.state, state))
    }

    /// Picks a member for a new session, skipping the `excluded` indexes.
    pub fn pick(&self, excluded: &[usize]) -> Option<usize> {
        let mut state = self
            .pick_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        balance::pick(self.config.balance, &self.members, excluded, &mut state)
    }
}
