//! Cost of one backend pick through a real pool (atomics, lock, policy) for
//! pools of 2, 8 and 64 backends under each balance policy.

// A benchmark with a broken setup should stop loudly.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use dbsplice::cluster::{Registry, Snapshot};
use dbsplice::config::{load::resolve_system, Config};
use dbsplice::vocabulary::Health;

fn main() {
    divan::main();
}

fn pool_config(n: usize, balance: &str) -> Config {
    let mut text = format!(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pool.p]\nbalance = \"{balance}\"\n\
         [pool.p.check]\nkind = \"tcp\"\n"
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[pool.p.backend]]\naddress = \"127.0.0.1:{}\"\nweight = {}\n",
            10_000 + i,
            1 + i % 4
        ));
    }
    Config::from_toml(Path::new("bench.toml"), &text, &resolve_system)
        .expect("bench config is valid")
}

fn snapshot(n: usize, balance: &str) -> Snapshot {
    let mut registry = Registry::default();
    let snapshot = Snapshot::build(Arc::new(pool_config(n, balance)), 1, &mut registry);
    for state in registry.iter() {
        state.set_health(Health::Up, "bench");
    }
    // What the control module decides after the first probes: every member
    // eligible.
    let mut memory = dbsplice::control::memory::Memory::default();
    for pool in snapshot.pools() {
        dbsplice::control::decide::evaluate(pool, &mut memory, std::time::Instant::now());
    }
    assert!(
        snapshot.pools().all(|p| p.pick(&[]).is_some()),
        "picks find a backend"
    );
    snapshot
}

#[divan::bench(args = [2, 8, 64])]
fn least_connections(bencher: divan::Bencher<'_, '_>, n: usize) {
    let snapshot = snapshot(n, "least-connections");
    let pool = snapshot.pool("p").expect("pool p exists");
    bencher.bench_local(|| pool.pick(&[]));
}

#[divan::bench(args = [2, 8, 64])]
fn weighted_round_robin(bencher: divan::Bencher<'_, '_>, n: usize) {
    let snapshot = snapshot(n, "weighted-round-robin");
    let pool = snapshot.pool("p").expect("pool p exists");
    bencher.bench_local(|| pool.pick(&[]));
}

/// What the accept loop does per client before the pick: load the current
/// snapshot and find the listener and its pool.
#[divan::bench(args = [2, 8, 64])]
fn snapshot_route(bencher: divan::Bencher<'_, '_>, n: usize) {
    let routes = arc_swap::ArcSwap::from_pointee(snapshot(n, "least-connections"));
    bencher.bench_local(|| {
        let snapshot = routes.load();
        let listener = snapshot.listener("l").expect("listener l exists");
        snapshot.pool(&listener.pool).map(|p| p.members.len())
    });
}

/// A reload's new snapshot: every member's state carried over by address.
#[divan::bench(args = [2, 8, 64])]
fn snapshot_rebuild(bencher: divan::Bencher<'_, '_>, n: usize) {
    let config = Arc::new(pool_config(n, "least-connections"));
    let mut registry = Registry::default();
    let _first = Snapshot::build(Arc::clone(&config), 1, &mut registry);
    let mut generation = 1;
    bencher.bench_local(|| {
        generation += 1;
        Snapshot::build(Arc::clone(&config), generation, &mut registry)
    });
}
