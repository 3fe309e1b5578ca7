//! Carries out a switchover step by step over SQL, each step timed and
//! reported, and rolls back to the old primary when a step before the
//! promotion fails. At no moment are two servers writable: the old primary is
//! made read-only before the new one is made writable, and a rollback makes
//! the new one read-only again before the old one takes writes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::observe;
use super::plan::{self, Flavour, Server};
pub use super::report::{Report, Step};
use crate::config::replication::ReplicationConfig;
use crate::config::PoolConfig;
use crate::health::probe::Prober;
use crate::inbox::Inbox;
use crate::mysql::resultset::QueryOutcome;

/// Slack over a step's own wait for the login and the answer.
const SESSION_SLACK: Duration = Duration::from_secs(5);

/// A pool's servers as the executor reaches them.
struct Ctx<'a> {
    /// By backend index: each server reached with its own TLS name.
    admins: Vec<Prober>,
    pool: &'a PoolConfig,
    replication: &'a ReplicationConfig,
    inbox: Inbox,
    steps: Vec<Step>,
    /// When the switchover began, in seconds since the Unix epoch.
    started_unix: u64,
    /// The primary waited for semi-synchronous acknowledgements: the new
    /// one does, the demoted and re-pointed servers acknowledge instead.
    semi_sync: bool,
    /// Which statements the pool's servers understand.
    flavour: Flavour,
}

impl<'a> Ctx<'a> {
    /// A context for acting on `pool`'s servers, which needs its
    /// `[replication]` table.
    fn new(pool: &'a PoolConfig, admins: Vec<Prober>, inbox: Inbox) -> Result<Ctx<'a>, String> {
        let replication = pool
            .replication
            .as_ref()
            .ok_or("the pool has no [replication] table")?;
        Ok(Ctx {
            admins,
            pool,
            replication,
            inbox,
            steps: Vec::new(),
            started_unix: super::report::unix_now(),
            semi_sync: false,
            flavour: Flavour::MariaDb,
        })
    }

    /// Runs `statements` on `addr` as one step named `name`; the answers,
    /// or why the step failed (the first failing statement, or the session).
    async fn step(
        &mut self,
        name: String,
        server: usize,
        statements: Vec<String>,
        wait: Duration,
    ) -> Result<Vec<QueryOutcome>, String> {
        let started = Instant::now();
        let sent = statements.clone();
        let (Some(admin), Some(addr)) = (self.admins.get(server), self.addr(server)) else {
            let result = Err("no such server".to_owned());
            self.record(name, started, &result);
            return Err("no such server".into());
        };
        let result = match admin
            .run_statements(addr, statements, wait + SESSION_SLACK)
            .await
        {
            Ok(facts) => match facts
                .answers
                .iter()
                .position(|a| matches!(a, QueryOutcome::Failed(_)))
            {
                Some(i) => Err(match (sent.get(i), facts.answers.get(i)) {
                    (Some(sql), Some(QueryOutcome::Failed(e))) => {
                        format!("{} failed: {e}", redact(sql))
                    }
                    _ => "a statement failed".into(),
                }),
                None if facts.answers.len() < sent.len() => {
                    Err("the server did not answer every statement".into())
                }
                None => Ok(facts.answers),
            },
            Err(why) => Err(why),
        };
        self.record(
            name,
            started,
            &result.as_ref().map(|_| String::new()).map_err(Clone::clone),
        );
        result
    }

    fn record(&mut self, name: String, started: Instant, result: &Result<String, String>) {
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (ok, detail) = match result {
            Ok(d) => (true, d.clone()),
            Err(e) => (false, e.clone()),
        };
        tracing::info!(pool = %self.pool.name, step = %name, took_ms, ok, "switchover: {name}: {detail}");
        self.steps.push(Step {
            step: name,
            took_ms,
            ok,
            detail,
        });
    }

    fn addr(&self, i: usize) -> Option<SocketAddr> {
        self.pool.backends.get(i).map(|b| b.addr)
    }
}

/// The `[replication]` login's way to each backend of `pool`, by index: the
/// check's TLS and PROXY settings with the replication user.
pub fn admins(pool: &PoolConfig) -> Result<Vec<Prober>, String> {
    let r = pool
        .replication
        .as_ref()
        .ok_or("the pool has no [replication] table")?;
    pool.backends
        .iter()
        .map(|b| {
            let check = Prober::new(&pool.check, &b.address.host, pool.routing.send_proxy)?;
            check
                .with_login(&r.user, r.password.expose())
                .ok_or_else(|| "a pool with [replication] needs the mysql check".to_owned())
        })
        .collect()
}

/// Switches pool `pool`'s primary over to `to` (or to the most advanced
/// replica that may be promoted). `admin` reaches the servers with the
/// pool's replication login; `inbox` pauses and resumes the pool.
pub async fn switchover(
    pool: &PoolConfig,
    admins: Vec<Prober>,
    inbox: Inbox,
    to: Option<String>,
    origin: String,
) -> Report {
    let mut ctx = match Ctx::new(pool, admins, inbox) {
        Ok(ctx) => ctx,
        Err(why) => return refused(pool, &origin, Vec::new(), None, why),
    };
    let (servers, plan, lock) = match plan_under_lock(&mut ctx, to.as_deref()).await {
        Ok(planned) => planned,
        Err((from, why)) => return refused(pool, &origin, ctx.steps, from, why),
    };
    let outcome = carry_out(&mut ctx, &servers, &plan, &origin).await;
    drop(lock);
    finished(ctx, origin, &servers, &plan, outcome)
}

/// The report of a switchover that was carried out, however it ended.
fn finished(
    ctx: Ctx<'_>,
    origin: String,
    servers: &[Server],
    plan: &plan::SwitchoverPlan,
    outcome: Result<(), String>,
) -> Report {
    let name = |i: usize| servers.get(i).map(|s| s.name.clone());
    let (ok, to, summary) = match outcome {
        Ok(()) => (
            true,
            name(plan.new),
            format!("{} is the primary", name(plan.new).unwrap_or_default()),
        ),
        Err(why) => (false, None, why),
    };
    Report {
        kind: "switchover",
        pool: ctx.pool.name.clone(),
        origin,
        started_unix: ctx.started_unix,
        from: name(plan.old),
        to,
        ok,
        summary,
        carried_out: true,
        steps: ctx.steps,
    }
}

/// Looks, takes the lock, and looks again under it: the servers and the
/// plan to carry out with the lock held, or (the primary's name, why not).
async fn plan_under_lock(
    ctx: &mut Ctx<'_>,
    to: Option<&str>,
) -> Result<(Vec<Server>, plan::SwitchoverPlan, Lock), (Option<String>, String)> {
    let writable = |servers: &[Server]| {
        servers
            .iter()
            .find(|s| matches!(&s.seen, plan::Seen::Answered(f) if !f.read_only))
            .map(|s| s.name.clone())
    };
    let (servers, planned) = look(ctx, to).await;
    let plan = planned.map_err(|r| (writable(&servers), r.to_string()))?;
    ctx.flavour = one_flavour(&servers).map_err(|why| (writable(&servers), why))?;
    ctx.semi_sync = matches!(servers.get(plan.old).map(|s| &s.seen), Some(plan::Seen::Answered(f)) if f.semi_sync);
    let from = servers.get(plan.old).map(|s| s.name.clone());
    let lock = take_lock(ctx).await.map_err(|why| (from.clone(), why))?;
    // Another instance may have acted between the look and the lock: look
    // again under the lock, for the candidate chosen (which replica is a
    // transaction ahead may change under load), and go on only if the
    // primary is the same.
    let chosen = servers.get(plan.new).map(|s| s.name.clone());
    let (servers, again) = look(ctx, chosen.as_deref().or(to)).await;
    match again {
        Ok(again) if again.old == plan.old && again.new == plan.new => Ok((servers, again, lock)),
        Ok(_) => Err((
            from,
            "the pool changed while the lock was taken; ask again".into(),
        )),
        Err(refusal) => Err((from, refusal.to_string())),
    }
}

/// The flavour every answering server shares; a pool that mixes them is
/// not managed.
fn one_flavour(servers: &[Server]) -> Result<Flavour, String> {
    let mut flavours = servers.iter().filter_map(|s| match &s.seen {
        plan::Seen::Answered(f) => Some(f.flavour),
        _ => None,
    });
    let first = flavours.next().unwrap_or_default();
    if flavours.all(|f| f == first) {
        Ok(first)
    } else {
        Err(
            "the pool mixes MariaDB and MySQL servers: dbsplice manages one flavour per pool"
                .into(),
        )
    }
}

/// Reads every server and plans the switchover, as the first step.
async fn look(
    ctx: &mut Ctx<'_>,
    to: Option<&str>,
) -> (Vec<Server>, Result<plan::SwitchoverPlan, plan::Refusal>) {
    let started = Instant::now();
    let timeout = ctx.pool.check.timeout + SESSION_SLACK;
    let servers = observe::pool(&ctx.admins, ctx.pool, timeout).await;
    let planned = plan::switchover(&servers, to);
    ctx.record(
        "look at every server".into(),
        started,
        &planned
            .as_ref()
            .map(|p| describe_plan(&servers, p))
            .map_err(ToString::to_string),
    );
    (servers, planned)
}

/// The promotion lock of a pool, held by one admin session per server while
/// this lives: dropped, the sessions quit and the servers release it.
struct Lock(tokio_util::sync::CancellationToken);

impl Drop for Lock {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The name every dbsplice instance with this pool locks (`GET_LOCK` names
/// are at most 64 characters).
fn lock_name(pool: &str) -> String {
    format!("dbsplice:{pool}").chars().take(64).collect()
}

/// Takes the pool's lock on a majority of its servers (of all, or of those
/// that answer, as `lock` says), so that of several instances with one
/// config only one acts; or says who has it and how many answered.
async fn take_lock(ctx: &mut Ctx<'_>) -> Result<Lock, String> {
    let started = Instant::now();
    let lock = Lock(tokio_util::sync::CancellationToken::new());
    let name = lock_name(&ctx.pool.name);
    let sql = format!("SELECT GET_LOCK({}, 0) AS got", quote(&name));
    let timeout = ctx.pool.check.timeout + SESSION_SLACK;
    let tries: Vec<_> = ctx
        .admins
        .iter()
        .zip(&ctx.pool.backends)
        .map(|(admin, b)| {
            let (admin, addr, sql, release) = (admin.clone(), b.addr, sql.clone(), lock.0.clone());
            tokio::spawn(async move {
                admin
                    .run_statements_kept_open(addr, vec![sql], timeout, release)
                    .await
            })
        })
        .collect();
    let (mut got, mut answered) = (0usize, 0usize);
    for attempt in tries {
        if let Ok(Ok(facts)) = attempt.await {
            answered += 1;
            let granted = matches!(facts.answers.first(), Some(QueryOutcome::Rows(r)) if r.first("got") == Some("1"));
            got += usize::from(granted);
        }
    }
    let of = match ctx.replication.lock {
        crate::vocabulary::LockScope::MajorityOfAll => ctx.pool.backends.len(),
        crate::vocabulary::LockScope::MajorityOfRunning => answered,
    };
    let need = of / 2 + 1;
    let result = if of > 0 && got >= need {
        Ok(format!(
            "{name} held on {got} of {} servers ({need} needed)",
            ctx.pool.backends.len()
        ))
    } else {
        Err(format!(
            "the lock {name} was granted by {got} of {of} servers ({} answered), {need} needed \
             (lock = \"{}\"): another dbsplice instance is acting on this pool, or too few servers answer",
            answered,
            ctx.replication.lock.as_str()
        ))
    };
    ctx.record(
        "take the lock on a majority of servers".into(),
        started,
        &result,
    );
    result.map(|_| lock)
}

/// Pause, demote, catch up, promote, re-point, resume.
async fn carry_out(
    ctx: &mut Ctx<'_>,
    servers: &[Server],
    plan: &plan::SwitchoverPlan,
    origin: &str,
) -> Result<(), String> {
    let (Some(old), Some(new)) = (servers.get(plan.old), servers.get(plan.new)) else {
        return Err("the plan names a server the pool does not have".into());
    };
    let (old_addr, new_addr) = (plan.old, plan.new);
    let pause_for = ctx.replication.catch_up_timeout + Duration::from_secs(30);
    let started = Instant::now();
    let paused = ctx
        .inbox
        .pause(&ctx.pool.name, pause_for, format!("switchover ({origin})"))
        .await;
    ctx.record(
        "pause the pool".into(),
        started,
        &paused
            .map(|_| {
                format!(
                    "new clients held for at most {}",
                    crate::config::format_duration(pause_for)
                )
            })
            .map_err(|_| "dbsplice is stopping".to_owned()),
    );
    let result = promote(ctx, old, new, old_addr, new_addr).await;
    if result.is_ok() {
        for &i in &plan.others {
            if let Some(s) = servers.get(i) {
                let _ = repoint(ctx, s, i, new, None).await;
            }
        }
    }
    resume(ctx, origin).await;
    result
}

/// Demotes `old`, waits for `new` to catch up, promotes it and re-points
/// `old` at it; rolls back when a step before the promotion fails.
async fn promote(
    ctx: &mut Ctx<'_>,
    old: &Server,
    new: &Server,
    old_at: usize,
    new_at: usize,
) -> Result<(), String> {
    let target = match demote(ctx, old, old_at).await {
        Ok(target) => target,
        Err(why) => return rollback(ctx, old, old_at, None, &why).await,
    };
    if let Err(why) = catch_up(ctx, new, new_at, &target).await {
        return rollback(ctx, old, old_at, None, &why).await;
    }
    let promote = promote_statements(ctx.flavour);
    let name = format!("promote {}", new.name);
    if let Err(why) = ctx.step(name, new_at, promote, Duration::ZERO).await {
        return rollback(ctx, old, old_at, Some((new, new_at)), &why).await;
    }
    semi_sync_waits(ctx, new, new_at, true).await;
    let _ = repoint(ctx, old, old_at, new, Some(&target)).await;
    Ok(())
}

/// Makes `old` read-only; its last GTID, which the candidate must apply.
async fn demote(ctx: &mut Ctx<'_>, old: &Server, old_at: usize) -> Result<String, String> {
    let mut demote = read_only(ctx.flavour, true);
    demote.push(match ctx.flavour {
        Flavour::MariaDb => "SELECT @@gtid_binlog_pos AS pos".to_owned(),
        Flavour::MySql => "SELECT @@gtid_executed AS pos".to_owned(),
    });
    let name = format!("make {} read-only and read its last GTID", old.name);
    match ctx
        .step(name, old_at, demote, Duration::ZERO)
        .await
        .as_deref()
    {
        Ok([.., QueryOutcome::Rows(rows)]) => Ok(rows.first("pos").unwrap_or_default().to_owned()),
        Ok(_) => Err("the old primary's GTID position is unknown".into()),
        Err(why) => Err(format!("the old primary was not demoted: {why}")),
    }
}

/// Waits, up to `catch_up_timeout`, for `new` to have applied `target`.
async fn catch_up(
    ctx: &mut Ctx<'_>,
    new: &Server,
    new_at: usize,
    target: &str,
) -> Result<(), String> {
    let wait = ctx.replication.catch_up_timeout;
    let function = match ctx.flavour {
        Flavour::MariaDb => "MASTER_GTID_WAIT",
        Flavour::MySql => "WAIT_FOR_EXECUTED_GTID_SET",
    };
    let sql = format!(
        "SELECT {function}({}, {}) AS waited",
        quote(target),
        wait.as_secs_f64()
    );
    let name = format!("wait for {} to apply {target}", new.name);
    match ctx.step(name, new_at, vec![sql], wait).await.as_deref() {
        Ok([QueryOutcome::Rows(rows)]) if rows.first("waited") == Some("0") => Ok(()),
        Ok(_) => {
            let state = replica_state(ctx, new_at).await;
            Err(format!(
                "{} did not apply {target} within {} ({state})",
                new.name,
                crate::config::format_duration(wait)
            ))
        }
        Err(why) => Err(why.clone()),
    }
}

/// Where a replica's replication stands, in words: why it may not have
/// applied what it was waited for.
async fn replica_state(ctx: &Ctx<'_>, at: usize) -> String {
    let (Some(admin), Some(addr)) = (ctx.admins.get(at), ctx.addr(at)) else {
        return "state unknown".into();
    };
    let sql = match ctx.flavour {
        Flavour::MariaDb => ["SHOW SLAVE STATUS", "SELECT @@gtid_slave_pos AS slave_pos"],
        Flavour::MySql => ["SHOW REPLICA STATUS", "SELECT @@gtid_executed AS slave_pos"],
    }
    .map(str::to_owned)
    .to_vec();
    let facts = match admin
        .run_statements(addr, sql, ctx.pool.check.timeout + SESSION_SLACK)
        .await
    {
        Ok(facts) => facts,
        Err(why) => return format!("state unknown: {why}"),
    };
    let (Some(QueryOutcome::Rows(status)), Some(QueryOutcome::Rows(pos))) =
        (facts.answers.first(), facts.answers.get(1))
    else {
        return "state unknown".into();
    };
    let col = |c: &str| status.first(c).unwrap_or("-").to_owned();
    let (received, running, state) = match ctx.flavour {
        Flavour::MariaDb => (
            "Gtid_IO_Pos",
            "Slave_SQL_Running",
            "Slave_SQL_Running_State",
        ),
        Flavour::MySql => (
            "Retrieved_Gtid_Set",
            "Replica_SQL_Running",
            "Replica_SQL_Running_State",
        ),
    };
    format!(
        "applied {}, received {}, SQL thread {} ({}), last SQL error: {}",
        pos.first("slave_pos").unwrap_or("-"),
        col(received),
        col(running),
        col(state),
        match col("Last_SQL_Error").as_str() {
            "" => "none".to_owned(),
            e => e.to_owned(),
        }
    )
}

/// Makes a server read-only (`on`) or writable. On MySQL `super_read_only`,
/// which also stops users with SUPER; it implies `read_only`.
fn read_only(flavour: Flavour, on: bool) -> Vec<String> {
    match (flavour, on) {
        (Flavour::MariaDb, true) => vec!["SET GLOBAL read_only = ON".to_owned()],
        (Flavour::MariaDb, false) => vec!["SET GLOBAL read_only = OFF".to_owned()],
        (Flavour::MySql, true) => vec!["SET GLOBAL super_read_only = ON".to_owned()],
        (Flavour::MySql, false) => vec![
            "SET GLOBAL super_read_only = OFF".to_owned(),
            "SET GLOBAL read_only = OFF".to_owned(),
        ],
    }
}

/// What makes a replica the primary. (Semi-synchronous waits are turned on
/// after, by [`semi_sync_waits`], so that a missing privilege for them does
/// not undo a promotion.)
fn promote_statements(flavour: Flavour) -> Vec<String> {
    let stop = match flavour {
        Flavour::MariaDb => ["STOP SLAVE", "RESET SLAVE ALL"],
        Flavour::MySql => ["STOP REPLICA", "RESET REPLICA ALL"],
    };
    let mut out: Vec<String> = stop.map(str::to_owned).to_vec();
    out.extend(read_only(flavour, false));
    out
}

/// With `semi_sync` (the old primary waited for acknowledgements), makes
/// `server` wait for them (`on`, the new primary) or not (a replica: one
/// that waited itself would stall its SQL thread, as it logs what it
/// applies). Best effort: a failure is reported as a step, nothing more.
async fn semi_sync_waits(ctx: &mut Ctx<'_>, server: &Server, at: usize, on: bool) {
    if !ctx.semi_sync {
        return;
    }
    let (value, what) = if on {
        ("ON", "wait")
    } else {
        ("OFF", "stop waiting")
    };
    let sql = vec![format!("SET GLOBAL rpl_semi_sync_master_enabled = {value}")];
    let name = format!(
        "make {} {what} for semi-synchronous acknowledgements",
        server.name
    );
    let _ = ctx.step(name, at, sql, Duration::ZERO).await;
}

/// Points `server` at `primary` with GTID auto-positioning. A former
/// primary starts from `own_pos`, its own last transaction.
async fn repoint(
    ctx: &mut Ctx<'_>,
    server: &Server,
    addr: usize,
    primary: &Server,
    own_pos: Option<&str>,
) -> Result<Vec<QueryOutcome>, String> {
    let statements = repoint_statements(ctx.flavour, ctx.replication, primary, own_pos);
    if ctx.semi_sync {
        // It acknowledges from its IO thread's next start: before START
        // SLAVE, and on its own so that a refusal does not stop the rest.
        let sql = vec!["SET GLOBAL rpl_semi_sync_slave_enabled = ON".to_owned()];
        let name = format!("make {} acknowledge semi-synchronously", server.name);
        let _ = ctx.step(name, addr, sql, Duration::ZERO).await;
    }
    let result = ctx
        .step(
            format!("point {} at {}", server.name, primary.name),
            addr,
            statements,
            Duration::ZERO,
        )
        .await;
    semi_sync_waits(ctx, server, addr, false).await;
    result
}

/// The statements that point a server at `primary`: MariaDB from
/// `own_pos` (a former primary's own last transaction) or its slave
/// position, MySQL by auto-positioning on its executed set.
fn repoint_statements(
    flavour: Flavour,
    r: &ReplicationConfig,
    primary: &Server,
    own_pos: Option<&str>,
) -> Vec<String> {
    let (host, port, user, password) = (
        quote(&primary.host),
        primary.port,
        quote(&r.replication_user),
        quote(r.replication_password.expose()),
    );
    match flavour {
        Flavour::MariaDb => {
            let mut out = vec!["STOP SLAVE".to_owned()];
            if let Some(pos) = own_pos {
                out.push(format!("SET GLOBAL gtid_slave_pos = {}", quote(pos)));
            }
            out.push(format!(
                "CHANGE MASTER TO MASTER_HOST = {host}, MASTER_PORT = {port}, MASTER_USER = {user}, \
                 MASTER_PASSWORD = {password}, MASTER_USE_GTID = slave_pos"
            ));
            out.push("START SLAVE".to_owned());
            out
        }
        Flavour::MySql => vec![
            "STOP REPLICA".to_owned(),
            format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {host}, SOURCE_PORT = {port}, \
                 SOURCE_USER = {user}, SOURCE_PASSWORD = {password}, SOURCE_AUTO_POSITION = 1"
            ),
            "START REPLICA".to_owned(),
        ],
    }
}

/// Gives the old primary its writes back, after making sure the would-be
/// new one (if it may have been made writable) is read-only again; without
/// that certainty the old one stays read-only: no two writers, ever.
async fn rollback(
    ctx: &mut Ctx<'_>,
    old: &Server,
    old_addr: usize,
    new: Option<(&Server, usize)>,
    why: &str,
) -> Result<(), String> {
    if let Some((new, new_addr)) = new {
        let back = ctx
            .step(
                format!("roll back: make {} read-only again", new.name),
                new_addr,
                read_only(ctx.flavour, true),
                Duration::ZERO,
            )
            .await;
        if back.is_err() {
            return Err(format!(
                "{why}; {} may be writable and could not be made read-only, so {} stays read-only: \
                 no server takes writes until a person repairs this",
                new.name, old.name
            ));
        }
        let _ = repoint(ctx, new, new_addr, old, None).await;
    }
    let back = ctx
        .step(
            format!("roll back: make {} writable again", old.name),
            old_addr,
            read_only(ctx.flavour, false),
            Duration::ZERO,
        )
        .await;
    match back {
        Ok(_) => Err(format!(
            "{why}; rolled back: {} is the primary again",
            old.name
        )),
        Err(e) => Err(format!("{why}; the rollback failed too: {e}")),
    }
}

async fn resume(ctx: &mut Ctx<'_>, origin: &str) {
    let started = Instant::now();
    let resumed = ctx
        .inbox
        .resume(&ctx.pool.name, format!("switchover ({origin})"))
        .await;
    ctx.record(
        "resume the pool".into(),
        started,
        &resumed
            .map(|held| format!("{} held clients released", held.unwrap_or(0)))
            .map_err(|_| "dbsplice is stopping".to_owned()),
    );
}

fn describe_plan(servers: &[Server], plan: &plan::SwitchoverPlan) -> String {
    let name = |i: usize| servers.get(i).map_or("?", |s| s.name.as_str());
    let others: Vec<&str> = plan.others.iter().map(|&i| name(i)).collect();
    format!(
        "primary {}, promoting {}, re-pointing {}",
        name(plan.old),
        name(plan.new),
        if others.is_empty() {
            "no other replica".to_owned()
        } else {
            others.join(", ")
        }
    )
}

fn refused(
    pool: &PoolConfig,
    origin: &str,
    steps: Vec<Step>,
    from: Option<String>,
    why: String,
) -> Report {
    tracing::warn!(pool = %pool.name, origin, "switchover refused: {why}");
    Report::refused(&pool.name, origin, steps, from, why)
}

/// A string literal for SQL: quoted, with quotes and backslashes escaped.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A statement as it may be logged: the replication password blanked.
fn redact(sql: &str) -> String {
    for (key, next) in [
        ("MASTER_PASSWORD = ", ", MASTER_USE_GTID"),
        ("SOURCE_PASSWORD = ", ", SOURCE_AUTO_POSITION"),
    ] {
        if let Some(i) = sql.find(key) {
            let rest = sql.get(i..).unwrap_or_default();
            let end = rest.find(next).map_or(sql.len(), |e| i + e);
            return format!(
                "{}{key}'<redacted>'{}",
                sql.get(..i).unwrap_or_default(),
                sql.get(end..).unwrap_or_default()
            );
        }
    }
    sql.to_owned()
}

/// Promotes `plan.new` in place of the dead primary `plan.old`: takes the
/// lock, has the candidate apply everything it received, promotes it and
/// re-points the other replicas. New clients are held meanwhile by the
/// pool's `hold_timeout` (no server takes writes).
pub async fn failover(
    pool: &PoolConfig,
    admins: Vec<Prober>,
    inbox: Inbox,
    servers: &[Server],
    plan: &plan::FailoverPlan,
) -> Report {
    let origin = "automatic failover".to_owned();
    let mut ctx = match Ctx::new(pool, admins, inbox) {
        Ok(ctx) => ctx,
        Err(why) => return refused(pool, &origin, Vec::new(), None, why),
    };
    ctx.semi_sync = servers
        .get(plan.old)
        .and_then(|s| s.last_semi_sync)
        .unwrap_or(false);
    let (lock, fresh, plan) = match failover_under_lock(&mut ctx, servers, plan.old).await {
        Ok(ready) => ready,
        Err(why) => {
            let from = servers.get(plan.old).map(|s| s.name.clone());
            return failover_refused(pool, &origin, ctx.steps, from, why);
        }
    };
    let servers = &fresh;
    let plan = &plan;
    let outcome = promote_replica(&mut ctx, servers, plan).await;
    drop(lock);
    let as_switchover = plan::SwitchoverPlan {
        old: plan.old,
        new: plan.new,
        others: plan.others.clone(),
    };
    let mut report = finished(ctx, origin, servers, &as_switchover, outcome);
    report.kind = "failover";
    report
}

/// Takes the lock and, under it, reads every server and plans the failover
/// again (another instance may have promoted one meanwhile): the lock, the
/// servers as they are now and the plan; or why not.
async fn failover_under_lock(
    ctx: &mut Ctx<'_>,
    servers: &[Server],
    old: usize,
) -> Result<(Lock, Vec<Server>, plan::FailoverPlan), String> {
    let lock = take_lock(ctx).await?;
    let (fresh, replanned) = relook(ctx, servers, old).await;
    let plan = replanned.map_err(|blocked| blocked.to_string())?;
    ctx.flavour = one_flavour(&fresh)?;
    Ok((lock, fresh, plan))
}

fn failover_refused(
    pool: &PoolConfig,
    origin: &str,
    steps: Vec<Step>,
    from: Option<String>,
    why: String,
) -> Report {
    let mut report = refused(pool, origin, steps, from, why);
    report.kind = "failover";
    report
}

/// Reads every server again and plans the failover anew, keeping what the
/// watcher remembered of each (the dead primary's id and semi-sync).
async fn relook(
    ctx: &mut Ctx<'_>,
    before: &[Server],
    old: usize,
) -> (Vec<Server>, Result<plan::FailoverPlan, plan::Blocked>) {
    let started = Instant::now();
    let timeout = ctx.pool.check.timeout + SESSION_SLACK;
    let mut servers = observe::pool(&ctx.admins, ctx.pool, timeout).await;
    for (s, b) in servers.iter_mut().zip(before) {
        s.last_server_id = b.last_server_id;
        s.last_semi_sync = b.last_semi_sync;
    }
    let planned = plan::failover(&servers, old);
    let result = match &planned {
        Ok(p) => Ok(format!(
            "promoting {}",
            servers.get(p.new).map_or("?", |s| s.name.as_str())
        )),
        Err(blocked) => Err(blocked.to_string()),
    };
    ctx.record(
        "look at every server again, under the lock".into(),
        started,
        &result,
    );
    (servers, planned)
}

/// Applies, promotes, re-points: the failover's steps after the lock.
async fn promote_replica(
    ctx: &mut Ctx<'_>,
    servers: &[Server],
    plan: &plan::FailoverPlan,
) -> Result<(), String> {
    let new = servers
        .get(plan.new)
        .ok_or("the plan names a server the pool does not have")?;
    catch_up(ctx, new, plan.new, &plan.apply.to_string()).await?;
    still_dead(ctx, servers, plan.old).await?;
    let promote = promote_statements(ctx.flavour);
    if let Err(why) = ctx
        .step(
            format!("promote {}", new.name),
            plan.new,
            promote,
            Duration::ZERO,
        )
        .await
    {
        // Half promoted is not promoted: read-only again, or say so.
        let back = read_only(ctx.flavour, true);
        let name = format!("make {} read-only again", new.name);
        return Err(match ctx.step(name, plan.new, back, Duration::ZERO).await {
            Ok(_) => why,
            Err(e) => format!("{why}; and {} may be writable: {e}", new.name),
        });
    }
    semi_sync_waits(ctx, new, plan.new, true).await;
    for &i in &plan.others {
        if let Some(s) = servers.get(i) {
            let _ = repoint(ctx, s, i, new, None).await;
        }
    }
    Ok(())
}

/// Looks at the old primary once more before another server takes writes:
/// one that answers again (the catch-up took a while) is not replaced.
async fn still_dead(ctx: &mut Ctx<'_>, servers: &[Server], old: usize) -> Result<(), String> {
    let started = Instant::now();
    let name = servers
        .get(old)
        .map_or("the primary", |s| s.name.as_str())
        .to_owned();
    let (Some(admin), Some(addr)) = (ctx.admins.get(old), ctx.addr(old)) else {
        return Err("no such server".into());
    };
    let seen = observe::one(admin, addr, ctx.pool.check.timeout + SESSION_SLACK).await;
    let result = match seen {
        plan::Seen::Unreachable(why) => Ok(format!("still unreachable ({why})")),
        plan::Seen::Unusable(_) => Err(format!("{name} answers again: not replaced")),
        plan::Seen::Answered(_) => Err(format!("{name} answers again: not replaced")),
    };
    ctx.record(format!("look at {name} once more"), started, &result);
    result.map(|_| ())
}

/// Makes `server` (a former primary writable beside the primary) read-only.
pub async fn fence(
    pool: &PoolConfig,
    admins: Vec<Prober>,
    inbox: Inbox,
    server: &Server,
    at: usize,
) -> Result<(), String> {
    let mut ctx = Ctx::new(pool, admins, inbox)?;
    if let plan::Seen::Answered(f) = &server.seen {
        ctx.flavour = f.flavour;
    }
    let sql = read_only(ctx.flavour, true);
    ctx.step(
        format!("fence {}: make it read-only", server.name),
        at,
        sql,
        Duration::ZERO,
    )
    .await
    .map(|_| ())
}

/// Points `server`, read-only and replicating from no one, at `primary`,
/// from its own last transaction.
pub async fn rejoin(
    pool: &PoolConfig,
    admins: Vec<Prober>,
    inbox: Inbox,
    server: &Server,
    at: usize,
    primary: &Server,
) -> Result<(), String> {
    let (own, flavour) = match &server.seen {
        plan::Seen::Answered(f) => (f.current_pos.to_string(), f.flavour),
        plan::Seen::Unreachable(why) | plan::Seen::Unusable(why) => return Err(why.clone()),
    };
    let mut ctx = Ctx::new(pool, admins, inbox)?;
    ctx.semi_sync = matches!(&primary.seen, plan::Seen::Answered(f) if f.semi_sync);
    ctx.flavour = flavour;
    repoint(&mut ctx, server, at, primary, Some(&own))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_quoted_and_passwords_never_reported() {
        assert_eq!(quote("it's a \\ test"), "'it\\'s a \\\\ test'");
        let sql = "CHANGE MASTER TO MASTER_HOST = 'h', MASTER_PASSWORD = 's3cr\\'et', MASTER_USE_GTID = slave_pos";
        let shown = redact(sql);
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("MASTER_PASSWORD = '<redacted>', MASTER_USE_GTID"),
            "{shown}"
        );
    }
}
