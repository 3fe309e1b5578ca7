//! The operator's commands against a running dbsplice: `status`, `drain`,
//! `disable`, `enable`, `reload` and `failback`, through its admin API.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use rustls::pki_types::ServerName;

use super::client::{request, ClientError, Https};
use crate::config::{Config, Verify};
use crate::health::tls::{pinned_config, verifying_config};

/// What to ask of the running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Print pools and backends as a table.
    Status,
    /// Drain a backend (optionally for a while, such as "10m").
    Drain(String, Option<String>),
    /// Disable a backend, closing its sessions.
    Disable(String, Option<String>),
    /// Clear a backend's override.
    Enable(String),
    /// Reload the config file now.
    Reload,
    /// Manual fail-back in a pool.
    Failback(String),
    /// Hold a pool's new clients (optionally for a while, default 30s).
    Pause(String, Option<String>),
    /// End a pool's pause.
    Resume(String),
    /// Switch a pool's primary over (optionally to the named backend).
    Switchover(String, Option<String>),
    /// Hand every session to a new process of this binary (or the one at
    /// the path given).
    Upgrade(Option<String>),
}

/// Where the admin server is and the token for actions.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin server.
    pub addr: SocketAddr,
    /// The bearer token, if one is configured; sent only with actions.
    pub token: Option<String>,
    /// HTTPS settings when the server serves HTTPS.
    pub https: Option<Https>,
}

/// How the CLI checks the admin server's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsArgs {
    /// Trust these CA certificates (PEM) instead of the config's `cert_file`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Check nothing (the connection is still encrypted).
    pub insecure: bool,
}

impl Target {
    /// Finds the admin server and token in the config file, unless given.
    /// HTTPS is spoken when the config has `[admin] cert_file`, or when
    /// `tls` names a CA or asks for `--insecure`.
    pub fn resolve(
        config: &Path,
        admin: Option<SocketAddr>,
        token_file: Option<&Path>,
        tls: &TlsArgs,
    ) -> Result<Target, String> {
        let loaded = Config::load(config);
        let from_config = loaded.as_ref().ok().and_then(|c| c.admin.clone());
        let addr = admin
            .or(from_config.as_ref().map(|a| a.addr))
            .ok_or_else(|| match &loaded {
                Err(e) => format!("{e}\n(or give the admin address with --admin HOST:PORT)"),
                Ok(_) => format!(
                    "{} has no [admin] section; give the address with --admin HOST:PORT",
                    config.display()
                ),
            })?;
        let token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("{}: {e}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => from_config
                .as_ref()
                .and_then(|a| a.token.as_ref())
                .map(|t| t.expose().to_owned()),
        };
        let https = https(from_config.as_ref(), addr, tls)?;
        Ok(Target { addr, token, https })
    }
}

/// The HTTPS settings: trust `--ca-file` (checking the listen host as
/// written, else the address), else exactly the certificate of the config's
/// `cert_file` (the CLI runs beside the server and reads its config).
fn https(
    admin: Option<&crate::config::AdminConfig>,
    addr: SocketAddr,
    tls: &TlsArgs,
) -> Result<Option<Https>, String> {
    let served = admin.is_some_and(|a| a.cert_file.is_some());
    if !served && tls.ca_file.is_none() && !tls.insecure {
        return Ok(None);
    }
    let name = admin
        .map(|a| a.listen.host.clone())
        .filter(|host| host.parse::<std::net::IpAddr>().is_err())
        .map_or_else(
            || ServerName::IpAddress(addr.ip().into()),
            |host| ServerName::try_from(host).unwrap_or(ServerName::IpAddress(addr.ip().into())),
        );
    let config = if tls.insecure {
        verifying_config(None, "", Verify::None)?
    } else if let Some(file) = &tls.ca_file {
        let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        verifying_config(Some(&pem), &file.display().to_string(), Verify::Full)?
    } else {
        let admin = admin.ok_or("no [admin] section to take the certificate from")?;
        let file = admin
            .cert_file
            .as_ref()
            .map_or_else(String::new, |f| f.display().to_string());
        let pem = admin
            .tls_pem
            .as_ref()
            .map(|(cert, _)| cert.as_slice())
            .ok_or_else(|| format!("{file} was not read"))?;
        pinned_config(pem, &file)?
    };
    Ok(Some(Https { config, name }))
}

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The admin server could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// It answered with an error.
    #[error("{status}: {why}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's words.
        why: String,
    },
}

/// Carries out `action`; returns what to print.
pub async fn run(target: &Target, action: &Action) -> Result<String, CliError> {
    let (method, path) = route(action);
    // A switchover waits for its servers (catch_up_timeout and a few
    // logins); everything else answers at once.
    let within = if matches!(action, Action::Switchover(..) | Action::Upgrade(..)) {
        std::time::Duration::from_secs(300)
    } else {
        std::time::Duration::from_secs(30)
    };
    // Reads need no token: it travels only with the actions that need it.
    let token = target.token.as_deref().filter(|_| method == "POST");
    let (status, body) = request(
        target.addr,
        target.https.as_ref(),
        method,
        &path,
        token,
        within,
    )
    .await?;
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    if let Action::Switchover(..) = action {
        return steps(status, &value);
    }
    if status != 200 {
        let why = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        return Err(CliError::Refused { status, why });
    }
    Ok(match action {
        Action::Status => table(&value) + &replication(&value),
        Action::Reload | Action::Upgrade(_) => value
            .get("outcome")
            .and_then(Value::as_str)
            .unwrap_or("done")
            .to_owned(),
        _ => value.to_string(),
    })
}

/// A backend or pool name as one URL path segment: `#`, `%`, `?` and `/`
/// written `%XX` (a name of a `resolve = "all"` member holds `#`).
fn encoded(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '#' | '%' | '?' | '/' | ' ' => out.push_str(&format!("%{:02X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// The method and path that carry out `action`.
fn route(action: &Action) -> (&'static str, String) {
    match action {
        Action::Status => ("GET", "/api/status".to_owned()),
        Action::Drain(name, until) => (
            "POST",
            with_for(
                &format!("/api/backends/{}/drain", encoded(name)),
                until.as_deref(),
            ),
        ),
        Action::Disable(name, until) => (
            "POST",
            with_for(
                &format!("/api/backends/{}/disable", encoded(name)),
                until.as_deref(),
            ),
        ),
        Action::Enable(name) => ("POST", format!("/api/backends/{}/enable", encoded(name))),
        Action::Reload => ("POST", "/api/reload".to_owned()),
        Action::Failback(pool) => ("POST", format!("/api/pools/{pool}/failback")),
        Action::Pause(pool, until) => (
            "POST",
            with_for(&format!("/api/pools/{pool}/pause"), until.as_deref()),
        ),
        Action::Resume(pool) => ("POST", format!("/api/pools/{pool}/resume")),
        Action::Upgrade(binary) => (
            "POST",
            match binary {
                Some(b) => format!("/api/upgrade?binary={}", encoded(b)),
                None => "/api/upgrade".to_owned(),
            },
        ),
        Action::Switchover(pool, to) => (
            "POST",
            match to {
                Some(to) => format!("/api/pools/{pool}/switchover?to={to}"),
                None => format!("/api/pools/{pool}/switchover"),
            },
        ),
    }
}

/// A switchover's report as lines: each step with its time, then the outcome.
fn steps(status: u16, report: &Value) -> Result<String, CliError> {
    let mut out = String::new();
    for step in at(report, "steps").as_array().into_iter().flatten() {
        let mark = if at(step, "ok").as_bool() == Some(true) {
            "ok  "
        } else {
            "FAIL"
        };
        out.push_str(&format!(
            "{mark} {:>6} ms  {}{}\n",
            at(step, "took_ms").as_u64().unwrap_or(0),
            at(step, "step").as_str().unwrap_or_default(),
            match at(step, "detail").as_str() {
                Some(d) if !d.is_empty() => format!(": {d}"),
                _ => String::new(),
            }
        ));
    }
    let summary = at(report, "summary")
        .as_str()
        .map_or_else(|| report.to_string(), str::to_owned);
    if status == 200 {
        out.push_str(&summary);
        Ok(out)
    } else {
        out.push_str(&summary);
        Err(CliError::Refused { status, why: out })
    }
}

fn with_for(path: &str, until: Option<&str>) -> String {
    match until {
        Some(d) => format!("{path}?for={d}"),
        None => path.to_owned(),
    }
}

/// A field of a JSON object, `Null` when absent.
fn at<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or(&Value::Null)
}

/// Each `[replication]` pool's topology and last promotion, as lines.
pub fn replication(status: &Value) -> String {
    let mut out = String::new();
    for pool in at(status, "pools").as_array().into_iter().flatten() {
        let r = at(pool, "replication");
        if r.is_null() {
            continue;
        }
        let name = at(pool, "name").as_str().unwrap_or_default();
        out.push_str(&format!(
            "\nreplication of {name}: failover {}, {} switchover(s), {} failover(s)\n",
            at(r, "failover").as_str().unwrap_or("off"),
            at(r, "switchovers"),
            at(r, "failovers")
        ));
        for s in at(r, "topology").as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", server_line(s)));
        }
        if let Some(why) = at(r, "failover_blocked").as_str() {
            out.push_str(&format!("  no failover: {why}\n"));
        }
        for (server, extra) in at(r, "manual_repair").as_object().into_iter().flatten() {
            out.push_str(&format!(
                "  {server} needs a manual repair: {extra} transaction(s) the primary lacks\n"
            ));
        }
        let last = at(r, "last_promotion");
        if !last.is_null() {
            out.push_str(&format!(
                "  last {}: {}\n",
                at(last, "kind").as_str().unwrap_or("promotion"),
                at(last, "summary").as_str().unwrap_or_default()
            ));
            for step in at(last, "steps").as_array().into_iter().flatten() {
                let mark = if at(step, "ok").as_bool() == Some(true) {
                    "ok  "
                } else {
                    "FAIL"
                };
                out.push_str(&format!(
                    "    {mark} {:>6} ms  {}\n",
                    at(step, "took_ms").as_u64().unwrap_or(0),
                    at(step, "step").as_str().unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// One server of a topology: role, source and threads, GTID position.
fn server_line(s: &Value) -> String {
    let name = at(s, "name").as_str().unwrap_or_default();
    if at(s, "reachable").as_bool() != Some(true) {
        return format!(
            "{name}: unreachable ({})",
            at(s, "error").as_str().unwrap_or_default()
        );
    }
    if let Some(why) = at(s, "error").as_str() {
        return format!("{name}: answers, but its replication cannot be read ({why})");
    }
    let role = if at(s, "read_only").as_bool() == Some(true) {
        "read-only"
    } else {
        "writable"
    };
    let source = at(s, "replicates_from");
    let link = if source.is_null() {
        "replicates from no one".to_owned()
    } else {
        // An IO thread that is not running may be stopped or still
        // trying to connect: either way it receives nothing.
        let yes = |k: &str, no: &'static str| {
            if at(source, k).as_bool() == Some(true) {
                "running"
            } else {
                no
            }
        };
        format!(
            "replicates from {}:{} (IO {}, SQL {}, received {})",
            at(source, "host").as_str().unwrap_or_default(),
            at(source, "port"),
            yes("io_running", "not connected"),
            yes("sql_running", "stopped"),
            at(source, "gtid_io_pos").as_str().unwrap_or_default()
        )
    };
    format!(
        "{name}: {role}, {link}, at {}",
        at(s, "gtid_current_pos").as_str().unwrap_or_default()
    )
}

/// Where a backend is reached now, and where it came from when not the
/// file: `10.0.0.5:3306`, `10.0.0.7:3306 (srv)`, with `?` while its name
/// does not resolve.
fn reached_at(b: &Value) -> String {
    let ip = at(b, "ip").as_str().unwrap_or("-");
    let origin = at(b, "origin").as_str().unwrap_or("file");
    let mut out = ip.to_owned();
    if origin != "file" {
        out.push_str(&format!(" ({origin})"));
    }
    if !at(b, "unresolved").is_null() {
        out.push('?');
    }
    out
}

/// Pools and backends as an aligned text table.
pub fn table(status: &Value) -> String {
    let mut rows = vec![[
        "POOL", "BACKEND", "AT", "HEALTH", "IN", "ROLE", "LAG", "ACTIVE", "ADMIN", "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for pool in at(status, "pools").as_array().into_iter().flatten() {
        for b in at(pool, "backends").as_array().into_iter().flatten() {
            let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            rows.push(vec![
                text(at(pool, "name")),
                text(at(b, "name")),
                reached_at(b),
                text(at(b, "health")),
                if at(b, "eligible").as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                text(at(b, "role")),
                if at(b, "lag_seconds").is_null() {
                    "-".into()
                } else {
                    format!("{}s", at(b, "lag_seconds"))
                },
                text(at(b, "active_sessions")),
                b.pointer("/admin/state")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned(),
                text(at(b, "reason")),
            ]);
        }
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(encoded("db#10.0.0.5"), "db%2310.0.0.5");
        assert_eq!(encoded("a/b?c%"), "a%2Fb%3Fc%25");
        assert_eq!(
            route(&Action::Enable("db#fd00::5".into())).1,
            "/api/backends/db%23fd00::5/enable"
        );
    }

    #[test]
    fn a_table_lines_up() {
        let status = serde_json::json!({"pools": [{"name": "main", "backends": [
            {"name": "db1", "ip": "10.0.0.1:3306", "origin": "file", "unresolved": null, "health": "up", "eligible": true, "role": "writable", "lag_seconds": null, "active_sessions": 3, "admin": null, "reason": "ok"},
            {"name": "db2-long", "ip": "10.0.0.2:3306", "origin": "srv", "unresolved": "SERVFAIL", "health": "down", "eligible": false, "role": "read-only", "lag_seconds": 4, "active_sessions": 0, "admin": {"state": "drain"}, "reason": "refused"},
        ]}]});
        let t = table(&status);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("POOL  BACKEND   AT                    HEALTH"),
            "{t}"
        );
        assert!(
            lines[1].contains("db1       10.0.0.1:3306         up "),
            "{t}"
        );
        assert!(
            lines[2].contains(
                "db2-long  10.0.0.2:3306 (srv)?  down    no   read-only  4s   0       drain  refused"
            ),
            "{t}"
        );
    }
}
