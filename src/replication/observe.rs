//! What each server of a pool says about its replication, read over one
//! short admin session per server.

use std::net::SocketAddr;
use std::time::Duration;

use super::gtid::GtidPos;
use super::plan::{Seen, Server, ServerFacts, Source};
use crate::config::PoolConfig;
use crate::health::probe::Prober;
use crate::mysql::resultset::{QueryOutcome, TextResult};

/// The statements that read one MariaDB server's replication facts.
/// The last may fail (no semi-synchronous replication in the server):
/// read as off.
pub const MARIADB: [&str; 3] = [
    "SELECT @@server_id AS server_id, @@read_only AS read_only, \
     @@gtid_binlog_pos AS binlog_pos, @@gtid_current_pos AS current_pos, \
     @@gtid_binlog_state AS binlog_state",
    "SHOW SLAVE STATUS",
    "SELECT @@rpl_semi_sync_master_enabled AS semi_sync",
];

/// Reads every server of `pool` at once, each within `timeout`; the servers
/// in config order with what they said.
/// `admins` reaches each backend, by index.
pub async fn pool(admins: &[Prober], pool: &PoolConfig, timeout: Duration) -> Vec<Server> {
    let looks: Vec<_> = pool
        .backends
        .iter()
        .zip(admins)
        .map(|(b, admin)| {
            let (admin, addr) = (admin.clone(), b.addr);
            tokio::spawn(async move { one(&admin, addr, timeout).await })
        })
        .collect();
    let mut seen = Vec::with_capacity(looks.len());
    for look in looks {
        seen.push(
            look.await
                .unwrap_or_else(|e| Seen::Unreachable(format!("the look failed: {e}"))),
        );
    }
    pool.backends
        .iter()
        .zip(seen)
        .map(|(b, seen)| Server {
            name: b.name.clone(),
            host: b.address.host.clone(),
            port: b.address.port,
            tier: b.tier,
            candidate: b.candidate,
            seen,
            last_server_id: None,
            last_semi_sync: None,
        })
        .collect()
}

/// What the server at `addr` says.
pub async fn one(admin: &Prober, addr: SocketAddr, timeout: Duration) -> Seen {
    let statements = MARIADB.iter().map(|s| (*s).to_owned()).collect();
    match admin.run_statements(addr, statements, timeout).await {
        Ok(facts) => match facts_from(&facts.answers) {
            Ok(f) => Seen::Answered(f),
            Err(why) => Seen::Unreachable(why),
        },
        Err(why) => Seen::Unreachable(why),
    }
}

/// The facts in the answers to [`MARIADB`].
pub fn facts_from(answers: &[QueryOutcome]) -> Result<ServerFacts, String> {
    let rows = |i: usize| -> Result<&TextResult, String> {
        match answers.get(i) {
            Some(QueryOutcome::Rows(r)) => Ok(r),
            Some(QueryOutcome::Failed(e)) => Err(format!(
                "\"{}\" failed: {e}",
                MARIADB.get(i).copied().unwrap_or_default()
            )),
            _ => Err("the server did not answer every question".into()),
        }
    };
    let vars = rows(0)?;
    let var = |name: &str| vars.first(name).unwrap_or_default();
    let pos = |name: &str| GtidPos::parse(var(name)).map_err(|e| format!("{name}: {e}"));
    let status = rows(1)?;
    let source = (!status.rows.is_empty()).then(|| {
        let col = |name: &str| status.first(name).unwrap_or_default();
        Source {
            host: col("Master_Host").to_owned(),
            port: col("Master_Port").parse().unwrap_or(0),
            server_id: col("Master_Server_Id").parse().unwrap_or(0),
            io_running: col("Slave_IO_Running").eq_ignore_ascii_case("Yes"),
            sql_running: col("Slave_SQL_Running").eq_ignore_ascii_case("Yes"),
            using_gtid: !col("Using_Gtid").eq_ignore_ascii_case("No")
                && !col("Using_Gtid").is_empty(),
            io_pos: GtidPos::parse(col("Gtid_IO_Pos")).unwrap_or_default(),
        }
    });
    Ok(ServerFacts {
        server_id: var("server_id")
            .parse()
            .map_err(|_| format!("server_id \"{}\" is not a number", var("server_id")))?,
        read_only: var("read_only") == "1" || var("read_only").eq_ignore_ascii_case("ON"),
        binlog_pos: pos("binlog_pos")?,
        current_pos: pos("current_pos")?,
        binlog_state: pos("binlog_state")?,
        semi_sync: matches!(answers.get(2), Some(QueryOutcome::Rows(r)) if r.first("semi_sync") == Some("1")),
        source,
    })
}
