//! Writer and reader pools in front of a real replication cluster: one
//! writer only, through a kill-and-promote failover; sessions on a demoted
//! writer closed; readers spread over fresh replicas with fallback; the
//! greeting gate skipping a full server.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dbsplice::vocabulary::Health;
use mysql_async::prelude::Queryable;

use crate::support::cluster::Cluster;
use crate::support::mariadb::{CHECK_PASSWORD, CHECK_USER};
use crate::support::{
    backend, client_opts, closed_within, connect, port_of_new_session, server_port, wait_until,
    MariaDb, Proxy,
};

const CHECK: &str =
    "[pool.main.check]\nkind = \"mysql\"\nuser = \"check\"\npassword = \"checkpw\"\n\
                     interval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";

fn pool(settings: &str, servers: &[&MariaDb]) -> Proxy {
    let backends: Vec<String> = servers
        .iter()
        .map(|s| backend(s.addr(), 1, "primary"))
        .collect();
    Proxy::start(&crate::support::config(
        &format!("{settings}\n{CHECK}"),
        &backends,
    ))
}

/// An application account without SUPER, so read_only really refuses its writes.
async fn create_app_user(primary: &MariaDb) {
    let mut admin = primary.admin().await;
    for sql in [
        "CREATE DATABASE IF NOT EXISTS app",
        "CREATE TABLE IF NOT EXISTS app.writes (id INT AUTO_INCREMENT PRIMARY KEY, port INT)",
        "CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'apppw'",
        "GRANT SELECT, INSERT ON app.* TO 'app'@'%'",
    ] {
        admin.query_drop(sql).await.unwrap();
    }
    admin.disconnect().await.unwrap();
}

fn app_opts(addr: std::net::SocketAddr) -> mysql_async::Opts {
    mysql_async::OptsBuilder::from_opts(client_opts(addr))
        .user(Some("app"))
        .pass(Some("apppw"))
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_follows_a_kill_and_promote_and_never_lands_on_a_replica() {
    let mut cluster = Cluster::start(2).await;
    create_app_user(&cluster.servers[0]).await;
    let servers: Vec<&MariaDb> = cluster.servers.iter().collect();
    let proxy = pool("role = \"writer\"", &servers);
    let addr = proxy.addr("rw");
    let (old, new) = (cluster.servers[0].port, cluster.servers[1].port);
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(old)).then_some(())
    })
    .await
    .expect("the writer listener reaches the primary");

    // A client loop of short connections, each checking read_only and writing.
    let stop = Arc::new(AtomicBool::new(false));
    let on_read_only = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let errors_since = Arc::new(std::sync::Mutex::new(Vec::<tokio::time::Instant>::new()));
    let client = {
        let (stop, on_read_only, writes, errors) = (
            stop.clone(),
            on_read_only.clone(),
            writes.clone(),
            errors_since.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let attempt = async {
                    let mut conn = mysql_async::Conn::new(app_opts(addr)).await?;
                    let read_only: Option<u8> = conn.query_first("SELECT @@read_only").await?;
                    if read_only == Some(1) {
                        on_read_only.fetch_add(1, Ordering::SeqCst);
                    }
                    conn.query_drop("INSERT INTO app.writes (port) VALUES (@@port)")
                        .await?;
                    conn.disconnect().await?;
                    Ok::<_, mysql_async::Error>(())
                };
                match attempt.await {
                    Ok(()) => {
                        writes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => errors.lock().unwrap().push(tokio::time::Instant::now()),
                }
            }
        })
    };
    wait_until(Duration::from_secs(10), || async {
        (writes.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await
    .unwrap();

    cluster.servers[0].kill();
    cluster.promote(1, &[2]).await;
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(new)).then_some(())
    })
    .await
    .expect("new writer connections reach the promoted replica");
    let recovered = tokio::time::Instant::now();
    let writes_at_recovery = writes.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(10), || async {
        (writes.load(Ordering::SeqCst) >= writes_at_recovery + 20).then_some(())
    })
    .await
    .expect("writes continue on the new primary");
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();

    assert_eq!(
        on_read_only.load(Ordering::SeqCst),
        0,
        "no writer connection ever landed on a read-only server"
    );
    let late_errors = errors_since
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > recovered)
        .count();
    assert_eq!(late_errors, 0, "errors only inside the detection window");
    assert_eq!(
        proxy.backend(cluster.servers[0].addr()).health(),
        Health::Down
    );
    let scrape = dbsplice::admin::metrics::render(proxy.app.as_ref().unwrap().shared());
    assert!(
        scrape.contains(&format!(
            "{}{{pool=\"main\"}} 1",
            dbsplice::metrics::POOL_WRITER_CHANGES.0
        )),
        "one writer change: {scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_writer_loses_its_sessions_and_two_writers_are_handled() {
    let cluster = Cluster::start(1).await;
    let (primary, replica) = (&cluster.servers[0], &cluster.servers[1]);
    let sticky = pool("role = \"writer\"", &[primary, replica]);
    let refuse = pool(
        "role = \"writer\"\non_multiple_writers = \"refuse\"",
        &[primary, replica],
    );
    let addr = sticky.addr("rw");
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(primary.port)).then_some(())
    })
    .await
    .unwrap();
    let mut long_lived = connect(addr).await.unwrap();
    assert_eq!(server_port(&mut long_lived).await, primary.port);

    // Both writable: the sticky pool keeps its writer, the refusing one stops.
    let mut on_replica = replica.admin().await;
    on_replica
        .query_drop("SET GLOBAL read_only = 0")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        port_of_new_session(refuse.addr("rw"))
            .await
            .is_none()
            .then_some(())
    })
    .await
    .expect("refuse mode sends writes nowhere while two servers are writable");
    for _ in 0..5 {
        assert_eq!(
            port_of_new_session(addr).await,
            Some(primary.port),
            "sticky: the current writer stays"
        );
    }
    on_replica
        .query_drop("SET GLOBAL read_only = 1")
        .await
        .unwrap();
    let replica_state = sticky.backend(replica.addr());
    wait_until(Duration::from_secs(10), || async {
        (replica_state.role() == dbsplice::vocabulary::Role::ReadOnly).then_some(())
    })
    .await
    .expect("the replica is read-only again");

    // Demote the primary: its long-lived session is closed (on_down = close
    // is a writer pool's default) and no writer remains.
    let mut on_primary = primary.admin().await;
    on_primary
        .query_drop("SET GLOBAL read_only = 1")
        .await
        .unwrap();
    // The next statement on the old session finds it closed within the
    // detection time (one probe interval, plus the probe itself).
    assert!(
        closed_within(&mut long_lived, Duration::from_secs(5)).await,
        "the session on the demoted writer was closed"
    );
    assert_eq!(
        port_of_new_session(addr).await,
        None,
        "no writable server: no writer"
    );
    on_primary
        .query_drop("SET GLOBAL read_only = 0")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        (port_of_new_session(addr).await == Some(primary.port)).then_some(())
    })
    .await
    .expect("writable again: the writer returns");
    on_primary.disconnect().await.unwrap();
    on_replica.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_spread_over_fresh_replicas_and_fall_back_to_the_writer() {
    let cluster = Cluster::start(2).await;
    let servers: Vec<&MariaDb> = cluster.servers.iter().collect();
    let proxy = pool(
        "role = \"reader\"\nmax_lag = \"10s\"\nreadmit_lag = \"5s\"\nfallback = \"writer\"",
        &servers,
    );
    let addr = proxy.addr("rw");
    let replicas: HashSet<u16> = [cluster.servers[1].port, cluster.servers[2].port].into();
    let seen = wait_until(Duration::from_secs(20), || async {
        let mut seen = HashSet::new();
        for _ in 0..10 {
            seen.insert(port_of_new_session(addr).await?);
        }
        (seen == replicas).then_some(seen)
    })
    .await;
    assert_eq!(
        seen,
        Some(replicas),
        "reads spread over both replicas and never reach the primary"
    );

    // A replica whose SQL thread stopped has unknown lag: out.
    let mut r1 = cluster.servers[1].admin().await;
    r1.query_drop("STOP SLAVE SQL_THREAD").await.unwrap();
    let only_r2 = wait_until(Duration::from_secs(10), || async {
        let mut ports = HashSet::new();
        for _ in 0..6 {
            ports.insert(port_of_new_session(addr).await?);
        }
        (ports.len() == 1).then_some(ports)
    })
    .await;
    assert_eq!(only_r2, Some([cluster.servers[2].port].into()));

    // No replica left: reads fall back to the writer.
    let mut r2 = cluster.servers[2].admin().await;
    r2.query_drop("STOP SLAVE SQL_THREAD").await.unwrap();
    let primary = cluster.servers[0].port;
    wait_until(Duration::from_secs(10), || async {
        (port_of_new_session(addr).await == Some(primary)).then_some(())
    })
    .await
    .expect("fallback to the writer");
    for admin in [&mut r1, &mut r2] {
        admin.query_drop("START SLAVE SQL_THREAD").await.unwrap();
    }
    wait_until(Duration::from_secs(10), || async {
        port_of_new_session(addr)
            .await
            .filter(|p| *p != primary)
            .map(|_| ())
    })
    .await
    .expect("replicas take reads back");
    r1.disconnect().await.unwrap();
    r2.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_gate_skips_a_full_server_invisibly() {
    let full_args = ["--max-connections=10".to_owned()];
    let (full, spare) = tokio::join!(MariaDb::start_with(&full_args), MariaDb::start());
    // Checks far apart: only the gate can notice the full server.
    let settings =
        "balance = \"weighted-round-robin\"\ngreeting_gate = true\ngreeting_timeout = \"1s\"";
    let backends = [
        backend(full.addr(), 1, "primary"),
        backend(spare.addr(), 1, "primary"),
    ];
    let check = CHECK.replace("interval = \"100ms\"", "interval = \"1h\"");
    let proxy = Proxy::start(&crate::support::config(
        &format!("{settings}\n{check}"),
        &backends,
    ));
    proxy.wait_health(full.addr(), Health::Up).await;
    proxy.wait_health(spare.addr(), Health::Up).await;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(full.port)
        .user(Some(CHECK_USER))
        .pass(Some(CHECK_PASSWORD))
        .prefer_socket(false);
    // Ordinary clients fill max_connections; one privileged client takes the
    // slot kept for administrators. Then the server greets newcomers with 1040.
    let mut hogs = Vec::new();
    while let Ok(conn) = mysql_async::Conn::new(opts.clone()).await {
        hogs.push(conn);
        assert!(hogs.len() < 20);
    }
    // The last refused attempt holds the spare slot until the server has
    // torn it down: the administrator may have to ask twice.
    let admin = wait_until(Duration::from_secs(5), || async {
        mysql_async::Conn::new(client_opts(full.addr())).await.ok()
    })
    .await
    .expect("the administrator's reserved slot");
    hogs.push(admin);
    let addr = proxy.addr("rw");
    for _ in 0..10 {
        let port = port_of_new_session(addr)
            .await
            .expect("no client sees the full server's 1040");
        assert_eq!(port, spare.port);
    }
    for hog in hogs {
        hog.disconnect().await.unwrap();
    }
}

/// A primary and a standby, checked over MySQL every 100 ms.
fn tiered(settings: &str, primary: &MariaDb, standby: &MariaDb) -> Proxy {
    let backends = [
        backend(primary.addr(), 1, "primary"),
        backend(standby.addr(), 1, "standby"),
    ];
    Proxy::start(&crate::support::config(
        &format!("{settings}\n{CHECK}"),
        &backends,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_primary_waits_for_the_failback_period() {
    let (mut primary, standby) = tokio::join!(MariaDb::start(), MariaDb::start());
    let proxy = tiered("failback = \"2s\"", &primary, &standby);
    let addr = proxy.addr("rw");
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(primary.port)).then_some(())
    })
    .await
    .unwrap();
    primary.kill();
    proxy.wait_health(primary.addr(), Health::Down).await;
    assert_eq!(port_of_new_session(addr).await, Some(standby.port));
    primary.restart().await;
    proxy.wait_health(primary.addr(), Health::Up).await;
    let up_at = tokio::time::Instant::now();
    assert_eq!(
        port_of_new_session(addr).await,
        Some(standby.port),
        "healthy again, but not stable long enough"
    );
    wait_until(Duration::from_secs(10), || async {
        (port_of_new_session(addr).await == Some(primary.port)).then_some(())
    })
    .await
    .expect("the primary takes traffic back after the period");
    assert!(
        up_at.elapsed() >= Duration::from_millis(1800),
        "not before the period: {:?}",
        up_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failback_waits_for_the_operator() {
    let (mut primary, standby) = tokio::join!(MariaDb::start(), MariaDb::start());
    let proxy = tiered("failback = \"manual\"", &primary, &standby);
    let addr = proxy.addr("rw");
    wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(addr).await == Some(primary.port)).then_some(())
    })
    .await
    .expect("the first start needs no approval");
    primary.kill();
    proxy.wait_health(primary.addr(), Health::Down).await;
    primary.restart().await;
    proxy.wait_health(primary.addr(), Health::Up).await;
    // Several probe intervals later it is still held.
    let backend_state = proxy.backend(primary.addr());
    let sessions = backend_state.total();
    wait_until(Duration::from_secs(5), || async {
        port_of_new_session(addr)
            .await
            .filter(|p| *p == standby.port)
    })
    .await
    .unwrap();
    assert_eq!(
        backend_state.total(),
        sessions,
        "no session reached the held primary"
    );
    assert_eq!(
        proxy.app.as_ref().unwrap().failback("main").await,
        Ok(Some(1))
    );
    wait_until(Duration::from_secs(5), || async {
        (port_of_new_session(addr).await == Some(primary.port)).then_some(())
    })
    .await
    .expect("after the fail-back call the primary serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_is_held_down() {
    let (flappy, steady) = tokio::join!(MariaDb::start(), MariaDb::start());
    let settings =
        "flap_threshold = 4\nflap_window = \"60s\"\nflap_hold = \"2s\"\nflap_hold_max = \"10s\"";
    let backends = [
        backend(flappy.addr(), 1, "primary"),
        backend(steady.addr(), 1, "primary"),
    ];
    let check = CHECK.replace("timeout = \"500ms\"", "timeout = \"200ms\"");
    let proxy = Proxy::start(&crate::support::config(
        &format!("{settings}\n{check}"),
        &backends,
    ));
    proxy.wait_health(flappy.addr(), Health::Up).await;
    proxy.wait_health(steady.addr(), Health::Up).await;
    // Down, up, down, up: the fourth transition holds it down.
    for _ in 0..2 {
        flappy.pause();
        proxy.wait_health(flappy.addr(), Health::Down).await;
        flappy.resume();
        proxy.wait_health(flappy.addr(), Health::Up).await;
    }
    let state = proxy.backend(flappy.addr());
    let before = state.total();
    for _ in 0..10 {
        assert_eq!(
            port_of_new_session(proxy.addr("rw")).await,
            Some(steady.port),
            "held down although up"
        );
    }
    assert_eq!(state.total(), before);
    wait_until(Duration::from_secs(10), || async {
        (port_of_new_session(proxy.addr("rw")).await == Some(flappy.port)).then_some(())
    })
    .await
    .expect("back after the hold-down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_config_choose_the_same_writer() {
    // Both servers writable (the ambiguous case), listed with the standby
    // tier first: the choice is by tier, then config order, never by timing.
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let backends = [
        backend(a.addr(), 1, "standby"),
        backend(b.addr(), 1, "primary"),
    ];
    let toml = crate::support::config(&format!("role = \"writer\"\n{CHECK}"), &backends);
    let (one, two) = (Proxy::start(&toml), Proxy::start(&toml));
    for proxy in [&one, &two] {
        wait_until(Duration::from_secs(20), || async {
            (port_of_new_session(proxy.addr("rw")).await == Some(b.port)).then_some(())
        })
        .await
        .expect("the primary-tier server is the writer on both instances");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_leaves_and_returns_with_hysteresis() {
    let cluster = Cluster::start(2).await;
    let (primary, slow, fresh) = (
        &cluster.servers[0],
        &cluster.servers[1],
        &cluster.servers[2],
    );
    let mut on_slow = slow.admin().await;
    for sql in [
        "STOP SLAVE",
        "CHANGE MASTER TO MASTER_DELAY = 4",
        "START SLAVE",
    ] {
        on_slow.query_drop(sql).await.unwrap();
    }
    let servers: Vec<&MariaDb> = cluster.servers.iter().collect();
    let proxy = pool(
        "role = \"reader\"\nmax_lag = \"2s\"\nreadmit_lag = \"1s\"",
        &servers,
    );
    let slow_member = proxy.backend(slow.addr());
    proxy.wait_health(slow.addr(), Health::Up).await;
    // Writes on the primary reach the delayed replica 4 s late: its lag
    // climbs past max_lag and it leaves; once caught up it returns.
    let mut on_primary = primary.admin().await;
    on_primary
        .query_drop("CREATE DATABASE IF NOT EXISTS lagtest")
        .await
        .unwrap();
    let lag_of = |s: &Option<dbsplice::vocabulary::Lag>| match s {
        Some(dbsplice::vocabulary::Lag::Seconds(s)) => Some(*s),
        _ => None,
    };
    let writer = tokio::spawn(async move {
        for _ in 0..30 {
            on_primary
                .query_drop("CREATE TABLE IF NOT EXISTS lagtest.t (x INT)")
                .await
                .unwrap();
            on_primary
                .query_drop("INSERT INTO lagtest.t VALUES (1)")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        on_primary.disconnect().await.unwrap();
    });
    wait_until(Duration::from_secs(20), || async {
        (lag_of(&slow_member.lag()).unwrap_or(0) > 2).then_some(())
    })
    .await
    .expect("the delayed replica lags past max_lag");
    wait_until(Duration::from_secs(5), || async {
        let mut ports = HashSet::new();
        for _ in 0..6 {
            ports.insert(port_of_new_session(proxy.addr("rw")).await?);
        }
        (ports == HashSet::from([fresh.port])).then_some(())
    })
    .await
    .expect("only the fresh replica takes reads");
    writer.await.unwrap();
    wait_until(Duration::from_secs(30), || async {
        (port_of_new_session(proxy.addr("rw")).await == Some(slow.port)).then_some(())
    })
    .await
    .expect("caught up (lag at or below readmit_lag): back in rotation");
    assert!(
        lag_of(&slow_member.lag()).is_some_and(|s| s <= 1),
        "readmitted at or below readmit_lag"
    );
    on_slow.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_sessions_close_when_a_primary_returns() {
    let (mut primary, standby) = tokio::join!(MariaDb::start(), MariaDb::start());
    let proxy = tiered("on_primary_return = \"close\"", &primary, &standby);
    let addr = proxy.addr("rw");
    proxy.wait_health(primary.addr(), Health::Up).await;
    proxy.wait_health(standby.addr(), Health::Up).await;
    primary.kill();
    proxy.wait_health(primary.addr(), Health::Down).await;
    let mut on_standby = connect(addr).await.unwrap();
    assert_eq!(server_port(&mut on_standby).await, standby.port);
    primary.restart().await;
    proxy.wait_health(primary.addr(), Health::Up).await;
    assert!(
        closed_within(&mut on_standby, Duration::from_secs(5)).await,
        "the standby session was closed once the primary returned"
    );
    assert_eq!(port_of_new_session(addr).await, Some(primary.port));
}
