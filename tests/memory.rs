//! Memory that must not grow with time. A test binary of its own, with one
//! test, so that the process's anonymous memory is this test's alone.

// A test crate: a failed lookup here is a failed test, which is what it
// should be, and nothing is a public API.
#![allow(clippy::panic, unreachable_pub)]

#[path = "integration/support/proc_status.rs"]
mod proc_status;

fn anonymous_kib() -> u64 {
    proc_status::status_kib("self", "RssAnon:")
}

/// A balancer nobody scrapes still runs a probe per backend every interval,
/// for months: the probe-duration histograms must not keep every sample.
#[test]
fn probe_histograms_stay_small_without_scrapes() {
    let histograms = dbsplice::health::histograms::ProbeHistograms::default();
    let backends = ["10.0.0.1:3306", "10.0.0.2:3306", "10.0.0.3:3306"];
    let record = |n: u32| {
        for i in 0..n {
            histograms.record(backends[(i % 3) as usize], f64::from(i % 50) / 1000.0);
        }
    };
    // Warm up: each backend's histogram and the allocator's arenas.
    record(30_000);
    let before = anonymous_kib();
    // Three backends probed every 2 s for a week.
    record(907_200);
    let grown = anonymous_kib().saturating_sub(before);
    eprintln!("anonymous memory {before} KiB before, grown by {grown} KiB");
    // Kept as raw samples they would take at least 8 bytes each, 7 MB in all
    // (16 bytes each, measured, before the exporter's upkeep was run).
    assert!(
        grown < 1024,
        "907,200 probes grew anonymous memory by {grown} KiB"
    );
    let text = histograms.render();
    for backend in backends {
        let count = format!(
            "{metric}_count{{address=\"{backend}\"}} {}",
            (30_000 + 907_200) / 3,
            metric = dbsplice::metrics::BACKEND_PROBE_DURATION.0,
        );
        assert!(text.contains(&count), "{count} missing from:\n{text}");
    }
}
