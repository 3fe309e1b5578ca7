//! Members discovered from the cluster: a real three-node Galera cluster
//! listed by one seed node, under a name the cluster does not use (so the
//! seed is reached under two names and must count once); the two others
//! found from `wsrep_incoming_addresses`, a stopped node drained and
//! dropped after `forget_after`, and found again when it comes back.

use std::collections::BTreeSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::galera::Galera;
use crate::support::mariadb::{CHECK_PASSWORD, CHECK_USER};
use crate::support::{config, mysql_check, wait_until, Proxy};

/// (name, origin, health, state) of each member of the pool.
fn members(proxy: &Proxy) -> Vec<(String, String, String, String)> {
    let status = dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("origin"), s("health"), s("state"))
        })
        .collect()
}

/// Waits until the members are `want` (names), each up and in rotation.
async fn serving(proxy: &Proxy, want: &BTreeSet<String>) -> Duration {
    let started = tokio::time::Instant::now();
    let found = wait_until(Duration::from_secs(60), || async {
        let m = members(proxy);
        let names: BTreeSet<String> = m.iter().map(|x| x.0.clone()).collect();
        (&names == want && m.iter().all(|x| x.2 == "up" && x.3 == "in rotation")).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "members never {want:?}: {:?}",
        members(proxy)
    );
    started.elapsed()
}

/// The ports of the servers `n` new sessions reach.
async fn ports_reached(proxy: &Proxy, n: usize) -> BTreeSet<u16> {
    let mut open = Vec::new();
    let mut ports = BTreeSet::new();
    for _ in 0..n {
        let mut c = crate::support::connect(proxy.addr("rw")).await.unwrap();
        ports.insert(
            c.query_first::<u16, _>("SELECT @@port")
                .await
                .unwrap()
                .unwrap(),
        );
        open.push(c);
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_galera_cluster_listed_by_one_seed_is_discovered_and_followed() {
    let mut galera = Galera::start().await;
    let ports: Vec<u16> = galera.nodes.iter().map(|n| n.port).collect();
    // The cluster lists the seed as 127.0.0.1:PORT; the file names it
    // localhost:PORT.
    let seed = format!(
        "[[pool.main.backend]]\naddress = \"localhost:{}\"\nname = \"seed\"\n",
        ports[0]
    );
    let body = format!(
        "discover = \"galera\"\nforget_after = \"3s\"\n{}",
        mysql_check(CHECK_USER, CHECK_PASSWORD, "galera = true")
    );
    let proxy = Proxy::start(&config(&body, &[seed]));
    let all: BTreeSet<String> = ["seed".to_owned()]
        .into_iter()
        .chain(ports[1..].iter().map(|p| format!("127.0.0.1:{p}")))
        .collect();
    let took = serving(&proxy, &all).await;
    eprintln!("one seed listed: all three nodes serve {took:?} after the start");
    let origins: Vec<(String, String)> = members(&proxy).into_iter().map(|m| (m.0, m.1)).collect();
    assert!(
        origins.contains(&("seed".to_owned(), "file".to_owned())),
        "{origins:?}"
    );
    assert_eq!(
        origins.iter().filter(|o| o.1 == "discovered").count(),
        2,
        "the seed counts once: {origins:?}"
    );
    assert_eq!(
        ports_reached(&proxy, 9).await,
        ports.iter().copied().collect()
    );

    // A node stops: drained at once, dropped after forget_after.
    galera.nodes[2].stop();
    let without: BTreeSet<String> = all
        .iter()
        .filter(|n| !n.ends_with(&ports[2].to_string()))
        .cloned()
        .collect();
    let took = serving(&proxy, &without).await;
    eprintln!("a node stopped: dropped {took:?} later (forget_after 3s)");
    let status = dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
    let timeline = status["timeline"].to_string();
    assert!(timeline.contains("left the cluster"), "{timeline}");

    // It comes back: found again.
    galera.nodes[2].restart().await;
    let took = serving(&proxy, &all).await;
    eprintln!("the node is back: serving {took:?} after its restart");
    assert_eq!(
        ports_reached(&proxy, 9).await,
        ports.iter().copied().collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_of_a_listed_primary_are_discovered() {
    let cluster = crate::support::cluster::Cluster::start(2).await;
    let ports: Vec<u16> = cluster.servers.iter().map(|s| s.port).collect();
    // SHOW SLAVE HOSTS needs REPLICATION MASTER ADMIN (MariaDB 10.5.2 and
    // later): the check user is given it, as the docs ask.
    let mut primary = cluster.servers[0].admin().await;
    primary
        .query_drop(format!(
            "GRANT REPLICATION MASTER ADMIN ON *.* TO '{CHECK_USER}'@'%'"
        ))
        .await
        .unwrap();
    primary.disconnect().await.unwrap();
    let seed = format!(
        "[[pool.main.backend]]\naddress = \"127.0.0.1:{}\"\nname = \"primary\"\n",
        ports[0]
    );
    let body = format!(
        "discover = \"replicas\"\nforget_after = \"2s\"\n{}",
        mysql_check(CHECK_USER, CHECK_PASSWORD, "")
    );
    let proxy = Proxy::start(&config(&body, &[seed]));
    let all: BTreeSet<String> = ["primary".to_owned()]
        .into_iter()
        .chain(ports[1..].iter().map(|p| format!("127.0.0.1:{p}")))
        .collect();
    let took = serving(&proxy, &all).await;
    eprintln!("the primary listed: its two replicas serve {took:?} after the start");
    assert_eq!(
        ports_reached(&proxy, 9).await,
        ports.iter().copied().collect()
    );

    // A replica that stops replicating leaves the primary's list once the
    // primary's dump thread finds it gone: the first event it sends meets a
    // reset connection, the next one fails.
    let mut replica = cluster.servers[2].admin().await;
    replica.query_drop("STOP SLAVE").await.unwrap();
    let mut primary = cluster.servers[0].admin().await;
    for sql in ["CREATE DATABASE gone_1", "CREATE DATABASE gone_2"] {
        primary.query_drop(sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let without: BTreeSet<String> = all
        .iter()
        .filter(|n| !n.ends_with(&ports[2].to_string()))
        .cloned()
        .collect();
    let took = serving(&proxy, &without).await;
    eprintln!("a replica stopped replicating: dropped {took:?} later (forget_after 2s)");
    replica.query_drop("START SLAVE").await.unwrap();
    serving(&proxy, &all).await;
}
