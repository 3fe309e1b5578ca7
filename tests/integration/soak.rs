//! The soak, not part of the suite: `scripts/soak` runs it (30 minutes by
//! default). Mixed traffic, short and persistent connections, flows through
//! the `dbsplice` binary while faults strike at random times drawn from a
//! seed: a backend killed and restarted, frozen, black-holed, made lossy or
//! slow, drained, and bursts of reloads. It ends with a summary of failures
//! per fault, latency and dbsplice's resource use, and fails on a stuck
//! session, more failures than a fault can explain, a failure during a
//! reload or drain, or descriptors not given back.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::binary::{http, Running};
use crate::support::traffic::{start_clients, write_config, Tally, ThreeBackends};
use crate::support::wait_until;

const SHORT: usize = 4;
const PERSISTENT: usize = 8;

/// The faults, by name.
const FAULTS: [&str; 7] = [
    "kill",
    "freeze",
    "black-hole",
    "lossy",
    "slow",
    "reloads",
    "drain",
];

/// Whether a fault may close sessions (the others must cost nothing).
fn may_close_sessions(fault: &str) -> bool {
    !matches!(fault, "reloads" | "drain")
}

/// Resource readings of the dbsplice process over the run.
#[derive(Default)]
struct Readings {
    fds: Vec<usize>,
    rss: Vec<u64>,
    anonymous: Vec<u64>,
}

impl Readings {
    fn take(&mut self, running: &Running) {
        self.fds.push(running.fd_count());
        self.rss.push(running.rss_kib());
        self.anonymous.push(running.anonymous_kib());
    }
}

/// Sleeps `total`, reading resources once a second.
async fn wait_reading(total: Duration, running: &Running, readings: &mut Readings) {
    let until = Instant::now() + total;
    while Instant::now() < until {
        readings.take(running);
        tokio::time::sleep((until - Instant::now()).min(Duration::from_secs(1))).await;
    }
}

/// Waits until the backend `name` is up again if it went down since `from`.
async fn settle(running: &Running, from: usize, name: &str) -> usize {
    let up = wait_until(Duration::from_secs(60), || async {
        let logs = running.logs();
        let last = logs
            .get(from..)
            .unwrap_or_default()
            .lines()
            .rev()
            .filter(|l| l.contains(name))
            .find(|l| l.contains("backend up") || l.contains("backend down"))
            .map(str::to_owned);
        match last {
            Some(line) if line.contains("backend down") => None,
            _ => Some(()),
        }
    })
    .await;
    assert!(up.is_some(), "{name} did not come back after the fault");
    running.logs().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 30-minute soak; scripts/soak runs it"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS").map_or(1800, |v| v.parse().expect("SOAK_SECS"));
    let seed: u64 = std::env::var("SOAK_SEED").map_or(1, |v| v.parse().expect("SOAK_SEED"));
    let mut rng = fastrand::Rng::with_seed(seed);

    let ThreeBackends {
        running,
        admin,
        a,
        mut b,
        c: _c,
        ns,
        servers,
        names,
        path,
        dir: _dir,
        up_at: mut at,
    } = ThreeBackends::start("soak").await;
    let addr = running.addr;
    let fds_start = running.resting_fd_count().await;
    let cpu_start = running.cpu_seconds();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(addr, SHORT, PERSISTENT, &tally, &stop);
    let mut readings = Readings::default();
    let started = Instant::now();
    let mut weight = 1;
    // (fault, failures while it lasted)
    let mut faults: Vec<(&str, u64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        wait_reading(
            Duration::from_millis(rng.u64(2_000..20_000)),
            &running,
            &mut readings,
        )
        .await;
        let fault = FAULTS[rng.usize(..FAULTS.len())];
        let failed_before = tally.failed();
        let hold = Duration::from_millis(rng.u64(1_000..10_000));
        match fault {
            "kill" => {
                b.kill();
                at = running.wait_log(at, &["backend down", &names[1]]).await;
                wait_reading(hold, &running, &mut readings).await;
                b.restart().await;
                at = settle(&running, at, &names[1]).await;
            }
            "freeze" => {
                a.pause();
                wait_reading(hold, &running, &mut readings).await;
                a.resume();
                at = settle(&running, at, &names[0]).await;
            }
            "black-hole" | "lossy" | "slow" => {
                let delay = match fault {
                    "black-hole" => {
                        ns.black_hole();
                        None
                    }
                    "lossy" => {
                        ns.lossy(0.05);
                        None
                    }
                    _ => Some(ns.delay(Duration::from_millis(rng.u64(20..300)))),
                };
                wait_reading(hold, &running, &mut readings).await;
                drop(delay);
                ns.heal();
                at = settle(&running, at, &names[2]).await;
            }
            "reloads" => {
                for _ in 0..20 {
                    weight = 3 - weight;
                    write_config(&path, servers, weight);
                    at = running.wait_log(at, &["config reloaded"]).await;
                }
            }
            "drain" => {
                let name = &names[rng.usize(..3)];
                let drain = format!("/api/backends/{name}/drain");
                assert_eq!(http(admin, "POST", &drain, Some("tok")).await.0, 200);
                wait_reading(hold, &running, &mut readings).await;
                let enable = format!("/api/backends/{name}/enable");
                assert_eq!(http(admin, "POST", &enable, Some("tok")).await.0, 200);
            }
            _ => unreachable!("{fault}"),
        }
        faults.push((fault, tally.failed() - failed_before));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let ran = started.elapsed();
    let fds_end = running.resting_fd_count().await;
    readings.take(&running);
    let cpu = running.cpu_seconds() - cpu_start;

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "soak: {:.0} s, seed {seed}, {} faults",
        ran.as_secs_f64(),
        faults.len()
    );
    let _ = writeln!(
        summary,
        "operations: {} ok, {} failed, {} stuck ({:.0} per second)",
        tally.ok(),
        tally.failed(),
        tally.stuck(),
        tally.ok() as f64 / ran.as_secs_f64()
    );
    let ms = |q: f64| tally.latency_quantile(q).as_secs_f64() * 1000.0;
    let _ = writeln!(
        summary,
        "latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        ms(1.0)
    );
    for name in FAULTS {
        let of_kind: Vec<u64> = faults
            .iter()
            .filter(|(f, _)| *f == name)
            .map(|(_, n)| *n)
            .collect();
        let _ = writeln!(
            summary,
            "  {name:<10} x{:<3} failures {} (most in one: {})",
            of_kind.len(),
            of_kind.iter().sum::<u64>(),
            of_kind.iter().max().unwrap_or(&0)
        );
    }
    // A leak climbs to the end; caches that fill up level off.
    let tenths: Vec<String> = (1..=10)
        .filter_map(|i| {
            let at = (readings.anonymous.len() * i / 10).checked_sub(1)?;
            readings.anonymous.get(at).map(u64::to_string)
        })
        .collect();
    let _ = writeln!(
        summary,
        "memory: dbsplice's anonymous memory at each tenth of the run, KiB: {}",
        tenths.join(" ")
    );
    let _ = writeln!(
        summary,
        "dbsplice: descriptors {fds_start} at rest before, at most {} under load, {fds_end} at rest after; \
         RSS {} KiB first, at most {} KiB, {} KiB last; {cpu:.1} CPU s",
        readings.fds.iter().max().unwrap_or(&0),
        readings.rss.first().unwrap_or(&0),
        readings.rss.iter().max().unwrap_or(&0),
        readings.rss.last().unwrap_or(&0),
    );
    eprintln!("{summary}");

    assert_eq!(tally.stuck(), 0, "sessions hung past their deadline");
    let clients_total = u64::try_from(SHORT + PERSISTENT).unwrap();
    for (fault, failed) in &faults {
        let bound = if may_close_sessions(fault) {
            clients_total
        } else {
            0
        };
        assert!(
            *failed <= bound,
            "{fault}: {failed} failures: {:?}",
            tally.errors.lock().unwrap()
        );
    }
    assert!(
        fds_end <= fds_start,
        "descriptors leaked: {fds_start} -> {fds_end}"
    );
    running.stop().await;
}
