//! Test support: real MariaDB servers, dbsplice in-process on port 0, real
//! clients, and waiting on conditions with deadlines instead of sleeps.

#![allow(dead_code)] // each test module uses a different part

pub mod binary;
pub mod certs;
pub mod cluster;
pub mod dns;
pub mod fake;
pub mod galera;
pub mod mariadb;
pub mod netns;
pub mod proc_status;
pub mod pyclients;
pub mod traffic;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use dbsplice::app::App;
use dbsplice::cluster::BackendState;
use dbsplice::config::Config;
use dbsplice::inbox::{ReloadOutcome, Trigger};
use dbsplice::proxy::bind::{self, BoundListener};
use dbsplice::vocabulary::Health;
use dbsplice::workers::Workers;
use mysql_async::prelude::Queryable;

pub use mariadb::MariaDb;

/// Polls `check` every 20 ms until it returns `Some`, or `None` after `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Routes test logs to the test's captured output (shown when it fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dbsplice=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// dbsplice running inside the test process, with two worker threads
/// carrying the sessions as in production.
pub struct Proxy {
    /// The running app; `None` once shut down.
    pub app: Option<App>,
    /// Dropped after the app (field order): its sessions run there.
    _workers: Workers,
}

/// Starts the app on two worker threads of its own.
fn start_app(config: Config, file: Option<&Path>, bound: Vec<BoundListener>) -> (App, Workers) {
    let workers = Workers::start(2).unwrap();
    let app = match file {
        Some(file) => App::start_from_file(config, file, bound, workers.handles()),
        None => App::start_on(config, bound, workers.handles()),
    }
    .unwrap();
    (app, workers)
}

impl Proxy {
    /// Starts dbsplice with a config written by the test (listen on port 0).
    pub fn start(toml: &str) -> Proxy {
        init_logs();
        // Through a file, as in production: files the config names
        // (password_file, ca_file) are read the same way.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("proxy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dbsplice.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        let bound = bind::bind(&config).unwrap();
        let (app, workers) = start_app(config, None, bound);
        Proxy {
            app: Some(app),
            _workers: workers,
        }
    }

    /// Starts dbsplice from a config file the test keeps (for reloads).
    pub fn start_file(path: &Path) -> Proxy {
        init_logs();
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let bound = bind::bind(&config).unwrap();
        let (app, workers) = start_app(config, Some(path), bound);
        Proxy {
            app: Some(app),
            _workers: workers,
        }
    }

    /// Reads the config file again (started with [`Proxy::start_file`]).
    pub async fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        self.app().reload(trigger).await
    }

    fn app(&self) -> &App {
        self.app.as_ref().expect("proxy is running")
    }

    /// Where the named listener accepts clients.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.app().local_addr(listener).expect("listener exists")
    }

    /// Live state of a backend by its configured address.
    pub fn backend(&self, address: impl std::fmt::Display) -> Arc<BackendState> {
        self.app()
            .backend(&address.to_string())
            .expect("backend exists")
    }

    /// Waits until the backend's checker says `health`.
    pub async fn wait_health(&self, address: impl std::fmt::Display, health: Health) {
        let backend = self.backend(&address);
        let reached = wait_until(Duration::from_secs(20), || async {
            (backend.health() == health).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "{address} never became {health}: {}",
            backend.reason()
        );
    }
}

/// A `[pool.main.check]` table for the MySQL check as `user` with `password`
/// and extra lines, probing every 100 ms with rise and fall of 1.
pub fn mysql_check(user: &str, password: &str, extra: &str) -> String {
    format!(
        "[pool.main.check]\nkind = \"mysql\"\nuser = \"{user}\"\npassword = \"{password}\"\n\
         interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n{extra}\n"
    )
}

/// A scratch directory under the target directory, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// A new, empty directory named after `name`.
    pub fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend table for a test config.
pub fn backend(addr: SocketAddr, weight: u32, tier: &str) -> String {
    format!("[[pool.main.backend]]\naddress = \"{addr}\"\nweight = {weight}\ntier = \"{tier}\"\n")
}

/// A config with one listener `rw` on port 0, pool `main` and the given
/// pool settings and backend tables.
pub fn config(pool_settings: &str, backends: &[String]) -> String {
    format!(
        "shutdown_grace = \"5s\"\n[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\n[pool.main]\n{pool_settings}\n{}",
        backends.concat()
    )
}

/// `body` (from `config`) with an admin server on a free port whose token
/// is in `admin.token`; the top-level `shutdown_grace` stays above the table.
pub fn with_token_admin(body: &str) -> String {
    format!(
        "shutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n{}",
        body.replacen("shutdown_grace = \"5s\"\n", "", 1)
    )
}

/// Client options for the test account through `addr`.
pub fn client_opts(addr: SocketAddr) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(mariadb::USER))
        .pass(Some(mariadb::PASSWORD))
        .prefer_socket(false)
        .into()
}

/// A client connection through `addr`.
pub async fn connect(addr: SocketAddr) -> Result<mysql_async::Conn, mysql_async::Error> {
    mysql_async::Conn::new(client_opts(addr)).await
}

/// Which server answers a connection: its `@@port`.
pub async fn server_port(conn: &mut mysql_async::Conn) -> u16 {
    conn.query_first::<u16, _>("SELECT @@port")
        .await
        .unwrap()
        .unwrap()
}

/// Which server a new session through `addr` reaches; `None` if refused.
pub async fn port_of_new_session(addr: SocketAddr) -> Option<u16> {
    let mut conn = connect(addr).await.ok()?;
    let port = server_port(&mut conn).await;
    conn.disconnect().await.ok()?;
    Some(port)
}

/// A session through `addr` that landed on the server at `port`.
pub async fn session_on(addr: SocketAddr, port: u16) -> mysql_async::Conn {
    for _ in 0..100 {
        let mut conn = connect(addr).await.unwrap();
        if server_port(&mut conn).await == port {
            return conn;
        }
    }
    panic!("no session reached port {port}");
}

/// Whether dbsplice closes `conn` within `limit` (statements start failing).
pub async fn closed_within(conn: &mut mysql_async::Conn, limit: Duration) -> bool {
    let closed = async {
        while conn.query_drop("DO 1").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(limit, closed).await.is_ok()
}

/// Runs `sql` through the `mariadb` command-line client.
pub async fn cli(addr: SocketAddr, sql: &str) -> Output {
    tokio::process::Command::new("mariadb")
        .args([
            "--protocol=tcp",
            "-h",
            &addr.ip().to_string(),
            "-P",
            &addr.port().to_string(),
        ])
        .args([
            "-u",
            mariadb::USER,
            &format!("-p{}", mariadb::PASSWORD),
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ])
        .output()
        .await
        .expect("the mariadb client runs (install mariadb-client)")
}
