//! What the admin server decides about a request before doing anything:
//! whether its `Host` names this server, which endpoint it asks for, with
//! the right method, and, for an action, whether it carries the token.
//! Pure, so that hostile requests can be fuzzed without a running server.

use hyper::{HeaderMap, Method, StatusCode};

use super::{auth, headers};
use crate::config::AdminConfig;

/// A request the admin server will serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// A read (GET or HEAD) of this path, split at its slashes.
    Read(Vec<String>),
    /// An action (POST, with the token) on this path, with its query.
    Action(Vec<String>, String),
}

/// Why a request is refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message for the body.
    pub message: &'static str,
    /// What the refusal is about, for the rate-limited log line.
    pub kind: RefusedKind,
}

/// The kinds of refusal that are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// The `Host` header names another site.
    Host,
    /// An action without the right token.
    Token,
    /// No such endpoint, or the wrong method: not logged.
    Route,
}

fn refused(status: StatusCode, message: &'static str, kind: RefusedKind) -> Refused {
    Refused {
        status,
        message,
        kind,
    }
}

/// Decides about one request.
pub fn admit(
    method: &Method,
    path: &str,
    query: Option<&str>,
    request_headers: &HeaderMap,
    admin: Option<&AdminConfig>,
) -> Result<Admitted, Refused> {
    if !headers::host_allowed(request_headers, admin) {
        return Err(refused(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown Host: list the name this server is reached by in [admin] allowed_hosts",
            RefusedKind::Host,
        ));
    }
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // A name may hold `#` (`db#10.0.0.5`, one address of a name): written
    // `%23` in a URL.
    let owned = || parts.iter().map(|s| percent_decoded(s)).collect();
    if is_read(&parts) {
        return match *method {
            Method::GET | Method::HEAD => Ok(Admitted::Read(owned())),
            _ => Err(refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET",
                RefusedKind::Route,
            )),
        };
    }
    if !is_action(&parts) {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "no such endpoint",
            RefusedKind::Route,
        ));
    }
    if method != Method::POST {
        return Err(refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
            RefusedKind::Route,
        ));
    }
    let token = admin.and_then(|a| a.token.as_ref());
    auth::check(request_headers, token)
        .map_err(|(status, message)| refused(status, message, RefusedKind::Token))?;
    Ok(Admitted::Action(
        owned(),
        query.unwrap_or_default().to_owned(),
    ))
}

/// `segment` with each `%XX` replaced by its byte; a `%` not followed by
/// two hex digits, or bytes that are not UTF-8, leave it as written.
pub fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| segment.to_owned())
}

fn is_read(path: &[&str]) -> bool {
    matches!(
        path,
        [] | ["page.js" | "page.css"]
            | ["healthz"]
            | ["readyz"]
            | ["metrics"]
            | ["api", "status"]
            | ["api", "backends", _, "why"]
    )
}

fn is_action(path: &[&str]) -> bool {
    matches!(
        path,
        ["api", "reload" | "upgrade"]
            | [
                "api",
                "pools",
                _,
                "failback" | "pause" | "resume" | "switchover"
            ]
            | ["api", "backends", _, "drain" | "disable" | "enable"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use hyper::header::{HeaderValue, AUTHORIZATION, HOST};

    #[test]
    fn reads_pass_actions_need_post_and_the_token_hosts_must_be_ours() {
        let raw = "[admin]\nlisten = \"127.0.0.1:9306\"\n[[listener]]\nname = \"rw\"\n\
                   listen = \"127.0.0.1:0\"\npool = \"main\"\n[pool.main]\n[pool.main.check]\n\
                   kind = \"tcp\"\n[[pool.main.backend]]\naddress = \"127.0.0.1:3306\"\n";
        let mut config =
            crate::config::Config::from_file_text(std::path::Path::new("t.toml"), raw).unwrap();
        let admin = config.admin.as_mut().unwrap();
        admin.token = Some(Secret::new("tok"));
        let admin = config.admin.as_ref();
        let headers = |host: &'static str, auth: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static(host));
            if let Some(a) = auth {
                h.insert(AUTHORIZATION, HeaderValue::from_static(a));
            }
            h
        };
        let local = headers("127.0.0.1:9306", None);
        assert_eq!(
            admit(&Method::GET, "/api/status", None, &local, admin),
            Ok(Admitted::Read(vec!["api".into(), "status".into()]))
        );
        // One address of a name's several is named NAME#IP.
        assert_eq!(
            admit(
                &Method::GET,
                "/api/backends/db%2310.0.0.5/why",
                None,
                &local,
                admin
            ),
            Ok(Admitted::Read(vec![
                "api".into(),
                "backends".into(),
                "db#10.0.0.5".into(),
                "why".into()
            ]))
        );
        assert_eq!(percent_decoded("a%zz%2"), "a%zz%2", "not hex: as written");
        assert_eq!(percent_decoded("%ff%fe"), "%ff%fe", "not UTF-8: as written");
        let status = |m: &Method, path: &str, h: &HeaderMap| {
            admit(m, path, None, h, admin).map_err(|r| r.status)
        };
        assert_eq!(
            status(&Method::POST, "/api/status", &local),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(&Method::GET, "/api/reload", &local),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status(&Method::POST, "/nope", &local),
            Err(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            status(&Method::POST, "/api/reload", &local),
            Err(StatusCode::UNAUTHORIZED)
        );
        let with_token = headers("localhost", Some("Bearer tok"));
        assert!(matches!(
            admit(&Method::POST, "/api/backends/db1/drain", Some("for=1m"), &with_token, admin),
            Ok(Admitted::Action(_, q)) if q == "for=1m"
        ));
        let foreign = headers("attacker.example", Some("Bearer tok"));
        assert_eq!(
            status(&Method::GET, "/metrics", &foreign),
            Err(StatusCode::MISDIRECTED_REQUEST)
        );
    }
}
