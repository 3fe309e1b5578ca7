//! The checker task of one backend address: probe on an interval with jitter,
//! apply rise/fall, publish the verdict and what the probe learned into the
//! backend's atomics, and log each transition once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::probe::{Outcome, Prober};
use super::state::Tracker;
use crate::cluster::BackendState;
use crate::config::CheckConfig;
use crate::inbox::Inbox;
use crate::vocabulary::Health;

/// Least time between two probes, however often the data path asks.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// One backend's checker.
#[derive(Debug)]
pub struct Checker {
    /// The backend.
    pub state: Arc<BackendState>,
    /// The check settings.
    pub check: CheckConfig,
    /// Prepared probe (TLS config, options).
    pub prober: Prober,
    /// Shared cap on probes in flight across all backends.
    pub slots: Arc<Semaphore>,
    /// Where new facts are announced to the control module.
    pub inbox: Inbox,
    /// Where probe durations are recorded.
    pub histograms: Arc<crate::health::histograms::ProbeHistograms>,
    /// The address's host is a name: a failed probe has it resolved again.
    pub named: bool,
}

impl Checker {
    /// Probes until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut tracker = Tracker::resume(self.state.health(), self.check.rise, self.check.fall);
        // Spread the first probes of many backends a little, without leaving
        // a new backend unprobed for long.
        let first = jitter(self.check.interval.min(Duration::from_secs(1)) / 4);
        if stop
            .run_until_cancelled(tokio::time::sleep(first))
            .await
            .is_none()
        {
            return;
        }
        loop {
            self.state.probe_begun();
            let Some(outcome) = stop.run_until_cancelled(self.probe_once()).await else {
                return;
            };
            self.observe(&mut tracker, outcome);
            // After what it learned was announced: whoever waits for this
            // probe finds the control module told first.
            self.state.probe_observed();
            let interval = interval_for(&self.check, &tracker);
            let pause = (interval + jitter(interval / 10)).max(MIN_GAP);
            let wait = async {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = async {
                        self.state.probe_requested().await;
                        tokio::time::sleep(MIN_GAP).await;
                    } => {}
                }
            };
            if stop.run_until_cancelled(wait).await.is_none() {
                return;
            }
        }
    }

    async fn probe_once(&self) -> Outcome {
        // A closed semaphore never happens (it is never closed); probing
        // without a permit would still be correct.
        let _permit = self.slots.acquire().await.ok();
        let started = tokio::time::Instant::now();
        let outcome = self.prober.probe(self.state.addr()).await;
        let took = started.elapsed();
        if !matches!(outcome, Outcome::Skipped { .. }) {
            self.state
                .counters
                .probe(matches!(outcome, Outcome::Pass { .. }), took);
            self.histograms
                .record(&self.state.address, took.as_secs_f64());
        }
        outcome
    }

    fn observe(&self, tracker: &mut Tracker, outcome: Outcome) {
        let state = &self.state;
        let lag_before = state.lag();
        let mut role_changed = false;
        let (passed, reason, misconfigured) = match outcome {
            Outcome::Pass { detail, facts } => {
                let facts_learned = facts.is_some();
                if let Some(facts) = facts {
                    if let Some(before) = state.set_facts(&facts) {
                        role_changed = true;
                        tracing::info!(backend = %state.address, from = before.as_str(), to = facts.role.as_str(), "backend role changed");
                    }
                }
                // Only a login proves room; a TCP connect says nothing of it.
                if facts_learned && state.set_full(false) {
                    tracing::info!(backend = %state.address, "backend has connections to spare again");
                }
                (true, detail, false)
            }
            // Alive, so up; but skipped by new sessions until a slot frees.
            Outcome::Full { reason } => {
                if !state.set_full(true) {
                    tracing::warn!(backend = %state.address, "backend full, new sessions skip it: {reason}");
                }
                (true, reason, false)
            }
            Outcome::Fail {
                reason,
                misconfigured,
            } => (false, reason, misconfigured),
            Outcome::Skipped { reason } => {
                // Neither a pass nor a failure: the backend keeps its state
                // and the next probe comes at the usual time.
                tracing::warn!(backend = %state.address, health = %state.health(), "probe skipped, state kept: {reason}");
                return;
            }
        };
        if !passed && self.named {
            self.inbox.resolve_soon(&state.address);
        }
        let transition = tracker.observe(passed);
        state.set_health(tracker.health(), &reason);
        // As stored: with the server's control characters replaced.
        let reason = state.reason();
        match transition {
            Some(t) if t.to == Health::Up => {
                tracing::info!(backend = %state.address, from = %t.from, "backend up: {reason}");
            }
            Some(t) if misconfigured => {
                tracing::error!(backend = %state.address, from = %t.from, "health check misconfigured, backend taken out: {reason}");
            }
            Some(t) => {
                tracing::warn!(backend = %state.address, from = %t.from, "backend down: {reason}")
            }
            None => {}
        }
        if transition.is_some() || role_changed || state.lag() != lag_before {
            self.inbox.health_changed(&state.address, transition);
        }
    }
}

/// Time until the next probe: `fast_interval` while results disagree with
/// the state, `interval` while up, `down_interval` while down or unknown.
fn interval_for(check: &CheckConfig, tracker: &Tracker) -> Duration {
    if tracker.settling() {
        check.fast_interval
    } else if tracker.health() == Health::Up {
        check.interval
    } else {
        check.down_interval
    }
}

/// A random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(if ms == 0 { 0 } else { fastrand::u64(0..ms) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    #[test]
    fn intervals_follow_the_state() {
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(200),
            down_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            mysql: None,
        };
        let mut t = Tracker::new(2, 2);
        assert_eq!(interval_for(&check, &t), check.down_interval, "unknown");
        t.observe(true);
        assert_eq!(interval_for(&check, &t), check.interval, "up");
        t.observe(false);
        assert_eq!(
            interval_for(&check, &t),
            check.fast_interval,
            "one failure towards fall"
        );
        t.observe(false);
        assert_eq!(interval_for(&check, &t), check.down_interval, "down");
        t.observe(true);
        assert_eq!(
            interval_for(&check, &t),
            check.fast_interval,
            "one pass towards rise"
        );
    }
}
