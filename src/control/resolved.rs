//! A backend's host name resolved again: the backend moves to the new
//! address (new sessions and probes go there; open sessions stay where
//! they are), or keeps its last one and says the name fails.

use std::net::SocketAddr;

use super::Control;
use crate::inbox::Event;

impl Control {
    /// An answer from the resolver, or a name to pass on to it.
    pub(super) fn resolver_event(&mut self, event: Event) {
        match event {
            Event::Resolved {
                address,
                host,
                result,
            } => self.resolved(&address, &host, result),
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
}
