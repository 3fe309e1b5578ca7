//! Automatic failover (`failover = "auto"`) on a real MariaDB GTID cluster:
//! `kill -9` of the primary under a loop of new connections that each write
//! a row, with semi-synchronous replication (every acknowledged insert must
//! be on the new primary) and without (the lost ones are counted); the old
//! primary fenced and rejoined when it comes back, or left for a person when
//! it has a transaction the new primary lacks; and no promotion while a
//! replica still sees the primary.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::cluster::Cluster;
use crate::support::{port_of_new_session, wait_until, Proxy};
use crate::switchover::{arrives, cluster, proxy_with, writable, Sampler, Writers};

const AUTO: &str = "failover = \"auto\"\nfailover_after = \"2s\"";
const HOLD: &str = "hold_timeout = \"30s\"";

/// Semi-synchronous replication, acknowledged after the replica has the
/// transaction (AFTER_SYNC), never falling back to asynchronous.
async fn semi_sync(cluster: &Cluster) {
    for server in &cluster.servers {
        let mut c = server.admin().await;
        for sql in [
            "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'",
            "SET GLOBAL rpl_semi_sync_master_timeout = 600000",
            "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
        ] {
            c.query_drop(sql).await.unwrap();
        }
        c.disconnect().await.unwrap();
    }
    semi_sync_primary(cluster, 0).await;
    for replica in &cluster.servers[1..] {
        let mut c = replica.admin().await;
        for sql in ["STOP SLAVE IO_THREAD", "START SLAVE IO_THREAD"] {
            c.query_drop(sql).await.unwrap();
        }
        c.disconnect().await.unwrap();
    }
    wait_until(Duration::from_secs(10), || async {
        let mut primary = cluster.servers[0].admin().await;
        let row: Option<(String, String)> = primary
            .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'")
            .await
            .unwrap();
        primary.disconnect().await.unwrap();
        row.is_some_and(|(_, n)| n == "2").then_some(())
    })
    .await
    .expect("both replicas acknowledge semi-synchronously");
}

/// Semi-synchronous waits on the primary `i` alone: a replica that waited
/// too (it logs what it applies) would stall its SQL thread for acks no
/// replica of its own sends.
async fn semi_sync_primary(cluster: &Cluster, i: usize) {
    for (j, server) in cluster.servers.iter().enumerate() {
        let mut c = server.admin().await;
        let on = if i == j { "ON" } else { "OFF" };
        c.query_drop(format!("SET GLOBAL rpl_semi_sync_master_enabled = {on}"))
            .await
            .unwrap();
        c.disconnect().await.unwrap();
    }
}

/// Kills the primary under the writing loop and waits for dbsplice to
/// promote a replica; returns the new primary's index, the time from the
/// kill to the first session on it, and what the loop saw.
async fn kill_and_wait(
    cluster: &mut Cluster,
    proxy: &Proxy,
    write: bool,
) -> (usize, Duration, (u64, Vec<u64>, u64)) {
    let addr = proxy.addr("rw");
    let writers = write.then(|| Writers::start(addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = tokio::time::Instant::now();
    cluster.servers[0].kill();
    let ports: Vec<u16> = cluster.servers.iter().map(|s| s.port).collect();
    let new = wait_until(Duration::from_secs(30), || async {
        let port = port_of_new_session(addr).await?;
        ports.iter().position(|&p| p == port).filter(|&i| i != 0)
    })
    .await
    .expect("a replica is promoted and the writer listener follows");
    let took = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = match writers {
        Some(w) => w.stop().await,
        None => (0, Vec::new(), 0),
    };
    (new, took, seen)
}

/// The acknowledged ids missing on server `i`.
async fn missing(cluster: &Cluster, i: usize, acked: &[u64]) -> usize {
    let mut c = cluster.servers[i].admin().await;
    let rows: Vec<u64> = c.query("SELECT id FROM drill.acks").await.unwrap();
    c.disconnect().await.unwrap();
    acked.iter().filter(|id| !rows.contains(id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_semi_sync_a_killed_primary_is_replaced_losing_no_acknowledged_write_then_fenced_and_rejoined(
) {
    let mut cluster = cluster().await;
    semi_sync(&cluster).await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let app = proxy.app.as_ref().unwrap();
    let sampler = Sampler::start_some(&cluster, &[1, 2]).await;
    let (new, took, (failed, acked, refused)) = kill_and_wait(&mut cluster, &proxy, true).await;
    let lost = missing(&cluster, new, &acked).await;
    eprintln!(
        "kill -9 to a session on the new primary db{}: {took:?}; {} writes acknowledged, {lost} lost, \
         {refused} refused, {failed} new connections failed",
        new + 1,
        acked.len()
    );
    assert_eq!(lost, 0, "semi-synchronous: no acknowledged write lost");
    assert!(
        failed <= 1,
        "only a login in flight at the kill fails: {failed}"
    );
    let (most, _) = sampler.stop().await;
    assert_eq!(most, 1, "never two writable servers among the survivors");
    let status = dbsplice::admin::status::status(app.shared());
    let replication = &status["pools"][0]["replication"];
    assert_eq!(replication["failovers"], 1, "{replication}");
    assert_eq!(replication["last_promotion"]["kind"], "failover");

    // The old primary comes back writable (its own config says so): it is
    // made read-only at once and rejoined as a replica of the new one.
    cluster.servers[0].restart().await;
    let back = tokio::time::Instant::now();
    wait_until(Duration::from_secs(20), || async {
        let mut old = cluster.servers[0].admin().await;
        let read_only: Option<u8> = old.query_first("SELECT @@read_only").await.ok()?;
        (read_only == Some(1)).then_some(())
    })
    .await
    .expect("fenced");
    eprintln!(
        "the old primary, started writable, was made read-only {:?} after it answered",
        back.elapsed()
    );
    let fenced_and_following = wait_until(Duration::from_secs(20), || async {
        let mut old = cluster.servers[0].admin().await;
        let read_only: Option<u8> = old.query_first("SELECT @@read_only").await.ok()?;
        let status: Option<mysql_async::Row> = old.query_first("SHOW SLAVE STATUS").await.ok()?;
        (read_only == Some(1) && status.is_some()).then_some(())
    })
    .await;
    let mut old = cluster.servers[0].admin().await;
    assert!(
        fenced_and_following.is_some(),
        "the old primary is fenced and rejoined"
    );
    let mut primary = cluster.servers[new].admin().await;
    primary
        .query_drop("INSERT INTO drill.acks VALUES (2000000)")
        .await
        .unwrap();
    assert!(
        arrives(&cluster.servers[0], 2_000_000).await,
        "it replicates from the new primary"
    );
    assert!(!writable(&mut old).await);
    assert_eq!(
        port_of_new_session(proxy.addr("rw")).await,
        Some(cluster.servers[new].port)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_primary_with_a_transaction_of_its_own_is_left_for_repair() {
    let mut cluster = cluster().await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let app = proxy.app.as_ref().unwrap();
    // The replicas stop fetching; a write lands on the primary alone.
    for replica in &cluster.servers[1..] {
        let mut c = replica.admin().await;
        c.query_drop("STOP SLAVE IO_THREAD").await.unwrap();
        c.disconnect().await.unwrap();
    }
    let mut primary = cluster.servers[0].admin().await;
    primary
        .query_drop("INSERT INTO drill.acks VALUES (42)")
        .await
        .unwrap();
    primary.disconnect().await.unwrap();
    // No client writes meanwhile: the one transaction is the test's.
    let (new, took, _) = kill_and_wait(&mut cluster, &proxy, false).await;
    eprintln!("promoted db{} after {took:?}", new + 1);
    cluster.servers[0].restart().await;
    wait_until(Duration::from_secs(20), || async {
        let mut old = cluster.servers[0].admin().await;
        let read_only: Option<u8> = old.query_first("SELECT @@read_only").await.ok()?;
        (read_only == Some(1)).then_some(())
    })
    .await
    .expect("fenced at once");
    let mut old = cluster.servers[0].admin().await;
    let reported = wait_until(Duration::from_secs(20), || async {
        let status = dbsplice::admin::status::status(app.shared());
        let repair = status["pools"][0]["replication"]["manual_repair"]["db1"].as_u64()?;
        Some(repair)
    })
    .await;
    assert_eq!(reported, Some(1), "one transaction the new primary lacks");
    let status: Option<mysql_async::Row> = old.query_first("SHOW SLAVE STATUS").await.unwrap();
    assert!(status.is_none(), "not rejoined");
    assert!(!writable(&mut old).await, "and never writable");
    let why = dbsplice::admin::status::why(app.shared(), "db1").unwrap();
    assert!(why.to_string().contains("manual repair"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_semi_sync_the_lost_acknowledged_writes_are_counted() {
    let mut cluster = cluster().await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let (new, took, (failed, acked, _)) = kill_and_wait(&mut cluster, &proxy, true).await;
    let lost = missing(&cluster, new, &acked).await;
    eprintln!(
        "asynchronous replication: new primary db{} after {took:?}; {lost} of {} acknowledged writes lost, \
         {failed} new connections failed",
        new + 1,
        acked.len()
    );
    assert!(failed <= 1, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_dbsplice_alone_is_not_replaced() {
    let netns = crate::support::netns::Netns::create();
    let cluster = crate::switchover::prepare(Cluster::start_with_primary_in(&netns, 2).await).await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let app = proxy.app.as_ref().unwrap();
    // New connections into the primary's namespace are dropped; the
    // replicas' open replication connections go on.
    netns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "3306",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-j",
        "DROP",
    ]);
    let blocked = wait_until(Duration::from_secs(30), || async {
        let status = dbsplice::admin::status::status(app.shared());
        status["pools"][0]["replication"]["failover_blocked"]
            .as_str()
            .map(str::to_owned)
    })
    .await
    .expect("the failover is considered and blocked");
    eprintln!("blocked: {blocked}");
    assert!(blocked.contains("still sees the primary"), "{blocked}");
    let status = dbsplice::admin::status::status(app.shared());
    assert_eq!(status["pools"][0]["replication"]["failovers"], 0);
    for replica in &cluster.servers[1..] {
        let mut c = replica.admin().await;
        assert!(!writable(&mut c).await, "no replica was promoted");
    }
    let why = dbsplice::admin::status::why(app.shared(), "db1")
        .unwrap()
        .to_string();
    assert!(why.contains("no failover: replica db"), "{why}");
    let scrape = dbsplice::admin::metrics::render(app.shared());
    let line = format!(
        "{}{{pool=\"main\",reason=\"replica_sees_primary\"}} 1",
        dbsplice::metrics::POOL_FAILOVER_BLOCKED.0
    );
    assert!(scrape.contains(&line), "{line} missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fail_over_once() {
    let mut cluster = cluster().await;
    let (first, second) = tokio::join!(
        proxy_with(&cluster, HOLD, AUTO),
        proxy_with(&cluster, HOLD, AUTO)
    );
    let (new, took, _) = kill_and_wait(&mut cluster, &first, false).await;
    // Both have looked since: each decides on a topology with a new primary.
    let second_follows = wait_until(Duration::from_secs(20), || async {
        (port_of_new_session(second.addr("rw")).await == Some(cluster.servers[new].port))
            .then_some(())
    })
    .await;
    assert!(second_follows.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failovers = |p: &Proxy| {
        let status = dbsplice::admin::status::status(p.app.as_ref().unwrap().shared());
        status["pools"][0]["replication"]["failovers"]
            .as_u64()
            .unwrap()
    };
    eprintln!("promoted db{} after {took:?}", new + 1);
    assert_eq!(
        failovers(&first) + failovers(&second),
        1,
        "exactly one promotion"
    );
    let writable_count = {
        let mut n = 0;
        for s in &cluster.servers[1..] {
            let mut c = s.admin().await;
            n += usize::from(writable(&mut c).await);
        }
        n
    };
    assert_eq!(writable_count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_put_in_place_by_a_switchover_is_replaced_when_it_dies() {
    let mut cluster = cluster().await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let app = proxy.app.as_ref().unwrap();
    let report = app
        .inbox()
        .switchover("main", Some("db2".into()), "the test".into())
        .await
        .unwrap();
    assert!(report.ok, "{}", report.summary);
    let mut db2 = cluster.servers[1].admin().await;
    db2.query_drop("INSERT INTO drill.acks VALUES (5)")
        .await
        .unwrap();
    db2.disconnect().await.unwrap();
    assert!(arrives(&cluster.servers[0], 5).await && arrives(&cluster.servers[2], 5).await);
    // Killed while a client writes through dbsplice.
    let writers = Writers::start(proxy.addr("rw"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.servers[1].kill();
    let addr = proxy.addr("rw");
    let (db1, db3) = (cluster.servers[0].port, cluster.servers[2].port);
    let promoted = wait_until(Duration::from_secs(30), || async {
        let port = port_of_new_session(addr).await?;
        (port == db1 || port == db3).then_some(port)
    })
    .await;
    if promoted.is_none() {
        for i in [0, 2] {
            let mut c = cluster.servers[i].admin().await;
            let row: Option<mysql_async::Row> = c.query_first("SHOW SLAVE STATUS").await.unwrap();
            let pos: Option<(String, String, String)> = c
                .query_first("SELECT @@gtid_slave_pos, @@gtid_current_pos, @@gtid_binlog_state")
                .await
                .unwrap();
            eprintln!("db{}: {pos:?} {row:?}", i + 1);
        }
        let status = dbsplice::admin::status::status(app.shared());
        eprintln!("{}", status["pools"][0]["replication"]);
    }
    let (failed, _, _) = writers.stop().await;
    assert!(
        promoted.is_some(),
        "a replica of the switched-over primary is promoted"
    );
    assert!(failed <= 1, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_see_no_failed_connection_across_a_switchover_then_a_failover() {
    use crate::support::pyclients::PyClients;
    const FRESH: usize = 6;
    const POOLED: usize = 4;
    let mut cluster = cluster().await;
    semi_sync(&cluster).await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let (addr, app) = (proxy.addr("rw"), proxy.app.as_ref().unwrap());
    let mut clients = PyClients::start(addr, FRESH, POOLED).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = app
        .inbox()
        .switchover("main", Some("db2".into()), "the drill".into())
        .await
        .unwrap();
    assert!(report.ok, "{}", report.summary);
    // dbsplice moved the semi-synchronous waits to the new primary.
    for (i, on) in [(0, 0u8), (1, 1), (2, 0)] {
        let mut c = cluster.servers[i].admin().await;
        let v: Option<u8> = c
            .query_first("SELECT @@rpl_semi_sync_master_enabled")
            .await
            .unwrap();
        assert_eq!(v, Some(on), "db{}", i + 1);
        c.disconnect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = tokio::time::Instant::now();
    cluster.servers[1].kill();
    let ports = [cluster.servers[0].port, cluster.servers[2].port];
    let new = wait_until(Duration::from_secs(30), || async {
        let port = port_of_new_session(addr).await?;
        ports
            .iter()
            .position(|&p| p == port)
            .map(|i| if i == 0 { 0 } else { 2 })
    })
    .await
    .expect("a replica of the switched-over primary is promoted");
    let took = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = clients.stop().await;
    let mut primary = cluster.servers[new].admin().await;
    let rows: Vec<(u64, u64)> = primary
        .query("SELECT worker, seq FROM pydrill.acks")
        .await
        .unwrap();
    primary.disconnect().await.unwrap();
    let lost = seen.acked().iter().filter(|a| !rows.contains(a)).count();
    eprintln!(
        "switchover then kill -9 with PyMySQL and SQLAlchemy's pool, semi-synchronous: new primary db{} \
         {took:?} after the kill; {lost} of {} acknowledged inserts lost; {}",
        new + 1,
        seen.acked().len(),
        seen.describe()
    );
    assert_eq!(lost, 0, "no acknowledged insert lost");
    for key in ["refused", "failed", "pooled_refused", "pooled_failed"] {
        assert_eq!(seen.count(key), 0, "{key}: {}", seen.describe());
    }
    assert!(
        seen.count("lost") + seen.count("pooled_lost") <= (FRESH + POOLED) as u64,
        "only logins in flight at the kill are lost: {}",
        seen.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_without_the_lock_and_why_says_so() {
    let mut cluster = cluster().await;
    let proxy = proxy_with(&cluster, HOLD, AUTO).await;
    let app = proxy.app.as_ref().unwrap();
    // Another instance holds the pool's lock on both replicas.
    let mut holders = Vec::new();
    for replica in &cluster.servers[1..] {
        let mut c = replica.admin().await;
        let got: Option<u8> = c
            .query_first("SELECT GET_LOCK('dbsplice:main', 0)")
            .await
            .unwrap();
        assert_eq!(got, Some(1));
        holders.push(c);
    }
    cluster.servers[0].kill();
    let blocked = wait_until(Duration::from_secs(30), || async {
        let status = dbsplice::admin::status::status(app.shared());
        let why = status["pools"][0]["replication"]["failover_blocked"].as_str()?;
        why.contains("another dbsplice instance")
            .then(|| why.to_owned())
    })
    .await
    .expect("the failover is tried and blocked by the lock");
    eprintln!("blocked: {blocked}");
    let why = dbsplice::admin::status::why(app.shared(), "db1")
        .unwrap()
        .to_string();
    assert!(why.contains("no failover: the lock dbsplice:main"), "{why}");
    for replica in &cluster.servers[1..] {
        let mut c = replica.admin().await;
        assert!(!writable(&mut c).await, "no promotion without the lock");
    }
    // The other instance is gone: the next attempt promotes.
    for c in holders {
        c.disconnect().await.unwrap();
    }
    let ports = [cluster.servers[1].port, cluster.servers[2].port];
    let addr = proxy.addr("rw");
    wait_until(Duration::from_secs(30), || async {
        let port = port_of_new_session(addr).await?;
        ports.contains(&port).then_some(())
    })
    .await
    .expect("promoted once the lock is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_while_the_primary_is_dead_fails_over() {
    let mut cluster = cluster().await;
    cluster.servers[0].kill();
    // Never having seen a writer, it knows the primary by whom the
    // replicas follow.
    let toml = crate::switchover::config_text(&cluster, HOLD, AUTO, &[]);
    let proxy = Proxy::start(&toml);
    let started = tokio::time::Instant::now();
    let ports = [cluster.servers[1].port, cluster.servers[2].port];
    let addr = proxy.addr("rw");
    wait_until(Duration::from_secs(30), || async {
        let port = port_of_new_session(addr).await?;
        ports.contains(&port).then_some(())
    })
    .await
    .expect("a replica is promoted");
    eprintln!("promoted {:?} after the start", started.elapsed());
    let status = dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
    assert_eq!(status["pools"][0]["replication"]["failovers"], 1);
}
