//! Failovers that must not happen, on a real MariaDB GTID cluster with
//! `failover = "auto"`: no reachable replica may be promoted, the candidate
//! cannot apply what it received within `catch_up_timeout`, or the lock is
//! not held on a majority of the servers. In each case no server is made
//! writable, `why` of the dead primary says which, and once the cause is
//! gone the next attempt promotes.

use std::time::Duration;

use dbsplice::inbox::{ReloadOutcome, Trigger};
use mysql_async::prelude::Queryable;

use crate::support::cluster::Cluster;
use crate::support::{port_of_new_session, wait_until, Proxy, Scratch};
use crate::switchover::{cluster, config_text, reaches_primary, writable};

const HOLD: &str = "hold_timeout = \"30s\"";

/// The pool's `failover_blocked`, once it contains `words`.
async fn blocked_with(proxy: &Proxy, words: &str) -> String {
    let shared = proxy.app.as_ref().unwrap().shared();
    wait_until(Duration::from_secs(40), || async {
        let status = dbsplice::admin::status::status(shared);
        let why = status["pools"][0]["replication"]["failover_blocked"].as_str()?;
        why.contains(words).then(|| why.to_owned())
    })
    .await
    .unwrap_or_else(|| {
        let status = dbsplice::admin::status::status(shared);
        panic!(
            "no failover blocked with \"{words}\": {}",
            status["pools"][0]["replication"]
        )
    })
}

/// What `why` says of the dead primary db1.
fn why_db1(proxy: &Proxy) -> String {
    dbsplice::admin::status::why(proxy.app.as_ref().unwrap().shared(), "db1")
        .unwrap()
        .to_string()
}

/// Asserts that none of the servers at `which` takes writes.
async fn none_writable(cluster: &Cluster, which: &[usize]) {
    for &i in which {
        let mut c = cluster.servers[i].admin().await;
        assert!(!writable(&mut c).await, "db{} was promoted", i + 1);
        c.disconnect().await.unwrap();
    }
}

/// The blocked-failover counter for `reason`, from a scrape.
fn blocked_count(proxy: &Proxy, reason: &str) -> u64 {
    let scrape = dbsplice::admin::metrics::render(proxy.app.as_ref().unwrap().shared());
    let head = format!(
        "{}{{pool=\"main\",reason=\"{reason}\"}} ",
        dbsplice::metrics::POOL_FAILOVER_BLOCKED.0
    );
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {head} in the scrape"))
}

/// Runs `sql` on each server at `which`.
async fn on_each(cluster: &Cluster, which: &[usize], sql: &str) {
    for &i in which {
        let mut c = cluster.servers[i].admin().await;
        c.query_drop(sql).await.unwrap();
        c.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_without_a_reachable_candidate_and_why_says_so() {
    let mut cluster = cluster().await;
    let toml = config_text(
        &cluster,
        HOLD,
        "failover = \"auto\"\nfailover_after = \"1s\"",
        &["", "candidate = false"],
    );
    let proxy = reaches_primary(&cluster, Proxy::start(&toml)).await;
    cluster.servers[2].kill();
    cluster.servers[0].kill();
    let blocked = blocked_with(&proxy, "no replica can be promoted").await;
    eprintln!("blocked: {blocked}");
    assert!(blocked.contains("db2: candidate = false"), "{blocked}");
    assert!(blocked.contains("db3: unreachable"), "{blocked}");
    let why = why_db1(&proxy);
    assert!(
        why.contains("no failover: no replica can be promoted"),
        "{why}"
    );
    none_writable(&cluster, &[1]).await;
    assert!(blocked_count(&proxy, "no_candidate") >= 1);
    assert_eq!(blocked_count(&proxy, "attempt_failed"), 0, "never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_cannot_apply_what_it_received_in_time_is_not_promoted() {
    let mut cluster = cluster().await;
    let toml = config_text(
        &cluster,
        HOLD,
        "failover = \"auto\"\nfailover_after = \"1s\"\ncatch_up_timeout = \"1s\"",
        &[],
    );
    let proxy = reaches_primary(&cluster, Proxy::start(&toml)).await;
    // The replicas receive but do not apply: far behind, as far as a
    // failover can tell.
    on_each(&cluster, &[1, 2], "STOP SLAVE SQL_THREAD").await;
    let mut primary = cluster.servers[0].admin().await;
    for id in 1..=5 {
        primary
            .query_drop(format!("INSERT INTO drill.acks VALUES ({id})"))
            .await
            .unwrap();
    }
    let pos: String = primary
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .unwrap()
        .unwrap();
    primary.disconnect().await.unwrap();
    for replica in &cluster.servers[1..] {
        wait_until(Duration::from_secs(10), || async {
            let mut c = replica.admin().await;
            let row: mysql_async::Row = c.query_first("SHOW SLAVE STATUS").await.ok()??;
            c.disconnect().await.unwrap();
            let received: String = row.get("Gtid_IO_Pos")?;
            (received == pos).then_some(())
        })
        .await
        .expect("every replica received the five rows");
    }
    cluster.servers[0].kill();
    let blocked = blocked_with(&proxy, "did not apply").await;
    eprintln!("blocked: {blocked}");
    assert!(blocked.contains(&pos), "{blocked}");
    assert!(blocked.contains("within 1s"), "{blocked}");
    assert!(
        why_db1(&proxy).contains("no failover:"),
        "{}",
        why_db1(&proxy)
    );
    assert!(blocked_count(&proxy, "attempt_failed") >= 1);
    none_writable(&cluster, &[1, 2]).await;

    // Applying again, the candidate catches up and the next attempt
    // promotes it with every row.
    on_each(&cluster, &[1, 2], "START SLAVE SQL_THREAD").await;
    let ports = [cluster.servers[1].port, cluster.servers[2].port];
    let addr = proxy.addr("rw");
    let port = wait_until(Duration::from_secs(40), || async {
        let port = port_of_new_session(addr).await?;
        ports.contains(&port).then_some(port)
    })
    .await
    .expect("promoted once it can catch up");
    let new = if port == ports[0] { 1 } else { 2 };
    let mut c = cluster.servers[new].admin().await;
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM drill.acks WHERE id BETWEEN 1 AND 5")
        .await
        .unwrap();
    assert_eq!(n, Some(5), "the new primary applied all it had received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_of_every_server_blocks_the_last_replica_standing_and_of_the_running_does_not() {
    let mut cluster = cluster().await;
    let dir = Scratch::new("no-failover-lock");
    let path = dir.0.join("dbsplice.toml");
    let auto = "failover = \"auto\"\nfailover_after = \"1s\"";
    std::fs::write(&path, config_text(&cluster, HOLD, auto, &[])).unwrap();
    let proxy = reaches_primary(&cluster, Proxy::start_file(&path)).await;
    cluster.servers[2].kill();
    cluster.servers[0].kill();
    // One server of three answers: no majority of all of them.
    let blocked = blocked_with(&proxy, "granted by 1 of 3 servers").await;
    eprintln!("blocked: {blocked}");
    assert!(blocked.contains("lock = \"majority_of_all\""), "{blocked}");
    none_writable(&cluster, &[1]).await;

    // Of the servers running, one is a majority.
    let running = format!("{auto}\nlock = \"majority_of_running\"");
    std::fs::write(&path, config_text(&cluster, HOLD, &running, &[])).unwrap();
    assert!(matches!(
        proxy.reload(Trigger::File).await,
        ReloadOutcome::Applied { .. }
    ));
    let addr = proxy.addr("rw");
    let db2 = cluster.servers[1].port;
    wait_until(Duration::from_secs(40), || async {
        (port_of_new_session(addr).await == Some(db2)).then_some(())
    })
    .await
    .expect("db2 promoted with the lock of the one server running");
}
