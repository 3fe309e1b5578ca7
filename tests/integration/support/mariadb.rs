//! Real MariaDB servers for tests: one `mariadb-install-db` into a template
//! datadir (kept under the target directory and reused), copied per server;
//! `mariadbd` on a loopback port below 32768; killed and removed on drop, also
//! when a test panics.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::netns::Netns;
use super::wait_until;

/// The account every test server has, with every privilege.
pub const USER: &str = "dbsplice";
/// Its password.
pub const PASSWORD: &str = "secret";
/// A check user with no privileges and a native password.
pub const CHECK_USER: &str = "check";
/// Its password.
pub const CHECK_PASSWORD: &str = "checkpw";
/// A check user with no password.
pub const NOPW_USER: &str = "nopw";
/// A check user authenticated by ed25519.
pub const ED_USER: &str = "edcheck";
/// Its password.
pub const ED_PASSWORD: &str = "edpw";

const SERVER_ARGS: &[&str] = &[
    "--no-defaults",
    "--skip-name-resolve",
    "--innodb-log-file-size=4M",
    "--innodb-buffer-pool-size=16M",
    "--performance-schema=OFF",
    "--max-connections=500",
    "--max-allowed-packet=1G",
    "--plugin-load-add=auth_ed25519",
];

/// A running (or killed, restartable) MariaDB server.
pub struct MariaDb {
    /// Port it listens on.
    pub port: u16,
    /// Address it listens on: loopback, or a test namespace's.
    ip: Ipv4Addr,
    /// The test namespace it runs in, if any.
    netns: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl MariaDb {
    /// Starts a fresh server and waits until it sends its greeting.
    pub async fn start() -> MariaDb {
        MariaDb::start_with(&[]).await
    }

    /// Starts a fresh server with extra `mariadbd` arguments.
    pub async fn start_with(extra_args: &[String]) -> MariaDb {
        MariaDb::start_on(None, extra_args).await
    }

    /// Starts a fresh server inside a test namespace, on its address and the
    /// usual port 3306.
    pub async fn start_in(netns: &Netns) -> MariaDb {
        MariaDb::start_on(Some(netns), &[]).await
    }

    /// [`MariaDb::start_in`] with extra `mariadbd` arguments.
    pub async fn start_in_with(netns: &Netns, extra_args: &[String]) -> MariaDb {
        MariaDb::start_on(Some(netns), extra_args).await
    }

    /// Starts a server on a copy of another one's datadir (a stopped one's),
    /// with extra `mariadbd` arguments.
    pub async fn start_from(datadir: &Path, extra_args: &[String]) -> MariaDb {
        MariaDb::start_copy(datadir, None, extra_args).await
    }

    /// A server listening on `ip:port` of the loopback network (any of
    /// 127.0.0.0/8): two of them can share a port, as two hosts would.
    pub async fn start_at(ip: Ipv4Addr, port: u16) -> MariaDb {
        let dir = scratch_root().join(format!(
            "dbsplice-test-{}-{}",
            std::process::id(),
            next_port_seed()
        ));
        copy_dir(template(), &dir.join("data"));
        std::fs::write(dir.join("init.sql"), init_sql()).unwrap();
        std::fs::write(dir.join("extra-args"), "").unwrap();
        let mut server = MariaDb {
            port,
            ip,
            netns: None,
            dir: dir.clone(),
            child: None,
        };
        assert!(
            server.restart_inner().await,
            "could not start mariadbd on {ip}:{port}: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        server
    }

    async fn start_on(netns: Option<&Netns>, extra_args: &[String]) -> MariaDb {
        MariaDb::start_copy(template(), netns, extra_args).await
    }

    async fn start_copy(template: &Path, netns: Option<&Netns>, extra_args: &[String]) -> MariaDb {
        let dir = scratch_root().join(format!(
            "dbsplice-test-{}-{}",
            std::process::id(),
            next_port_seed()
        ));
        copy_dir(template, &dir.join("data"));
        std::fs::write(dir.join("init.sql"), init_sql()).unwrap();
        std::fs::write(dir.join("extra-args"), extra_args.join("\n")).unwrap();
        for _ in 0..20 {
            let mut server = MariaDb {
                port: if netns.is_some() { 3306 } else { free_port() },
                ip: netns.map_or(Ipv4Addr::LOCALHOST, |ns| ns.ip),
                netns: netns.map(|ns| ns.name.clone()),
                dir: dir.clone(),
                child: None,
            };
            if server.restart_inner().await {
                return server;
            }
            server.dir = PathBuf::new(); // keep the datadir for the next try
        }
        panic!(
            "could not start mariadbd in {}: {}",
            dir.display(),
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    /// The server's own directory (datadir, logs), for test files such as certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Freezes the server (SIGSTOP): connects still succeed, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("server is running")
            .id()
            .to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// A direct connection (not through dbsplice) with every privilege.
    pub async fn admin(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(super::client_opts(self.addr()))
            .await
            .unwrap()
    }

    /// Connections as the check user (no SUPER, so not the slot kept for
    /// administrators) until the server refuses one with 1040: the server
    /// is full while they are held.
    pub async fn fill(&self) -> Vec<mysql_async::Conn> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(CHECK_USER))
            .pass(Some(CHECK_PASSWORD))
            .prefer_socket(false);
        let mut hogs = Vec::new();
        loop {
            match mysql_async::Conn::new(opts.clone()).await {
                Ok(conn) => hogs.push(conn),
                Err(mysql_async::Error::Server(e)) if e.code == 1040 => return hogs,
                Err(e) => panic!("{e}"),
            }
            assert!(
                hogs.len() < 20,
                "max_connections=10 (the lowest MariaDB takes) was not enforced"
            );
        }
    }

    /// A global status counter, read directly from the server.
    pub async fn status(&self, name: &str) -> u64 {
        use mysql_async::prelude::Queryable;
        let mut conn = self.admin().await;
        let row: Option<(String, u64)> = conn
            .exec_first("SHOW GLOBAL STATUS WHERE Variable_name = ?", (name,))
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        row.unwrap().1
    }

    /// Replaces the extra `mariadbd` arguments for the next (re)start.
    pub fn set_extra_args(&self, extra_args: &[String]) {
        std::fs::write(self.dir.join("extra-args"), extra_args.join("\n")).unwrap();
    }

    /// Its datadir.
    pub fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same port and datadir.
    pub async fn restart(&mut self) {
        assert!(
            self.restart_inner().await,
            "mariadbd did not restart on port {}",
            self.port
        );
    }

    /// Starts mariadbd; false when the port turned out to be taken.
    async fn restart_inner(&mut self) -> bool {
        self.kill();
        let log = self.dir.join("error.log");
        let _ = std::fs::remove_file(&log);
        let extra = std::fs::read_to_string(self.dir.join("extra-args")).unwrap_or_default();
        // A server run as another user (Galera's transfer scripts refuse
        // root) needs its files to be that user's.
        let user = extra.lines().find_map(|l| l.strip_prefix("--user="));
        if let Some(user) = user {
            let owned = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&self.dir)
                .status()
                .unwrap();
            assert!(owned.success(), "chown to {user}");
        }
        let mut command = match &self.netns {
            // `ip netns exec` execs mariadbd: the child's pid is the server's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "mariadbd"]);
                c
            }
            None => Command::new("mariadbd"),
        };
        let child = command
            .args(SERVER_ARGS)
            .arg(format!("--bind-address={}", self.ip))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!(
                "--init-file={}",
                self.dir.join("init.sql").display()
            ))
            // mariadbd takes the first --user it is given.
            .arg(format!(
                "--user={}",
                user.map_or_else(current_user, str::to_owned)
            ))
            .args(extra.lines().filter(|l| !l.starts_with("--user=")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd runs (install mariadb-server)");
        self.child = Some(child);
        let addr = self.addr();
        let ready = wait_until(Duration::from_secs(60), || async {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            if log.contains("Bind on TCP/IP port") || log.contains("Aborting") {
                return Some(false);
            }
            if !log.contains("ready for connections") {
                return None;
            }
            greets(addr).await.then_some(true)
        })
        .await;
        if ready != Some(true) {
            self.kill();
        }
        ready == Some(true)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// True when a MySQL greeting (protocol 10) arrives from `addr`.
async fn greets(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        Some(head[4] == 10)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        == Some(true)
}

/// Datadirs live in memory where possible: servers start in about 2 s there.
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Builds the template datadir once per target directory and version.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        remove_stale_dirs();
        let version = Command::new("mariadbd")
            .arg("--version")
            .output()
            .expect("mariadbd runs (install mariadb-server)");
        let version = String::from_utf8_lossy(&version.stdout);
        let tag: String = version
            .split_whitespace()
            .nth(2)
            .unwrap_or("unknown")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mariadb-template-{tag}"));
        if dir.join("mysql").is_dir() {
            return dir;
        }
        let building = dir.with_extension(format!("building-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .args([
                "--innodb-log-file-size=4M",
                "--innodb-data-file-path=ibdata1:4M:autoextend",
            ])
            .arg(format!("--datadir={}", building.display()))
            .arg(format!("--user={}", current_user()))
            .output()
            .expect("mariadb-install-db runs (install mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test binary may have finished first; either copy is good.
        if std::fs::rename(&building, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        dir
    })
}

/// Removes datadirs left by test processes that no longer run.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(scratch_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("dbsplice-test-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Accounts every test server has. mariadbd runs an init file one
/// statement per line, at every start: kept out of the binary log, or each
/// restart of a former primary would write transactions its new primary
/// never had (and dbsplice would rightly refuse to rejoin it).
fn init_sql() -> String {
    [
        "SET sql_log_bin = 0;".to_owned(),
        format!("CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';"),
        format!("GRANT ALL ON *.* TO '{USER}'@'%' WITH GRANT OPTION;"),
        format!("CREATE USER IF NOT EXISTS '{CHECK_USER}'@'%' IDENTIFIED BY '{CHECK_PASSWORD}';"),
        format!("CREATE USER IF NOT EXISTS '{NOPW_USER}'@'%';"),
        format!("CREATE USER IF NOT EXISTS '{ED_USER}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED_PASSWORD}');"),
    ]
    .join("\n")
        + "\n"
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "copying {} to {}",
        from.display(),
        to.display()
    );
}

/// mariadbd refuses to run as root unless told to with `--user=root`.
fn current_user() -> String {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if uid == 0 {
        return "root".to_owned();
    }
    std::env::var("USER").unwrap_or_else(|_| uid.to_string())
}

fn next_port_seed() -> u16 {
    static SEED: AtomicU16 = AtomicU16::new(0);
    SEED.fetch_add(1, Ordering::Relaxed)
}

/// A port below the ephemeral range (32768+) that is free right now; each
/// test process walks its own stretch of 10000..32000.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let pid = u16::try_from(std::process::id() % 200).unwrap();
        AtomicU16::new(10_000 + pid * 100)
    });
    loop {
        let port = next.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (port - 10_000) % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
