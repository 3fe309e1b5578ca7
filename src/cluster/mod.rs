//! Shared routing state: the snapshot that sessions read, the per-backend
//! atomics that checkers write, and the registry that keeps them across
//! configs. No IO happens here.

pub mod backend;
pub mod registry;
pub mod snapshot;

pub use backend::{BackendState, SessionGuard};
pub use registry::Registry;
pub use snapshot::{Member, Pool, Snapshot};
