//! Bearer tokens for mutating endpoints, compared in constant time.

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Accepts the request when it carries the configured token.
pub(super) fn check(
    headers: &HeaderMap,
    token: Option<&Secret>,
) -> Result<(), (StatusCode, &'static str)> {
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            "actions are disabled: set [admin] token_file to enable them",
        ));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or((StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    // ct_eq compares every byte whatever the first mismatch; only the length
    // can leak, and tokens are long random strings.
    if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "wrong bearer token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let token = Secret::new("s3cret-token");
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(check(&with("Bearer s3cret-token"), Some(&token)).is_ok());
        assert_eq!(
            check(&with("Bearer wrong"), Some(&token)).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            check(&with("Basic s3cret-token"), Some(&token))
                .unwrap_err()
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            check(&HeaderMap::new(), Some(&token)).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            check(&with("Bearer x"), None).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }
}
