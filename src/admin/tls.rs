//! HTTPS for the admin server: an acceptor built from `[admin] cert_file` and
//! `key_file` as the running config last read them, rebuilt when a reload
//! brings new files.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::shared::Shared;

/// The acceptor and the PEM bytes it was built from.
#[derive(Default)]
pub(super) struct Cache(Mutex<Option<(Vec<u8>, String, TlsAcceptor)>>);

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tls::Cache")
    }
}

impl Cache {
    /// The acceptor for the current config; `None` for plain HTTP.
    pub(super) fn acceptor(&self, shared: &Shared) -> Result<Option<TlsAcceptor>, String> {
        let snapshot = shared.routes.load();
        let Some((cert, key)) = snapshot
            .config
            .admin
            .as_ref()
            .and_then(|a| a.tls_pem.as_ref())
        else {
            return Ok(None);
        };
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((c, k, acceptor)) = cache.as_ref() {
            if c == cert && k == key.expose() {
                return Ok(Some(acceptor.clone()));
            }
        }
        let acceptor = build(cert, key.expose().as_bytes())?;
        *cache = Some((cert.clone(), key.expose().to_owned(), acceptor.clone()));
        Ok(Some(acceptor))
    }
}

fn build(cert: &[u8], key: &[u8]) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert_file: {e}"))?;
    if chain.is_empty() {
        return Err("cert_file holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key_file: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("cert_file and key_file do not fit: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
