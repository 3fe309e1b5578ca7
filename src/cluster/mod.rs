//! Shared routing state: the snapshot that sessions read, the per-backend
//! atomics that checkers write, the per-member decisions that the control
//! module writes, and the registry that keeps both across configs. No IO
//! happens here.

pub mod backend;
pub mod member;
pub mod registry;
pub mod snapshot;
pub mod waiting;

pub use backend::{BackendState, SessionGuard};
pub use member::MemberState;
pub use registry::Registry;
pub use snapshot::{Member, Pool, Snapshot};
pub use waiting::Waiting;
