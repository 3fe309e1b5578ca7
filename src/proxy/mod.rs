//! The data path: accept loops, sessions, splicing and socket options.

pub mod bind;
pub mod cap;
pub mod greeting;
pub mod listener;
pub mod session;
pub mod sockopt;
pub mod splice;

pub use listener::{AcceptLoop, ListenerStats};
