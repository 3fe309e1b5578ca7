//! A real three-node Galera cluster behind dbsplice: a node that rejects
//! queries (`wsrep_reject_queries`) or is desynced on purpose (`wsrep_desync`,
//! for a backup or a rolling schema change) looks synced to COM_PING and
//! takes no new sessions; it takes them again once the operator is done.

use std::time::Duration;

use dbsplice::vocabulary::Health;
use mysql_async::prelude::Queryable;

use crate::support::galera::Galera;
use crate::support::mariadb::{CHECK_PASSWORD, CHECK_USER};
use crate::support::{backend, config, mysql_check, Proxy};

/// What a client without privileges (whom `wsrep_reject_queries` refuses,
/// unlike an account with SUPER) sees through `addr`: the server's port, or
/// the error it got.
async fn unprivileged_session(addr: std::net::SocketAddr) -> Result<u16, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(CHECK_USER))
        .pass(Some(CHECK_PASSWORD))
        .prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| e.to_string())?;
    let port = conn
        .query_first::<u16, _>("SELECT @@port")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    let _ = conn.disconnect().await;
    Ok(port)
}

/// Thirty new sessions: none errs and none reaches the server at `avoid`.
async fn sessions_avoid(addr: std::net::SocketAddr, avoid: u16) {
    for _ in 0..30 {
        match unprivileged_session(addr).await {
            Ok(port) => assert_ne!(port, avoid, "a session reached the node out of rotation"),
            Err(e) => panic!("a client got an error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rejecting_queries_or_desynced_takes_no_sessions() {
    let cluster = Galera::start().await;
    let check = mysql_check(
        CHECK_USER,
        CHECK_PASSWORD,
        "galera = true\ngalera_donor_ok = true",
    );
    let backends: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| backend(n.addr(), 1, "primary"))
        .collect();
    let proxy = Proxy::start(&config(&check, &backends));
    for node in &cluster.nodes {
        proxy.wait_health(node.addr(), Health::Up).await;
    }
    let rw = proxy.addr("rw");

    // Rejecting queries: COM_PING and SHOW still pass, clients get 1047.
    let rejecting = &cluster.nodes[1];
    cluster.on(1, "SET GLOBAL wsrep_reject_queries = ALL").await;
    proxy.wait_health(rejecting.addr(), Health::Down).await;
    let reason = proxy.backend(rejecting.addr()).reason();
    assert!(reason.contains("wsrep_reject_queries=ALL"), "{reason}");
    sessions_avoid(rw, rejecting.port).await;
    cluster
        .on(1, "SET GLOBAL wsrep_reject_queries = NONE")
        .await;
    proxy.wait_health(rejecting.addr(), Health::Up).await;

    // Desynced on purpose: state 2 like a donor, yet no donor.
    let desynced = &cluster.nodes[2];
    cluster.on(2, "SET GLOBAL wsrep_desync = ON").await;
    proxy.wait_health(desynced.addr(), Health::Down).await;
    let reason = proxy.backend(desynced.addr()).reason();
    assert!(reason.contains("wsrep_desync=ON"), "{reason}");
    sessions_avoid(rw, desynced.port).await;
    cluster.on(2, "SET GLOBAL wsrep_desync = OFF").await;
    proxy.wait_health(desynced.addr(), Health::Up).await;
    tokio::time::timeout(Duration::from_secs(5), unprivileged_session(rw))
        .await
        .unwrap()
        .unwrap();
}
