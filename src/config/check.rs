//! `[pool.NAME.check]`: how a pool's backends are probed, validated from the
//! file. The files a check refers to (password, CA, server key) are read by
//! [`super::load`], relative to the config file's directory.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{CheckKind, RawCheck, TlsSetting, Verify};
use super::validate::Problems;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;

/// A pool's health check settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// What a probe does.
    pub kind: CheckKind,
    /// Time between probes of a backend in a steady state.
    pub interval: Duration,
    /// Time between probes while a backend is between states (some passes
    /// towards `rise`, or failures towards `fall`).
    pub fast_interval: Duration,
    /// Time between probes while a backend is down.
    pub down_interval: Duration,
    /// Deadline for one whole probe.
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// MySQL-protocol settings, for `kind = "mysql"`.
    pub mysql: Option<MysqlCheck>,
}

/// How the MySQL-protocol check logs in and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct MysqlCheck {
    /// The check user.
    pub user: String,
    /// Its password, from `password` or `password_file`.
    pub password: Secret,
    /// Where the password is read from, if from a file.
    pub password_file: Option<PathBuf>,
    /// TLS use.
    pub tls: TlsSetting,
    /// CA certificates (PEM file) that the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// How much of the certificate is verified.
    pub verify: Verify,
    /// The CA file's content, read at load.
    pub ca_pem: Option<Vec<u8>>,
    /// The server's RSA public key file, for caching_sha2 without TLS.
    pub server_public_key_file: Option<PathBuf>,
    /// That key's content, read at load.
    pub server_public_key: Option<Vec<u8>>,
    /// Without a key file and without TLS, ask the server for its key (which
    /// a man in the middle can answer with its own). Off unless set.
    pub get_server_public_key: bool,
    /// Ask for replication lag.
    pub lag: bool,
    /// Ask for Galera state.
    pub galera: bool,
    /// A Galera donor counts as ready.
    pub galera_donor_ok: bool,
    /// Ask for MySQL group replication membership.
    pub group_replication: bool,
}

/// A password: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

pub(super) fn check_config(key: &str, raw: RawCheck, problems: &mut Problems) -> CheckConfig {
    for (field, value) in [
        ("interval", raw.interval),
        ("fast_interval", raw.fast_interval),
        ("down_interval", raw.down_interval),
        ("timeout", raw.timeout),
    ] {
        if value.is_some_and(|d| d.0.is_zero()) {
            problems.add(
                format!("{key}.{field}"),
                "0s is not usable; write for example \"2s\" or \"500ms\"",
            );
        }
    }
    for (field, value) in [("rise", raw.rise), ("fall", raw.fall)] {
        if value == Some(0) {
            problems.add(
                format!("{key}.{field}"),
                "0 would never change state; write 1 or more",
            );
        }
    }
    let kind = raw.kind.unwrap_or(CheckKind::Mysql);
    let interval = raw.interval.map_or(DEFAULT_INTERVAL, |d| d.0);
    let mysql = match kind {
        CheckKind::Mysql => mysql_check(key, &raw, problems),
        CheckKind::Tcp => {
            refuse_mysql_keys(key, &raw, problems);
            None
        }
    };
    CheckConfig {
        kind,
        interval,
        fast_interval: raw.fast_interval.map_or(interval, |d| d.0),
        down_interval: raw.down_interval.map_or(interval, |d| d.0),
        timeout: raw.timeout.map_or(DEFAULT_CHECK_TIMEOUT, |d| d.0),
        rise: raw.rise.unwrap_or(DEFAULT_RISE),
        fall: raw.fall.unwrap_or(DEFAULT_FALL),
        mysql,
    }
}

fn mysql_check(key: &str, raw: &RawCheck, problems: &mut Problems) -> Option<MysqlCheck> {
    let Some(user) = raw.user.clone().filter(|u| !u.is_empty()) else {
        problems.add(
            format!("{key}.user"),
            "the \"mysql\" check logs in as a check user: add user = \"dbsplice_check\" (a user with no \
             privileges is enough: CREATE USER 'dbsplice_check'@'%' IDENTIFIED BY '...'), \
             or set kind = \"tcp\"",
        );
        return None;
    };
    if raw.password.is_some() && raw.password_file.is_some() {
        problems.add(
            format!("{key}.password_file"),
            "give password or password_file, not both",
        );
    }
    let tls = raw.tls.unwrap_or(TlsSetting::Disabled);
    let verify = raw.verify.unwrap_or(Verify::Full);
    if tls != TlsSetting::Disabled && verify != Verify::None && raw.ca_file.is_none() {
        problems.add(
            format!("{key}.ca_file"),
            "TLS with verify = \"full\" or \"ca\" needs the CA that signed the servers' certificates: \
             add ca_file = \"/etc/dbsplice/ca.pem\", or set verify = \"none\" to encrypt without verifying",
        );
    }
    Some(MysqlCheck {
        user,
        password: Secret::new(raw.password.clone().unwrap_or_default()),
        password_file: raw.password_file.clone(),
        tls,
        ca_file: raw.ca_file.clone(),
        verify,
        ca_pem: None,
        server_public_key_file: raw.server_public_key_file.clone(),
        server_public_key: None,
        get_server_public_key: raw.get_server_public_key.unwrap_or(false),
        lag: raw.lag.unwrap_or(false),
        galera: raw.galera.unwrap_or(false),
        galera_donor_ok: raw.galera_donor_ok.unwrap_or(false),
        group_replication: raw.group_replication.unwrap_or(false),
    })
}

/// MySQL settings on a TCP check would silently do nothing: say so.
fn refuse_mysql_keys(key: &str, raw: &RawCheck, problems: &mut Problems) {
    let set = [
        ("user", raw.user.is_some()),
        ("password", raw.password.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("tls", raw.tls.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("verify", raw.verify.is_some()),
        (
            "server_public_key_file",
            raw.server_public_key_file.is_some(),
        ),
        ("get_server_public_key", raw.get_server_public_key.is_some()),
        ("lag", raw.lag.is_some()),
        ("galera", raw.galera.is_some()),
        ("galera_donor_ok", raw.galera_donor_ok.is_some()),
        ("group_replication", raw.group_replication.is_some()),
    ];
    for (field, _) in set.iter().filter(|(_, present)| *present) {
        problems.add(
            format!("{key}.{field}"),
            "only the \"mysql\" check uses this; remove it or set kind = \"mysql\"",
        );
    }
}

/// A server listed by several pools is probed once, by one checker: the
/// pools' checks must agree on everything but `lag` (which only adds what a
/// probe learns, and is asked when any of them asks). Otherwise the second
/// pool's settings would silently not apply.
pub(super) fn shared_addresses(
    pools: &std::collections::BTreeMap<String, super::PoolConfig>,
    problems: &mut Problems,
) {
    let mut first: std::collections::HashMap<&str, &super::PoolConfig> =
        std::collections::HashMap::new();
    for pool in pools.values() {
        for backend in &pool.backends {
            let Some(other) = first.get(backend.address.text.as_str()) else {
                first.insert(&backend.address.text, pool);
                continue;
            };
            let mut differ = differences(&other.check, &pool.check);
            if other.routing.send_proxy != pool.routing.send_proxy {
                differ.push("send_proxy");
            }
            if !differ.is_empty() {
                problems.add(
                    format!("pool.{}.check", pool.name),
                    format!(
                        "backend {} is also in pool '{}', whose check differs in {}; a server is \
                         probed once for every pool that lists it: give both pools the same check \
                         settings (lag may differ)",
                        backend.address,
                        other.name,
                        differ.join(", ")
                    ),
                );
            }
        }
    }
}

/// The settings in which two checks differ, `lag` aside.
fn differences(a: &CheckConfig, b: &CheckConfig) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = [
        ("kind", a.kind != b.kind),
        ("interval", a.interval != b.interval),
        ("fast_interval", a.fast_interval != b.fast_interval),
        ("down_interval", a.down_interval != b.down_interval),
        ("timeout", a.timeout != b.timeout),
        ("rise", a.rise != b.rise),
        ("fall", a.fall != b.fall),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect();
    if let (Some(a), Some(b)) = (&a.mysql, &b.mysql) {
        out.extend(
            [
                ("user", a.user != b.user),
                (
                    "password",
                    a.password != b.password || a.password_file != b.password_file,
                ),
                ("tls", a.tls != b.tls),
                ("ca_file", a.ca_file != b.ca_file),
                ("verify", a.verify != b.verify),
                (
                    "server_public_key_file",
                    a.server_public_key_file != b.server_public_key_file,
                ),
                (
                    "get_server_public_key",
                    a.get_server_public_key != b.get_server_public_key,
                ),
                ("galera", a.galera != b.galera),
                ("galera_donor_ok", a.galera_donor_ok != b.galera_donor_ok),
                (
                    "group_replication",
                    a.group_replication != b.group_replication,
                ),
            ]
            .into_iter()
            .filter_map(|(name, differs)| differs.then_some(name)),
        );
    }
    out
}
