//! The auth server's token endpoint: the refresh grant and how its refusals are classified.
//!
//! Classification follows the Codex CLI (codex-rs `request_chatgpt_token_refresh` /
//! `classify_refresh_token_failure`) plus the OAuth form:
//! - **permanent** (the login is dead; the account needs a new one): error code
//!   `refresh_token_expired`, `refresh_token_reused`, `refresh_token_invalidated` or
//!   `invalid_grant` with any status, or any other 401. The code is read from
//!   `{"error":{"code":..}}`, `{"error":".."}` (OAuth) or a top-level `{"code":..}`.
//! - **misconfigured** (our request is wrong, not the account: check `oauth_token_url`):
//!   `invalid_client` / `unauthorized_client` / `unsupported_grant_type` / `invalid_request`,
//!   or another 4xx except 401/408/429.
//! - **transient** (try again later, the account keeps serving): 5xx, 408, 429, transport
//!   errors and timeouts.
//!
//! A 2xx whose body we cannot use is treated as permanent: the server accepted (and so
//! consumed) the refresh token, and sending a consumed refresh token again would revoke the
//! whole login.

use std::time::Duration;

use serde_json::Value;

/// The Codex CLI's OAuth client id.
pub const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// Error codes that mean the refresh token (and so the login) is dead.
pub const PERMANENT_CODES: &[&str] = &[
    "refresh_token_expired",
    "refresh_token_reused",
    "refresh_token_invalidated",
    "invalid_grant",
];

const MISCONFIG_CODES: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_request",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The login is dead: `code` is the reason shown to operators (`refresh_token_reused`,
    /// `http_401`, ...).
    #[error("the token endpoint refused the refresh token ({code})")]
    Permanent { code: String },
    #[error("the token endpoint is unavailable ({0})")]
    Transient(String),
    #[error("the token endpoint refused the request itself ({0}); check oauth_token_url")]
    Misconfigured(String),
}

impl TokenError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, TokenError::Permanent { .. })
    }
}

/// A token endpoint answer. `Debug` hides the tokens.
#[derive(Clone, Default)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub expires_in: Option<i64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("rotated", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The error code of an error body, in any of the shapes the auth server uses.
pub fn error_code(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let obj = v.as_object()?;
    let code = match obj.get("error") {
        Some(Value::Object(e)) => e
            .get("code")
            .and_then(Value::as_str)
            .or_else(|| e.get("type").and_then(Value::as_str)),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
    .or_else(|| obj.get("code").and_then(Value::as_str))?;
    let code = code.trim().to_ascii_lowercase();
    // Only a code-shaped string is worth keeping (it ends up in logs and `state_reason`).
    (!code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    .then_some(code)
}

/// Classifies a non-2xx answer of the token endpoint.
pub fn classify(status: u16, body: &str) -> TokenError {
    let code = error_code(body);
    if let Some(c) = code.as_deref() {
        if PERMANENT_CODES.contains(&c) {
            return TokenError::Permanent { code: c.to_owned() };
        }
        if MISCONFIG_CODES.contains(&c) {
            return TokenError::Misconfigured(format!("HTTP {status} {c}"));
        }
    }
    let described = match &code {
        Some(c) => format!("HTTP {status} {c}"),
        None => format!("HTTP {status}"),
    };
    match status {
        401 => TokenError::Permanent {
            code: code.unwrap_or_else(|| "http_401".to_owned()),
        },
        408 | 429 => TokenError::Transient(described),
        400..=499 => TokenError::Misconfigured(described),
        _ => TokenError::Transient(described),
    }
}

/// A transport error in words, without the URL's query (never a secret here, but tidy).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken answer"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    // The innermost cause is usually the telling one ("connection refused").
    for _ in 0..8 {
        match source {
            Some(s) => {
                detail = s.to_string();
                source = s.source();
            }
            None => break,
        }
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", detail.chars().take(160).collect::<String>())
    }
}

/// An HTTP client for the token endpoint and the upstream (rustls, webpki roots).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("codexmesh/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Parses a successful token answer.
pub fn parse_token_response(body: &str) -> Result<TokenResponse, TokenError> {
    let unusable = || TokenError::Permanent {
        code: "unusable_token_response".to_owned(),
    };
    let v: Value = serde_json::from_str(body).map_err(|_| unusable())?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    Ok(TokenResponse {
        access_token: s("access_token").ok_or_else(unusable)?,
        refresh_token: s("refresh_token"),
        id_token: s("id_token"),
        expires_in: v.get("expires_in").and_then(|e| {
            e.as_i64()
                .or_else(|| e.as_f64().map(|f| f as i64))
                .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
        }),
    })
}

/// One refresh grant: `POST url` with the JSON body the Codex CLI sends.
pub async fn refresh_grant(
    http: &reqwest::Client,
    url: &str,
    refresh_token: &str,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let body = serde_json::json!({
        "client_id": CODEX_CLIENT_ID,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    });
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .json(&body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| TokenError::Transient(describe(&e)))?;
    let status = resp.status().as_u16();
    // Error bodies are small; cap what we read anyway.
    let text = read_capped(resp, 64 * 1024)
        .await
        .map_err(|e| TokenError::Transient(describe(&e)))?;
    if (200..300).contains(&status) {
        parse_token_response(&text)
    } else {
        Err(classify(status, &text))
    }
}

/// Reads at most `cap` bytes of a body as (lossy) UTF-8.
pub async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<String, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_shapes() {
        assert_eq!(
            error_code(r#"{"error":{"code":"refresh_token_reused","message":"x"}}"#).as_deref(),
            Some("refresh_token_reused")
        );
        assert_eq!(
            error_code(r#"{"error":"invalid_grant","error_description":"x"}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(
            error_code(r#"{"code":"Refresh_Token_Expired"}"#).as_deref(),
            Some("refresh_token_expired")
        );
        assert_eq!(error_code("not json"), None);
        assert_eq!(error_code(r#"{"error":{"code":"has spaces"}}"#), None);
        assert_eq!(error_code(r#"{"detail":"x"}"#), None);
    }

    #[test]
    fn classification() {
        let perm = |status, body: &str| match classify(status, body) {
            TokenError::Permanent { code } => code,
            other => format!("not permanent: {other:?}"),
        };
        // The simulator's (and the real server's) shapes.
        assert_eq!(
            perm(
                401,
                r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}"#
            ),
            "refresh_token_reused"
        );
        assert_eq!(
            perm(401, r#"{"error":"invalid_grant","error_description":"d"}"#),
            "invalid_grant"
        );
        // invalid_grant is permanent with a 400 too (RFC 6749).
        assert_eq!(perm(400, r#"{"error":"invalid_grant"}"#), "invalid_grant");
        assert_eq!(
            perm(403, r#"{"error":{"code":"refresh_token_expired"}}"#),
            "refresh_token_expired"
        );
        assert_eq!(perm(401, "gateway says no"), "http_401");
        assert_eq!(
            perm(401, r#"{"error":{"code":"something_new"}}"#),
            "something_new"
        );
        // Transient.
        for (status, body) in [
            (500, r#"{"error":{"code":"server_error"}}"#),
            (503, ""),
            (502, "<html>"),
            (429, ""),
            (408, ""),
        ] {
            assert!(
                matches!(classify(status, body), TokenError::Transient(_)),
                "{status} {body}"
            );
        }
        // Our request is wrong: not the account's fault.
        for (status, body) in [
            (
                401,
                r#"{"error":"invalid_client","error_description":"Unknown client_id"}"#,
            ),
            (400, r#"{"error":"unsupported_grant_type"}"#),
            (404, r#"{"detail":"Not Found"}"#),
        ] {
            assert!(
                matches!(classify(status, body), TokenError::Misconfigured(_)),
                "{status} {body}"
            );
        }
    }

    #[test]
    fn token_responses() {
        let ok = parse_token_response(
            r#"{"access_token":"a","id_token":"i","refresh_token":"r","expires_in":3600}"#,
        );
        let ok = ok.unwrap_or_default();
        assert_eq!(ok.access_token, "a");
        assert_eq!(ok.refresh_token.as_deref(), Some("r"));
        assert_eq!(ok.expires_in, Some(3600));
        assert!(!format!("{ok:?}").contains('"'));
        let no_rotation = parse_token_response(r#"{"access_token":"a"}"#).unwrap_or_default();
        assert_eq!(no_rotation.refresh_token, None);
        for bad in ["", "{}", r#"{"access_token":""}"#, "[1]"] {
            assert_eq!(
                parse_token_response(bad).err(),
                Some(TokenError::Permanent {
                    code: "unusable_token_response".into()
                }),
                "{bad}"
            );
        }
    }
}
