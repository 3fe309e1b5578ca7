//! Per-backend live state: atomics written by one checker and read by every
//! session, kept across reloads so an edit never resets health or counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::waiting::Waiting;
use crate::mysql::Facts;
use crate::vocabulary::{Health, Lag, OverrideMode, Role};

/// `lag` value when no lag is known (not asked, NULL, or no privilege).
const LAG_UNKNOWN: u64 = u64::MAX;
/// `lag` value for a server that replicates from no one.
const LAG_NOT_REPLICA: u64 = u64::MAX - 1;

/// What is known about one backend address right now.
#[derive(Debug)]
pub struct BackendState {
    /// The address as written in the config: the backend's identity.
    pub address: String,
    /// Where to connect: the address the config's host last resolved to
    /// (written by the control module, read at each connect and probe).
    addr: ArcSwap<SocketAddr>,
    /// Why the host name last failed to resolve, while it does (the last
    /// address is kept meanwhile); written by the control module.
    unresolved: Mutex<Option<Arc<str>>>,
    health: AtomicU8,
    /// Milliseconds since [`epoch`] when it last came back from down; 0: never.
    recovered_at: AtomicU64,
    role: AtomicU8,
    lag: AtomicU64,
    active: AtomicU64,
    total: AtomicU64,
    connect_failures: AtomicU64,
    reason: Mutex<Arc<str>>,
    /// The server greeted with 1040 (too many connections) and no session
    /// has ended here since: new sessions skip it.
    full: AtomicBool,
    probe_now: Notify,
    /// Probes the checker has begun, and those whose outcome it has handled.
    probes_begun: AtomicU64,
    observed: AtomicU64,
    admin: Mutex<Option<Override>>,
    /// The held clients of every pool that has this backend: told when a
    /// session here ends or the server has room again. Set with each
    /// snapshot.
    waiters: ArcSwap<Vec<Arc<Waiting>>>,
    /// Traffic and probe counters, for metrics.
    pub counters: Counters,
}

/// Why a connect from the data path failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Nothing listens.
    Refused,
    /// No answer within `connect_timeout`.
    Timeout,
    /// The greeting gate saw an error greeting or none.
    Greeting,
    /// Anything else (unreachable, reset).
    Other,
}

/// Counters kept for metrics; relaxed atomics, written off the per-byte path.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes from clients to this backend (added when a session ends).
    pub bytes_to_backend: AtomicU64,
    /// Bytes from this backend to clients (added when a session ends).
    pub bytes_to_client: AtomicU64,
    /// Failed connects by reason: refused, timeout, greeting, other.
    pub connect_failures: [AtomicU64; 4],
    /// Probes that passed.
    pub probes_passed: AtomicU64,
    /// Probes that failed.
    pub probes_failed: AtomicU64,
    /// Sum of probe durations, in microseconds.
    pub probe_micros: AtomicU64,
    /// The last probe's duration, in microseconds.
    pub last_probe_micros: AtomicU64,
}

impl Counters {
    /// Records one probe.
    pub fn probe(&self, passed: bool, took: Duration) {
        let counter = if passed {
            &self.probes_passed
        } else {
            &self.probes_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.probe_micros.fetch_add(micros, Ordering::Relaxed);
        self.last_probe_micros.store(micros, Ordering::Relaxed);
    }

    /// Records a finished session's bytes.
    pub fn session_bytes(&self, to_backend: u64, to_client: u64) {
        self.bytes_to_backend
            .fetch_add(to_backend, Ordering::Relaxed);
        self.bytes_to_client.fetch_add(to_client, Ordering::Relaxed);
    }
}

/// An operator's override: kept by address, so it survives reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Drain or disable.
    pub mode: OverrideMode,
    /// Who asked, in words (client address of the admin request).
    pub origin: String,
    /// When, in Unix seconds.
    pub since_unix: u64,
    /// When it lapses by itself, if ever.
    pub until: Option<Instant>,
}

impl BackendState {
    /// A backend that has not been probed: [`Health::Unknown`], no sessions.
    pub fn new(address: String, addr: SocketAddr) -> BackendState {
        BackendState {
            address,
            addr: ArcSwap::from_pointee(addr),
            unresolved: Mutex::new(None),
            health: AtomicU8::new(Health::Unknown as u8),
            recovered_at: AtomicU64::new(0),
            role: AtomicU8::new(0),
            lag: AtomicU64::new(LAG_UNKNOWN),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            reason: Mutex::new(Arc::from("not probed yet")),
            full: AtomicBool::new(false),
            waiters: ArcSwap::default(),
            probe_now: Notify::new(),
            probes_begun: AtomicU64::new(0),
            observed: AtomicU64::new(0),
            admin: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// Where to connect now.
    pub fn addr(&self) -> SocketAddr {
        **self.addr.load()
    }

    /// Its host name now resolves to `addr`: new sessions and probes go
    /// there; open sessions stay where they are. Whether it moved.
    pub fn set_addr(&self, addr: SocketAddr) -> bool {
        *lock(&self.unresolved) = None;
        if self.addr() == addr {
            return false;
        }
        self.addr.store(Arc::new(addr));
        true
    }

    /// Its host name failed to resolve (`why`); the last address is kept.
    pub fn set_unresolved(&self, why: &str) {
        *lock(&self.unresolved) = Some(Arc::from(why));
    }

    /// Why its host name does not resolve now, if it does not.
    pub fn unresolved(&self) -> Option<Arc<str>> {
        lock(&self.unresolved).clone()
    }

    /// The checker's current verdict.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Writable or read-only, as last learned by a MySQL probe.
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Writable,
            2 => Role::ReadOnly,
            _ => Role::Unknown,
        }
    }

    /// Replication lag as last learned: `None` when unknown or not asked.
    pub fn lag(&self) -> Option<Lag> {
        match self.lag.load(Ordering::Acquire) {
            LAG_UNKNOWN => None,
            LAG_NOT_REPLICA => Some(Lag::NotReplica),
            s => Some(Lag::Seconds(s)),
        }
    }

    /// Records what a probe learned; returns the previous role when it changed.
    pub fn set_facts(&self, facts: &Facts) -> Option<Role> {
        let lag = match &facts.lag {
            Some(Lag::Seconds(s)) => (*s).min(LAG_NOT_REPLICA - 1),
            Some(Lag::NotReplica) => LAG_NOT_REPLICA,
            Some(Lag::Unknown(_)) | None => LAG_UNKNOWN,
        };
        self.lag.store(lag, Ordering::Release);
        let code = match facts.role {
            Role::Unknown => 0,
            Role::Writable => 1,
            Role::ReadOnly => 2,
        };
        let before = self.role();
        self.role.store(code, Ordering::Release);
        (before != facts.role).then_some(before)
    }

    /// Whether the server last said it has no connection to spare.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Records whether the server is full; returns the previous value. Room
    /// found again is a slot for a held client.
    pub fn set_full(&self, full: bool) -> bool {
        let was = self.full.swap(full, Ordering::AcqRel);
        if was && !full {
            self.slot_freed();
        }
        was
    }

    /// The held clients to tell of a free slot here: those of every pool
    /// that has this backend.
    pub fn set_waiters(&self, waiters: Vec<Arc<Waiting>>) {
        self.waiters.store(Arc::new(waiters));
    }

    /// A slot here is free: the first held client in each pool with this
    /// backend gets a turn.
    fn slot_freed(&self) {
        for waiting in self.waiters.load().iter() {
            waiting.wake_next();
        }
    }

    /// The operator's override in force at `now` (a lapsed one is cleared).
    pub fn admin_override(&self, now: Instant) -> Option<Override> {
        let mut admin = self.admin.lock().unwrap_or_else(PoisonError::into_inner);
        if admin
            .as_ref()
            .and_then(|o| o.until)
            .is_some_and(|until| until <= now)
        {
            *admin = None;
        }
        admin.clone()
    }

    /// Sets or clears the operator's override.
    pub fn set_admin_override(&self, value: Option<Override>) {
        *self.admin.lock().unwrap_or_else(PoisonError::into_inner) = value;
    }

    /// Sessions open to this backend now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Sessions ever started to this backend.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Failed connects from the data path.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Why the backend is in its state, in plain words.
    pub fn reason(&self) -> Arc<str> {
        Arc::clone(&self.reason.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records the checker's verdict; only the backend's checker calls this.
    ///
    /// Control characters in the reason (which quotes what a server or its
    /// certificate said) are replaced, so it can forge no log line and
    /// drive no terminal.
    pub fn set_health(&self, health: Health, reason: &str) {
        let reason: Arc<str> = if reason.chars().any(char::is_control) {
            Arc::from(crate::mysql::printable(reason.as_bytes()))
        } else {
            Arc::from(reason)
        };
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason;
        let before = Health::from_u8(self.health.swap(health as u8, Ordering::AcqRel));
        if before == Health::Down && health == Health::Up {
            let ms = u64::try_from(epoch().elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            self.recovered_at.store(ms, Ordering::Release);
        }
    }

    /// Starts from what the process before this one knew (a hand-over):
    /// its checker carries on from this health.
    pub fn seed(&self, health: Health, reason: &str, role: Role) {
        self.set_health(health, reason);
        let code = match role {
            Role::Unknown => 0,
            Role::Writable => 1,
            Role::ReadOnly => 2,
        };
        self.role.store(code, Ordering::Release);
    }

    /// How long ago it came back from down, if it ever did.
    pub fn recovered_for(&self) -> Option<Duration> {
        match self.recovered_at.load(Ordering::Acquire) {
            0 => None,
            ms => Some(epoch().elapsed().saturating_sub(Duration::from_millis(ms))),
        }
    }

    /// Counts a session for as long as the returned guard lives.
    pub fn session(self: &Arc<Self>) -> SessionGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        SessionGuard {
            established: false,
            backend: Arc::clone(self),
        }
    }

    /// Reports a failed connect from the data path and asks the checker to
    /// probe now rather than at its next tick.
    pub fn connect_failed(&self, why: ConnectFailure) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let i = why as usize;
        if let Some(c) = self.counters.connect_failures.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.probe_now.notify_one();
    }

    /// Asks the checker to probe now rather than at its next tick.
    pub fn request_probe(&self) {
        self.probe_now.notify_one();
    }

    /// How many probes the checker has begun.
    pub fn probes_begun(&self) -> u64 {
        self.probes_begun.load(Ordering::Acquire)
    }

    /// Counts a probe the checker begins.
    pub fn probe_begun(&self) {
        self.probes_begun.fetch_add(1, Ordering::Release);
    }

    /// How many probes' outcomes the checker has handled (and announced): a
    /// probe begun after `probes_begun` read `n` is handled once this is
    /// above `n`.
    pub fn observed(&self) -> u64 {
        self.observed.load(Ordering::Acquire)
    }

    /// Counts a probe whose outcome the checker has handled.
    pub fn probe_observed(&self) {
        self.observed.fetch_add(1, Ordering::Release);
    }

    /// Resolves when the data path asked for an early probe.
    pub async fn probe_requested(&self) {
        self.probe_now.notified().await;
    }
}

/// The process's time origin for timestamps kept in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One open (or opening) session to a backend; dropping it ends the count.
#[derive(Debug)]
pub struct SessionGuard {
    backend: Arc<BackendState>,
    /// The connect succeeded and the session ran on the server.
    established: bool,
}

impl SessionGuard {
    /// Marks the connect as made: when this session ends, the server has a
    /// connection to spare again.
    pub fn established(&mut self) {
        self.established = true;
    }

    /// The backend this session belongs to.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.backend
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
        // A session that ran here has freed a connection on the server.
        // (Not a connect that failed: that frees no slot on the server, and
        // a turn for it would have held clients try a failing backend in a
        // tight chain.)
        if self.established {
            self.backend.full.store(false, Ordering::Release);
            self.backend.slot_freed();
        }
    }
}

/// The value behind `mutex`, poisoned or not (every writer leaves it whole).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_by_ownership() {
        let b = Arc::new(BackendState::new(
            "x:1".into(),
            "127.0.0.1:1".parse().unwrap(),
        ));
        let g1 = b.session();
        let g2 = b.session();
        assert_eq!((b.active(), b.total()), (2, 2));
        drop(g1);
        assert_eq!((b.active(), b.total()), (1, 2));
        drop(g2);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn starts_unknown_until_probed() {
        let b = BackendState::new("x:1".into(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(b.health(), Health::Unknown);
        b.set_health(Health::Up, "connect ok");
        assert_eq!(b.health(), Health::Up);
        assert_eq!(&*b.reason(), "connect ok");
        b.set_health(Health::Down, "refused");
        assert_eq!(b.health(), Health::Down);
    }
}
