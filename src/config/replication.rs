//! `[pool.NAME.replication]`: the login dbsplice uses to switch a GTID
//! primary over to a replica, promote one when the primary dies, and fence or
//! rejoin an old primary; and the rules it follows doing so.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawReplication;
use super::validate::Problems;
use super::Secret;
use crate::vocabulary::{FailoverMode, LockScope, PoolRole};

/// How long the primary must have failed every probe before a failover.
pub const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(10);
/// How long a switchover waits for the candidate to apply the old
/// primary's last transactions.
pub const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// A writer pool's replication management.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// The user dbsplice logs in as to change roles.
    pub user: String,
    /// Its password, from `password` or `password_file`.
    pub password: Secret,
    /// Where that password is read from, if from a file.
    pub password_file: Option<PathBuf>,
    /// The user replicas log in as to reach a new primary.
    pub replication_user: String,
    /// Its password.
    pub replication_password: Secret,
    /// Where that password is read from, if from a file.
    pub replication_password_file: Option<PathBuf>,
    /// Whether dbsplice promotes a replica by itself.
    pub failover: FailoverMode,
    /// How long the primary fails every probe before a failover.
    pub failover_after: Duration,
    /// Re-point a returning old primary at the new one.
    pub rejoin: bool,
    /// Of which servers the promotion lock must be held.
    pub lock: LockScope,
    /// How long a switchover waits for the candidate to catch up.
    pub catch_up_timeout: Duration,
}

/// Validates `raw` for the pool at `key` with role `role`.
pub(super) fn replication_config(
    key: &str,
    raw: RawReplication,
    role: PoolRole,
    problems: &mut Problems,
) -> Option<ReplicationConfig> {
    let key = format!("{key}.replication");
    if role != PoolRole::Writer {
        problems.add(
            key.clone(),
            "replication is managed for a writer pool only: set role = \"writer\" on this pool, \
             or remove the [replication] table",
        );
    }
    let user = named(
        &key,
        "user",
        raw.user.as_deref(),
        "logs in as to change roles (see conf/dbsplice.toml for its privileges)",
        problems,
    );
    let replication_user = named(
        &key,
        "replication_user",
        raw.replication_user.as_deref(),
        "points replicas at, as CHANGE MASTER TO's MASTER_USER",
        problems,
    );
    one_password(
        &key,
        "password",
        raw.password.is_some(),
        raw.password_file.is_some(),
        problems,
    );
    one_password(
        &key,
        "replication_password",
        raw.replication_password.is_some(),
        raw.replication_password_file.is_some(),
        problems,
    );
    timing(&key, &raw, problems);
    Some(ReplicationConfig {
        user: user?,
        password: Secret::new(raw.password.unwrap_or_default()),
        password_file: raw.password_file,
        replication_user: replication_user?,
        replication_password: Secret::new(raw.replication_password.unwrap_or_default()),
        replication_password_file: raw.replication_password_file,
        failover: raw.failover.unwrap_or(FailoverMode::Off),
        failover_after: raw.failover_after.map_or(DEFAULT_FAILOVER_AFTER, |d| d.0),
        rejoin: raw.rejoin.unwrap_or(true),
        lock: raw.lock.unwrap_or(LockScope::MajorityOfAll),
        catch_up_timeout: raw
            .catch_up_timeout
            .map_or(DEFAULT_CATCH_UP_TIMEOUT, |d| d.0),
    })
}

/// A user that must be named: `what` says what dbsplice does with it.
fn named(
    key: &str,
    field: &str,
    user: Option<&str>,
    what: &str,
    problems: &mut Problems,
) -> Option<String> {
    match user.filter(|u| !u.is_empty()) {
        Some(u) => Some(u.to_owned()),
        None => {
            problems.add(
                format!("{key}.{field}"),
                format!("name the user dbsplice {what}: {field} = \"...\""),
            );
            None
        }
    }
}

/// Durations that leave time, and only the failover mode this version has.
fn timing(key: &str, raw: &RawReplication, problems: &mut Problems) {
    for (field, value) in [
        ("failover_after", raw.failover_after),
        ("catch_up_timeout", raw.catch_up_timeout),
    ] {
        if value.is_some_and(|d| d.0.is_zero()) {
            problems.add(
                format!("{key}.{field}"),
                "0s leaves no time at all; write a duration such as \"10s\"",
            );
        }
    }
}

/// A password comes from the file or from the config, one of the two.
fn one_password(key: &str, field: &str, inline: bool, file: bool, problems: &mut Problems) {
    match (inline, file) {
        (true, true) => problems.add(
            format!("{key}.{field}_file"),
            format!("give {field} or {field}_file, not both"),
        ),
        (false, false) => problems.add(
            format!("{key}.{field}_file"),
            format!("name the file that holds the password: {field}_file = \"/etc/dbsplice/....password\""),
        ),
        _ => {}
    }
}
