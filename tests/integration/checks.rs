//! The MySQL-protocol health check against real MariaDB servers: it logs in,
//! pings and quits cleanly, learns the role, and names the reason when a
//! backend is not up.

use std::time::Duration;

use dbsplice::vocabulary::Health;
use dbsplice::vocabulary::{Lag, Role};
use mysql_async::prelude::Queryable;

use crate::support::mariadb::{CHECK_PASSWORD, CHECK_USER, ED_PASSWORD, ED_USER, NOPW_USER};
use crate::support::{backend, config, mysql_check, wait_until, MariaDb, Proxy};

fn proxy_for(db: &MariaDb, check: &str) -> Proxy {
    Proxy::start(&config(check, &[backend(db.addr(), 1, "primary")]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_log_in_and_quit_without_aborting_anything() {
    let db = MariaDb::start().await;
    let proxy = proxy_for(&db, &mysql_check(CHECK_USER, CHECK_PASSWORD, ""));
    proxy.wait_health(db.addr(), Health::Up).await;
    let aborted_connects = db.status("Aborted_connects").await;
    let aborted_clients = db.status("Aborted_clients").await;
    let connections = db.status("Connections").await;
    // Thirty more probes (each is a connection), then look again.
    wait_until(Duration::from_secs(30), || async {
        (db.status("Connections").await >= connections + 30).then_some(())
    })
    .await
    .expect("probes keep coming");
    assert_eq!(
        db.status("Aborted_connects").await,
        aborted_connects,
        "no probe aborted a connect"
    );
    assert_eq!(
        db.status("Aborted_clients").await,
        aborted_clients,
        "no probe left without COM_QUIT"
    );
    let backend = proxy.backend(db.addr());
    assert_eq!(backend.role(), Role::Writable);
    assert!(
        backend.reason().contains("mysql check passed"),
        "{}",
        backend.reason()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_empty_and_ed25519_passwords_all_log_in() {
    let db = MariaDb::start().await;
    for (user, password) in [
        (CHECK_USER, CHECK_PASSWORD),
        (NOPW_USER, ""),
        (ED_USER, ED_PASSWORD),
    ] {
        let proxy = proxy_for(&db, &mysql_check(user, password, ""));
        proxy.wait_health(db.addr(), Health::Up).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_check_password_is_auth_failed_not_down() {
    let db = MariaDb::start().await;
    let proxy = proxy_for(&db, &mysql_check(CHECK_USER, "wrong", ""));
    proxy.wait_health(db.addr(), Health::Down).await;
    let reason = proxy.backend(db.addr()).reason();
    assert!(
        reason.starts_with("auth failed (check misconfigured)") && reason.contains("1045"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_user_outranking_the_check_user_is_named() {
    let db = MariaDb::start().await;
    let proxy = proxy_for(&db, &mysql_check(CHECK_USER, CHECK_PASSWORD, ""));
    proxy.wait_health(db.addr(), Health::Up).await;
    // What a test suite run against the server can leave behind: MariaDB
    // matches the most specific host first, so this user takes every login
    // from 127.0.0.1, the check user's included.
    let mut admin = db.admin().await;
    admin
        .query_drop("CREATE USER ''@'127.0.0.1'")
        .await
        .unwrap();
    proxy.wait_health(db.addr(), Health::Down).await;
    let reason = proxy.backend(db.addr()).reason();
    assert!(
        reason.contains("1045") && reason.contains("anonymous user"),
        "{reason}"
    );
    admin.query_drop("DROP USER ''@'127.0.0.1'").await.unwrap();
    proxy.wait_health(db.addr(), Health::Up).await;
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_flips_are_learned_within_an_interval() {
    let db = MariaDb::start().await;
    let proxy = proxy_for(&db, &mysql_check(CHECK_USER, CHECK_PASSWORD, ""));
    proxy.wait_health(db.addr(), Health::Up).await;
    let backend = proxy.backend(db.addr());
    assert_eq!(backend.role(), Role::Writable);
    let mut admin = db.admin().await;
    admin.query_drop("SET GLOBAL read_only = 1").await.unwrap();
    wait_until(Duration::from_secs(5), || async {
        (backend.role() == Role::ReadOnly).then_some(())
    })
    .await
    .expect("read_only=1 is learned");
    admin.query_drop("SET GLOBAL read_only = 0").await.unwrap();
    wait_until(Duration::from_secs(5), || async {
        (backend.role() == Role::Writable).then_some(())
    })
    .await
    .expect("read_only=0 is learned");
    assert_eq!(
        backend.health(),
        Health::Up,
        "a role change is not a health change"
    );
    admin.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_and_returns_after_sigcont() {
    let db = MariaDb::start().await;
    let proxy = proxy_for(
        &db,
        &mysql_check(CHECK_USER, CHECK_PASSWORD, "")
            .replace("timeout = \"1s\"", "timeout = \"300ms\""),
    );
    proxy.wait_health(db.addr(), Health::Up).await;
    db.pause();
    proxy.wait_health(db.addr(), Health::Down).await;
    let reason = proxy.backend(db.addr()).reason();
    assert!(reason.contains("timeout"), "{reason}");
    db.resume();
    proxy.wait_health(db.addr(), Health::Up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_refused_and_a_full_one_is_full_not_down() {
    let mut db = MariaDb::start_with(&["--max-connections=10".to_owned()]).await;
    let proxy = proxy_for(&db, &mysql_check(CHECK_USER, CHECK_PASSWORD, ""));
    proxy.wait_health(db.addr(), Health::Up).await;
    let hogs = db.fill().await;
    // Full is not down: the backend stays up, skipped by new sessions.
    let state = proxy.backend(db.addr());
    wait_until(Duration::from_secs(5), || async {
        state.is_full().then_some(())
    })
    .await
    .expect("the probe sees the server full");
    assert_eq!(state.health(), Health::Up, "a full server is not down");
    let reason = state.reason();
    assert!(
        reason.contains("1040") && reason.starts_with("full"),
        "{reason}"
    );
    for hog in hogs {
        hog.disconnect().await.unwrap();
    }
    wait_until(Duration::from_secs(5), || async {
        (!state.is_full()).then_some(())
    })
    .await
    .expect("a probe finds room again");
    proxy.wait_health(db.addr(), Health::Up).await;
    db.kill();
    proxy.wait_health(db.addr(), Health::Down).await;
    assert!(proxy.backend(db.addr()).reason().contains("refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_unknown_without_the_privilege_and_absent_on_a_primary() {
    let db = MariaDb::start().await;
    let proxy = proxy_for(&db, &mysql_check(CHECK_USER, CHECK_PASSWORD, "lag = true"));
    proxy.wait_health(db.addr(), Health::Up).await;
    assert_eq!(
        proxy.backend(db.addr()).lag(),
        None,
        "no SLAVE MONITOR: unknown, never 0"
    );
    let mut admin = db.admin().await;
    admin
        .query_drop(format!("GRANT SLAVE MONITOR ON *.* TO '{CHECK_USER}'@'%'"))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    let backend = proxy.backend(db.addr());
    wait_until(Duration::from_secs(5), || async {
        (backend.lag() == Some(Lag::NotReplica)).then_some(())
    })
    .await
    .expect("with the privilege, a primary is known not to replicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_tls_is_checked_over_tls() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{}", std::process::id()));
    let pki = crate::support::certs::make(&dir, "good");
    let other = crate::support::certs::make(&dir, "other");
    let db = MariaDb::start_with(&[
        format!("--ssl-ca={}", pki.ca.display()),
        format!("--ssl-cert={}", pki.cert.display()),
        format!("--ssl-key={}", pki.key.display()),
        "--require-secure-transport=ON".to_owned(),
    ])
    .await;
    let tls = |extra: &str| mysql_check(CHECK_USER, CHECK_PASSWORD, extra);

    let verified = proxy_for(
        &db,
        &tls(&format!(
            "tls = \"required\"\nca_file = \"{}\"",
            pki.ca.display()
        )),
    );
    verified.wait_health(db.addr(), Health::Up).await;
    let preferred = proxy_for(
        &db,
        &tls(&format!(
            "tls = \"preferred\"\nca_file = \"{}\"\nverify = \"ca\"",
            pki.ca.display()
        )),
    );
    preferred.wait_health(db.addr(), Health::Up).await;

    let plain = proxy_for(&db, &tls("tls = \"disabled\""));
    plain.wait_health(db.addr(), Health::Down).await;
    let reason = plain.backend(db.addr()).reason();
    assert!(
        reason.contains("auth failed") && reason.contains("TLS"),
        "the reason names TLS: {reason}"
    );

    let wrong_ca = proxy_for(
        &db,
        &tls(&format!(
            "tls = \"required\"\nca_file = \"{}\"",
            other.ca.display()
        )),
    );
    wrong_ca.wait_health(db.addr(), Health::Down).await;
    let reason = wrong_ca.backend(db.addr()).reason();
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_lag_from_a_real_replica() {
    let primary_args = ["--log-bin=binlog".to_owned(), "--server-id=1".to_owned()];
    let replica_args = ["--server-id=2".to_owned(), "--read-only=ON".to_owned()];
    let (primary, replica) = tokio::join!(
        MariaDb::start_with(&primary_args),
        MariaDb::start_with(&replica_args)
    );
    let mut admin = replica.admin().await;
    admin
        .query_drop(format!("GRANT SLAVE MONITOR ON *.* TO '{CHECK_USER}'@'%'"))
        .await
        .unwrap();
    admin
        .query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{}', MASTER_PASSWORD='{}', \
             MASTER_USE_GTID=slave_pos",
            primary.port,
            crate::support::mariadb::USER,
            crate::support::mariadb::PASSWORD
        ))
        .await
        .unwrap();
    admin.query_drop("START SLAVE").await.unwrap();
    let proxy = proxy_for(
        &replica,
        &mysql_check(CHECK_USER, CHECK_PASSWORD, "lag = true"),
    );
    proxy.wait_health(replica.addr(), Health::Up).await;
    let backend = proxy.backend(replica.addr());
    wait_until(Duration::from_secs(20), || async {
        matches!(backend.lag(), Some(Lag::Seconds(_))).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("a running replica reports seconds: {}", backend.reason()));
    assert_eq!(backend.role(), Role::ReadOnly);

    // A stopped SQL thread makes Seconds_Behind_Master NULL: unknown, never 0.
    admin.query_drop("STOP SLAVE SQL_THREAD").await.unwrap();
    wait_until(Duration::from_secs(10), || async {
        (backend.lag().is_none()).then_some(())
    })
    .await
    .expect("a stopped replica's lag is unknown");
    let reason = backend.reason();
    assert!(
        reason.contains("lag unknown") && reason.contains("SQL thread No"),
        "{reason}"
    );
    assert_eq!(
        backend.health(),
        Health::Up,
        "lag is reported, not judged, by the check"
    );
    admin.query_drop("STOP SLAVE").await.unwrap();
    admin.disconnect().await.unwrap();
}
