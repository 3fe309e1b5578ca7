//! The check against a scripted server: hostile greetings and stalls end in
//! a clear reason within the deadline, and MySQL 8's caching_sha2_password
//! full authentication works over TLS and with the server's RSA key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dbsplice::vocabulary::Health;
use tokio::io::AsyncWriteExt;

use crate::support::fake::{self, greeting, ok, packet, read_packet, serve_logged_in};
use crate::support::{backend, config, mysql_check, Proxy};

async fn reason_for(addr: std::net::SocketAddr, check: &str) -> String {
    let proxy = Proxy::start(&config(check, &[backend(addr, 1, "primary")]));
    proxy.wait_health(addr, Health::Down).await;
    let reason = proxy.backend(addr).reason();
    reason.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_greetings_are_named() {
    let check = mysql_check("check", "pw", "").replace("timeout = \"1s\"", "timeout = \"500ms\"");
    let garbage = fake::serve(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    })
    .await;
    let reason = reason_for(garbage, &check).await;
    assert!(reason.starts_with("protocol error"), "{reason}");

    let absurd = fake::serve(|mut s| async move {
        let _ = s.write_all(&[0xff, 0xff, 0xff, 0, 10, 1, 2]).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let reason = reason_for(absurd, &check).await;
    assert!(
        reason.contains("16777215 bytes announced"),
        "refused at once, not waited for: {reason}"
    );

    let blocked = fake::serve(|mut s| async move {
        let mut err = vec![0xff, 0x69, 0x04];
        err.extend_from_slice(b"Host '10.0.0.5' is blocked because of many connection errors");
        let _ = s.write_all(&packet(0, &err)).await;
    })
    .await;
    let reason = reason_for(blocked, &check).await;
    assert!(
        reason.contains("blocked by 1129") && reason.contains("FLUSH HOSTS"),
        "{reason}"
    );

    let stalls = fake::serve(|mut s| async move {
        let _ = s.write_all(&greeting("mysql_native_password", false)).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let reason = reason_for(stalls, &check).await;
    assert!(
        reason.contains("timeout") && reason.contains("500ms"),
        "the probe deadline holds: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_full_authentication_over_tls() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-tls-{}", std::process::id()));
    let pki = crate::support::certs::make(&dir, "fake");
    let acceptor = tls_acceptor(&pki);
    let quit_cleanly = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&quit_cleanly);
    let addr = fake::serve(move |mut s| {
        let acceptor = acceptor.clone();
        let seen = Arc::clone(&seen);
        async move {
            s.write_all(&greeting("caching_sha2_password", true))
                .await
                .unwrap();
            let Some(ssl_request) = read_packet(&mut s).await else {
                return;
            };
            assert_eq!(ssl_request.len(), 32, "an SSL request");
            let mut tls = acceptor.accept(s).await.unwrap();
            let response = read_packet(&mut tls).await.unwrap();
            assert!(response.windows(6).any(|w| w == b"check\0"));
            tls.write_all(&packet(2, &[1, 4])).await.unwrap(); // cache miss: full authentication
            let password = read_packet(&mut tls).await.unwrap();
            if password == b"pw\0" {
                tls.write_all(&ok(4)).await.unwrap();
                seen.store(serve_logged_in(&mut tls).await, Ordering::SeqCst);
            } else {
                tls.write_all(&packet(4, b"\xff\x15\x04#28000Access denied"))
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let check = mysql_check(
        "check",
        "pw",
        &format!("tls = \"required\"\nca_file = \"{}\"", pki.ca.display()),
    );
    let proxy = Proxy::start(&config(&check, &[backend(addr, 1, "primary")]));
    proxy.wait_health(addr, Health::Up).await;
    assert!(
        quit_cleanly.load(Ordering::SeqCst),
        "the probe ended with COM_QUIT"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_full_authentication_with_the_rsa_key() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-rsa-{}", std::process::id()));
    let pki = crate::support::certs::make(&dir, "rsa");
    let public = dir.join("public.pem");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&pki.key)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public_pem = std::fs::read(&public).unwrap();
    let private = pki.key.clone();
    let decrypted_ok = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&decrypted_ok);
    let addr = fake::serve(move |mut s| {
        let public_pem = public_pem.clone();
        let private = private.clone();
        let seen = Arc::clone(&seen);
        async move {
            s.write_all(&greeting("caching_sha2_password", false))
                .await
                .unwrap();
            let Some(_response) = read_packet(&mut s).await else {
                return;
            };
            s.write_all(&packet(2, &[1, 4])).await.unwrap();
            assert_eq!(read_packet(&mut s).await.unwrap(), [2], "asks for the key");
            let mut key = vec![1];
            key.extend_from_slice(&public_pem);
            s.write_all(&packet(4, &key)).await.unwrap();
            let encrypted = read_packet(&mut s).await.unwrap();
            if decrypt_matches(&private, &encrypted, b"pw\0") {
                s.write_all(&ok(6)).await.unwrap();
                seen.store(serve_logged_in(&mut s).await, Ordering::SeqCst);
            } else {
                s.write_all(&packet(6, b"\xff\x15\x04#28000Access denied"))
                    .await
                    .unwrap();
            }
        }
    })
    .await;
    let proxy = Proxy::start(&config(
        &mysql_check("check", "pw", "get_server_public_key = true"),
        &[backend(addr, 1, "primary")],
    ));
    proxy.wait_health(addr, Health::Up).await;
    assert!(
        decrypted_ok.load(Ordering::SeqCst),
        "the server decrypted the password and saw COM_QUIT"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that sends a forged login, ping and `read_only = OFF` in plain
/// text with its greeting, then completes TLS with a trusted certificate and
/// says nothing inside it: the backend stays down with a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_forged_before_tls_are_a_protocol_error() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-forged-{}", std::process::id()));
    let pki = crate::support::certs::make(&dir, "forged");
    let acceptor = tls_acceptor(&pki);
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&handshakes);
    let addr = fake::serve(move |mut s| {
        let acceptor = acceptor.clone();
        let seen = Arc::clone(&seen);
        async move {
            let mut segment = greeting("mysql_native_password", true);
            segment.extend(ok(2));
            segment.extend(ok(1));
            segment.extend(fake::read_only_off());
            s.write_all(&segment).await.unwrap();
            if read_packet(&mut s).await.is_none() {
                return;
            }
            if let Ok(mut tls) = acceptor.accept(s).await {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = read_packet(&mut tls).await;
            }
        }
    })
    .await;
    let check = mysql_check(
        "check",
        "pw",
        &format!(
            "tls = \"required\"\nverify = \"full\"\nca_file = \"{}\"",
            pki.ca.display()
        ),
    );
    let proxy = Proxy::start(&config(&check, &[backend(addr, 1, "primary")]));
    let state = proxy.backend(addr);
    let probed = crate::support::wait_until(Duration::from_secs(20), || async {
        (state.counters.probes_failed.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    assert!(probed.is_some(), "three probes ran: {}", state.reason());
    assert_eq!(state.counters.probes_passed.load(Ordering::Relaxed), 0);
    assert_eq!(state.health(), Health::Down);
    let reason = state.reason().to_string();
    assert!(
        reason.starts_with("protocol error") && reason.contains("before TLS"),
        "{reason}"
    );
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        0,
        "no TLS handshake with a server that forged answers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client refused before it authenticated learns the pool and the cause,
/// never a backend's name, address or what the backend said; the log has
/// those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_learns_nothing_about_the_backends() {
    let addr = fake::serve(|mut s| async move {
        let mut err = vec![0xff, 0x10, 0x04];
        err.extend_from_slice(b"Too many connections on db7.internal.example");
        let _ = s.write_all(&packet(0, &err)).await;
    })
    .await;
    let proxy = Proxy::start(&config(
        "greeting_gate = true\n[pool.main.check]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\n",
        &[backend(addr, 1, "primary")],
    ));
    proxy.wait_health(addr, Health::Up).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr("rw"))
        .await
        .unwrap();
    let refusal = read_packet(&mut client).await.expect("an ERR packet");
    let text = String::from_utf8_lossy(&refusal);
    assert_eq!(refusal[0], 0xff, "{text}");
    assert!(
        text.contains("pool 'main'") && text.contains("1 tried"),
        "{text}"
    );
    assert!(
        !text.contains("db7") && !text.contains(&addr.port().to_string()),
        "{text}"
    );
}

/// Decrypts with `openssl pkeyutl` (RSA-OAEP) and undoes the nonce XOR.
fn decrypt_matches(private_key: &std::path::Path, encrypted: &[u8], want: &[u8]) -> bool {
    let dir = private_key.parent().unwrap();
    let input = dir.join("encrypted.bin");
    std::fs::write(&input, encrypted).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "pkeyutl",
            "-decrypt",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-inkey",
        ])
        .arg(private_key)
        .arg("-in")
        .arg(&input)
        .output()
        .unwrap();
    if !out.status.success() {
        return false;
    }
    let plain: Vec<u8> = out
        .stdout
        .iter()
        .zip(fake::NONCE.iter().cycle())
        .map(|(b, n)| b ^ n)
        .collect();
    plain == want
}

fn tls_acceptor(pki: &crate::support::certs::Pki) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
