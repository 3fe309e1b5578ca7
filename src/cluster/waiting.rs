//! The clients a pool holds while no backend can take them: a count bounded
//! by `hold_max`, a wake-up the control module sends whenever it has decided
//! again, and the figures the metrics and the log report. Kept by pool name in
//! the [`super::Registry`], so held clients outlive a reload.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// Upper bounds, in seconds, of the buckets that count how long held clients
/// waited.
pub const HOLD_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How long held clients waited, in [`HOLD_BUCKETS`] (each count is of the
/// waits at or below its bound, not cumulative), with the total and count.
#[derive(Debug, Default)]
pub struct Waits {
    buckets: [AtomicU64; 10],
    /// Waits longer than the last bound.
    above: AtomicU64,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Waits {
    fn record(&self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        let bucket = HOLD_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .and_then(|i| self.buckets.get(i))
            .unwrap_or(&self.above);
        bucket.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus' `le`), then the count of all
    /// waits and their sum in seconds.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut running = 0;
        let buckets = HOLD_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        #[allow(clippy::cast_precision_loss)] // microseconds far below 2^52
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, self.count.load(Ordering::Relaxed), sum)
    }
}

/// One pool's held clients.
#[derive(Debug, Default)]
pub struct Waiting {
    /// The pool's name, for the log lines.
    pool: String,
    held: AtomicUsize,
    changed: Notify,
    /// Clients refused because `hold_timeout` passed.
    timeouts: AtomicU64,
    /// Clients that waited and were then connected.
    served: AtomicU64,
    /// Clients held since the pool last had none, and the longest wait among
    /// them (milliseconds): the figures of the log line when it drains.
    episode_count: AtomicU64,
    episode_longest_ms: AtomicU64,
    /// How long held clients waited, however their wait ended.
    pub waits: Waits,
    /// Until when an operator paused the pool: new clients are held as if it
    /// had no backend. Written by the control module alone.
    paused_until: Mutex<Option<tokio::time::Instant>>,
    /// Whether `paused_until` is set: what every new session reads, without
    /// the lock.
    paused: AtomicBool,
}

/// A held client's place in the count; given back on drop.
#[derive(Debug)]
pub struct Held {
    waiting: Arc<Waiting>,
    started: tokio::time::Instant,
}

impl Waiting {
    /// No client held in pool `pool`.
    pub fn new(pool: &str) -> Waiting {
        Waiting {
            pool: pool.to_owned(),
            ..Waiting::default()
        }
    }

    /// Takes a place if fewer than `max` clients are held.
    pub fn enter(self: &Arc<Self>, max: u32) -> Option<Held> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        if before == 0 {
            tracing::warn!(pool = %self.pool, "no backend can take new clients: holding them");
        }
        self.episode_count.fetch_add(1, Ordering::Relaxed);
        Some(Held {
            waiting: Arc::clone(self),
            started: tokio::time::Instant::now(),
        })
    }

    /// The wake-up to wait on: created (and armed) before looking at the
    /// pool, so that a decision made in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wakes every held client to look at the pool again.
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Holds every new client until `until` (or [`Waiting::resume`]).
    pub fn pause(&self, until: tokio::time::Instant) {
        *self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
        self.paused.store(true, Ordering::Release);
    }

    /// Ends a pause and wakes the held clients; whether one was in force.
    pub fn resume(&self) -> bool {
        let was = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some_and(|until| until > tokio::time::Instant::now());
        self.paused.store(false, Ordering::Release);
        self.wake();
        was
    }

    /// Whether new clients are held by a pause now; one atomic load unless a
    /// pause was set.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire) && self.paused_for().is_some()
    }

    /// How much of a pause is left, if the pool is paused (a lapsed pause
    /// reads as none).
    pub fn paused_for(&self) -> Option<Duration> {
        let until = (*self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner))?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Clients held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Clients refused after waiting `hold_timeout`.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Clients connected after waiting.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Held {
    /// How long this client has waited.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the wait with the client connected.
    pub fn served(self) {
        self.waiting.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends the wait with the client refused for `hold_timeout`.
    pub fn timed_out(self) {
        self.waiting.timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let w = &self.waiting;
        w.waits.record(self.started.elapsed());
        let waited = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        w.episode_longest_ms.fetch_max(waited, Ordering::Relaxed);
        if w.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            let count = w.episode_count.swap(0, Ordering::Relaxed);
            let longest = w.episode_longest_ms.swap(0, Ordering::Relaxed);
            tracing::info!(
                pool = %w.pool,
                clients = count,
                longest_wait_ms = longest,
                "no client held any more: {count} waited, the longest {longest} ms"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn places_are_bounded_and_given_back() {
        let w = Arc::new(Waiting::new("p"));
        let a = w.enter(2).unwrap();
        let b = w.enter(2).unwrap();
        assert!(w.enter(2).is_none(), "past hold_max");
        assert_eq!(w.held(), 2);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(a.waited(), Duration::from_millis(1500));
        a.served();
        b.timed_out();
        assert_eq!((w.held(), w.served(), w.timeouts()), (0, 1, 1));
        let (buckets, count, sum) = w.waits.cumulative();
        assert_eq!(count, 2);
        assert!((sum - 3.0).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[4], (0.5, 0), "none waited half a second or less");
        assert_eq!(buckets[6], (2.5, 2), "both within 2.5 s");
        assert!(w.enter(2).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_lapses_by_itself_or_ends_on_resume() {
        let w = Waiting::new("p");
        assert_eq!(w.paused_for(), None);
        w.pause(tokio::time::Instant::now() + Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.paused_for(), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(w.paused_for(), None, "lapsed at its deadline");
        assert!(!w.is_paused());
        assert!(!w.resume(), "nothing was in force");
        w.pause(tokio::time::Instant::now() + Duration::from_secs(30));
        assert!(w.is_paused());
        assert!(w.resume());
        assert_eq!(w.paused_for(), None);
        assert!(!w.is_paused());
    }

    #[tokio::test]
    async fn a_wake_between_looking_and_waiting_is_not_lost() {
        let w = Arc::new(Waiting::new("p"));
        let changed = w.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // The decision lands after the client looked, before it waits.
        w.wake();
        tokio::time::timeout(Duration::from_secs(1), changed)
            .await
            .expect("the armed wait sees the wake");
    }
}
