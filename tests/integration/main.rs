//! End-to-end tests: dbsplice in-process in front of real MariaDB servers,
//! driven by real clients (mysql_async and the `mariadb` command).

// A test crate: nothing here is a public API, and a failed unwrap in the
// support code is a failed test, which is what it should be.
#![allow(unreachable_pub, missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod auto_failover;
mod balancing;
mod checks;
mod cli;
mod data_path;
mod discovery;
mod dns;
mod exhaustion;
mod failover;
mod fake_server;
mod faults;
mod galera;
mod hold;
mod load;
mod mysql_replication;
mod no_failover;
mod reload;
mod roles;
mod soak;
mod switchover;
mod systemd;
mod upgrade;
