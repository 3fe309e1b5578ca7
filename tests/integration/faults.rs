//! Network faults between dbsplice and a backend, injected for real: the
//! backend is a MariaDB server in a network namespace of the test's, and the
//! link to it black-holes, refuses, loses or delays packets, or vanishes.
//! Each case checks that the configured deadlines hold (connect timeout,
//! probe deadline, detection time), that no client fails while another
//! backend can serve, and that no session outlives its `on_down` policy.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dbsplice::vocabulary::Health;
use mysql_async::prelude::Queryable;

use crate::support::netns::Netns;
use crate::support::{
    backend, closed_within, config, connect, port_of_new_session, server_port, session_on,
    wait_until, MariaDb, Proxy,
};

/// The data path's connect deadline in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// The probe deadline and the time between probes.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const INTERVAL: Duration = Duration::from_millis(100);
/// Failed probes that take a backend down.
const FALL: u32 = 2;

/// A local server `a`, a server `b` behind the namespace's link, and
/// dbsplice alternating between them, treating sessions on a backend that
/// goes down as `on_down` says.
async fn behind_link(
    ns: &Netns,
    check_timeout: Duration,
    on_down: &str,
) -> (MariaDb, MariaDb, Proxy) {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start_in(ns));
    let proxy = Proxy::start(&config(
        &format!(
            "balance = \"weighted-round-robin\"\nconnect_timeout = \"{}ms\"\nconnect_attempts = 2\n\
             on_down = \"{on_down}\"\n[pool.main.check]\nkind = \"mysql\"\nuser = \"check\"\n\
             password = \"checkpw\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = 1\nfall = {FALL}\n",
            CONNECT_TIMEOUT.as_millis(),
            INTERVAL.as_millis(),
            check_timeout.as_millis(),
        ),
        &[backend(a.addr(), 1, "primary"), backend(b.addr(), 1, "primary")],
    ));
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    (a, b, proxy)
}

/// New sessions through dbsplice, one after another, until `b` is down:
/// each must reach `a` and answer. Returns how long detection took and the
/// slowest session's connect.
async fn sessions_until_down(proxy: &Proxy, a: &MariaDb, b: &MariaDb, since: Instant) -> Detection {
    let addr = proxy.addr("rw");
    let state = proxy.backend(b.addr());
    let mut slowest = Duration::ZERO;
    while state.health() != Health::Down {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{} never went down: {}",
            b.addr(),
            state.reason()
        );
        let started = Instant::now();
        let mut conn = connect(addr)
            .await
            .expect("no client fails while another backend serves");
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            server_port(&mut conn).await,
            a.port,
            "a session on the faulty link"
        );
        conn.disconnect().await.unwrap();
    }
    Detection {
        took: since.elapsed(),
        slowest,
    }
}

#[derive(Debug)]
struct Detection {
    /// From the fault to the backend being down.
    took: Duration,
    /// The slowest client connect meanwhile.
    slowest: Duration,
}

/// The longest detection may take: the next probe starts within an
/// interval, then `FALL` probes each run into their deadline with an
/// interval between them; plus slack for a loaded machine.
fn detection_bound(probe_timeout: Duration) -> Duration {
    INTERVAL + (probe_timeout + INTERVAL) * FALL + Duration::from_secs(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_backend_costs_a_client_one_connect_timeout() {
    let ns = Netns::create();
    let (a, b, proxy) = behind_link(&ns, PROBE_TIMEOUT, "close").await;
    let addr = proxy.addr("rw");
    let mut held = session_on(addr, b.port).await;

    let fault = Instant::now();
    ns.black_hole();
    let seen = sessions_until_down(&proxy, &a, &b, fault).await;
    // Probes waited for their deadline: nothing answers, nothing refuses.
    assert!(seen.took >= PROBE_TIMEOUT, "{seen:?}");
    assert!(seen.took <= detection_bound(PROBE_TIMEOUT), "{seen:?}");
    let reason = proxy.backend(b.addr()).reason();
    assert!(
        reason.contains("timed out") || reason.contains("timeout"),
        "{reason}"
    );
    // Clients that were sent to the black hole waited out one connect
    // timeout and were retried on `a`, never the kernel's two minutes.
    assert!(proxy.backend(b.addr()).connect_failures() >= 1, "{seen:?}");
    assert!(seen.slowest >= CONNECT_TIMEOUT, "{seen:?}");
    assert!(
        seen.slowest < CONNECT_TIMEOUT + Duration::from_secs(1),
        "{seen:?}"
    );
    // on_down = "close": the session stuck on the black hole is closed.
    assert!(
        closed_within(&mut held, Duration::from_secs(2)).await,
        "a session on the black-holed backend outlived on_down = close"
    );

    heal_and_return(&ns, &proxy, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_costs_clients_nothing() {
    let ns = Netns::create();
    let (a, b, proxy) = behind_link(&ns, PROBE_TIMEOUT, "close").await;
    let addr = proxy.addr("rw");
    let mut held = session_on(addr, b.port).await;

    let fault = Instant::now();
    ns.refuse();
    // The open session breaks on its next packet: the server's reset
    // reaches the client as a closed connection, at once.
    assert!(
        closed_within(&mut held, Duration::from_secs(1)).await,
        "a reset backend connection left its client hanging"
    );
    let seen = sessions_until_down(&proxy, &a, &b, fault).await;
    // Refused at once: no deadline is waited out anywhere.
    assert!(seen.slowest < CONNECT_TIMEOUT, "{seen:?}");
    assert!(seen.took <= detection_bound(Duration::ZERO), "{seen:?}");
    let reason = proxy.backend(b.addr()).reason();
    assert!(reason.contains("refused"), "{reason}");

    heal_and_return(&ns, &proxy, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_link_loses_no_client() {
    let ns = Netns::create();
    // Sessions stay on a backend that the checker takes down.
    let (a, b, proxy) = behind_link(&ns, Duration::from_secs(1), "keep").await;
    let addr = proxy.addr("rw");
    // One packet in ten toward `b` is dropped at random: lost SYNs become
    // connect timeouts retried on `a`, lost segments are retransmitted, and
    // the checker may see `b` come and go. No client may notice beyond delay.
    ns.lossy(0.1);
    let mut on_b = 0;
    for i in 0..60 {
        let started = Instant::now();
        let mut conn = connect(addr)
            .await
            .unwrap_or_else(|e| panic!("session {i} failed on a lossy link: {e}"));
        let port = server_port(&mut conn).await;
        let (n, text): (u64, String) = conn
            .query_first(format!("SELECT {i}, REPEAT('x', 20000)"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, text.len()), (i, 20000));
        conn.disconnect().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "session {i} took {:?}",
            started.elapsed()
        );
        on_b += u32::from(port == b.port);
        assert!(port == a.port || port == b.port);
    }
    assert!(on_b > 0, "the lossy backend carried no session at all");

    ns.heal();
    proxy.wait_health(b.addr(), Health::Up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_passes_within_the_deadlines_and_fails_beyond_them() {
    let ns = Netns::create();
    let probe_timeout = Duration::from_secs(1);
    let (a, b, proxy) = behind_link(&ns, probe_timeout, "close").await;
    let addr = proxy.addr("rw");
    let state = proxy.backend(b.addr());

    // 100 ms each way into the namespace: a probe (connect, login, ping,
    // quit) needs four or five such trips, well within its 1 s deadline.
    let slow = Duration::from_millis(100);
    let mut delay = ns.delay(slow);
    let mut held = session_on(addr, b.port).await;
    let started = Instant::now();
    held.query_drop("DO 1").await.unwrap();
    assert!(started.elapsed() >= slow, "the delay is not in the path");
    let passed = state.counters.probes_passed.load(Ordering::Relaxed);
    let more = wait_until(Duration::from_secs(10), || async {
        (state.counters.probes_passed.load(Ordering::Relaxed) >= passed + 5).then_some(())
    })
    .await;
    assert!(
        more.is_some(),
        "delayed probes stopped passing: {}",
        state.reason()
    );
    assert_eq!(state.health(), Health::Up, "{}", state.reason());
    assert_eq!(
        state.connect_failures(),
        0,
        "a connect within its deadline failed"
    );

    // 600 ms: a connect outlasts connect_timeout and a probe its deadline.
    let fault = Instant::now();
    delay.set(Duration::from_millis(600));
    let seen = sessions_until_down(&proxy, &a, &b, fault).await;
    assert!(seen.took >= probe_timeout, "{seen:?}");
    assert!(seen.took <= detection_bound(probe_timeout), "{seen:?}");
    let reason = state.reason();
    assert!(
        reason.contains("timed out") || reason.contains("timeout"),
        "{reason}"
    );
    assert!(
        seen.slowest < CONNECT_TIMEOUT + Duration::from_secs(1),
        "{seen:?}"
    );
    assert!(
        closed_within(&mut held, Duration::from_secs(2)).await,
        "a session on the slow backend outlived on_down = close"
    );

    drop(delay);
    proxy.wait_health(b.addr(), Health::Up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_network_fails_fast_as_unreachable() {
    let ns = Netns::create();
    let (a, b, proxy) = behind_link(&ns, PROBE_TIMEOUT, "close").await;
    let addr = proxy.addr("rw");
    let mut held = session_on(addr, b.port).await;

    let fault = Instant::now();
    ns.vanish();
    let seen = sessions_until_down(&proxy, &a, &b, fault).await;
    // The unreachable route answers at once: no connect waits its deadline,
    // and no connect to the vanished address "succeeds".
    assert!(seen.slowest < CONNECT_TIMEOUT, "{seen:?}");
    assert!(seen.took <= detection_bound(Duration::ZERO), "{seen:?}");
    let reason = proxy.backend(b.addr()).reason();
    assert!(reason.contains("unreachable"), "{reason}");
    assert!(
        closed_within(&mut held, Duration::from_secs(2)).await,
        "a session on the vanished backend outlived on_down = close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_costs_a_gated_client_one_greeting_timeout() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    // A probe every hour: only the data path can notice the freeze. A frozen
    // server's kernel still completes connects; the greeting gate is what
    // tells a live server from a stopped one.
    let proxy = Proxy::start(&config(
        "balance = \"weighted-round-robin\"\ngreeting_gate = true\ngreeting_timeout = \"300ms\"\n\
         [pool.main.check]\nkind = \"mysql\"\nuser = \"check\"\npassword = \"checkpw\"\n\
         interval = \"1h\"\nrise = 1\nfall = 1\n",
        &[
            backend(a.addr(), 1, "primary"),
            backend(b.addr(), 1, "primary"),
        ],
    ));
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    b.pause();
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        let started = Instant::now();
        let mut conn = connect(addr)
            .await
            .expect("the gate hides the frozen server");
        slowest = slowest.max(started.elapsed());
        assert_eq!(server_port(&mut conn).await, a.port);
        conn.disconnect().await.unwrap();
    }
    let gate = Duration::from_millis(300);
    assert!(
        slowest >= gate,
        "no client met the frozen server: {slowest:?}"
    );
    assert!(slowest < gate + Duration::from_secs(1), "{slowest:?}");
    assert!(proxy.backend(b.addr()).connect_failures() >= 1);
    b.resume();
}

/// Heals the link and waits until `b` is up and takes new sessions again.
async fn heal_and_return(ns: &Netns, proxy: &Proxy, b: &MariaDb) {
    ns.heal();
    proxy.wait_health(b.addr(), Health::Up).await;
    assert!(
        reaches(proxy.addr("rw"), b.port).await,
        "no session reached the healed backend"
    );
}

/// Whether some of 20 new sessions through `addr` land on the server at `port`.
async fn reaches(addr: std::net::SocketAddr, port: u16) -> bool {
    for _ in 0..20 {
        if port_of_new_session(addr).await == Some(port) {
            return true;
        }
    }
    false
}

/// TIME_WAIT entries in the test's namespace for connections to `addr`:
/// those of connections that dbsplice closed first.
fn time_wait_towards(addr: std::net::SocketAddr) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htan", "state", "time-wait", "dst", &addr.to_string()])
        .output()
        .expect("ss runs (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_first_so_time_wait_stays_off_the_balancer() {
    // Off loopback, Linux never reuses a source port in TIME_WAIT for a new
    // connect: a balancer that closed first towards a backend would have
    // its ~28,000 ports to that backend tied up by ~470 sessions a second.
    let ns = Netns::create();
    let b = MariaDb::start_in(&ns).await;
    let proxy = Proxy::start(&config(
        "[pool.main.check]\nkind = \"mysql\"\nuser = \"check\"\npassword = \"checkpw\"\ninterval = \"1h\"\nrise = 1\n",
        &[backend(b.addr(), 1, "primary")],
    ));
    proxy.wait_health(b.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let before = time_wait_towards(b.addr());
    for _ in 0..200 {
        let mut conn = connect(addr).await.unwrap();
        conn.query_drop("DO 1").await.unwrap();
        // COM_QUIT, then the client closes: dbsplice waits for the server
        // to close before it passes the client's EOF on.
        conn.disconnect().await.unwrap();
    }
    let left = time_wait_towards(b.addr()).saturating_sub(before);
    assert!(
        left <= 20,
        "{left} of 200 connections to the backend were closed by dbsplice first"
    );
}
