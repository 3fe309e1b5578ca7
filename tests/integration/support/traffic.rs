//! Client traffic for the load and soak tests: clients on short connections
//! (one per statement) and on persistent ones (reconnecting when a
//! connection breaks), tallying what they saw and how long it took, and a
//! three-backend config written the way editors write files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::binary::Running;
use super::netns::Netns;
use super::{backend, config, connect, with_token_admin, MariaDb, Scratch};

/// A statement or connect taking longer than this is a stuck session.
pub const STUCK: Duration = Duration::from_secs(10);

/// What the clients saw.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub stuck: AtomicU64,
    /// Failure messages, in order.
    pub errors: Mutex<Vec<String>>,
    /// Microseconds each successful operation took.
    pub latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn record(
        &self,
        started: Instant,
        outcome: Result<Result<(), mysql_async::Error>, tokio::time::error::Elapsed>,
    ) {
        match outcome {
            Ok(Ok(())) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                self.latencies.lock().unwrap().push(micros);
            }
            Ok(Err(e)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.errors.lock().unwrap().push(e.to_string());
            }
            Err(_) => {
                self.stuck.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn stuck(&self) -> u64 {
        self.stuck.load(Ordering::Relaxed)
    }

    /// The latency below which `q` (0..=1) of the operations finished.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let mut all = self.latencies.lock().unwrap().clone();
        if all.is_empty() {
            return Duration::ZERO;
        }
        all.sort_unstable();
        let last = all.len() - 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let at = ((last as f64) * q).round() as usize;
        Duration::from_micros(u64::from(all[at.min(last)]))
    }
}

/// Connect, `DO 1`, disconnect, until `stop`.
pub async fn short_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let once = async {
            let mut conn = connect(addr).await?;
            conn.query_drop("DO 1").await?;
            conn.disconnect().await
        };
        tally.record(started, tokio::time::timeout(STUCK, once).await);
    }
}

/// `DO 1` every 5 ms on one connection, reconnecting after a failure.
pub async fn persistent_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let statement = async {
            if conn.is_none() {
                conn = Some(connect(addr).await?);
            }
            let c = conn.as_mut().expect("connected above");
            c.query_drop("DO 1").await
        };
        let outcome = tokio::time::timeout(STUCK, statement).await;
        if !matches!(outcome, Ok(Ok(()))) {
            conn = None;
        }
        tally.record(started, outcome);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(conn) = conn {
        let _ = conn.disconnect().await;
    }
}

/// Starts `short` short and `persistent` persistent clients on `addr`.
pub fn start_clients(
    addr: SocketAddr,
    short: usize,
    persistent: usize,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut clients = Vec::new();
    for _ in 0..short {
        clients.push(tokio::spawn(short_client(
            addr,
            Arc::clone(tally),
            Arc::clone(stop),
        )));
    }
    for _ in 0..persistent {
        clients.push(tokio::spawn(persistent_client(
            addr,
            Arc::clone(tally),
            Arc::clone(stop),
        )));
    }
    clients
}

/// Writes a config for three primaries as editors do (a new file renamed
/// over the old), with backend 0 at `weight`: least-connections, connect
/// timeout 300 ms with three attempts, the greeting gate, sessions closed
/// on a backend that goes down, a MySQL check every 100 ms (deadline
/// 500 ms, rise 1, fall 2), and a token-protected admin server.
pub fn write_config(path: &Path, servers: [SocketAddr; 3], weight: u32) {
    let body = config(
        "balance = \"least-connections\"\nconnect_timeout = \"300ms\"\nconnect_attempts = 3\n\
         on_down = \"close\"\ngreeting_gate = true\ngreeting_timeout = \"300ms\"\n\
         [pool.main.check]\nkind = \"mysql\"\nuser = \"check\"\npassword = \"checkpw\"\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n",
        &[
            backend(servers[0], weight, "primary"),
            backend(servers[1], 1, "primary"),
            backend(servers[2], 1, "primary"),
        ],
    );
    let tmp = path.with_extension("tmp");
    let text = format!("reload_poll = \"1h\"\n{}", with_token_admin(&body));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Three primaries behind the `dbsplice` binary, configured by
/// [`write_config`]: `a` and `b` on loopback, `c` in a network namespace of
/// its own, all three up.
pub struct ThreeBackends {
    pub running: Running,
    /// The admin server (token `tok`).
    pub admin: SocketAddr,
    pub a: MariaDb,
    pub b: MariaDb,
    pub c: MariaDb,
    /// The namespace `c` runs in.
    pub ns: Netns,
    pub servers: [SocketAddr; 3],
    /// The backends' names in the config and the logs.
    pub names: [String; 3],
    /// The config file, for reloads.
    pub path: PathBuf,
    pub dir: Scratch,
    /// Where the logs ended once all three were up.
    pub up_at: usize,
}

impl ThreeBackends {
    /// Starts the servers and dbsplice, with files in a scratch directory named `name`.
    pub async fn start(name: &str) -> ThreeBackends {
        let ns = Netns::create();
        let (a, b, c) = tokio::join!(MariaDb::start(), MariaDb::start(), MariaDb::start_in(&ns));
        let servers = [a.addr(), b.addr(), c.addr()];
        let names = servers.map(|s| s.to_string());
        let dir = Scratch::new(name);
        std::fs::write(dir.0.join("admin.token"), "tok").unwrap();
        let path = dir.0.join("dbsplice.toml");
        write_config(&path, servers, 1);
        let running = Running::start(&path, None);
        let admin = running.admin_addr().await;
        let mut up_at = 0;
        for name in &names {
            up_at = running.wait_log(0, &["backend up", name]).await.max(up_at);
        }
        ThreeBackends {
            running,
            admin,
            a,
            b,
            c,
            ns,
            servers,
            names,
            path,
            dir,
            up_at,
        }
    }
}
