//! What a reload changes: two configs in, a list of differences out. Pure,
//! so the reload log line, `dbsplice check --diff` and the apply step agree.

use std::collections::BTreeMap;
use std::fmt;

use super::{BackendConfig, Config, PoolConfig};

/// The differences between a running config and a new one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Listeners only in the new config, by name.
    pub listeners_added: Vec<String>,
    /// Listeners only in the old config.
    pub listeners_removed: Vec<String>,
    /// Listeners in both whose settings differ (an address change rebinds).
    pub listeners_changed: Vec<String>,
    /// Pools only in the new config.
    pub pools_added: Vec<String>,
    /// Pools only in the old config.
    pub pools_removed: Vec<String>,
    /// Pools in both whose own settings differ (balance, check, routing...).
    pub pools_changed: Vec<String>,
    /// `pool/backend-name` of backends added to a pool that stays.
    pub backends_added: Vec<String>,
    /// ... removed from a pool that stays.
    pub backends_removed: Vec<String>,
    /// ... whose weight, tier, name or limit changed.
    pub backends_changed: Vec<String>,
    /// Top-level settings that changed.
    pub settings_changed: Vec<String>,
}

impl ConfigDiff {
    /// Compares `old` with `new`.
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let mut d = ConfigDiff::default();
        if old.shutdown_grace != new.shutdown_grace {
            d.settings_changed.push("shutdown_grace".to_owned());
        }
        if old.reload_poll != new.reload_poll {
            d.settings_changed.push("reload_poll".to_owned());
        }
        if old.resolver != new.resolver {
            d.settings_changed.push("resolver".to_owned());
        }
        if old.workers != new.workers {
            // The threads are started once, at start.
            d.settings_changed
                .push("workers (takes effect after a restart)".to_owned());
        }
        let admin_addr = |c: &Config| c.admin.as_ref().map(|a| a.addr);
        if admin_addr(old) != admin_addr(new) {
            // The admin server is bound once, at start.
            d.settings_changed
                .push("admin.listen (takes effect after a restart)".to_owned());
        }
        if old.admin != new.admin && admin_addr(old) == admin_addr(new) {
            d.settings_changed
                .push("admin (token or certificate)".to_owned());
        }
        let old_listeners: BTreeMap<&str, _> =
            old.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
        let new_listeners: BTreeMap<&str, _> =
            new.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
        for (name, l) in &new_listeners {
            match old_listeners.get(name) {
                None => d.listeners_added.push((*name).to_owned()),
                Some(o) if o != l => d.listeners_changed.push((*name).to_owned()),
                Some(_) => {}
            }
        }
        d.listeners_removed = old_listeners
            .keys()
            .filter(|n| !new_listeners.contains_key(*n))
            .map(|n| (*n).to_owned())
            .collect();
        for (name, pool) in &new.pools {
            match old.pools.get(name) {
                None => d.pools_added.push(name.clone()),
                Some(o) => d.compare_pool(o, pool),
            }
        }
        d.pools_removed = old
            .pools
            .keys()
            .filter(|n| !new.pools.contains_key(*n))
            .cloned()
            .collect();
        d
    }

    fn compare_pool(&mut self, old: &PoolConfig, new: &PoolConfig) {
        let settings = |p: &PoolConfig| {
            (
                p.balance,
                p.connect_timeout,
                p.connect_attempts,
                p.check.clone(),
                p.routing.clone(),
                p.replication.clone(),
                (
                    p.resolve_interval,
                    p.sources.clone(),
                    p.discover,
                    p.forget_after,
                ),
            )
        };
        if settings(old) != settings(new) {
            self.pools_changed.push(new.name.clone());
        }
        let by_address = |p: &PoolConfig| -> BTreeMap<String, BackendConfig> {
            p.backends
                .iter()
                .map(|b| (b.address.text.clone(), b.clone()))
                .collect()
        };
        let (before, after) = (by_address(old), by_address(new));
        let order = |p: &PoolConfig| {
            p.backends
                .iter()
                .map(|b| b.address.text.clone())
                .collect::<Vec<_>>()
        };
        for (address, b) in &after {
            match before.get(address) {
                None => self.backends_added.push(format!("{}/{}", new.name, b.name)),
                Some(o) if o != b => self
                    .backends_changed
                    .push(format!("{}/{}", new.name, b.name)),
                Some(_) => {}
            }
        }
        for (address, b) in &before {
            if !after.contains_key(address) {
                self.backends_removed
                    .push(format!("{}/{}", old.name, b.name));
            }
        }
        if order(old) != order(new) && before.len() == after.len() && before.keys().eq(after.keys())
        {
            // Same backends in another order: it changes deterministic writer choice.
            self.pools_changed
                .push(format!("{} (backend order)", new.name));
        }
    }

    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self == &ConfigDiff::default()
    }
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let parts = [
            ("listeners added", &self.listeners_added),
            ("listeners removed", &self.listeners_removed),
            ("listeners changed", &self.listeners_changed),
            ("pools added", &self.pools_added),
            ("pools removed", &self.pools_removed),
            ("pools changed", &self.pools_changed),
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
            ("backends changed", &self.backends_changed),
            ("settings changed", &self.settings_changed),
        ];
        let text: Vec<String> = parts
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(what, v)| format!("{what}: {}", v.join(", ")))
            .collect();
        f.write_str(&text.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra_backend: &str, weight: u32, grace: &str) -> Config {
        let text = format!(
            "shutdown_grace = \"{grace}\"\n[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pool.p]\n[pool.p.check]\nkind = \"tcp\"\n[[pool.p.backend]]\naddress = \"127.0.0.1:3306\"\nname = \"a\"\n\
             weight = {weight}\n{extra_backend}"
        );
        Config::from_toml(
            Path::new("t.toml"),
            &text,
            &crate::config::load::resolve_system,
        )
        .unwrap()
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let base = config("", 1, "30s");
        assert!(ConfigDiff::between(&base, &base).is_empty());
        assert_eq!(ConfigDiff::between(&base, &base).to_string(), "no change");
        let added = config(
            "[[pool.p.backend]]\naddress = \"127.0.0.1:3307\"\nname = \"b\"\n",
            1,
            "30s",
        );
        let d = ConfigDiff::between(&base, &added);
        assert_eq!(d.backends_added, ["p/b"]);
        assert_eq!(ConfigDiff::between(&added, &base).backends_removed, ["p/b"]);
        let d = ConfigDiff::between(&base, &config("", 5, "30s"));
        assert_eq!(d.backends_changed, ["p/a"]);
        assert_eq!(d.to_string(), "backends changed: p/a");
        assert_eq!(
            ConfigDiff::between(&base, &config("", 1, "5s")).settings_changed,
            ["shutdown_grace"]
        );
        let mut two = base.clone();
        let mut second = two.listeners[0].clone();
        second.name = "ro".into();
        two.listeners.push(second);
        assert_eq!(ConfigDiff::between(&base, &two).listeners_added, ["ro"]);
        assert_eq!(ConfigDiff::between(&two, &base).listeners_removed, ["ro"]);
        let mut slower = base.clone();
        if let Some(p) = slower.pools.get_mut("p") {
            p.connect_timeout = std::time::Duration::from_secs(9);
        }
        assert_eq!(ConfigDiff::between(&base, &slower).pools_changed, ["p"]);
        let mut discovering = base.clone();
        if let Some(p) = discovering.pools.get_mut("p") {
            p.discover = Some(crate::vocabulary::DiscoverMode::Galera);
            p.resolve_interval = std::time::Duration::from_secs(5);
        }
        assert_eq!(
            ConfigDiff::between(&base, &discovering).pools_changed,
            ["p"]
        );
        let mut asking = base.clone();
        asking.resolver = Some("127.0.0.53:53".parse().unwrap());
        assert_eq!(
            ConfigDiff::between(&base, &asking).settings_changed,
            ["resolver"]
        );
    }
}
