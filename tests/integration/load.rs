//! Load with faults: clients on short and on persistent connections keep
//! working through the `dbsplice` binary while backends are killed, frozen,
//! black-holed, drained and enabled, and the config reloads a hundred times.
//! Failed client operations are bounded by the sessions a fault could take
//! with it; afterwards descriptors and memory are back at their baseline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::binary::{admin_addr, http, Running};
use crate::support::netns::Netns;
use crate::support::{backend, config, connect, wait_until, MariaDb, Scratch};

/// Clients opening a new connection per statement.
const SHORT: usize = 4;
/// Clients keeping one connection, reconnecting when it breaks.
const PERSISTENT: usize = 4;
/// Config reloads while the clients run.
const RELOADS: usize = 100;
/// A statement or connect taking longer than this is a stuck session.
const STUCK: Duration = Duration::from_secs(10);

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    stuck: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<Result<(), mysql_async::Error>, tokio::time::error::Elapsed>) {
        match outcome {
            Ok(Ok(())) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
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

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

async fn short_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let once = async {
            let mut conn = connect(addr).await?;
            conn.query_drop("DO 1").await?;
            conn.disconnect().await
        };
        tally.record(tokio::time::timeout(STUCK, once).await);
    }
}

async fn persistent_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
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
        tally.record(outcome);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(conn) = conn {
        let _ = conn.disconnect().await;
    }
}

/// Writes the config as editors do (a new file renamed over the old), with
/// backend `a` at `weight`.
fn write_config(path: &Path, servers: [SocketAddr; 3], weight: u32) {
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
    let text = format!(
        "reload_poll = \"1h\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n{}",
        body.replacen("shutdown_grace = \"5s\"\n", "", 1)
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("shutdown_grace = \"5s\"\n{text}")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until the logs, from byte `from` on, have a line with every one
/// of `words`; returns where the logs end now.
async fn logged(running: &Running, from: usize, words: &[&str]) -> usize {
    let found = wait_until(Duration::from_secs(20), || async {
        let logs = running.logs();
        let tail = logs.get(from..).unwrap_or_default();
        tail.lines()
            .any(|l| words.iter().all(|w| l.contains(w)))
            .then_some(())
    })
    .await;
    let logs = running.logs();
    assert!(
        found.is_some(),
        "no log line with {words:?}: {}",
        logs.get(from..).unwrap_or_default()
    );
    logs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ride_out_kills_freezes_black_holes_drains_and_reloads() {
    let ns = Netns::create();
    let (a, mut b, c) = tokio::join!(MariaDb::start(), MariaDb::start(), MariaDb::start_in(&ns));
    let servers = [a.addr(), b.addr(), c.addr()];
    let names = servers.map(|s| s.to_string());
    let dir = Scratch::new("load-faults");
    std::fs::write(dir.0.join("admin.token"), "tok").unwrap();
    let path = dir.0.join("dbsplice.toml");
    write_config(&path, servers, 1);
    let running = Running::start(&path, None);
    let addr = running.addr;
    let admin = wait_until(Duration::from_secs(10), || async {
        admin_addr(&running.logs())
    })
    .await
    .unwrap();
    let mut at = 0;
    for name in &names {
        at = logged(&running, 0, &["backend up", name]).await.max(at);
    }
    let fds_idle = running.resting_fd_count().await;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..SHORT {
        clients.push(tokio::spawn(short_client(
            addr,
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }
    for _ in 0..PERSISTENT {
        clients.push(tokio::spawn(persistent_client(
            addr,
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }
    // Warm up: buffers, caches and allocator arenas reach their working size.
    let warm = wait_until(Duration::from_secs(20), || async {
        (tally.ok.load(Ordering::Relaxed) >= 500).then_some(())
    })
    .await;
    assert!(
        warm.is_some(),
        "clients got nowhere: {:?}",
        tally.errors.lock().unwrap()
    );
    assert_eq!(tally.failed(), 0, "{:?}", tally.errors.lock().unwrap());
    let rss_warm = running.rss_kib();

    // Killed: refused connects are retried elsewhere.
    b.kill();
    at = logged(&running, at, &["backend down", &names[1]]).await;
    b.restart().await;
    at = logged(&running, at, &["backend up", &names[1]]).await;
    // Frozen: the greeting gate skips it until the checker takes it out.
    a.pause();
    at = logged(&running, at, &["backend down", &names[0]]).await;
    a.resume();
    at = logged(&running, at, &["backend up", &names[0]]).await;
    // Black-holed: connects wait out connect_timeout, then go elsewhere.
    ns.black_hole();
    at = logged(&running, at, &["backend down", &names[2]]).await;
    ns.heal();
    at = logged(&running, at, &["backend up", &names[2]]).await;
    let failed_by_faults = tally.failed();

    // Reloads and operator actions cost no client anything.
    for i in 0..RELOADS {
        write_config(&path, servers, 2 - u32::try_from(i % 2).unwrap());
        at = logged(&running, at, &["config reloaded"]).await;
        if i % 25 == 0 {
            for action in ["drain", "enable"] {
                let uri = format!("/api/backends/{}/{action}", names[i / 25 % 3]);
                assert_eq!(http(admin, "POST", &uri, Some("tok")).await.0, 200, "{uri}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let errors = tally.errors.lock().unwrap().clone();
    let (ok, failed) = (tally.ok.load(Ordering::Relaxed), tally.failed());
    eprintln!(
        "{ok} client operations served, {failed} failed ({failed_by_faults} during the faults)"
    );
    assert_eq!(
        tally.stuck.load(Ordering::Relaxed),
        0,
        "a session hung past {STUCK:?}"
    );
    // A fault can take with it the sessions open on its backend, at most one
    // per client; everything else is retried before the client sees a byte.
    let bound = 3 * u64::try_from(SHORT + PERSISTENT).unwrap();
    assert!(
        failed_by_faults <= bound,
        "{failed_by_faults} failures: {errors:?}"
    );
    assert_eq!(
        failed, failed_by_faults,
        "reloads or drains failed clients: {errors:?}"
    );

    // Every descriptor is given back; memory stays at its working size.
    running.assert_fds_return_to(fds_idle).await;
    let rss_end = running.rss_kib();
    eprintln!("RSS warm {rss_warm} KiB, after faults and {RELOADS} reloads {rss_end} KiB");
    assert!(
        rss_end <= rss_warm + 2048,
        "RSS grew from {rss_warm} to {rss_end} KiB"
    );
    running.stop().await;
}
