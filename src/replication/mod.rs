//! GTID replication managed by dbsplice for a writer pool: a switchover on
//! request (and, in time, a failover by itself), carried out over SQL with
//! the pool's `[replication]` login.
//!
//! `gtid` and `plan` are pure (level 0): positions and the decision of who
//! replaces the primary, or why no one can. `observe` reads what each server
//! says and `execute` carries out a plan step by step (level 2).

pub mod execute;
pub mod gtid;
pub mod observe;
pub mod plan;
pub mod report;
pub mod watch;
