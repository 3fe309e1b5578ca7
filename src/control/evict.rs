//! Closing the sessions a policy says must go: a backend that left rotation
//! (`on_down`), a standby once a primary is back (`on_primary_return`), a
//! backend removed from the config (`on_remove`), or one an operator disabled.

use crate::cluster::{Member, Pool};
use crate::vocabulary::OnDown;

/// Closes `member`'s sessions in `pool` as `policy` says.
pub fn evict(pool: &Pool, member: &Member, policy: OnDown, why: &str) {
    match policy {
        OnDown::Keep => {}
        OnDown::Close => {
            tracing::info!(pool = %pool.config.name, backend = %member.name, "{why}: closing its sessions");
            member.decision.take_evict_token().cancel();
        }
        OnDown::Drain(grace) => {
            tracing::info!(pool = %pool.config.name, backend = %member.name, "{why}: closing its sessions in {grace:?}");
            let token = member.decision.take_evict_token();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                token.cancel();
            });
        }
    }
}
