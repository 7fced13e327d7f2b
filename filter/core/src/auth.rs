//! Pool-key authentication: the presented bearer is hashed and looked up in the snapshot.
//!
//! The key travels as `Authorization: Bearer <key>`; on a Claude route also as `x-api-key: <key>`
//! (what Claude Code sends with `ANTHROPIC_API_KEY`). Exactly one of them, once: a request
//! naming the key twice is refused, since a proxy in front and the gateway could each read a
//! different one.

use sha2::{Digest, Sha256};

use crate::errors::{ErrorKind, GatewayError};
use crate::headers::RequestHead;
use crate::pb;
use crate::snapshot::SnapshotIndex;

/// SHA-256 of the raw key; the only form in which keys are stored or pushed.
pub fn hash_key(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// Pulls the token out of an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, GatewayError> {
    let value = authorization.ok_or_else(|| {
        GatewayError::new(
            ErrorKind::MissingKey,
            "You didn't provide an API key. Send your codexmesh pool key as 'Authorization: Bearer <key>'.",
        )
    })?;
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

/// The one `Authorization` value of a request: two of them are refused, since a proxy in front and
/// the gateway could each read a different one.
pub fn single_authorization(head: &RequestHead) -> Result<Option<&str>, GatewayError> {
    if head.count("authorization") > 1 {
        return Err(GatewayError::new(
            ErrorKind::MalformedKey,
            "Send exactly one Authorization header: 'Bearer <pool key>'.",
        ));
    }
    Ok(head.get("authorization"))
}

/// The pool key as an `Authorization` value: the header itself or, where the route takes it
/// (`accepts_x_api_key`), an `x-api-key` turned into `Bearer <key>`.
pub fn presented_authorization(
    head: &RequestHead,
    accepts_x_api_key: bool,
) -> Result<Option<String>, GatewayError> {
    let authorization = single_authorization(head)?;
    if !accepts_x_api_key {
        return Ok(authorization.map(str::to_string));
    }
    let api_keys = head.count("x-api-key");
    if api_keys > 1 || (api_keys == 1 && authorization.is_some()) {
        return Err(GatewayError::new(
            ErrorKind::MalformedKey,
            "Send the pool key once: either 'x-api-key: <pool key>' or 'Authorization: Bearer <pool key>'.",
        ));
    }
    Ok(match head.get("x-api-key").map(str::trim) {
        Some("") => return Err(malformed()),
        Some(key) => Some(format!("Bearer {key}")),
        None => authorization.map(str::to_string),
    })
}

fn malformed() -> GatewayError {
    GatewayError::new(
        ErrorKind::MalformedKey,
        "The Authorization header must be 'Bearer <pool key>'.",
    )
}

/// A key that passed authentication, with its pool.
#[derive(Debug, Clone, Copy)]
pub struct AuthedKey<'a> {
    pub pool: &'a pb::Pool,
    pub key: &'a pb::PoolKey,
}

pub fn authenticate<'a>(
    snapshot: &'a SnapshotIndex,
    authorization: Option<&str>,
) -> Result<AuthedKey<'a>, GatewayError> {
    let token = bearer_token(authorization)?;
    let (pool, key) = snapshot.key_by_hash(&hash_key(token)).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::UnknownKey,
            "Incorrect API key provided. Use a pool key issued by codexmesh.",
        )
    })?;
    if key.status != pb::KeyStatus::Active as i32 {
        return Err(GatewayError::new(
            ErrorKind::RevokedKey,
            "This pool key has been revoked.",
        ));
    }
    Ok(AuthedKey { pool, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::sample;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn hash_is_sha256_hex_compatible() {
        // Known vector: SHA-256("abc").
        let h = hash_key("abc");
        assert_eq!(h[0], 0xba);
        assert_eq!(h[31], 0xad);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(Some("Bearer cmk_x")).unwrap(), "cmk_x");
        assert_eq!(bearer_token(Some("bearer   cmk_x ")).unwrap(), "cmk_x");
        assert_eq!(bearer_token(None).unwrap_err().kind, ErrorKind::MissingKey);
        for bad in ["cmk_x", "Basic abc", "Bearer ", ""] {
            assert_eq!(
                bearer_token(Some(bad)).unwrap_err().kind,
                ErrorKind::MalformedKey,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn live_key_finds_its_pool() {
        let index = SnapshotIndex::new(sample());
        let authed = authenticate(&index, Some("Bearer cmk_live")).unwrap();
        assert_eq!(authed.pool.id, "pool-a");
        assert_eq!(authed.key.id, "key-1");
    }

    #[test]
    fn unknown_and_revoked_keys_are_401() {
        let index = SnapshotIndex::new(sample());
        let unknown = authenticate(&index, Some("Bearer cmk_guess")).unwrap_err();
        assert_eq!(
            (unknown.kind, unknown.status()),
            (ErrorKind::UnknownKey, 401)
        );
        let revoked = authenticate(&index, Some("Bearer cmk_revoked")).unwrap_err();
        assert_eq!(
            (revoked.kind, revoked.status()),
            (ErrorKind::RevokedKey, 401)
        );
        assert!(
            !revoked.message.contains("cmk_revoked"),
            "never echo the key"
        );
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let head = |values: &[&str]| {
            RequestHead::new(
                values
                    .iter()
                    .map(|v| ("authorization".to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(single_authorization(&head(&[])).unwrap(), None);
        assert_eq!(
            single_authorization(&head(&["Bearer cmk_live"])).unwrap(),
            Some("Bearer cmk_live")
        );
        let err = single_authorization(&head(&["Bearer cmk_live", "Bearer other"])).unwrap_err();
        assert_eq!((err.kind, err.status()), (ErrorKind::MalformedKey, 401));
    }

    #[test]
    fn claude_routes_also_take_the_key_as_x_api_key_once() {
        let head = |pairs: &[(&str, &str)]| {
            RequestHead::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let index = SnapshotIndex::new(sample());
        let via_key = presented_authorization(&head(&[("x-api-key", "cmk_live")]), true).unwrap();
        assert_eq!(via_key.as_deref(), Some("Bearer cmk_live"));
        assert_eq!(
            authenticate(&index, via_key.as_deref()).unwrap().key.id,
            "key-1"
        );
        let bearer =
            presented_authorization(&head(&[("authorization", "Bearer cmk_live")]), true).unwrap();
        assert_eq!(bearer.as_deref(), Some("Bearer cmk_live"));
        // Elsewhere x-api-key is not a key at all.
        assert_eq!(
            presented_authorization(&head(&[("x-api-key", "cmk_live")]), false).unwrap(),
            None
        );
        for pairs in [
            &[
                ("x-api-key", "cmk_live"),
                ("authorization", "Bearer cmk_live"),
            ][..],
            &[("x-api-key", "cmk_live"), ("x-api-key", "other")][..],
            &[("x-api-key", " ")][..],
        ] {
            let err = presented_authorization(&head(pairs), true).unwrap_err();
            assert_eq!(err.kind, ErrorKind::MalformedKey, "{pairs:?}");
        }
    }
}
