//! One watcher per pool with a `[replication]` table: every check interval
//! it reads each server's replication facts and hands them to the control
//! module, which shows them and decides whether to fence, rejoin or fail
//! over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::plan::Seen;
use super::{execute, observe};
use crate::cluster::Snapshot;
use crate::inbox::Inbox;

/// Slack over the check's timeout for one admin session.
const SESSION_SLACK: Duration = Duration::from_secs(2);

/// Watches pool `pool` until `stop` is cancelled or the pool (or its
/// `[replication]` table) leaves the config; `now` has it look again at
/// once (a server came back up).
pub async fn run(
    pool: String,
    routes: Arc<ArcSwap<Snapshot>>,
    inbox: Inbox,
    stop: CancellationToken,
    now: Arc<tokio::sync::Notify>,
) {
    // Each server's id when it last answered: how its replicas still name
    // it once it is gone.
    let mut ids: HashMap<String, (u32, bool)> = HashMap::new();
    loop {
        let config = match routes.load().pool(&pool) {
            Some(p) if p.config.replication.is_some() => p.config_now(),
            _ => return,
        };
        if let Ok(admins) = execute::admins(&config) {
            let timeout = config.check.timeout + SESSION_SLACK;
            let look = observe::pool(&admins, &config, timeout);
            let Some(mut servers) = stop.run_until_cancelled(look).await else {
                return;
            };
            for s in &mut servers {
                let key = format!("{}:{}", s.host, s.port);
                if let Seen::Answered(f) = &s.seen {
                    ids.insert(key.clone(), (f.server_id, f.semi_sync));
                }
                s.last_server_id = ids.get(&key).map(|(id, _)| *id);
                s.last_semi_sync = ids.get(&key).map(|(_, on)| *on);
            }
            if inbox.topology(pool.clone(), servers).await.is_err() {
                return;
            }
        }
        let pause = async {
            tokio::select! {
                () = tokio::time::sleep(config.check.interval) => {}
                () = now.notified() => {}
            }
        };
        if stop.run_until_cancelled(pause).await.is_none() {
            return;
        }
    }
}
