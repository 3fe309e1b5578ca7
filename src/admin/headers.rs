//! What the admin server asks of a request's `Host` header and adds to
//! every response, so that a web page on another site can neither read it
//! (DNS rebinding: a name of the attacker's that resolves to dbsplice) nor
//! frame it.

use std::net::IpAddr;
use std::sync::OnceLock;

use hyper::header::{HeaderMap, HeaderValue, HOST};

use crate::config::AdminConfig;

/// Sent with every response: the page loads only its own script and style
/// and talks only to its own origin; nothing may frame it.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Adds [`SECURITY_HEADERS`] to a response's headers.
pub(super) fn secure(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// This machine's host name, read once.
fn machine_name() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
    })
    .as_deref()
}

/// Whether the request's `Host` names this admin server. A request without
/// one is no browser's (every browser sends it) and passes.
pub(super) fn host_allowed(headers: &HeaderMap, admin: Option<&AdminConfig>) -> bool {
    let Some(value) = headers.get(HOST) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let host = host_part(value).to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    // Otherwise a host name, nothing else (no spaces, slashes or colons).
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
    {
        return false;
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let Some(admin) = admin else {
        return false;
    };
    admin
        .allowed_hosts
        .iter()
        .any(|allowed| allowed == "*" || *allowed == host)
        || admin.listen.host.eq_ignore_ascii_case(&host)
        || machine_name().is_some_and(|m| m == host || m.split('.').next() == Some(&host))
}

/// The host of a `Host` header value: without the port, and without the
/// brackets of an IPv6 literal.
fn host_part(value: &str) -> &str {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        // Only an IPv6 literal goes in brackets, and only a port after them.
        return match rest.split_once(']') {
            Some((ip, "")) if ip.parse::<std::net::Ipv6Addr>().is_ok() => ip,
            Some((ip, port))
                if ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && port
                        .strip_prefix(':')
                        .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                ip
            }
            _ => "",
        };
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
    .trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, value.parse().unwrap());
        h
    }

    #[test]
    fn addresses_localhost_and_listed_names_pass_and_other_names_do_not() {
        let raw =
            "[admin]\nlisten = \"127.0.0.1:9306\"\nallowed_hosts = [\"Prom-Target.example\"]\n\
                   [[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\
                   [pool.main]\n[pool.main.check]\nkind = \"tcp\"\n[[pool.main.backend]]\n\
                   address = \"127.0.0.1:3306\"\n";
        let config =
            crate::config::Config::from_file_text(std::path::Path::new("t.toml"), raw).unwrap();
        let admin = config.admin.as_ref();
        for ok in [
            "127.0.0.1:9306",
            "127.0.0.1",
            "[::1]:9306",
            "localhost:9306",
            "LOCALHOST",
            "prom-target.example:9306",
            "prom-target.example.",
        ] {
            assert!(host_allowed(&with_host(ok), admin), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9306",
            "127.0.0.1.evil.example",
            "/vm   .localhost",
            "[vm] x",
        ] {
            assert!(!host_allowed(&with_host(refused), admin), "{refused}");
        }
        assert!(
            host_allowed(&HeaderMap::new(), admin),
            "no Host: not a browser"
        );
        assert!(!host_allowed(&with_host("evil.example"), None));
    }

    #[test]
    fn every_response_forbids_framing_and_foreign_scripts() {
        let mut h = HeaderMap::new();
        secure(&mut h);
        assert_eq!(h["x-frame-options"], "DENY");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    }
}
