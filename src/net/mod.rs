//! What the data path, the checkers and the resolver share about the
//! network, without doing IO themselves: the PROXY protocol header dbsplice
//! sends first, how a failed connect or accept is classified and described,
//! and the DNS messages dbsplice exchanges itself.

pub mod dns;
pub mod errors;
pub mod proxy_header;

pub use errors::{describe_connect_error, is_local_shortage};
