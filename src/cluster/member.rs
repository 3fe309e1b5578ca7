//! What the control module decided about one backend in one pool, shared with
//! the sessions that read it: whether it takes new sessions, and the token
//! that closes the sessions opened on it. Written by the control module alone;
//! kept by pool and address in the [`super::Registry`], so a reload that keeps
//! the member keeps its decision and its open sessions' token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// One pool member's decision.
#[derive(Debug, Default)]
pub struct MemberState {
    /// May take new sessions.
    eligible: AtomicBool,
    /// Cancelled to close this pool's sessions on this backend.
    evict: Mutex<CancellationToken>,
}

impl MemberState {
    /// Whether the controller lets new sessions come here.
    pub fn is_eligible(&self) -> bool {
        self.eligible.load(Ordering::Acquire)
    }

    /// Records the controller's decision; returns the previous one.
    pub fn set_eligible(&self, eligible: bool) -> bool {
        self.eligible.swap(eligible, Ordering::AcqRel)
    }

    /// The token a new session on this member watches.
    pub fn evict_token(&self) -> CancellationToken {
        self.evict
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Hands out the token of the sessions open now and gives later sessions a
    /// fresh one; cancelling the returned token closes exactly the former.
    pub fn take_evict_token(&self) -> CancellationToken {
        std::mem::take(&mut *self.evict.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
