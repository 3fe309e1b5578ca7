//! The cap on open sessions that the open-files limit allows. Each session
//! holds two descriptors (client and backend), so accepting past
//! `(limit - reserve) / 2` sessions would only end in refusing clients, or in
//! checks failing for want of a descriptor. At the cap the accept loops stop
//! taking clients, who wait in the kernel's backlog until a session ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Descriptors kept for everything but sessions (listening sockets and
/// their per-worker duplicates, probes in flight, admin connections, the
/// config watch, event loops and logs): a quarter of the limit, at least 16
/// and at most 128.
pub fn reserved_fds(nofile: u64) -> u64 {
    (nofile / 4).clamp(16, 128)
}

/// Process-wide count of open sessions against the cap.
#[derive(Debug)]
pub struct SessionCap {
    limit: usize,
    reserved: u64,
    open: AtomicUsize,
    freed: Notify,
}

impl SessionCap {
    /// The cap for an open-files limit of `nofile`.
    pub fn for_nofile(nofile: u64) -> SessionCap {
        let reserved = reserved_fds(nofile);
        let sessions = nofile.saturating_sub(reserved) / 2;
        SessionCap {
            limit: usize::try_from(sessions).unwrap_or(usize::MAX).max(1),
            reserved,
            open: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// The cap for this process's current (soft) open-files limit.
    pub fn for_this_process() -> SessionCap {
        let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        SessionCap::for_nofile(nofile)
    }

    /// Descriptors kept for everything but sessions.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Most sessions open at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sessions open now (including slots held by accept loops waiting for
    /// their next client).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more session; `None` at the cap.
    pub fn try_slot(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }

    /// Waits for a slot.
    pub async fn slot(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the second look, so no release is missed.
            freed.as_mut().enable();
            if let Some(slot) = self.try_slot() {
                return slot;
            }
            freed.await;
        }
    }
}

/// One session's place under the cap, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<SessionCap>);

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0.open.fetch_sub(1, Ordering::AcqRel);
        // Only an accept loop that found the cap full can be waiting.
        if before >= self.0.limit {
            self.0.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn two_descriptors_per_session_after_the_reserve() {
        assert_eq!(SessionCap::for_nofile(20_000).limit(), 9_936);
        assert_eq!(SessionCap::for_nofile(256).limit(), 96);
        assert_eq!(SessionCap::for_nofile(48).limit(), 16);
        assert_eq!(SessionCap::for_nofile(10).limit(), 1, "never zero");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_next_slot_waits_for_a_session_to_end() {
        let cap = Arc::new(SessionCap::for_nofile(20));
        let first = cap.try_slot().unwrap();
        let _second = cap.try_slot().unwrap();
        assert!(cap.try_slot().is_none(), "a third session past a cap of 2");
        let waiting = tokio::spawn({
            let cap = Arc::clone(&cap);
            async move { cap.slot().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !waiting.is_finished(),
            "a slot appeared while the cap was full"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the freed slot reaches the waiting accept loop")
            .unwrap();
        assert_eq!(cap.open(), 2);
        drop(third);
        assert_eq!(cap.open(), 1);
    }
}
