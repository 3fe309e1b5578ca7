//! The process under a service manager: turns signals and file changes into
//! events for the control module, serves the admin API beside it, feeds the
//! watchdog, and tells the service manager where it stands (READY,
//! RELOADING, STOPPING). `main.rs` installs the signal handlers and passes
//! them in; the running state itself belongs to [`crate::control`].

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, UpgradeAsk};
use crate::app::App;
use crate::config::watch::FileWatch;
use crate::config::Config;
use crate::inbox::{ReloadOutcome, Trigger};
use crate::proxy::bind;
use crate::systemd::Notifier;
use crate::upgrade::{Plan, Takeover};

/// The signals the service reacts to, installed by the caller.
#[derive(Debug)]
pub struct Signals {
    /// SIGTERM: drain and stop.
    pub term: Signal,
    /// SIGINT: the same.
    pub int: Signal,
    /// SIGHUP: reload.
    pub hup: Signal,
    /// SIGUSR2: upgrade (hand every session to a new process).
    pub usr2: Signal,
}

/// How this process starts its successor in an upgrade: the binary at the
/// path it was started from (read at start, before a package replaces the
/// file) and the arguments it was given.
#[derive(Debug, Clone)]
pub struct Succession {
    /// The binary.
    pub exe: std::path::PathBuf,
    /// The arguments, without the program name.
    pub args: Vec<std::ffi::OsString>,
}

/// What a process was given when it started.
#[derive(Debug)]
pub struct Given {
    /// Listening sockets passed by the service manager.
    pub listeners: Vec<(Option<String>, std::net::TcpListener)>,
    /// What a former process handed this one, in an upgrade.
    pub takeover: Option<Takeover>,
    /// How to start this process's successor.
    pub succession: Succession,
}

/// Serves `config` (read from `path`) until a stop signal, then drains;
/// or until an upgrade hands everything to a new process, then exits.
pub async fn run(
    config: Config,
    path: &Path,
    mut signals: Signals,
    mut notifier: Notifier,
    given: Given,
    workers: Vec<tokio::runtime::Handle>,
) -> io::Result<()> {
    // Watch first: an edit made while the first probes run is not missed.
    let mut watch = FileWatch::new(path, config.reload_poll);
    let stop_admin = CancellationToken::new();
    let (upgrades_to, mut upgrades) = tokio::sync::mpsc::channel(4);
    let Started { app, admin } = start(
        config,
        path,
        given.listeners,
        given.takeover,
        workers,
        &stop_admin,
        upgrades_to,
        &mut notifier,
    )
    .await?;
    notifier.ready(&status_line(&app));
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
    loop {
        let tick = async {
            match watchdog.as_mut() {
                Some(w) => drop(w.tick().await),
                None => std::future::pending().await,
            }
        };
        let ask = tokio::select! {
            _ = signals.term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = signals.int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = signals.hup.recv() => { reload(&app, Trigger::Forced, &notifier).await; continue; }
            () = watch.changed() => { reload(&app, Trigger::File, &notifier).await; continue; }
            () = tick => { keep_alive(&app, &notifier).await; continue; }
            _ = signals.usr2.recv() => None,
            Some(ask) = upgrades.recv() => Some(ask),
        };
        let plan = Plan {
            binary: given.succession.exe.clone(),
            args: given.succession.args.clone(),
            config: path.to_owned(),
            admin: admin.as_ref().map(|(socket, _)| socket),
            watchdog_usec: notifier.watchdog_usec(),
            notifier: &notifier,
        };
        if upgrade(&app, plan, ask).await {
            stop_admin.cancel();
            finish_admin(admin).await;
            return Ok(());
        }
    }
    notifier.stopping("draining sessions");
    stop_admin.cancel();
    drain(app, &mut signals).await;
    Ok(())
}

/// Lets open sessions finish within `shutdown_grace`; a second signal
/// exits at once.
async fn drain(app: App, signals: &mut Signals) {
    let grace = app.snapshot().config.shutdown_grace;
    tokio::select! {
        forced = app.shutdown(grace) => tracing::info!(forced, "stopped"),
        _ = signals.term.recv() => tracing::warn!("second signal: exiting now"),
        _ = signals.int.recv() => tracing::warn!("second signal: exiting now"),
    }
}

/// Waits (a little) for the stopping admin server: the reply to whoever
/// asked for the upgrade is written before this process exits.
async fn finish_admin(admin: Option<(std::net::TcpListener, std::thread::JoinHandle<()>)>) {
    if let Some((_, thread)) = admin {
        let joined = tokio::task::spawn_blocking(move || thread.join());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), joined).await;
    }
}

/// One upgrade, asked by SIGUSR2 (`ask` is `None`) or the admin API;
/// true when every session went to the new process and this one is to exit.
async fn upgrade(app: &App, mut plan: Plan<'_>, ask: Option<UpgradeAsk>) -> bool {
    let origin = ask
        .as_ref()
        .map_or_else(|| "SIGUSR2".to_owned(), |a| a.origin.clone());
    if let Some(binary) = ask.as_ref().and_then(|a| a.binary.clone()) {
        if let Err(why) = trusted_binary(&binary) {
            tracing::warn!(%origin, "upgrade refused: {why}");
            if let Some(ask) = ask {
                let _ = ask.reply.send(Err(why));
            }
            return false;
        }
        plan.binary = binary;
    }
    tracing::info!(%origin, binary = %plan.binary.display(), "upgrade: starting the new process");
    let outcome = with_keep_alives(app, plan.notifier, crate::upgrade::give(app, &plan)).await;
    let done = outcome.is_ok();
    let reply = match outcome {
        Ok(u) => {
            let pause_ms = u.pause.as_secs_f64() * 1000.0;
            tracing::info!(
                pid = u.pid,
                version = %u.version,
                sessions = u.sessions,
                held = u.held,
                pause_ms,
                "upgrade done: {} sessions and {} held clients moved to pid {} ({}); they paused {pause_ms:.1} ms",
                u.sessions, u.held, u.pid, u.version
            );
            Ok(serde_json::json!({
                "outcome": format!(
                    "upgraded: {} sessions and {} held clients moved to pid {} ({}), paused {pause_ms:.1} ms",
                    u.sessions, u.held, u.pid, u.version
                ),
                "pid": u.pid,
                "version": u.version,
                "sessions": u.sessions,
                "held": u.held,
                "pause_ms": pause_ms,
            }))
        }
        Err(why) => {
            tracing::error!(%origin, "upgrade failed, every session stays here: {why}");
            Err(format!("upgrade failed, every session stays here: {why}"))
        }
    };
    if let Some(ask) = ask {
        let _ = ask.reply.send(reply);
    }
    done
}

/// Runs `work` while sending the watchdog's keep-alives: an upgrade may
/// wait longer than `WatchdogSec` for a new binary that is slow to start.
async fn with_keep_alives<T>(
    app: &App,
    notifier: &Notifier,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(every) = notifier.watchdog_interval() else {
        return work.await;
    };
    tokio::pin!(work);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => keep_alive(app, notifier).await,
        }
    }
}

/// A binary named over the admin API must be one only its owner (root or
/// this process's user) can change: an absolute path to a regular file
/// that no group or other user may write.
fn trusted_binary(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !path.is_absolute() {
        return Err(format!("binary {}: give an absolute path", path.display()));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("binary {}: {e}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.mode() & 0o022 != 0 || (meta.uid() != 0 && meta.uid() != me) {
        return Err(format!(
            "binary {}: must be a regular file owned by root or by this process's user, writable by no one else",
            path.display()
        ));
    }
    Ok(())
}

/// A started service: the app and its admin server.
struct Started {
    app: App,
    /// A copy of the admin socket (for a hand-over) and the admin thread.
    admin: Option<(std::net::TcpListener, std::thread::JoinHandle<()>)>,
}

/// Binds (or takes over) the listeners and the admin socket, starts the
/// app and the admin server, and, in a process that takes over, carries the
/// former process's sessions on; resolves once clients are accepted.
#[allow(clippy::too_many_arguments)]
async fn start(
    config: Config,
    path: &Path,
    inherited: Vec<(Option<String>, std::net::TcpListener)>,
    mut takeover: Option<Takeover>,
    workers: Vec<tokio::runtime::Handle>,
    stop_admin: &CancellationToken,
    upgrades: tokio::sync::mpsc::Sender<UpgradeAsk>,
    notifier: &mut Notifier,
) -> io::Result<Started> {
    let admin_addr = config.admin.as_ref().map(|a| a.addr);
    let inherited = takeover.as_mut().map_or(inherited, Takeover::listeners);
    let bound = bind::bind_with(&config, inherited)?;
    let app = match &takeover {
        Some(t) => App::take_over(config, path, bound, workers, &t.state)?,
        None => App::start_from_file(config, path, bound, workers)?,
    };
    let mut admin = None;
    if let Some(addr) = admin_addr {
        let socket = match takeover.as_mut().and_then(Takeover::admin) {
            Some(socket) => socket,
            None => bind::bind_one(addr)?,
        };
        socket.set_nonblocking(true)?;
        tracing::info!(addr = %socket.local_addr()?, "admin listening");
        let kept = socket.try_clone()?;
        let server =
            Admin::new(Arc::clone(app.shared()), app.inbox().clone()).with_upgrades(upgrades);
        let thread = spawn_admin(socket, Arc::new(server), stop_admin.clone())?;
        admin = Some((kept, thread));
    }
    match takeover {
        Some(t) => {
            let (from, watchdog) = (t.state.from_pid, t.state.watchdog_usec);
            match t.finish(&app).await {
                Ok(sessions) => tracing::info!(
                    sessions,
                    from_pid = from,
                    "took over from the former process"
                ),
                Err(why) => {
                    // Nothing here has touched a session: the former
                    // process carries on with all of them.
                    tracing::error!("taking over failed, the former process carries on: {why}");
                    std::process::exit(1);
                }
            }
            notifier.set_watchdog(watchdog);
        }
        None => app.accepting().await,
    }
    Ok(Started { app, admin })
}

fn status_line(app: &App) -> String {
    let snapshot = app.snapshot();
    let (up, all) = snapshot
        .pools()
        .flat_map(|p| p.members.iter())
        .fold((0, 0), |(up, all), m| {
            (up + usize::from(m.is_eligible()), all + 1)
        });
    format!(
        "serving config generation {}: {up} of {all} backends eligible",
        snapshot.generation
    )
}

/// WATCHDOG=1, but only while the control module answers: a wedged one is
/// restarted by the service manager.
async fn keep_alive(app: &App, notifier: &Notifier) {
    let within = notifier
        .watchdog_interval()
        .unwrap_or(std::time::Duration::from_secs(1));
    if app.inbox().alive(within).await {
        notifier.notify("WATCHDOG=1");
    } else {
        tracing::error!(
            "the control module did not answer within {within:?}: no watchdog keep-alive"
        );
    }
}

/// One reload, bracketed by RELOADING=1 and READY=1 with the outcome as STATUS.
async fn reload(app: &App, trigger: Trigger, notifier: &Notifier) {
    notifier.reloading();
    let status = match app.reload(trigger).await {
        ReloadOutcome::Unchanged => format!("config unchanged; {}", status_line(app)),
        ReloadOutcome::Applied { diff, .. } => format!("reloaded ({diff}); {}", status_line(app)),
        ReloadOutcome::Rejected(why) => format!("reload failed, previous config kept: {why}"),
    };
    notifier.ready(&status);
}

/// Runs the admin server on a thread and runtime of its own, so that a
/// saturated data path cannot starve status, metrics or operator actions.
fn spawn_admin(
    socket: std::net::TcpListener,
    server: Arc<Admin>,
    stop: CancellationToken,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dbsplice-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return tracing::error!("cannot start the admin runtime: {e}"),
            };
            runtime.block_on(async {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(listener) => admin::serve(listener, server, stop).await,
                    Err(e) => tracing::error!("cannot serve the admin socket: {e}"),
                }
            });
        })
}
