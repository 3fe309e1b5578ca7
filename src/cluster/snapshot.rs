//! The routing snapshot: an immutable picture of listeners, pools and their
//! backends, replaced whole by the control loop. A session loads it once and
//! reads live health and counts through each member's `Arc<BackendState>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::balance::hold::Memory;
use crate::balance::{self, Candidate, PickState};
use crate::config::{Config, ListenerConfig, PoolConfig};
use crate::vocabulary::Tier;

use super::backend::BackendState;
use super::registry::Registry;

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
    /// What the controller last decided for the whole pool (writer, tier).
    pub decided: Mutex<PoolDecision>,
}

/// The pool-wide part of the controller's last decision, kept to log changes once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolDecision {
    /// A writer pool's writer.
    pub writer: Option<usize>,
    /// The writable backends when there were several (alerted once per set).
    pub multiple_writers: Vec<usize>,
    /// The tier taking new sessions, if any.
    pub tier: Option<Tier>,
    /// A reader pool fell back to its writers.
    pub fallback: bool,
    /// Times new sessions moved to standbys (kept across reloads).
    pub failovers: u64,
    /// Times a writer pool's writer changed (kept across reloads).
    pub writer_changes: u64,
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
    /// Live state shared with the checker and other pools.
    pub state: Arc<BackendState>,
    /// May take new sessions: set by the controller from health, role and lag.
    eligible: AtomicBool,
    /// Out of a reader pool for lag (hysteresis memory).
    lagged_out: AtomicBool,
    /// Cancelled to close this pool's sessions on this backend.
    evict: Mutex<CancellationToken>,
    /// Fail-back and flap history, kept by the controller.
    pub memory: Mutex<Memory>,
}

impl Member {
    /// Whether the controller lets new sessions come here.
    pub fn is_eligible(&self) -> bool {
        self.eligible.load(Ordering::Acquire)
    }

    /// Records the controller's decision; returns the previous one.
    pub fn set_eligible(&self, eligible: bool) -> bool {
        self.eligible.swap(eligible, Ordering::AcqRel)
    }

    /// Whether the last decision took it out for lag.
    pub fn lagged_out(&self) -> bool {
        self.lagged_out.load(Ordering::Acquire)
    }

    /// Records lag hysteresis; returns the previous value.
    pub fn set_lagged_out(&self, out: bool) -> bool {
        self.lagged_out.swap(out, Ordering::AcqRel)
    }

    /// The token a new session on this member watches.
    pub fn evict_token(&self) -> CancellationToken {
        self.evict
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Hands out the token of the sessions open now and gives later sessions a
    /// fresh one; cancelling the returned token closes exactly the former.
    pub fn take_evict_token(&self) -> CancellationToken {
        std::mem::take(&mut *self.evict.lock().unwrap_or_else(PoisonError::into_inner))
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
            && self
                .max_connections
                .is_none_or(|max| self.state.active() < u64::from(max))
    }
}

impl Snapshot {
    /// Builds the snapshot for `config`, taking each backend's state from the
    /// registry (created there if the address is new) and, from `previous`,
    /// what the controller knew about each pool member (same pool, same
    /// address), so a reload changes only what it must.
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        registry: &mut Registry,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let pools = config
            .pools
            .values()
            .map(|p| {
                let before = previous.and_then(|s| s.pool(&p.name)).map(Arc::as_ref);
                (p.name.clone(), Arc::new(Pool::build(p, registry, before)))
            })
            .collect();
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
}

impl Pool {
    fn build(config: &PoolConfig, registry: &mut Registry, previous: Option<&Pool>) -> Pool {
        let members: Vec<Member> = config
            .backends
            .iter()
            .map(|b| {
                let state = registry.get_or_insert(&b.address.text, b.addr);
                let before = previous.and_then(|p| p.member_for(&state));
                Member {
                    name: b.name.clone(),
                    weight: b.weight,
                    tier: b.tier,
                    max_connections: b.max_connections,
                    slow_start: config.routing.slow_start,
                    eligible: AtomicBool::new(before.is_some_and(Member::is_eligible)),
                    lagged_out: AtomicBool::new(before.is_some_and(Member::lagged_out)),
                    // The same token: sessions opened before the reload stay
                    // reachable by the pool's policies.
                    evict: Mutex::new(before.map(Member::evict_token).unwrap_or_default()),
                    memory: Mutex::new(
                        before
                            .map(|m| {
                                m.memory
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .clone()
                            })
                            .unwrap_or_default(),
                    ),
                    state,
                }
            })
            .collect();
        // The writer stays the writer across a reload, wherever it now sits.
        let counts = previous.map(|p| {
            let d = p.decided.lock().unwrap_or_else(PoisonError::into_inner);
            (d.failovers, d.writer_changes)
        });
        let writer = previous.and_then(|p| {
            let decided = p.decided.lock().unwrap_or_else(PoisonError::into_inner);
            let state = &p.members.get(decided.writer?)?.state;
            members.iter().position(|m| Arc::ptr_eq(&m.state, state))
        });
        Pool {
            config: config.clone(),
            members,
            pick_state: Mutex::new(PickState::default()),
            decided: Mutex::new(PoolDecision {
                writer,
                failovers: counts.map_or(0, |c| c.0),
                writer_changes: counts.map_or(0, |c| c.1),
                ..PoolDecision::default()
            }),
        }
    }

    /// The member backed by `state`, if this pool has it.
    pub fn member_for(&self, state: &Arc<BackendState>) -> Option<&Member> {
        self.members.iter().find(|m| Arc::ptr_eq(&m.state, state))
    }

    /// Lets members held back after returning from down take traffic again
    /// (`failback = "manual"`); returns how many were held.
    pub fn approve_failback(&self) -> usize {
        self.members
            .iter()
            .filter(|m| {
                let mut memory = m.memory.lock().unwrap_or_else(PoisonError::into_inner);
                memory.approve();
                m.state.health() == crate::vocabulary::Health::Up && !m.is_eligible()
            })
            .count()
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
