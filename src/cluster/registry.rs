//! Backend states by address and member decisions by pool and address, owned
//! by the control module. Snapshots come and go; the registry keeps each
//! address's `Arc<BackendState>` so health and session counts outlive any one
//! config, and each member's `Arc<MemberState>` so a reload keeps what was
//! decided and which sessions a policy may close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::backend::BackendState;
use super::member::MemberState;
use super::waiting::Waiting;

/// Every backend address the running config knows.
#[derive(Debug, Default)]
pub struct Registry {
    states: HashMap<String, Arc<BackendState>>,
    /// By pool name, then address.
    members: HashMap<(String, String), Arc<MemberState>>,
    /// Held clients, by pool name.
    waiting: HashMap<String, Arc<Waiting>>,
}

impl Registry {
    /// The state for `address`, created if new. A host name that now
    /// resolves elsewhere keeps its state (health, sessions, decisions):
    /// new sessions go to the new address.
    pub fn get_or_insert(&mut self, address: &str, addr: SocketAddr) -> Arc<BackendState> {
        let state = self
            .states
            .entry(address.to_owned())
            .or_insert_with(|| Arc::new(BackendState::new(address.to_owned(), addr)));
        if state.set_addr(addr) {
            tracing::warn!(backend = address, to = %addr, "backend's host name resolves to a new address");
            state.request_probe();
        }
        Arc::clone(state)
    }

    /// The state for `address`, if known.
    pub fn get(&self, address: &str) -> Option<&Arc<BackendState>> {
        self.states.get(address)
    }

    /// The decision for `address` as a member of `pool`, created (not
    /// eligible) if new.
    pub fn member(&mut self, pool: &str, address: &str) -> Arc<MemberState> {
        let key = (pool.to_owned(), address.to_owned());
        Arc::clone(self.members.entry(key).or_default())
    }

    /// The held clients of `pool`, created (none) if new.
    pub fn waiting(&mut self, pool: &str) -> Arc<Waiting> {
        Arc::clone(
            self.waiting
                .entry(pool.to_owned())
                .or_insert_with(|| Arc::new(Waiting::new(pool))),
        )
    }

    /// Forgets what `keep(pool, address)` rejects: members first, then the
    /// addresses no pool has any more (open sessions hold their own
    /// reference, so nothing they use goes away).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.members
            .retain(|(pool, address), _| keep(pool, address));
        let wanted: std::collections::HashSet<&str> =
            self.members.keys().map(|(_, a)| a.as_str()).collect();
        self.states
            .retain(|address, _| wanted.contains(address.as_str()));
        let pools: std::collections::HashSet<&str> =
            self.members.keys().map(|(p, _)| p.as_str()).collect();
        self.waiting.retain(|pool, _| pools.contains(pool.as_str()));
    }

    /// Where each known backend is reached now, by address as written.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.states
            .iter()
            .map(|(address, s)| (address.clone(), s.addr()))
            .collect()
    }

    /// Every known state.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.states.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_address_shares_state() {
        let mut r = Registry::default();
        let addr: SocketAddr = "127.0.0.1:3306".parse().unwrap();
        let a = r.get_or_insert("db:3306", addr);
        let b = r.get_or_insert("db:3306", addr);
        assert!(Arc::ptr_eq(&a, &b));
        let moved = r.get_or_insert("db:3306", "127.0.0.2:3306".parse().unwrap());
        assert!(
            Arc::ptr_eq(&a, &moved),
            "a name that moved is the same backend"
        );
        assert_eq!(a.addr(), "127.0.0.2:3306".parse().unwrap());
    }
}
