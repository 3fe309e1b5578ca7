//! Dead servers cost clients nothing: connect retries and standby tiers.

use std::collections::HashMap;

use dbsplice::vocabulary::Health;

use crate::support::{backend, config, connect, server_port, MariaDb, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_skipped_by_the_connect_retry() {
    let (a, mut b) = tokio::join!(MariaDb::start(), MariaDb::start());
    // A long check interval: only the data path can notice the kill, by a
    // failed connect that it retries elsewhere and reports to the checker.
    let proxy = Proxy::start(&config(
        "balance = \"weighted-round-robin\"\n[pool.main.check]\nkind = \"tcp\"\ninterval = \"1h\"\nrise = 1\nfall = 1\n",
        &[backend(a.addr(), 1, "primary"), backend(b.addr(), 1, "primary")],
    ));
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    b.kill();
    let addr = proxy.addr("rw");
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..100 {
        let mut conn = connect(addr)
            .await
            .expect("no client sees the dead backend");
        *counts.entry(server_port(&mut conn).await).or_default() += 1;
        conn.disconnect().await.unwrap();
    }
    assert_eq!(counts.get(&a.port), Some(&100), "{counts:?}");
    assert!(
        proxy.backend(b.addr()).connect_failures() >= 1,
        "the dead server was tried"
    );
    // The failed connect asked for an early probe, long before the interval.
    proxy.wait_health(b.addr(), Health::Down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_serve_only_while_every_primary_is_down() {
    let (mut p1, mut p2, s) = tokio::join!(MariaDb::start(), MariaDb::start(), MariaDb::start());
    let proxy = Proxy::start(&config(
        "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
        &[
            backend(p1.addr(), 1, "primary"),
            backend(p2.addr(), 1, "primary"),
            backend(s.addr(), 1, "standby"),
        ],
    ));
    for addr in [p1.addr(), p2.addr(), s.addr()] {
        proxy.wait_health(addr, Health::Up).await;
    }
    let addr = proxy.addr("rw");
    let port_of_new_session = || async move {
        let mut conn = connect(addr).await.unwrap();
        let port = server_port(&mut conn).await;
        conn.disconnect().await.unwrap();
        port
    };
    for _ in 0..10 {
        assert_ne!(
            port_of_new_session().await,
            s.port,
            "a standby takes nothing while primaries are up"
        );
    }

    p1.kill();
    proxy.wait_health(p1.addr(), Health::Down).await;
    for _ in 0..5 {
        assert_eq!(port_of_new_session().await, p2.port, "one primary left");
    }
    // A session opened on the standby stays there across the hand-back.
    p2.kill();
    proxy.wait_health(p2.addr(), Health::Down).await;
    let mut on_standby = connect(addr).await.unwrap();
    assert_eq!(
        server_port(&mut on_standby).await,
        s.port,
        "all primaries down: the standby serves"
    );
    let scrape = dbsplice::admin::metrics::render(proxy.app.as_ref().unwrap().shared());
    assert!(
        scrape.contains(&format!(
            "{}{{pool=\"main\"}} 1",
            dbsplice::metrics::POOL_FAILOVERS.0
        )),
        "{scrape}"
    );
    assert!(
        scrape.contains(&format!(
            "{}{{pool=\"main\"}} 1",
            dbsplice::metrics::POOL_STANDBY_ACTIVE.0
        )),
        "{scrape}"
    );

    p1.restart().await;
    proxy.wait_health(p1.addr(), Health::Up).await;
    for _ in 0..5 {
        assert_eq!(
            port_of_new_session().await,
            p1.port,
            "a returning primary takes new sessions back"
        );
    }
    assert_eq!(
        server_port(&mut on_standby).await,
        s.port,
        "the open standby session is untouched"
    );
    on_standby.disconnect().await.unwrap();
    drop(p2);
}
