//! The auth server's token endpoint (`POST /oauth/token`): the `refresh_token` grant, and the
//! `authorization_code` grant that completes a device-code login ([`crate::device`]).
//!
//! Refresh error bodies follow what Codex parses (`error.code`, or `error` as a string, or
//! top-level `code`): permanent refusals answer 401 with
//! `{"error":{"message","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}`
//! (or `refresh_token_expired` / `refresh_token_invalidated`); an unknown or scripted
//! `invalid_grant` answers 401 with the OAuth form `{"error":"invalid_grant","error_description"}`.
//!
//! A refused code exchange answers 400 in the OAuth form (RFC 6749 §5.2): `invalid_request`
//! for a missing field, `invalid_grant` for an unknown, used or expired code, a `code_verifier`
//! whose S256 hash is not the challenge, or a `redirect_uri` that is not
//! `{issuer}/deviceauth/callback`. A good exchange starts a new lineage of the approved
//! account (creating it first if it is new), like `POST /__sim/accounts/{id}/login`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::accounts::{
    AccountPatch, NewAccount, Provider, RefreshDenied, RefreshFailure, TokenSet,
};
use crate::body::DecodedBody;
use crate::device::RedeemError;
use crate::errors::{json_status, openai_error};
use crate::jwt::CODEX_CLIENT_ID;
use crate::state::Shared;

/// Message texts close to the real auth server's.
const REUSED: &str = "Your refresh token has already been used to generate a new access token. Please try signing in again.";
const EXPIRED: &str = "Your refresh token has expired. Please try signing in again.";
const INVALIDATED: &str = "Your refresh token has been invalidated. Please try signing in again.";

/// The token endpoint routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/oauth/token", post(token))
}

/// The fields of a token request (JSON or form).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `client_id`.
    pub client_id: Option<String>,
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `refresh_token`.
    pub refresh_token: Option<String>,
    /// `code` (authorization code grant).
    pub code: Option<String>,
    /// `code_verifier` (authorization code grant, PKCE).
    pub code_verifier: Option<String>,
    /// `redirect_uri` (authorization code grant).
    pub redirect_uri: Option<String>,
}

/// Parse a JSON or form body.
pub fn parse_token_request(body: &[u8]) -> Option<TokenRequest> {
    let get = |m: &serde_json::Map<String, Value>, k: &str| {
        m.get(k).and_then(Value::as_str).map(str::to_string)
    };
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        return Some(TokenRequest {
            client_id: get(&m, "client_id"),
            grant_type: get(&m, "grant_type"),
            refresh_token: get(&m, "refresh_token"),
            code: get(&m, "code"),
            code_verifier: get(&m, "code_verifier"),
            redirect_uri: get(&m, "redirect_uri"),
        });
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let find = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    Some(TokenRequest {
        client_id: find("client_id"),
        grant_type: find("grant_type"),
        refresh_token: find("refresh_token"),
        code: find("code"),
        code_verifier: find("code_verifier"),
        redirect_uri: find("redirect_uri"),
    })
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    json_status(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn permanent(code: &str) -> Response {
    let message = match code {
        "refresh_token_reused" => REUSED,
        "refresh_token_expired" => EXPIRED,
        "refresh_token_invalidated" => INVALIDATED,
        _ => "Could not validate your refresh token. Please try signing in again.",
    };
    openai_error(401, code, "invalid_request_error", message)
}

/// The answer for a scripted failure.
pub fn scripted_response(f: &RefreshFailure) -> Response {
    let code = f.error.as_deref();
    let status = f.status.unwrap_or(if f.is_permanent() { 401 } else { 500 });
    if let Some(body) = &f.body {
        return json_status(status, body.clone());
    }
    match code {
        Some("invalid_grant") => oauth_error(status, "invalid_grant", "Invalid refresh token"),
        Some(c) if f.is_permanent() => {
            let mut r = permanent(c);
            *r.status_mut() = axum::http::StatusCode::from_u16(status)
                .unwrap_or(axum::http::StatusCode::UNAUTHORIZED);
            r
        }
        Some(c) => openai_error(status, c, "server_error", "The auth server had an error."),
        None => openai_error(
            status,
            "server_error",
            "server_error",
            "The auth server had an error.",
        ),
    }
}

async fn token(State(st): State<Shared>, req: Request) -> Response {
    let body = match req.extensions().get::<DecodedBody>() {
        Some(DecodedBody(Ok(b))) => b.clone(),
        _ => return oauth_error(400, "invalid_request", "Unreadable body"),
    };
    let Some(tr) = parse_token_request(&body) else {
        return oauth_error(400, "invalid_request", "Body must be JSON or form-encoded");
    };
    if tr.client_id.as_deref() != Some(CODEX_CLIENT_ID) {
        return oauth_error(401, "invalid_client", "Unknown client_id");
    }
    match tr.grant_type.as_deref() {
        Some("refresh_token") => refresh_grant(st, tr).await,
        Some("authorization_code") => authorization_code_grant(&st, &tr),
        Some(_) | None => oauth_error(
            400,
            "unsupported_grant_type",
            "Only grant_type=refresh_token and grant_type=authorization_code are simulated",
        ),
    }
}

/// A successful token answer.
fn token_answer(set: &TokenSet, now: i64) -> Response {
    Json(json!({
        "access_token": set.access_token,
        "id_token": set.id_token,
        "refresh_token": set.refresh_token,
        "expires_in": set.access_token_expires_at - now,
        "token_type": "Bearer",
        "scope": "openid profile email offline_access",
    }))
    .into_response()
}

/// `grant_type=authorization_code`: the last step of a device-code login.
fn authorization_code_grant(st: &Shared, tr: &TokenRequest) -> Response {
    let field = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let (Some(code), Some(verifier), Some(redirect_uri)) = (
        field(&tr.code),
        field(&tr.code_verifier),
        field(&tr.redirect_uri),
    ) else {
        return oauth_error(
            400,
            "invalid_request",
            "code, code_verifier and redirect_uri are required",
        );
    };
    let now = st.clock.now();
    let mut guard = st.lock();
    let g = &mut *guard;
    let grant = match g.device.check_code(&code, &verifier, &redirect_uri, now) {
        Ok(grant) => grant.clone(),
        Err(e) => {
            let why = match e {
                RedeemError::Unknown => "Invalid authorization code",
                RedeemError::Used => "Authorization code has already been used",
                RedeemError::Expired => "Authorization code has expired",
                RedeemError::VerifierMismatch => "Invalid code_verifier",
                RedeemError::RedirectMismatch => "redirect_uri does not match the device callback",
            };
            return oauth_error(400, "invalid_grant", why);
        }
    };
    let issued = if g.registry.get(&grant.account_id).is_some() {
        let patch = AccountPatch {
            plan: grant.plan.clone(),
            email: grant.email.clone(),
            ..AccountPatch::default()
        };
        g.registry
            .patch(&grant.account_id, patch, now)
            .and_then(|()| g.registry.login(&grant.account_id, now))
    } else {
        let opts = NewAccount {
            account_id: Some(grant.account_id.clone()),
            plan: grant.plan.clone(),
            email: grant.email.clone(),
            ..NewAccount::default()
        };
        g.registry.create(opts, now).map(|acc| acc.current.clone())
    };
    match issued {
        Ok(set) => {
            g.device.mark_exchanged(&code, now);
            token_answer(&set, now)
        }
        Err(e) => oauth_error(500, "server_error", &e),
    }
}

/// `grant_type=refresh_token`: rotate.
async fn refresh_grant(st: Shared, tr: TokenRequest) -> Response {
    let Some(rt) = tr.refresh_token.filter(|t| !t.is_empty()) else {
        return oauth_error(400, "invalid_request", "refresh_token is required");
    };
    if st
        .lock()
        .registry
        .provider_of_refresh_token(&rt)
        .is_some_and(|p| p != Provider::Codex)
    {
        return oauth_error(401, "invalid_grant", "Invalid refresh token");
    }
    let begun = {
        let mut g = st.lock();
        let global_delay = g.behavior.refresh_delay_ms;
        g.registry
            .begin_refresh(&rt)
            .map(|(_, d)| d.unwrap_or(global_delay))
    };
    let delay = match begun {
        Ok(d) => d,
        Err(_) => return oauth_error(401, "invalid_grant", "Invalid refresh token"),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let now = st.clock.now();
    let result = st.lock().registry.finish_refresh(&rt, now);
    match result {
        Ok(set) => token_answer(&set, now),
        Err(RefreshDenied::Unknown) => oauth_error(401, "invalid_grant", "Invalid refresh token"),
        Err(RefreshDenied::Reused) => permanent("refresh_token_reused"),
        Err(RefreshDenied::Invalidated) => permanent("refresh_token_invalidated"),
        Err(RefreshDenied::Expired) => permanent("refresh_token_expired"),
        Err(RefreshDenied::Scripted(f)) => scripted_response(&f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_form() {
        let j = parse_token_request(
            br#"{"client_id":"c","grant_type":"refresh_token","refresh_token":"r","scope":"x"}"#,
        )
        .unwrap();
        assert_eq!(j.refresh_token.as_deref(), Some("r"));
        let f = parse_token_request(b"client_id=c&grant_type=refresh_token&refresh_token=r%2B1")
            .unwrap();
        assert_eq!(f.refresh_token.as_deref(), Some("r+1"));
        assert_eq!(f.client_id.as_deref(), Some("c"));
        let a = parse_token_request(
            b"grant_type=authorization_code&code=ac_1&redirect_uri=http%3A%2F%2Fh%2Fdeviceauth%2Fcallback&client_id=c&code_verifier=v",
        )
        .unwrap();
        assert_eq!(a.grant_type.as_deref(), Some("authorization_code"));
        assert_eq!(a.code.as_deref(), Some("ac_1"));
        assert_eq!(a.code_verifier.as_deref(), Some("v"));
        assert_eq!(
            a.redirect_uri.as_deref(),
            Some("http://h/deviceauth/callback")
        );
    }

    #[test]
    fn scripted_status_defaults() {
        let f = RefreshFailure {
            error: Some("refresh_token_expired".into()),
            status: None,
            body: None,
        };
        assert_eq!(scripted_response(&f).status().as_u16(), 401);
        let f = RefreshFailure {
            error: None,
            status: Some(503),
            body: None,
        };
        assert_eq!(scripted_response(&f).status().as_u16(), 503);
        let f = RefreshFailure {
            error: Some("invalid_grant".into()),
            status: Some(400),
            body: None,
        };
        assert_eq!(scripted_response(&f).status().as_u16(), 400);
    }
}
