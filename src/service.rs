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

use crate::admin::{self, Admin};
use crate::app::App;
use crate::config::watch::FileWatch;
use crate::config::Config;
use crate::inbox::{ReloadOutcome, Trigger};
use crate::proxy::bind;
use crate::systemd::Notifier;

/// The signals the service reacts to, installed by the caller.
#[derive(Debug)]
pub struct Signals {
    /// SIGTERM: drain and stop.
    pub term: Signal,
    /// SIGINT: the same.
    pub int: Signal,
    /// SIGHUP: reload.
    pub hup: Signal,
}

/// Serves `config` (read from `path`) until a stop signal, then drains.
/// `inherited` are listening sockets passed by the service manager.
pub async fn run(
    config: Config,
    path: &Path,
    mut signals: Signals,
    notifier: Notifier,
    inherited: Vec<(Option<String>, std::net::TcpListener)>,
    workers: Vec<tokio::runtime::Handle>,
) -> io::Result<()> {
    // Watch first: an edit made while the first probes run is not missed.
    let mut watch = FileWatch::new(path, config.reload_poll);
    let admin_addr = config.admin.as_ref().map(|a| a.addr);
    let bound = bind::bind_with(&config, inherited)?;
    let app = App::start_from_file(config, path, bound, workers)?;
    let stop_admin = CancellationToken::new();
    if let Some(addr) = admin_addr {
        let socket = bind::bind_one(addr)?;
        tracing::info!(addr = %socket.local_addr()?, "admin listening");
        spawn_admin(
            socket,
            Arc::new(Admin::new(Arc::clone(app.shared()), app.inbox().clone())),
            stop_admin.clone(),
        )?;
    }
    app.accepting().await;
    notifier.ready(&status_line(&app));
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
    loop {
        let tick = async {
            match watchdog.as_mut() {
                Some(w) => {
                    w.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = signals.int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = signals.hup.recv() => reload(&app, Trigger::Forced, &notifier).await,
            () = watch.changed() => reload(&app, Trigger::File, &notifier).await,
            () = tick => keep_alive(&app, &notifier).await,
        }
    }
    notifier.stopping("draining sessions");
    stop_admin.cancel();
    let grace = app.snapshot().config.shutdown_grace;
    tokio::select! {
        forced = app.shutdown(grace) => tracing::info!(forced, "stopped"),
        _ = signals.term.recv() => tracing::warn!("second signal: exiting now"),
        _ = signals.int.recv() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
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
) -> io::Result<()> {
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
        })?;
    Ok(())
}
