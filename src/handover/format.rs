//! The hand-over format: what one dbsplice process tells the next when it
//! gives it its listeners and sessions. Pure: the types, their JSON, and
//! the checks a receiver makes. [`super::channel`] carries it.
//!
//! # Format 1
//!
//! The two processes exchange messages over a `SOCK_SEQPACKET` Unix socket.
//! A message is one JSON object (the [`Message`] enum, tagged by `"kind"`)
//! split into packets of at most [`PACKET_BYTES`]: each packet's first byte
//! is 1 when more packets of the same message follow and 0 on its last. A
//! message with `"kind": "fds"` carries `count` descriptors as `SCM_RIGHTS`
//! on its (single) packet; descriptors are numbered in the order they
//! arrive, from 0, and the state names them by those numbers.
//!
//! The exchange, with `old` the running process and `new` the one it
//! started:
//!
//! 1. new → old: `hello` (the formats it reads, its pid, version, commit);
//!    old goes on only if it writes one of them.
//! 2. old pauses every session, then → new: `fds` messages (at most
//!    [`FDS_PER_MESSAGE`] each), then `state` (every listener, session and
//!    backend fact, naming descriptors by number).
//! 3. new → old: `ready` once it has built everything; it has touched no
//!    socket yet.
//! 4. old → new: `commit`. From here old never touches the sessions again
//!    (unless new is seen to have exited).
//! 5. new → old: `running` once sessions splice and listeners accept there.
//! 6. old tells the service manager the new main pid, → new: `main`; new
//!    says READY=1; old exits 0.
//!
//! Any other message, a closed socket or a timeout before `commit` calls the
//! hand-over off: old resumes every session and keeps serving. A `failed`
//! message says why, either way.
//!
//! A later release that changes the state adds a format number: it keeps
//! reading this one (the frozen sample in the tests), and writes whichever
//! the other side says it reads in `hello`. Fields added to format 1 must
//! be optional (`#[serde(default)]`), so that format 1 stays readable.

use serde::{Deserialize, Serialize};

/// The format this build writes.
pub const FORMAT: u32 = 1;

/// The formats this build reads.
pub const READS: &[u32] = &[1];

/// Largest packet on the hand-over socket, marker byte included.
pub const PACKET_BYTES: usize = 64 * 1024;

/// Descriptors per `fds` message: under the kernel's 253 per message
/// (`SCM_MAX_FD`).
pub const FDS_PER_MESSAGE: usize = 250;

/// Largest message a receiver accepts (the state of 10,000 sessions with a
/// full chunk pending each way fits).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// One message of the exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// The new process introduces itself.
    Hello {
        /// The formats it reads.
        formats: Vec<u32>,
        /// Its process id.
        pid: u32,
        /// Its version.
        version: String,
        /// The commit it was built from.
        commit: String,
    },
    /// Carries this many descriptors.
    Fds {
        /// How many.
        count: u32,
    },
    /// Everything the new process takes over.
    State(Box<State>),
    /// Built, not started.
    Ready {
        /// Sessions it will carry.
        sessions: u32,
    },
    /// Go: the sessions are the new process's now.
    Commit,
    /// Splicing and accepting.
    Running,
    /// The new process is the service's main process now.
    Main,
    /// The sender calls the hand-over off.
    Failed {
        /// Why, for the operator.
        why: String,
    },
}

/// What a process hands over.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    /// The format of this state.
    pub format: u32,
    /// The giving process.
    pub from_pid: u32,
    /// Its version.
    pub from_version: String,
    /// Every listening socket, by listener name.
    pub listeners: Vec<Listener>,
    /// The admin server's listening socket, if it has one.
    #[serde(default)]
    pub admin: Option<u32>,
    /// Every session.
    pub sessions: Vec<Session>,
    /// What was known about each backend.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// The service manager's watchdog interval, in microseconds, when it
    /// asked the giving process for keep-alives.
    #[serde(default)]
    pub watchdog_usec: Option<u64>,
    /// What the control module remembered between decisions.
    #[serde(default)]
    pub memory: Memory,
}

/// The control module's memory, its moments as ages at the hand-over.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Memory {
    /// By pool.
    #[serde(default)]
    pub pools: Vec<PoolMemory>,
    /// By pool and backend.
    #[serde(default)]
    pub members: Vec<MemberMemory>,
    /// Backends their checkers find down, and for how long (the failover
    /// clock).
    #[serde(default)]
    pub down: Vec<Down>,
}

/// What was remembered of one pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoolMemory {
    /// The pool.
    pub pool: String,
    /// A writer pool's writer, by address.
    #[serde(default)]
    pub writer: Option<String>,
    /// Its last writer, kept while there is none.
    #[serde(default)]
    pub last_writer: Option<String>,
    /// `primary` or `standby`: the tier taking new sessions.
    #[serde(default)]
    pub tier: Option<String>,
    /// A reader pool fell back to its writers.
    #[serde(default)]
    pub fallback: bool,
    /// Times new sessions moved to standbys.
    #[serde(default)]
    pub failovers: u64,
    /// Times the writer changed.
    #[serde(default)]
    pub writer_changes: u64,
    /// Milliseconds an operator's pause still lasts.
    #[serde(default)]
    pub paused_ms: Option<u64>,
}

/// What was remembered of one backend in one pool.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberMemory {
    /// The pool.
    pub pool: String,
    /// The backend's address.
    pub address: String,
    /// Out of a reader pool for lag (hysteresis).
    #[serde(default)]
    pub lagged_out: bool,
    /// Fail-back and flap history.
    #[serde(default)]
    pub hold: Hold,
}

/// Fail-back and flap history of one member.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Hold {
    /// `up`, `down` or none: the health last seen.
    #[serde(default)]
    pub last: Option<String>,
    /// Milliseconds it has been up.
    #[serde(default)]
    pub up_ms: Option<u64>,
    /// Back from down, waiting for its fail-back.
    #[serde(default)]
    pub returned: bool,
    /// An operator approved the fail-back.
    #[serde(default)]
    pub approved: bool,
    /// Milliseconds since each recent change of state.
    #[serde(default)]
    pub flips_ago_ms: Vec<u64>,
    /// Milliseconds the hold-down still lasts.
    #[serde(default)]
    pub damped_ms: Option<u64>,
    /// The hold-down's level.
    #[serde(default)]
    pub level: u32,
}

/// A backend found down.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Down {
    /// Its address.
    pub address: String,
    /// For how many milliseconds.
    pub for_ms: u64,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// The `[[listener]]` name.
    pub name: String,
    /// Its descriptor's number.
    pub fd: u32,
}

/// One client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The listener that accepted it.
    pub listener: String,
    /// The client's address (`ip:port`).
    pub peer: String,
    /// Its pool.
    pub pool: String,
    /// The client socket's descriptor number.
    pub client: u32,
    /// When it began, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Spliced or held.
    pub stage: Stage,
}

/// Where a session stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Spliced to a backend.
    Spliced {
        /// The backend socket's descriptor number.
        backend: u32,
        /// The backend's address as the config names it.
        address: String,
        /// Bytes written to the backend so far.
        to_backend: u64,
        /// Bytes written to the client so far.
        to_client: u64,
        /// Read from the client, not yet written to the backend (hex).
        client_pending: String,
        /// Read from the backend, not yet written to the client (hex).
        backend_pending: String,
        /// The client-to-backend direction: `open`, `eof` (EOF read, not yet
        /// passed on) or `done`.
        client_flow: Flow,
        /// The backend-to-client direction.
        backend_flow: Flow,
        /// Which side sent EOF first: `client`, `backend` or none.
        first_eof: Option<End>,
        /// Milliseconds since the last byte moved.
        idle_ms: u64,
    },
    /// Waiting for a backend of its pool; the client has seen nothing.
    Held {
        /// Milliseconds it has waited.
        waited_ms: u64,
    },
}

/// One direction of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Bytes may still come.
    Open,
    /// EOF read, not yet passed on.
    Eof,
    /// EOF read and passed on.
    Done,
}

/// A side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The application.
    Client,
    /// The server.
    Backend,
}

/// What was known about one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Its address as the config names it.
    pub address: String,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// Why, as the last probe said.
    #[serde(default)]
    pub reason: String,
    /// `writable`, `read-only` or `unknown`.
    #[serde(default)]
    pub role: String,
    /// An operator's override, if one is set.
    #[serde(default)]
    pub admin: Option<Override>,
}

/// An operator's override of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// `drain` or `disable`.
    pub mode: String,
    /// Who set it.
    pub origin: String,
    /// When, in seconds since the Unix epoch.
    pub since_unix: u64,
    /// Milliseconds left, for one set for a while.
    #[serde(default)]
    pub remaining_ms: Option<u64>,
}

/// Why bytes from the other process are not a message of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not JSON, or not a message.
    #[error("not a hand-over message: {0}")]
    Malformed(String),
    /// A state in a format this build does not read.
    #[error("hand-over format {0} (this build reads {READS:?})")]
    Unsupported(u32),
    /// A descriptor number beyond those received.
    #[error("the state names descriptor {fd}, but {received} were received")]
    NoSuchFd {
        /// The number named.
        fd: u32,
        /// How many arrived.
        received: usize,
    },
    /// Pending bytes that are not hex.
    #[error("pending bytes are not hex")]
    BadHex,
}

impl Message {
    /// The message as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A message from JSON; a state is checked against [`READS`].
    pub fn decode(bytes: &[u8]) -> Result<Message, FormatError> {
        let message: Message =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Malformed(e.to_string()))?;
        if let Message::State(state) = &message {
            if !READS.contains(&state.format) {
                return Err(FormatError::Unsupported(state.format));
            }
        }
        Ok(message)
    }
}

impl State {
    /// Checks that every descriptor number names one of `received`.
    pub fn check_fds(&self, received: usize) -> Result<(), FormatError> {
        let named = self.listeners.iter().map(|l| l.fd).chain(self.admin).chain(
            self.sessions.iter().flat_map(|s| {
                let backend = match &s.stage {
                    Stage::Spliced { backend, .. } => Some(*backend),
                    Stage::Held { .. } => None,
                };
                std::iter::once(s.client).chain(backend)
            }),
        );
        for fd in named {
            if usize::try_from(fd).map_or(true, |fd| fd >= received) {
                return Err(FormatError::NoSuchFd { fd, received });
            }
        }
        Ok(())
    }
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Hex back to bytes.
pub fn unhex(text: &str) -> Result<Vec<u8>, FormatError> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(FormatError::BadHex);
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or(FormatError::BadHex)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format 1 as this release writes it. Never edit this sample: a later
    /// release must still take sessions from this one.
    const FROZEN_FORMAT_1: &str = r#"{"kind":"state","format":1,"from_pid":4242,"from_version":"0.1.0","listeners":[{"name":"mysql","fd":0},{"name":"mysql-ro","fd":1}],"admin":2,"sessions":[{"listener":"mysql","peer":"127.0.0.1:50312","pool":"writer","client":3,"started_unix_ms":1764620000123,"stage":{"stage":"spliced","backend":4,"address":"db1:3306","to_backend":812,"to_client":40960,"client_pending":"","backend_pending":"0a0b0cff","client_flow":"open","backend_flow":"open","first_eof":null,"idle_ms":15}},{"listener":"mysql-ro","peer":"[::1]:41000","pool":"readers","client":5,"started_unix_ms":1764620001000,"stage":{"stage":"spliced","backend":6,"address":"db2:3306","to_backend":99,"to_client":7,"client_pending":"","backend_pending":"","client_flow":"done","backend_flow":"open","first_eof":"client","idle_ms":0}},{"listener":"mysql","peer":"127.0.0.1:50400","pool":"writer","client":7,"started_unix_ms":1764620002000,"stage":{"stage":"held","waited_ms":1200}}],"backends":[{"address":"db1:3306","health":"up","reason":"ping ok","role":"writable","admin":null},{"address":"db2:3306","health":"up","reason":"ping ok","role":"read-only","admin":{"mode":"drain","origin":"admin API from 127.0.0.1:40000","since_unix":1764619000,"remaining_ms":60000}}],"watchdog_usec":30000000,"memory":{"pools":[{"pool":"writer","writer":"db1:3306","last_writer":"db1:3306","tier":"primary","fallback":false,"failovers":2,"writer_changes":1,"paused_ms":null}],"members":[{"pool":"readers","address":"db3:3306","lagged_out":false,"hold":{"last":"up","up_ms":5000,"returned":true,"approved":false,"flips_ago_ms":[5000,65000],"damped_ms":null,"level":0}}],"down":[{"address":"db3:3306","for_ms":0}]}}"#;

    #[test]
    fn the_frozen_format_1_sample_decodes() {
        let Ok(Message::State(state)) = Message::decode(FROZEN_FORMAT_1.as_bytes()) else {
            panic!("format 1 no longer decodes");
        };
        assert_eq!(state.format, 1);
        assert_eq!(state.from_pid, 4242);
        assert_eq!(state.listeners.len(), 2);
        assert_eq!(state.admin, Some(2));
        assert_eq!(state.watchdog_usec, Some(30_000_000));
        assert_eq!(state.sessions.len(), 3);
        assert!(state.check_fds(8).is_ok());
        assert!(state.check_fds(7).is_err(), "descriptor 7 is named");
        let Some(first) = state.sessions.first() else {
            panic!("no session");
        };
        assert_eq!(first.peer, "127.0.0.1:50312");
        match &first.stage {
            Stage::Spliced {
                backend,
                backend_pending,
                to_client,
                client_flow,
                first_eof,
                ..
            } => {
                assert_eq!(*backend, 4);
                assert_eq!(unhex(backend_pending), Ok(vec![0x0a, 0x0b, 0x0c, 0xff]));
                assert_eq!(*to_client, 40960);
                assert_eq!(*client_flow, Flow::Open);
                assert_eq!(*first_eof, None);
            }
            Stage::Held { .. } => panic!("the first session was spliced"),
        }
        assert!(matches!(
            state.sessions.get(1).map(|s| &s.stage),
            Some(Stage::Spliced {
                client_flow: Flow::Done,
                first_eof: Some(End::Client),
                ..
            })
        ));
        assert!(matches!(
            state.sessions.get(2).map(|s| &s.stage),
            Some(Stage::Held { waited_ms: 1200 })
        ));
        let drained = state.backends.get(1).and_then(|b| b.admin.as_ref());
        assert_eq!(drained.map(|o| o.mode.as_str()), Some("drain"));
        assert_eq!(drained.and_then(|o| o.remaining_ms), Some(60_000));
        let memory = &state.memory;
        assert_eq!(
            memory.pools.first().and_then(|p| p.writer.as_deref()),
            Some("db1:3306")
        );
        let held = memory.members.first().map(|m| &m.hold);
        assert_eq!(held.map(|h| h.returned), Some(true));
        assert_eq!(
            held.map(|h| h.flips_ago_ms.clone()),
            Some(vec![5000, 65000])
        );
        assert_eq!(memory.down.len(), 1);
    }

    #[test]
    fn this_build_writes_what_it_reads() {
        let message = Message::State(Box::new(State {
            format: FORMAT,
            from_pid: 1,
            ..State::default()
        }));
        assert_eq!(Message::decode(&message.encode()), Ok(message));
        for m in [
            Message::Hello {
                formats: READS.to_vec(),
                pid: 7,
                version: "0.1.0".into(),
                commit: "abc".into(),
            },
            Message::Fds { count: 250 },
            Message::Ready { sessions: 3 },
            Message::Commit,
            Message::Running,
            Message::Main,
            Message::Failed { why: "no".into() },
        ] {
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn a_state_of_an_unknown_format_or_garbage_is_refused() {
        let later = FROZEN_FORMAT_1.replace(r#""format":1"#, r#""format":2"#);
        assert_eq!(
            Message::decode(later.as_bytes()),
            Err(FormatError::Unsupported(2))
        );
        assert!(matches!(
            Message::decode(b"\xff{not json"),
            Err(FormatError::Malformed(_))
        ));
        assert_eq!(unhex("abc"), Err(FormatError::BadHex));
        assert_eq!(unhex("zz"), Err(FormatError::BadHex));
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Ok(vec![0, 1, 254, 255]));
    }
}
