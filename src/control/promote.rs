//! Switchovers: the control module checks that one may start, hands it to
//! the replication executor on a task of its own (the loop keeps deciding,
//! and the executor pauses and resumes the pool through the inbox like any
//! operator), and records how it ended.

use tokio::sync::oneshot;

use super::Control;
use crate::replication::execute;
use crate::replication::report::Report;

impl Control {
    /// Starts a switchover of pool `name`, or answers at once why not.
    pub(super) fn switchover(
        &mut self,
        name: String,
        to: Option<String>,
        origin: String,
        reply: oneshot::Sender<Report>,
    ) {
        let snapshot = self.routes.load();
        let refuse = |why: String| {
            tracing::warn!(pool = %name, origin = %origin, "switchover refused: {why}");
            Report::refused(&name, &origin, Vec::new(), None, why)
        };
        let Some(pool) = snapshot.pool(&name) else {
            let _ = reply.send(refuse(format!("there is no pool named \"{name}\"")));
            return;
        };
        if pool.config.replication.is_none() {
            let _ = reply.send(refuse(format!(
                "pool \"{name}\" has no [pool.{name}.replication] table: dbsplice does not manage its replication"
            )));
            return;
        }
        if self.memory.pool(&name).promoting {
            let _ = reply.send(refuse(format!(
                "a switchover or failover of pool \"{name}\" is under way; wait for its report"
            )));
            return;
        }
        let admins = match execute::admins(&pool.config) {
            Ok(a) => a,
            Err(why) => {
                let _ = reply.send(refuse(why));
                return;
            }
        };
        tracing::warn!(pool = %name, origin = %origin, to = ?to, "switchover starting");
        self.shared
            .timeline
            .push("admin", format!("{name}: switchover asked by {origin}"));
        self.memory.pool(&name).promoting = true;
        let config = pool.config.clone();
        let inbox = self.inbox.clone();
        self.life.tasks.spawn(async move {
            let report = execute::switchover(&config, admins, inbox.clone(), to, origin).await;
            inbox.promotion_done(report, reply).await;
        });
    }

    /// Records a finished switchover and answers whoever asked for it.
    pub(super) fn promotion_done(&mut self, report: Report, reply: oneshot::Sender<Report>) {
        let memory = self.memory.pool(&report.pool);
        memory.promoting = false;
        if report.ok {
            memory.switchovers += 1;
        }
        memory.last_promotion = Some(report.clone());
        let text = match (&report.from, &report.to) {
            (Some(from), Some(to)) if report.ok => {
                format!("{}: switchover from {from} to {to} done", report.pool)
            }
            _ => format!(
                "{}: switchover did not happen: {}",
                report.pool, report.summary
            ),
        };
        if report.ok {
            tracing::warn!(pool = %report.pool, from = ?report.from, to = ?report.to, "switchover done");
        } else {
            tracing::error!(pool = %report.pool, "switchover did not happen: {}", report.summary);
        }
        self.shared.timeline.push("failover", text);
        let _ = reply.send(report);
    }
}
