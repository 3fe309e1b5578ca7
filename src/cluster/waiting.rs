//! The clients a pool holds while no backend can take them: a line in
//! arrival order bounded by `hold_max`, the wake-ups that give its clients a
//! turn, and the figures the metrics and the log report. Kept by pool name in
//! the [`super::Registry`], so held clients outlive a reload.
//!
//! Two kinds of news give turns. A decision of the control module (a backend
//! up, a reload, a resume) may let every held client in, so all of them look
//! again at once. A session ending on one of the pool's backends (or a full
//! server found with room) frees one slot, so only the first client in line
//! not already looking gets the turn; once connected it passes a turn on, in
//! case there was room for more. A newcomer that finds clients held queues
//! behind them instead of taking the slot they wait for.

use std::collections::VecDeque;
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

/// One held client's place in line.
#[derive(Debug)]
struct Place {
    id: u64,
    /// Its own wake-up: a turn given while it is not waiting is kept.
    turn: Arc<Notify>,
    /// Given a turn it has not used up yet (it is looking at the pool).
    woken: bool,
}

/// The held clients in arrival order.
#[derive(Debug, Default)]
struct Line {
    next_id: u64,
    places: VecDeque<Place>,
}

/// One pool's held clients.
#[derive(Debug, Default)]
pub struct Waiting {
    /// The pool's name, for the log lines.
    pool: String,
    /// How many are in `line`: read without the lock by every new session.
    held: AtomicUsize,
    line: Mutex<Line>,
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

/// A held client's place in line; given back on drop.
#[derive(Debug)]
pub struct Held {
    waiting: Arc<Waiting>,
    id: u64,
    turn: Arc<Notify>,
    /// Whether others were in line when it came.
    behind: bool,
    started: tokio::time::Instant,
    /// Connected: whoever is next may find room too.
    connected: bool,
}

impl Waiting {
    /// No client held in pool `pool`.
    pub fn new(pool: &str) -> Waiting {
        Waiting {
            pool: pool.to_owned(),
            ..Waiting::default()
        }
    }

    /// Takes the last place in line if fewer than `max` clients are held.
    pub fn enter(self: &Arc<Self>, max: u32) -> Option<Held> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let mut line = self.lock();
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let id = line.next_id;
        line.next_id += 1;
        let turn = Arc::new(Notify::new());
        let behind = !line.places.is_empty();
        line.places.push_back(Place {
            id,
            turn: Arc::clone(&turn),
            woken: false,
        });
        drop(line);
        if before == 0 {
            tracing::warn!(pool = %self.pool, "no backend can take new clients: holding them");
        }
        self.episode_count.fetch_add(1, Ordering::Relaxed);
        Some(Held {
            waiting: Arc::clone(self),
            id,
            turn,
            behind,
            started: tokio::time::Instant::now(),
            connected: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives every held client a turn: something was decided that may let
    /// them all in.
    pub fn wake(&self) {
        if self.held() == 0 {
            return;
        }
        for place in &mut self.lock().places {
            place.woken = true;
            place.turn.notify_one();
        }
    }

    /// Gives a turn to the first held client not already looking: a slot
    /// freed on one of the pool's backends.
    pub fn wake_next(&self) {
        if self.held() == 0 {
            return;
        }
        if let Some(place) = self.lock().places.iter_mut().find(|p| !p.woken) {
            place.woken = true;
            place.turn.notify_one();
        }
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
    /// Whether others were held already when this client came: it waits
    /// for its turn before looking.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// The next turn (one given since the last [`Held::again`] is kept).
    pub async fn turn(&self) {
        self.turn.notified().await;
    }

    /// The client looked and found no room: it waits for another turn,
    /// keeping its place.
    pub fn again(&self) {
        if let Some(place) = self
            .waiting
            .lock()
            .places
            .iter_mut()
            .find(|p| p.id == self.id)
        {
            place.woken = false;
        }
    }

    /// How long this client has waited.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the wait with the client connected.
    pub fn served(mut self) {
        self.connected = true;
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
        let mut line = w.lock();
        let woken = line
            .places
            .iter()
            .position(|p| p.id == self.id)
            .and_then(|i| line.places.remove(i))
            .is_some_and(|p| p.woken);
        let last = w.held.fetch_sub(1, Ordering::AcqRel) == 1;
        drop(line);
        w.waits.record(self.started.elapsed());
        let waited = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        w.episode_longest_ms.fetch_max(waited, Ordering::Relaxed);
        // A turn this client was given and did not use, or room it found,
        // goes to whoever is next.
        if woken || self.connected {
            w.wake_next();
        }
        if last {
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

    /// Whether `held`'s turn has come, without waiting for it.
    async fn has_turn(held: &Held) -> bool {
        tokio::time::timeout(Duration::from_millis(1), held.turn())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_first_in_line_not_already_looking() {
        let w = Arc::new(Waiting::new("p"));
        let held: Vec<Held> = (0..3).map(|_| w.enter(10).unwrap()).collect();
        assert!(!held[0].behind() && held[1].behind() && held[2].behind());
        w.wake_next();
        w.wake_next();
        assert!(has_turn(&held[0]).await && has_turn(&held[1]).await);
        assert!(!has_turn(&held[2]).await, "two slots, two turns");
        // The first finds no room after all and waits again; the next slot
        // is still its own.
        held[0].again();
        w.wake_next();
        assert!(has_turn(&held[0]).await);
        assert!(!has_turn(&held[2]).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_is_passed_on_when_connected_or_left_unused() {
        let w = Arc::new(Waiting::new("p"));
        let mut held: Vec<Held> = (0..3).map(|_| w.enter(10).unwrap()).collect();
        let third = held.pop().unwrap();
        let second = held.pop().unwrap();
        let first = held.pop().unwrap();
        w.wake_next();
        assert!(has_turn(&first).await);
        first.served();
        assert!(has_turn(&second).await, "room for one may be room for more");
        // Gone while its turn was pending: the turn goes on.
        drop(second);
        assert!(has_turn(&third).await);
        assert_eq!(w.held(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_decision_gives_everyone_a_turn_and_one_given_early_is_kept() {
        let w = Arc::new(Waiting::new("p"));
        let held: Vec<Held> = (0..3).map(|_| w.enter(10).unwrap()).collect();
        // Given while the clients are still looking: kept for their wait.
        w.wake();
        for h in &held {
            h.again();
            assert!(has_turn(h).await);
        }
        assert!(!has_turn(&held[0]).await, "one turn each");
    }
}
