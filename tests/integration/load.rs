//! Load with faults: clients on short and on persistent connections keep
//! working through the `dbsplice` binary while backends are killed, frozen,
//! black-holed, drained and enabled, and the config reloads a hundred times.
//! Failed client operations are bounded by the sessions a fault could take
//! with it; afterwards descriptors and memory are back at their baseline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::binary::http;
use crate::support::traffic::{start_clients, write_config, Tally, ThreeBackends, STUCK};
use crate::support::wait_until;

/// Clients opening a new connection per statement.
const SHORT: usize = 4;
/// Clients keeping one connection, reconnecting when it breaks.
const PERSISTENT: usize = 4;
/// Config reloads while the clients run.
const RELOADS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ride_out_kills_freezes_black_holes_drains_and_reloads() {
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
    } = ThreeBackends::start("load-faults").await;
    let addr = running.addr;
    let fds_idle = running.resting_fd_count().await;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(addr, SHORT, PERSISTENT, &tally, &stop);
    // Warm up: buffers, caches and allocator arenas reach their working size.
    let warm = wait_until(Duration::from_secs(20), || async {
        (tally.ok() >= 500).then_some(())
    })
    .await;
    assert!(
        warm.is_some(),
        "clients got nowhere: {:?}",
        tally.errors.lock().unwrap()
    );
    assert_eq!(tally.failed(), 0, "{:?}", tally.errors.lock().unwrap());
    let rss_warm = running.rss_kib();

    // Killed: refused connects are retried elsewhere.
    b.kill();
    at = running.wait_log(at, &["backend down", &names[1]]).await;
    b.restart().await;
    at = running.wait_log(at, &["backend up", &names[1]]).await;
    // Frozen: the greeting gate skips it until the checker takes it out.
    a.pause();
    at = running.wait_log(at, &["backend down", &names[0]]).await;
    a.resume();
    at = running.wait_log(at, &["backend up", &names[0]]).await;
    // Black-holed: connects wait out connect_timeout, then go elsewhere.
    ns.black_hole();
    at = running.wait_log(at, &["backend down", &names[2]]).await;
    ns.heal();
    at = running.wait_log(at, &["backend up", &names[2]]).await;
    let failed_by_faults = tally.failed();

    // Reloads and operator actions cost no client anything.
    for i in 0..RELOADS {
        write_config(&path, servers, 2 - u32::try_from(i % 2).unwrap());
        at = running.wait_log(at, &["config reloaded"]).await;
        if i % 25 == 0 {
            for action in ["drain", "enable"] {
                let uri = format!("/api/backends/{}/{action}", names[i / 25 % 3]);
                assert_eq!(http(admin, "POST", &uri, Some("tok")).await.0, 200, "{uri}");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let errors = tally.errors.lock().unwrap().clone();
    let (ok, failed) = (tally.ok(), tally.failed());
    eprintln!(
        "{ok} client operations served, {failed} failed ({failed_by_faults} during the faults)"
    );
    assert_eq!(tally.stuck(), 0, "a session hung past {STUCK:?}");
    // A fault can take with it the sessions open on its backend, at most one
    // per client; everything else is retried before the client sees a byte.
    let bound = 3 * u64::try_from(SHORT + PERSISTENT).unwrap();
    assert!(
        failed_by_faults <= bound,
        "{failed_by_faults} failures: {errors:?}"
    );
    assert_eq!(
        failed, failed_by_faults,
        "reloads or drains failed clients: {errors:?}"
    );

    // Every descriptor is given back; memory stays at its working size.
    running.assert_fds_return_to(fds_idle).await;
    let rss_end = running.rss_kib();
    eprintln!("RSS warm {rss_warm} KiB, after faults and {RELOADS} reloads {rss_end} KiB");
    assert!(
        rss_end <= rss_warm + 2048,
        "RSS grew from {rss_warm} to {rss_end} KiB"
    );
    running.stop().await;
}
