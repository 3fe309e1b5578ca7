//! One probe of one backend, bounded by one deadline: the thin tokio driver
//! around [`crate::mysql::Probe`], or a bare TCP connect for `kind = "tcp"`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{format_duration, CheckConfig, CheckKind, ProxyVersion, TlsSetting};
use crate::mysql::{Action, Facts, Probe, ProbeError, ProbeOptions, TlsMode};
use crate::net::{describe_connect_error, is_local_shortage, proxy_header};
use crate::vocabulary::Lag;

/// What one probe concluded.
#[derive(Debug)]
pub enum Outcome {
    /// The backend answered as it should.
    Pass {
        /// In words, for the backend's reason.
        detail: String,
        /// What a MySQL probe learned.
        facts: Option<Facts>,
    },
    /// dbsplice could not run the probe for want of its own resources (out
    /// of file descriptors, socket buffers or memory). That says nothing
    /// about the backend, whose state stays as it was.
    Skipped {
        /// Which resource ran out.
        reason: String,
    },
    /// The server is alive but has no connection to spare: it greeted with
    /// error 1040 (too many connections). Not a failure: new sessions skip
    /// it until a slot frees.
    Full {
        /// The server's words.
        reason: String,
    },
    /// It did not.
    Fail {
        /// Why, in words an operator can act on.
        reason: String,
        /// The check's own settings are wrong (bad password, unknown plugin),
        /// as opposed to the server being down.
        misconfigured: bool,
    },
}

impl Outcome {
    fn fail(reason: impl Into<String>) -> Outcome {
        Outcome::Fail {
            reason: reason.into(),
            misconfigured: false,
        }
    }
}

/// Probes one backend with one pool's check settings.
#[derive(Debug, Clone)]
pub struct Prober {
    timeout: Duration,
    mysql: Option<MysqlProber>,
}

#[derive(Clone)]
struct MysqlProber {
    opts: Arc<ProbeOptions>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The pool sends PROXY headers: probes send a LOCAL one.
    proxy: Option<ProxyVersion>,
}

impl std::fmt::Debug for MysqlProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlProber")
            .field("opts", &self.opts)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Prober {
    /// Prepares probes of the backend whose host (as written) is `host`; the
    /// host is the name a TLS certificate is checked against.
    pub fn new(
        check: &CheckConfig,
        host: &str,
        proxy: Option<ProxyVersion>,
    ) -> Result<Prober, String> {
        let mysql = match (&check.kind, &check.mysql) {
            (CheckKind::Mysql, Some(m)) => {
                let tls = match m.tls {
                    TlsSetting::Disabled => None,
                    TlsSetting::Preferred | TlsSetting::Required => {
                        let config = super::tls::client_config(m)?;
                        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                            format!("\"{host}\" cannot be checked against a certificate: {e}")
                        })?;
                        Some((TlsConnector::from(config), name))
                    }
                };
                let opts = ProbeOptions {
                    user: m.user.clone(),
                    password: m.password.expose().to_owned(),
                    tls: match m.tls {
                        TlsSetting::Disabled => TlsMode::Disabled,
                        TlsSetting::Preferred => TlsMode::Preferred,
                        TlsSetting::Required => TlsMode::Required,
                    },
                    lag: m.lag,
                    galera: m.galera,
                    galera_donor_ok: m.galera_donor_ok,
                    group_replication: m.group_replication,
                    server_public_key: m.server_public_key.clone(),
                    get_server_public_key: m.get_server_public_key,
                };
                Some(MysqlProber {
                    opts: Arc::new(opts),
                    tls,
                    proxy,
                })
            }
            (CheckKind::Mysql, None) => return Err("the mysql check has no settings".to_owned()),
            (CheckKind::Tcp, _) => None,
        };
        Ok(Prober {
            timeout: check.timeout,
            mysql,
        })
    }

    /// The same way of reaching servers (TLS, PROXY header) with another
    /// login: for admin sessions. `None` for a TCP check.
    pub fn with_login(&self, user: &str, password: &str) -> Option<Prober> {
        let mut mysql = self.mysql.clone()?;
        let mut opts = (*mysql.opts).clone();
        opts.user = user.to_owned();
        opts.password = password.to_owned();
        mysql.opts = Arc::new(opts);
        Some(Prober {
            timeout: self.timeout,
            mysql: Some(mysql),
        })
    }

    /// Logs in to `addr`, runs `statements` in order (up to the first that
    /// fails) and quits, all within `timeout`; the answers are in
    /// [`Facts::answers`]. An error says why the session did not happen.
    pub async fn run_statements(
        &self,
        addr: SocketAddr,
        statements: Vec<String>,
        timeout: Duration,
    ) -> Result<Facts, String> {
        let Some(m) = &self.mysql else {
            return Err("the pool's check is not a mysql check".into());
        };
        let probe = Probe::script(Arc::clone(&m.opts), statements);
        match tokio::time::timeout(timeout, converse(m, addr, probe, None)).await {
            Ok(Ok(Ok(facts))) => Ok(facts),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(Cut::Connect(e))) => Err(describe_connect_error(&e)),
            Ok(Err(Cut::Other(reason))) => Err(reason),
            Err(_) => Err(format!(
                "no complete answer within {}",
                format_duration(timeout)
            )),
        }
    }

    /// [`Prober::run_statements`] whose session stays open after a
    /// successful script, until `release` is cancelled (or the server ends
    /// it): what a `GET_LOCK` needs. Returns once the answers are in.
    pub async fn run_statements_kept_open(
        &self,
        addr: SocketAddr,
        statements: Vec<String>,
        timeout: Duration,
        release: tokio_util::sync::CancellationToken,
    ) -> Result<Facts, String> {
        let Some(m) = self.mysql.clone() else {
            return Err("the pool's check is not a mysql check".into());
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (failed, failure) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let probe = Probe::script_kept_open(Arc::clone(&m.opts), statements);
            let hold = Some(Hold { answer, release });
            let outcome = match converse(&m, addr, probe, hold).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(Cut::Connect(e)) => describe_connect_error(&e),
                Err(Cut::Other(reason)) => reason,
            };
            let _ = failed.send(outcome);
        });
        let waited = async {
            tokio::select! {
                Ok(facts) = answered => Ok(facts),
                Ok(why) = failure => Err(why),
                else => Err("the session ended without an answer".to_owned()),
            }
        };
        tokio::time::timeout(timeout, waited)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no complete answer within {}",
                    format_duration(timeout)
                ))
            })
    }

    /// Runs one probe against `addr` within the check's timeout.
    pub async fn probe(&self, addr: SocketAddr) -> Outcome {
        let work = async {
            match &self.mysql {
                Some(m) => mysql(m, addr).await,
                None => tcp(addr).await,
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(format!(
                "timeout: no complete answer within {}",
                format_duration(self.timeout)
            )),
        }
    }
}

async fn tcp(addr: SocketAddr) -> Outcome {
    match TcpStream::connect(addr).await {
        Ok(_stream) => Outcome::Pass {
            detail: "tcp connect succeeded".to_owned(),
            facts: None,
        },
        Err(e) => connect_failed(&e),
    }
}

/// The outcome of a probe whose connect failed.
fn connect_failed(e: &io::Error) -> Outcome {
    if is_local_shortage(e) {
        Outcome::Skipped {
            reason: describe_connect_error(e),
        }
    } else {
        Outcome::fail(describe_connect_error(e))
    }
}

/// Why a conversation with a server ended before the probe had its say.
enum Cut {
    /// The connect failed.
    Connect(io::Error),
    /// Anything after it, in words.
    Other(String),
}

/// Where a kept-open session's answers go, and what ends it.
struct Hold {
    answer: tokio::sync::oneshot::Sender<Facts>,
    release: tokio_util::sync::CancellationToken,
}

/// Connects to `addr` and runs `probe` to its end, with TLS when it asks;
/// with `hold`, a successful script's session stays open until released.
async fn converse(
    m: &MysqlProber,
    addr: SocketAddr,
    mut probe: Probe,
    mut hold: Option<Hold>,
) -> Result<Result<Facts, ProbeError>, Cut> {
    let mut stream = TcpStream::connect(addr).await.map_err(Cut::Connect)?;
    let _ = stream.set_nodelay(true);
    if let Some(version) = m.proxy {
        stream
            .write_all(&proxy_header::local(version))
            .await
            .map_err(|e| Cut::Other(format!("sending the PROXY header failed: {e}")))?;
    }
    match drive(&mut probe, &mut stream, &mut hold).await {
        Ok(Some(result)) => Ok(result),
        Ok(None) => {
            let Some((connector, name)) = &m.tls else {
                return Err(Cut::Other(
                    "protocol error: TLS requested without TLS settings".into(),
                ));
            };
            let mut tls = connector
                .connect(name.clone(), stream)
                .await
                .map_err(|e| Cut::Other(format!("TLS handshake failed: {e}")))?;
            probe.on_tls_ready();
            match drive(&mut probe, &mut tls, &mut hold).await {
                Ok(Some(result)) => Ok(result),
                Ok(None) => Err(Cut::Other("protocol error: TLS requested twice".into())),
                Err(e) => Err(Cut::Other(format!("connection error over TLS: {e}"))),
            }
        }
        Err(e) => Err(Cut::Other(format!("connection error: {e}"))),
    }
}

async fn mysql(m: &MysqlProber, addr: SocketAddr) -> Outcome {
    let result = match converse(m, addr, Probe::new(Arc::clone(&m.opts)), None).await {
        Ok(result) => result,
        Err(Cut::Connect(e)) => return connect_failed(&e),
        Err(Cut::Other(reason)) => return Outcome::fail(reason),
    };
    match result {
        Ok(facts) => {
            let lag = match &facts.lag {
                None => String::new(),
                Some(Lag::NotReplica) => ", not a replica".to_owned(),
                Some(Lag::Seconds(s)) => format!(", {s}s behind its primary"),
                Some(Lag::Unknown(why)) => format!(", lag unknown: {why}"),
            };
            let detail = format!(
                "mysql check passed ({}, {}{lag})",
                facts.server_version,
                facts.role.as_str()
            );
            Outcome::Pass {
                detail,
                facts: Some(facts),
            }
        }
        Err(ProbeError::Greeting(e)) if e.code == crate::mysql::ER_CON_COUNT_ERROR => {
            Outcome::Full {
                reason: format!("full: greeting error {}: {}", e.code, e.message),
            }
        }
        Err(e) => Outcome::Fail {
            misconfigured: e.is_check_misconfigured(),
            reason: e.to_string(),
        },
    }
}

/// Runs the probe over `stream` until it is done (`Some`) or asks for TLS
/// (`None`). With `hold`, a success is handed over at once and the session
/// kept until released (or closed by the server), then quit.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    probe: &mut Probe,
    stream: &mut S,
    hold: &mut Option<Hold>,
) -> io::Result<Option<Result<Facts, ProbeError>>> {
    let mut buf = [0u8; 4096];
    loop {
        match probe.next_action() {
            Action::Write(bytes) => stream.write_all(&bytes).await?,
            Action::Read => match stream.read(&mut buf).await? {
                0 => probe.on_eof(),
                n => probe.on_data(buf.get(..n).unwrap_or_default()),
            },
            Action::StartTls => return Ok(None),
            Action::Done(Ok(facts)) if hold.is_some() => {
                let Some(Hold { answer, release }) = hold.take() else {
                    return Ok(Some(Ok(facts)));
                };
                let _ = answer.send(facts.clone());
                tokio::select! {
                    () = release.cancelled() => {}
                    // The server ended it: nothing is held any more.
                    _ = stream.read(&mut buf) => return Ok(Some(Ok(facts))),
                }
                stream.write_all(&crate::mysql::probe::quit()).await?;
                let _ = stream.flush().await;
                return Ok(Some(Ok(facts)));
            }
            Action::Done(result) => {
                // After COM_QUIT the server closes; shutting our side down
                // first would only race it.
                let _ = stream.flush().await;
                return Ok(Some(result));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_probe_passes_on_a_listening_port_and_fails_on_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(matches!(tcp(addr).await, Outcome::Pass { .. }));
        drop(listener);
        let Outcome::Fail {
            reason,
            misconfigured,
        } = tcp(addr).await
        else {
            panic!("closed port passed")
        };
        assert!(reason.contains("refused") && !misconfigured, "{reason}");
    }

    #[test]
    fn running_out_of_descriptors_is_dbsplice_s_shortage_not_the_backend_s() {
        for errno in [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(is_local_shortage(&e));
            let Outcome::Skipped { reason } = connect_failed(&e) else {
                panic!("a probe dbsplice could not run counted as a verdict")
            };
            assert!(reason.contains("short of resources"), "{reason}");
        }
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(!is_local_shortage(&refused));
        assert!(matches!(connect_failed(&refused), Outcome::Fail { .. }));
    }
}
