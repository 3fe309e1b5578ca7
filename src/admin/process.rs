//! The standard Prometheus `process_*` series every exporter serves (CPU
//! time, memory, descriptors, threads, start time), read from `/proc` at
//! scrape time and written in the text format by hand: the CPU time is a
//! float counter, which the metrics facade has no type for.

use std::fmt::Write as _;

use crate::metrics::{
    Metric, PROCESS_CPU_SECONDS, PROCESS_MAX_FDS_STD, PROCESS_OPEN_FDS_STD,
    PROCESS_RESIDENT_MEMORY, PROCESS_START_TIME, PROCESS_THREADS, PROCESS_VIRTUAL_MEMORY,
};

/// What `/proc/self/stat` says, in its own units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system time, in clock ticks.
    cpu_ticks: u64,
    /// Threads.
    threads: u64,
    /// Start, in clock ticks after boot.
    start_ticks: u64,
    /// Virtual memory, in bytes.
    virtual_bytes: u64,
    /// Resident set, in pages.
    resident_pages: u64,
}

/// Reads the fields after the command name, which may itself hold spaces
/// and parentheses (so the split is at the last `)`).
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers as proc(5) counts them, from 1 at the PID; `rest` starts
    // at field 3 (state).
    let field = |n: usize| -> Option<u64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time, in seconds since the Unix epoch, from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn family(out: &mut String, metric: Metric, kind: &str, value: f64) {
    let (name, help) = metric;
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The `process_*` series as Prometheus text; a figure `/proc` does not give
/// is left out rather than guessed.
#[allow(clippy::cast_precision_loss)] // ticks, pages and counts far below 2^52
pub(super) fn render() -> String {
    let mut out = String::new();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t));
    if let Some(stat) = stat {
        family(
            &mut out,
            PROCESS_CPU_SECONDS,
            "counter",
            stat.cpu_ticks as f64 / ticks,
        );
        family(
            &mut out,
            PROCESS_RESIDENT_MEMORY,
            "gauge",
            stat.resident_pages as f64 * page,
        );
        family(
            &mut out,
            PROCESS_VIRTUAL_MEMORY,
            "gauge",
            stat.virtual_bytes as f64,
        );
        family(&mut out, PROCESS_THREADS, "gauge", stat.threads as f64);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_boot_time(&t));
        if let Some(boot) = boot {
            let start = boot as f64 + stat.start_ticks as f64 / ticks;
            family(&mut out, PROCESS_START_TIME, "gauge", start);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        family(
            &mut out,
            PROCESS_OPEN_FDS_STD,
            "gauge",
            entries.count() as f64,
        );
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        family(&mut out, PROCESS_MAX_FDS_STD, "gauge", soft as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a parenthesis, as a thread may be
        // named.
        let line = "4242 (dbsplice (w) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123_456,
                virtual_bytes: 987_654_321,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn boot_time_comes_from_the_btime_line() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1764547200\nprocesses 99\n";
        assert_eq!(parse_boot_time(text), Some(1_764_547_200));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_has_every_series() {
        let text = render();
        for (name, _) in [
            PROCESS_CPU_SECONDS,
            PROCESS_RESIDENT_MEMORY,
            PROCESS_VIRTUAL_MEMORY,
            PROCESS_THREADS,
            PROCESS_START_TIME,
            PROCESS_OPEN_FDS_STD,
            PROCESS_MAX_FDS_STD,
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing:\n{text}"
            );
        }
    }
}
