//! Feeds arbitrary text to the config parser and validator: every input is
//! either a config or an error that names the file, never a panic.

#![no_main]

use std::path::Path;

use dbsplice::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let resolve = |a: &dbsplice::config::Address| -> Result<std::net::SocketAddr, String> {
        a.host.parse().map(|ip| std::net::SocketAddr::new(ip, a.port)).map_err(|_| "no DNS while fuzzing".into())
    };
    match Config::from_toml(Path::new("fuzz.toml"), text, &resolve) {
        Ok(_) => {}
        Err(e @ (ConfigError::Parse { .. } | ConfigError::Invalid { .. } | ConfigError::Read { .. })) => {
            assert!(e.to_string().contains("fuzz.toml"));
        }
    }
});
