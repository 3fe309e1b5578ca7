//! The config file as written: serde structures that mirror the TOML.
//!
//! Every table denies unknown keys, and the value types check what they can
//! while the parser still knows the line (weights, durations, addresses), so
//! most mistakes are reported with a line number. Cross-references (a listener
//! naming a pool, duplicate names) are checked in `validate`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::duration::ConfigDuration;
use crate::vocabulary::{
    Balance, Failback, Fallback, LagUnknown, MultipleWriters, OnDown, PoolRole, Tier,
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub shutdown_grace: Option<ConfigDuration>,
    pub reload_poll: Option<ConfigDuration>,
    pub workers: Option<i64>,
    pub resolver: Option<String>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pool: BTreeMap<String, RawPool>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Address,
    pub token_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    pub max_connections: Option<u32>,
    pub allowed_hosts: Option<Vec<String>>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: Address,
    pub pool: String,
    pub max_connections: Option<u32>,
    pub idle_timeout: Option<ConfigDuration>,
    pub half_close_timeout: Option<ConfigDuration>,
    pub allow: Option<Vec<super::cidr::Cidr>>,
}

/// One `[pool.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub balance: Option<Balance>,
    pub connect_timeout: Option<ConfigDuration>,
    pub connect_attempts: Option<u32>,
    pub check: Option<RawCheck>,
    pub role: Option<PoolRole>,
    pub on_multiple_writers: Option<MultipleWriters>,
    pub max_lag: Option<ConfigDuration>,
    pub readmit_lag: Option<ConfigDuration>,
    pub lag_unknown: Option<LagUnknown>,
    pub fallback: Option<Fallback>,
    pub on_down: Option<OnDown>,
    pub greeting_gate: Option<bool>,
    pub greeting_timeout: Option<ConfigDuration>,
    pub hold_timeout: Option<ConfigDuration>,
    pub hold_max: Option<u32>,
    pub failback: Option<FailbackSetting>,
    pub flap_threshold: Option<u32>,
    pub flap_window: Option<ConfigDuration>,
    pub flap_hold: Option<ConfigDuration>,
    pub flap_hold_max: Option<ConfigDuration>,
    pub slow_start: Option<ConfigDuration>,
    pub on_primary_return: Option<OnDown>,
    pub on_remove: Option<OnDown>,
    pub send_proxy: Option<ProxyVersion>,
    pub resolve_interval: Option<ConfigDuration>,
    pub resolve: Option<crate::vocabulary::ResolveMode>,
    pub discover: Option<crate::vocabulary::DiscoverMode>,
    pub forget_after: Option<ConfigDuration>,
    pub replication: Option<RawReplication>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    #[serde(default)]
    pub backend_srv: Vec<RawBackendSrv>,
}

/// One `[[pool.NAME.backend_srv]]`: the targets of an SRV record, each a
/// member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendSrv {
    pub name: String,
    pub max_connections: Option<u32>,
}

/// One `[pool.NAME.replication]`: how dbsplice manages a GTID primary and
/// its replicas.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    pub replication_user: Option<String>,
    pub replication_password: Option<String>,
    pub replication_password_file: Option<std::path::PathBuf>,
    pub failover: Option<crate::vocabulary::FailoverMode>,
    pub failover_after: Option<ConfigDuration>,
    pub rejoin: Option<bool>,
    pub lock: Option<crate::vocabulary::LockScope>,
    pub catch_up_timeout: Option<ConfigDuration>,
}

/// `send_proxy`: which PROXY protocol header dbsplice sends to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// `failback`: "auto", "manual" or a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailbackSetting(pub Failback);

impl<'de> Deserialize<'de> for FailbackSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "auto" => Ok(FailbackSetting(Failback::Auto)),
            "manual" => Ok(FailbackSetting(Failback::Manual)),
            other => super::duration::parse_duration(other)
                .map(|d| FailbackSetting(Failback::After(d)))
                .map_err(|_| {
                    de::Error::custom(format!(
                        "\"{other}\" is not a fail-back rule; write \"auto\", \"manual\" or a duration such as \"30s\""
                    ))
                }),
        }
    }
}

impl<'de> Deserialize<'de> for OnDown {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "keep" => Ok(OnDown::Keep),
            "close" => Ok(OnDown::Close),
            other => match other.strip_prefix("drain:") {
                Some(d) => super::duration::parse_duration(d).map(OnDown::Drain).map_err(de::Error::custom),
                None => Err(de::Error::custom(format!(
                    "\"{other}\" is not a session policy; write \"keep\", \"close\" or \"drain:<duration>\" such as \"drain:30s\""
                ))),
            },
        }
    }
}

/// One `[pool.NAME.check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub kind: Option<CheckKind>,
    pub interval: Option<ConfigDuration>,
    pub fast_interval: Option<ConfigDuration>,
    pub down_interval: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    pub tls: Option<TlsSetting>,
    pub ca_file: Option<std::path::PathBuf>,
    pub verify: Option<Verify>,
    pub server_public_key_file: Option<std::path::PathBuf>,
    pub get_server_public_key: Option<bool>,
    pub lag: Option<bool>,
    pub galera: Option<bool>,
    pub galera_donor_ok: Option<bool>,
    pub group_replication: Option<bool>,
}

/// `check.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsSetting {
    /// Plain text only.
    Disabled,
    /// TLS when the server offers it.
    Preferred,
    /// TLS or the check fails.
    Required,
}

/// `check.verify`: how much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// Chain to `ca_file` and the host name.
    Full,
    /// Chain to `ca_file` only (servers whose certificate names another host).
    Ca,
    /// Nothing: encryption without authentication.
    None,
}

/// One `[[pool.NAME.backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: Address,
    pub name: Option<String>,
    pub weight: Option<Weight>,
    pub tier: Option<Tier>,
    pub max_connections: Option<u32>,
    pub candidate: Option<bool>,
}

/// How a backend's health is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// Log in as the check user, COM_PING, learn the role, COM_QUIT.
    Mysql,
    /// A TCP connect. MySQL servers count each one as an aborted handshake.
    Tcp,
}

impl CheckKind {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Mysql => "mysql",
            CheckKind::Tcp => "tcp",
        }
    }
}

/// A backend weight, `1..=256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(pub u32);

/// Highest weight accepted: keeps weighted sums far from overflow.
pub const MAX_WEIGHT: u32 = 256;

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WeightVisitor;
        impl de::Visitor<'_> for WeightVisitor {
            type Value = Weight;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a whole number (integer) from 1 to {MAX_WEIGHT}, written without quotes"
                )
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Weight, E> {
                match u32::try_from(value) {
                    Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(Weight(w)),
                    _ => Err(E::custom(format!(
                        "weight {value} is out of range; write a whole number from 1 to {MAX_WEIGHT} \
                         (to take a backend out of rotation, remove it or make it a standby)"
                    ))),
                }
            }
        }
        deserializer.deserialize_i64(WeightVisitor)
    }
}

/// A `host:port` pair, checked for shape; host names are resolved later.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The text as written, which is also the backend's identity.
    pub text: String,
    /// The host part, without brackets around an IPv6 literal.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Address {
    /// Splits `host:port` (or `[v6]:port`) and checks both halves.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write host:port, for example \"10.0.0.11:3306\", \"db1.example:3306\" or \"[::1]:3306\"";
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, p),
            _ => return Err(format!("\"{text}\" is not an address; {hint}")),
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| format!("\"{text}\" has a malformed IPv6 host; {hint}"))?
        } else if host.contains(':') {
            return Err(format!(
                "\"{text}\": put an IPv6 address in brackets, as in \"[::1]:3306\""
            ));
        } else {
            host
        };
        let valid_name = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !valid_name {
            return Err(format!("\"{text}\" has an invalid host \"{host}\"; {hint}"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("\"{text}\" has an invalid port \"{port}\"; {hint}"))?;
        Ok(Address {
            text: text.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Address::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = [
            ("10.0.0.11:3306", "10.0.0.11", 3306),
            ("db1.example:3307", "db1.example", 3307),
            ("[::1]:3306", "::1", 3306),
            ("127.0.0.1:0", "127.0.0.1", 0),
        ];
        for (text, host, port) in ok {
            let a = Address::parse(text).unwrap();
            assert_eq!((a.host.as_str(), a.port), (host, port), "{text}");
        }
        for bad in [
            "10.0.0.11",
            ":3306",
            "db:",
            "db:99999",
            "::1:3306",
            "[::1:3306",
            "d b:1",
            "[zz]:1",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
