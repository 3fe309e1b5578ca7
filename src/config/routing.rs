//! A pool's routing policy (`role`, lag limits, `fallback`, `on_down`, the
//! greeting gate), with defaults that depend on the role.

use std::time::Duration;

use super::raw::{CheckKind, RawPool};
use super::validate::Problems;
use super::{CheckConfig, Routing};
use crate::vocabulary::{
    Failback, Fallback, HoldPolicy, LagUnknown, MultipleWriters, OnDown, PoolRole,
};

const DEFAULT_GREETING_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HOLD_MAX: u32 = 1000;
const DEFAULT_FLAP_THRESHOLD: u32 = 6;
const DEFAULT_FLAP_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_FLAP_HOLD: Duration = Duration::from_secs(10);
const DEFAULT_FLAP_HOLD_MAX: Duration = Duration::from_secs(300);

pub(super) fn routing(
    key: &str,
    raw: &RawPool,
    check: &mut CheckConfig,
    problems: &mut Problems,
) -> Routing {
    let role = raw.role.unwrap_or(PoolRole::Any);
    check_role_settings(key, raw, role, check, problems);
    let (max_lag, readmit_lag) = lag_limits(key, raw, problems);
    // A reader pool with a lag limit must learn lag: the check asks for it.
    if max_lag.is_some() {
        if let Some(mysql) = check.mysql.as_mut() {
            mysql.lag = true;
        }
    }
    if raw.hold_max == Some(0) {
        problems.add(
            format!("{key}.hold_max"),
            "0 would hold no client; to refuse clients at once when no backend can take them, write hold_timeout = \"0s\"",
        );
    }
    if raw.greeting_timeout.is_some_and(|d| d.0.is_zero()) {
        problems.add(
            format!("{key}.greeting_timeout"),
            "0s would fail every greeting; write for example \"1s\"",
        );
    }
    Routing {
        role,
        on_multiple_writers: raw.on_multiple_writers.unwrap_or(MultipleWriters::Keep),
        max_lag,
        readmit_lag,
        lag_unknown: raw.lag_unknown.unwrap_or(LagUnknown::Exclude),
        fallback: raw.fallback.unwrap_or(Fallback::Writer),
        // A writer pool closes sessions on a server that went away or was
        // demoted, so clients reconnect to the new writer instead of hanging.
        on_down: raw.on_down.unwrap_or(if role == PoolRole::Writer {
            OnDown::Close
        } else {
            OnDown::Keep
        }),
        // A MySQL server speaks first: with a MySQL check, a server that
        // freezes or greets with an error is skipped before the client sees a
        // byte. A TCP check may front something that is not MySQL at all.
        greeting_gate: raw.greeting_gate.unwrap_or(check.kind == CheckKind::Mysql),
        greeting_timeout: raw
            .greeting_timeout
            .map_or(DEFAULT_GREETING_TIMEOUT, |d| d.0),
        hold_timeout: raw.hold_timeout.map_or(DEFAULT_HOLD_TIMEOUT, |d| d.0),
        hold_max: raw.hold_max.unwrap_or(DEFAULT_HOLD_MAX),
        slow_start: raw.slow_start.map(|d| d.0).filter(|d| !d.is_zero()),
        on_primary_return: raw.on_primary_return.unwrap_or(OnDown::Keep),
        on_remove: raw.on_remove.unwrap_or(OnDown::Keep),
        send_proxy: raw.send_proxy,
        hold: hold_policy(key, raw, problems),
    }
}

/// Settings that only some roles use, and the check a role needs.
fn check_role_settings(
    key: &str,
    raw: &RawPool,
    role: PoolRole,
    check: &CheckConfig,
    problems: &mut Problems,
) {
    if role != PoolRole::Any && check.kind != CheckKind::Mysql {
        problems.add(
            format!("{key}.role"),
            "a writer or reader pool needs to know each server's role: use the \"mysql\" check (kind = \"mysql\")",
        );
    }
    if role != PoolRole::Reader {
        for (field, set) in [
            ("max_lag", raw.max_lag.is_some()),
            ("readmit_lag", raw.readmit_lag.is_some()),
            ("lag_unknown", raw.lag_unknown.is_some()),
            ("fallback", raw.fallback.is_some()),
        ] {
            if set {
                problems.add(
                    format!("{key}.{field}"),
                    "only a reader pool uses this; remove it or set role = \"reader\"",
                );
            }
        }
    }
    if role != PoolRole::Writer && raw.on_multiple_writers.is_some() {
        problems.add(
            format!("{key}.on_multiple_writers"),
            "only a writer pool uses this; remove it or set role = \"writer\"",
        );
    }
}

/// `max_lag` and `readmit_lag` (which defaults to `max_lag`, never above it).
fn lag_limits(
    key: &str,
    raw: &RawPool,
    problems: &mut Problems,
) -> (Option<Duration>, Option<Duration>) {
    let max_lag = raw.max_lag.map(|d| d.0);
    let readmit_lag = raw.readmit_lag.map(|d| d.0).or(max_lag);
    if raw.readmit_lag.is_some() && max_lag.is_none() {
        problems.add(
            format!("{key}.readmit_lag"),
            "readmit_lag needs max_lag; add max_lag = \"10s\" (readmit_lag at or below it)",
        );
    }
    if let (Some(max), Some(readmit)) = (max_lag, readmit_lag) {
        if readmit > max {
            problems.add(
                format!("{key}.readmit_lag"),
                "readmit_lag must not exceed max_lag, or a replica would flap; write it lower, e.g. half of max_lag",
            );
        }
    }
    (max_lag, readmit_lag)
}

fn hold_policy(key: &str, raw: &RawPool, problems: &mut Problems) -> HoldPolicy {
    for (field, value) in [
        ("flap_window", raw.flap_window),
        ("flap_hold", raw.flap_hold),
        ("flap_hold_max", raw.flap_hold_max),
    ] {
        if value.is_some_and(|d| d.0.is_zero()) {
            problems.add(format!("{key}.{field}"), "0s is not usable; write for example \"10s\" (flap_threshold = 0 turns damping off)");
        }
    }
    let policy = HoldPolicy {
        failback: raw.failback.map_or(Failback::Auto, |f| f.0),
        flap_threshold: raw.flap_threshold.unwrap_or(DEFAULT_FLAP_THRESHOLD),
        flap_window: raw.flap_window.map_or(DEFAULT_FLAP_WINDOW, |d| d.0),
        flap_hold: raw.flap_hold.map_or(DEFAULT_FLAP_HOLD, |d| d.0),
        flap_hold_max: raw.flap_hold_max.map_or(DEFAULT_FLAP_HOLD_MAX, |d| d.0),
    };
    if policy.flap_hold_max < policy.flap_hold {
        problems.add(
            format!("{key}.flap_hold_max"),
            "flap_hold_max must be at least flap_hold; raise it or lower flap_hold",
        );
    }
    policy
}
