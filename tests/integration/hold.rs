//! Holding new clients while a pool has no backend that can take them: a
//! failover between the primary's death and the promotion, a reload that
//! replaces a pool's only backend, and the bounds (hold_timeout, hold_max,
//! shutdown) that keep holding from becoming a hang.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dbsplice::inbox::{ReloadOutcome, Trigger};
use dbsplice::vocabulary::Health;
use tokio::io::AsyncReadExt;

use crate::support::cluster::Cluster;
use crate::support::pyclients::{PyClients, Summary};
use crate::support::{
    backend, config, mysql_check, port_of_new_session, wait_until, MariaDb, Proxy, Scratch,
};

const CHECK: &str = "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";

/// A loop of new connections, one query each, until stopped: how many
/// connections dbsplice refused (its own 1040), how many were lost otherwise
/// (a server killed while the client logged in: no proxy can save those),
/// and which servers answered.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<Vec<u16>>,
}

/// What a loop saw.
struct Seen {
    refused: u64,
    lost: u64,
    served: Vec<u16>,
}

impl ClientLoop {
    fn start(addr: std::net::SocketAddr) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, refused, lost) = (stop.clone(), refused.clone(), lost.clone());
            tokio::spawn(async move {
                let mut served = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match crate::support::connect(addr).await {
                        Ok(mut conn) => {
                            if let Ok(Some(port)) =
                                mysql_async::prelude::Queryable::query_first::<u16, _>(
                                    &mut conn,
                                    "SELECT @@port",
                                )
                                .await
                            {
                                served.push(port);
                            }
                            let _ = conn.disconnect().await;
                        }
                        Err(mysql_async::Error::Server(e)) if e.message.contains("dbsplice") => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            lost.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                served
            })
        };
        ClientLoop {
            stop,
            refused,
            lost,
            handle,
        }
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        let served = self.handle.await.unwrap();
        Seen {
            refused: self.refused.load(Ordering::SeqCst),
            lost: self.lost.load(Ordering::SeqCst),
            served,
        }
    }
}

/// dbsplice with a writer pool (MySQL check every 100 ms, `settings` added)
/// over every server of `cluster`, once its writer listener reaches the
/// first primary.
async fn writer_pool(cluster: &Cluster, settings: &str) -> Proxy {
    let servers: Vec<String> = cluster
        .servers
        .iter()
        .map(|s| backend(s.addr(), 1, "primary"))
        .collect();
    let proxy = Proxy::start(&config(
        &format!(
            "role = \"writer\"\n{settings}\n{}",
            mysql_check(
                crate::support::mariadb::CHECK_USER,
                crate::support::mariadb::CHECK_PASSWORD,
                ""
            )
        ),
        &servers,
    ));
    let (addr, primary) = (proxy.addr("rw"), cluster.servers[0].port);
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(primary)).then_some(())
    })
    .await
    .expect("the writer listener reaches the primary");
    proxy
}

/// Kills the primary, promotes the first replica two seconds later, and
/// returns what the client loop saw and the new primary's port.
async fn kill_and_promote(hold_timeout: &str) -> (Seen, u16) {
    let mut cluster = Cluster::start(2).await;
    let proxy = writer_pool(&cluster, &format!("hold_timeout = \"{hold_timeout}\"")).await;
    let addr = proxy.addr("rw");
    let new = cluster.servers[1].port;
    let clients = ClientLoop::start(addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.servers[0].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.promote(1, &[2]).await;
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(new)).then_some(())
    })
    .await
    .expect("the writer listener follows the promotion");
    tokio::time::sleep(Duration::from_millis(300)).await;
    (clients.stop().await, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_and_promote_fails_no_new_connection_while_clients_are_held() {
    let (seen, new) = kill_and_promote("5s").await;
    assert_eq!(
        seen.refused, 0,
        "every new connection waited for the new primary"
    );
    assert!(
        seen.lost <= 2,
        "only logins in flight at the kill are lost: {}",
        seen.lost
    );
    assert!(seen.served.contains(&new), "{:?}", seen.served);

    // Without holding, the same drill refuses clients until the promotion.
    let (seen, _) = kill_and_promote("0s").await;
    assert!(seen.refused > 0, "hold_timeout = \"0s\" refuses at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_replaces_the_only_backend_fails_no_connection() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = Scratch::new("hold-replace");
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(&path, config(CHECK, &[backend(a.addr(), 1, "primary")])).unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(a.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let clients = ClientLoop::start(addr);
    for (from, to) in [(&a, &b), (&b, &a), (&a, &b)] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&path, config(CHECK, &[backend(to.addr(), 1, "primary")])).unwrap();
        assert!(matches!(
            proxy.reload(Trigger::File).await,
            ReloadOutcome::Applied { .. }
        ));
        wait_until(Duration::from_secs(10), || async {
            (port_of_new_session(addr).await == Some(to.port)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{} never replaced {}", to.port, from.port));
    }
    let seen = clients.stop().await;
    assert_eq!(
        (seen.refused, seen.lost),
        (0, 0),
        "the new backend's first probe is waited for, not refused"
    );
    assert!(seen.served.contains(&a.port) && seen.served.contains(&b.port));
}

/// A raw client: connects and reads what dbsplice sends until it closes,
/// returning the bytes and how long that took.
async fn raw_client(addr: std::net::SocketAddr) -> (Vec<u8>, Duration) {
    let started = tokio::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes)).await;
    (bytes, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_is_bounded_by_hold_max_hold_timeout_and_shutdown() {
    let mut db = MariaDb::start().await;
    let settings = format!("hold_timeout = \"2s\"\nhold_max = 2\n{CHECK}");
    let mut proxy = Proxy::start(&config(&settings, &[backend(db.addr(), 1, "primary")]));
    proxy.wait_health(db.addr(), Health::Up).await;
    db.kill();
    proxy.wait_health(db.addr(), Health::Down).await;
    let addr = proxy.addr("rw");

    // Two held, the third refused at once naming hold_max.
    let first = tokio::spawn(raw_client(addr));
    let second = tokio::spawn(raw_client(addr));
    let waiting = waiting_of(&proxy);
    wait_until(Duration::from_secs(5), || async {
        (waiting.held() == 2).then_some(())
    })
    .await
    .expect("two clients held");
    let (third, took) = raw_client(addr).await;
    let third = String::from_utf8_lossy(&third);
    assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
    assert!(third.contains("already wait"), "{third}");
    for held in [first, second] {
        let (bytes, took) = held.await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(
            text.contains("no backend of pool 'main'") && text.contains("waited 2."),
            "{text}"
        );
    }
    assert_eq!((waiting.held(), waiting.timeouts()), (0, 2));
    let scrape = dbsplice::admin::metrics::render(proxy.app.as_ref().unwrap().shared());
    let name = dbsplice::metrics::POOL_HOLD_SECONDS.0;
    for line in [
        format!("{name}_count{{pool=\"main\"}} 2"),
        format!("{name}_bucket{{pool=\"main\",le=\"1\"}} 0"),
        format!("{name}_bucket{{pool=\"main\",le=\"2.5\"}} 2"),
        format!(
            "{}{{pool=\"main\"}} 2",
            dbsplice::metrics::POOL_HOLD_TIMEOUTS.0
        ),
    ] {
        assert!(scrape.contains(&line), "{line} missing:\n{scrape}");
    }

    // A held client is refused as soon as shutdown begins.
    let held = tokio::spawn(raw_client(addr));
    wait_until(Duration::from_secs(5), || async {
        (waiting.held() == 1).then_some(())
    })
    .await
    .expect("a client held");
    let app = proxy.app.take().unwrap();
    let stopping = tokio::spawn(app.shutdown(Duration::from_secs(5)));
    let (bytes, took) = held.await.unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(String::from_utf8_lossy(&bytes).contains("shutting down"));
    assert_eq!(stopping.await.unwrap(), 0, "no session was left to close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_client_is_released_by_a_reload_that_adds_a_backend() {
    let (mut dead, alive) = tokio::join!(MariaDb::start(), MariaDb::start());
    dead.kill();
    let dir = Scratch::new("hold-reload");
    let path = dir.0.join("dbsplice.toml");
    let settings = format!("hold_timeout = \"10s\"\n{CHECK}");
    std::fs::write(
        &path,
        config(&settings, &[backend(dead.addr(), 1, "primary")]),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(dead.addr(), Health::Down).await;
    let addr = proxy.addr("rw");
    let held = tokio::spawn(port_of_new_session(addr));
    let waiting = waiting_of(&proxy);
    wait_until(Duration::from_secs(5), || async {
        (waiting.held() == 1).then_some(())
    })
    .await
    .expect("the client is held");
    std::fs::write(
        &path,
        config(
            &settings,
            &[
                backend(dead.addr(), 1, "primary"),
                backend(alive.addr(), 1, "primary"),
            ],
        ),
    )
    .unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    let port = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released within a probe of the reload")
        .unwrap();
    assert_eq!(
        port,
        Some(alive.port),
        "the held client reaches the new backend"
    );
    assert_eq!(waiting.served(), 1);
}

/// A client that connects through `addr`, says `index` once connected, and
/// ends its session when told to.
fn queued_client(
    addr: std::net::SocketAddr,
    index: usize,
    connected: tokio::sync::mpsc::UnboundedSender<usize>,
) -> tokio::sync::oneshot::Sender<()> {
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let conn = crate::support::connect(addr).await;
        let conn = conn.unwrap_or_else(|e| panic!("client {index} refused: {e}"));
        connected.send(index).unwrap();
        let _ = closed.await;
        conn.disconnect().await.unwrap();
    });
    close
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_a_backend_s_max_connections_are_served_in_arrival_order_as_sessions_end() {
    const QUEUED: usize = 20;
    let db = MariaDb::start().await;
    let capped = backend(db.addr(), 1, "primary") + "max_connections = 1\n";
    let proxy = Proxy::start(&config(
        &format!("hold_timeout = \"30s\"\nhold_max = {QUEUED}\n{CHECK}"),
        &[capped],
    ));
    proxy.wait_health(db.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let first = crate::support::connect(addr).await.unwrap();
    let waiting = waiting_of(&proxy);
    // Each client arrives once the one before it is held.
    let (connected, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut closers = Vec::new();
    for index in 0..QUEUED {
        closers.push(Some(queued_client(addr, index, connected.clone())));
        wait_until(Duration::from_secs(5), || async {
            (waiting.held() == index + 1).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("client {index} waits instead of being refused"));
    }
    let (past, took) = raw_client(addr).await;
    assert!(took < Duration::from_secs(1), "refused at once: {took:?}");
    assert!(String::from_utf8_lossy(&past).contains("already wait"));

    // One session ends at a time; each frees the slot for the next in line.
    first.disconnect().await.unwrap();
    let mut served = Vec::new();
    for _ in 0..QUEUED {
        let index = tokio::time::timeout(Duration::from_secs(5), order.recv())
            .await
            .expect("the next in line is served once a session ends")
            .unwrap();
        served.push(index);
        let _ = closers[index].take().unwrap().send(());
    }
    assert_eq!(
        served,
        (0..QUEUED).collect::<Vec<_>>(),
        "served in arrival order"
    );
    assert_eq!((waiting.held(), waiting.served()), (0, QUEUED as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_promote_resume_fails_no_new_connection() {
    use mysql_async::prelude::Queryable;
    let cluster = Cluster::start(2).await;
    let proxy = writer_pool(&cluster, "").await;
    let addr = proxy.addr("rw");
    let (old, new) = (cluster.servers[0].port, cluster.servers[1].port);
    let app = proxy.app.as_ref().unwrap();
    let waiting = waiting_of(&proxy);
    let clients = ClientLoop::start(addr);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A planned switchover: pause, demote, promote, resume.
    assert_eq!(
        app.inbox()
            .pause("main", Duration::from_secs(30), "the test".into())
            .await,
        Ok(true)
    );
    wait_until(Duration::from_secs(5), || async {
        (waiting.held() > 0).then_some(())
    })
    .await
    .expect("new clients are held while paused");
    let mut admin = cluster.servers[0].admin().await;
    admin.query_drop("SET GLOBAL read_only = 1").await.unwrap();
    admin.disconnect().await.unwrap();
    cluster.promote(1, &[2]).await;
    let promoted = proxy.backend(cluster.servers[1].addr());
    wait_until(Duration::from_secs(10), || async {
        (promoted.role() == dbsplice::vocabulary::Role::Writable).then_some(())
    })
    .await
    .expect("the checker sees the promotion");
    let held = app.inbox().resume("main", "the test".into()).await.unwrap();
    assert!(held.is_some_and(|n| n > 0), "{held:?}");
    wait_until(Duration::from_secs(10), || async {
        (port_of_new_session(addr).await == Some(new)).then_some(())
    })
    .await
    .expect("the writer listener follows the promotion");
    let seen = clients.stop().await;
    assert_eq!(
        (seen.refused, seen.lost),
        (0, 0),
        "every new connection waited out the switchover"
    );
    assert!(
        seen.served.contains(&old) && seen.served.contains(&new),
        "{:?}",
        seen.served
    );
    assert_eq!(waiting.held(), 0, "no held client left behind");
    assert!(waiting.served() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_only_backend_holds_clients_until_a_slot_frees_and_is_never_down() {
    let db = MariaDb::start_with(&["--max-connections=10".to_owned()]).await;
    let check = mysql_check(
        crate::support::mariadb::CHECK_USER,
        crate::support::mariadb::CHECK_PASSWORD,
        "",
    );
    let proxy = Proxy::start(&config(
        &format!("hold_timeout = \"10s\"\n{check}"),
        &[backend(db.addr(), 1, "primary")],
    ));
    proxy.wait_health(db.addr(), Health::Up).await;
    let state = proxy.backend(db.addr());
    let down_seen = Arc::new(AtomicBool::new(false));
    let watch = {
        let (state, down_seen) = (Arc::clone(&state), down_seen.clone());
        tokio::spawn(async move {
            loop {
                if state.health() == Health::Down {
                    down_seen.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut hogs = db.fill().await;
    wait_until(Duration::from_secs(5), || async {
        state.is_full().then_some(())
    })
    .await
    .expect("the probe sees the server full");
    let client = tokio::spawn(port_of_new_session(proxy.addr("rw")));
    let waiting = waiting_of(&proxy);
    wait_until(Duration::from_secs(5), || async {
        (waiting.held() == 1).then_some(())
    })
    .await
    .expect("the client waits for room");
    let freed = tokio::time::Instant::now();
    hogs.pop().unwrap().disconnect().await.unwrap();
    let port = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("served once the server has room")
        .unwrap();
    assert_eq!(port, Some(db.port));
    assert!(
        freed.elapsed() < Duration::from_secs(2),
        "within a probe interval or two: {:?}",
        freed.elapsed()
    );
    watch.abort();
    assert!(
        !down_seen.load(Ordering::SeqCst),
        "a full server is never down"
    );
    for hog in hogs {
        hog.disconnect().await.unwrap();
    }
}

/// The `dbsplice pause` / `dbsplice resume` commands of one recipe in
/// docs/failover.md, in order, as argument lists: the lines of the section
/// under `heading` that run dbsplice (quoted in JSON or not).
fn recipe(heading: &str) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/failover.md"),
    )
    .unwrap();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/failover.md has no section {heading:?}"));
    section
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches('"');
            let command = l.split('"').next()?;
            command.starts_with("dbsplice ").then(|| {
                command
                    .split_whitespace()
                    .skip(1)
                    .map(str::to_owned)
                    .collect()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_recipes_in_docs_fail_no_connection() {
    use mysql_async::prelude::Queryable;
    let cluster = Cluster::start(2).await;
    let dir = Scratch::new("failover-doc");
    std::fs::write(dir.0.join("admin.token"), "tok-failover").unwrap();
    let path = dir.0.join("dbsplice.toml");
    let backends: String = cluster
        .servers
        .iter()
        .map(|s| format!("[[pool.writer.backend]]\naddress = \"{}\"\n", s.addr()))
        .collect();
    std::fs::write(
        &path,
        format!(
            "shutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\
             [[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"writer\"\n\
             [pool.writer]\nrole = \"writer\"\n[pool.writer.check]\nkind = \"mysql\"\nuser = \"{}\"\n\
             password = \"{}\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n{backends}",
            crate::support::mariadb::CHECK_USER,
            crate::support::mariadb::CHECK_PASSWORD,
        ),
    )
    .unwrap();
    let running = crate::support::binary::Running::start(&path, None);
    let admin = running.admin_addr().await;
    let addr = running.addr;
    let ports: Vec<u16> = cluster.servers.iter().map(|s| s.port).collect();
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(ports[0])).then_some(())
    })
    .await
    .expect("the writer listener reaches the primary");
    let run = |args: &[String]| {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a == "/etc/dbsplice/dbsplice.toml" {
                    path.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        let out = std::process::Command::new(crate::support::binary::BIN)
            .args(&args)
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dbsplice {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let clients = ClientLoop::start(addr);
    // The recipe by hand moves the primary from 0 to 1, orchestrator's from
    // 1 to 2.
    for (heading, old, new, others) in [
        ("A switchover by hand", 0, 1, vec![2]),
        ("orchestrator", 1, 2, vec![]),
    ] {
        let steps = recipe(heading);
        assert_eq!(steps.len(), 2, "{heading}: {steps:?}");
        assert_eq!(
            (steps[0][0].as_str(), steps[1][0].as_str()),
            ("pause", "resume")
        );
        run(&steps[0]);
        let mut demote = cluster.servers[old].admin().await;
        demote.query_drop("SET GLOBAL read_only = 1").await.unwrap();
        demote.disconnect().await.unwrap();
        cluster.promote(new, &others).await;
        // Resumed once the new primary is writable, as the page says.
        let mut promoted = cluster.servers[new].admin().await;
        let read_only: Option<u8> = promoted.query_first("SELECT @@read_only").await.unwrap();
        assert_eq!(read_only, Some(0));
        promoted.disconnect().await.unwrap();
        run(&steps[1]);
        wait_until(Duration::from_secs(10), || async {
            (port_of_new_session(addr).await == Some(ports[new])).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{heading}: the writer listener did not follow"));
    }
    let seen = clients.stop().await;
    assert_eq!(
        (seen.refused, seen.lost),
        (0, 0),
        "no new connection failed through either recipe"
    );
    // Which primaries a loop of short connections happens to catch between
    // two quick switchovers is timing; where it ends is not.
    assert_eq!(
        seen.served.last(),
        Some(&ports[2]),
        "the loop ends on the last primary: {:?}",
        seen.served
    );
    let timeline = crate::support::binary::http(admin, "GET", "/api/status", None)
        .await
        .1;
    assert!(
        timeline.contains("writer: paused for 30s by admin API")
            && timeline.contains("writer: resumed by"),
        "{timeline}"
    );
    running.stop().await;
}

/// The pool's hold histogram as a scrape shows it.
fn hold_histogram(proxy: &Proxy) -> String {
    let scrape = dbsplice::admin::metrics::render(proxy.app.as_ref().unwrap().shared());
    scrape
        .lines()
        .filter(|l| l.starts_with(dbsplice::metrics::POOL_HOLD_SECONDS.0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pool's held clients.
fn waiting_of(proxy: &Proxy) -> Arc<dbsplice::cluster::waiting::Waiting> {
    let snapshot = proxy.app.as_ref().unwrap().snapshot();
    Arc::clone(&snapshot.pool("main").unwrap().waiting)
}

/// Asserts that no new connection of `seen`'s clients, fresh or pooled, was
/// refused or failed.
fn assert_no_failed_connection(seen: &Summary) {
    for key in ["refused", "failed", "pooled_refused", "pooled_failed"] {
        assert_eq!(seen.count(key), 0, "{key}: {}", seen.describe());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_see_no_failed_connection_across_a_kill_and_promote() {
    use mysql_async::prelude::Queryable;
    const FRESH: usize = 6;
    const POOLED: usize = 4;
    let mut cluster = Cluster::start(2).await;
    let proxy = writer_pool(&cluster, "hold_timeout = \"5s\"").await;
    let (addr, new) = (proxy.addr("rw"), cluster.servers[1].port);
    let waiting = waiting_of(&proxy);
    let mut clients = PyClients::start(addr, FRESH, POOLED).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = tokio::time::Instant::now();
    cluster.servers[0].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.promote(1, &[2]).await;
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(new)).then_some(())
    })
    .await
    .expect("the writer listener follows the promotion");
    let to_writer = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = clients.stop().await;
    let mut primary = cluster.servers[1].admin().await;
    let rows: Vec<(u64, u64)> = primary
        .query("SELECT worker, seq FROM pydrill.acks")
        .await
        .unwrap();
    primary.disconnect().await.unwrap();
    let lost_acks = seen.acked().iter().filter(|a| !rows.contains(a)).count();
    eprintln!(
        "kill and promote with PyMySQL and SQLAlchemy's pool: new writer {to_writer:?} after the kill; {}\n\
         acknowledged inserts missing on the new primary (asynchronous replication): {lost_acks} of {}\n{}",
        seen.describe(),
        seen.acked().len(),
        hold_histogram(&proxy)
    );
    assert_no_failed_connection(&seen);
    assert!(
        seen.count("lost") + seen.count("pooled_lost") <= (FRESH + POOLED) as u64,
        "only logins in flight at the kill are lost: {}",
        seen.describe()
    );
    assert!(seen.json["ports"][new.to_string()].as_u64().unwrap_or(0) > 0);
    assert_eq!(waiting.held(), 0, "no held client left behind");
    assert!(waiting.served() > 0, "clients were held and then served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_see_no_failed_connection_across_pause_promote_resume() {
    use mysql_async::prelude::Queryable;
    const FRESH: usize = 6;
    const HOLD_MAX: usize = 30;
    let cluster = Cluster::start(2).await;
    let proxy = writer_pool(
        &cluster,
        &format!("hold_timeout = \"20s\"\nhold_max = {HOLD_MAX}"),
    )
    .await;
    let (addr, new) = (proxy.addr("rw"), cluster.servers[1].port);
    let app = proxy.app.as_ref().unwrap();
    let waiting = waiting_of(&proxy);
    let mut clients = PyClients::start(addr, FRESH, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pause = || {
        app.inbox()
            .pause("main", Duration::from_secs(30), "the drill".into())
    };
    assert_eq!(pause().await, Ok(true));
    // Every fresh client is held: none is in a transaction on the old
    // primary when it turns read-only. The pooled ones keep their sessions.
    wait_until(Duration::from_secs(5), || async {
        (waiting.held() == FRESH).then_some(())
    })
    .await
    .expect("new clients are held while paused");
    let mut old = cluster.servers[0].admin().await;
    old.query_drop("SET GLOBAL read_only = 1").await.unwrap();
    old.disconnect().await.unwrap();
    cluster.promote(1, &[2]).await;
    // Resumed at once, as a failover tool's hook does: the resume has every
    // backend probed again before it lets the held clients go.
    let held = app
        .inbox()
        .resume("main", "the drill".into())
        .await
        .unwrap();
    assert_eq!(
        port_of_new_session(addr).await,
        Some(new),
        "the first session after the resume reaches the new primary"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = clients.stop().await;
    eprintln!(
        "pause, promote, resume with PyMySQL and SQLAlchemy's pool: {held:?} held at the resume; {}\n{}",
        seen.describe(),
        hold_histogram(&proxy)
    );
    assert_no_failed_connection(&seen);
    assert_eq!(
        seen.count("lost") + seen.count("query_error"),
        0,
        "{}",
        seen.describe()
    );
    assert_eq!(waiting.held(), 0, "no held client left behind");

    // Past hold_max, refusals are immediate; the held are served on resume.
    assert_eq!(pause().await, Ok(true));
    clients.burst(HOLD_MAX + 10);
    wait_until(Duration::from_secs(10), || async {
        (waiting.held() == HOLD_MAX).then_some(())
    })
    .await
    .expect("hold_max clients held");
    app.inbox()
        .resume("main", "the drill".into())
        .await
        .unwrap();
    let (served, refused, failed) = clients.burst_outcome().await;
    eprintln!(
        "burst of {}: served {served:?}\nrefused {refused:?}",
        HOLD_MAX + 10
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!((served.len(), refused.len()), (HOLD_MAX, 10));
    assert!(
        refused.iter().all(|&s| s < 1.0),
        "refused at once: {refused:?}"
    );
    assert_eq!(waiting.held(), 0, "no held client left behind");
}
