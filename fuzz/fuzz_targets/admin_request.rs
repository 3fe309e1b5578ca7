//! Feeds arbitrary requests (method, path and query, Host and Authorization
//! headers) to the admin server's gate. It must never panic, never admit an
//! action without the exact bearer token, and never admit a request naming
//! an unknown host.

#![no_main]

use std::sync::OnceLock;

use dbsplice::admin::gate::{admit, Admitted};
use dbsplice::config::Config;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{HeaderMap, Method, Uri};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-token-0123456789";

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dbsplice-fuzz-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), TOKEN).unwrap();
        let path = dir.join("dbsplice.toml");
        std::fs::write(
            &path,
            "[admin]\nlisten = \"127.0.0.1:9306\"\ntoken_file = \"admin.token\"\n\
             allowed_hosts = [\"dbsplice.example\"]\n\
             [[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:3306\"\npool = \"main\"\n\
             [pool.main]\n[pool.main.check]\nkind = \"tcp\"\n\
             [[pool.main.backend]]\naddress = \"127.0.0.1:3307\"\n",
        )
        .unwrap();
        Config::load(&path).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: method, URI, Host, Authorization.
    let mut fields = data.split(|&b| b == 0);
    let (Some(method), Some(uri)) = (fields.next(), fields.next()) else { return };
    let Ok(method) = Method::from_bytes(method) else { return };
    let Ok(uri) = Uri::try_from(uri) else { return };
    let mut headers = HeaderMap::new();
    let host = fields.next().and_then(|h| HeaderValue::from_bytes(h).ok());
    if let Some(host) = &host {
        headers.insert(HOST, host.clone());
    }
    let auth = fields.next().and_then(|a| HeaderValue::from_bytes(a).ok());
    if let Some(auth) = &auth {
        headers.insert(AUTHORIZATION, auth.clone());
    }
    let admin = config().admin.as_ref();
    let Ok(admitted) = admit(&method, uri.path(), uri.query(), &headers, admin) else { return };
    if let Some(host) = &host {
        let host = String::from_utf8_lossy(host.as_bytes()).trim().to_ascii_lowercase();
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host.as_str(),
        };
        let name = name.trim_matches(['[', ']']).trim_end_matches('.');
        assert!(
            name.parse::<std::net::IpAddr>().is_ok()
                || name == "localhost"
                || name.ends_with(".localhost")
                || name == "dbsplice.example"
                || std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .is_ok_and(|m| m.trim().to_ascii_lowercase().split('.').next() == Some(name)
                        || m.trim().eq_ignore_ascii_case(name)),
            "admitted a request for host {host:?}"
        );
    }
    if let Admitted::Action(..) = admitted {
        assert_eq!(method, Method::POST, "an action without POST");
        let presented = auth.as_ref().map(|a| a.as_bytes().to_vec());
        assert_eq!(
            presented.as_deref(),
            Some(format!("Bearer {TOKEN}").as_bytes()),
            "an action without the exact token"
        );
    }
});
