//! The `dbsplice` binary as operators run it: `check` and the run lifecycle.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{backend, config, connect, server_port, MariaDb};

const BIN: &str = env!("CARGO_BIN_EXE_dbsplice");

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
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--config",
        ])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("\"listening\"") {
                let addr = line
                    .split("\"addr\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap()
                    .to_owned();
                let _ = addr_tx.send(addr);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr: std::net::SocketAddr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .parse()
        .unwrap();
    let mut conn = crate::support::wait_until(Duration::from_secs(20), || async {
        connect(addr).await.ok()
    })
    .await
    .expect("dbsplice serves clients");
    assert_eq!(server_port(&mut conn).await, db.port);
    conn.disconnect().await.unwrap();

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = logs.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{logs}");
    assert!(logs.contains("SIGTERM"), "{logs}");
}
