//! The probe against a scripted server: each exchange a MySQL or MariaDB
//! server can produce, and the hostile ones it should not.

use std::sync::Arc;

use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::packets::HandshakePacket;
use mysql_common::proto::MySerialize;

use super::*;
use crate::mysql::facts::ProbeError;
use crate::mysql::resultset::tests::result_set;
use crate::vocabulary::{Lag, Role};

const TEST_KEY: &[u8] = include_bytes!("test_rsa_public.pem");

fn opts(tls: TlsMode) -> ProbeOptions {
    ProbeOptions {
        user: "check".into(),
        password: "pw".into(),
        tls,
        lag: false,
        galera: false,
        galera_donor_ok: false,
        group_replication: false,
        server_public_key: None,
        get_server_public_key: false,
    }
}

fn caps(tls: bool) -> CapabilityFlags {
    let mut c = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_LONG_PASSWORD;
    if tls {
        c |= CapabilityFlags::CLIENT_SSL;
    }
    c
}

fn greeting(plugin: &str, tls: bool) -> Vec<u8> {
    greeting_of(b"8.0.36", plugin, tls)
}

fn greeting_of(version: &[u8], plugin: &str, tls: bool) -> Vec<u8> {
    let packet = HandshakePacket::new(
        10,
        version,
        7,
        *b"abcdefgh",
        Some(&b"ijklmnopqrst\0"[..]),
        caps(tls),
        45,
        StatusFlags::empty(),
        Some(plugin.as_bytes()),
    );
    let mut payload = Vec::new();
    packet.serialize(&mut payload);
    frame(0, &payload)
}

const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

/// Drives a probe, answering with `replies` one per Read, and records what
/// it wrote (payloads with their sequence ids).
struct Script {
    probe: Probe,
    written: Vec<(u8, Vec<u8>)>,
}

impl Script {
    fn new(opts: ProbeOptions) -> Script {
        Script {
            probe: Probe::new(Arc::new(opts)),
            written: Vec::new(),
        }
    }

    /// Runs until the probe wants to read, start TLS or is done.
    fn run(&mut self) -> Action {
        loop {
            match self.probe.next_action() {
                Action::Write(bytes) => self.written.push((bytes[3], bytes[4..].to_vec())),
                other => return other,
            }
        }
    }

    fn reply(&mut self, bytes: &[u8]) -> Action {
        self.probe.on_data(bytes);
        self.run()
    }

    fn reply_packet(&mut self, seq: u8, payload: &[u8]) -> Action {
        self.reply(&frame(seq, payload))
    }

    fn last(&self) -> &(u8, Vec<u8>) {
        self.written.last().expect("something was written")
    }

    /// Answers COM_PING and the role query, reaching the end.
    fn finish_writable(&mut self) -> Action {
        let seq = self.last().0 + 1;
        assert!(matches!(self.reply_packet(seq, OK), Action::Read));
        assert_eq!(self.last(), &(0, vec![COM_PING]));
        assert!(matches!(self.reply_packet(1, OK), Action::Read));
        assert_eq!(self.last().1[0], COM_QUERY);
        self.reply_rows(
            &["Variable_name", "Value"],
            &[&[Some("read_only"), Some("OFF")]],
        )
    }

    fn reply_rows(&mut self, columns: &[&str], rows: &[&[Option<&str>]]) -> Action {
        let mut wire = Vec::new();
        for (i, p) in result_set(columns, rows).iter().enumerate() {
            wire.extend(frame(u8::try_from(i + 1).unwrap(), p));
        }
        self.reply(&wire)
    }
}

fn done(action: Action) -> Result<Facts, ProbeError> {
    match action {
        Action::Done(result) => result,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn native_login_ping_role_quit() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    assert!(matches!(s.run(), Action::Read));
    assert!(matches!(
        s.reply(&greeting("mysql_native_password", false)),
        Action::Read
    ));
    let (seq, response) = s.last().clone();
    assert_eq!(seq, 1);
    assert!(
        response.windows(6).any(|w| w == b"check\0"),
        "the user is sent"
    );
    assert!(
        response.windows(21).any(|w| w == b"mysql_native_password"),
        "and the plugin"
    );
    let facts = done(s.finish_writable()).unwrap();
    assert_eq!(facts.role, Role::Writable);
    assert_eq!(facts.server_version, "8.0.36");
    assert_eq!(s.last(), &(0, vec![COM_QUIT]), "ends with COM_QUIT");
}

#[test]
fn err_greetings_are_kept_with_their_code() {
    for (code, blocked) in [(1129u16, true), (1040, false), (1047, false)] {
        let mut s = Script::new(opts(TlsMode::Disabled));
        s.run();
        let mut payload = vec![0xff];
        payload.extend_from_slice(&code.to_le_bytes());
        payload.extend_from_slice(b"nope");
        let err = done(s.reply_packet(0, &payload)).unwrap_err();
        assert_eq!(matches!(err, ProbeError::HostBlocked(_)), blocked, "{code}");
        assert!(err.to_string().contains(&code.to_string()) || blocked);
        if blocked {
            assert!(err.to_string().contains("FLUSH HOSTS"), "{err}");
        }
        assert!(
            s.written.is_empty(),
            "nothing is sent to a server that refused"
        );
    }
}

#[test]
fn garbage_stalls_and_absurd_lengths_are_protocol_errors() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    let err = done(s.reply(b"HTTP/1.1 400 Bad Request\r\n\r\n")).unwrap_err();
    assert!(matches!(err, ProbeError::Protocol(_)), "{err}");

    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    let err = done(s.reply(&[0xff, 0xff, 0xff, 0, 10])).unwrap_err();
    assert!(err.to_string().contains("16777215"), "{err}");

    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    assert!(
        matches!(
            s.reply(&greeting("mysql_native_password", false)[..20]),
            Action::Read
        ),
        "half a greeting: wait"
    );
    s.probe.on_eof();
    let err = done(s.run()).unwrap_err();
    assert_eq!(err, ProbeError::Closed("before the greeting"));
}

#[test]
fn a_hostile_auth_data_length_is_refused_not_trusted() {
    // Found by fuzzing: mysql_common's parser overflows on lengths over 127.
    let mut wire = greeting("mysql_native_password", false);
    let at = 4 + 1 + b"8.0.36".len() + 1 + 20;
    assert_eq!(wire[at], 21, "the test writes a real greeting");
    wire[at] = 0x80;
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    let err = done(s.reply(&wire)).unwrap_err();
    assert!(err.to_string().contains("auth data length 128"), "{err}");
}

#[test]
fn access_denied_is_auth_failed_with_a_tls_hint() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&greeting("mysql_native_password", false));
    let err =
        done(s.reply_packet(2, b"\xff\x15\x04#28000Access denied for user 'check'")).unwrap_err();
    assert!(err.is_check_misconfigured());
    let text = err.to_string();
    assert!(
        text.starts_with("auth failed") && text.contains("require_secure_transport"),
        "{text}"
    );
    assert!(
        text.contains("anonymous user such as ''@'localhost'"),
        "{text}"
    );
}

#[test]
fn auth_switch_to_ed25519() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&greeting("mysql_native_password", false));
    let mut switch = vec![0xfe];
    switch.extend_from_slice(b"client_ed25519\0");
    switch.extend_from_slice(&[5u8; 32]);
    assert!(matches!(s.reply_packet(2, &switch), Action::Read));
    assert_eq!(
        (s.last().0, s.last().1.len()),
        (3, 64),
        "a signature, in sequence"
    );
    assert!(done(s.finish_writable()).is_ok());
}

#[test]
fn an_unknown_plugin_is_a_check_problem() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&greeting("mysql_native_password", false));
    let mut switch = vec![0xfe];
    switch.extend_from_slice(b"auth_gssapi_client\0abc");
    let err = done(s.reply_packet(2, &switch)).unwrap_err();
    assert!(
        err.is_check_misconfigured() && err.to_string().contains("auth_gssapi_client"),
        "{err}"
    );
}

#[test]
fn caching_sha2_fast_path() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&greeting("caching_sha2_password", false));
    assert_eq!(
        s.last()
            .1
            .windows(21)
            .filter(|w| w == b"caching_sha2_password")
            .count(),
        1
    );
    assert!(matches!(s.reply_packet(2, &[1, 3]), Action::Read));
    assert_eq!(s.written.len(), 1, "fast path: nothing more to send");
    assert!(done(s.finish_writable()).is_ok());
}

#[test]
fn caching_sha2_full_auth_over_tls_sends_the_password() {
    let mut s = Script::new(opts(TlsMode::Required));
    s.run();
    assert!(matches!(
        s.reply(&greeting("caching_sha2_password", true)),
        Action::StartTls
    ));
    assert_eq!(
        (s.last().0, s.last().1.len()),
        (1, 32),
        "an SSL request first"
    );
    s.probe.on_tls_ready();
    assert!(matches!(s.run(), Action::Read));
    assert_eq!(s.last().0, 2, "the login continues at sequence 2");
    s.reply_packet(3, &[1, 4]);
    assert_eq!(s.last(), &(4, b"pw\0".to_vec()));
    assert!(done(s.finish_writable()).is_ok());
}

#[test]
fn caching_sha2_full_auth_without_tls_uses_the_rsa_key() {
    // Key asked from the server, when allowed...
    let fetch_key = || ProbeOptions {
        get_server_public_key: true,
        ..opts(TlsMode::Disabled)
    };
    let mut s = Script::new(fetch_key());
    s.run();
    s.reply(&greeting("caching_sha2_password", false));
    s.reply_packet(2, &[1, 4]);
    assert_eq!(s.last(), &(3, vec![2]), "asks for the public key");
    let mut key = vec![1];
    key.extend_from_slice(TEST_KEY);
    s.reply_packet(4, &key);
    assert_eq!(
        (s.last().0, s.last().1.len()),
        (5, 256),
        "encrypted with a 2048-bit key"
    );
    assert!(done(s.finish_writable()).is_ok());

    // ...or configured, and a bad key from the server is an error, not a panic.
    let mut s = Script::new(ProbeOptions {
        server_public_key: Some(TEST_KEY.to_vec()),
        ..opts(TlsMode::Disabled)
    });
    s.run();
    s.reply(&greeting("caching_sha2_password", false));
    s.reply_packet(2, &[1, 4]);
    assert_eq!((s.last().0, s.last().1.len()), (3, 256));
    let mut s = Script::new(fetch_key());
    s.run();
    s.reply(&greeting("caching_sha2_password", false));
    s.reply_packet(2, &[1, 4]);
    assert!(matches!(
        done(s.reply_packet(4, b"\x01not a key")).unwrap_err(),
        ProbeError::Protocol(_)
    ));
}

#[test]
fn control_characters_from_the_server_never_reach_a_log_or_terminal() {
    let forged = greeting_of(
        b"10.11.6\nFAKE backend up: forged\x1b[31m",
        "mysql_native_password",
        false,
    );
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&forged);
    let error = done(s.reply_packet(2, b"\xff\x15\x04#28000Access\r\ndenied\x1b[2J"))
        .unwrap_err()
        .to_string();
    assert!(!error.chars().any(char::is_control), "{error:?}");
    assert!(error.contains("Access\u{fffd}\u{fffd}denied"), "{error:?}");

    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&forged);
    let facts = done(s.finish_writable()).unwrap();
    assert_eq!(
        facts.server_version,
        "10.11.6\u{fffd}FAKE backend up: forged\u{fffd}[31m"
    );
}

#[test]
fn the_server_s_key_is_not_asked_for_unless_allowed() {
    let mut s = Script::new(opts(TlsMode::Disabled));
    s.run();
    s.reply(&greeting("caching_sha2_password", false));
    let sent = s.written.len();
    let error = done(s.reply_packet(2, &[1, 4])).unwrap_err();
    assert_eq!(
        s.written.len(),
        sent,
        "neither a key request nor the password"
    );
    assert!(error.is_check_misconfigured(), "{error}");
    assert!(
        error.to_string().contains("get_server_public_key"),
        "{error}"
    );
}

#[test]
fn plaintext_sent_before_tls_is_a_protocol_error() {
    // A forged login, ping and role in the greeting's segment...
    let mut forged = greeting("mysql_native_password", true);
    forged.extend(frame(2, OK));
    forged.extend(frame(1, OK));
    let mut s = Script::new(opts(TlsMode::Required));
    s.run();
    let error = done(s.reply(&forged)).unwrap_err();
    assert!(
        matches!(&error, ProbeError::Protocol(m) if m.contains("before TLS")),
        "{error}"
    );
    assert!(
        s.written.is_empty(),
        "no SSL request to a server that forged answers"
    );

    // ...or arriving later, before the handshake the driver runs.
    let mut s = Script::new(opts(TlsMode::Preferred));
    s.run();
    assert!(matches!(
        s.reply(&greeting("mysql_native_password", true)),
        Action::StartTls
    ));
    s.probe.on_data(&frame(2, OK));
    s.probe.on_tls_ready();
    assert!(matches!(
        done(s.run()).unwrap_err(),
        ProbeError::Protocol(m) if m.contains("before TLS")
    ));
}

#[test]
fn tls_required_but_not_offered() {
    let mut s = Script::new(opts(TlsMode::Required));
    s.run();
    assert_eq!(
        done(s.reply(&greeting("mysql_native_password", false))).unwrap_err(),
        ProbeError::TlsUnavailable
    );
    // Preferred carries on in plain text.
    let mut s = Script::new(opts(TlsMode::Preferred));
    s.run();
    assert!(matches!(
        s.reply(&greeting("mysql_native_password", false)),
        Action::Read
    ));
}

#[test]
fn lag_queries_and_their_fallbacks() {
    let lagged = |rows: &[&[Option<&str>]]| {
        let mut s = Script::new(ProbeOptions {
            lag: true,
            ..opts(TlsMode::Disabled)
        });
        s.run();
        s.reply(&greeting("mysql_native_password", false));
        s.finish_writable();
        assert_eq!(
            s.last().1,
            [&[COM_QUERY][..], b"SHOW REPLICA STATUS"].concat()
        );
        let columns = [
            "Slave_IO_Running",
            "Slave_SQL_Running",
            "Seconds_Behind_Master",
        ];
        done(s.reply_rows(&columns, rows)).unwrap().lag.unwrap()
    };
    assert_eq!(lagged(&[]), Lag::NotReplica);
    assert_eq!(
        lagged(&[&[Some("Yes"), Some("Yes"), Some("12")]]),
        Lag::Seconds(12)
    );
    let Lag::Unknown(why) = lagged(&[&[Some("Yes"), Some("No"), None]]) else {
        panic!("NULL is unknown")
    };
    assert!(why.contains("SQL thread No"), "{why}");

    let mut s = Script::new(ProbeOptions {
        lag: true,
        ..opts(TlsMode::Disabled)
    });
    s.run();
    s.reply(&greeting("mysql_native_password", false));
    s.finish_writable();
    s.reply_packet(1, b"\xff\x28\x04#42000You have an error in your SQL syntax");
    assert_eq!(
        s.last().1,
        [&[COM_QUERY][..], b"SHOW SLAVE STATUS"].concat(),
        "older servers"
    );
    let facts = done(s.reply_packet(
        1,
        b"\xff\xcb\x04#42000Access denied; you need SLAVE MONITOR",
    ))
    .unwrap();
    let Some(Lag::Unknown(why)) = facts.lag else {
        panic!("no privilege: unknown")
    };
    assert!(why.contains("SLAVE MONITOR"), "{why}");
}

mod robustness {
    //! The fuzz target's property in the regular suite: any bytes, split
    //! anywhere, end in Done or a request for more; never a panic or a loop.
    use proptest::prelude::*;

    use super::*;

    fn drive(mut probe: Probe, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            probe.on_data(piece);
            for _ in 0..1000 {
                match probe.next_action() {
                    Action::Write(_) => {}
                    Action::StartTls => probe.on_tls_ready(),
                    Action::Read => break,
                    Action::Done(_) => return,
                }
            }
        }
        probe.on_eof();
        assert!((0..10).any(|_| matches!(probe.next_action(), Action::Done(_) | Action::Read)));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600), chunk in 1usize..64, lag: bool) {
            drive(Probe::new(Arc::new(ProbeOptions { lag, ..opts(TlsMode::Preferred) })), &bytes, chunk);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_greeting(bytes in prop::collection::vec(any::<u8>(), 0..600), chunk in 1usize..64) {
            let mut wire = greeting("caching_sha2_password", true);
            wire.extend_from_slice(&bytes);
            drive(Probe::new(Arc::new(opts(TlsMode::Preferred))), &wire, chunk);
        }

        #[test]
        fn arbitrary_packets_after_login(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12)) {
            let mut wire = greeting("mysql_native_password", false);
            wire.extend(frame(2, OK));
            for (i, p) in payloads.iter().enumerate() {
                wire.extend(frame(u8::try_from(i % 250).unwrap(), p));
            }
            drive(Probe::new(Arc::new(ProbeOptions { lag: true, galera: true, ..opts(TlsMode::Disabled) })), &wire, 7);
        }
    }
}

#[test]
fn version_triples_never_panic() {
    assert_eq!(version_triple("10.11.19-MariaDB-0+deb12u1"), (10, 11, 19));
    assert_eq!(version_triple("8.0.36"), (8, 0, 36));
    assert_eq!(version_triple("99999.1.1"), (5, 7, 0));
    assert_eq!(version_triple("garbage"), (5, 7, 0));
}

#[test]
fn galera_state_is_asked_and_judged() {
    let run = |state: &str| {
        let mut s = Script::new(ProbeOptions {
            galera: true,
            ..opts(TlsMode::Disabled)
        });
        s.run();
        s.reply(&greeting("mysql_native_password", false));
        s.finish_writable();
        assert!(
            s.last().1.ends_with(b"'wsrep_cluster_status')"),
            "asks for wsrep status"
        );
        let rows: [&[Option<&str>]; 3] = [
            &[Some("wsrep_cluster_status"), Some("Primary")],
            &[Some("wsrep_local_state"), Some(state)],
            &[Some("wsrep_ready"), Some("ON")],
        ];
        assert!(matches!(
            s.reply_rows(&["Variable_name", "Value"], &rows),
            Action::Read
        ));
        assert!(
            s.last().1.ends_with(b"'wsrep_desync')"),
            "asks for the wsrep settings"
        );
        let settings: [&[Option<&str>]; 2] = [
            &[Some("wsrep_desync"), Some("OFF")],
            &[Some("wsrep_reject_queries"), Some("NONE")],
        ];
        let result = done(s.reply_rows(&["Variable_name", "Value"], &settings));
        assert_eq!(s.last(), &(0, vec![COM_QUIT]), "quits either way");
        result
    };
    assert!(run("4").unwrap().galera.is_some());
    let err = run("1").unwrap_err();
    assert!(err.to_string().contains("wsrep_local_state=1"), "{err}");
}

#[test]
fn group_replication_is_asked_when_configured() {
    let mut s = Script::new(ProbeOptions {
        group_replication: true,
        ..opts(TlsMode::Disabled)
    });
    s.run();
    s.reply(&greeting("mysql_native_password", false));
    s.finish_writable();
    assert!(String::from_utf8_lossy(&s.last().1).contains("replication_group_members"));
    let rows: [&[Option<&str>]; 1] = [&[Some("ONLINE"), Some("PRIMARY"), Some("3"), Some("3")]];
    let facts = done(s.reply_rows(&["state", "role", "online", "members"], &rows)).unwrap();
    assert_eq!(facts.group.unwrap().role, "PRIMARY");
}

#[test]
fn an_admin_session_runs_its_statements_in_order_and_stops_at_the_first_failure() {
    let statements = vec![
        "SET GLOBAL read_only = 1".to_owned(),
        "SELECT @@gtid_binlog_pos AS pos".to_owned(),
        "STOP SLAVE".to_owned(),
        "never sent".to_owned(),
    ];
    let mut s = Script {
        probe: Probe::script(Arc::new(opts(TlsMode::Disabled)), statements),
        written: Vec::new(),
    };
    assert!(matches!(s.run(), Action::Read));
    s.reply(&greeting_of(
        b"5.5.5-10.11.6-MariaDB",
        "mysql_native_password",
        false,
    ));
    let seq = s.last().0 + 1;
    s.reply_packet(seq, OK);
    assert_eq!(s.last(), &(0, vec![COM_PING]));
    s.reply_packet(1, OK);
    let sent = |s: &Script| String::from_utf8_lossy(&s.last().1[1..]).into_owned();
    assert_eq!(sent(&s), "SET GLOBAL read_only = 1", "no role query first");
    s.reply_packet(1, OK);
    assert_eq!(sent(&s), "SELECT @@gtid_binlog_pos AS pos");
    s.reply_rows(&["pos"], &[&[Some("0-1-42")]]);
    assert_eq!(sent(&s), "STOP SLAVE");
    let mut denied = vec![0xff, 0x4a, 0x04, b'#'];
    denied.extend_from_slice(b"42000Access denied; you need the REPLICATION SLAVE ADMIN privilege");
    let facts = done(s.reply_packet(1, &denied)).unwrap();
    assert_eq!(s.last(), &(0, vec![COM_QUIT]), "the fourth is never sent");
    assert_eq!(facts.answers.len(), 3);
    assert_eq!(facts.answers[0], QueryOutcome::Done);
    let QueryOutcome::Rows(rows) = &facts.answers[1] else {
        panic!("{:?}", facts.answers[1])
    };
    assert_eq!(rows.first("pos"), Some("0-1-42"));
    assert!(
        matches!(&facts.answers[2], QueryOutcome::Failed(e) if e.code == 1098 && e.message.contains("REPLICATION SLAVE ADMIN"))
    );
    assert_eq!(facts.role, Role::Unknown, "not asked");
}
