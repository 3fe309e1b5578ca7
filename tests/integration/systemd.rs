//! What systemd would see, without systemd as PID 1: the notify protocol on a
//! socket of the test's own, and socket activation through
//! `systemd-socket-activate` across restarts.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::binary::{Running, BIN};
use crate::support::{backend, config, connect, server_port, wait_until, MariaDb, Scratch};

/// Collects notify messages as they arrive.
fn listen_for_notifications(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let socket = UnixDatagram::bind(path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        for _ in 0..600 {
            if let Ok(n) = socket.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_protocol_reports_ready_reloads_watchdog_and_stop() {
    let db = MariaDb::start().await;
    let dir = Scratch::new("notify");
    let socket = dir.0.join("notify.sock");
    let notes = listen_for_notifications(&socket);
    let path = dir.0.join("dbsplice.toml");
    let good = config(
        "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
        &[backend(db.addr(), 1, "primary")],
    );
    std::fs::write(&path, &good).unwrap();
    let env = [
        ("NOTIFY_SOCKET", socket.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_owned()),
    ];
    let running = Running::start_with(&path, None, &env);
    let without_watchdog = || -> Vec<String> {
        notes
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m != "WATCHDOG=1")
            .cloned()
            .collect()
    };
    wait_until(Duration::from_secs(10), || async {
        (!without_watchdog().is_empty()).then_some(())
    })
    .await
    .unwrap();
    assert!(
        without_watchdog()[0].starts_with("READY=1\nSTATUS=serving config generation 1: 1 of 1"),
        "{:?}",
        without_watchdog()
    );

    // A broken file: RELOADING, then READY with a STATUS naming the error.
    std::fs::write(&path, good.replace("weight = 1", "weight = 0")).unwrap();
    wait_until(Duration::from_secs(5), || async {
        (without_watchdog().len() >= 3).then_some(())
    })
    .await
    .unwrap();
    let msgs = without_watchdog();
    assert!(
        msgs[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{msgs:?}"
    );
    assert!(
        msgs[2].starts_with("READY=1\nSTATUS=reload failed, previous config kept:")
            && msgs[2].contains("weight 0"),
        "{msgs:?}"
    );
    // A good one.
    std::fs::write(&path, good.replace("weight = 1", "weight = 3")).unwrap();
    wait_until(Duration::from_secs(5), || async {
        (without_watchdog().len() >= 5).then_some(())
    })
    .await
    .unwrap();
    let msgs = without_watchdog();
    assert!(
        msgs[3].starts_with("RELOADING=1")
            && msgs[4].starts_with("READY=1\nSTATUS=reloaded (backends changed"),
        "{msgs:?}"
    );
    assert!(
        notes
            .lock()
            .unwrap()
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count()
            >= 2,
        "keep-alives every WATCHDOG_USEC/2"
    );
    running.stop().await;
    let msgs = without_watchdog();
    assert!(msgs.last().unwrap().starts_with("STOPPING=1"), "{msgs:?}");
}

/// The dbsplice process the restart loop is running now, a child of `shell`.
fn current_child(shell: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// The restart loop under `systemd-socket-activate`: when the test ends,
/// also by a failed assertion, the loop stops and its dbsplice is killed.
struct Manager {
    child: std::process::Child,
    stop_file: std::path::PathBuf,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, "");
        if let Some(pid) = current_child(self.child.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_refuses_no_client_across_restarts() {
    let db = MariaDb::start().await;
    let dir = Scratch::new("activation");
    let port = crate::support::mariadb::free_port();
    let path = dir.0.join("dbsplice.toml");
    let text = config(
        "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
        &[backend(db.addr(), 1, "primary")],
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, text).unwrap();
    let stop_file = dir.0.join("stop");
    // The socket is held by systemd-socket-activate's process (here a shell
    // restarting dbsplice), as systemd holds it across `systemctl restart`.
    let script = format!(
        "while [ ! -e '{stop}' ]; do sh -c 'export LISTEN_PID=$$; exec {bin} run --config {cfg}' 2>/dev/null; done",
        stop = stop_file.display(),
        bin = BIN,
        cfg = path.display()
    );
    let child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--fdname=rw",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .expect("systemd-socket-activate runs (Debian's systemd package)");
    let mut manager = Manager {
        child,
        stop_file: stop_file.clone(),
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(20), || async {
        connect(addr).await.ok().map(drop)
    })
    .await
    .expect("serving");

    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = {
        let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
        let errors = Arc::clone(&errors);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match connect(addr).await {
                    Ok(mut conn) => {
                        server_port(&mut conn).await;
                        let _ = conn.disconnect().await;
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        errors.lock().unwrap().push(e.to_string());
                    }
                }
            }
        })
    };
    for _ in 0..3 {
        let before = served.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(10), || async {
            (served.load(Ordering::SeqCst) >= before + 10).then_some(())
        })
        .await
        .unwrap();
        let pid = current_child(manager.child.id()).expect("dbsplice runs under the manager");
        assert!(Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        wait_until(Duration::from_secs(20), || async {
            current_child(manager.child.id())
                .filter(|p| *p != pid)
                .map(drop)
        })
        .await
        .expect("restarted");
    }
    let before = served.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(10), || async {
        (served.load(Ordering::SeqCst) >= before + 10).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "{} sessions served across 3 restarts; refused: {:?}",
        served.load(Ordering::SeqCst),
        errors.lock().unwrap()
    );

    std::fs::write(&stop_file, "").unwrap();
    if let Some(pid) = current_child(manager.child.id()) {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let exited = tokio::task::spawn_blocking(move || manager.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success(), "{exited:?}");
}

#[test]
fn the_unit_is_hardened_and_verifies_cleanly() {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(units.join("dbsplice.service"))
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for dbsplice.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 1.5, "exposure {score} above 1.5:\n{text}");

    // verify checks the commands exist: point them at the built binary.
    let dir = Scratch::new("verify");
    let unit = std::fs::read_to_string(units.join("dbsplice.service"))
        .unwrap()
        .replace("/usr/bin/dbsplice", BIN);
    std::fs::write(dir.0.join("dbsplice.service"), unit).unwrap();
    std::fs::copy(units.join("dbsplice.socket"), dir.0.join("dbsplice.socket")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.0.join("dbsplice.service"))
        .arg(dir.0.join("dbsplice.socket"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify must print nothing: {said}"
    );
}

/// The unit runs dbsplice as its own system user: it needs no privilege to
/// bind, check, serve and drain. Here as `nobody`, with files only readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let db = MariaDb::start().await;
    let dir = Scratch::new("unprivileged");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(
        &path,
        config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
            &[backend(db.addr(), 1, "primary")],
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let running = Running::start_unprivileged(&path);
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "every uid is nobody's: {uid}"
    );
    let addr = running.addr;
    let mut conn = wait_until(Duration::from_secs(20), || async {
        connect(addr).await.ok()
    })
    .await
    .expect("dbsplice serves clients as nobody");
    assert_eq!(server_port(&mut conn).await, db.port);
    conn.disconnect().await.unwrap();
    running.stop().await;
}
