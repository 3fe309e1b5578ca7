//! The control module: the one owner of dbsplice's running state, and the only
//! writer of the routing snapshot, of every member's decision, of operators'
//! overrides and of the controller's [`Memory`]. Everything that changes that
//! state arrives through one inbox ([`crate::inbox`]) and is handled here, one
//! event at a time, in `Control::run`:
//!
//! - a reload ([`reload`]): file text, a `Config` loaded off-thread, one swap;
//! - an operator's override or fail-back;
//! - a checker's health transition: every pool decided again ([`decide`]);
//! - the watchdog's ping, answered at once;
//! - shutdown: the checkers stop, then the module.
//!
//! After every event, and whenever a hold-down or fail-back timer ends, each
//! pool is decided again from the facts the checkers wrote.

pub mod decide;
pub mod evict;
pub mod listeners;
pub mod memory;
pub mod promote;
pub mod reload;
mod resolved;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::shared::Shared;
use crate::cluster::backend::{BackendState, Override};
use crate::cluster::{Registry, Snapshot};
use crate::config::Config;
use crate::health::histograms::ProbeHistograms;
use crate::health::state::Transition;
use crate::health::Supervisor;
use crate::inbox::{Event, Inbox, ReloadError, ReloadOutcome, Trigger};
use crate::proxy::bind::BoundListener;
use crate::proxy::cap::SessionCap;
use crate::vocabulary::{Health, OverrideMode};
use crate::workers::WorkerSet;
use listeners::Listeners;
use memory::Memory;
use reload::Reloader;

/// The tasks and tokens that a start creates and a shutdown ends, shared by
/// the control module and the [`crate::app::App`] that stops it.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// Checkers, the control module and its helpers.
    pub tasks: TaskTracker,
    /// The accept loops, apart: shutdown waits for them to end before it
    /// counts sessions, so that no client accepted meanwhile is dropped.
    pub accept_loops: TaskTracker,
    /// Client sessions.
    pub sessions: TaskTracker,
    /// Cancelled to stop every accept loop.
    pub stop_accepting: CancellationToken,
    /// Cancelled to close every open session.
    pub kill_sessions: CancellationToken,
    /// Cancelled to stop the checkers.
    pub stop_checks: CancellationToken,
    /// Cancelled when the first probe round is done: accept loops start.
    pub open: CancellationToken,
    /// Where sessions pause for a hand-over to a new process.
    pub board: Arc<crate::proxy::park::Board>,
}

/// What [`start`] hands back: how to reach and observe the running module.
#[derive(Debug)]
pub struct Started {
    /// Where events go.
    pub inbox: Inbox,
    /// What the admin server reads.
    pub shared: Arc<Shared>,
    /// The tasks and tokens to stop it by.
    pub life: Lifecycle,
    /// The running accept loops.
    pub listeners: Arc<std::sync::Mutex<Listeners>>,
}

/// A reload being loaded, and the callers waiting for its outcome.
type Loading = Pin<Box<dyn Future<Output = Result<Config, ReloadError>> + Send>>;

/// The owner of the running state.
#[derive(Debug)]
pub struct Control {
    routes: Arc<ArcSwap<Snapshot>>,
    registry: Registry,
    supervisor: Supervisor,
    /// Shared with the [`crate::app::App`], which suspends them for a
    /// hand-over; never locked across an await.
    listeners: Arc<std::sync::Mutex<Listeners>>,
    memory: Memory,
    /// The config file, if dbsplice was started from one.
    reloader: Option<Reloader>,
    shared: Arc<Shared>,
    life: Lifecycle,
    /// Where the control module's own later steps are sent.
    inbox: Inbox,
    /// The replication watchers, by pool: what stops each, and what makes it
    /// look again at once.
    watchers:
        std::collections::HashMap<String, (CancellationToken, std::sync::Arc<tokio::sync::Notify>)>,
    /// Names the resolver should ask again soon (a probe failed).
    resolve_soon: mpsc::Sender<String>,
}

/// Names waiting to be resolved again at once, at most (more wait for the
/// next failed probe).
const RESOLVE_HINTS: usize = 256;

/// How often a resume waiting for fresh probes looks whether they are done.
const RESUME_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Builds the first snapshot from `config`, starts its checkers and accept
/// loops on the `bound` sockets (accepted on each of the `workers` runtimes,
/// or on the caller's without), and runs the control module on the caller's
/// runtime until a shutdown event. `file` is where reloads read the config.
///
/// `inherited` is what the process that handed this one its sessions knew
/// of each backend and remembered between decisions: the checkers and the
/// decisions carry on from there.
pub fn start(
    config: Config,
    file: Option<&Path>,
    bound: Vec<BoundListener>,
    workers: Option<Arc<WorkerSet>>,
    inherited: Option<&crate::handover::format::State>,
) -> io::Result<Started> {
    let (inbox, events) = Inbox::new();
    let life = Lifecycle::default();
    let mut registry = Registry::default();
    let snapshot = Snapshot::build(Arc::new(config), 1, &mut registry);
    let mut memory = Memory::default();
    if let Some(state) = inherited {
        seed(&snapshot, &state.backends);
        memory.restore(&state.memory, &snapshot);
    }
    let routes = Arc::new(ArcSwap::from_pointee(snapshot));
    let histograms = Arc::new(ProbeHistograms::default());
    let cap = Arc::new(SessionCap::for_this_process());
    let shared = Arc::new(Shared::new(
        Arc::clone(&routes),
        Arc::clone(&histograms),
        Arc::clone(&cap),
    ));
    announce(&cap);
    let mut control = Control {
        resolve_soon: start_resolver(&routes, &inbox, &life),
        supervisor: Supervisor::new(inbox.clone(), histograms),
        listeners: Arc::new(std::sync::Mutex::new(Listeners::new(
            Arc::clone(&routes),
            cap,
            workers,
            life.clone(),
        ))),
        routes,
        registry,
        memory,
        reloader: file.map(Reloader::new),
        shared: Arc::clone(&shared),
        life: life.clone(),
        inbox: inbox.clone(),
        watchers: std::collections::HashMap::new(),
    };
    control.supervisor.reconcile(
        &control.routes.load().config,
        &control.registry,
        &life.tasks,
        &life.stop_checks,
    );
    for b in bound {
        control.listeners().start(b)?;
    }
    control.reconcile_watchers();
    control.listeners().publish(&shared);
    let listeners = Arc::clone(&control.listeners);
    life.tasks.spawn(control.run(events));
    Ok(Started {
        inbox,
        shared,
        life,
        listeners,
    })
}

impl Control {
    /// The accept loops, locked.
    fn listeners(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles events one at a time until a shutdown event (or until every
    /// sender is gone), deciding every pool again after each one and when a
    /// hold ends. A reload's loading runs beside the loop; reloads asked for
    /// meanwhile wait their turn.
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut loading: Option<(Loading, oneshot::Sender<ReloadOutcome>)> = None;
        let mut waiting: VecDeque<(Trigger, oneshot::Sender<ReloadOutcome>)> = VecDeque::new();
        loop {
            if loading.is_none() {
                loading = self.next_reload(&mut waiting);
            }
            let wake = self.decide(Instant::now());
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let loaded = async {
                match loading.as_mut() {
                    Some((load, _)) => load.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Reload { trigger, reply }) => waiting.push_back((trigger, reply)),
                    Some(Event::Shutdown { reply }) => {
                        self.life.stop_checks.cancel();
                        let _ = reply.send(());
                        return;
                    }
                    Some(event) => self.handle(event),
                    None => return,
                },
                result = loaded => {
                    if let Some((_, reply)) = loading.take() {
                        let _ = reply.send(self.finish_reload(result));
                    }
                }
                () = timer => {}
            }
        }
    }

    /// Starts loading the first waiting reload that needs it; answers at
    /// once those that do not (unchanged bytes, unreadable file, no file).
    fn next_reload(
        &mut self,
        waiting: &mut VecDeque<(Trigger, oneshot::Sender<ReloadOutcome>)>,
    ) -> Option<(Loading, oneshot::Sender<ReloadOutcome>)> {
        while let Some((trigger, reply)) = waiting.pop_front() {
            let Some(reloader) = self.reloader.as_mut() else {
                let _ = reply.send(ReloadOutcome::Rejected(ReloadError::NoFile));
                continue;
            };
            match reloader.read(trigger) {
                Ok(text) => return Some((Box::pin(reloader.load(text)), reply)),
                Err(outcome) => {
                    self.record_reload(&outcome);
                    let _ = reply.send(outcome);
                }
            }
        }
        None
    }

    /// Handles one event other than a reload or shutdown.
    fn handle(&mut self, event: Event) {
        match event {
            Event::Override {
                backend,
                value,
                reply,
            } => {
                let _ = reply.send(self.set_override(&backend, value));
            }
            Event::Switchover {
                pool,
                to,
                origin,
                reply,
            } => self.switchover(pool, to, origin, reply),
            Event::PromotionDone { report, reply } => self.promotion_done(*report, reply),
            Event::Failback { pool, reply } => {
                let _ = reply.send(self.failback(&pool));
            }
            Event::Pause {
                pool,
                duration,
                origin,
                reply,
            } => {
                let _ = reply.send(self.pause(&pool, duration, &origin));
            }
            Event::Resume {
                pool,
                origin,
                probed: true,
                reply,
            } => {
                let _ = reply.send(self.resume(&pool, &origin));
            }
            Event::Resume {
                pool,
                origin,
                probed: false,
                reply,
            } => self.resume_after_probes(pool, origin, reply),
            // The decision that follows every event reads the new facts.
            Event::Health {
                address,
                transition: Some(t),
            } => self.note_transition(&address, t),
            Event::Topology { pool, servers } => self.topology(pool, servers),
            Event::RepairsDone { pool, failed } => self.repairs_done(&pool, failed),
            Event::Health { .. } => {}
            Event::Resolved { .. }
            | Event::Expanded { .. }
            | Event::Discovered { .. }
            | Event::ResolveSoon { .. } => self.resolver_event(event),
            Event::Ping { reply } => drop(reply.send(())),
            Event::Remember { reply } => {
                let snapshot = self.routes.load();
                drop(reply.send(self.memory.carried(&snapshot)));
            }
            Event::Reload { .. } | Event::Shutdown { .. } => {
                debug_assert!(false, "handled by the loop");
            }
        }
    }

    /// Decides every pool at `now`, publishes the pool decisions and returns
    /// when the next hold ends.
    fn decide(&mut self, now: Instant) -> Option<Instant> {
        let snapshot = self.routes.load_full();
        let mut wake: Option<Instant> = None;
        for pool in snapshot.pools() {
            if let Some(at) = decide::evaluate(pool, &mut self.memory, now) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        // Held clients look again at whatever was just decided.
        for pool in snapshot.pools() {
            pool.waiting.wake();
        }
        for (kind, text) in self.memory.take_notes() {
            self.shared.timeline.push(kind, text);
        }
        let views = snapshot
            .pools()
            .map(|p| (p.config.name.clone(), self.memory.view(&p.config.name)))
            .collect();
        *self
            .shared
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = views;
        wake
    }

    /// Puts a backend's change of health on the timeline, by its names in
    /// the pools and its address.
    /// Notes a health transition: for the failover clock and the timeline.
    fn note_transition(&mut self, address: &str, t: Transition) {
        let down = t.to == Health::Down;
        self.memory
            .health_changed(address, down, tokio::time::Instant::now());
        if t.to == Health::Up {
            // A server back from down may be a former primary, writable:
            // its pool's watcher looks now, not at its next round.
            self.poke_watchers(address);
        }
        self.note_on_timeline(address, t);
    }

    fn note_on_timeline(&self, address: &str, t: Transition) {
        let snapshot = self.routes.load();
        let mut names: Vec<&str> = names_of(&snapshot, address);
        names.sort_unstable();
        names.dedup();
        let reason = snapshot
            .backend(address)
            .map(|s| s.reason().to_string())
            .unwrap_or_default();
        let who = who(&names, address);
        self.shared.timeline.push(
            "backend",
            format!("{who} {} (was {}): {reason}", t.to, t.from),
        );
    }

    /// Sets (or, with `None`, clears) an operator's override on every backend
    /// named `name` in any pool; `disable` also closes their sessions at once.
    /// Returns how many backends matched.
    fn set_override(&mut self, name: &str, value: Option<Override>) -> usize {
        let snapshot = self.routes.load();
        let mut matched = 0;
        for pool in snapshot.pools() {
            for member in pool.members.iter().filter(|m| m.name == name) {
                matched += 1;
                member.state.set_admin_override(value.clone());
                if value
                    .as_ref()
                    .is_some_and(|o| o.mode == OverrideMode::Disable)
                {
                    member.decision.take_evict_token().cancel();
                }
            }
        }
        if matched > 0 {
            let state = value.as_ref().map_or("enabled", |o| o.mode.as_str());
            tracing::info!(backend = name, state, "admin override");
            let by = value
                .as_ref()
                .map(|o| format!(" by {}", o.origin))
                .unwrap_or_default();
            self.shared
                .timeline
                .push("admin", format!("{name}: {state}{by}"));
        }
        matched
    }

    /// Holds every new client of pool `name` for up to `duration`, each for
    /// at most its `hold_timeout`; open sessions continue.
    fn pause(&mut self, name: &str, duration: std::time::Duration, origin: &str) -> bool {
        let snapshot = self.routes.load();
        let Some(pool) = snapshot.pool(name) else {
            return false;
        };
        pool.waiting.pause(tokio::time::Instant::now() + duration);
        let duration = crate::config::format_duration(duration);
        tracing::warn!(
            pool = name,
            origin,
            "pool paused for {duration}: new clients are held"
        );
        self.shared.timeline.push(
            "admin",
            format!("{name}: paused for {duration} by {origin}"),
        );
        true
    }

    /// Ends a pause of pool `name` once each of its backends has been probed
    /// again (or the check's timeout and the checkers' least gap passed):
    /// the demotion and promotion an operator made just before resuming are
    /// then known, and no held client goes to a server that stopped being the
    /// primary a moment ago. The pool stays paused meanwhile.
    fn resume_after_probes(
        &self,
        name: String,
        origin: String,
        reply: tokio::sync::oneshot::Sender<Option<usize>>,
    ) {
        let snapshot = self.routes.load();
        let Some(pool) = snapshot.pool(&name) else {
            let _ = reply.send(None);
            return;
        };
        let marks: Vec<(Arc<BackendState>, u64)> = pool
            .members
            .iter()
            .map(|m| (Arc::clone(&m.state), m.state.probes_begun()))
            .collect();
        for (state, _) in &marks {
            state.request_probe();
        }
        let deadline =
            tokio::time::Instant::now() + pool.config.check.timeout + crate::health::MIN_GAP * 2;
        let inbox = self.inbox.clone();
        self.life.tasks.spawn(async move {
            // A probe in flight now may have seen the servers before the
            // operator's change: only one begun after it counts.
            while tokio::time::Instant::now() < deadline
                && marks.iter().any(|(s, begun)| s.observed() <= *begun)
            {
                tokio::time::sleep(RESUME_POLL).await;
            }
            let held = inbox.resume_probed(name, origin).await;
            let _ = reply.send(held.ok().flatten());
        });
    }

    /// Ends a pause of pool `name`: held clients look for a backend at once.
    /// Returns how many were held, or `None` for an unknown pool.
    fn resume(&mut self, name: &str, origin: &str) -> Option<usize> {
        let snapshot = self.routes.load();
        let pool = snapshot.pool(name)?;
        let held = pool.waiting.held();
        let was = pool.waiting.resume();
        tracing::info!(pool = name, origin, held, was_paused = was, "pool resumed");
        self.shared.timeline.push(
            "admin",
            format!("{name}: resumed by {origin}, {held} held clients released"),
        );
        Some(held)
    }

    /// Lets backends held after returning from down take traffic again in
    /// `pool` (`failback = "manual"`). Returns how many were held, or `None`
    /// for an unknown pool.
    fn failback(&mut self, name: &str) -> Option<usize> {
        let snapshot = self.routes.load();
        let pool = snapshot.pool(name)?;
        self.memory.approve_failback(name);
        let held = pool
            .members
            .iter()
            .filter(|m| m.state.health() == Health::Up && !m.is_eligible())
            .count();
        tracing::info!(pool = name, held, "manual fail-back");
        self.shared.timeline.push(
            "admin",
            format!("{name}: manual fail-back, {held} backends released"),
        );
        Some(held)
    }
}

fn announce(cap: &SessionCap) {
    tracing::info!(
        max_sessions = cap.limit(),
        "at most {} sessions at once: two open files each, within the open-files limit",
        cap.limit()
    );
}

/// Gives each backend of `snapshot` what a former process knew about it.
fn seed(snapshot: &Snapshot, seeds: &[crate::handover::format::Backend]) {
    use crate::vocabulary::Role;
    for b in seeds {
        let Some(state) = snapshot.backend(&b.address) else {
            continue;
        };
        let health = match b.health.as_str() {
            "up" => Health::Up,
            "down" => Health::Down,
            _ => Health::Unknown,
        };
        let role = match b.role.as_str() {
            "writable" => Role::Writable,
            "read-only" => Role::ReadOnly,
            _ => Role::Unknown,
        };
        state.seed(health, &b.reason, role);
        let mode = b.admin.as_ref().and_then(|o| match o.mode.as_str() {
            "drain" => Some(OverrideMode::Drain),
            "disable" => Some(OverrideMode::Disable),
            _ => None,
        });
        if let (Some(o), Some(mode)) = (&b.admin, mode) {
            state.set_admin_override(Some(Override {
                mode,
                origin: o.origin.clone(),
                since_unix: o.since_unix,
                until: o
                    .remaining_ms
                    .map(|ms| Instant::now() + std::time::Duration::from_millis(ms)),
            }));
        }
    }
}

/// Starts the tasks that resolve backend names again and discover cluster
/// members; where to ask the resolver for a name at once.
fn start_resolver(
    routes: &Arc<ArcSwap<Snapshot>>,
    inbox: &Inbox,
    life: &Lifecycle,
) -> mpsc::Sender<String> {
    let (soon, hints) = mpsc::channel(RESOLVE_HINTS);
    life.tasks.spawn(crate::config::resolve::run(
        Arc::clone(routes),
        inbox.clone(),
        hints,
        life.stop_checks.child_token(),
    ));
    life.tasks.spawn(crate::config::discover::run(
        Arc::clone(routes),
        inbox.clone(),
        life.stop_checks.child_token(),
    ));
    soon
}

/// The names the backend at `address` has in the pools of `snapshot`.
fn names_of<'a>(snapshot: &'a Snapshot, address: &str) -> Vec<&'a str> {
    snapshot
        .pools()
        .flat_map(|p| p.members.iter())
        .filter(|m| m.state.address == address)
        .map(|m| m.name.as_str())
        .collect()
}

/// A backend as the timeline names it: its names, and its address when
/// that differs.
fn who(names: &[&str], address: &str) -> String {
    match names {
        [name] if *name == address => address.to_owned(),
        _ => format!("{} ({address})", names.join(", ")),
    }
}
