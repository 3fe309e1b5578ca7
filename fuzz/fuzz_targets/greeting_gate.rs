//! Feeds arbitrary server bytes, split at arbitrary points, to the greeting
//! gate. It must never panic, never pass on an error greeting, and pass on a
//! greeting only once its whole first packet has arrived.

#![no_main]

use dbsplice::proxy::greeting::Gate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let chunk = usize::from(split % 16) + 1;
    let mut gate = Gate::default();
    let mut fed = 0usize;
    for piece in rest.chunks(chunk) {
        fed += piece.len();
        let Some(verdict) = gate.feed(piece) else { continue };
        if let Ok(bytes) = verdict {
            assert_eq!(bytes.len(), fed, "every byte read is forwarded");
            let len = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
            assert!(bytes.len() >= 4 + len, "the whole first packet arrived");
            assert_ne!(bytes.get(4), Some(&0xff), "an error greeting passed");
        }
        return;
    }
});
