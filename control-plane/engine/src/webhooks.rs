//! Sending one signed webhook delivery: the signature, the request, the timeout.
//!
//! Rules: the body is JSON sent as is; `x-codexmesh-signature: t=<unix>,v1=<hex>` where hex is
//! HMAC-SHA256 of `"<t>.<body>"` under the webhook's secret (a receiver recomputes it and
//! refuses an old `t`); each attempt has [`DELIVERY_TIMEOUT`]; any 2xx is delivered, anything
//! else (another status, no answer) a failure whose short description never holds the secret
//! or the URL's path. Retries are the caller's (the evaluator's outbox).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use codexmesh_model::alerts::SIGNATURE_HEADER;

/// One attempt's time limit (connect and answer).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The signature header's value for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return format!("t={t},v1=");
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body` under `secret` (what a receiver checks; the
/// tests use it). Compared in constant time.
pub fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.verify_slice(&v1).is_ok()
}

/// A failed attempt: the HTTP status (0: no answer) and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub status: u16,
    pub message: String,
}

/// Posts `body` to `url`, signed; Ok(status) on a 2xx.
pub async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &str,
) -> Result<u16, DeliveryFailure> {
    let t = codexmesh_model::util::now_ms() / 1000;
    let answer = http
        .post(url)
        .timeout(DELIVERY_TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, t, body))
        .body(body.to_owned())
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err(DeliveryFailure {
            status: r.status().as_u16(),
            message: format!("answered {}", r.status()),
        }),
        Err(e) => Err(DeliveryFailure {
            status: 0,
            message: if e.is_timeout() {
                format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs())
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "the request failed".to_owned()
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Checked against an independent implementation:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature("whsec_test", 1_700_000_000, r#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verify_accepts_the_signature_and_refuses_changes() {
        let body = r#"{"kind":"needs_reauth"}"#;
        let sig = signature("whsec_a", 42, body);
        assert!(verify("whsec_a", &sig, body));
        assert!(!verify("whsec_b", &sig, body));
        assert!(!verify("whsec_a", &sig, r#"{"kind":"other"}"#));
        assert!(!verify("whsec_a", &sig.replace("t=42", "t=43"), body));
        assert!(!verify("whsec_a", "garbage", body));
    }
}
