//! The command line, defined once: `main.rs` parses it, and the manual pages
//! and shell completions are generated from it by `examples/assets.rs`, which
//! `scripts/package` and `scripts/install` run.

// The `///` comments below are clap's help texts, written for a terminal:
// "[admin]" names a config table there, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Where the config file is unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/dbsplice/dbsplice.toml";

/// `dbsplice [OPTIONS] [COMMAND]`.
#[derive(Parser)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DBSPLICE_COMMIT"), ")"),
    about = "A layer-4 load balancer for MySQL-compatible clusters",
    long_about = "A layer-4 load balancer for MySQL-compatible clusters (MySQL, MariaDB, \
Percona). It checks every backend over the MySQL protocol, sends each new client \
connection to an eligible backend of the listener's pool (the one writable server for a \
writer pool, up-to-date replicas for a reader pool) and splices bytes both ways without \
parsing them.\n\n\
The config file (default /etc/dbsplice/dbsplice.toml, documented key by key in the \
example the package installs) is reloaded when it changes, on SIGHUP and on \
`dbsplice reload`; a config that cannot be used is refused with its file, key and fix, \
and the running config stays. SIGTERM or SIGINT stops accepting and drains sessions \
for shutdown_grace; a second signal exits at once. `dbsplice check` exits 64 for a \
config that cannot be used. Under systemd it reports READY, RELOADING, STOPPING and \
watchdog keep-alives, and takes listening sockets from dbsplice.socket."
)]
pub struct Cli {
    /// The command; `run` when there is none.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s options, accepted without the word `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// What dbsplice is asked to do.
#[derive(Subcommand)]
pub enum Command {
    /// Serve clients (the default).
    Run(RunArgs),
    /// Validate a config file, print a summary, exit 0; or print the errors and exit 64.
    Check {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Also print what a reload from this (running) config would change.
        #[arg(long)]
        diff: Option<PathBuf>,
    },
    /// Show pools and backends of the running instance.
    Status(AdminArgs),
    /// Stop new sessions to a backend; open ones continue.
    Drain {
        /// The backend's name.
        name: String,
        /// Only for this long, such as "10m".
        #[arg(long = "for")]
        duration: Option<String>,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop new sessions to a backend and close its open ones.
    Disable {
        /// The backend's name.
        name: String,
        /// Only for this long, such as "10m".
        #[arg(long = "for")]
        duration: Option<String>,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clear a drain or disable.
    Enable {
        /// The backend's name.
        name: String,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reload the running instance's config file now.
    Reload(AdminArgs),
    /// Hand every listener and open session to a new process of the
    /// binary at the running one's path (or `--binary`), which first checks
    /// the config; no session closes. On any failure the running process
    /// keeps every session and says why.
    Upgrade {
        /// The binary to start instead of the running one's path.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let backends held by `failback = "manual"` take traffic in a pool.
    Failback {
        /// The pool's name.
        pool: String,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold a pool's new clients (as if it had no backend, each for at most
    /// its hold_timeout) while open sessions continue: for a promotion done
    /// by hand or by an external failover tool.
    Pause {
        /// The pool's name.
        pool: String,
        /// At most this long, such as "30s" (the default).
        #[arg(long = "for")]
        duration: Option<String>,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Switch a GTID writer pool's primary over to a replica: pause the
    /// pool, make the primary read-only, wait for the replica to catch up,
    /// promote it, re-point the others and the old primary, resume. Any
    /// step failing before the promotion rolls back.
    Switchover {
        /// The pool's name.
        pool: String,
        /// The backend to promote (default: the most advanced replica).
        #[arg(long)]
        to: Option<String>,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End a pool's pause: once each of its backends has been probed again
    /// (a demotion or promotion just made is then known), its held clients
    /// look for a backend.
    Resume {
        /// The pool's name.
        pool: String,
        /// How to reach the running instance.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach a running instance's admin server.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// The config file, read for [admin] listen and token_file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The admin server's address, overriding the config.
    #[arg(long)]
    pub admin: Option<std::net::SocketAddr>,
    /// A file holding the bearer token, overriding the config.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Trust these CA certificates (PEM) for the admin server's HTTPS,
    /// instead of the config's [admin] cert_file.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Speak HTTPS without checking the admin server's certificate.
    #[arg(long)]
    pub insecure: bool,
}

/// How to serve.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, such as "info" or "dbsplice=debug" (default: RUST_LOG, else info).
    #[arg(long)]
    pub log_level: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}
