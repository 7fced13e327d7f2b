//! `codexmesh account login`: the ChatGPT device-code login, as the Codex CLI does it
//! (`docs/device-code.md`): ask the auth server for a user code, let a person approve it at
//! `{issuer}/codex/device`, poll until approved, exchange the authorization code (with the
//! server-made PKCE verifier) for tokens.
//!
//! Never printed or logged: the device auth id, the authorization code, the verifier, tokens.

use std::time::Duration;

use serde_json::Value;

use crate::oauth::{self, CODEX_CLIENT_ID};
use codexmesh_model::util;

/// The Codex CLI gives up after 15 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Seconds between polls when the server does not say.
const DEFAULT_INTERVAL_SECS: u64 = 5;
/// We never poll faster than this, whatever the server says.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Transport errors tolerated while polling.
const MAX_TRANSPORT_ERRORS: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(
        "device code login is not enabled on {0} (404); use `codex login` in a browser and \
         `codexmesh account import`, or check auth_base_url"
    )]
    NotEnabled(String),
    #[error("{what} failed with status {status}{}", code_suffix(.code, .message))]
    Refused {
        what: &'static str,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("the device code expired before it was approved; run the login again")]
    Expired,
    #[error("the login was denied at the approval page")]
    Denied,
    #[error("no approval within {}; run the login again", util::human_span_ms(.0))]
    TimedOut(i64),
    #[error("cannot reach the auth server: {0}")]
    Transport(String),
    #[error("the auth server's answer is unusable: {0}")]
    BadAnswer(String),
}

fn code_suffix(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        (None, Some(m)) => format!(" ({m})"),
        (None, None) => String::new(),
    }
}

/// What the first step returned. `Debug` hides the device auth id.
#[derive(Clone)]
pub struct UserCode {
    device_auth_id: String,
    pub user_code: String,
    pub interval: Duration,
    /// Unix ms, when the server said.
    pub expires_at_ms: Option<i64>,
}

impl std::fmt::Debug for UserCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCode")
            .field("user_code", &self.user_code)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The approved login's code and verifier. `Debug` hides both.
#[derive(Clone)]
pub struct Approval {
    authorization_code: String,
    code_verifier: String,
}

impl std::fmt::Debug for Approval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Approval(<redacted>)")
    }
}

/// The tokens of the new login. `Debug` hides them.
#[derive(Clone)]
pub struct LoginTokens {
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl std::fmt::Debug for LoginTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginTokens(<redacted>)")
    }
}

/// `{issuer}/codex/device`: where the person approves the code.
pub fn verification_url(issuer: &str) -> String {
    format!("{}/codex/device", issuer.trim_end_matches('/'))
}

fn url(issuer: &str, path: &str) -> String {
    format!("{}{path}", issuer.trim_end_matches('/'))
}

/// `error.code` / `error` (string) / top-level `code`, and `error.message` / `error_description`.
fn error_parts(body: &str) -> (Option<String>, Option<String>) {
    let code = oauth::error_code(body);
    let message = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.get("error")
            .and_then(|e| e.get("message"))
            .or_else(|| v.get("error_description"))
            .and_then(Value::as_str)
            .map(|m| m.chars().filter(|c| !c.is_control()).take(200).collect())
    });
    (code, message)
}

async fn send(req: reqwest::RequestBuilder) -> Result<(u16, String), LoginError> {
    let resp = req
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| LoginError::Transport(oauth::describe(&e)))?;
    let status = resp.status().as_u16();
    let body = oauth::read_capped(resp, 256 * 1024)
        .await
        .map_err(|e| LoginError::Transport(oauth::describe(&e)))?;
    Ok((status, body))
}

/// Step 1: `POST {issuer}/api/accounts/deviceauth/usercode`.
pub async fn request_user_code(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<UserCode, LoginError> {
    let (status, body) = send(
        http.post(url(issuer, "/api/accounts/deviceauth/usercode"))
            .json(&serde_json::json!({ "client_id": CODEX_CLIENT_ID })),
    )
    .await?;
    if status == 404 {
        return Err(LoginError::NotEnabled(issuer.to_owned()));
    }
    if !(200..300).contains(&status) {
        let (code, message) = error_parts(&body);
        return Err(LoginError::Refused {
            what: "the device code request",
            status,
            code,
            message,
        });
    }
    let v: Value = serde_json::from_str(&body)
        .map_err(|_| LoginError::BadAnswer("the user code answer is not JSON".to_owned()))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let device_auth_id = text("device_auth_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LoginError::BadAnswer("no device_auth_id".to_owned()))?;
    let user_code = text("user_code")
        .or_else(|| text("usercode"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LoginError::BadAnswer("no user_code".to_owned()))?;
    let interval = v
        .get("interval")
        .and_then(|i| {
            i.as_u64()
                .or_else(|| i.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .unwrap_or(DEFAULT_INTERVAL_SECS);
    Ok(UserCode {
        device_auth_id,
        user_code,
        interval: Duration::from_secs(interval.min(60)),
        expires_at_ms: text("expires_at").and_then(|s| util::parse_rfc3339_ms(&s)),
    })
}

/// What one poll said.
#[derive(Debug)]
pub enum PollAnswer {
    Approved(Approval),
    Pending { slow_down: bool },
}

/// Classifies one poll answer (see `docs/device-code.md`, "Our client should do better").
pub fn poll_answer(status: u16, body: &str) -> Result<PollAnswer, LoginError> {
    if (200..300).contains(&status) {
        let v: Value = serde_json::from_str(body)
            .map_err(|_| LoginError::BadAnswer("the approval answer is not JSON".to_owned()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| LoginError::BadAnswer(format!("the approval carries no {k}")))
        };
        return Ok(PollAnswer::Approved(Approval {
            authorization_code: field("authorization_code")?,
            code_verifier: field("code_verifier")?,
        }));
    }
    let (code, message) = error_parts(body);
    if status == 403 || status == 404 {
        match code.as_deref() {
            None | Some("deviceauth_authorization_pending" | "authorization_pending") => {
                return Ok(PollAnswer::Pending { slow_down: false })
            }
            Some("slow_down") => return Ok(PollAnswer::Pending { slow_down: true }),
            _ => {}
        }
    }
    Err(match code.as_deref() {
        Some(c) if c.contains("expired") => LoginError::Expired,
        Some(c) if c.contains("denied") => LoginError::Denied,
        _ => LoginError::Refused {
            what: "waiting for the approval",
            status,
            code,
            message,
        },
    })
}

/// Step 3: polls `POST {issuer}/api/accounts/deviceauth/token` until approved, refused, or
/// `deadline` (unix ms; also bounded by the code's own expiry).
pub async fn wait_for_approval(
    http: &reqwest::Client,
    issuer: &str,
    code: &UserCode,
    timeout: Duration,
) -> Result<Approval, LoginError> {
    let started = util::now_ms();
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let deadline = code
        .expires_at_ms
        .map_or(started.saturating_add(timeout_ms), |e| {
            e.min(started.saturating_add(timeout_ms))
        });
    let mut interval = code.interval.max(MIN_INTERVAL);
    let mut transport_errors = 0u32;
    // Bounded by the deadline; the count bound is a belt to the braces.
    for _ in 0..100_000u32 {
        let answer = send(
            http.post(url(issuer, "/api/accounts/deviceauth/token"))
                .json(&serde_json::json!({
                    "device_auth_id": code.device_auth_id,
                    "user_code": code.user_code,
                })),
        )
        .await;
        match answer {
            Ok((status, body)) => {
                transport_errors = 0;
                match poll_answer(status, &body)? {
                    PollAnswer::Approved(a) => return Ok(a),
                    PollAnswer::Pending { slow_down } => {
                        if slow_down {
                            interval += Duration::from_secs(5);
                        }
                    }
                }
            }
            Err(LoginError::Transport(e)) if transport_errors < MAX_TRANSPORT_ERRORS => {
                transport_errors += 1;
                tracing::warn!(error = %e, "polling the auth server failed; trying again");
            }
            Err(e) => return Err(e),
        }
        let now = util::now_ms();
        if now >= deadline {
            break;
        }
        let left = Duration::from_millis(u64::try_from(deadline - now).unwrap_or(0));
        tokio::time::sleep(interval.min(left)).await;
    }
    if code.expires_at_ms.is_some_and(|e| util::now_ms() >= e) {
        Err(LoginError::Expired)
    } else {
        Err(LoginError::TimedOut(timeout_ms))
    }
}

/// Step 4: `POST {issuer}/oauth/token`, form-encoded `authorization_code` grant.
pub async fn exchange(
    http: &reqwest::Client,
    issuer: &str,
    approval: &Approval,
) -> Result<LoginTokens, LoginError> {
    let redirect_uri = url(issuer, "/deviceauth/callback");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", approval.authorization_code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", CODEX_CLIENT_ID),
        ("code_verifier", approval.code_verifier.as_str()),
    ];
    let (status, body) = send(http.post(url(issuer, "/oauth/token")).form(&form)).await?;
    if !(200..300).contains(&status) {
        let (code, message) = error_parts(&body);
        return Err(LoginError::Refused {
            what: "the token exchange",
            status,
            code,
            message,
        });
    }
    let v: Value = serde_json::from_str(&body)
        .map_err(|_| LoginError::BadAnswer("the token answer is not JSON".to_owned()))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| LoginError::BadAnswer(format!("the token answer carries no {k}")))
    };
    Ok(LoginTokens {
        id_token: field("id_token")?,
        access_token: field("access_token")?,
        refresh_token: field("refresh_token")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_answers() {
        let approved = poll_answer(
            200,
            r#"{"authorization_code":"c","code_challenge":"x","code_verifier":"v"}"#,
        );
        assert!(matches!(approved, Ok(PollAnswer::Approved(_))));
        assert!(matches!(
            poll_answer(200, r#"{"authorization_code":"c"}"#),
            Err(LoginError::BadAnswer(_))
        ));
        for (status, body) in [
            (
                403,
                r#"{"error":{"code":"deviceauth_authorization_pending","message":"m"}}"#,
            ),
            (403, ""),
            (404, r#"{"detail":"Not Found"}"#),
            (403, r#"{"error":"authorization_pending"}"#),
        ] {
            assert!(
                matches!(
                    poll_answer(status, body),
                    Ok(PollAnswer::Pending { slow_down: false })
                ),
                "{status} {body}"
            );
        }
        assert!(matches!(
            poll_answer(403, r#"{"error":"slow_down"}"#),
            Ok(PollAnswer::Pending { slow_down: true })
        ));
        assert!(matches!(
            poll_answer(403, r#"{"error":{"code":"deviceauth_user_code_expired"}}"#),
            Err(LoginError::Expired)
        ));
        assert!(matches!(
            poll_answer(
                400,
                r#"{"error":{"code":"deviceauth_authorization_denied"}}"#
            ),
            Err(LoginError::Denied)
        ));
        let other = poll_answer(
            404,
            r#"{"error":{"code":"deviceauth_not_found","message":"No such login"}}"#,
        );
        let msg = other.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("deviceauth_not_found") && msg.contains("No such login"),
            "{msg}"
        );
        assert!(matches!(
            poll_answer(500, ""),
            Err(LoginError::Refused { status: 500, .. })
        ));
    }

    #[test]
    fn urls_and_redaction() {
        assert_eq!(
            verification_url("https://auth.openai.com/"),
            "https://auth.openai.com/codex/device"
        );
        let c = UserCode {
            device_auth_id: "deviceauth_secret".into(),
            user_code: "ABCD-EFGH".into(),
            interval: Duration::from_secs(5),
            expires_at_ms: None,
        };
        assert!(!format!("{c:?}").contains("deviceauth_secret"));
        let a = Approval {
            authorization_code: "code".into(),
            code_verifier: "verifier".into(),
        };
        assert_eq!(format!("{a:?}"), "Approval(<redacted>)");
    }
}
