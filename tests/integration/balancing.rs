//! New sessions follow the balance policy across real servers.

use std::collections::HashMap;

use dbsplice::vocabulary::Health;

use crate::support::{backend, config, connect, server_port, MariaDb, Proxy};

const CHECK: &str = "[pool.main.check]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let proxy = Proxy::start(&config(
        &format!("balance = \"weighted-round-robin\"\n{CHECK}"),
        &[
            backend(a.addr(), 3, "primary"),
            backend(b.addr(), 1, "primary"),
        ],
    ));
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    // Eight clients open 1,000 short connections between them.
    let workers = (0..8).map(|_| {
        tokio::spawn(async move {
            let mut ports = Vec::new();
            for _ in 0..125 {
                let mut conn = connect(addr).await.unwrap();
                ports.push(server_port(&mut conn).await);
                conn.disconnect().await.unwrap();
            }
            ports
        })
    });
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for w in workers {
        for port in w.await.unwrap() {
            *counts.entry(port).or_default() += 1;
        }
    }
    // Every pick goes through one smooth round-robin sequence, so with both
    // servers up the split is exact however the clients interleave.
    assert_eq!((counts[&a.port], counts[&b.port]), (750, 250), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_evens_out_long_lived_sessions() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let proxy = Proxy::start(&config(
        &format!("balance = \"least-connections\"\n{CHECK}"),
        &[
            backend(a.addr(), 1, "primary"),
            backend(b.addr(), 1, "primary"),
        ],
    ));
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let addr = proxy.addr("rw");
    let mut held = Vec::new();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..40 {
        let mut conn = connect(addr).await.unwrap();
        *counts.entry(server_port(&mut conn).await).or_default() += 1;
        held.push(conn);
    }
    assert_eq!((counts[&a.port], counts[&b.port]), (20, 20), "{counts:?}");
    assert_eq!(
        (
            proxy.backend(a.addr()).active(),
            proxy.backend(b.addr()).active()
        ),
        (20, 20)
    );

    // Closing ten sessions on one server sends the next ten there.
    let mut kept = Vec::new();
    let mut closed = 0;
    for mut conn in held {
        if closed < 10 && server_port(&mut conn).await == a.port {
            conn.disconnect().await.unwrap();
            closed += 1;
        } else {
            kept.push(conn);
        }
    }
    crate::support::wait_until(std::time::Duration::from_secs(5), || async {
        (proxy.backend(a.addr()).active() == 10).then_some(())
    })
    .await
    .expect("closed sessions are no longer counted");
    for _ in 0..10 {
        let mut conn = connect(addr).await.unwrap();
        assert_eq!(server_port(&mut conn).await, a.port);
        kept.push(conn);
    }
    for conn in kept {
        let _ = conn.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_max_connections_caps_its_sessions() {
    let (a, b) = tokio::join!(MariaDb::start(), MariaDb::start());
    let capped = backend(a.addr(), 1, "primary") + "max_connections = 2\n";
    let proxy = Proxy::start(&config(
        &format!("balance = \"least-connections\"\n{CHECK}"),
        &[capped, backend(b.addr(), 1, "primary")],
    ));
    proxy.wait_health(a.addr(), Health::Up).await;
    proxy.wait_health(b.addr(), Health::Up).await;
    let mut held = Vec::new();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..8 {
        let mut conn = connect(proxy.addr("rw")).await.unwrap();
        *counts.entry(server_port(&mut conn).await).or_default() += 1;
        held.push(conn);
    }
    assert_eq!(
        (counts.get(&a.port).copied(), counts.get(&b.port).copied()),
        (Some(2), Some(6)),
        "{counts:?}"
    );
    for conn in held {
        conn.disconnect().await.unwrap();
    }
}
