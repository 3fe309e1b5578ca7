//! Backend health: thresholds (`state`, pure), one probe (`probe`), the
//! checker task per address (`checker`) and the set of checkers (`supervisor`).

pub mod checker;
pub mod histograms;
pub mod probe;
pub mod state;
pub mod supervisor;
pub mod tls;

pub use checker::MIN_GAP;
pub use state::{Tracker, Transition};
pub use supervisor::Supervisor;
