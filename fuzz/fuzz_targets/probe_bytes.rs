//! Feeds arbitrary server bytes to the health probe, split at arbitrary
//! points, with and without TLS and lag queries. The probe must never panic
//! and must always either finish or ask for more.

#![no_main]

use std::sync::Arc;

use dbsplice::mysql::{Action, Probe, ProbeOptions, TlsMode};
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
    };
    let mut probe = Probe::new(Arc::new(opts));
    let chunk = usize::from(flags >> 6) * 3 + 1;
    for piece in rest.chunks(chunk) {
        probe.on_data(piece);
        loop {
            match probe.next_action() {
                Action::Write(_) => {}
                Action::StartTls => probe.on_tls_ready(),
                Action::Read => break,
                Action::Done(_) => return,
            }
        }
    }
    probe.on_eof();
    while !matches!(probe.next_action(), Action::Done(_) | Action::Read) {}
});
