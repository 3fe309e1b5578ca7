//! The small part of the MySQL protocol that dbsplice speaks itself, sans-IO.
//! Client traffic is never parsed: these packets are what dbsplice sends when
//! it must answer a client on its own, and (later) what its probes exchange.

pub mod packet;

pub use packet::{err_packet, ER_CON_COUNT_ERROR};
