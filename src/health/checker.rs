//! The checker task of one backend address: probe on an interval with jitter,
//! apply rise/fall, publish the verdict into the backend's atomics and log each
//! transition once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::probe::probe;
use super::state::{Health, Tracker};
use crate::cluster::BackendState;
use crate::config::CheckConfig;

/// Least time between two probes, however often the data path asks.
const MIN_GAP: Duration = Duration::from_millis(100);

/// Probes `state`'s address until `stop` is cancelled.
pub async fn run(state: Arc<BackendState>, check: CheckConfig, stop: CancellationToken) {
    let mut tracker = Tracker::resume(state.health(), check.rise, check.fall);
    // Spread the first probes of many backends a little, without leaving a
    // new backend unprobed for long.
    let first = jitter(check.interval.min(Duration::from_secs(1)) / 4);
    if stop
        .run_until_cancelled(tokio::time::sleep(first))
        .await
        .is_none()
    {
        return;
    }
    loop {
        let Some(result) = stop
            .run_until_cancelled(probe(check.kind, state.addr, check.timeout))
            .await
        else {
            return;
        };
        observe(&state, &mut tracker, result);
        let pause = (check.interval + jitter(check.interval / 10)).max(MIN_GAP);
        let wait = async {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = async {
                    state.probe_requested().await;
                    tokio::time::sleep(MIN_GAP).await;
                } => {}
            }
        };
        if stop.run_until_cancelled(wait).await.is_none() {
            return;
        }
    }
}

fn observe(state: &BackendState, tracker: &mut Tracker, result: Result<String, String>) {
    let passed = result.is_ok();
    let reason = match result {
        Ok(detail) | Err(detail) => detail,
    };
    let transition = tracker.observe(passed);
    state.set_health(tracker.health(), &reason);
    match transition {
        Some(t) if t.to == Health::Up => {
            tracing::info!(backend = %state.address, from = %t.from, "backend up: {reason}");
        }
        Some(t) => {
            tracing::warn!(backend = %state.address, from = %t.from, "backend down: {reason}");
        }
        None => {}
    }
}

/// A random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(if ms == 0 { 0 } else { fastrand::u64(0..ms) })
}
