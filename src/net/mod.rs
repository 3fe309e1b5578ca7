//! What the data path and the checkers share about the network, without doing
//! IO themselves: the PROXY protocol header dbsplice sends first, and how a
//! failed connect or accept is classified and described.

pub mod errors;
pub mod proxy_header;

pub use errors::{describe_connect_error, is_local_shortage};
