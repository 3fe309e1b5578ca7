//! What a switchover did, step by step: what the API answers, the log
//! records and the status page shows.

use serde::Serialize;

/// One step as it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What it did, in words.
    pub step: String,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it found, or why it failed.
    pub detail: String,
}

/// A switchover as it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// "switchover".
    pub kind: &'static str,
    /// The pool.
    pub pool: String,
    /// Who asked, in words.
    pub origin: String,
    /// When it started, in seconds since the Unix epoch.
    pub started_unix: u64,
    /// The primary before.
    pub from: Option<String>,
    /// The primary after, if the switchover happened.
    pub to: Option<String>,
    /// Whether the new primary is in place.
    pub ok: bool,
    /// In one line: what happened, or why not.
    pub summary: String,
    /// Whether it got past its checks and lock (paused the pool, or
    /// changed a server): a refusal leaves everything as it was.
    pub carried_out: bool,
    /// Each step.
    pub steps: Vec<Step>,
}

impl Report {
    /// A switchover that never started, and why.
    pub fn refused(
        pool: &str,
        origin: &str,
        steps: Vec<Step>,
        from: Option<String>,
        why: String,
    ) -> Report {
        Report {
            kind: "switchover",
            pool: pool.to_owned(),
            origin: origin.to_owned(),
            started_unix: unix_now(),
            from,
            to: None,
            ok: false,
            summary: why,
            carried_out: false,
            steps,
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
