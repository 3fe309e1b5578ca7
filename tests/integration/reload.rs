//! Live reload: every way an operator or a platform changes the file, applied
//! in one swap with health and sessions kept; broken files rejected while the
//! running config serves on.

use std::collections::HashMap;
use std::time::Duration;

use dbsplice::inbox::{ReloadOutcome, Trigger};
use dbsplice::vocabulary::Health;
use mysql_async::prelude::Queryable;

use crate::support::binary::{http, Running};
use crate::support::{
    backend, closed_within, config, connect, port_of_new_session, server_port, session_on,
    wait_until, MariaDb, Proxy, Scratch,
};

const CHECK: &str = "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";

async fn split(addr: std::net::SocketAddr, n: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(
                port_of_new_session(addr)
                    .await
                    .expect("no failed connection"),
            )
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_backends_and_policies_change_live_and_health_is_kept() {
    let (a, b, c) = tokio::join!(MariaDb::start(), MariaDb::start(), MariaDb::start());
    let dir = Scratch::new("reload");
    let path = dir.0.join("dbsplice.toml");
    let wrr = format!("balance = \"weighted-round-robin\"\non_remove = \"close\"\n{CHECK}");
    std::fs::write(
        &path,
        config(
            &wrr,
            &[
                backend(a.addr(), 1, "primary"),
                backend(b.addr(), 1, "primary"),
            ],
        ),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    assert!(
        matches!(proxy.reload(Trigger::File).await, ReloadOutcome::Unchanged),
        "same bytes: nothing"
    );

    // Weight 3:1 shows in the picks at once.
    std::fs::write(
        &path,
        config(
            &wrr,
            &[
                backend(a.addr(), 3, "primary"),
                backend(b.addr(), 1, "primary"),
            ],
        ),
    )
    .unwrap();
    let ReloadOutcome::Applied { generation, diff } = proxy.reload(Trigger::File).await else {
        panic!("applied")
    };
    assert_eq!(generation, 2);
    assert_eq!(diff.backends_changed.len(), 1, "{diff}");
    let counts = split(addr, 40).await;
    assert_eq!((counts[&a.port], counts[&b.port]), (30, 10), "{counts:?}");

    // A backend known down stays down across an unrelated edit.
    let mut b_handle = b;
    let mut on_b = connect(addr).await.unwrap();
    while server_port(&mut on_b).await != b_handle.port {
        on_b = connect(addr).await.unwrap();
    }
    let on_b_port = b_handle.port;
    drop(on_b);
    b_handle.kill();
    proxy.wait_health(b_handle.addr(), Health::Down).await;
    std::fs::write(
        &path,
        config(
            &wrr.replace("interval = \"100ms\"", "interval = \"1h\""),
            &[
                backend(a.addr(), 3, "primary"),
                backend(b_handle.addr(), 1, "primary"),
            ],
        ),
    )
    .unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    assert_eq!(
        proxy.backend(b_handle.addr()).health(),
        Health::Down,
        "health survives the reload"
    );
    for _ in 0..10 {
        assert_ne!(port_of_new_session(addr).await, Some(on_b_port));
    }

    // Add c, remove b; a session on a removed backend is closed (on_remove).
    b_handle.restart().await;
    let with_c = config(
        &wrr,
        &[
            backend(a.addr(), 1, "primary"),
            backend(b_handle.addr(), 1, "primary"),
            backend(c.addr(), 1, "primary"),
        ],
    );
    std::fs::write(&path, &with_c).unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    proxy.wait_health(c.addr(), Health::Up).await;
    proxy.wait_health(b_handle.addr(), Health::Up).await;
    let mut on_c = None;
    for _ in 0..6 {
        let mut conn = connect(addr).await.unwrap();
        if server_port(&mut conn).await == c.port {
            on_c = Some(conn);
            break;
        }
    }
    let mut on_c = on_c.expect("the added backend takes sessions");
    std::fs::write(
        &path,
        config(
            &wrr,
            &[
                backend(a.addr(), 1, "primary"),
                backend(b_handle.addr(), 1, "primary"),
            ],
        ),
    )
    .unwrap();
    let ReloadOutcome::Applied { diff, .. } = proxy.reload(Trigger::File).await else {
        panic!("applied")
    };
    assert_eq!(diff.backends_removed.len(), 1, "{diff}");
    assert!(
        on_c.query_drop("DO 1").await.is_err(),
        "on_remove = close closed the session"
    );
    for _ in 0..6 {
        assert_ne!(
            port_of_new_session(addr).await,
            Some(c.port),
            "a removed backend takes no new session"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_keep_the_running_config() {
    let a = MariaDb::start().await;
    let dir = Scratch::new("reload-broken");
    let path = dir.0.join("dbsplice.toml");
    let good = config(CHECK, &[backend(a.addr(), 1, "primary")]);
    std::fs::write(&path, &good).unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(a.addr(), Health::Up).await;
    let broken = [
        String::new(),
        good.replace("weight = 1", "weight = 0"),
        good[..good.len() / 2].to_owned(),
        good.replace("pool = \"main\"", "pool = \"missing\""),
        "not toml at all [".to_owned(),
    ];
    for text in broken {
        std::fs::write(&path, &text).unwrap();
        let ReloadOutcome::Rejected(why) = proxy.reload(Trigger::File).await else {
            panic!("{text:?} was applied")
        };
        assert!(
            why.to_string().contains("dbsplice.toml"),
            "the error names the file: {why}"
        );
        assert_eq!(
            port_of_new_session(proxy.addr("rw")).await,
            Some(a.port),
            "the old config still serves"
        );
        assert_eq!(proxy.app.as_ref().unwrap().snapshot().generation, 1);
    }
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(
            proxy.reload(Trigger::File).await,
            ReloadOutcome::Rejected(_)
        ),
        "a missing file"
    );
    std::fs::write(&path, &good).unwrap();
    assert!(
        matches!(proxy.reload(Trigger::File).await, ReloadOutcome::Unchanged),
        "back to what runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_live() {
    let a = MariaDb::start().await;
    let dir = Scratch::new("reload-listeners");
    let path = dir.0.join("dbsplice.toml");
    let one = config(CHECK, &[backend(a.addr(), 1, "primary")]);
    std::fs::write(&path, &one).unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(a.addr(), Health::Up).await;
    let two = one.replace("\n[pool.main]", "\n[[listener]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\n[pool.main]");
    std::fs::write(&path, &two).unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    let second = proxy.addr("second");
    let mut kept = connect(second).await.unwrap();
    assert_eq!(
        server_port(&mut kept).await,
        a.port,
        "a new listener serves"
    );
    std::fs::write(&path, &one).unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    wait_until(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(second)
            .await
            .is_err()
            .then_some(())
    })
    .await
    .expect("a removed listener stops accepting");
    assert_eq!(
        server_port(&mut kept).await,
        a.port,
        "while its sessions continue"
    );
    kept.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_under_load_fail_no_connection() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = Scratch::new("reload-load");
    let path = dir.0.join("dbsplice.toml");
    let versions: Vec<String> = (1..=2)
        .map(|w| {
            config(
                CHECK,
                &[
                    backend(a.addr(), w, "primary"),
                    backend(b.addr(), 3 - w, "primary"),
                ],
            )
        })
        .collect();
    std::fs::write(&path, &versions[0]).unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match port_of_new_session(addr).await {
                    Some(_) => ok += 1,
                    None => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    for i in 0..200 {
        std::fs::write(&path, &versions[(i + 1) % 2]).unwrap();
        assert!(matches!(
            proxy.reload(Trigger::File).await,
            ReloadOutcome::Applied { .. }
        ));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = client.await.unwrap();
    assert_eq!(failed, 0, "{ok} connections succeeded");
    assert!(ok > 20, "the client loop ran during the reloads: {ok}");
    let app = proxy.app.as_ref().unwrap();
    assert_eq!(app.snapshot().generation, 201);
    assert_eq!(
        app.shared()
            .reload_stats
            .applied
            .load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    assert!(
        app.shared()
            .reload_stats
            .last_applied_unix
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_is_drained_by_its_deadline() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = Scratch::new("reload-drain");
    let path = dir.0.join("dbsplice.toml");
    let settings = format!("balance = \"weighted-round-robin\"\non_remove = \"drain:1s\"\n{CHECK}");
    std::fs::write(
        &path,
        config(
            &settings,
            &[
                backend(a.addr(), 1, "primary"),
                backend(b.addr(), 1, "primary"),
            ],
        ),
    )
    .unwrap();
    let proxy = Proxy::start_file(&path);
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let mut on_b = session_on(proxy.addr("rw"), b.port).await;
    std::fs::write(&path, config(&settings, &[backend(a.addr(), 1, "primary")])).unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    let removed_at = tokio::time::Instant::now();
    assert_eq!(
        server_port(&mut on_b).await,
        b.port,
        "draining: the session still works"
    );
    assert!(
        closed_within(&mut on_b, Duration::from_secs(5)).await,
        "closed by the drain deadline"
    );
    assert!(
        removed_at.elapsed() >= Duration::from_millis(900),
        "not before the deadline: {:?}",
        removed_at.elapsed()
    );
}

/// A reload whose host name the resolver never answers: the probes and the
/// control loop carry on meanwhile (the resolution runs on a thread of its
/// own), and after its deadline the reload is rejected, naming the cause,
/// while the running config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_never_answers_stalls_nothing() {
    // A name server that reads queries and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.2:53").expect("bind 127.0.0.2:53 (needs root)");
    let db = MariaDb::start().await;
    let dir = Scratch::new("silent-dns");
    let resolv = dir.0.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.2\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let path = dir.0.join("dbsplice.toml");
    let check = "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    let body = |backends: &[String]| {
        config(check, backends).replacen(
            "[[listener]]",
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]",
            1,
        )
    };
    std::fs::write(&path, body(&[backend(db.addr(), 1, "primary")])).unwrap();
    let running = Running::start_with_resolv_conf(&path, &resolv);
    let admin = running.admin_addr().await;
    let probes = || async {
        let (_, scrape) = http(admin, "GET", "/metrics", None).await;
        scrape
            .lines()
            .find(|l| {
                l.starts_with(&format!("{}{{", dbsplice::metrics::BACKEND_PROBES.0))
                    && l.contains("outcome=\"pass\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    wait_until(Duration::from_secs(10), || async {
        probes().await.filter(|n| *n >= 1.0)
    })
    .await
    .expect("probes run");

    let with_name = format!(
        "{}[[pool.main.backend]]\naddress = \"unanswered.dbsplice.test:3306\"\n",
        body(&[backend(db.addr(), 1, "primary")])
    );
    std::fs::write(&path, with_name).unwrap();
    let from = running.logs().len();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut query = [0u8; 512];
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        silent.recv(&mut query).is_ok(),
        "the reload asked the name server"
    );
    let asked = tokio::time::Instant::now();
    let before = probes().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = probes().await.unwrap();
    assert!(
        during >= before + 10.0,
        "probes stalled while the name was resolved: {before} -> {during}"
    );
    running
        .wait_log(from, &["reload rejected", "took longer than 10s"])
        .await;
    assert!(asked.elapsed() < Duration::from_secs(20));
    assert_eq!(port_of_new_session(running.addr).await, Some(db.port));
    // Stopping waits for no name server either.
    let stopping = tokio::time::Instant::now();
    running.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the stop waited {:?} for the resolver",
        stopping.elapsed()
    );
    drop(silent);
}
