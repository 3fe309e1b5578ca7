//! A MariaDB replication cluster for failover tests: one primary and
//! replicas with GTID, started in parallel, and the promote drill.

use mysql_async::prelude::Queryable;

use super::mariadb::{MariaDb, PASSWORD, USER};

/// A primary (index 0 at start) and its replicas.
pub struct Cluster {
    /// Every server; `servers[0]` is the first primary.
    pub servers: Vec<MariaDb>,
}

fn args(id: usize) -> Vec<String> {
    vec![
        "--log-bin=binlog".to_owned(),
        format!("--server-id={}", id + 1),
        "--log-slave-updates=ON".to_owned(),
        format!("--read-only={}", if id == 0 { "OFF" } else { "ON" }),
        // How a primary's SHOW SLAVE HOSTS names its replicas.
        "--report-host=127.0.0.1".to_owned(),
    ]
}

impl Cluster {
    /// Starts `1 + replicas` servers and points the replicas at the primary.
    pub async fn start(replicas: usize) -> Cluster {
        let starts: Vec<_> = (0..=replicas)
            .map(|i| tokio::spawn(async move { MariaDb::start_with(&args(i)).await }))
            .collect();
        let mut servers = Vec::new();
        for start in starts {
            servers.push(start.await.unwrap());
        }
        let cluster = Cluster { servers };
        let primary = cluster.servers[0].port;
        for replica in &cluster.servers[1..] {
            replicate_from(replica, primary).await;
        }
        cluster
    }

    /// [`Cluster::start`] with the primary inside `netns` (on its address,
    /// port 3306) and the replicas on the test's loopback: a link the test
    /// can cut between dbsplice and the primary alone.
    pub async fn start_with_primary_in(netns: &super::netns::Netns, replicas: usize) -> Cluster {
        let primary = MariaDb::start_in_with(netns, &args(0)).await;
        let starts: Vec<_> = (1..=replicas)
            .map(|i| tokio::spawn(async move { MariaDb::start_with(&args(i)).await }))
            .collect();
        let mut servers = vec![primary];
        for start in starts {
            servers.push(start.await.unwrap());
        }
        let host = netns.ip.to_string();
        for replica in &servers[1..] {
            replicate_from_host(replica, &host, 3306).await;
        }
        Cluster { servers }
    }

    /// The promote drill: on `new_primary`, stop replicating and take writes;
    /// point the other live replicas at it.
    pub async fn promote(&self, new_primary: usize, others: &[usize]) {
        let mut admin = self.servers[new_primary].admin().await;
        for sql in ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"] {
            admin.query_drop(sql).await.unwrap();
        }
        admin.disconnect().await.unwrap();
        for &i in others {
            let mut admin = self.servers[i].admin().await;
            admin.query_drop("STOP SLAVE").await.unwrap();
            admin.disconnect().await.unwrap();
            replicate_from(&self.servers[i], self.servers[new_primary].port).await;
        }
    }
}

async fn replicate_from(replica: &MariaDb, primary_port: u16) {
    replicate_from_host(replica, "127.0.0.1", primary_port).await;
}

async fn replicate_from_host(replica: &MariaDb, host: &str, primary_port: u16) {
    let mut admin = replica.admin().await;
    admin
        .query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={primary_port}, MASTER_USER='{USER}', \
             MASTER_PASSWORD='{PASSWORD}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
        ))
        .await
        .unwrap();
    admin.query_drop("START SLAVE").await.unwrap();
    // Local to the replica: kept out of its binlog so that no errant
    // transaction gets in the way of a later promotion.
    admin.query_drop("SET sql_log_bin = 0").await.unwrap();
    admin
        .query_drop(format!(
            "GRANT SLAVE MONITOR ON *.* TO '{}'@'%'",
            super::mariadb::CHECK_USER
        ))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
}
