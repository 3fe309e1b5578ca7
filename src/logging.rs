//! Log output through `tracing`: readable text by default, JSON lines on
//! request. The level comes from `--log-level` or `RUST_LOG`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, from `main`.
pub fn init(json: bool, level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Lets a log line through at most once a second, counting the rest.
#[derive(Debug, Default)]
pub struct RateLimit {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    pub fn ready(&self) -> Option<u64> {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = u64::try_from(
            START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last != 0 && now.saturating_sub(last) < 1_000)
            || self
                .last_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_log_lines_lets_one_through_and_counts_the_rest() {
        let limit = RateLimit::default();
        assert_eq!(limit.ready(), Some(0), "the first line is logged");
        for _ in 0..500 {
            assert_eq!(limit.ready(), None, "a line within the second");
        }
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 500);
    }
}
