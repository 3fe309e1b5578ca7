//! Bytes through dbsplice: real clients, limits, half-close, large results,
//! refusals with a readable error, and draining on shutdown.

use std::time::Duration;

use dbsplice::vocabulary::Health;
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{backend, cli, config, connect, server_port, wait_until, MariaDb, Proxy};

const CHECK: &str = "[pool.main.check]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_client_and_driver_get_answers() {
    let db = MariaDb::start().await;
    let proxy = Proxy::start(&config(CHECK, &[backend(db.addr(), 1, "primary")]));
    proxy.wait_health(db.addr(), Health::Up).await;
    let out = cli(proxy.addr("rw"), "SELECT @@port, 6 * 7").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}\t42", db.port)
    );
    let mut conn = connect(proxy.addr("rw")).await.unwrap();
    assert_eq!(server_port(&mut conn).await, db.port);
    conn.disconnect().await.unwrap();
}

/// However the kernel hands out connections to the two workers' accept
/// loops, long-lived sessions end up spread over both, and the ones moved
/// from one worker to the other work like the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_the_worker_threads() {
    let db = MariaDb::start().await;
    let proxy = Proxy::start(&config(CHECK, &[backend(db.addr(), 1, "primary")]));
    proxy.wait_health(db.addr(), Health::Up).await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(connect(proxy.addr("rw")).await.unwrap());
    }
    let spread = proxy.app.as_ref().unwrap().worker_sessions();
    assert_eq!(spread.iter().sum::<usize>(), 10, "{spread:?}");
    assert!(
        spread.iter().max().unwrap() - spread.iter().min().unwrap() <= 2,
        "sessions per worker: {spread:?}"
    );
    for conn in &mut conns {
        assert_eq!(server_port(conn).await, db.port);
    }
    for conn in conns {
        conn.disconnect().await.unwrap();
    }
    let app = proxy.app.as_ref().unwrap();
    let drained = wait_until(Duration::from_secs(10), || async {
        (app.worker_sessions() == [0, 0]).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "every worker's sessions count down: {:?}",
        app.worker_sessions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_backend_gives_a_mysql_error_naming_the_pool() {
    let mut db = MariaDb::start().await;
    let addr = db.addr();
    db.kill();
    let proxy = Proxy::start(&config(CHECK, &[backend(addr, 1, "primary")]));
    proxy.wait_health(addr, Health::Down).await;
    let out = cli(proxy.addr("rw"), "SELECT 1").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Recent clients wrap an error sent before TLS as "cannot be verified";
    // either way the code and the pool reach the user.
    assert!(
        stderr.contains("1040") && stderr.contains("no backend of pool 'main'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_extra_client_and_counts_it() {
    let db = MariaDb::start().await;
    let toml = config(CHECK, &[backend(db.addr(), 1, "primary")]).replace(
        "pool = \"main\"\n",
        "pool = \"main\"\nmax_connections = 2\n",
    );
    let proxy = Proxy::start(&toml);
    proxy.wait_health(db.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let first = connect(addr).await.unwrap();
    let mut second = connect(addr).await.unwrap();
    let out = cli(addr, "SELECT 1").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1040") && stderr.contains("is at max_connections (2)"),
        "{stderr}"
    );
    let stats = proxy.app.as_ref().unwrap().listener_stats("rw").unwrap();
    assert_eq!(
        stats
            .rejected_limit
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        server_port(&mut second).await,
        db.port,
        "open sessions are unaffected"
    );
    first.disconnect().await.unwrap();
    wait_until(Duration::from_secs(5), || async {
        (stats.active() == 1).then_some(())
    })
    .await
    .unwrap();
    let out = cli(addr, "SELECT 1").await;
    assert!(
        out.status.success(),
        "a slot is free again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    second.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_half_close_reaches_the_backend() {
    // A backend that reads until EOF, then answers with the byte count and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_ok() {
                    // The client's EOF arrived: answer on the still-open half.
                    let _ = s
                        .write_all(format!("got {} bytes", got.len()).as_bytes())
                        .await;
                }
            });
        }
    });
    let proxy = Proxy::start(&config(CHECK, &[backend(backend_addr, 1, "primary")]));
    proxy.wait_health(backend_addr, Health::Up).await;
    let mut client = TcpStream::connect(proxy.addr("rw")).await.unwrap();
    client.write_all(&[7u8; 100_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer))
        .await
        .expect("the backend saw the client's EOF and answered")
        .unwrap();
    assert_eq!(answer, "got 100000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_half_close_reaches_the_client() {
    // A backend that speaks, stops sending, and still reads everything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (count_tx, count_rx) = tokio::sync::oneshot::channel();
    let proxy = Proxy::start(&config(
        "[pool.main.check]\nkind = \"tcp\"\ninterval = \"1h\"\n",
        &[backend(backend_addr, 1, "primary")],
    ));
    // Let the checker's connect go by before serving the one real client.
    let (probe, _) = listener.accept().await.unwrap();
    drop(probe);
    proxy.wait_health(backend_addr, Health::Up).await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = count_tx.send(got.len());
    });
    let mut client = TcpStream::connect(proxy.addr("rw")).await.unwrap();
    let mut greeting = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.read_to_string(&mut greeting),
    )
    .await
    .expect("the backend's EOF reached the client")
    .unwrap();
    assert_eq!(greeting, "hello");
    client.write_all(&[1u8; 50_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let count = tokio::time::timeout(Duration::from_secs(10), count_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        count, 50_000,
        "the client could still send after the backend's half-close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_only_silent_sessions() {
    let db = MariaDb::start().await;
    let toml = config(CHECK, &[backend(db.addr(), 1, "primary")]).replace(
        "pool = \"main\"\n",
        "pool = \"main\"\nidle_timeout = \"400ms\"\n",
    );
    let proxy = Proxy::start(&toml);
    proxy.wait_health(db.addr(), Health::Up).await;
    // A busy session outlives the timeout many times over.
    let mut busy = connect(proxy.addr("rw")).await.unwrap();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        busy.query_drop("DO 1")
            .await
            .expect("an active session is never idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A silent one (greeting read, then nothing) is closed after the timeout.
    // Taken before connecting: the greeting, the last byte dbsplice sees, cannot
    // move before the connect starts, and dbsplice's own clock may start first.
    let opened = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(proxy.addr("rw")).await.unwrap();
    let mut greeting_and_rest = Vec::new();
    // Within 5 s: the server's own handshake timeout (10 s) must not be what closes it.
    tokio::time::timeout(
        Duration::from_secs(5),
        silent.read_to_end(&mut greeting_and_rest),
    )
    .await
    .expect("dbsplice closed the idle session")
    .unwrap();
    assert!(
        opened.elapsed() >= Duration::from_millis(400),
        "not before the timeout: {:?}",
        opened.elapsed()
    );
    assert!(
        !greeting_and_rest.is_empty(),
        "the greeting came through first"
    );
    busy.disconnect().await.unwrap();
}

/// A session one side has closed ends at `half_close_timeout`: a backend
/// that closed (a KILL) under a client that stays, and
/// a client that left while its server hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_sessions_end_at_the_half_close_timeout() {
    let db = MariaDb::start().await;
    let toml = config(CHECK, &[backend(db.addr(), 1, "primary")]).replace(
        "pool = \"main\"\n",
        "pool = \"main\"\nhalf_close_timeout = \"700ms\"\n",
    );
    let proxy = Proxy::start(&toml);
    proxy.wait_health(db.addr(), Health::Up).await;
    let state = proxy.backend(db.addr());
    let gone = || async { (state.active() == 0).then_some(tokio::time::Instant::now()) };

    // The server ends a session (KILL); the client, idle in its pool, stays.
    let stays = connect(proxy.addr("rw")).await.unwrap();
    let mut admin = db.admin().await;
    admin
        .query_drop(format!("KILL {}", stays.id()))
        .await
        .unwrap();
    let killed = tokio::time::Instant::now();
    drop(admin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state.active(), 1, "half-closed, not yet ended");
    let ended = wait_until(Duration::from_secs(10), gone)
        .await
        .expect("the half-closed session ended");
    assert!(
        ended - killed >= Duration::from_millis(600),
        "ended {:?} after the backend's close",
        ended - killed
    );
    drop(stays);

    // The client leaves while the server is frozen and never answers.
    db.pause();
    let mut leaves = TcpStream::connect(proxy.addr("rw")).await.unwrap();
    let opened = wait_until(Duration::from_secs(5), || async {
        (state.active() == 1).then_some(())
    })
    .await;
    assert!(opened.is_some(), "the session reached the frozen server");
    leaves.shutdown().await.unwrap();
    let client_closed = tokio::time::Instant::now();
    let ended = wait_until(Duration::from_secs(10), gone).await;
    db.resume();
    let ended = ended.expect("the session to a hung server ended after the client left");
    assert!(ended - client_closed >= Duration::from_millis(600));
    drop(leaves);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_result_arrives_byte_exact() {
    let db = MariaDb::start().await;
    let proxy = Proxy::start(&config(CHECK, &[backend(db.addr(), 1, "primary")]));
    proxy.wait_health(db.addr(), Health::Up).await;
    let mut conn = connect(proxy.addr("rw")).await.unwrap();
    conn.query_drop("CREATE DATABASE t").await.unwrap();
    conn.query_drop("CREATE TABLE t.blobs (id INT PRIMARY KEY, body LONGBLOB)")
        .await
        .unwrap();
    // 64 rows of 1 MiB from a seeded generator: no two rows alike.
    let mut rng = fastrand::Rng::with_seed(42);
    let rows: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..1 << 20).map(|_| rng.u8(..)).collect())
        .collect();
    for (id, body) in rows.iter().enumerate() {
        conn.exec_drop("INSERT INTO t.blobs VALUES (?, ?)", (id, body))
            .await
            .unwrap();
    }
    let back: Vec<(usize, Vec<u8>)> = conn
        .query("SELECT id, body FROM t.blobs ORDER BY id")
        .await
        .unwrap();
    assert_eq!(back.len(), 64);
    for (id, body) in back {
        assert!(body == rows[id], "row {id} differs");
    }
    // The server's own digest of what it stored agrees with ours.
    let server_md5: String = conn
        .query_first("SELECT MD5(body) FROM t.blobs WHERE id = 63")
        .await
        .unwrap()
        .unwrap();
    let ours: String = conn
        .exec_first("SELECT MD5(?)", (&rows[63],))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server_md5, ours);
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_closes_what_is_left() {
    let db = MariaDb::start().await;
    let mut proxy = Proxy::start(&config(CHECK, &[backend(db.addr(), 1, "primary")]));
    proxy.wait_health(db.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let mut open = connect(addr).await.unwrap();
    let app = proxy.app.take().unwrap();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(app.shutdown(Duration::from_millis(1500)).await);
    });
    // Draining: no new client is accepted, the open session still works.
    wait_until(Duration::from_secs(5), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await
    .expect("the listener stops accepting");
    assert_eq!(server_port(&mut open).await, db.port);
    assert!(
        done_rx.try_recv().is_err(),
        "shutdown waits for the open session"
    );
    // After the grace the session is closed for it.
    let forced = tokio::time::timeout(Duration::from_secs(10), done_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(forced, 1);
    assert!(
        open.query_drop("SELECT 1").await.is_err(),
        "the session was closed"
    );
}

/// Connects from `source` and reads what arrives until EOF or 2 s.
async fn first_bytes_from(source: &str, to: std::net::SocketAddr) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => b"(no EOF)".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_refuses_clients_before_any_backend_is_touched() {
    let db = MariaDb::start().await;
    let toml = config(CHECK, &[backend(db.addr(), 1, "primary")]).replace(
        "pool = \"main\"\n",
        "pool = \"main\"\nallow = [\"127.0.0.2/32\", \"10.0.0.0/8\"]\n",
    );
    let proxy = Proxy::start(&toml);
    proxy.wait_health(db.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let sessions = proxy.backend(db.addr()).total();
    let denied = first_bytes_from("127.0.0.3", addr).await;
    assert!(denied.is_empty(), "closed without a byte: {denied:?}");
    assert_eq!(
        proxy.backend(db.addr()).total(),
        sessions,
        "no backend was touched"
    );
    let stats = proxy.app.as_ref().unwrap().listener_stats("rw").unwrap();
    assert_eq!(
        stats
            .rejected_access
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let allowed = first_bytes_from("127.0.0.2", addr).await;
    assert_eq!(
        allowed.get(4),
        Some(&10),
        "an allowed client gets the server's greeting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_shows_the_client_address_to_the_server() {
    // Only dbsplice's own address may send PROXY headers.
    let db = MariaDb::start_with(&["--proxy-protocol-networks=127.0.0.1".to_owned()]).await;
    for version in ["v1", "v2"] {
        let check = crate::support::mysql_check("check", "checkpw", "");
        let toml = config(
            &format!("send_proxy = \"{version}\"\n{check}"),
            &[backend(db.addr(), 1, "primary")],
        );
        let proxy = Proxy::start(&toml);
        proxy.wait_health(db.addr(), Health::Up).await; // probes send LOCAL headers
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        let stream = socket.connect(proxy.addr("rw")).await.unwrap();
        let client = stream.local_addr().unwrap();
        let sql = "SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()";
        let host = crate::support::fake::query_over(stream, "dbsplice", "secret", sql).await;
        assert_eq!(
            host,
            Some(client.to_string()),
            "{version}: the server sees the client itself, not dbsplice"
        );
    }
}
