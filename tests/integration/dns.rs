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

/// Waits (up to 20 s) until new sessions through `proxy` reach the server
/// at `ip`; `what` says what that shows when they never do.
async fn reaches(proxy: &Proxy, ip: Ipv4Addr, what: &str) {
    let found = wait_until(Duration::from_secs(20), || async {
        (served_by(proxy).await? == ip.to_string()).then_some(())
    })
    .await;
    assert!(found.is_some(), "new sessions never reached {ip}: {what}");
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
    reaches(&proxy, A, "db.test reaches the first server").await;
    let clients = Clients::start(proxy.addr("rw"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = tokio::time::Instant::now();
    dns.set("db.test", Record::A(vec![B]));
    reaches(&proxy, B, "new sessions follow the name").await;
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
    reaches(&proxy, A, "db.test reaches the first server").await;
    let asked = dns.asked("db.test");
    dns.set("db.test", Record::A(vec![B]));
    let killed = tokio::time::Instant::now();
    a.kill();
    let clients = Clients::start(proxy.addr("rw"));
    reaches(&proxy, B, "the failed probe had the name resolved again").await;
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

const C: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// dbsplice asking `dns`, its pool `main` with `keys` and the backend
/// `tables`.
fn proxy_with_pool(dns: &Dns, keys: &str, tables: &str) -> Proxy {
    let toml = format!(
        "resolver = \"{}\"\nshutdown_grace = \"5s\"\n[[listener]]\nname = \"rw\"\nlisten = \"127.0.0.1:0\"\npool = \"main\"\n\n\
         [pool.main]\nresolve_interval = \"1s\"\n{keys}\n{}\n{tables}",
        dns.addr,
        mysql_check(CHECK_USER, CHECK_PASSWORD, "")
    );
    Proxy::start(&toml)
}

/// (name, weight, tier, origin, health) of each member, once `ready` says
/// they are as expected.
async fn members_once(
    proxy: &Proxy,
    ready: impl Fn(&[(String, u64, String, String, String)]) -> bool,
) -> Vec<(String, u64, String, String, String)> {
    let read = || {
        let status = dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
        status["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let s = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                (
                    s("name"),
                    b["weight"].as_u64().unwrap(),
                    s("tier"),
                    s("origin"),
                    s("health"),
                )
            })
            .collect::<Vec<_>>()
    };
    let found = wait_until(Duration::from_secs(15), || async {
        let m = read();
        ready(&m).then_some(m)
    })
    .await;
    found.unwrap_or_else(|| panic!("members never as expected: {:?}", read()))
}

/// Sessions held open through `proxy`, by the server address they reached.
async fn spread(
    proxy: &Proxy,
    n: usize,
) -> (
    std::collections::BTreeMap<String, usize>,
    Vec<mysql_async::Conn>,
) {
    let mut by = std::collections::BTreeMap::new();
    let mut open = Vec::new();
    for _ in 0..n {
        let mut c = crate::support::connect(proxy.addr("rw")).await.unwrap();
        let bind: String = c
            .query_first("SELECT @@bind_address")
            .await
            .unwrap()
            .unwrap();
        *by.entry(bind).or_insert(0) += 1;
        open.push(c);
    }
    (by, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_are_members_with_the_records_weights_and_priorities() {
    let dns = Dns::start().await;
    let port = free_port();
    let (a, b, c) = tokio::join!(
        MariaDb::start_at(A, port),
        MariaDb::start_at(B, port),
        MariaDb::start_at(C, port)
    );
    for (name, ip) in [("a.db.test", A), ("b.db.test", B), ("c.db.test", C)] {
        dns.set(name, Record::A(vec![ip]));
    }
    let srv = |targets: &[(u16, u16, &str)]| {
        Record::Srv(
            targets
                .iter()
                .map(|(p, w, t)| (*p, *w, port, (*t).to_owned()))
                .collect(),
        )
    };
    dns.set(
        "_mysql._tcp.db.test",
        srv(&[
            (10, 3, "a.db.test"),
            (10, 1, "b.db.test"),
            (20, 1, "c.db.test"),
        ]),
    );
    let proxy = proxy_with_pool(
        &dns,
        "",
        "[[pool.main.backend_srv]]\nname = \"_mysql._tcp.db.test\"\n",
    );
    let up =
        |m: &[(String, u64, String, String, String)]| m.len() == 3 && m.iter().all(|x| x.4 == "up");
    let members = members_once(&proxy, up).await;
    let seen: Vec<(&str, u64, &str, &str)> = members
        .iter()
        .map(|(n, w, t, o, _)| (n.as_str(), *w, t.as_str(), o.as_str()))
        .collect();
    let name = |host: &str| format!("{host}:{port}");
    assert_eq!(
        seen,
        [
            (name("a.db.test").as_str(), 3, "primary", "srv"),
            (name("b.db.test").as_str(), 1, "primary", "srv"),
            (name("c.db.test").as_str(), 1, "standby", "srv"),
        ]
    );
    // Least connections by weight: three to a for each one to b, none to
    // the standby.
    let (by, open) = spread(&proxy, 40).await;
    eprintln!("40 sessions over the SRV targets: {by:?}");
    assert_eq!(by.get("127.0.0.2"), Some(&30), "{by:?}");
    assert_eq!(by.get("127.0.0.3"), Some(&10), "{by:?}");
    assert_eq!(by.get("127.0.0.4"), None, "{by:?}");
    drop(open);

    // b leaves the record and a leaves its priority: c, the lowest
    // priority left, is the primary.
    dns.set(
        "_mysql._tcp.db.test",
        srv(&[(30, 1, "a.db.test"), (20, 2, "c.db.test")]),
    );
    let moved = |m: &[(String, u64, String, String, String)]| {
        m.len() == 2 && m.iter().any(|x| x.0.starts_with("c.") && x.2 == "primary")
    };
    let members = members_once(&proxy, moved).await;
    eprintln!("after the record changed: {members:?}");
    assert!(members
        .iter()
        .any(|x| x.0.starts_with("a.") && x.2 == "standby"));
    reaches(&proxy, C, "new sessions go to the new primary tier").await;

    // The record stops resolving: its members stay, and status says why.
    dns.set("_mysql._tcp.db.test", Record::Fail);
    let status = || dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
    let failing = wait_until(Duration::from_secs(10), || async {
        status()["pools"][0]["sources"][0]["failing"]
            .as_str()
            .map(str::to_owned)
    })
    .await
    .expect("the source's failure is shown");
    assert!(failing.contains("SERVFAIL"), "{failing}");
    assert_eq!(
        status()["pools"][0]["backends"].as_array().unwrap().len(),
        2
    );
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_all_gives_a_member_per_address_and_follows_the_answer() {
    let dns = Dns::start().await;
    let port = free_port();
    let (a, b, c) = tokio::join!(
        MariaDb::start_at(A, port),
        MariaDb::start_at(B, port),
        MariaDb::start_at(C, port)
    );
    dns.set("db.test", Record::A(vec![A, B]));
    let proxy = proxy_with_pool(
        &dns,
        "resolve = \"all\"",
        &format!("[[pool.main.backend]]\naddress = \"db.test:{port}\"\nname = \"db\"\n"),
    );
    let two_up = |names: [&'static str; 2]| {
        move |m: &[(String, u64, String, String, String)]| {
            m.len() == 2
                && m.iter()
                    .zip(names)
                    .all(|(x, n)| x.0 == n && x.3 == "dns" && x.4 == "up")
        }
    };
    members_once(&proxy, two_up(["db#127.0.0.2", "db#127.0.0.3"])).await;
    let (by, open) = spread(&proxy, 10).await;
    assert_eq!(
        (by.get("127.0.0.2"), by.get("127.0.0.3")),
        (Some(&5), Some(&5)),
        "{by:?}"
    );
    drop(open);
    dns.set("db.test", Record::A(vec![B, C]));
    members_once(&proxy, two_up(["db#127.0.0.3", "db#127.0.0.4"])).await;
    let (by, _open) = spread(&proxy, 10).await;
    assert_eq!(
        (by.get("127.0.0.3"), by.get("127.0.0.4")),
        (Some(&5), Some(&5)),
        "{by:?}"
    );
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_at_a_former_address_follow_on_down_when_it_stops_answering() {
    let dns = Dns::start().await;
    let port = free_port();
    let (a, b) = tokio::join!(MariaDb::start_at(A, port), MariaDb::start_at(B, port));
    dns.set("db.test", Record::A(vec![A]));
    let proxy = proxy(&dns, port, "resolve_interval = \"1s\"\non_down = \"close\"");
    reaches(&proxy, A, "db.test reaches the first server").await;
    let mut at_a = crate::support::connect(proxy.addr("rw")).await.unwrap();
    dns.set("db.test", Record::A(vec![B]));
    reaches(&proxy, B, "new sessions follow the name").await;
    let mut at_b = crate::support::connect(proxy.addr("rw")).await.unwrap();
    // The old server still answers: its session goes on.
    at_a.query_drop("DO 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    at_a.query_drop("DO 1").await.unwrap();
    // It freezes: the session there is closed (on_down = "close") instead
    // of hanging, and the one at the new address goes on.
    a.pause();
    let frozen = tokio::time::Instant::now();
    let closed = crate::support::closed_within(&mut at_a, Duration::from_secs(10)).await;
    eprintln!(
        "the former address froze: its session closed after {:?}",
        frozen.elapsed()
    );
    a.resume();
    assert!(closed, "the session at the former address was closed");
    at_b.query_drop("DO 1")
        .await
        .expect("the session at the new address goes on");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_members_moves_no_backend_back_to_a_former_address() {
    let dns = Dns::start().await;
    let port = free_port();
    let (a, b, c) = tokio::join!(
        MariaDb::start_at(A, port),
        MariaDb::start_at(B, port),
        MariaDb::start_at(C, port)
    );
    dns.set("db.test", Record::A(vec![A]));
    dns.set("c.db.test", Record::A(vec![C]));
    let srv = |weight: u16| Record::Srv(vec![(10, weight, port, "c.db.test".to_owned())]);
    dns.set("_mysql._tcp.x.test", srv(1));
    let proxy = proxy_with_pool(
        &dns,
        "",
        &format!(
            "[[pool.main.backend]]\naddress = \"db.test:{port}\"\nname = \"db\"\n\
             [[pool.main.backend_srv]]\nname = \"_mysql._tcp.x.test\"\n"
        ),
    );
    let ip_of = |name: &str| {
        let status = dbsplice::admin::status::status(proxy.app.as_ref().unwrap().shared());
        status["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| {
                (
                    b["ip"].as_str().unwrap().to_owned(),
                    b["weight"].as_u64().unwrap(),
                )
            })
    };
    dns.set("db.test", Record::A(vec![B]));
    let moved = format!("{B}:{port}");
    wait_until(Duration::from_secs(10), || async {
        (ip_of("db")?.0 == moved).then_some(())
    })
    .await
    .expect("db moved");
    // The SRV record changes: its members are applied again, db stays.
    dns.set("_mysql._tcp.x.test", srv(7));
    let target = format!("c.db.test:{port}");
    wait_until(Duration::from_secs(10), || async {
        (ip_of(&target)?.1 == 7).then_some(())
    })
    .await
    .expect("the SRV member's weight follows the record");
    assert_eq!(ip_of("db").unwrap().0, moved, "db was not moved back");
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_finds_a_name_moved_watches_its_former_address_too() {
    let dns = Dns::start().await;
    let port = free_port();
    let (a, b) = tokio::join!(MariaDb::start_at(A, port), MariaDb::start_at(B, port));
    dns.set("db.test", Record::A(vec![A]));
    // Hours between lookups: only the reload looks again.
    let body = format!(
        "resolve_interval = \"1h\"\non_down = \"close\"\n{}",
        mysql_check(CHECK_USER, CHECK_PASSWORD, "")
    );
    let backend = format!("[[pool.main.backend]]\naddress = \"db.test:{port}\"\nname = \"db\"\n");
    let dir = crate::support::Scratch::new("dns-reload");
    let path = dir.0.join("dbsplice.toml");
    let toml = format!(
        "resolver = \"{}\"\n{}",
        dns.addr,
        crate::support::config(&body, &[backend])
    );
    std::fs::write(&path, toml).unwrap();
    let proxy = Proxy::start_file(&path);
    reaches(&proxy, A, "db.test reaches the first server").await;
    let mut at_a = crate::support::connect(proxy.addr("rw")).await.unwrap();
    dns.set("db.test", Record::A(vec![B]));
    assert!(matches!(
        proxy.reload(dbsplice::inbox::Trigger::Forced).await,
        dbsplice::inbox::ReloadOutcome::Applied { .. }
    ));
    assert_eq!(served_by(&proxy).await.as_deref(), Some("127.0.0.3"));
    at_a.query_drop("DO 1").await.unwrap();
    a.pause();
    let closed = crate::support::closed_within(&mut at_a, Duration::from_secs(10)).await;
    a.resume();
    assert!(closed, "the session at the former address was closed");
    drop(b);
}
