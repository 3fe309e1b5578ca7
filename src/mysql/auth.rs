//! Authentication plugins the probe can answer, through `mysql_common`'s
//! scramble functions: `mysql_native_password`, `caching_sha2_password` (with
//! its fast and full paths) and MariaDB's `client_ed25519`.

use mysql_common::packets::{AuthPlugin, AuthPluginData};
use mysql_common::proto::MySerialize;

/// The plugin a server asked for, if the probe can speak it.
pub fn plugin(name: &[u8]) -> Result<AuthPlugin<'static>, String> {
    match AuthPlugin::from_bytes(name) {
        p @ (AuthPlugin::MysqlNativePassword
        | AuthPlugin::CachingSha2Password
        | AuthPlugin::Ed25519) => Ok(p.into_owned()),
        other => Err(format!(
            "the check user authenticates with plugin '{}', which dbsplice's check does not speak; \
             use mysql_native_password, caching_sha2_password or ed25519 for the check user",
            String::from_utf8_lossy(other.as_bytes())
        )),
    }
}

/// The first authentication response for `plugin` with this server nonce.
/// An empty password answers with empty data, as servers expect.
pub fn scramble(plugin: &AuthPlugin<'_>, password: &str, nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // `plugin()` admits only plugins whose data generation cannot panic
    // (ed25519 support is compiled in).
    if let Some(data) = plugin.gen_data(Some(password), nonce) {
        match data {
            AuthPluginData::Native(_) | AuthPluginData::Sha2(_) | AuthPluginData::Ed25519(_) => {
                data.serialize(&mut out)
            }
            _ => {}
        }
    }
    out
}

/// The password as `caching_sha2_password` full authentication sends it over
/// a secure channel: cleartext, NUL-terminated.
pub fn cleartext(password: &str) -> Vec<u8> {
    let mut out = password.as_bytes().to_vec();
    out.push(0);
    out
}

/// The password for RSA-encrypted full authentication: NUL-terminated and
/// XORed with the nonce, then encrypted (OAEP) with the server's public key.
/// `mysql_common` panics on a malformed key, so the key is checked first and
/// the encryption runs behind `catch_unwind`: a hostile server must not
/// bring dbsplice down.
pub fn rsa_encrypted(password: &str, nonce: &[u8], pem: &[u8]) -> Result<Vec<u8>, String> {
    if nonce.is_empty() {
        return Err("the server sent an empty nonce".to_owned());
    }
    let looks_like_pem = |marker: &[u8]| pem.windows(marker.len()).any(|w| w == marker);
    if !looks_like_pem(b"-----BEGIN PUBLIC KEY-----")
        && !looks_like_pem(b"-----BEGIN RSA PUBLIC KEY-----")
    {
        return Err("the server's RSA public key is not a PEM public key".to_owned());
    }
    let mut plain = cleartext(password);
    for (byte, n) in plain.iter_mut().zip(nonce.iter().cycle()) {
        *byte ^= n;
    }
    let pem = pem.to_vec();
    std::panic::catch_unwind(move || mysql_common::crypto::encrypt(&plain, &pem))
        .map_err(|_| "the server's RSA public key could not be used".to_owned())
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn known_plugins_only() {
        for name in [
            &b"mysql_native_password"[..],
            b"caching_sha2_password",
            b"client_ed25519",
        ] {
            assert!(plugin(name).is_ok(), "{}", String::from_utf8_lossy(name));
        }
        let err = plugin(b"auth_gssapi_client").unwrap_err();
        assert!(err.contains("auth_gssapi_client"), "{err}");
        assert!(
            plugin(b"parsec").is_err(),
            "parsec support is not compiled in"
        );
    }

    #[test]
    fn scrambles_have_the_plugin_lengths() {
        let nonce = [7u8; 20];
        assert_eq!(
            scramble(&AuthPlugin::MysqlNativePassword, "pw", &nonce).len(),
            20
        );
        assert_eq!(
            scramble(&AuthPlugin::CachingSha2Password, "pw", &nonce).len(),
            32
        );
        assert_eq!(scramble(&AuthPlugin::Ed25519, "pw", &[9u8; 32]).len(), 64);
        assert!(scramble(&AuthPlugin::MysqlNativePassword, "", &nonce).is_empty());
    }

    #[test]
    fn bad_keys_are_errors_not_panics() {
        for pem in [
            &b""[..],
            b"garbage",
            b"-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(rsa_encrypted("pw", &[1; 20], pem).is_err());
        }
        assert!(rsa_encrypted("pw", &[], b"-----BEGIN PUBLIC KEY-----").is_err());
    }
}
