//! dbsplice: a layer-4 load balancer for MySQL-compatible clusters.
//!
//! Layers, each using only its own level or lower ones:
//!
//! - pure (no IO): [`config`] (TOML to a validated [`config::Config`]),
//!   [`balance`] (least-connections, smooth weighted round robin, standby
//!   tiers), [`health::state`] (rise/fall), [`mysql`] (the packets dbsplice
//!   sends itself);
//! - shared state: [`cluster`], one immutable [`cluster::Snapshot`] behind an
//!   `ArcSwap` plus per-backend atomics that outlive snapshots;
//! - tasks: [`proxy`] (accept loops, sessions, splicing) and
//!   [`health`] checkers;
//! - wiring: [`app`], which `main.rs` drives with bound sockets and signals.
//!
//! Client bytes are never parsed: a session is a pick, a connect (retried on
//! another backend while the client has seen nothing) and a splice.

pub mod admin;
pub mod app;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod control;
pub mod health;
pub mod inbox;
pub mod logging;
pub mod metrics;
pub mod mysql;
pub mod net;
pub mod proxy;
pub mod service;
pub mod systemd;
pub mod vocabulary;
pub mod workers;
