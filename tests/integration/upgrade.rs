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

/// Open descriptors of process `pid`.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The fewest descriptors process `pid` has open over 200 ms (a probe's
/// socket in flight does not count).
async fn resting_fds(pid: u32) -> usize {
    let mut fewest = usize::MAX;
    for _ in 0..10 {
        fewest = fewest.min(fds_of(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fewest
}

/// Rows a streaming session reads, each `seq` and 200 bytes made from it.
const STREAM_ROWS: u32 = 2_000;
const STREAM_QUERY: &str = "SELECT seq, REPEAT(CHAR(65 + seq % 26), 200) FROM up.seq_1_to_2000";

/// Streams the large result again and again until `stop`, checking every
/// byte of every row; returns how many results arrived whole.
async fn stream_until(
    mut conn: mysql_async::Conn,
    stop: tokio_util::sync::CancellationToken,
) -> Result<u64, String> {
    let id: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    let mut whole = 0;
    while !stop.is_cancelled() {
        let rows: Vec<(u32, String)> = conn
            .query(STREAM_QUERY)
            .await
            .map_err(|e| format!("stream {id}: {e}"))?;
        if rows.len() != STREAM_ROWS as usize {
            return Err(format!("stream {id}: {} rows", rows.len()));
        }
        for (i, (seq, text)) in rows.iter().enumerate() {
            let expected = char::from(b'A' + u8::try_from(seq % 26).unwrap())
                .to_string()
                .repeat(200);
            if *seq != u32::try_from(i).unwrap() + 1 || *text != expected {
                return Err(format!("stream {id}: row {i} is wrong"));
            }
        }
        whole += 1;
    }
    let same: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    if same != id {
        return Err(format!("stream {id} came back as {same}"));
    }
    conn.disconnect().await.map_err(|e| e.to_string())?;
    Ok(whole)
}

/// Asks `SELECT CONNECTION_ID()` now and then until `stop`: the same
/// server session every time.
async fn idle_until(
    mut conn: mysql_async::Conn,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let id: u64 = conn
        .query_first("SELECT CONNECTION_ID()")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let same: u64 = conn
            .query_first("SELECT CONNECTION_ID()")
            .await
            .map_err(|e| format!("idle {id}: {e}"))?
            .unwrap_or(0);
        if same != id {
            return Err(format!("session {id} came back as {same}"));
        }
    }
    conn.disconnect().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sessions_survive_twenty_upgrades_in_a_row() {
    let test_began = std::time::Instant::now();
    let db = MariaDb::start_with(&["--max-connections=1000".to_owned()]).await;
    let (_dir, mut running) = start(&db, "upgrade-loop");
    let admin = running.admin_addr().await;
    let addr = running.addr;
    let baseline = resting_fds(running.child.id()).await;
    let mut setup = connect(addr).await.unwrap();
    setup
        .query_drop("CREATE DATABASE IF NOT EXISTS up")
        .await
        .unwrap();
    setup.disconnect().await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    // Every session opened first, fifty at a time, then set going.
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            batch.spawn(connect(addr));
        }
        while let Some(conn) = batch.join_next().await {
            conns.push(conn.unwrap().unwrap());
        }
    }
    let mut sessions = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let stop = stop.clone();
        if i % 2 == 0 {
            sessions.spawn(async move { stream_until(conn, stop).await.map(|_| ()) });
        } else {
            sessions.spawn(idle_until(conn, stop));
        }
    }
    // New clients all along: none may be refused.
    let churn = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut served, mut refused) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                match connect(addr).await {
                    Ok(mut c) => {
                        match c.query_first::<u64, _>("SELECT 1").await {
                            Ok(Some(1)) => served += 1,
                            other => refused.push(format!("{other:?}")),
                        }
                        // Closed now, not by a task the runtime may drop.
                        let _ = c.disconnect().await;
                    }
                    Err(e) => refused.push(e.to_string()),
                }
            }
            (served, refused)
        })
    };
    let mut pid = running.child.id();
    let began = std::time::Instant::now();
    eprintln!(
        "500 sessions open after {:.1}s",
        test_began.elapsed().as_secs_f64()
    );
    for round in 1..=20 {
        let (code, answer) = upgrade(admin, "").await;
        assert_eq!(code, 200, "upgrade {round}: {answer}");
        eprintln!(
            "upgrade {round}: {}",
            answer["outcome"].as_str().unwrap_or_default()
        );
        let new = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
        let logs = running.logs();
        let said: Vec<&str> = logs.lines().filter(|l| l.contains("upgrade")).collect();
        assert!(
            answer["sessions"].as_u64().unwrap() >= 500,
            "{answer} {said:?}"
        );
        let old = pid;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                (!alive(old)).then_some(())
            })
            .await
            .is_some(),
            "the process before upgrade {round} exits"
        );
        pid = new;
    }
    let _ = running.child.wait();
    eprintln!("20 upgrades in {:.1}s", began.elapsed().as_secs_f64());
    stop.cancel();
    let mut broken = Vec::new();
    while let Some(done) = sessions.join_next().await {
        if let Err(why) = done.unwrap() {
            broken.push(why);
        }
    }
    let (served, refused) = churn.await.unwrap();
    assert!(
        broken.is_empty(),
        "{} broken sessions: {:?}",
        broken.len(),
        broken.first()
    );
    assert!(
        refused.is_empty(),
        "{} refused of {}: {:?}",
        refused.len(),
        served + refused.len() as u64,
        refused.first()
    );
    assert!(served > 0);
    eprintln!("sessions ended at {:.1}s", began.elapsed().as_secs_f64());
    // Every session closed: the last process is back to the first's baseline.
    let settled = wait_until(Duration::from_secs(30), || async {
        (resting_fds(pid).await <= baseline).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "{} descriptors open, {baseline} before",
        fds_of(pid)
    );
    end(pid);
}

/// A `mariadb` client process kept open, fed statements line by line.
struct Shell {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Shell {
    fn open(addr: std::net::SocketAddr, extra: &[String]) -> Shell {
        use std::io::BufRead;
        let mut child = std::process::Command::new("mariadb")
            .args([
                "--protocol=tcp",
                "-h",
                &addr.ip().to_string(),
                "-P",
                &addr.port().to_string(),
            ])
            .args(["-u", crate::support::mariadb::USER])
            .arg(format!("-p{}", crate::support::mariadb::PASSWORD))
            .args(["--batch", "--skip-column-names", "--unbuffered"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the mariadb client runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Shell { child, lines }
    }

    /// Sends one statement and returns its one line of output.
    fn ask(&mut self, sql: &str) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no answer to {sql}"))
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_survives_an_upgrade() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("upgrade-tls-{}", std::process::id()));
    let pki = crate::support::certs::make(&dir, "db");
    let db = MariaDb::start_with(&[
        format!("--ssl-ca={}", pki.ca.display()),
        format!("--ssl-cert={}", pki.cert.display()),
        format!("--ssl-key={}", pki.key.display()),
    ])
    .await;
    let (scratch, mut running) = start(&db, "upgrade-tls");
    let dir_of = |_: &Running| scratch.0.clone();
    let admin = running.admin_addr().await;
    let mut shell = Shell::open(
        running.addr,
        &[
            "--ssl".to_owned(),
            format!("--ssl-ca={}", pki.ca.display()),
            "--ssl-verify-server-cert=0".to_owned(),
        ],
    );
    let cipher = shell.ask("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher';");
    assert!(
        !cipher.trim().is_empty(),
        "the client speaks TLS to the server through dbsplice"
    );
    let id = shell.ask("SELECT CONNECTION_ID();");
    // The operator's command this time: it reads the config for the admin
    // address and token.
    let config_path = dir_of(&running).join("dbsplice.toml");
    let out = tokio::process::Command::new(BIN)
        .args(["upgrade", "--admin", &admin.to_string(), "--config"])
        .arg(&config_path)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    let new: u32 = said
        .split("moved to pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the new pid in {said}"));
    let _ = running.child.wait();
    // The same TLS stream, carried on by the new process.
    assert_eq!(shell.ask("SELECT CONNECTION_ID();"), id);
    let after = shell.ask("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher';");
    assert_eq!(after, cipher);
    drop(shell);
    end(new);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_old_process_knew_carries_over() {
    let (db1, db2) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = Scratch::new("upgrade-state");
    std::fs::write(dir.0.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(
        &path,
        with_token_admin(&config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\n",
            &[
                backend(db1.addr(), 1, "primary"),
                backend(db2.addr(), 1, "primary"),
            ],
        )),
    )
    .unwrap();
    let mut running = Running::start(&path, None);
    let admin = running.admin_addr().await;
    let name = db2.addr().to_string();
    let (code, _) = http(
        admin,
        "POST",
        &format!("/api/backends/{name}/drain?for=10m"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = http(admin, "POST", "/api/pools/main/pause?for=5m", Some(TOKEN)).await;
    assert_eq!(code, 200);

    let (code, answer) = upgrade(admin, "").await;
    assert_eq!(code, 200, "{answer}");
    let new = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    let _ = running.child.wait();
    let (_, status) = http(admin, "GET", "/api/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pid"], new, "the new process answers");
    let pool = &status["pools"].as_array().unwrap()[0];
    let paused = pool["paused_for_seconds"].as_f64().unwrap_or(0.0);
    assert!(paused > 200.0, "the operator's pause carries on: {pool}");
    let backends = pool["backends"].as_array().unwrap();
    let drained = backends.iter().find(|b| b["address"] == name).unwrap();
    assert_eq!(drained["admin"]["state"], "drain", "{drained}");
    for b in backends {
        assert_eq!(b["health"], "up", "known up from the first answer: {b}");
    }
    end(new);
}

/// `held_clients` of the first pool, as `/api/status` says.
async fn held_clients(admin: std::net::SocketAddr) -> u64 {
    let (_, status) = http(admin, "GET", "/api/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    status["pools"][0]["held_clients"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_client_is_served_by_the_new_process() {
    let db = MariaDb::start().await;
    let (_dir, mut running) = start(&db, "upgrade-held");
    let admin = running.admin_addr().await;
    let (code, _) = http(admin, "POST", "/api/pools/main/pause?for=60s", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let addr = running.addr;
    let client = tokio::spawn(async move {
        let mut conn = connect(addr).await.map_err(|e| e.to_string())?;
        conn.query_first::<u64, _>("SELECT 1")
            .await
            .map_err(|e| e.to_string())
    });
    wait_until(Duration::from_secs(10), || async {
        (held_clients(admin).await == 1).then_some(())
    })
    .await
    .expect("the client is held while the pool is paused");

    let (code, answer) = upgrade(admin, "").await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["held"], 1, "{answer}");
    let new = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    let _ = running.child.wait();
    wait_until(Duration::from_secs(10), || async {
        (held_clients(admin).await == 1).then_some(())
    })
    .await
    .expect("held in the new process, the pool still paused");
    assert!(
        !client.is_finished(),
        "the client still waits, having seen nothing"
    );
    let (code, _) = http(admin, "POST", "/api/pools/main/resume", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let answered = tokio::time::timeout(Duration::from_secs(10), client).await;
    assert_eq!(
        answered.unwrap().unwrap(),
        Ok(Some(1)),
        "served once the pool resumed"
    );
    end(new);
}
