//! What each server of a pool says about its replication, read over one
//! short admin session per server.

use std::net::SocketAddr;
use std::time::Duration;

use super::gtid::Gtid;
use super::plan::{Flavour, Seen, Server, ServerFacts, Source};
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

/// The statements that read one MySQL 8 server's replication facts
/// (`SHOW REPLICA STATUS` is MySQL 8.0.22 and later).
pub const MYSQL: [&str; 2] = [
    "SELECT @@server_id AS server_id, @@server_uuid AS server_uuid, \
     @@read_only AS read_only, @@gtid_executed AS executed",
    "SHOW REPLICA STATUS",
];

/// What the server at `addr` says. The MariaDB statements go first; a
/// server whose greeting says it is MySQL is asked again in its words.
pub async fn one(admin: &Prober, addr: SocketAddr, timeout: Duration) -> Seen {
    let script = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let facts = match admin.run_statements(addr, script(&MARIADB), timeout).await {
        Ok(facts) => facts,
        Err(why) => return Seen::Unreachable(why),
    };
    let read = match Flavour::of(&facts.server_version) {
        Flavour::MariaDb => facts_from(&facts.answers),
        Flavour::MySql => match admin.run_statements(addr, script(&MYSQL), timeout).await {
            Ok(facts) => mysql_facts_from(&facts.answers),
            Err(why) => return Seen::Unreachable(why),
        },
    };
    match read {
        Ok(f) => Seen::Answered(f),
        Err(why) => Seen::Unusable(why),
    }
}

/// Answer `i` of a script as rows, or why not.
fn rows<'a>(
    answers: &'a [QueryOutcome],
    script: &[&str],
    i: usize,
) -> Result<&'a TextResult, String> {
    match answers.get(i) {
        Some(QueryOutcome::Rows(r)) => Ok(r),
        Some(QueryOutcome::Failed(e)) => Err(format!(
            "\"{}\" failed: {e}",
            script.get(i).copied().unwrap_or_default()
        )),
        _ => Err("the server did not answer every question".into()),
    }
}

fn server_id(text: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| format!("server_id \"{text}\" is not a number"))
}

fn on(text: &str) -> bool {
    text == "1" || text.eq_ignore_ascii_case("ON")
}

/// The facts in the answers to [`MYSQL`]: every position is the executed
/// set; what a replica received is its retrieved set and what it executed.
pub fn mysql_facts_from(answers: &[QueryOutcome]) -> Result<ServerFacts, String> {
    let vars = rows(answers, &MYSQL, 0)?;
    let var = |name: &str| vars.first(name).unwrap_or_default();
    let executed = Gtid::mysql(var("executed")).map_err(|e| format!("gtid_executed: {e}"))?;
    let status = rows(answers, &MYSQL, 1)?;
    let source = (!status.rows.is_empty()).then(|| {
        let col = |name: &str| status.first(name).unwrap_or_default();
        let received = Gtid::mysql(col("Retrieved_Gtid_Set")).unwrap_or_default();
        let io_pos = match (&received, &executed) {
            (Gtid::MySql(r), Gtid::MySql(e)) => Gtid::MySql(r.union(e)),
            _ => executed.clone(),
        };
        Source {
            host: col("Source_Host").to_owned(),
            port: col("Source_Port").parse().unwrap_or(0),
            server_id: col("Source_Server_Id").parse().unwrap_or(0),
            io_running: col("Replica_IO_Running").eq_ignore_ascii_case("Yes"),
            sql_running: col("Replica_SQL_Running").eq_ignore_ascii_case("Yes"),
            using_gtid: col("Auto_Position") == "1",
            io_pos,
        }
    });
    Ok(ServerFacts {
        flavour: Flavour::MySql,
        server_id: server_id(var("server_id"))?,
        server_uuid: var("server_uuid").to_ascii_lowercase(),
        read_only: on(var("read_only")),
        binlog_pos: executed.clone(),
        current_pos: executed.clone(),
        binlog_state: executed,
        semi_sync: false,
        source,
    })
}

/// The facts in the answers to [`MARIADB`].
pub fn facts_from(answers: &[QueryOutcome]) -> Result<ServerFacts, String> {
    let vars = rows(answers, &MARIADB, 0)?;
    let var = |name: &str| vars.first(name).unwrap_or_default();
    let pos = |name: &str| Gtid::mariadb(var(name)).map_err(|e| format!("{name}: {e}"));
    let status = rows(answers, &MARIADB, 1)?;
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
            io_pos: Gtid::mariadb(col("Gtid_IO_Pos")).unwrap_or_default(),
        }
    });
    Ok(ServerFacts {
        flavour: Flavour::MariaDb,
        server_id: server_id(var("server_id"))?,
        server_uuid: String::new(),
        read_only: on(var("read_only")),
        binlog_pos: pos("binlog_pos")?,
        current_pos: pos("current_pos")?,
        binlog_state: pos("binlog_state")?,
        semi_sync: matches!(answers.get(2), Some(QueryOutcome::Rows(r)) if r.first("semi_sync") == Some("1")),
        source,
    })
}
