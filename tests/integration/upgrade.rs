//! `dbsplice upgrade`: the running binary hands every listener and open
//! session to a new process, and no client notices; a new binary that fails
//! leaves everything where it was.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::binary::{http, Running, BIN};
use crate::support::{backend, config, connect, wait_until, with_token_admin, MariaDb, Scratch};

const TOKEN: &str = "tok-upgrade-1";

/// dbsplice in front of `db` from a config file, with the admin API.
fn start(db: &MariaDb, name: &str) -> (Scratch, Running) {
    let dir = Scratch::new(name);
    std::fs::write(dir.0.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(
        &path,
        with_token_admin(&config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\n",
            &[backend(db.addr(), 1, "primary")],
        )),
    )
    .unwrap();
    let running = Running::start(&path, None);
    (dir, running)
}

/// `POST /api/upgrade`: the status and the answer.
async fn upgrade(admin: std::net::SocketAddr, query: &str) -> (u16, serde_json::Value) {
    let (code, body) = http(admin, "POST", &format!("/api/upgrade{query}"), Some(TOKEN)).await;
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// Ends a process this test started (directly or through an upgrade), by pid.
fn end(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_survives_an_upgrade() {
    let db = MariaDb::start().await;
    let (_dir, mut running) = start(&db, "upgrade-tx");
    let admin = running.admin_addr().await;
    let mut conn = connect(running.addr).await.unwrap();
    let id_before: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    conn.query_drop("CREATE DATABASE IF NOT EXISTS up")
        .await
        .unwrap();
    conn.query_drop("CREATE TABLE IF NOT EXISTS up.tx (n INT)")
        .await
        .unwrap();
    conn.query_drop("BEGIN").await.unwrap();
    conn.query_drop("INSERT INTO up.tx VALUES (1), (2), (3)")
        .await
        .unwrap();

    let old = running.child.id();
    let (code, answer) = upgrade(admin, "").await;
    assert_eq!(code, 200, "{answer}");
    let new = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    assert_ne!(new, old);
    assert_eq!(answer["sessions"], 1, "{answer}");
    assert!(answer["pause_ms"].as_f64().is_some(), "{answer}");
    eprintln!("{}", answer["outcome"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old process exits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exited, Some(0), "the old process exits 0");

    // The same server session, transaction still open.
    let id_after: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id_after, id_before);
    conn.query_drop("INSERT INTO up.tx VALUES (4)")
        .await
        .unwrap();
    conn.query_drop("COMMIT").await.unwrap();
    let mut other = connect(running.addr).await.unwrap();
    let rows: u64 = other
        .query_first("SELECT COUNT(*) FROM up.tx")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows, 4, "committed, every row");
    // The new process serves the admin API on the same socket.
    let (code, status) = http(admin, "GET", "/api/status", None).await;
    assert_eq!(code, 200);
    assert!(status.contains(&format!("\"pid\":{new}")), "{status}");
    running.wait_log(0, &["upgrade done", "1 sessions"]).await;
    drop(conn);
    drop(other);
    end(new);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            (!alive(new)).then_some(())
        })
        .await
        .is_some(),
        "the new process stops on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_fails_leaves_every_session_here() {
    let db = MariaDb::start().await;
    let (dir, running) = start(&db, "upgrade-fail");
    let admin = running.admin_addr().await;
    let mut conn = connect(running.addr).await.unwrap();
    let id: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();

    // A binary that cannot start the way dbsplice does.
    let broken = dir.0.join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'no such thing' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, answer) = upgrade(admin, &format!("?binary={}", broken.display())).await;
    assert_eq!(code, 409, "{answer}");
    let why = answer["error"].as_str().unwrap();
    assert!(
        why.contains("rejects the config") && why.contains("no such thing"),
        "{why}"
    );

    // A binary that checks the config but dies before taking over.
    let dies = dir.0.join("dies");
    std::fs::write(
        &dies,
        format!("#!/bin/sh\nif [ \"$1\" = check ]; then exec {BIN} \"$@\"; fi\nexit 7\n"),
    )
    .unwrap();
    std::fs::set_permissions(&dies, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, answer) = upgrade(admin, &format!("?binary={}", dies.display())).await;
    assert_eq!(code, 409, "{answer}");
    let why = answer["error"].as_str().unwrap();
    assert!(why.contains("exited") && why.contains('7'), "{why}");

    // The config the new binary would read is broken now.
    let path = dir.0.join("dbsplice.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(dir.0.join("broken.toml"), "[[listener]]\nname = 5\n").unwrap();
    std::fs::copy(dir.0.join("broken.toml"), &path).unwrap();
    let (code, answer) = upgrade(admin, "").await;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("rejects the config"),
        "{answer}"
    );
    std::fs::write(&path, good).unwrap();

    // A relative path is not taken from the API.
    let (code, _) = upgrade(admin, "?binary=dbsplice").await;
    assert_eq!(code, 409);

    // Every session is still here, and new clients are accepted.
    let same: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same, id);
    let mut fresh = connect(running.addr).await.unwrap();
    let one: u64 = fresh.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    assert_eq!(running.child.id(), running.child.id());
    assert!(alive(running.child.id()), "the old process serves on");
}
