//! The `dbsplice` binary as operators run it: `check` and the run lifecycle.

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::binary::{http, sample, Running, BIN};
use crate::support::{
    backend, closed_within, config, connect, server_port, session_on, wait_until, with_token_admin,
    MariaDb,
};

fn check(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_example_config_passes_check() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/dbsplice.toml");
    let (code, text) = check(&example);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("pool main: least-connections"), "{text}");
}

#[test]
fn broken_configs_exit_64_naming_the_mistake() {
    let good = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/dbsplice.toml"),
    )
    .unwrap();
    let cases = [
        (
            "weight0.toml",
            good.replacen("weight = 1", "weight = 0", 1),
            "weight 0",
        ),
        (
            "unknown.toml",
            good.replacen("weight = 1", "wieght = 1", 1),
            "unknown field `wieght`",
        ),
        (
            "missing-pool.toml",
            good.replacen("pool = \"main\"", "pool = \"other\"", 1),
            "listener[0].pool",
        ),
        (
            "not-toml.toml",
            "this is not toml\n".to_owned(),
            "not-toml.toml:1:",
        ),
        ("empty.toml", String::new(), "no listener"),
    ];
    for (name, text, want) in cases {
        let path = scratch(name, &text);
        let (code, out) = check(&path);
        assert_eq!(code, 64, "{name}: {out}");
        assert!(out.contains(name) && out.contains(want), "{name}: {out}");
    }
    let (code, out) = check(std::path::Path::new("/nonexistent/dbsplice.toml"));
    assert_eq!(code, 64);
    assert!(out.contains("/nonexistent/dbsplice.toml"), "{out}");
}

#[test]
fn check_diff_prints_what_a_reload_would_change() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/dbsplice.toml");
    let good = std::fs::read_to_string(&example).unwrap();
    let new = scratch("new.toml", &good.replacen("weight = 1", "weight = 7", 1));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&new)
        .arg("--diff")
        .arg(&example)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("reload from") && text.contains("backends changed: main/db1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_then_exits_0_on_sigterm() {
    let db = MariaDb::start().await;
    let path = scratch(
        "run.toml",
        &config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
            &[backend(db.addr(), 1, "primary")],
        ),
    );
    let running = Running::start(&path, None);
    let addr = running.addr;
    let mut conn = wait_until(Duration::from_secs(20), || async {
        connect(addr).await.ok()
    })
    .await
    .expect("dbsplice serves clients");
    assert_eq!(server_port(&mut conn).await, db.port);
    conn.disconnect().await.unwrap();
    let logs = running.logs.clone();
    running.stop().await;
    assert!(
        logs.lock().unwrap().contains("SIGTERM"),
        "the signal is logged"
    );
}

/// Sends `ping` through a connection and waits for the echo.
async fn echoes(stream: &mut TcpStream) -> bool {
    let round_trip = async {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        (&buf == b"ping").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(2), round_trip)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_survives_running_out_of_file_descriptors() {
    // An echo backend that holds every connection open.
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend_listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend_listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let path = scratch(
        "emfile.toml",
        &config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"1h\"\n",
            &[backend(backend_addr, 1, "primary")],
        ),
    );
    let running = Running::start(&path, Some(48));
    let addr = running.addr;
    wait_until(Duration::from_secs(20), || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        echoes(&mut s).await.then_some(())
    })
    .await
    .expect("dbsplice serves before the flood");

    // Far more clients than 48 descriptors allow: some are served, the rest
    // wait in the backlog while accept fails with EMFILE.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until(Duration::from_secs(20), || async {
        running
            .logs()
            .contains("out of file descriptors")
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("accept hit EMFILE: {}", running.logs()));
    drop(clients);

    // Once the load is gone, new clients are served again.
    wait_until(Duration::from_secs(30), || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        echoes(&mut s).await.then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("dbsplice recovered: {}", running.logs()));
    running.stop().await;
}

/// A config that sends the `rw` listener to `db`, polling the file only hourly:
/// every reload below comes from the directory watch (or SIGHUP).
fn routed_to(db: &MariaDb) -> String {
    format!(
        "reload_poll = \"1h\"\n{}",
        config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
            &[backend(db.addr(), 1, "primary")]
        )
    )
}

async fn serves(addr: std::net::SocketAddr, db: &MariaDb) {
    let port = db.port;
    wait_until(Duration::from_secs(5), || async {
        let mut conn = connect(addr).await.ok()?;
        let got = server_port(&mut conn).await;
        let _ = conn.disconnect().await;
        (got == port).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the edit reached dbsplice: expected port {port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_editing_the_file_is_picked_up() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = crate::support::Scratch::new("edits");
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(&path, routed_to(&a)).unwrap();
    let running = Running::start(&path, None);
    let addr = running.addr;
    serves(addr, &a).await;

    // In place (truncate and write).
    std::fs::write(&path, routed_to(&b)).unwrap();
    serves(addr, &b).await;
    // Rename over (vim, sed -i, Ansible, install).
    let tmp = dir.0.join(".dbsplice.toml.swp");
    std::fs::write(&tmp, routed_to(&a)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    serves(addr, &a).await;
    // Delete and re-create.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, routed_to(&b)).unwrap();
    serves(addr, &b).await;
    // A broken edit keeps the running config; the next good one applies.
    std::fs::write(&path, "[[listener]]\nname = \"rw\"\nthis is broken\n").unwrap();
    wait_until(Duration::from_secs(5), || async {
        running.logs().contains("reload rejected").then_some(())
    })
    .await
    .unwrap();
    serves(addr, &b).await;
    // A slow writer: half the file, a pause shorter than the debounce, the rest.
    let text = routed_to(&a);
    let (head, tail) = text.split_at(text.len() / 2);
    let mut file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut file, head.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::io::Write::write_all(&mut file, tail.as_bytes()).unwrap();
    drop(file);
    serves(addr, &a).await;
    let logs = running.logs();
    assert_eq!(
        logs.matches("config reloaded").count(),
        4,
        "one reload per good edit: {logs}"
    );

    // SIGHUP: the config is a symlink to a file in a directory nobody watches.
    let elsewhere = crate::support::Scratch::new("edits-elsewhere");
    let target = elsewhere.0.join("real.toml");
    std::fs::write(&target, routed_to(&a)).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    // The symlink's creation is an event, read once the debounce is over:
    // the same content as running, so nothing changes.
    wait_until(Duration::from_secs(5), || async {
        running.logs().contains("config unchanged").then_some(())
    })
    .await
    .expect("the symlink swap was read");
    std::fs::write(&target, routed_to(&b)).unwrap();
    // No event reaches the watch; after more than the debounce, the old
    // config still serves...
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut conn = connect(addr).await.unwrap();
    assert_eq!(
        server_port(&mut conn).await,
        a.port,
        "an unwatched change is not applied by itself"
    );
    conn.disconnect().await.unwrap();
    // ...until SIGHUP.
    let status = Command::new("kill")
        .args(["-HUP", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    serves(addr, &b).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_symlink_swap_is_picked_up() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = crate::support::Scratch::new("configmap");
    // The layout a kubelet writes: dbsplice.toml -> ..data/dbsplice.toml,
    // ..data -> ..<timestamp>, swapped by renaming a new ..data link over it.
    let version = |name: &str, text: String| {
        let v = dir.0.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("dbsplice.toml"), text).unwrap();
    };
    version("..2026_11_26_1", routed_to(&a));
    std::os::unix::fs::symlink("..2026_11_26_1", dir.0.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/dbsplice.toml", dir.0.join("dbsplice.toml")).unwrap();
    let running = Running::start(&dir.0.join("dbsplice.toml"), None);
    serves(running.addr, &a).await;
    version("..2026_11_26_2", routed_to(&b));
    std::os::unix::fs::symlink("..2026_11_26_2", dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.0.join("..2026_11_26_1")).unwrap();
    serves(running.addr, &b).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_catches_what_no_event_reports() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let (dir, elsewhere) = (
        crate::support::Scratch::new("poll"),
        crate::support::Scratch::new("poll-target"),
    );
    // The file lives in a directory nobody watches; only the poll sees edits.
    let target = elsewhere.0.join("real.toml");
    let polled =
        |db: &MariaDb| routed_to(db).replace("reload_poll = \"1h\"", "reload_poll = \"300ms\"");
    std::fs::write(&target, polled(&a)).unwrap();
    let path = dir.0.join("dbsplice.toml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let running = Running::start(&path, None);
    serves(running.addr, &a).await;
    std::fs::write(&target, polled(&b)).unwrap();
    serves(running.addr, &b).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_and_acts_with_a_token() {
    let db = MariaDb::start().await;
    let dir = crate::support::Scratch::new("admin");
    std::fs::write(dir.0.join("admin.token"), "tok-123456\n").unwrap();
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(
        &path,
        with_token_admin(&config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
            &[backend(db.addr(), 1, "primary")],
        )),
    )
    .unwrap();
    let running = Running::start(&path, None);
    let admin = running.admin_addr().await;

    assert_eq!(http(admin, "GET", "/healthz", None).await.0, 200);
    let (code, page) = http(admin, "GET", "/", None).await;
    assert_eq!(code, 200);
    let (code, script) = http(admin, "GET", "/page.js", None).await;
    assert_eq!(code, 200);
    assert!(
        page.contains("<title>dbsplice</title>")
            && page.contains("/page.js")
            && script.contains("/api/status"),
        "the status page"
    );
    for text in [
        &page,
        &script,
        &http(admin, "GET", "/page.css", None).await.1,
    ] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "nothing fetched from the internet"
        );
    }
    // A page on another site reaching this server by a name of its own
    // (DNS rebinding) reads nothing; every answer forbids framing.
    let raw = |host: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        let request =
            format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
            .await
            .unwrap();
        answer
    };
    let rebound = raw("attacker.example:9306").await;
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    assert!(!rebound.contains("\"pools\""), "{rebound}");
    let ours = raw("127.0.0.1").await.to_ascii_lowercase();
    assert!(ours.starts_with("http/1.1 200"), "{ours}");
    assert!(
        ours.contains("x-frame-options: deny")
            && ours.contains("content-security-policy: default-src 'none'"),
        "{ours}"
    );
    wait_until(Duration::from_secs(10), || async {
        (http(admin, "GET", "/readyz", None).await.0 == 200).then_some(())
    })
    .await
    .expect("ready once the backend was probed");
    let (code, status) = http(admin, "GET", "/api/status", None).await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["pools"][0]["backends"][0]["health"], "up",
        "{status}"
    );
    assert_eq!(status["pools"][0]["backends"][0]["eligible"], true);
    // Which build runs, as dbsplice_build_info says it.
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let commit = status["commit"].as_str().unwrap().to_owned();
    assert!(!commit.is_empty(), "{status}");
    let build = http(admin, "GET", "/metrics", None).await.1;
    assert!(
        build.contains(&format!(
            "dbsplice_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{build}"
    );

    // Known traffic, then a scrape with matching figures.
    let scrape = http(admin, "GET", "/metrics", None).await.1;
    let accepted = sample(
        &scrape,
        &format!(
            "{}{{listener=\"rw\"}}",
            dbsplice::metrics::LISTENER_ACCEPTED.0
        ),
    )
    .unwrap_or(0.0);
    for _ in 0..5 {
        let mut conn = connect(running.addr).await.unwrap();
        server_port(&mut conn).await;
        conn.disconnect().await.unwrap();
    }
    let scrape = http(admin, "GET", "/metrics", None).await.1;
    assert_eq!(
        sample(
            &scrape,
            &format!(
                "{}{{listener=\"rw\"}}",
                dbsplice::metrics::LISTENER_ACCEPTED.0
            )
        ),
        Some(accepted + 5.0),
        "{scrape}"
    );
    assert!(
        scrape.contains(&format!("# HELP {}", dbsplice::metrics::BACKEND_UP.0)),
        "{scrape}"
    );
    let up = format!(
        "{metric}{{pool=\"main\",backend=\"{0}\",address=\"{0}\"}}",
        db.addr(),
        metric = dbsplice::metrics::BACKEND_UP.0,
    );
    assert_eq!(sample(&scrape, &up), Some(1.0), "{scrape}");
    assert_eq!(
        sample(&scrape, dbsplice::metrics::CONFIG_GENERATION.0),
        Some(1.0)
    );
    let labels = format!("pool=\"main\",backend=\"{0}\",address=\"{0}\"", db.addr());
    let bytes = sample(
        &scrape,
        &format!(
            "{metric}{{{labels},direction=\"to_client\"}}",
            metric = dbsplice::metrics::BACKEND_BYTES.0
        ),
    );
    assert!(
        bytes.is_some_and(|b| b > 5.0 * 50.0),
        "five greetings and results at least: {bytes:?}"
    );
    let probes = sample(
        &scrape,
        &format!(
            "{metric}{{{labels},outcome=\"pass\"}}",
            metric = dbsplice::metrics::BACKEND_PROBES.0
        ),
    );
    assert!(probes.is_some_and(|p| p >= 1.0), "{scrape}");
    let refused = sample(
        &scrape,
        &format!(
            "{metric}{{{labels},reason=\"refused\"}}",
            metric = dbsplice::metrics::BACKEND_CONNECT_FAILURES_BY_REASON.0
        ),
    );
    assert_eq!(refused, Some(0.0));
    assert!(
        scrape.contains(&format!(
            "{metric}_bucket{{address=\"{}\",le=\"0.005\"}}",
            db.addr(),
            metric = dbsplice::metrics::BACKEND_PROBE_DURATION.0,
        )),
        "{scrape}"
    );
    assert!(sample(&scrape, dbsplice::metrics::PROCESS_OPEN_FDS.0).is_some_and(|n| n > 3.0));
    assert!(sample(
        &scrape,
        &format!("{} ", dbsplice::metrics::PROCESS_MAX_SESSIONS.0)
    )
    .is_some_and(|n| n >= 16.0));
    assert!(sample(
        &scrape,
        &format!("{} ", dbsplice::metrics::PROCESS_SESSIONS.0)
    )
    .is_some());
    // The series every Prometheus exporter has, and the build.
    use dbsplice::metrics as m;
    assert!(sample(&scrape, m::PROCESS_RESIDENT_MEMORY.0).is_some_and(|b| b > 1e6));
    assert!(sample(&scrape, m::PROCESS_CPU_SECONDS.0).is_some_and(|s| s >= 0.0));
    assert!(sample(&scrape, m::PROCESS_OPEN_FDS_STD.0).is_some_and(|n| n > 3.0));
    assert!(sample(&scrape, m::PROCESS_MAX_FDS_STD.0).is_some_and(|n| n >= 16.0));
    let started = sample(&scrape, m::PROCESS_START_TIME.0).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && started > now - 600.0,
        "started {started}, now {now}"
    );
    assert!(
        scrape.contains(&format!(
            "{}{{version=\"{}\",commit=\"",
            m::BUILD_INFO.0,
            env!("CARGO_PKG_VERSION")
        )),
        "{scrape}"
    );
    assert_grouped(&scrape);

    // Refusals.
    assert_eq!(
        http(admin, "POST", "/api/reload", None).await.0,
        401,
        "no token"
    );
    assert_eq!(
        http(admin, "POST", "/api/reload", Some("wrong")).await.0,
        401,
        "wrong token"
    );
    assert_eq!(
        http(admin, "GET", "/api/reload", Some("tok-123456"))
            .await
            .0,
        405,
        "wrong method"
    );
    assert_eq!(http(admin, "POST", "/api/status", None).await.0, 405);
    assert_eq!(http(admin, "GET", "/nope", None).await.0, 404);
    assert_eq!(
        http(
            admin,
            "POST",
            "/api/pools/nope/failback",
            Some("tok-123456")
        )
        .await
        .0,
        404
    );

    // Actions with the token.
    let (code, body) = http(admin, "POST", "/api/reload", Some("tok-123456")).await;
    assert_eq!((code, body.contains("unchanged")), (200, true), "{body}");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("weight = 1", "weight = 4"),
    )
    .unwrap();
    let (code, body) = http(admin, "POST", "/api/reload", Some("tok-123456")).await;
    assert!(
        code == 200 && (body.contains("applied") || body.contains("unchanged")),
        "{code} {body}"
    );
    wait_until(Duration::from_secs(5), || async {
        let s = http(admin, "GET", "/api/status", None).await.1;
        s.contains("\"weight\":4").then_some(())
    })
    .await
    .expect("the reload shows in the status");
    assert_eq!(
        http(
            admin,
            "POST",
            "/api/pools/main/failback",
            Some("tok-123456")
        )
        .await
        .0,
        200
    );

    // The CLI: token from the config's token_file, address given (port 0 in the file).
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&path)
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let name = db.addr().to_string();
    let (code, table) = cli(&["status"]);
    assert_eq!(code, Some(0), "{table}");
    assert!(
        table.starts_with("POOL") && table.contains(&name) && table.contains(" up "),
        "{table}"
    );
    assert_eq!(cli(&["drain", &name, "--for", "1m"]).0, Some(0));
    assert!(cli(&["status"]).1.contains("drain"));
    assert_eq!(cli(&["enable", &name]).0, Some(0));
    let (code, out) = cli(&["reload"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = cli(&["drain", "nope"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("404"), "{out}");
    // Pause and resume a pool.
    let (code, out) = cli(&["pause", "main", "--for", "30s"]);
    assert_eq!(code, Some(0), "{out}");
    let status = http(admin, "GET", "/api/status", None).await.1;
    assert!(status.contains("\"paused_for_seconds\":"), "{status}");
    assert!(!status.contains("\"paused_for_seconds\":null"), "{status}");
    let (code, out) = cli(&["resume", "main"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"released\""), "{out}");
    let status = http(admin, "GET", "/api/status", None).await.1;
    assert!(status.contains("\"paused_for_seconds\":null"), "{status}");
    assert!(
        status.contains("paused for 30s by admin API"),
        "on the timeline: {status}"
    );
    let (code, out) = cli(&["pause", "nope"]);
    assert!(code == Some(1) && out.contains("404"), "{out}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_disable_and_enable_steer_routing_and_survive_a_reload() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let dir = crate::support::Scratch::new("overrides");
    std::fs::write(dir.0.join("admin.token"), "tok").unwrap();
    let path = dir.0.join("dbsplice.toml");
    let write = |weight: u32| {
        let body = config(
            "balance = \"weighted-round-robin\"\n[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
            &[backend(a.addr(), weight, "primary"), backend(b.addr(), 1, "primary")],
        );
        std::fs::write(
            &path,
            format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n{body}")
                .replacen("shutdown_grace = \"5s\"\n", "", 1),
        )
        .unwrap();
    };
    write(1);
    let running = Running::start(&path, None);
    let admin = running.admin_addr().await;
    let addr = running.addr;
    let ports = |n: usize| async move {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            // Before the first probes pass there is no backend: an empty set.
            let Ok(mut conn) = connect(addr).await else {
                return std::collections::HashSet::new();
            };
            seen.insert(server_port(&mut conn).await);
            conn.disconnect().await.unwrap();
        }
        seen
    };
    wait_until(Duration::from_secs(10), || async {
        (ports(4).await.len() == 2).then_some(())
    })
    .await
    .unwrap();
    let (name_a, name_b) = (a.addr().to_string(), b.addr().to_string());

    // Drain a: new sessions only to b; a session already on a continues.
    let mut on_a = session_on(addr, a.port).await;
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/api/backends/{name_a}/drain"),
            Some("tok")
        )
        .await
        .0,
        200
    );
    wait_until(Duration::from_secs(5), || async {
        (ports(4).await == [b.port].into()).then_some(())
    })
    .await
    .expect("drained");
    assert_eq!(
        server_port(&mut on_a).await,
        a.port,
        "a drained backend keeps its sessions"
    );
    let why = http(admin, "GET", &format!("/api/backends/{name_a}/why"), None)
        .await
        .1;
    assert!(why.contains("an operator set it to drain"), "{why}");
    assert!(http(admin, "GET", "/api/status", None)
        .await
        .1
        .contains("\"state\":\"drain\""));

    // An unrelated reload keeps the override.
    write(2);
    wait_until(Duration::from_secs(5), || async {
        http(admin, "GET", "/api/status", None)
            .await
            .1
            .contains("\"weight\":2")
            .then_some(())
    })
    .await
    .expect("reloaded");
    assert_eq!(
        ports(4).await,
        [b.port].into(),
        "the drain survives the reload"
    );

    // Enable a; disable b, which closes b's sessions at once.
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/api/backends/{name_a}/enable"),
            Some("tok")
        )
        .await
        .0,
        200
    );
    let mut on_b = session_on(addr, b.port).await;
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/api/backends/{name_b}/disable?for=1s"),
            Some("tok")
        )
        .await
        .0,
        200
    );
    assert!(
        closed_within(&mut on_b, Duration::from_secs(5)).await,
        "disable closes open sessions"
    );
    assert_eq!(ports(4).await, [a.port].into());
    wait_until(Duration::from_secs(10), || async {
        (ports(4).await.len() == 2).then_some(())
    })
    .await
    .expect("the timed disable lapsed by itself");
    assert_eq!(
        http(admin, "POST", "/api/backends/nope/drain", Some("tok"))
            .await
            .0,
        404
    );
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/api/backends/{name_a}/drain?for=soon"),
            Some("tok")
        )
        .await
        .0,
        400
    );
    on_a.disconnect().await.unwrap();
    running.stop().await;
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana-dashboard.json"),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"),
    )
    .unwrap();
    let mut used = 0;
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("dbsplice_") || w.starts_with("process_"))
            {
                assert!(
                    source.contains(&format!("\"{name}\"")),
                    "{name} in the dashboard is not exported"
                );
                used += 1;
            }
        }
    }
    assert!(used >= 10);
}

/// Headless Chromium as the probe starts it here: no sandbox as root, and no
/// background networking (this machine reaches no internet).
pub(crate) fn chromium(profile: &std::path::Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
    ])
    .args([
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_backend_states_in_a_browser() {
    let (up, mut down) = tokio::join!(MariaDb::start(), MariaDb::start());
    down.kill();
    let dir = crate::support::Scratch::new("page");
    let path = dir.0.join("dbsplice.toml");
    let body = config(
        "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
        &[
            backend(up.addr(), 1, "primary"),
            backend(down.addr(), 1, "primary"),
        ],
    );
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            body.replacen("shutdown_grace = \"5s\"\n", "", 1)
        ),
    )
    .unwrap();
    let running = Running::start(&path, None);
    let admin = running.admin_addr().await;
    wait_until(Duration::from_secs(10), || async {
        (http(admin, "GET", "/readyz", None).await.0 == 200).then_some(())
    })
    .await
    .unwrap();
    let url = format!("http://{admin}/");
    let profile = dir.0.join("chromium-profile");
    let page = chromium(&profile)
        .args(["--virtual-time-budget=5000", "--dump-dom", &url])
        .output()
        .expect("chromium runs (scripts/deps installs it)");
    let dom = String::from_utf8_lossy(&page.stdout);
    assert!(
        dom.contains(&format!(
            "data-backend=\"{}\" data-health=\"up\"",
            up.addr()
        )),
        "{dom}"
    );
    assert!(
        dom.contains(&format!(
            "data-backend=\"{}\" data-health=\"down\"",
            down.addr()
        )),
        "{dom}"
    );
    assert!(
        dom.contains("connection refused"),
        "reasons are shown: {dom}"
    );
    // Labels that say what they mean, the why on hover, and a legend.
    assert!(
        dom.contains("data-state=\"in rotation\"") && dom.contains("data-state=\"down\""),
        "{dom}"
    );
    assert!(
        dom.contains("title=\"its health check fails: connection refused"),
        "the why text on hover: {dom}"
    );
    for label in [
        "held down: flapping",
        "not writer",
        "lagging",
        "drained",
        "disabled",
    ] {
        assert!(dom.contains(label), "the legend explains {label}: {dom}");
    }
    // The timeline has the backend going down, with its reason and a time.
    let timeline = dom
        .split("id=\"timeline\"")
        .nth(1)
        .expect("a timeline table");
    assert!(
        timeline.contains("data-kind=\"backend\"")
            && timeline.contains(&format!(
                "{} down (was unknown): connection refused",
                down.addr()
            )),
        "{timeline}"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = chromium(&profile)
        .args(["--virtual-time-budget=5000", "--window-size=1300,1100"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success() && shot.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    running.stop().await;
}

/// GET over HTTPS trusting `ca`: the status code, or the TLS error.
async fn https_get(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    path: &str,
) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_speaks_https_and_picks_up_new_certificates_on_reload() {
    let db = MariaDb::start().await;
    let dir = crate::support::Scratch::new("admin-tls");
    let first = crate::support::certs::make(&dir.0, "first");
    let second = crate::support::certs::make(&dir.0, "second");
    let path = dir.0.join("dbsplice.toml");
    let write = |pki: &crate::support::certs::Pki| {
        let body = config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\n",
            &[backend(db.addr(), 1, "primary")],
        );
        let admin = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        );
        std::fs::write(
            &path,
            format!(
                "{admin}{}",
                body.replacen("shutdown_grace = \"5s\"\n", "", 1)
            ),
        )
        .unwrap();
    };
    write(&first);
    let running = Running::start(&path, None);
    let admin = running.admin_addr().await;
    assert_eq!(https_get(admin, &first.ca, "/healthz").await, Ok(200));
    assert!(
        https_get(admin, &second.ca, "/healthz").await.is_err(),
        "a certificate from another CA is refused"
    );
    // The CLI speaks HTTPS to it: trusting the config's own certificate, a
    // CA it is given, or nothing with --insecure; never another CA's.
    let cli = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("status")
            .arg("--config")
            .arg(&path)
            .args(["--admin", &admin.to_string()])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let first_ca = first.ca.display().to_string();
    let second_ca = second.ca.display().to_string();
    for extra in [&[][..], &["--ca-file", &first_ca], &["--insecure"]] {
        let (code, out) = cli(extra);
        assert_eq!(code, Some(0), "{extra:?}: {out}");
        assert!(out.starts_with("POOL"), "{extra:?}: {out}");
    }
    let (code, out) = cli(&["--ca-file", &second_ca]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("HTTPS") && out.contains("--insecure"), "{out}");
    write(&second);
    wait_until(Duration::from_secs(5), || async {
        (https_get(admin, &second.ca, "/healthz").await == Ok(200)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the reload brought the new certificate: {}", running.logs()));
    assert!(https_get(admin, &first.ca, "/healthz").await.is_err());
    running.stop().await;
}

#[test]
fn the_kubernetes_example_config_is_valid() {
    // Cluster DNS names and mounted secrets exist only in a cluster: resolve
    // every name to loopback and leave the secret files unread.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/kubernetes/dbsplice.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cluster_dns =
        |a: &dbsplice::config::Address| Ok(std::net::SocketAddr::from(([127, 0, 0, 1], a.port)));
    let config = dbsplice::config::Config::from_toml(&path, &text, &cluster_dns)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.pools.len(), 2);
}

#[test]
fn the_install_script_never_overwrites_the_config_and_keeps_secrets_private() {
    use std::os::unix::fs::PermissionsExt;
    let stage = crate::support::Scratch::new("install");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
    let install = || {
        Command::new(&script)
            .args(["--binary", BIN])
            .env("DESTDIR", &stage.0)
            .output()
            .unwrap()
    };
    let out = install();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etc = stage.0.join("etc/dbsplice");
    for (file, mode) in [
        ("dbsplice.toml", 0o640),
        ("check.password", 0o640),
        ("admin.token", 0o640),
    ] {
        let meta = std::fs::metadata(etc.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    assert_eq!(
        std::fs::metadata(&etc).unwrap().permissions().mode() & 0o777,
        0o750
    );
    assert!(stage.0.join("usr/bin/dbsplice").exists());
    assert!(stage.0.join("lib/systemd/system/dbsplice.service").exists());
    // The manual and completions come from the binary's own definition.
    let man = std::fs::read(stage.0.join("usr/share/man/man1/dbsplice-drain.1.gz")).unwrap();
    assert_eq!(
        &man[..2],
        b"\x1f\x8b",
        "gzipped, as Debian puts manual pages"
    );
    let bash = std::fs::read_to_string(
        stage
            .0
            .join("usr/share/bash-completion/completions/dbsplice"),
    )
    .unwrap();
    assert!(
        bash.contains("failback") && bash.contains("--token-file"),
        "{bash}"
    );
    assert!(
        !bash.contains("assets"),
        "the packaging helper is not offered"
    );
    std::fs::write(etc.join("dbsplice.toml"), "# edited by the operator\n").unwrap();
    std::fs::write(etc.join("check.password"), "s3cret\n").unwrap();
    assert!(install().status.success());
    assert_eq!(
        std::fs::read_to_string(etc.join("dbsplice.toml")).unwrap(),
        "# edited by the operator\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("check.password")).unwrap(),
        "s3cret\n"
    );
}

/// Passwords and tokens an operator configures never show up in the logs,
/// the status API, the backend explanation or the metrics: not the check
/// password that works, not the one that failed, not the admin token, not a
/// wrong token a client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_status_or_metrics() {
    const GOOD_PASSWORD: &str = "pw-Secret-93f2";
    const WRONG_PASSWORD: &str = "pw-Wrong-55c0";
    const TOKEN: &str = "tok-Secret-7a1b";
    const WRONG_TOKEN: &str = "tok-Bad-0000";
    let db = MariaDb::start().await;
    let mut root = db.admin().await;
    mysql_async::prelude::Queryable::query_drop(
        &mut root,
        format!("CREATE USER 'vault'@'%' IDENTIFIED BY '{GOOD_PASSWORD}'"),
    )
    .await
    .unwrap();
    let dir = crate::support::Scratch::new("secrets");
    std::fs::write(dir.0.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.0.join("check.password"), format!("{WRONG_PASSWORD}\n")).unwrap();
    let path = dir.0.join("dbsplice.toml");
    let check = "[pool.main.check]\nkind = \"mysql\"\nuser = \"vault\"\n\
                 password_file = \"check.password\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    std::fs::write(
        &path,
        with_token_admin(&config(check, &[backend(db.addr(), 1, "primary")])),
    )
    .unwrap();
    let running = Running::start(&path, None);
    let admin = running.admin_addr().await;
    let health = || async {
        let (_, status) = http(admin, "GET", "/api/status", None).await;
        let status: serde_json::Value = serde_json::from_str(&status).ok()?;
        status["pools"][0]["backends"][0]["health"]
            .as_str()
            .map(str::to_owned)
    };
    wait_until(Duration::from_secs(10), || async {
        (health().await.as_deref() == Some("down")).then_some(())
    })
    .await
    .expect("the wrong password fails the check");
    assert_eq!(
        http(admin, "POST", "/api/reload", Some(WRONG_TOKEN))
            .await
            .0,
        401
    );
    std::fs::write(dir.0.join("check.password"), format!("{GOOD_PASSWORD}\n")).unwrap();
    assert_eq!(http(admin, "POST", "/api/reload", Some(TOKEN)).await.0, 200);
    wait_until(Duration::from_secs(10), || async {
        (health().await.as_deref() == Some("up")).then_some(())
    })
    .await
    .expect("the right password, re-read on reload, passes the check");

    let mut seen = running.logs();
    assert!(
        seen.contains("1045"),
        "the failed login is logged (so this scan reads real lines): {seen}"
    );
    for path in [
        "/api/status".to_owned(),
        "/metrics".to_owned(),
        format!("/api/backends/{}/why", db.addr()),
    ] {
        seen.push_str(&http(admin, "GET", &path, None).await.1);
    }
    for secret in [GOOD_PASSWORD, WRONG_PASSWORD, TOKEN, WRONG_TOKEN] {
        assert!(!seen.contains(secret), "{secret} leaked: {seen}");
    }
    running.stop().await;
}

/// The CLI sends the bearer token only with actions: a status read carries
/// none, so a token never travels where it is not needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_token_only_with_actions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tokio::io::AsyncReadExt::read(&mut s, &mut byte)
                    .await
                    .unwrap_or(0)
                    == 0
                {
                    break;
                }
                head.push(byte[0]);
            }
            recorded
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let body = r#"{"pools":[],"outcome":"unchanged"}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, answer.as_bytes()).await;
        }
    });
    let dir = crate::support::Scratch::new("cli-token");
    let token = dir.0.join("admin.token");
    std::fs::write(&token, "tok-only-for-actions\n").unwrap();
    let run = |command: &'static str| {
        let token = token.clone();
        let config = dir.0.join("absent.toml");
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg(command)
                .arg("--config")
                .arg(config)
                .args(["--admin", &addr.to_string()])
                .arg("--token-file")
                .arg(token)
                .output()
                .unwrap()
        })
    };
    assert!(run("status").await.unwrap().status.success());
    assert!(run("reload").await.unwrap().status.success());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("GET /api/status"), "{}", seen[0]);
    assert!(
        !seen[0].contains("tok-only"),
        "a read carried the token: {}",
        seen[0]
    );
    assert!(seen[1].starts_with("POST /api/reload"), "{}", seen[1]);
    assert!(
        seen[1].contains("Authorization: Bearer tok-only-for-actions"),
        "{}",
        seen[1]
    );
}

/// Each metric's samples stand together after its one `# TYPE` line, as
/// the text format asks.
fn assert_grouped(scrape: &str) {
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in scrape.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap().to_owned();
            assert!(seen.insert(name.clone()), "{name} typed twice:\n{scrape}");
            current = name;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
            .unwrap_or(name);
        assert_eq!(family, current, "{line} stands apart from its family");
    }
}
