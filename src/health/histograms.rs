//! Probe-duration histograms, recorded by the checkers and rendered by the
//! admin server.

use std::sync::atomic::{AtomicU32, Ordering};

use metrics::{describe_histogram, histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::metrics::{BACKEND_PROBE_DURATION, PROBE_BUCKETS};

/// Probes recorded between two folds of the pending samples into the
/// buckets: at most this many samples wait, whether or not anyone scrapes.
const PROBES_PER_UPKEEP: u32 = 256;

/// Probe-duration histograms: unlike the other metrics they accumulate
/// observations, so they live in one recorder for the life of the process
/// (a removed backend's histogram stays until restart).
///
/// The exporter keeps each observation as a raw sample until it is folded
/// into the buckets, which a scrape does; dbsplice folds them itself every
/// `PROBES_PER_UPKEEP` probes, so a balancer nobody scrapes (or one without
/// `[admin]`) does not grow by every probe it ever ran.
pub struct ProbeHistograms {
    recorder: metrics_exporter_prometheus::PrometheusRecorder,
    recorded: AtomicU32,
}

impl std::fmt::Debug for ProbeHistograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeHistograms")
    }
}

impl Default for ProbeHistograms {
    fn default() -> Self {
        let builder = PrometheusBuilder::new().set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BACKEND_PROBE_DURATION.0.to_owned()),
            &PROBE_BUCKETS,
        );
        // Setting buckets fails only for an empty list; without them the
        // exporter would render a summary, which is still valid text.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        metrics::with_local_recorder(&recorder, || {
            describe_histogram!(BACKEND_PROBE_DURATION.0, BACKEND_PROBE_DURATION.1)
        });
        ProbeHistograms {
            recorder,
            recorded: AtomicU32::new(0),
        }
    }
}

impl ProbeHistograms {
    /// Records one probe of the backend at `address`.
    pub fn record(&self, address: &str, seconds: f64) {
        metrics::with_local_recorder(&self.recorder, || {
            histogram!(BACKEND_PROBE_DURATION.0, "address" => address.to_owned()).record(seconds);
        });
        let recorded = self.recorded.fetch_add(1, Ordering::Relaxed);
        if recorded % PROBES_PER_UPKEEP == PROBES_PER_UPKEEP - 1 {
            self.recorder.handle().run_upkeep();
        }
    }

    /// The histograms in the Prometheus text format.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_histograms_render_buckets() {
        let h = ProbeHistograms::default();
        h.record("db1:3306", 0.003);
        h.record("db1:3306", 0.2);
        let text = h.render();
        assert!(
            text.contains(&format!(
                "{}_bucket{{address=\"db1:3306\",le=\"0.005\"}} 1",
                BACKEND_PROBE_DURATION.0
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{}_count{{address=\"db1:3306\"}} 2",
                BACKEND_PROBE_DURATION.0
            )),
            "{text}"
        );
    }
}
