//! The health probe as a sans-IO state machine: fed bytes, it says what to
//! write, when to read, when to start TLS and, at the end, what it learned.
//!
//! greeting -> (SSL request -> TLS) -> handshake response -> auth exchange
//! (switch, caching_sha2 more data) -> COM_PING -> queries -> COM_QUIT.
//!
//! A probe that logged in always ends with COM_QUIT, so the server counts
//! neither an aborted connect nor an aborted client.

use std::collections::VecDeque;
use std::sync::Arc;

use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse, SslRequest,
};
use mysql_common::proto::MySerialize;

use super::auth;
use super::facts::{self, Facts, ProbeError, Query};
use super::packet::{frame, parse_err, Packet, PacketBuffer, ProtocolError};
use super::resultset::{QueryOutcome, ResultReader};

/// Largest packet a probe accepts: greetings and check results are small.
const MAX_PACKET: usize = 64 * 1024;
const MAX_PACKET_SIZE_ANNOUNCED: u32 = 16 * 1024 * 1024;
/// utf8mb4_general_ci: understood by every supported server.
const COLLATION: u8 = 45;
const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;

/// Whether the probe uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    Disabled,
    /// When the server offers it.
    Preferred,
    /// Always; a server without TLS fails the check.
    Required,
}

/// What a probe needs to know; shared by every probe of a backend.
#[derive(Clone)]
pub struct ProbeOptions {
    /// The check user.
    pub user: String,
    /// Its password (never logged).
    pub password: String,
    /// TLS use.
    pub tls: TlsMode,
    /// Ask for replication lag.
    pub lag: bool,
    /// Ask for Galera state.
    pub galera: bool,
    /// Accept a Galera donor (state 2) as ready.
    pub galera_donor_ok: bool,
    /// Ask for group replication membership.
    pub group_replication: bool,
    /// The server's RSA public key (PEM) for caching_sha2 full authentication without TLS.
    pub server_public_key: Option<Vec<u8>>,
    /// Without that key and without TLS, ask the server for its key. Off by
    /// default: whoever answers on the path could send their own key and
    /// decrypt the password.
    pub get_server_public_key: bool,
}

impl std::fmt::Debug for ProbeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeOptions")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("tls", &self.tls)
            .field("lag", &self.lag)
            .field("galera", &self.galera)
            .finish_non_exhaustive()
    }
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Read more bytes and call [`Probe::on_data`] (or [`Probe::on_eof`]).
    Read,
    /// Start TLS on the connection, then call [`Probe::on_tls_ready`].
    StartTls,
    /// Close the connection; the probe is over.
    Done(Result<Facts, ProbeError>),
}

#[derive(Debug)]
enum State {
    Greeting,
    AwaitTls,
    Auth,
    Ping,
    Query(Query, ResultReader),
    Statement(ResultReader),
    Over,
}

/// One probe of one backend.
#[derive(Debug)]
pub struct Probe {
    opts: Arc<ProbeOptions>,
    state: State,
    input: PacketBuffer,
    actions: VecDeque<Action>,
    handshake: Option<HandshakePacket<'static>>,
    plugin: AuthPlugin<'static>,
    nonce: Vec<u8>,
    tls: bool,
    switched: bool,
    awaiting_key: bool,
    queries: VecDeque<Query>,
    /// Statements to run instead of the check's queries, when this is an
    /// admin session rather than a probe.
    script: Option<VecDeque<String>>,
    /// A script whose session stays open after it (for a lock held by the
    /// session): no COM_QUIT after a success; the driver sends it when done.
    keep_open: bool,
    facts: Facts,
}

impl Probe {
    /// A probe that waits for the server's greeting.
    pub fn new(opts: Arc<ProbeOptions>) -> Probe {
        let queries = facts::queries(&opts);
        Probe {
            opts,
            state: State::Greeting,
            input: PacketBuffer::new(MAX_PACKET),
            actions: VecDeque::new(),
            handshake: None,
            plugin: AuthPlugin::MysqlNativePassword,
            nonce: Vec::new(),
            tls: false,
            switched: false,
            awaiting_key: false,
            queries,
            script: None,
            keep_open: false,
            facts: Facts::default(),
        }
    }

    /// An admin session: the same login and COM_PING as a probe, then
    /// `statements` in order instead of the check's queries, then COM_QUIT.
    /// Each answer is kept in [`Facts::answers`]; the first statement that
    /// fails is the last one sent. The role and the rest of the facts are
    /// not asked.
    pub fn script(opts: Arc<ProbeOptions>, statements: Vec<String>) -> Probe {
        let mut probe = Probe::new(opts);
        probe.queries.clear();
        probe.script = Some(statements.into());
        probe
    }

    /// [`Probe::script`] whose session stays logged in after a successful
    /// script: the driver ends it with [`quit`] when the caller is done (a
    /// `GET_LOCK` lives as long as its session).
    pub fn script_kept_open(opts: Arc<ProbeOptions>, statements: Vec<String>) -> Probe {
        let mut probe = Probe::script(opts, statements);
        probe.keep_open = true;
        probe
    }

    /// Bytes received from the server.
    pub fn on_data(&mut self, bytes: &[u8]) {
        self.input.push(bytes);
    }

    /// The server closed the connection.
    pub fn on_eof(&mut self) {
        if !matches!(self.state, State::Over) {
            let during = self.stage_name();
            self.fail(ProbeError::Closed(during), false);
        }
    }

    /// TLS is established; the login continues inside it.
    ///
    /// Anything still buffered came in plaintext before the switch, where
    /// anyone on the path could have written it: a protocol error, never
    /// bytes to read as if they had arrived inside TLS.
    pub fn on_tls_ready(&mut self) {
        if self.input.has_partial() {
            self.protocol_error(plaintext_before_tls());
            return;
        }
        self.tls = true;
        self.send_handshake_response(2);
    }

    /// The next thing to do.
    pub fn next_action(&mut self) -> Action {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return action;
            }
            if matches!(self.state, State::Over | State::AwaitTls) {
                // Over: Done was already handed out; AwaitTls: StartTls was.
                return Action::Read;
            }
            match self.input.next_packet() {
                Ok(Some(packet)) => self.on_packet(packet),
                Ok(None) => return Action::Read,
                Err(e) => self.protocol_error(e),
            }
        }
    }

    fn stage_name(&self) -> &'static str {
        match self.state {
            State::Greeting => "before the greeting",
            State::AwaitTls => "during TLS setup",
            State::Auth => "during login",
            State::Ping => "after COM_PING",
            State::Query(..) => "during a check query",
            State::Statement(..) => "during an admin statement",
            State::Over => "after the probe",
        }
    }

    fn on_packet(&mut self, packet: Packet) {
        let result = match std::mem::replace(&mut self.state, State::Over) {
            State::Greeting => self.on_greeting(&packet.payload),
            State::Auth => self.on_auth(packet),
            State::Ping => self.on_ping(&packet.payload),
            State::Query(query, reader) => self.on_query_packet(query, reader, &packet.payload),
            State::Statement(reader) => self.on_statement_packet(reader, &packet.payload),
            state @ (State::AwaitTls | State::Over) => {
                self.state = state;
                Ok(())
            }
        };
        if let Err(e) = result {
            self.protocol_error(e);
        }
    }

    fn on_greeting(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        match payload.first() {
            Some(0xff) => {
                let error = parse_err(payload)?;
                self.fail(facts::greeting_error(error), false);
                return Ok(());
            }
            Some(10) => {}
            Some(v) => {
                return Err(ProtocolError(format!(
                    "not a MySQL greeting (protocol version {v})"
                )))
            }
            None => return Err(ProtocolError("empty greeting".into())),
        }
        precheck_greeting(payload)?;
        let handshake: HandshakePacket<'_> = ParseBuf(payload)
            .parse(())
            .map_err(|e| ProtocolError(format!("malformed greeting: {e}")))?;
        let handshake = handshake.into_owned();
        let caps = handshake.capabilities();
        if !caps.contains(
            CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SECURE_CONNECTION,
        ) {
            return Err(ProtocolError(
                "the server is too old: it lacks the 4.1 protocol".into(),
            ));
        }
        self.nonce = handshake.nonce();
        self.plugin = match handshake.auth_plugin_name_ref() {
            Some(name) => AuthPlugin::from_bytes(name).into_owned(),
            None => AuthPlugin::MysqlNativePassword,
        };
        // MariaDB prefixes "5.5.5-" for the sake of old clients.
        let version = handshake.server_version_ref();
        let version = version.strip_prefix(b"5.5.5-").unwrap_or(version);
        let version = version
            .get(..super::packet::MAX_SERVER_MESSAGE)
            .unwrap_or(version);
        self.facts.server_version = super::packet::printable(version);
        let offers_tls = caps.contains(CapabilityFlags::CLIENT_SSL);
        self.handshake = Some(handshake);
        match (self.opts.tls, offers_tls) {
            (TlsMode::Required | TlsMode::Preferred, true) if self.input.has_partial() => {
                return Err(plaintext_before_tls());
            }
            (TlsMode::Required | TlsMode::Preferred, true) => {
                let request =
                    SslRequest::new(self.capabilities(), MAX_PACKET_SIZE_ANNOUNCED, COLLATION);
                let mut payload = Vec::new();
                request.serialize(&mut payload);
                self.actions.push_back(Action::Write(frame(1, &payload)));
                self.actions.push_back(Action::StartTls);
                self.state = State::AwaitTls;
            }
            (TlsMode::Required, false) => self.fail(ProbeError::TlsUnavailable, false),
            _ => self.send_handshake_response(1),
        }
        Ok(())
    }

    fn capabilities(&self) -> CapabilityFlags {
        let wanted = CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_LONG_FLAG
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_SSL;
        let server = self
            .handshake
            .as_ref()
            .map_or(CapabilityFlags::empty(), HandshakePacket::capabilities);
        let mut caps = wanted & server;
        if self.opts.tls == TlsMode::Disabled {
            caps.remove(CapabilityFlags::CLIENT_SSL);
        }
        caps
    }

    fn send_handshake_response(&mut self, seq: u8) {
        let plugin = match auth::plugin(self.plugin.as_bytes()) {
            Ok(p) => p,
            // The greeting's default plugin is only a suggestion: answer with
            // native and let the server switch to the user's plugin.
            Err(_) => AuthPlugin::MysqlNativePassword,
        };
        let data = auth::scramble(&plugin, &self.opts.password, &self.nonce);
        let server_version = version_triple(&self.facts.server_version);
        let response = HandshakeResponse::new(
            Some(data),
            server_version,
            Some(self.opts.user.as_bytes()),
            None::<&[u8]>,
            Some(plugin.clone()),
            self.capabilities(),
            None,
            MAX_PACKET_SIZE_ANNOUNCED,
        );
        self.plugin = plugin;
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        self.actions.push_back(Action::Write(frame(seq, &payload)));
        self.state = State::Auth;
    }

    fn on_auth(&mut self, packet: Packet) -> Result<(), ProtocolError> {
        let payload = &packet.payload;
        let reply_seq = packet.seq.wrapping_add(1);
        match payload.first() {
            Some(0x00) => {
                self.actions.push_back(Action::Write(frame(0, &[COM_PING])));
                self.state = State::Ping;
            }
            Some(0xff) => {
                let error = parse_err(payload)?;
                self.fail(facts::login_error(error, self.tls), false);
            }
            Some(0xfe) if !self.switched => self.on_auth_switch(payload, reply_seq)?,
            Some(0x01) => self.on_more_data(payload, reply_seq)?,
            _ => return Err(ProtocolError("unexpected packet during login".into())),
        }
        Ok(())
    }

    fn on_auth_switch(&mut self, payload: &[u8], seq: u8) -> Result<(), ProtocolError> {
        self.switched = true;
        let request: AuthSwitchRequest<'_> = ParseBuf(payload)
            .parse(())
            .map_err(|e| ProtocolError(format!("malformed auth switch: {e}")))?;
        let plugin = match auth::plugin(request.auth_plugin().as_bytes()) {
            Ok(p) => p,
            Err(reason) => {
                self.fail(ProbeError::Unsupported(reason), false);
                return Ok(());
            }
        };
        self.nonce = request.plugin_data().to_vec();
        let data = auth::scramble(&plugin, &self.opts.password, &self.nonce);
        self.plugin = plugin;
        self.actions.push_back(Action::Write(frame(seq, &data)));
        self.state = State::Auth;
        Ok(())
    }

    /// caching_sha2_password: 3 is "fast path passed", 4 "send the password";
    /// after asking for the key, the data is the server's PEM public key.
    fn on_more_data(&mut self, payload: &[u8], seq: u8) -> Result<(), ProtocolError> {
        if self.plugin != AuthPlugin::CachingSha2Password {
            return Err(ProtocolError("unexpected auth data for this plugin".into()));
        }
        let data = payload.get(1..).unwrap_or_default();
        self.state = State::Auth;
        if self.awaiting_key {
            self.awaiting_key = false;
            return self.send_encrypted(data, seq);
        }
        match data {
            [3] => {}
            [4] if self.tls => self.actions.push_back(Action::Write(frame(
                seq,
                &auth::cleartext(&self.opts.password),
            ))),
            [4] => match self.opts.server_public_key.clone() {
                Some(key) => self.send_encrypted(&key, seq)?,
                None if self.opts.get_server_public_key => {
                    self.awaiting_key = true;
                    self.actions.push_back(Action::Write(frame(seq, &[0x02])));
                }
                None => self.fail(
                    ProbeError::Unsupported(
                        "the server wants the full password (caching_sha2_password) and the check \
                         has neither TLS nor the server's key: set tls = \"required\", or \
                         server_public_key_file, or get_server_public_key = true to trust the key \
                         the server sends"
                            .into(),
                    ),
                    false,
                ),
            },
            _ => {
                return Err(ProtocolError(
                    "unexpected caching_sha2_password data".into(),
                ))
            }
        }
        Ok(())
    }

    fn send_encrypted(&mut self, pem: &[u8], seq: u8) -> Result<(), ProtocolError> {
        let encrypted =
            auth::rsa_encrypted(&self.opts.password, &self.nonce, pem).map_err(ProtocolError)?;
        self.actions
            .push_back(Action::Write(frame(seq, &encrypted)));
        Ok(())
    }

    fn on_ping(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        match payload.first() {
            Some(0x00) => {
                self.next_query();
                Ok(())
            }
            Some(0xff) => {
                let error = parse_err(payload)?;
                self.fail(
                    ProbeError::Query {
                        what: "COM_PING",
                        error,
                    },
                    true,
                );
                Ok(())
            }
            _ => Err(ProtocolError("unexpected answer to COM_PING".into())),
        }
    }

    fn next_query(&mut self) {
        if let Some(script) = self.script.as_mut() {
            match script.pop_front() {
                Some(sql) => {
                    let mut payload = vec![COM_QUERY];
                    payload.extend_from_slice(sql.as_bytes());
                    self.actions.push_back(Action::Write(frame(0, &payload)));
                    self.state = State::Statement(ResultReader::default());
                }
                None => {
                    let facts = std::mem::take(&mut self.facts);
                    self.finish(Ok(facts), true);
                }
            }
            return;
        }
        match self.queries.pop_front() {
            Some(query) => {
                let mut payload = vec![COM_QUERY];
                payload.extend_from_slice(query.sql().as_bytes());
                self.actions.push_back(Action::Write(frame(0, &payload)));
                self.state = State::Query(query, ResultReader::default());
            }
            None => {
                let facts = std::mem::take(&mut self.facts);
                self.finish(facts.verdict(&self.opts), true);
            }
        }
    }

    fn on_query_packet(
        &mut self,
        query: Query,
        mut reader: ResultReader,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        let Some(outcome) = reader.feed(payload)? else {
            self.state = State::Query(query, reader);
            return Ok(());
        };
        match self.facts.learn(query, outcome) {
            Ok(Some(retry)) => self.queries.push_front(retry),
            Ok(None) => {}
            Err(e) => {
                self.fail(e, true);
                return Ok(());
            }
        }
        self.next_query();
        Ok(())
    }

    fn on_statement_packet(
        &mut self,
        mut reader: ResultReader,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        let Some(outcome) = reader.feed(payload)? else {
            self.state = State::Statement(reader);
            return Ok(());
        };
        let failed = matches!(outcome, QueryOutcome::Failed(_));
        self.facts.answers.push(outcome);
        if failed {
            // The statements after it assumed it worked.
            if let Some(script) = self.script.as_mut() {
                script.clear();
            }
        }
        self.next_query();
        Ok(())
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        let logged_in = matches!(
            self.state,
            State::Ping | State::Query(..) | State::Statement(..)
        );
        self.fail(ProbeError::Protocol(e.0), logged_in);
    }

    fn fail(&mut self, error: ProbeError, logged_in: bool) {
        self.finish(Err(error), logged_in);
    }

    /// Ends the probe: COM_QUIT first when logged in, so the server records
    /// a clean disconnect.
    fn finish(&mut self, result: Result<Facts, ProbeError>, logged_in: bool) {
        self.actions.clear();
        if logged_in && !(self.keep_open && result.is_ok()) {
            self.actions.push_back(Action::Write(frame(0, &[COM_QUIT])));
        }
        self.actions.push_back(Action::Done(result));
        self.state = State::Over;
    }
}

/// COM_QUIT, framed: how a session kept open is ended.
pub fn quit() -> Vec<u8> {
    frame(0, &[COM_QUIT])
}

/// The server (or someone on the path) sent more than its greeting before
/// the TLS handshake: bytes that must not be trusted as the login's answers.
fn plaintext_before_tls() -> ProtocolError {
    ProtocolError("the server sent bytes after its greeting, before TLS started".into())
}

/// The leading `major.minor.patch` of a version string, `(5, 7, 0)` when
/// there is none. (`mysql_common`'s own parser panics on out-of-range numbers.)
fn version_triple(version: &str) -> (u16, u16, u16) {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u16>().ok());
    match (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => (5, 7, 0),
    }
}

/// Checks what `mysql_common`'s greeting parser trusts: it computes the
/// second scramble's length from a byte that must be small, and overflows
/// (panics in checked builds) on values above 127. Real servers send 21 or 0.
fn precheck_greeting(payload: &[u8]) -> Result<(), ProtocolError> {
    let version_end = payload
        .iter()
        .skip(1)
        .position(|&b| b == 0)
        .ok_or_else(|| ProtocolError("malformed greeting: unterminated server version".into()))?;
    // protocol byte, version, NUL; then connection id (4), scramble (8),
    // filler (1), capabilities (2), collation (1), status (2), capabilities (2).
    let data_len_at = version_end.saturating_add(1 + 1 + 20);
    match payload.get(data_len_at) {
        Some(&len) if len > 127 => Err(ProtocolError(format!(
            "malformed greeting: auth data length {len}"
        ))),
        Some(_) => Ok(()),
        None => Err(ProtocolError("malformed greeting: too short".into())),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests;
