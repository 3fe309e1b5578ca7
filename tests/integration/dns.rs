//! Backends named by DNS, re-resolved while dbsplice runs: a name moved
//! from one real MariaDB to another (two loopback addresses, one port)
//! under a loop of new connections, through a DNS server the test runs
//! (`resolver = "127.0.0.1:PORT"`); a failed probe resolving at once; a
//! name that stops resolving keeping its last address, and saying so.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::support::dns::{Dns, Record};
use crate::support::mariadb::{free_port, MariaDb, CHECK_PASSWORD, CHECK_USER};
use crate::support::{mysql_check, wait_until, Proxy};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// dbsplice asking `dns` for names, with one backend `db` at
/// `db.test:PORT` and `settings` in its pool.
fn proxy(dns: &Dns, port: u16, settings: &str) -> Proxy {
    let body = format!(
        "{settings}\n{}",
        mysql_check(CHECK_USER, CHECK_PASSWORD, "")
    );
    let backend = format!("[[pool.main.backend]]\naddress = \"db.test:{port}\"\nname = \"db\"\n");
    let toml = format!(
        "resolver = \"{}\"\n{}",
        dns.addr,
        crate::support::config(&body, &[backend])
    );
    Proxy::start(&toml)
}

/// The address the server of a new session through `proxy` listens on.
async fn served_by(proxy: &Proxy) -> Option<String> {
    let mut c = crate::support::connect(proxy.addr("rw")).await.ok()?;
    let bind: Option<String> = c.query_first("SELECT @@bind_address").await.ok()?;
    let _ = c.disconnect().await;
    bind
}

/// New connections through dbsplice, one query each, until stopped: how
/// many failed, and how many were served.
struct Clients {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<u64>,
}

impl Clients {
    fn start(addr: std::net::SocketAddr) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut served = 0;
                while !stop.load(Ordering::SeqCst) {
                    let ok = match crate::support::connect(addr).await {
                        Ok(mut c) => {
                            let ok = c.query_drop("SELECT 1").await.is_ok();
                            let _ = c.disconnect().await;
                            ok
                        }
                        Err(_) => false,
                    };
                    if ok {
                        served += 1;
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                served
            })
        };
        Clients {
            stop,
            failed,
            handle,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let served = self.handle.await.unwrap();
        (served, self.failed.load(Ordering::SeqCst))
    }
}

fn member(proxy: &Proxy) -> serde_json::Value {
    let status = dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
    status["pools"][0]["backends"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_moved_to_another_server_takes_new_sessions_within_resolve_interval() {
    let dns = Dns::start().await;
    let port = free_port();
    let (a, b) = tokio::join!(MariaDb::start_at(A, port), MariaDb::start_at(B, port));
    dns.set("db.test", Record::A(vec![A]));
    let proxy = proxy(&dns, port, "resolve_interval = \"1s\"");
    wait_until(Duration::from_secs(20), || async {
        (served_by(&proxy).await? == A.to_string()).then_some(())
    })
    .await
    .expect("db.test reaches the first server");
    let clients = Clients::start(proxy.addr("rw"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = tokio::time::Instant::now();
    dns.set("db.test", Record::A(vec![B]));
    wait_until(Duration::from_secs(10), || async {
        (served_by(&proxy).await? == B.to_string()).then_some(())
    })
    .await
    .expect("new sessions follow the name");
    let took = moved.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (served, failed) = clients.stop().await;
    eprintln!("the name moved: new sessions on the new server after {took:?}; {served} served, {failed} failed");
    assert_eq!(failed, 0, "no client sees the move");
    assert!(
        took < Duration::from_secs(3),
        "within resolve_interval (1s) and a lookup: {took:?}"
    );
    let m = member(&proxy);
    assert_eq!(m["ip"], format!("{B}:{port}"), "{m}");
    assert_eq!(
        m["address"],
        format!("db.test:{port}"),
        "the backend keeps its name"
    );
    assert_eq!(m["origin"], "file");
    assert_eq!(m["health"], "up", "and its health");

    // The name stops resolving: the last address is kept and said.
    dns.set("db.test", Record::Fail);
    let unresolved = wait_until(Duration::from_secs(10), || async {
        member(&proxy)["unresolved"].as_str().map(str::to_owned)
    })
    .await
    .expect("status says the name does not resolve");
    assert!(unresolved.contains("SERVFAIL"), "{unresolved}");
    assert_eq!(served_by(&proxy).await.as_deref(), Some("127.0.0.3"));
    let why = dbsplice::admin::status::why(proxy.app.as_ref().unwrap().shared(), "db")
        .unwrap()
        .to_string();
    assert!(
        why.contains("does not resolve") && why.contains(&format!("{B}:{port}")),
        "{why}"
    );
    let scrape = dbsplice::admin::metrics::render(proxy.app.as_ref().unwrap().shared());
    assert!(
        scrape.contains(&format!(
            "dbsplice_backend_info{{pool=\"main\",backend=\"db\",address=\"db.test:{port}\",ip=\"{B}:{port}\",origin=\"file\"}} 1"
        )),
        "{scrape}"
    );
    assert!(scrape.contains("dbsplice_backend_unresolved{pool=\"main\",backend=\"db\""));
    dns.set("db.test", Record::A(vec![B]));
    wait_until(Duration::from_secs(10), || async {
        member(&proxy)["unresolved"].is_null().then_some(())
    })
    .await
    .expect("resolving again clears it");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_has_the_name_resolved_at_once() {
    let dns = Dns::start().await;
    let port = free_port();
    let (mut a, b) = tokio::join!(MariaDb::start_at(A, port), MariaDb::start_at(B, port));
    dns.set("db.test", Record::A(vec![A]));
    // Hours between lookups: only a failure asks again.
    let proxy = proxy(
        &dns,
        port,
        "resolve_interval = \"1h\"\nhold_timeout = \"10s\"",
    );
    wait_until(Duration::from_secs(20), || async {
        (served_by(&proxy).await? == A.to_string()).then_some(())
    })
    .await
    .expect("db.test reaches the first server");
    let asked = dns.asked("db.test");
    dns.set("db.test", Record::A(vec![B]));
    let killed = tokio::time::Instant::now();
    a.kill();
    let clients = Clients::start(proxy.addr("rw"));
    wait_until(Duration::from_secs(10), || async {
        (served_by(&proxy).await? == B.to_string()).then_some(())
    })
    .await
    .expect("the failed probe had the name resolved again");
    let took = killed.elapsed();
    let (served, failed) = clients.stop().await;
    eprintln!(
        "server gone, name moved: new sessions on the new server {took:?} after the kill; {served} served, {failed} failed"
    );
    assert!(dns.asked("db.test") > asked, "asked again");
    assert!(
        failed <= 1,
        "only a connect in flight at the kill fails: {failed}"
    );
    drop(b);
}
