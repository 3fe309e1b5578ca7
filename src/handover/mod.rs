//! Handing this process's listeners and open sessions to a new dbsplice
//! process (an upgrade that closes nothing): the format of what is handed
//! over ([`mod@format`], pure) and the socket it crosses ([`channel`]). The
//! steps on either side are in [`crate::upgrade`].

pub mod channel;
pub mod format;
