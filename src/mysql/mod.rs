//! The small part of the MySQL protocol that dbsplice speaks itself, sans-IO.
//! Client traffic is never parsed: these are the packets dbsplice sends when it
//! answers a client on its own, and what its health probe exchanges:
//! framing (`packet`), text result sets (`resultset`), authentication
//! (`auth`) and the probe state machine (`probe`).

// Every number here may come from a hostile server: arithmetic on it is
// checked, saturating or widened, never left to overflow.
#![warn(clippy::arithmetic_side_effects)]

pub mod auth;
pub mod facts;
pub mod packet;
pub mod probe;
pub mod resultset;

pub use facts::{Facts, ProbeError};
pub use packet::{err_packet, printable, ProtocolError, ServerError, ER_CON_COUNT_ERROR};
pub use probe::{Action, Probe, ProbeOptions, TlsMode};
