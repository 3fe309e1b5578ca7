//! dbsplice: a layer-4 load balancer for MySQL-compatible clusters.
//!
//! Layers, each using only its own level or lower ones (the map is in
//! `tests/layering.rs`, the walks through the code in `docs/architecture.md`):
//!
//! - pure (no IO): [`vocabulary`] (the words every level decides with),
//!   [`config`] (TOML to a validated [`config::Config`]), [`balance`]
//!   (picks, tiers, eligibility, hold-down), [`health::state`] (rise/fall),
//!   [`mysql`] (the packets dbsplice sends itself), [`metrics`] (names),
//!   [`net`] (PROXY header, IO-error classes), [`dns`] (the DNS messages
//!   dbsplice exchanges itself);
//! - shared state: [`cluster`], one immutable [`cluster::Snapshot`] behind an
//!   `ArcSwap` plus per-backend and per-member atomics that outlive
//!   snapshots; [`inbox`], the typed events the control module acts on;
//! - tasks: [`proxy`] (accept loops, sessions, splicing), [`health`]
//!   checkers, [`admin`] (HTTP API, metrics, status page);
//! - wiring: [`control`], the one owner of the running state and the only
//!   writer of the snapshot, of overrides and of controller memory; [`app`],
//!   which starts it and which `main.rs` and the tests hold; [`service`],
//!   the process under a service manager.
//!
//! Client bytes are never parsed: a session is a pick, a connect (retried on
//! another backend while the client has seen nothing) and a splice.

pub mod admin;
pub mod app;
pub mod args;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dns;
pub mod handover;
pub mod health;
pub mod inbox;
pub mod logging;
pub mod metrics;
pub mod mysql;
pub mod net;
pub mod proxy;
pub mod replication;
pub mod service;
pub mod systemd;
pub mod upgrade;
pub mod vocabulary;
pub mod workers;
