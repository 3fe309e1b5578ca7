//! A switchover on MySQL 8 servers, which this machine has not: scripted
//! servers that greet as MySQL 8.0, keep the replication state a real one
//! would (read_only, super_read_only, the executed GTID set, the source) and
//! record every statement, so the test checks that dbsplice speaks MySQL's
//! words (super_read_only, WAIT_FOR_EXECUTED_GTID_SET, RESET REPLICA ALL,
//! CHANGE REPLICATION SOURCE TO ... SOURCE_AUTO_POSITION = 1) and no
//! MariaDB statement reaches them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::fake::{greeting, ok, packet, read_packet, serve};
use crate::support::{wait_until, Proxy};

const GTIDS: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-10";

/// One scripted server's state and what it was told.
#[derive(Debug, Default)]
struct State {
    server_id: u32,
    uuid: String,
    read_only: bool,
    super_read_only: bool,
    /// The source's port, when it replicates.
    source: Option<u16>,
    log: Vec<String>,
}

/// Every scripted server, by port: a CHANGE REPLICATION SOURCE names a port,
/// and the replica reports that server's id as its source's.
type Cluster = Arc<Mutex<HashMap<u16, State>>>;

fn lenenc(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s);
}

/// A text result set with `columns` and `rows` (all values text).
fn result(columns: &[&str], rows: &[Vec<String>]) -> Vec<u8> {
    let mut seq = 1u8;
    let mut next = |payload: &[u8], wire: &mut Vec<u8>| {
        wire.extend(packet(seq, payload));
        seq += 1;
    };
    let mut wire = Vec::new();
    next(&[u8::try_from(columns.len()).unwrap()], &mut wire);
    for name in columns {
        let mut col = Vec::new();
        for field in [&b"def"[..], b"", b"", b"", name.as_bytes(), name.as_bytes()] {
            lenenc(&mut col, field);
        }
        col.extend_from_slice(&[0x0c, 0x21, 0, 0, 1, 0, 0xfd, 0, 0, 0, 0, 0]);
        next(&col, &mut wire);
    }
    next(&[0xfe, 0, 0, 2, 0], &mut wire);
    for row in rows {
        let mut r = Vec::new();
        for v in row {
            lenenc(&mut r, v.as_bytes());
        }
        next(&r, &mut wire);
    }
    next(&[0xfe, 0, 0, 2, 0], &mut wire);
    wire
}

fn error(code: u16, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.extend_from_slice(b"#HY000");
    p.extend_from_slice(message.as_bytes());
    packet(1, &p)
}

fn on(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// The answer of server `port` to `sql`, changing its state as MySQL would.
fn answer(cluster: &Cluster, port: u16, sql: &str) -> Vec<u8> {
    let mut all = cluster.lock().unwrap();
    let ids: HashMap<u16, u32> = all.iter().map(|(p, s)| (*p, s.server_id)).collect();
    let me = all.get_mut(&port).unwrap();
    me.log.push(sql.to_owned());
    let onoff = |b: bool| if b { "ON" } else { "OFF" }.to_owned();
    if sql.starts_with(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('read_only', 'super_read_only')",
    ) {
        return result(
            &["Variable_name", "Value"],
            &[
                vec!["read_only".into(), onoff(me.read_only)],
                vec!["super_read_only".into(), onoff(me.super_read_only)],
            ],
        );
    }
    if sql.contains("@@gtid_binlog_pos") {
        return error(1193, "Unknown system variable 'gtid_binlog_pos'");
    }
    if sql.starts_with("SELECT @@server_id AS server_id, @@server_uuid") {
        return result(
            &["server_id", "server_uuid", "read_only", "executed"],
            &[vec![
                me.server_id.to_string(),
                me.uuid.clone(),
                on(me.read_only),
                GTIDS.into(),
            ]],
        );
    }
    if sql == "SHOW REPLICA STATUS" {
        let columns = [
            "Source_Host",
            "Source_Port",
            "Source_Server_Id",
            "Replica_IO_Running",
            "Replica_SQL_Running",
            "Auto_Position",
            "Retrieved_Gtid_Set",
        ];
        let rows: Vec<Vec<String>> = me
            .source
            .map(|p| {
                vec![
                    "127.0.0.1".into(),
                    p.to_string(),
                    ids.get(&p).copied().unwrap_or(0).to_string(),
                    "Yes".into(),
                    "Yes".into(),
                    "1".into(),
                    GTIDS.into(),
                ]
            })
            .into_iter()
            .collect();
        return result(&columns, &rows);
    }
    if sql.starts_with("SELECT GET_LOCK(") {
        return result(&["got"], &[vec!["1".into()]]);
    }
    if sql == "SELECT @@gtid_executed AS pos" {
        return result(&["pos"], &[vec![GTIDS.into()]]);
    }
    if sql.starts_with("SELECT WAIT_FOR_EXECUTED_GTID_SET(") {
        return result(&["waited"], &[vec!["0".into()]]);
    }
    match sql {
        "SET GLOBAL super_read_only = ON" => (me.read_only, me.super_read_only) = (true, true),
        "SET GLOBAL super_read_only = OFF" => me.super_read_only = false,
        "SET GLOBAL read_only = OFF" => me.read_only = false,
        "RESET REPLICA ALL" => me.source = None,
        _ => {}
    }
    if let Some(rest) =
        sql.strip_prefix("CHANGE REPLICATION SOURCE TO SOURCE_HOST = '127.0.0.1', SOURCE_PORT = ")
    {
        me.source = rest.split(',').next().and_then(|p| p.parse().ok());
    }
    ok(1)
}

/// A scripted MySQL 8.0 server sharing `cluster`'s state.
async fn server(cluster: &Cluster, id: u32, read_only: bool, source: Option<u16>) -> SocketAddr {
    let shared = Arc::clone(cluster);
    let port = Arc::new(Mutex::new(0u16));
    let known = Arc::clone(&port);
    let addr = serve(move |mut s| {
        let (cluster, port) = (Arc::clone(&shared), *known.lock().unwrap());
        async move {
            s.write_all(&greeting("mysql_native_password", false))
                .await
                .unwrap();
            if read_packet(&mut s).await.is_none() {
                return;
            }
            s.write_all(&ok(2)).await.unwrap();
            while let Some(cmd) = read_packet(&mut s).await {
                let reply = match cmd.first() {
                    Some(0x0e) => ok(1),
                    Some(0x03) => answer(&cluster, port, &String::from_utf8_lossy(&cmd[1..])),
                    _ => return,
                };
                if s.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    *port.lock().unwrap() = addr.port();
    cluster.lock().unwrap().insert(
        addr.port(),
        State {
            server_id: id,
            uuid: format!("00000000-0000-0000-0000-00000000000{id}"),
            read_only,
            super_read_only: read_only,
            source,
            log: Vec::new(),
        },
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_8_switchover_speaks_mysql() {
    let cluster: Cluster = Arc::default();
    let db1 = server(&cluster, 1, false, None).await;
    let db2 = server(&cluster, 2, true, Some(db1.port())).await;
    let db3 = server(&cluster, 3, true, Some(db1.port())).await;
    let backends: Vec<String> = [db1, db2, db3]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                "[[pool.main.backend]]\naddress = \"{a}\"\nname = \"db{}\"\n",
                i + 1
            )
        })
        .collect();
    let body = format!(
        "role = \"writer\"\n{}[pool.main.replication]\nuser = \"admin\"\npassword = \"adminpw\"\n\
         replication_user = \"repl\"\nreplication_password = \"replpw\"\n",
        crate::support::mysql_check("check", "checkpw", "")
    );
    let proxy = Proxy::start(&crate::support::config(&body, &backends));
    let app = proxy.app.as_ref().unwrap();
    wait_until(Duration::from_secs(10), || async {
        let status = dbsplice::admin::status::status(app.shared());
        (status["pools"][0]["writer"] == "db1").then_some(())
    })
    .await
    .expect("the writer pool follows db1");

    let report = app
        .inbox()
        .switchover("main", Some("db2".into()), "the test".into())
        .await
        .unwrap();
    for step in &report.steps {
        eprintln!(
            "{} {}: {}",
            if step.ok { "ok  " } else { "FAIL" },
            step.step,
            step.detail
        );
    }
    assert!(report.ok, "{}", report.summary);

    let logs: HashMap<u16, Vec<String>> = cluster
        .lock()
        .unwrap()
        .iter()
        .map(|(p, s)| (*p, s.log.clone()))
        .collect();
    let sent = |addr: SocketAddr| logs[&addr.port()].clone();
    let in_order = |log: &[String], wanted: &[String]| {
        let mut at = 0;
        for w in wanted {
            match log[at..].iter().position(|l| l == w) {
                Some(i) => at += i + 1,
                None => panic!("{w:?} not sent (in this order) among {log:#?}"),
            }
        }
    };
    let source = |to: SocketAddr| {
        format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '127.0.0.1', SOURCE_PORT = {}, SOURCE_USER = 'repl', \
             SOURCE_PASSWORD = 'replpw', SOURCE_AUTO_POSITION = 1",
            to.port()
        )
    };
    in_order(
        &sent(db1),
        &[
            "SET GLOBAL super_read_only = ON".into(),
            "SELECT @@gtid_executed AS pos".into(),
            "STOP REPLICA".into(),
            source(db2),
            "START REPLICA".into(),
        ],
    );
    in_order(
        &sent(db2),
        &[
            format!("SELECT WAIT_FOR_EXECUTED_GTID_SET('{GTIDS}', 10) AS waited"),
            "STOP REPLICA".into(),
            "RESET REPLICA ALL".into(),
            "SET GLOBAL super_read_only = OFF".into(),
            "SET GLOBAL read_only = OFF".into(),
        ],
    );
    in_order(
        &sent(db3),
        &["STOP REPLICA".into(), source(db2), "START REPLICA".into()],
    );
    for (port, log) in &logs {
        for mariadb_only in [
            "MASTER_GTID_WAIT",
            "CHANGE MASTER",
            "STOP SLAVE",
            "START SLAVE",
            "RESET SLAVE",
            "gtid_slave_pos",
        ] {
            assert!(
                !log.iter().any(|l| l.contains(mariadb_only)),
                "{mariadb_only} sent to the MySQL server on port {port}: {log:#?}"
            );
        }
    }
    // The old primary follows the new one and is read-only for SUPER too.
    let all = cluster.lock().unwrap();
    let old = &all[&db1.port()];
    assert_eq!((old.super_read_only, old.source), (true, Some(db2.port())));
    assert!(!all[&db2.port()].read_only);
}
