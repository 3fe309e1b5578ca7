//! Switchovers dbsplice carries out itself on a real MariaDB GTID cluster
//! (a primary and two replicas), under a loop of new connections that each
//! write a row, with every server's `read_only` sampled throughout: no new
//! connection fails, no two servers are ever writable, the old primary
//! replicates from the new one afterwards, and a failed catch-up rolls back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::cluster::Cluster;
use crate::support::mariadb::{CHECK_PASSWORD, CHECK_USER, PASSWORD, USER};
use crate::support::{mysql_check, port_of_new_session, wait_until, Proxy};

const ADMIN_USER: &str = "dbsplice_admin";
const ADMIN_PASSWORD: &str = "adminpw";

/// The grants `conf/dbsplice.toml` documents for the `[replication]` user
/// on MariaDB 10.11, and no more.
const GRANTS: &str =
    "RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, SLAVE MONITOR, BINLOG MONITOR, CONNECTION ADMIN";

/// A cluster with the documented admin user on every server.
pub(crate) async fn cluster() -> Cluster {
    prepare(Cluster::start(2).await).await
}

/// The documented admin user and the test's table, on every server of
/// `cluster` (written on the primary, waited for on the replicas).
pub(crate) async fn prepare(cluster: Cluster) -> Cluster {
    let mut primary = cluster.servers[0].admin().await;
    for sql in [
        format!("CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'"),
        format!("GRANT {GRANTS} ON *.* TO '{ADMIN_USER}'@'%'"),
        "CREATE DATABASE drill".to_owned(),
        "CREATE TABLE drill.acks (id BIGINT PRIMARY KEY)".to_owned(),
    ] {
        primary.query_drop(sql).await.unwrap();
    }
    primary.disconnect().await.unwrap();
    for replica in &cluster.servers[1..] {
        wait_until(Duration::from_secs(20), || async {
            let mut c = replica.admin().await;
            let n: Option<u64> = c
                .query_first(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'acks'",
                )
                .await
                .unwrap();
            c.disconnect().await.unwrap();
            (n == Some(1)).then_some(())
        })
        .await
        .expect("the replicas have the admin user and the table");
    }
    cluster
}

/// dbsplice with writer pool `main` over the cluster, its servers named
/// db1, db2, db3, and `settings` in its `[replication]` table.
async fn proxy(cluster: &Cluster, settings: &str) -> Proxy {
    proxy_with(cluster, "", settings).await
}

/// A `[[pool.main.backend]]` table per server of `cluster`, named db1, db2...
/// with `extra[i]` (if any) in server `i`'s table.
fn backend_tables(cluster: &Cluster, extra: &[&str]) -> Vec<String> {
    cluster
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "[[pool.main.backend]]\naddress = \"{}\"\nname = \"db{}\"\n{}\n",
                s.addr(),
                i + 1,
                extra.get(i).copied().unwrap_or_default()
            )
        })
        .collect()
}

/// The config of [`proxy_with`], with `extra` in the backends' tables.
pub(crate) fn config_text(cluster: &Cluster, pool: &str, settings: &str, extra: &[&str]) -> String {
    let body = format!(
        "role = \"writer\"\n{pool}\n{}[pool.main.replication]\nuser = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\n\
         replication_user = \"{USER}\"\nreplication_password = \"{PASSWORD}\"\n{settings}\n",
        mysql_check(CHECK_USER, CHECK_PASSWORD, "")
    );
    crate::support::config(&body, &backend_tables(cluster, extra))
}

/// [`proxy`] with `pool` settings too (before the `[replication]` table).
pub(crate) async fn proxy_with(cluster: &Cluster, pool: &str, settings: &str) -> Proxy {
    let proxy = Proxy::start(&config_text(cluster, pool, settings, &[]));
    reaches_primary(cluster, proxy).await
}

/// `proxy`, once its writer listener reaches the cluster's first server.
pub(crate) async fn reaches_primary(cluster: &Cluster, proxy: Proxy) -> Proxy {
    let (addr, primary) = (proxy.addr("rw"), cluster.servers[0].port);
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(primary)).then_some(())
    })
    .await
    .expect("the writer listener reaches the primary");
    proxy
}

/// Samples every server's `read_only` until stopped: the most servers seen
/// writable at once. Each server is read twice, forward then backward, and
/// counts as writable only when both reads say so, so that one server
/// turning read-only while the next turns writable is not two writers.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(usize, u64)>,
}

impl Sampler {
    pub(crate) async fn start(cluster: &Cluster) -> Sampler {
        let all: Vec<usize> = (0..cluster.servers.len()).collect();
        Sampler::start_some(cluster, &all).await
    }

    /// Samples only the servers at `which` (those that stay up).
    pub(crate) async fn start_some(cluster: &Cluster, which: &[usize]) -> Sampler {
        let mut conns = Vec::new();
        for &i in which {
            conns.push(cluster.servers[i].admin().await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut most, mut samples) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let mut forward = Vec::new();
                    for c in conns.iter_mut() {
                        forward.push(writable(c).await);
                    }
                    let mut both = 0;
                    for (c, was) in conns.iter_mut().zip(&forward).rev() {
                        both += usize::from(*was && writable(c).await);
                    }
                    most = most.max(both);
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (most, samples)
            })
        };
        Sampler { stop, handle }
    }

    pub(crate) async fn stop(self) -> (usize, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap()
    }
}

pub(crate) async fn writable(c: &mut mysql_async::Conn) -> bool {
    let read_only: Option<u8> = c.query_first("SELECT @@read_only").await.unwrap();
    read_only == Some(0)
}

/// New connections through dbsplice, each writing one row: failed
/// connections, refused writes, and the rows acknowledged.
pub(crate) struct Writers {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<(Vec<u64>, u64)>,
}

impl Writers {
    pub(crate) fn start(addr: std::net::SocketAddr) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            tokio::spawn(async move {
                let (mut acked, mut refused_writes, mut id) = (Vec::new(), 0, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    id += 1;
                    match crate::support::connect(addr).await {
                        Ok(mut conn) => {
                            match conn
                                .query_drop(format!("INSERT INTO drill.acks VALUES ({id})"))
                                .await
                            {
                                Ok(()) => acked.push(id),
                                // A write on a session opened before the
                                // pause meets the demoted primary's read_only.
                                Err(_) => refused_writes += 1,
                            }
                            let _ = conn.disconnect().await;
                        }
                        Err(e) => {
                            eprintln!("new connection failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (acked, refused_writes)
            })
        };
        Writers {
            stop,
            failed,
            handle,
        }
    }

    pub(crate) async fn stop(self) -> (u64, Vec<u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let (acked, refused) = self.handle.await.unwrap();
        (self.failed.load(Ordering::SeqCst), acked, refused)
    }
}

/// Whether `id` has arrived on `server`, waiting up to ten seconds.
pub(crate) async fn arrives(server: &crate::support::mariadb::MariaDb, id: u64) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let mut c = server.admin().await;
        let n: Option<u64> = c
            .query_first(format!("SELECT COUNT(*) FROM drill.acks WHERE id = {id}"))
            .await
            .unwrap();
        c.disconnect().await.unwrap();
        (n == Some(1)).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_fails_no_new_connection_and_never_makes_two_writers() {
    let cluster = cluster().await;
    let proxy = proxy(&cluster, "").await;
    let (addr, app) = (proxy.addr("rw"), proxy.app.as_ref().unwrap());
    let sampler = Sampler::start(&cluster).await;
    let writers = Writers::start(addr);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let report = app
        .inbox()
        .switchover("main", Some("db2".into()), "the test".into())
        .await
        .unwrap();
    for step in &report.steps {
        eprintln!(
            "{:>6} ms {} {}: {}",
            step.took_ms,
            if step.ok { "ok  " } else { "FAIL" },
            step.step,
            step.detail
        );
    }
    assert!(report.ok, "{}", report.summary);
    assert_eq!(
        (report.from.as_deref(), report.to.as_deref()),
        (Some("db1"), Some("db2"))
    );
    let new = cluster.servers[1].port;
    assert_eq!(
        port_of_new_session(addr).await,
        Some(new),
        "the writer listener follows at once"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (failed, acked, refused_writes) = writers.stop().await;
    let (most, samples) = sampler.stop().await;
    eprintln!("{samples} samples, at most {most} writable; {} writes acknowledged, {refused_writes} refused", acked.len());
    assert_eq!(failed, 0, "no new connection failed");
    assert_eq!(most, 1, "never two writable servers");
    assert!(samples > 20, "{samples}");

    // Every acknowledged write is on the new primary, and a row written
    // there reaches the old primary, now its replica, and the other one.
    let mut primary = cluster.servers[1].admin().await;
    let rows: Vec<u64> = primary.query("SELECT id FROM drill.acks").await.unwrap();
    assert!(
        acked.iter().all(|id| rows.contains(id)),
        "acknowledged writes lost"
    );
    primary
        .query_drop("INSERT INTO drill.acks VALUES (1000000)")
        .await
        .unwrap();
    primary.disconnect().await.unwrap();
    assert!(
        arrives(&cluster.servers[0], 1_000_000).await,
        "the old primary replicates from the new one"
    );
    assert!(
        arrives(&cluster.servers[2], 1_000_000).await,
        "so does the other replica"
    );

    let status = dbsplice::admin::status::status(app.shared());
    let last = &status["pools"][0]["replication"]["last_promotion"];
    assert_eq!(last["to"], "db2", "{status}");
    let scrape = dbsplice::admin::metrics::render(app.shared());
    let line = format!(
        "{}{{pool=\"main\",kind=\"switchover\"}} 1",
        dbsplice::metrics::POOL_PROMOTIONS.0
    );
    assert!(scrape.contains(&line), "{line} missing:\n{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_cannot_catch_up_is_rolled_back_and_refusals_say_why() {
    let cluster = cluster().await;
    let proxy = proxy(&cluster, "catch_up_timeout = \"1s\"").await;
    let app = proxy.app.as_ref().unwrap();
    // db2 stops fetching: the write below never reaches it.
    let mut db2 = cluster.servers[1].admin().await;
    db2.query_drop("STOP SLAVE IO_THREAD").await.unwrap();
    let mut db1 = cluster.servers[0].admin().await;
    db1.query_drop("INSERT INTO drill.acks VALUES (7)")
        .await
        .unwrap();
    let sampler = Sampler::start(&cluster).await;
    let report = app
        .inbox()
        .switchover("main", Some("db2".into()), "the test".into())
        .await
        .unwrap();
    let (most, _) = sampler.stop().await;
    assert!(!report.ok);
    assert!(
        report.summary.contains("did not apply")
            && report
                .summary
                .contains("rolled back: db1 is the primary again"),
        "{}",
        report.summary
    );
    assert!(
        writable(&mut db1).await,
        "the old primary takes writes again"
    );
    assert!(
        !writable(&mut db2).await,
        "the candidate was never promoted"
    );
    assert_eq!(most, 1, "never two writable servers");
    assert_eq!(
        port_of_new_session(proxy.addr("rw")).await,
        Some(cluster.servers[0].port)
    );

    // Refusals happen before anything is touched, and say why.
    for (to, words) in [
        (Some("db9"), "no backend named \"db9\""),
        (Some("db1"), "primary already"),
    ] {
        let report = app
            .inbox()
            .switchover("main", to.map(str::to_owned), "the test".into())
            .await
            .unwrap();
        assert!(
            !report.ok && report.summary.contains(words),
            "{to:?}: {}",
            report.summary
        );
    }
    db2.query_drop("START SLAVE IO_THREAD").await.unwrap();
    let report = app
        .inbox()
        .switchover("elsewhere", None, "the test".into())
        .await
        .unwrap();
    assert!(
        report.summary.contains("no pool named"),
        "{}",
        report.summary
    );

    // Another instance holds the lock on two of the three servers: refused,
    // nothing touched.
    let mut db3 = cluster.servers[2].admin().await;
    for c in [&mut db2, &mut db3] {
        let got: Option<u8> = c
            .query_first("SELECT GET_LOCK('dbsplice:main', 0)")
            .await
            .unwrap();
        assert_eq!(got, Some(1));
    }
    let report = app
        .inbox()
        .switchover("main", None, "the test".into())
        .await
        .unwrap();
    assert!(
        !report.ok
            && report.summary.contains("granted by 1 of 3 servers")
            && report.summary.contains("another dbsplice instance"),
        "{}",
        report.summary
    );
    assert!(writable(&mut db1).await, "the primary was not touched");
    db3.disconnect().await.unwrap();
    let report = app
        .inbox()
        .switchover("main", None, "the test".into())
        .await
        .unwrap();
    assert!(
        report.ok,
        "with two of three the lock is held: {}",
        report.summary
    );
    db1.disconnect().await.unwrap();
    db2.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_asked_at_once_switch_over_once() {
    let cluster = cluster().await;
    let (first, second) = tokio::join!(proxy(&cluster, ""), proxy(&cluster, ""));
    let sampler = Sampler::start(&cluster).await;
    let ask = |p: &Proxy| {
        let inbox = p.app.as_ref().unwrap().inbox().clone();
        async move {
            inbox
                .switchover("main", None, "the test".into())
                .await
                .unwrap()
        }
    };
    let (a, b) = tokio::join!(ask(&first), ask(&second));
    let (most, _) = sampler.stop().await;
    eprintln!("first: {}\nsecond: {}", a.summary, b.summary);
    assert_eq!(u8::from(a.ok) + u8::from(b.ok), 1, "exactly one promotion");
    let refused = if a.ok { &b } else { &a };
    assert!(
        refused.summary.contains("another dbsplice instance"),
        "{}",
        refused.summary
    );
    assert_eq!(most, 1, "never two writable servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_and_the_api_report_each_step() {
    use crate::support::binary::{http, Running, BIN};
    let cluster = cluster().await;
    let dir = crate::support::Scratch::new("switchover-cli");
    std::fs::write(dir.0.join("admin.token"), "tok-switch").unwrap();
    std::fs::write(dir.0.join("admin.password"), format!("{ADMIN_PASSWORD}\n")).unwrap();
    let backends: String = backend_tables(&cluster, &[]).concat();
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(
        &path,
        format!(
            "shutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\
             [[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\
             [pool.main]\nrole = \"writer\"\n{}[pool.main.replication]\nuser = \"{ADMIN_USER}\"\n\
             password_file = \"admin.password\"\nreplication_user = \"{USER}\"\nreplication_password = \"{PASSWORD}\"\n{backends}",
            mysql_check(CHECK_USER, CHECK_PASSWORD, "")
        ),
    )
    .unwrap();
    let running = Running::start(&path, None);
    let admin = running.admin_addr().await;
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(running.addr).await == Some(cluster.servers[0].port)).then_some(())
    })
    .await
    .expect("the writer listener reaches the primary");

    let out = std::process::Command::new(BIN)
        .args(["switchover", "main", "--to", "db3", "--config"])
        .arg(&path)
        .args(["--admin", &admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    for words in [
        "ok ",
        "make db1 read-only",
        "wait for db3 to apply",
        "promote db3",
        "point db1 at db3",
        "point db2 at db3",
        "resume the pool",
        "db3 is the primary",
    ] {
        assert!(text.contains(words), "{words:?} missing");
    }
    assert!(!text.contains(PASSWORD), "no password is ever shown");
    assert_eq!(
        port_of_new_session(running.addr).await,
        Some(cluster.servers[2].port)
    );

    // Refused: 409 with the reason; the command exits non-zero saying it.
    let (status, body) = http(
        admin,
        "POST",
        "/api/pools/main/switchover?to=db3",
        Some("tok-switch"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("primary already"), "{body}");
    let (status, _) = http(admin, "POST", "/api/pools/main/switchover", None).await;
    assert_eq!(status, 401, "actions need the token");
    let out = std::process::Command::new(BIN)
        .args(["switchover", "main", "--to", "db9", "--config"])
        .arg(&path)
        .args(["--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backend named \"db9\""));
    let (_, status) = http(admin, "GET", "/api/status", None).await;
    assert!(status.contains("\"switchovers\":1"), "{status}");
    // The topology as the watcher last read it, and the last switchover.
    let text = wait_until(Duration::from_secs(10), || async {
        let out = std::process::Command::new(BIN)
            .args(["status", "--config"])
            .arg(&path)
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("db1: read-only, replicates from")
            .then_some(text)
    })
    .await
    .expect("dbsplice status shows the old primary replicating");
    eprintln!("{text}");
    // The status page shows the same, in a browser.
    let profile = dir.0.join("chromium-profile");
    let page = crate::cli::chromium(&profile)
        .args([
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("http://{admin}/"),
        ])
        .output()
        .expect("chromium runs (scripts/deps installs it)");
    let dom = String::from_utf8_lossy(&page.stdout);
    for words in [
        "replication · failover off · 1 switchover(s)",
        "last switchover",
        "promote db3",
        "replicates from",
    ] {
        assert!(
            dom.contains(words),
            "the status page lacks {words:?}: {dom}"
        );
    }
    for words in [
        "replication of main: failover off, 1 switchover(s)",
        "db3: writable, replicates from no one",
        "(IO running, SQL running",
        "last switchover: db3 is the primary",
        "promote db3",
    ] {
        assert!(text.contains(words), "{words:?} missing");
    }
    running.stop().await;
}
