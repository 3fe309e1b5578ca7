//! The data path: accept loops, sessions, splicing, socket options, and
//! pausing sessions for a hand-over to a new process.

pub mod bind;
pub mod cap;
pub mod greeting;
pub mod listener;
pub mod park;
pub mod session;
pub mod sockopt;
pub mod splice;

pub use listener::{AcceptLoop, Adopter, ListenerStats, Taken};
