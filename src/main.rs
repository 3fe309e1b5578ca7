//! The dbsplice command: `run` (the default) and `check`.
//!
//! A lifecycle script: parse the config without binding (exit 64 when it is
//! wrong), raise the open-files limit, bind, start, wait for SIGTERM or
//! SIGINT (reloading on SIGHUP and file changes meanwhile), drain within
//! `shutdown_grace`; a second signal exits at once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

use dbsplice::admin::cli::{Action, Target};
use dbsplice::app;
use dbsplice::config::{Config, ConfigDiff};
use dbsplice::service::{self, Signals};
use dbsplice::systemd::Notifier;
use dbsplice::workers::Workers;

/// Exit code for a config that cannot be used (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
const DEFAULT_CONFIG: &str = "/etc/dbsplice/dbsplice.toml";

#[derive(Parser)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DBSPLICE_COMMIT"), ")"),
    about = "A layer-4 load balancer for MySQL-compatible clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
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
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clear a drain or disable.
    Enable {
        /// The backend's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reload the running instance's config file now.
    Reload(AdminArgs),
    /// Let backends held by `failback = "manual"` take traffic in a pool.
    Failback {
        /// The pool's name.
        pool: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach a running instance's admin server.
#[derive(clap::Args)]
struct AdminArgs {
    /// The config file, read for [admin] listen and token_file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The admin server's address, overriding the config.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// A file holding the bearer token, overriding the config.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Trust these CA certificates (PEM) for the admin server's HTTPS,
    /// instead of the config's [admin] cert_file.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Speak HTTPS without checking the admin server's certificate.
    #[arg(long)]
    insecure: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, such as "info" or "dbsplice=debug" (default: RUST_LOG, else info).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config, diff }) => check(&config, diff.as_deref()),
        Some(Command::Status(admin)) => remote(&admin, Action::Status),
        Some(Command::Drain {
            name,
            duration,
            admin,
        }) => remote(&admin, Action::Drain(name, duration)),
        Some(Command::Disable {
            name,
            duration,
            admin,
        }) => remote(&admin, Action::Disable(name, duration)),
        Some(Command::Enable { name, admin }) => remote(&admin, Action::Enable(name)),
        Some(Command::Reload(admin)) => remote(&admin, Action::Reload),
        Some(Command::Failback { pool, admin }) => remote(&admin, Action::Failback(pool)),
        Some(Command::Run(args)) => run(&args),
        None => run(&cli.run),
    }
}

fn check(path: &Path, old: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let mut out = format!("{}: OK\n{}\n", path.display(), config.summary());
    if let Some(old) = old {
        match Config::load(old) {
            Ok(old_config) => out.push_str(&format!(
                "reload from {}: {}\n",
                old.display(),
                ConfigDiff::between(&old_config, &config)
            )),
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "{e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        }
    }
    let _ = write!(std::io::stdout(), "{out}");
    ExitCode::SUCCESS
}

/// Runs an operator command against a running instance's admin API.
fn remote(args: &AdminArgs, action: Action) -> ExitCode {
    let tls = dbsplice::admin::cli::TlsArgs {
        ca_file: args.ca_file.clone(),
        insecure: args.insecure,
    };
    let result = Target::resolve(&args.config, args.admin, args.token_file.as_deref(), &tls)
        .and_then(|target| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(dbsplice::admin::cli::run(&target, &action))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(out) => {
            let _ = writeln!(std::io::stdout(), "{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "dbsplice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    dbsplice::logging::init(
        matches!(args.log_format, LogFormat::Json),
        args.log_level.as_deref(),
    );
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match serve(config, &args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, path: &Path) -> anyhow::Result<()> {
    match app::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    // Read before any thread starts: the environment is cleared of them.
    let notifier = Notifier::from_env();
    let inherited = dbsplice::systemd::inherited_listeners();
    // Sessions run on the worker threads; checks, the control module and
    // reloads on this one.
    let count = config.workers.unwrap_or_else(Workers::default_count);
    let workers = Workers::start(count).context("starting the worker threads")?;
    tracing::debug!(workers = count, "worker threads started");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handles = workers.handles();
    let served = runtime.block_on(async {
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        };
        service::run(config, path, signals, notifier, inherited, handles).await?;
        Ok(())
    });
    // A reload may still be waiting for a name server on a blocking thread:
    // the process exits without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    served
}
