//! Feeds arbitrary server bytes to the health probe, split at arbitrary
//! points, with and without TLS, lag, Galera and group replication queries.
//! The probe must never panic and must always either finish or ask for more.
//!
//! The TLS switch: bytes fed before the probe asks for TLS travelled in
//! plain text. When more arrived than the greeting itself, the probe must
//! end in a protocol error rather than read them as if they had come inside
//! TLS; the bytes fed after the switch stand for what TLS delivers.

#![no_main]

use std::sync::Arc;

use dbsplice::mysql::{Action, Probe, ProbeError, ProbeOptions, TlsMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let opts = ProbeOptions {
        user: "check".into(),
        password: if flags & 1 == 0 { String::new() } else { "pw".into() },
        tls: if flags & 2 == 0 { TlsMode::Disabled } else { TlsMode::Preferred },
        lag: flags & 4 != 0,
        galera: flags & 8 != 0,
        galera_donor_ok: flags & 16 != 0,
        group_replication: flags & 32 != 0,
        server_public_key: None,
        get_server_public_key: flags & 1 != 0,
    };
    // The first packet, if it is one, is the greeting: its framed length.
    let greeting_len = match rest {
        [a, b, c, _, ..] => 4 + (usize::from(*a) | usize::from(*b) << 8 | usize::from(*c) << 16),
        _ => usize::MAX,
    };
    let mut probe = Probe::new(Arc::new(opts));
    let mut fed = 0usize;
    let mut leftover_at_switch = false;
    let chunk = usize::from(flags >> 6) * 3 + 1;
    for piece in rest.chunks(chunk) {
        probe.on_data(piece);
        fed += piece.len();
        loop {
            match probe.next_action() {
                Action::Write(_) => {}
                Action::StartTls => {
                    leftover_at_switch = fed > greeting_len;
                    probe.on_tls_ready();
                }
                Action::Read => break,
                Action::Done(result) => {
                    if leftover_at_switch {
                        assert!(
                            matches!(result, Err(ProbeError::Protocol(_))),
                            "plaintext after the greeting was read as TLS data: {result:?}"
                        );
                    }
                    return;
                }
            }
        }
    }
    probe.on_eof();
    while !matches!(probe.next_action(), Action::Done(_) | Action::Read) {}
});
