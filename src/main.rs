//! The dbsplice command ([`dbsplice::args`]): `run` (the default), `check`,
//! and the operator commands that talk to a running instance.
//!
//! A lifecycle script: parse the config without binding (exit 64 when it is
//! wrong), raise the open-files limit, bind, start, wait for SIGTERM or
//! SIGINT (reloading on SIGHUP and file changes meanwhile), drain within
//! `shutdown_grace`; a second signal exits at once.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use dbsplice::admin::cli::{Action, Target};
use dbsplice::app;
use dbsplice::args::{AdminArgs, Cli, Command, LogFormat, RunArgs};
use dbsplice::config::{Config, ConfigDiff};
use dbsplice::service::{self, Given, Signals, Succession};
use dbsplice::systemd::Notifier;
use dbsplice::upgrade::Takeover;
use dbsplice::workers::Workers;

/// Exit code for a config that cannot be used (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;
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
        Some(Command::Upgrade { binary, admin }) => remote(
            &admin,
            Action::Upgrade(binary.map(|b| b.display().to_string())),
        ),
        Some(Command::Failback { pool, admin }) => remote(&admin, Action::Failback(pool)),
        Some(Command::Pause {
            pool,
            duration,
            admin,
        }) => remote(&admin, Action::Pause(pool, duration)),
        Some(Command::Resume { pool, admin }) => remote(&admin, Action::Resume(pool)),
        Some(Command::Switchover { pool, to, admin }) => {
            remote(&admin, Action::Switchover(pool, to))
        }
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
    let handover = Takeover::socket_from_env();
    let succession = Succession {
        exe: std::env::current_exe()
            .or_else(|_| std::env::args_os().next().map(Into::into).ok_or(()))
            .unwrap_or_else(|()| "dbsplice".into()),
        args: std::env::args_os().skip(1).collect(),
    };
    // Sessions run on the worker threads; checks, the control module and
    // reloads on this one.
    let count = config.workers.unwrap_or_else(Workers::default_count);
    let workers = Workers::start(count).context("starting the worker threads")?;
    tracing::debug!(workers = count, "worker threads started");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handles = workers.handles();
    // Started to take over from a running process: the config is loaded and
    // the threads run, so the sessions wait only for what follows.
    let takeover = match handover.as_deref().map(Takeover::receive) {
        Some(Ok(t)) => Some(t),
        Some(Err(why)) => anyhow::bail!("cannot take over: {why}"),
        None => None,
    };
    let served = runtime.block_on(async {
        let signals = Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
        };
        let given = Given {
            listeners: inherited,
            takeover,
            succession,
        };
        service::run(config, path, signals, notifier, given, handles).await?;
        Ok(())
    });
    // A reload may still be waiting for a name server on a blocking thread:
    // the process exits without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    served
}
