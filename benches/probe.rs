//! Cost of the health check's protocol work, without sockets: one whole
//! probe conversation (greeting, native-password login, COM_PING, the role
//! query, COM_QUIT) and the packet framing under it.

// A benchmark with a broken setup should stop loudly.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use dbsplice::mysql::packet::{frame, PacketBuffer};
use dbsplice::mysql::{Action, Probe, ProbeOptions, TlsMode};
use dbsplice::vocabulary::Role;

fn main() {
    divan::main();
}

/// CLIENT_LONG_PASSWORD | PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH.
const CAPS: u32 = 0x1 | 0x200 | 0x8000 | 0x8_0000;

/// A MariaDB-style greeting offering mysql_native_password.
fn greeting() -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(b"10.11.19-MariaDB\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh\0");
    p.extend_from_slice(
        &u16::try_from(CAPS & 0xffff)
            .expect("low caps")
            .to_le_bytes(),
    );
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&u16::try_from(CAPS >> 16).expect("high caps").to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0");
    p.extend_from_slice(b"mysql_native_password\0");
    frame(0, &p)
}

/// An OK packet's payload.
const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

fn lenenc(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).expect("short field"));
    out.extend_from_slice(s);
}

/// A text result set with one row, sequence ids from 1.
fn one_row(columns: &[&str], values: &[&str]) -> Vec<u8> {
    let mut payloads = vec![vec![u8::try_from(columns.len()).expect("few columns")]];
    for c in columns {
        let mut p = Vec::new();
        for field in [&b"def"[..], b"", b"", b"", c.as_bytes(), c.as_bytes()] {
            lenenc(&mut p, field);
        }
        p.extend_from_slice(&[0x0c, 0x21, 0, 0, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        payloads.push(p);
    }
    payloads.push(vec![0xfe, 0, 0, 2, 0]);
    let mut row = Vec::new();
    for v in values {
        lenenc(&mut row, v.as_bytes());
    }
    payloads.push(row);
    payloads.push(vec![0xfe, 0, 0, 2, 0]);
    let mut wire = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        wire.extend(frame(u8::try_from(i + 1).expect("few packets"), p));
    }
    wire
}

/// Runs the probe until it wants to read; returns what it wrote last.
fn until_read(probe: &mut Probe) -> Option<Vec<u8>> {
    let mut last = None;
    loop {
        match probe.next_action() {
            Action::Write(bytes) => last = Some(bytes),
            Action::Read => return last,
            Action::StartTls => panic!("no TLS in this bench"),
            Action::Done(result) => {
                let facts = result.expect("the scripted server passes the check");
                assert_eq!(facts.role, Role::Writable);
                return None;
            }
        }
    }
}

#[divan::bench]
fn probe_conversation(bencher: divan::Bencher<'_, '_>) {
    let opts = Arc::new(ProbeOptions {
        user: "dbsplice_check".into(),
        password: "checkpw".into(),
        tls: TlsMode::Disabled,
        lag: false,
        galera: false,
        galera_donor_ok: false,
        group_replication: false,
        server_public_key: None,
        get_server_public_key: false,
    });
    let greeting = greeting();
    let role = one_row(&["Variable_name", "Value"], &["read_only", "OFF"]);
    let login_ok = frame(2, OK);
    let ping_ok = frame(1, OK);
    bencher.bench_local(|| {
        let mut probe = Probe::new(Arc::clone(&opts));
        until_read(&mut probe);
        for reply in [&greeting, &login_ok, &ping_ok, &role] {
            probe.on_data(reply);
            until_read(&mut probe);
        }
        probe
    });
}

/// Splitting 64 small packets (a result set's worth) out of one read.
#[divan::bench]
fn packet_framing(bencher: divan::Bencher<'_, '_>) {
    let mut wire = Vec::new();
    for i in 0..64u8 {
        wire.extend(frame(i, b"\x03some-row-value-of-modest-length"));
    }
    bencher.bench_local(|| {
        let mut buffer = PacketBuffer::new(1 << 20);
        buffer.push(&wire);
        let mut n = 0;
        while let Ok(Some(_)) = buffer.next_packet() {
            n += 1;
        }
        assert_eq!(n, 64);
    });
}
