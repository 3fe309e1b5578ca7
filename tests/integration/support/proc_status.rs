//! Memory figures from `/proc/PID/status`; also included by `tests/memory.rs`.

/// The `field` (such as "VmRSS:") of `/proc/{pid}/status`, in KiB; `pid` may
/// be "self".
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}
