//! A real three-node Galera cluster (Debian's `galera-4`) on loopback.
//!
//! The first node bootstraps a new cluster and is stopped cleanly, so its
//! datadir records the cluster's state; the others start from copies of it
//! after the first node bootstraps again, and join by an incremental
//! transfer (IST) of the few configuration changes since, never a full one.
//! The nodes run as the `mysql` user: Galera's transfer scripts, which run
//! even for an IST, fail as root.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::mariadb::{free_port, MariaDb};
use super::wait_until;

const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// Three synced nodes of one cluster.
pub struct Galera {
    /// The nodes, in start order.
    pub nodes: Vec<MariaDb>,
}

/// One node's Galera ports.
struct Ports {
    gcomm: u16,
    ist: u16,
    sst: u16,
}

fn args(i: usize, me: &Ports, all: &[Ports], bootstrap: bool) -> Vec<String> {
    let peers: Vec<String> = all
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.gcomm))
        .collect();
    let mut args = vec![
        "--wsrep-on=ON".to_owned(),
        format!("--wsrep-provider={PROVIDER}"),
        "--wsrep-cluster-name=dbsplice-test".to_owned(),
        format!("--wsrep-node-name=node{i}"),
        // The first node's cache holds every write since the copy was
        // taken: joining from it is an incremental transfer, never a full one.
        "--wsrep-sst-donor=node0,".to_owned(),
        format!("--wsrep-cluster-address=gcomm://{}", peers.join(",")),
        format!("--wsrep-node-address=127.0.0.1:{}", me.gcomm),
        // What wsrep_incoming_addresses lists for it (with its own port),
        // where clients (and dbsplice's discovery) reach it.
        "--wsrep-node-incoming-address=127.0.0.1".to_owned(),
        format!(
            "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{};ist.recv_addr=127.0.0.1:{};gcache.size=16M",
            me.gcomm, me.ist
        ),
        format!("--wsrep-sst-receive-address=127.0.0.1:{}", me.sst),
        "--binlog-format=ROW".to_owned(),
        "--innodb-autoinc-lock-mode=2".to_owned(),
        "--default-storage-engine=InnoDB".to_owned(),
    ];
    // The transfer scripts (run even for an incremental transfer) fail as
    // root.
    if is_root() {
        args.push("--user=mysql".to_owned());
    }
    if bootstrap {
        args.push("--wsrep-new-cluster".to_owned());
    }
    args
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A global status value of a node, read directly.
async fn status(node: &MariaDb, name: &str) -> Option<String> {
    let mut conn = mysql_async::Conn::new(super::client_opts(node.addr()))
        .await
        .ok()?;
    let row: Option<(String, String)> = conn
        .exec_first("SHOW GLOBAL STATUS WHERE Variable_name = ?", (name,))
        .await
        .ok()?;
    let _ = conn.disconnect().await;
    row.map(|(_, v)| v)
}

impl Galera {
    /// Starts the cluster and waits until every node is synced in a
    /// cluster of three.
    pub async fn start() -> Galera {
        let ports: Vec<Ports> = (0..3)
            .map(|_| Ports {
                gcomm: free_port(),
                ist: free_port(),
                sst: free_port(),
            })
            .collect();
        let mut first = MariaDb::start_with(&args(0, &ports[0], &ports, true)).await;
        first.stop();
        // Copied while the first node is stopped: a consistent datadir with
        // the cluster's state recorded in grastate.dat.
        let datadir = first.dir().join("galera-copy");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(first.datadir())
            .arg(&datadir)
            .status()
            .unwrap();
        assert!(copied.success());
        // From here on no node runs the init file (the accounts exist), so
        // that the joiners miss no write, only configuration changes.
        let quiet = |mut args: Vec<String>| {
            args.push("--init-file=/dev/null".to_owned());
            args
        };
        first.set_extra_args(&quiet(args(0, &ports[0], &ports, true)));
        first.restart().await;
        let mut started = vec![first];
        for (i, me) in ports.iter().enumerate().skip(1) {
            started.push(MariaDb::start_from(&datadir, &quiet(args(i, me, &ports, false))).await);
        }
        let cluster = Galera { nodes: started };
        for node in &cluster.nodes {
            let synced = wait_until(Duration::from_secs(60), || async {
                let size = status(node, "wsrep_cluster_size").await?;
                let state = status(node, "wsrep_local_state").await?;
                (size == "3" && state == "4").then_some(())
            })
            .await;
            assert!(
                synced.is_some(),
                "node on port {} never synced: {}",
                node.port,
                std::fs::read_to_string(node.dir().join("error.log")).unwrap_or_default()
            );
        }
        cluster
    }

    /// Runs `sql` on node `i` directly, with every privilege.
    pub async fn on(&self, i: usize, sql: &str) {
        let mut admin = self.nodes[i].admin().await;
        admin.query_drop(sql).await.unwrap();
        admin.disconnect().await.unwrap();
    }
}
