//! Backend states by address, owned by the control loop. Snapshots come and
//! go; the registry keeps each address's `Arc<BackendState>` so health and
//! session counts outlive any one config.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::backend::BackendState;

/// Every backend address the running config knows.
#[derive(Debug, Default)]
pub struct Registry {
    states: HashMap<String, Arc<BackendState>>,
}

impl Registry {
    /// The state for `address`, created if new (or if it now resolves elsewhere).
    pub fn get_or_insert(&mut self, address: &str, addr: SocketAddr) -> Arc<BackendState> {
        let state = self
            .states
            .entry(address.to_owned())
            .and_modify(|s| {
                if s.addr != addr {
                    *s = Arc::new(BackendState::new(address.to_owned(), addr));
                }
            })
            .or_insert_with(|| Arc::new(BackendState::new(address.to_owned(), addr)));
        Arc::clone(state)
    }

    /// The state for `address`, if known.
    pub fn get(&self, address: &str) -> Option<&Arc<BackendState>> {
        self.states.get(address)
    }

    /// Forgets addresses for which `keep` is false (open sessions hold their
    /// own reference, so nothing they use goes away).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.states.retain(|address, _| keep(address));
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
        assert!(!Arc::ptr_eq(&a, &moved), "a new resolution is a new server");
    }
}
