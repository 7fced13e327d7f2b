//! The auth servers' token endpoints: the refresh grant of each provider ([`Grant`]) and how
//! their refusals are classified.
//!
//! The grant per provider:
//! - **Codex**: `POST oauth_token_url`, JSON `{client_id, grant_type, refresh_token}`;
//! - **Claude** (subscription OAuth): `POST claude_token_url`, JSON `{grant_type, refresh_token,
//!   client_id, scope}` with Claude Code's public client id and scopes;
//! - **Google** (Gemini): `POST google_token_url`, form `client_id, client_secret, grant_type,
//!   refresh_token` with Gemini CLI's installed-app client (its secret is public by design, but
//!   is never logged: [`Grant`]'s `Debug` hides it).
//!
//! Every answer is read the same way: a new refresh token replaces the old one when present
//! (rotation), else the old one stays valid.
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
//! - **transient** (try again later, the account keeps serving): 5xx, 408, transport errors
//!   and timeouts; a 429 is [`TokenError::Throttled`], transient with the server's
//!   `Retry-After` (seconds or an HTTP date) as the earliest next attempt.
//!
//! A 2xx whose body we cannot use is treated as permanent: the server accepted (and so
//! consumed) the refresh token, and sending a consumed refresh token again would revoke the
//! whole login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// The Codex CLI's OAuth client id.
pub const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Claude Code's public OAuth client id.
pub const CLAUDE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The scopes Claude Code asks for when it refreshes.
pub const CLAUDE_SCOPES: &str =
    "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload";
/// The longest `Retry-After` we honour (a longer one is capped: the account keeps serving).
pub const MAX_RETRY_AFTER_MS: i64 = 3_600_000;

/// Which token endpoint a refresh goes to and how the grant is written.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    Codex,
    Claude,
    Google {
        client_id: String,
        client_secret: String,
    },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::Codex => f.write_str("Codex"),
            Grant::Claude => f.write_str("Claude"),
            Grant::Google { client_id, .. } => f
                .debug_struct("Google")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
        }
    }
}

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
    /// A 429: try again, not before `retry_after_ms` from now (0: the server named no time).
    #[error("the token endpoint asks us to slow down (HTTP 429{})", retry_after_words(*.retry_after_ms))]
    Throttled { retry_after_ms: i64 },
    #[error("the token endpoint refused the request itself ({0}); check oauth_token_url")]
    Misconfigured(String),
}

fn retry_after_words(ms: i64) -> String {
    if ms > 0 {
        format!(", retry after {} s", (ms + 999) / 1000)
    } else {
        String::new()
    }
}

impl TokenError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, TokenError::Permanent { .. })
    }

    /// The earliest next attempt the server asked for, in ms from now.
    pub fn retry_after_ms(&self) -> Option<i64> {
        match self {
            TokenError::Throttled { retry_after_ms } if *retry_after_ms > 0 => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }
}

/// A `Retry-After` value (delay seconds, or an HTTP date) as ms from `now_ms`, capped at
/// [`MAX_RETRY_AFTER_MS`]; None when absent, unreadable or already past.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    let ms = match value.parse::<u64>() {
        Ok(secs) => i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let at_ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())?;
            at_ms.saturating_sub(now_ms)
        }
    };
    (ms > 0).then(|| ms.min(MAX_RETRY_AFTER_MS))
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

/// The builder of every outbound client: rustls, webpki (public) roots, certificates always
/// verified.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("codexmesh/", env!("CARGO_PKG_VERSION")))
}

/// An HTTP client for the token endpoint and the upstream (rustls, webpki roots only).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    client_builder().build()
}

/// The HTTP client of these settings: the public roots plus `upstream_ca_file`'s certificates
/// when one is named (never less verification than [`http_client`]).
pub fn http_client_for(settings: &crate::config::Settings) -> Result<reqwest::Client, String> {
    let mut builder = client_builder();
    if let Some(path) = &settings.upstream_ca_file {
        for cert in crate::tls::upstream_roots(path).map_err(|e| e.to_string())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// The clients of accounts with an egress proxy: one per proxy URL, made on first use and kept,
/// each trusting what [`http_client_for`] trusts. An account with a proxy is never served by
/// the direct client: a proxy that cannot be used is an error for that call.
#[derive(Clone, Default)]
pub struct Egress {
    roots: Arc<Vec<reqwest::Certificate>>,
    proxied: Arc<Mutex<HashMap<String, reqwest::Client>>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proxies = self.proxied.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Egress")
            .field("extra_roots", &self.roots.len())
            .field("proxies", &proxies)
            .finish()
    }
}

impl Egress {
    /// The egress clients of these settings (`upstream_ca_file` trusted besides the public
    /// roots).
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, String> {
        let roots = match &settings.upstream_ca_file {
            Some(path) => crate::tls::upstream_roots(path).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        Ok(Self {
            roots: Arc::new(roots),
            proxied: Arc::default(),
        })
    }

    /// `direct` for an account without a proxy; else the client tunnelling through `proxy`.
    pub fn client(
        &self,
        direct: &reqwest::Client,
        proxy: Option<&str>,
    ) -> Result<reqwest::Client, String> {
        let Some(proxy) = proxy else {
            return Ok(direct.clone());
        };
        let mut cache = self
            .proxied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.get(proxy) {
            return Ok(c.clone());
        }
        let unusable = |e: reqwest::Error| format!("egress proxy {proxy}: {e}");
        let mut builder = client_builder().proxy(reqwest::Proxy::all(proxy).map_err(unusable)?);
        for cert in self.roots.iter() {
            builder = builder.add_root_certificate(cert.clone());
        }
        let client = builder.build().map_err(unusable)?;
        cache.insert(proxy.to_owned(), client.clone());
        Ok(client)
    }
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

/// The request of one refresh grant of `grant`'s provider (not sent).
pub fn grant_request(
    http: &reqwest::Client,
    grant: &Grant,
    url: &str,
    refresh_token: &str,
) -> reqwest::RequestBuilder {
    let req = http.post(url).header("accept", "application/json");
    match grant {
        Grant::Codex => req.json(&serde_json::json!({
            "client_id": CODEX_CLIENT_ID,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        })),
        Grant::Claude => req.json(&serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CLAUDE_CLIENT_ID,
            "scope": CLAUDE_SCOPES,
        })),
        Grant::Google {
            client_id,
            client_secret,
        } => {
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("client_id", client_id)
                .append_pair("client_secret", client_secret)
                .append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh_token)
                .finish();
            req.header("content-type", "application/x-www-form-urlencoded")
                .body(form)
        }
    }
}

/// One refresh grant of `grant`'s provider at `url`.
pub async fn refresh_grant_for(
    http: &reqwest::Client,
    grant: &Grant,
    url: &str,
    refresh_token: &str,
    timeout: Duration,
) -> Result<TokenResponse, TokenError> {
    let resp = grant_request(http, grant, url, refresh_token)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| TokenError::Transient(describe(&e)))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, codexmesh_model::util::now_ms()));
    // Error bodies are small; cap what we read anyway.
    let text = read_capped(resp, 64 * 1024)
        .await
        .map_err(|e| TokenError::Transient(describe(&e)))?;
    if (200..300).contains(&status) {
        parse_token_response(&text)
    } else {
        match classify(status, &text) {
            TokenError::Transient(_) if status == 429 => Err(TokenError::Throttled {
                retry_after_ms: retry_after.unwrap_or(0),
            }),
            e => Err(e),
        }
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

    fn built(grant: &Grant) -> (String, String, String) {
        let http = reqwest::Client::new();
        let req = grant_request(&http, grant, "http://127.0.0.1:9/token", "rt-1/+&x")
            .build()
            .map_err(|e| e.to_string());
        let Ok(req) = req else {
            return (String::new(), String::new(), String::new());
        };
        let ct = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = req
            .body()
            .and_then(|b| b.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        (req.method().to_string(), ct, body)
    }

    #[test]
    fn grants_per_provider() {
        let (method, ct, body) = built(&Grant::Claude);
        assert_eq!((method.as_str(), ct.as_str()), ("POST", "application/json"));
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({
                "grant_type": "refresh_token", "refresh_token": "rt-1/+&x",
                "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
                "scope": "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"
            })
        );
        let google = Grant::Google {
            client_id: "cid.apps".into(),
            client_secret: "GOCSPX-s".into(),
        };
        let (_, ct, body) = built(&google);
        assert_eq!(ct, "application/x-www-form-urlencoded");
        let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("client_id", "cid.apps"),
                ("client_secret", "GOCSPX-s"),
                ("grant_type", "refresh_token"),
                ("refresh_token", "rt-1/+&x")
            ]
        );
        assert!(
            !format!("{google:?}").contains("GOCSPX"),
            "the secret is not in Debug"
        );
        let (_, _, body) = built(&Grant::Codex);
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["client_id"], CODEX_CLIENT_ID);
    }

    #[test]
    fn retry_after_values() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_retry_after("30", now), Some(30_000));
        assert_eq!(parse_retry_after(" 0 ", now), None);
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER_MS));
        // 2023-11-14T22:13:20Z is `now`; a date 2 minutes later.
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now),
            Some(120_000)
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
        let t = TokenError::Throttled {
            retry_after_ms: 30_000,
        };
        assert_eq!(t.retry_after_ms(), Some(30_000));
        assert!(t.to_string().contains("retry after 30 s"), "{t}");
        assert!(!t.is_permanent());
        assert_eq!(TokenError::Transient("x".into()).retry_after_ms(), None);
    }
}
