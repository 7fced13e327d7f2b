//! The control API under `/__sim/` that tests use to set the simulator up and inspect it.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::accounts::{
    finite, Account, AccountPatch, CredentialKind, NewAccount, Provider, TokenSet,
};
use crate::clock::{rfc3339, ClockChange};
use crate::device::{ControlError, DeviceLogin, SignInAs};
use crate::errors::json_status;
use crate::state::{BehaviorPatch, Shared};

/// The control routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/__sim/healthz", get(healthz))
        .route("/__sim/accounts", post(create_account).get(list_accounts))
        .route("/__sim/accounts/{id}", get(get_account).post(patch_account))
        .route("/__sim/accounts/{id}/login", post(login))
        .route(
            "/__sim/accounts/{id}/credentials_file",
            get(get_credentials_file),
        )
        .route("/__sim/requests", get(list_requests).delete(clear_requests))
        .route("/__sim/behavior", get(get_behavior).post(set_behavior))
        .route("/__sim/clock", get(get_clock).post(set_clock))
        .route("/__sim/device", get(list_device_logins))
        .route("/__sim/device/approve", post(approve_device))
        .route("/__sim/device/deny", post(deny_device))
}

fn bad_request(msg: impl Into<String>) -> Response {
    json_status(400, json!({"error": msg.into()}))
}

fn not_found(id: &str) -> Response {
    json_status(404, json!({"error": format!("no account {id}")}))
}

#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// The `auth.json` a Codex install would hold for these tokens.
pub fn auth_json(account_id: &str, set: &TokenSet, now: f64) -> Value {
    json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": set.id_token,
            "access_token": set.access_token,
            "refresh_token": set.refresh_token,
            "account_id": account_id,
        },
        "last_refresh": rfc3339(now),
    })
}

/// Claude's OAuth scopes, as the CLI stores them.
pub const CLAUDE_SCOPES: &[&str] = &[
    "user:inference",
    "user:profile",
    "user:sessions:claude_code",
    "user:mcp_servers",
    "user:file_upload",
];
/// The scopes a Google login for Gemini CLI holds.
pub const GOOGLE_SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile openid";

/// The file the provider's CLI writes after a login with these tokens: Codex `auth.json`,
/// Claude `.credentials.json` (`{"claudeAiOauth":{…}}`, or `{"api_key":…}`), Gemini
/// `oauth_creds.json`.
pub fn credentials_file(acc: &Account, set: &TokenSet, now: f64) -> Value {
    let expires_ms = set.access_token_expires_at.saturating_mul(1000);
    match (acc.provider, acc.credential) {
        (Provider::Codex, _) => auth_json(&acc.id, set, now),
        (Provider::Claude, CredentialKind::ApiKey) => json!({ "api_key": set.access_token }),
        (Provider::Claude, CredentialKind::Oauth) => json!({
            "claudeAiOauth": {
                "accessToken": set.access_token,
                "refreshToken": set.refresh_token,
                "expiresAt": expires_ms,
                "scopes": CLAUDE_SCOPES,
                "subscriptionType": claude_subscription(&acc.plan),
                "rateLimitTier": format!("default_claude_{}", claude_subscription(&acc.plan)),
            }
        }),
        (Provider::Gemini, _) => json!({
            "access_token": set.access_token,
            "refresh_token": set.refresh_token,
            "scope": GOOGLE_SCOPES,
            "token_type": "Bearer",
            "id_token": set.id_token,
            "expiry_date": expires_ms,
        }),
    }
}

/// A Claude subscription type from a plan name (`plus`, the Codex default, reads as `max`).
pub fn claude_subscription(plan: &str) -> &str {
    match plan {
        "pro" | "max" | "team" | "enterprise" => plan,
        _ => "max",
    }
}

fn credentials(acc: &Account, set: &TokenSet, now: f64) -> Value {
    let api_key = (acc.provider == Provider::Claude && acc.credential == CredentialKind::ApiKey)
        .then(|| set.access_token.clone());
    let expires = finite(set.access_token_expires_at);
    json!({
        "account_id": acc.id,
        "provider": acc.provider,
        "credential": (acc.provider == Provider::Claude).then_some(acc.credential),
        "project_id": acc.project_id,
        "email": acc.email,
        "plan": acc.plan,
        "access_token": set.access_token,
        "refresh_token": set.refresh_token,
        "id_token": set.id_token,
        "api_key": api_key,
        "access_token_expires_at": expires,
        "expires": expires,
        "auth_json": auth_json(&acc.id, set, now),
        "credentials_file": credentials_file(acc, set, now),
    })
}

async fn create_account(State(st): State<Shared>, body: Bytes) -> Response {
    let opts: NewAccount = match parse(&body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let now = st.clock.now_f64();
    let mut g = st.lock();
    match g.registry.create(opts, now.floor() as i64) {
        Ok(acc) => (
            axum::http::StatusCode::CREATED,
            Json(credentials(acc, &acc.current, now)),
        )
            .into_response(),
        Err(e) if e.contains("already exists") => json_status(409, json!({"error": e})),
        Err(e) => bad_request(e),
    }
}

async fn list_accounts(State(st): State<Shared>) -> Json<Value> {
    let now = st.clock.now();
    let g = st.lock();
    let views: Vec<Value> = g
        .registry
        .all()
        .filter_map(|a| g.registry.view(&a.id, now))
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    Json(json!({
        "accounts": views,
        "unknown_refresh_calls": g.registry.unknown_refresh_calls,
    }))
}

fn view_response(st: &Shared, id: &str) -> Response {
    let now = st.clock.now();
    match st.lock().registry.view(id, now) {
        Some(v) => Json(v).into_response(),
        None => not_found(id),
    }
}

async fn get_account(State(st): State<Shared>, Path(id): Path<String>) -> Response {
    view_response(&st, &id)
}

async fn get_credentials_file(State(st): State<Shared>, Path(id): Path<String>) -> Response {
    let now = st.clock.now_f64();
    let g = st.lock();
    match g.registry.get(&id) {
        Some(acc) => Json(credentials_file(acc, &acc.current, now)).into_response(),
        None => not_found(&id),
    }
}

async fn patch_account(State(st): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let patch: AccountPatch = match parse(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = st.clock.now();
    let result = st.lock().registry.patch(&id, patch, now);
    match result {
        Ok(()) => view_response(&st, &id),
        Err(e) if e.starts_with("no account") => not_found(&id),
        Err(e) => bad_request(e),
    }
}

async fn login(State(st): State<Shared>, Path(id): Path<String>) -> Response {
    let now = st.clock.now_f64();
    let mut g = st.lock();
    if g.registry.get(&id).is_none() {
        return not_found(&id);
    }
    match g.registry.login(&id, now.floor() as i64) {
        Ok(set) => match g.registry.get(&id) {
            Some(acc) => Json(credentials(acc, &set, now)).into_response(),
            None => not_found(&id),
        },
        Err(e) => bad_request(e),
    }
}

/// Filters of `GET /__sim/requests`.
#[derive(Debug, Default, Deserialize)]
pub struct RequestFilter {
    /// Only records with `seq >= since`.
    pub since: Option<u64>,
    /// Only paths containing this.
    pub path_contains: Option<String>,
    /// Only this account.
    pub account_id: Option<String>,
    /// Add the decoded JSON body as `body_json` (`1` or `true`).
    pub include_body: Option<String>,
}

async fn list_requests(State(st): State<Shared>, Query(f): Query<RequestFilter>) -> Json<Value> {
    let include_body = matches!(f.include_body.as_deref(), Some("1" | "true"));
    let g = st.lock();
    let out: Vec<Value> = g
        .requests
        .iter()
        .filter(|r| f.since.is_none_or(|s| r.seq >= s))
        .filter(|r| {
            f.path_contains
                .as_deref()
                .is_none_or(|p| r.path.contains(p))
        })
        .filter(|r| {
            f.account_id
                .as_deref()
                .is_none_or(|a| r.account_id.as_deref() == Some(a))
        })
        .filter_map(|r| {
            let mut v = serde_json::to_value(r).ok()?;
            if include_body {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(
                        "body_json".into(),
                        r.body_json.clone().unwrap_or(Value::Null),
                    );
                    let frames = obj.get_mut("ws_requests").and_then(Value::as_array_mut);
                    if let (Some(out), Some(recorded)) = (frames, r.ws_requests.as_ref()) {
                        for (o, rec) in out.iter_mut().zip(recorded) {
                            if let Some(o) = o.as_object_mut() {
                                o.insert(
                                    "body_json".into(),
                                    rec.body_json.clone().unwrap_or(Value::Null),
                                );
                            }
                        }
                    }
                }
            }
            Some(v)
        })
        .collect();
    Json(Value::Array(out))
}

async fn clear_requests(State(st): State<Shared>) -> Json<Value> {
    let mut g = st.lock();
    let n = g.requests.len();
    g.requests.clear();
    Json(json!({"cleared": n}))
}

async fn get_behavior(State(st): State<Shared>) -> Response {
    let b = st.lock().behavior.clone();
    Json(b).into_response()
}

async fn set_behavior(State(st): State<Shared>, body: Bytes) -> Response {
    let patch: BehaviorPatch = match parse(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut g = st.lock();
    match g.behavior.apply(patch) {
        Ok(()) => Json(g.behavior.clone()).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn get_clock(State(st): State<Shared>) -> Response {
    Json(st.clock.view()).into_response()
}

async fn set_clock(State(st): State<Shared>, body: Bytes) -> Response {
    let change: ClockChange = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match st.clock.apply(change) {
        Ok(v) => Json(v).into_response(),
        Err(e) => bad_request(e),
    }
}

/// `POST /__sim/device/approve`: the user signs in and approves a pending device login.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveDevice {
    /// The login's user code (any case, dashes optional); default: the only pending login.
    pub user_code: Option<String>,
    /// Existing account to log into, or id of the new account (default: a random UUID).
    pub account_id: Option<String>,
    /// Plan (of the new account, or set on the existing one at the exchange).
    pub plan: Option<String>,
    /// Email (likewise).
    pub email: Option<String>,
}

/// `POST /__sim/device/deny`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyDevice {
    /// The login's user code; default: the only pending login.
    pub user_code: Option<String>,
}

fn device_error(e: ControlError) -> Response {
    match e {
        ControlError::BadRequest(m) => bad_request(m),
        ControlError::NotFound(m) => json_status(404, json!({"error": m})),
        ControlError::Conflict(m) => json_status(409, json!({"error": m})),
    }
}

/// A login's view, plus whether its account is still to be created.
fn device_view(login: &DeviceLogin, registry: &crate::accounts::Registry, now: i64) -> Value {
    let view = login.view(now);
    let new_account = view
        .account_id
        .as_deref()
        .map(|id| registry.get(id).is_none());
    let mut v = serde_json::to_value(view).unwrap_or(Value::Null);
    if let (Some(obj), Some(new)) = (v.as_object_mut(), new_account) {
        obj.insert("new_account".into(), Value::Bool(new));
    }
    v
}

async fn list_device_logins(State(st): State<Shared>) -> Json<Value> {
    let now = st.clock.now();
    let g = st.lock();
    let logins: Vec<Value> = g
        .device
        .all()
        .map(|l| device_view(l, &g.registry, now))
        .collect();
    Json(json!({ "logins": logins }))
}

async fn approve_device(State(st): State<Shared>, body: Bytes) -> Response {
    let req: ApproveDevice = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let who = SignInAs {
        account_id: req.account_id,
        plan: req.plan,
        email: req.email,
    };
    let now = st.clock.now();
    let mut guard = st.lock();
    let g = &mut *guard;
    match g.device.approve(req.user_code.as_deref(), who, now) {
        Ok(login) => Json(device_view(login, &g.registry, now)).into_response(),
        Err(e) => device_error(e),
    }
}

async fn deny_device(State(st): State<Shared>, body: Bytes) -> Response {
    let req: DenyDevice = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = st.clock.now();
    let mut guard = st.lock();
    let g = &mut *guard;
    match g.device.deny(req.user_code.as_deref(), now) {
        Ok(login) => Json(device_view(login, &g.registry, now)).into_response(),
        Err(e) => device_error(e),
    }
}
