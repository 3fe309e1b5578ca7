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

/// Sends SIGKILL to each pid (processes the test started) when dropped.
struct Ends(Vec<u32>);

impl Drop for Ends {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Notify messages: the sender's pid, the text, when it arrived.
type Notes = Vec<(u32, String, std::time::Instant)>;

/// Collects notify messages with the pid of the process that sent each
/// (the kernel's credentials, as systemd reads them).
fn listen_with_senders(path: &std::path::Path) -> Arc<Mutex<Notes>> {
    use rustix::net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketType,
    };
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&socket, &rustix::net::SocketAddrUnix::new(path).unwrap()).unwrap();
    rustix::net::sockopt::set_socket_passcred(&socket, true).unwrap();
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(200)),
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        for _ in 0..1500 {
            let mut space =
                [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let Ok(got) = rustix::net::recvmsg(
                &socket,
                &mut [std::io::IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::empty(),
            ) else {
                continue;
            };
            let pid = control.drain().find_map(|m| match m {
                RecvAncillaryMessage::ScmCredentials(c) => {
                    Some(c.pid.as_raw_nonzero().get().unsigned_abs())
                }
                _ => None,
            });
            let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
            sink.lock()
                .unwrap()
                .push((pid.unwrap_or(0), text, std::time::Instant::now()));
        }
    });
    seen
}

/// An upgrade under socket activation, as an unprivileged user: the
/// service manager hears the new main pid from the old process, READY=1 and
/// then keep-alives from the new one, and the session and the passed
/// listener carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_socket_activation_moves_the_main_pid_and_keeps_sessions() {
    use std::os::unix::fs::PermissionsExt;
    let db = MariaDb::start().await;
    let dir = Scratch::new("activation-upgrade");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = dir.0.join("notify.sock");
    let notes = listen_with_senders(&notify);
    std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o777)).unwrap();
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
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}"), "--fdname=rw"])
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.display()))
        .arg("--setenv=WATCHDOG_USEC=1000000")
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "run",
            "--config",
        ])
        .arg(&path)
        .spawn()
        .expect("systemd-socket-activate runs");
    let first = child.id();
    // Whatever happens, the processes this test started end.
    let _ends = Ends(vec![first]);
    let from = |pid: u32, what: &'static str| {
        let notes = Arc::clone(&notes);
        move || {
            let notes = Arc::clone(&notes);
            async move {
                notes
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(p, m, _)| *p == pid && m.contains(what))
                    .then_some(())
            }
        }
    };
    // systemd-socket-activate starts the service at the first client, who
    // waits in the backlog meanwhile.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut conn = wait_until(Duration::from_secs(20), || async {
        connect(addr).await.ok()
    })
    .await
    .expect("serving");
    wait_until(Duration::from_secs(20), from(first, "READY=1"))
        .await
        .unwrap_or_else(|| {
            panic!(
                "READY=1 from the first process: {:?}",
                notes.lock().unwrap()
            )
        });
    let id: u64 = mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();

    Command::new("kill")
        .args(["-USR2", &first.to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first process exits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        exited,
        Some(0),
        "the first process exits 0 once the new one has everything"
    );
    let announced: Vec<u32> = notes
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _, _)| *p == first)
        .filter_map(|(_, m, _)| m.strip_prefix("MAINPID=")?.trim().parse().ok())
        .collect();
    let _ends_too = Ends(announced.clone());
    let [second] = announced[..] else {
        panic!(
            "one MAINPID= from the first process: {:?}",
            notes.lock().unwrap()
        );
    };
    wait_until(Duration::from_secs(10), from(second, "READY=1"))
        .await
        .expect("READY=1 from the new main process");
    wait_until(Duration::from_secs(10), from(second, "WATCHDOG=1"))
        .await
        .expect("keep-alives from the new main process");
    let status = std::fs::read_to_string(format!("/proc/{second}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_owned();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "still nobody: {uid}"
    );

    let same: u64 =
        mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(same, id, "the same server session");
    let mut fresh = connect(addr).await.unwrap();
    assert_eq!(
        server_port(&mut fresh).await,
        db.port,
        "the passed listener accepts in the new process"
    );
    drop((conn, fresh));
    let _ = Command::new("kill").arg(second.to_string()).status();
}

/// A new binary slow to start: the watchdog must not starve meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_go_on_while_a_slow_new_binary_starts() {
    use std::os::unix::fs::PermissionsExt;
    let db = MariaDb::start().await;
    let dir = Scratch::new("slow-upgrade");
    let notify = dir.0.join("notify.sock");
    let notes = listen_with_senders(&notify);
    std::fs::write(dir.0.join("admin.token"), "tok-slow\n").unwrap();
    let path = dir.0.join("dbsplice.toml");
    std::fs::write(
        &path,
        crate::support::with_token_admin(&config(
            "[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
            &[backend(db.addr(), 1, "primary")],
        )),
    )
    .unwrap();
    let slow = dir.0.join("slow-dbsplice");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\n[ \"$1\" = check ] || sleep 3\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = [
        ("NOTIFY_SOCKET", notify.display().to_string()),
        ("WATCHDOG_USEC", "1000000".to_owned()),
    ];
    let mut running = Running::start_with(&path, None, &env);
    let admin = running.admin_addr().await;
    let old = running.child.id();
    let asked = std::time::Instant::now();
    let (code, body) = crate::support::binary::http(
        admin,
        "POST",
        &format!("/api/upgrade?binary={}", slow.display()),
        Some("tok-slow"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new = u32::try_from(answer["pid"].as_u64().unwrap()).unwrap();
    let _ends = Ends(vec![new]);
    let _ = running.child.wait();
    let took = asked.elapsed();
    assert!(
        took > Duration::from_secs(3),
        "the new binary took its time: {took:?}"
    );
    let keep_alives: Vec<std::time::Instant> = notes
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, m, at)| *p == old && m == "WATCHDOG=1" && *at >= asked)
        .map(|(_, _, at)| *at)
        .collect();
    // Every half interval (500 ms) while the new binary slept: no gap near
    // the 1 s the service manager would allow.
    assert!(
        keep_alives.len() >= 4,
        "{} keep-alives in {took:?}",
        keep_alives.len()
    );
    let gaps = keep_alives.windows(2).map(|w| w[1] - w[0]);
    assert!(
        gaps.into_iter().all(|g| g < Duration::from_millis(900)),
        "{keep_alives:?}"
    );
}
