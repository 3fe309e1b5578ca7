//! An upgrade that closes nothing: the running process starts a new binary,
//! pauses every session between two writes and hands it, with every
//! listening socket and what it knew of each backend, to the new process,
//! which carries on. [`give`] is the running side, [`Takeover`] the new
//! one; the format and the exchange are in [`crate::handover::format`].
//!
//! Until the new process is told to commit, nothing it holds is in use:
//! any failure (a binary that does not start, a config it rejects, a format
//! it does not read, a timeout) resumes every session here and accepting
//! goes on.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::handover::channel::{Channel, Listening, ENV};
use crate::handover::format::{self, Message, State, FORMAT, READS};
use crate::proxy::park::{self, Entry, Stage, Verdict};
use crate::proxy::splice::{FlowState, Progress, Side};
use crate::proxy::Taken;
use crate::systemd::Notifier;

/// How long the new process may take to start and say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(30);
/// How long sessions may take to pause (one in the middle of connecting
/// to a backend finishes that first).
const PAUSE_WITHIN: Duration = Duration::from_secs(5);
/// How long each later step of the exchange may take.
const STEP_WITHIN: Duration = Duration::from_secs(30);

/// What the running process needs to start its successor.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The binary to start.
    pub binary: PathBuf,
    /// The arguments this process was started with.
    pub args: Vec<OsString>,
    /// The config file, which the new binary must accept.
    pub config: PathBuf,
    /// The admin server's listening socket, if there is one.
    pub admin: Option<&'a std::net::TcpListener>,
    /// The service manager's watchdog interval, to pass on.
    pub watchdog_usec: Option<u64>,
    /// Where the new main pid is announced.
    pub notifier: &'a Notifier,
}

/// A finished upgrade.
#[derive(Debug, Clone)]
pub struct Upgraded {
    /// The new process.
    pub pid: u32,
    /// Its version and commit.
    pub version: String,
    /// Sessions it took, spliced.
    pub sessions: usize,
    /// Held clients it took.
    pub held: usize,
    /// How long sessions moved no byte.
    pub pause: Duration,
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a hand-over step failed: {e}"))
}

/// Hands everything to a new process started from `plan`; on any failure
/// every session carries on here, and the error says why.
pub async fn give(app: &App, plan: &Plan<'_>) -> Result<Upgraded, String> {
    check_config(&plan.binary, &plan.config).await?;
    let listening =
        Listening::new().map_err(|e| format!("cannot open the hand-over socket: {e}"))?;
    let mut child = Command::new(&plan.binary)
        .args(&plan.args)
        .env(ENV, listening.name())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", plan.binary.display()))?;
    let result = hand_over(app, plan, listening, &mut child).await;
    if result.is_err() {
        // Ours, by its pid: it holds nothing in use yet.
        let _ = child.kill();
        let _ = blocking(move || child.wait()).await;
    }
    result
}

/// `binary check --config FILE`: the new binary must accept the config.
async fn check_config(binary: &Path, config: &Path) -> Result<(), String> {
    let (binary, config) = (binary.to_owned(), config.to_owned());
    let shown = binary.display().to_string();
    let output = blocking(move || {
        Command::new(&binary)
            .arg("check")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .output()
    })
    .await?
    .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(format!(
        "{shown} rejects the config ({}): {said}",
        output.status
    ))
}

/// The exchange, from the new process's hello to its `running`.
async fn hand_over(
    app: &App,
    plan: &Plan<'_>,
    listening: Listening,
    child: &mut Child,
) -> Result<Upgraded, String> {
    let channel = await_hello(listening, child).await?;
    let (channel, pid, version) = hello(channel).await?;
    let began = Instant::now();
    app.suspend_accepting().await;
    tracing::info!(
        sessions = app.board().live(),
        "upgrade: pausing every session"
    );
    let entries = match app.board().pause_all(PAUSE_WITHIN).await {
        Ok(entries) => entries,
        Err(entries) => {
            let why = format!(
                "{} of {} sessions did not pause within {PAUSE_WITHIN:?}",
                app.board().live().saturating_sub(entries.len()),
                app.board().live()
            );
            resume(app, entries);
            return Err(why);
        }
    };
    match transfer(app, plan, channel, entries, child).await {
        Ok((channel, entries, sessions, held)) => {
            park::tell(entries, Verdict::Gone);
            let pause = began.elapsed();
            plan.notifier.notify(&format!("MAINPID={pid}"));
            let _ = blocking(move || channel.send(&Message::Main)).await;
            Ok(Upgraded {
                pid,
                version,
                sessions,
                held,
                pause,
            })
        }
        Err((why, entries)) => {
            resume(app, entries);
            Err(why)
        }
    }
}

/// The new process's hello: its pid and version, if it reads this
/// build's format.
async fn hello(channel: Channel) -> Result<(Channel, u32, String), String> {
    let (channel, hello) = blocking(move || {
        let got = channel
            .set_timeout(STEP_WITHIN)
            .and_then(|()| channel.recv());
        (channel, got)
    })
    .await?;
    match hello {
        Ok((
            Message::Hello {
                formats,
                pid,
                version,
                commit,
            },
            _,
        )) if formats.contains(&FORMAT) => Ok((channel, pid, format!("{version} ({commit})"))),
        Ok((Message::Hello { formats, .. }, _)) => {
            let why = format!(
                "the new binary reads hand-over formats {formats:?}, this one writes {FORMAT}"
            );
            let _ = channel.send(&Message::Failed { why: why.clone() });
            Err(why)
        }
        Ok((other, _)) => Err(format!("the new process began with {other:?}, not hello")),
        Err(e) => Err(format!("no hello from the new process: {e}")),
    }
}

/// Every session carries on here, and the listeners accept again.
fn resume(app: &App, entries: Vec<Entry>) {
    park::tell(entries, Verdict::Resume);
    app.resume_accepting();
}

/// Waits for the new process to connect, noticing if it exits first.
async fn await_hello(listening: Listening, child: &mut Child) -> Result<Channel, String> {
    let pid = child.id();
    let deadline = Instant::now() + HELLO_WITHIN;
    let mut listening = listening;
    loop {
        let (back, got) = blocking(move || {
            let got = listening.accept_from(pid, Duration::from_millis(200));
            (listening, got)
        })
        .await?;
        listening = back;
        match got {
            Ok(channel) => return Ok(channel),
            Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
                return Err(format!("the hand-over socket failed: {e}"))
            }
            Err(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new process exited ({status}) before taking over; its log says why"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new process did not connect within {HELLO_WITHIN:?}"
            ));
        }
    }
}

/// Sends descriptors and state, then commits once the new process is
/// ready. On failure, the entries come back with the reason (their
/// sessions resume here).
async fn transfer(
    app: &App,
    plan: &Plan<'_>,
    channel: Channel,
    mut entries: Vec<Entry>,
    child: &mut Child,
) -> Result<(Channel, Vec<Entry>, usize, usize), (String, Vec<Entry>)> {
    let memory = app.inbox().remember().await.unwrap_or_default();
    let (mut state, fds) = match describe(app, plan, &mut entries) {
        Ok(built) => built,
        Err(e) => {
            return Err((
                format!("cannot copy a socket for the hand-over: {e}"),
                entries,
            ))
        }
    };
    state.memory = memory;
    let spliced = state
        .sessions
        .iter()
        .filter(|s| matches!(s.stage, format::Stage::Spliced { .. }))
        .count();
    let held = state.sessions.len() - spliced;
    let sent = blocking(move || {
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let got = channel
            .send_fds(&borrowed)
            .and_then(|()| channel.send(&Message::State(Box::new(state))))
            .and_then(|()| channel.recv());
        (channel, got)
    })
    .await;
    let (channel, ready) = match sent {
        Ok(sent) => sent,
        Err(why) => return Err((why, entries)),
    };
    match ready {
        Ok((Message::Ready { .. }, _)) => {}
        Ok((Message::Failed { why }, _)) => {
            return Err((format!("the new process gave up: {why}"), entries))
        }
        Ok((other, _)) => {
            return Err((
                format!("the new process answered {other:?}, not ready"),
                entries,
            ))
        }
        Err(e) => return Err((format!("the new process did not get ready: {e}"), entries)),
    }
    let channel = match commit(channel, child).await {
        Ok(channel) => channel,
        Err(why) => return Err((why, entries)),
    };
    Ok((channel, entries, spliced, held))
}

/// Tells the new process to go; from here the sessions are its, unless it
/// is seen to have exited.
async fn commit(channel: Channel, child: &mut Child) -> Result<Channel, String> {
    let (channel, running) = blocking(move || {
        let got = channel.send(&Message::Commit).and_then(|()| channel.recv());
        (channel, got)
    })
    .await?;
    if !matches!(running, Ok((Message::Running, _))) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the new process exited ({status}) as it took over"));
        }
        tracing::warn!(
            "the new process did not confirm it is running ({running:?}); it has the sessions"
        );
    }
    Ok(channel)
}

/// The state to hand over, and the descriptors it names, in order.
fn describe(
    app: &App,
    plan: &Plan<'_>,
    entries: &mut [Entry],
) -> std::io::Result<(State, Vec<OwnedFd>)> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    let number = |fd: OwnedFd, fds: &mut Vec<OwnedFd>| {
        fds.push(fd);
        u32::try_from(fds.len() - 1).unwrap_or(u32::MAX)
    };
    let mut state = State {
        format: FORMAT,
        from_pid: std::process::id(),
        from_version: env!("CARGO_PKG_VERSION").to_owned(),
        watchdog_usec: plan.watchdog_usec,
        ..State::default()
    };
    for (name, socket) in app.listener_sockets()? {
        let fd = number(OwnedFd::from(socket), &mut fds);
        state.listeners.push(format::Listener { name, fd });
    }
    if let Some(admin) = plan.admin {
        state.admin = Some(number(OwnedFd::from(admin.try_clone()?), &mut fds));
    }
    let gone = || std::io::Error::other("a parked session's socket was taken already");
    for entry in entries.iter_mut() {
        let parked = &mut entry.parked;
        // Moved, not copied: a paused session already holds two copies.
        let client = number(parked.client.take().ok_or_else(gone)?, &mut fds);
        let stage = match &mut parked.stage {
            Stage::Held { waited } => format::Stage::Held {
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
            Stage::Spliced {
                backend,
                address,
                progress,
            } => spliced(
                number(backend.take().ok_or_else(gone)?, &mut fds),
                address,
                progress,
            ),
        };
        state.sessions.push(format::Session {
            listener: parked.listener.clone(),
            peer: parked.peer.to_string(),
            pool: parked.pool.clone(),
            client,
            started_unix_ms: parked.started_unix_ms,
            stage,
        });
    }
    state.backends = backends(app);
    Ok((state, fds))
}

fn spliced(backend: u32, address: &str, p: &Progress) -> format::Stage {
    let flow = |f: FlowState| match f {
        FlowState::Open => format::Flow::Open,
        FlowState::Eof => format::Flow::Eof,
        FlowState::Done => format::Flow::Done,
    };
    format::Stage::Spliced {
        backend,
        address: address.to_owned(),
        to_backend: p.to_backend,
        to_client: p.to_client,
        client_pending: format::hex(&p.client_pending),
        backend_pending: format::hex(&p.backend_pending),
        client_flow: flow(p.client_flow),
        backend_flow: flow(p.backend_flow),
        first_eof: p.first_eof.map(|s| match s {
            Side::Client => format::End::Client,
            Side::Backend => format::End::Backend,
        }),
        idle_ms: u64::try_from(p.idle_for.as_millis()).unwrap_or(u64::MAX),
    }
}

/// What this process knows of each backend.
fn backends(app: &App) -> Vec<format::Backend> {
    let snapshot = app.snapshot();
    let now = std::time::Instant::now();
    let mut out: Vec<format::Backend> = Vec::new();
    for member in snapshot.pools().flat_map(|p| p.members.iter()) {
        let state = &member.state;
        if out.iter().any(|b| b.address == state.address) {
            continue;
        }
        out.push(format::Backend {
            address: state.address.clone(),
            health: state.health().as_str().to_owned(),
            reason: state.reason().to_string(),
            role: state.role().as_str().to_owned(),
            admin: state.admin_override(now).map(|o| format::Override {
                mode: o.mode.as_str().to_owned(),
                origin: o.origin,
                since_unix: o.since_unix,
                remaining_ms: o.until.map(|u| {
                    u64::try_from(u.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
                }),
            }),
        });
    }
    out
}

/// The new process's side: what it was handed, before it starts.
#[derive(Debug)]
pub struct Takeover {
    channel: Channel,
    /// What the former process handed over.
    pub state: State,
    fds: Vec<Option<OwnedFd>>,
}

impl Takeover {
    /// The former process's hand-over socket, named in [`ENV`] when this
    /// process was started to take over (the variable is cleared: read it
    /// before any thread starts).
    pub fn socket_from_env() -> Option<String> {
        let name = std::env::var(ENV).ok()?;
        std::env::remove_var(ENV);
        Some(name)
    }

    /// Connects to the former process at `name`, says hello and receives
    /// everything. Blocking: called before the runtime starts.
    pub fn receive(name: &str) -> Result<Takeover, String> {
        let channel =
            Channel::connect(name).map_err(|e| format!("cannot reach the former process: {e}"))?;
        let fail = |e: std::io::Error| format!("the hand-over failed: {e}");
        channel.set_timeout(STEP_WITHIN).map_err(fail)?;
        channel
            .send(&Message::Hello {
                formats: READS.to_vec(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                commit: env!("DBSPLICE_COMMIT").to_owned(),
            })
            .map_err(fail)?;
        let mut fds = Vec::new();
        loop {
            match channel.recv().map_err(fail)? {
                (Message::Fds { .. }, got) => fds.extend(got.into_iter().map(Some)),
                (Message::State(state), _) => {
                    state.check_fds(fds.len()).map_err(|e| e.to_string())?;
                    return Ok(Takeover {
                        channel,
                        state: *state,
                        fds,
                    });
                }
                (Message::Failed { why }, _) => {
                    return Err(format!("the former process gave up: {why}"))
                }
                (other, _) => return Err(format!("unexpected {other:?} in the hand-over")),
            }
        }
    }

    fn take(&mut self, fd: u32) -> Option<OwnedFd> {
        self.fds.get_mut(usize::try_from(fd).ok()?)?.take()
    }

    /// The listening sockets, by listener name, to bind the config's
    /// listeners to.
    pub fn listeners(&mut self) -> Vec<(Option<String>, std::net::TcpListener)> {
        let named: Vec<(String, u32)> = self
            .state
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.fd))
            .collect();
        named
            .into_iter()
            .filter_map(|(name, fd)| {
                Some((Some(name), std::net::TcpListener::from(self.take(fd)?)))
            })
            .collect()
    }

    /// The admin server's socket, if the former process had one.
    pub fn admin(&mut self) -> Option<std::net::TcpListener> {
        let fd = self.state.admin?;
        self.take(fd).map(std::net::TcpListener::from)
    }

    /// Places every session on `app`, to carry on once the former process
    /// lets go; tells it this process is ready, waits for its commit, then
    /// starts them and the accept loops. An error leaves nothing started:
    /// the caller exits and the former process carries on.
    pub async fn finish(mut self, app: &App) -> Result<usize, String> {
        let go = CancellationToken::new();
        let sessions = std::mem::take(&mut self.state.sessions);
        let count = sessions.len();
        for session in sessions {
            if let Err(why) = self.adopt(app, session, &go) {
                tracing::warn!("a session cannot be carried on here: {why}");
            }
        }
        let channel = self.channel;
        let (channel, commit) = blocking(move || {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let got = channel
                .send(&Message::Ready { sessions: count })
                .and_then(|()| channel.recv());
            (channel, got)
        })
        .await?;
        match commit {
            Ok((Message::Commit, _)) => {}
            other => return Err(format!("no commit from the former process: {other:?}")),
        }
        go.cancel();
        app.open_now();
        let _ = blocking(move || {
            let _ = channel.send(&Message::Running);
            // The former process tells the service manager first.
            let _ = channel.set_timeout(Duration::from_secs(5));
            let _ = channel.recv();
        })
        .await;
        Ok(count)
    }

    fn adopt(
        &mut self,
        app: &App,
        s: format::Session,
        go: &CancellationToken,
    ) -> Result<(), String> {
        let peer: SocketAddr = s
            .peer
            .parse()
            .map_err(|e| format!("peer {}: {e}", s.peer))?;
        let client = std::net::TcpStream::from(self.take(s.client).ok_or("no client socket")?);
        let snapshot = app.snapshot();
        let pool = snapshot
            .pool(&s.pool)
            .cloned()
            .ok_or_else(|| format!("pool '{}' is not in this config", s.pool))?;
        let adopter = app
            .adopter(&s.listener)
            .ok_or_else(|| format!("listener '{}' is not in this config", s.listener))?;
        let (taken, address) = match s.stage {
            format::Stage::Held { .. } => (Taken::Held { client, peer }, None),
            format::Stage::Spliced {
                backend,
                ref address,
                ..
            } => {
                let backend =
                    std::net::TcpStream::from(self.take(backend).ok_or("no backend socket")?);
                let progress = progress(&s.stage).map_err(|e| e.to_string())?;
                let taken = Taken::Spliced {
                    client,
                    backend,
                    peer,
                    address: address.clone(),
                    progress,
                    started_unix_ms: s.started_unix_ms,
                };
                (taken, Some(address.clone()))
            }
        };
        let state = address
            .as_deref()
            .and_then(|a| snapshot.backend(a).cloned())
            .unwrap_or_else(|| {
                let addr = ([0, 0, 0, 0], 0).into();
                std::sync::Arc::new(crate::cluster::BackendState::new(
                    address.unwrap_or_default(),
                    addr,
                ))
            });
        adopter.adopt(taken, pool, state, go.clone());
        Ok(())
    }
}

/// A spliced session's progress, from the format.
fn progress(stage: &format::Stage) -> Result<Progress, format::FormatError> {
    let format::Stage::Spliced {
        to_backend,
        to_client,
        client_pending,
        backend_pending,
        client_flow,
        backend_flow,
        first_eof,
        idle_ms,
        ..
    } = stage
    else {
        return Ok(Progress::default());
    };
    let flow = |f: &format::Flow| match f {
        format::Flow::Open => FlowState::Open,
        format::Flow::Eof => FlowState::Eof,
        format::Flow::Done => FlowState::Done,
    };
    Ok(Progress {
        to_backend: *to_backend,
        to_client: *to_client,
        client_pending: format::unhex(client_pending)?,
        backend_pending: format::unhex(backend_pending)?,
        client_flow: flow(client_flow),
        backend_flow: flow(backend_flow),
        first_eof: first_eof.map(|e| match e {
            format::End::Client => Side::Client,
            format::End::Backend => Side::Backend,
        }),
        idle_for: Duration::from_millis(*idle_ms),
    })
}
