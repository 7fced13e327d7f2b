//! Anthropic's API as Claude Code meets it (`shared/docs/claude-gemini-protocol.md` 1.3-1.5):
//! `POST /v1/messages` (SSE or JSON), `POST /v1/messages/count_tokens`, `GET /v1/models`,
//! `GET /api/oauth/usage`, `GET /api/oauth/profile` and the OAuth token endpoint
//! `POST /v1/oauth/token`.
//!
//! Rules it keeps:
//! - Only tokens of `claude` accounts are accepted. An OAuth token (`sk-ant-oat01-…`) only as
//!   `Authorization: Bearer` together with `anthropic-beta` naming `oauth-2025-04-20`; a bearer
//!   without that beta is refused with "OAuth authentication is currently not supported." An
//!   API key only as `x-api-key` (an `x-api-key` header, when present, is what authenticates).
//!   Unknown, expired or revoked credentials: 401 `authentication_error`.
//! - `anthropic-version` is required on the API endpoints (400 `invalid_request_error`).
//! - Errors are `{"type":"error","error":{"type","message"},"request_id"}` and the
//!   `request-id` header names the same id (the recording layer adds one to every answer).
//! - Quota: the account's primary window is the 5-hour one and the secondary the 7-day one, on
//!   the simulated clock. Every answer for an account carries the unified rate-limit headers
//!   (OAuth) or the `anthropic-ratelimit-requests-*`/`-tokens-*` headers (API key); a spent
//!   window answers 429 `rate_limit_error` with `retry-after`, and the headers say `rejected`.
//! - Injected failures (`fail_next`) answer in Anthropic's error shape; `sse_failed` sends an
//!   `error` event after `message_start`, `sse_truncated` stops after the text deltas.
//! - The token endpoint takes JSON only, needs Claude Code's `client_id`, rotates the refresh
//!   token at every refresh, and answers the replay of a used one with 400 `invalid_grant`
//!   and the revocation of the whole lineage.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::accounts::{random_alnum, Account, AuthError, CredentialKind, Provider, RefreshDenied};
use crate::body::DecodedBody;
use crate::clock::rfc3339;
use crate::quota::Window;
use crate::recording::bearer;
use crate::sse::split_text;
use crate::state::{FailMode, InjectedFailure, Shared};
use crate::upstream::{put, sse_body};

/// Claude Code's public OAuth client id.
pub const CLAUDE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The `anthropic-beta` entry an OAuth bearer needs.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// The token endpoint's path (`https://platform.claude.com/v1/oauth/token`).
pub const TOKEN_PATH: &str = "/v1/oauth/token";
/// Utilization from which a window's status is `allowed_warning`.
pub const WARNING_UTILIZATION: f64 = 0.8;

/// The models `GET /v1/models` lists (newest first).
pub const MODELS: &[(&str, &str)] = &[
    ("claude-opus-5-5", "Claude Opus 5.5"),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
];

/// The Anthropic routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/api/oauth/usage", get(usage))
        .route("/api/oauth/profile", get(profile))
        .route(TOKEN_PATH, post(token))
}

/// Whether Anthropic serves this path here.
pub fn is_claude_path(path: &str) -> bool {
    path == "/v1/messages"
        || path.starts_with("/v1/messages/")
        || path == "/v1/models"
        || path.starts_with("/v1/models/")
        || path.starts_with("/api/oauth/")
        || path == TOKEN_PATH
}

/// A request id like Anthropic's (`req_011C…`).
pub fn new_request_id() -> String {
    format!("req_011C{}", random_alnum(22))
}

/// Anthropic's error `type` for a status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type","message"},"request_id"}`.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": new_request_id(),
    })
}

/// The default body of an injected failure with this status.
pub fn error_body_for_status(status: u16) -> Value {
    let kind = error_type_for_status(status);
    let message = match kind {
        "rate_limit_error" => {
            "This request would exceed your account's rate limit. Please try again later."
        }
        "overloaded_error" => "Overloaded",
        "authentication_error" => "Invalid bearer token",
        "api_error" => "Internal server error",
        _ => "Injected failure.",
    };
    error_body(kind, message)
}

/// An answer with this status and body; `request-id` is the body's `request_id`.
pub fn error_answer(status: u16, body: Value) -> Response {
    let id = body["request_id"].as_str().map(str::to_string);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(body)).into_response();
    if let Some(v) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

/// An Anthropic error answer.
pub fn error(status: u16, kind: &str, message: &str) -> Response {
    error_answer(status, error_body(kind, message))
}

fn auth_error(message: &str) -> Response {
    error(401, "authentication_error", message)
}

/// Whether `anthropic-beta` (comma-separated, possibly repeated) names `beta`.
pub fn has_beta(headers: &HeaderMap, beta: &str) -> bool {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| b.trim() == beta)
}

/// The credential of a request: `x-api-key` when present, else the bearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `x-api-key: …`.
    ApiKey(&'a str),
    /// `Authorization: Bearer …`.
    Bearer(&'a str),
}

/// What a request presents as its credential.
pub fn presented(headers: &HeaderMap) -> Option<Presented<'_>> {
    if let Some(k) = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        return Some(Presented::ApiKey(k));
    }
    bearer(headers).map(Presented::Bearer)
}

/// Check a request's credential as Anthropic does; the account id or a 401. With
/// `oauth_only`, an API key is refused too (`/api/oauth/*`).
#[allow(clippy::result_large_err)]
pub fn authenticate(
    st: &Shared,
    headers: &HeaderMap,
    oauth_only: bool,
) -> Result<String, Response> {
    let now = st.clock.now();
    let g = st.lock();
    let claude = |token: &str| -> Result<&Account, AuthError> {
        match g.registry.authenticate(token, now) {
            Ok(acc) if acc.provider != Provider::Claude => Err(AuthError::Unknown),
            Err(AuthError::Expired { account_id } | AuthError::Revoked { account_id })
                if g.registry.get(&account_id).map(|a| a.provider) != Some(Provider::Claude) =>
            {
                Err(AuthError::Unknown)
            }
            other => other,
        }
    };
    match presented(headers) {
        None => Err(auth_error("x-api-key header is required")),
        Some(Presented::ApiKey(_)) if oauth_only => Err(auth_error(
            "OAuth authentication is required for this endpoint.",
        )),
        Some(Presented::ApiKey(key)) => match claude(key) {
            Ok(acc) if acc.credential == CredentialKind::ApiKey => Ok(acc.id.clone()),
            Ok(_) | Err(_) => Err(auth_error("invalid x-api-key")),
        },
        Some(Presented::Bearer(_)) if !has_beta(headers, OAUTH_BETA) => Err(auth_error(
            "OAuth authentication is currently not supported.",
        )),
        Some(Presented::Bearer(token)) => match claude(token) {
            Ok(acc) if acc.credential == CredentialKind::Oauth => Ok(acc.id.clone()),
            Ok(_) | Err(AuthError::Unknown) => Err(auth_error("Invalid bearer token")),
            Err(AuthError::Expired { .. }) => Err(auth_error(
                "OAuth token has expired. Please obtain a new token or refresh your existing token.",
            )),
            Err(AuthError::Revoked { .. }) => {
                Err(auth_error("OAuth token has been revoked. Please obtain a new token."))
            }
        },
    }
}

#[allow(clippy::result_large_err)]
fn require_version(headers: &HeaderMap) -> Result<(), Response> {
    if headers.get("anthropic-version").is_some() {
        Ok(())
    } else {
        Err(error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ))
    }
}

/// A window's utilization as a 0..1 fraction (1 when the limit is 0).
pub fn utilization(w: &Window) -> f64 {
    w.used_percent() / 100.0
}

/// `allowed`, `allowed_warning` or `rejected`.
pub fn window_status(w: &Window) -> &'static str {
    if w.exhausted() {
        "rejected"
    } else if utilization(w) >= WARNING_UTILIZATION {
        "allowed_warning"
    } else {
        "allowed"
    }
}

fn fraction(f: f64) -> String {
    let s = format!("{f:.4}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

/// The window that speaks for the account (`five_hour` or `seven_day`): a rejected one (the
/// later reset if both are), else the fuller one.
pub fn representative(acc: &Account) -> (&'static str, &Window) {
    let (p, s) = (&acc.quota.primary, &acc.quota.secondary);
    let secondary = match (p.exhausted(), s.exhausted()) {
        (true, true) => s.reset_at >= p.reset_at,
        (true, false) => false,
        (false, true) => true,
        (false, false) => utilization(s) > utilization(p),
    };
    if secondary {
        ("seven_day", s)
    } else {
        ("five_hour", p)
    }
}

/// Add the rate-limit headers of a Claude account (quota windows rolled by the caller).
pub fn insert_rate_limit_headers(headers: &mut HeaderMap, acc: &Account) {
    let (p, s) = (&acc.quota.primary, &acc.quota.secondary);
    if acc.credential == CredentialKind::ApiKey {
        let remaining = p.limit.saturating_sub(p.used);
        let reset = rfc3339(p.reset_at as f64).replace(".000000Z", "Z");
        put(
            headers,
            "anthropic-ratelimit-requests-limit",
            p.limit.to_string(),
        );
        put(
            headers,
            "anthropic-ratelimit-requests-remaining",
            remaining.to_string(),
        );
        put(headers, "anthropic-ratelimit-requests-reset", reset.clone());
        put(
            headers,
            "anthropic-ratelimit-tokens-limit",
            p.limit.saturating_mul(1000).to_string(),
        );
        put(
            headers,
            "anthropic-ratelimit-tokens-remaining",
            remaining.saturating_mul(1000).to_string(),
        );
        put(headers, "anthropic-ratelimit-tokens-reset", reset);
        return;
    }
    let windows: [(&Window, [&'static str; 3]); 2] = [
        (
            p,
            [
                "anthropic-ratelimit-unified-5h-utilization",
                "anthropic-ratelimit-unified-5h-reset",
                "anthropic-ratelimit-unified-5h-status",
            ],
        ),
        (
            s,
            [
                "anthropic-ratelimit-unified-7d-utilization",
                "anthropic-ratelimit-unified-7d-reset",
                "anthropic-ratelimit-unified-7d-status",
            ],
        ),
    ];
    for (w, [util, reset, status]) in windows {
        put(headers, util, fraction(utilization(w)));
        put(headers, reset, w.reset_at.to_string());
        put(headers, status, window_status(w).to_string());
    }
    let overall = [window_status(p), window_status(s)]
        .into_iter()
        .max_by_key(|st| match *st {
            "rejected" => 2,
            "allowed_warning" => 1,
            _ => 0,
        })
        .unwrap_or("allowed");
    let (claim, w) = representative(acc);
    put(
        headers,
        "anthropic-ratelimit-unified-status",
        overall.to_string(),
    );
    put(
        headers,
        "anthropic-ratelimit-unified-reset",
        w.reset_at.to_string(),
    );
    put(
        headers,
        "anthropic-ratelimit-unified-representative-claim",
        claim.to_string(),
    );
}

/// What the handlers need of a request.
struct Incoming {
    path: String,
    headers: HeaderMap,
    body: Option<DecodedBody>,
}

impl Incoming {
    fn of(req: &Request) -> Self {
        Self {
            path: req.uri().path().to_string(),
            headers: req.headers().clone(),
            body: req.extensions().get::<DecodedBody>().cloned(),
        }
    }

    /// The JSON object body, or a 400 in Anthropic's shape.
    #[allow(clippy::result_large_err)]
    fn json_object(&self) -> Result<Map<String, Value>, Response> {
        let bytes = match &self.body {
            Some(DecodedBody(Ok(b))) => b.clone(),
            _ => {
                return Err(error(
                    400,
                    "invalid_request_error",
                    "Could not decode the request body",
                ))
            }
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(error(
                400,
                "invalid_request_error",
                "Request body must be a JSON object",
            )),
            Err(e) => Err(error(
                400,
                "invalid_request_error",
                &format!("There was an issue with your request body: {e}"),
            )),
        }
    }
}

/// The failure-injection answer for Claude paths (HTTP mode).
fn failure_answer(f: &InjectedFailure, path: &str) -> Response {
    let mut resp = error_answer(f.status, f.body_for_path(path));
    for (k, v) in &f.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// Auth, version, response delay and an injected HTTP failure: the account id, the failure
/// (an SSE-mode one, still to be used) or the answer.
async fn admit(
    st: &Shared,
    req: &Incoming,
    oauth_only: bool,
    version: bool,
) -> Result<(String, Option<InjectedFailure>), Response> {
    let account_id = authenticate(st, &req.headers, oauth_only)?;
    if version {
        require_version(&req.headers)?;
    }
    let delay = st.lock().behavior.response_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failure = st
        .lock()
        .behavior
        .take_failure(&req.path, Some(&account_id));
    match failure {
        Some(f) if f.mode == FailMode::Http => Err(failure_answer(&f, &req.path)),
        other => Ok((account_id, other)),
    }
}

/// A required body field and the check of its type.
type FieldCheck = (&'static str, fn(&Value) -> bool);

#[allow(clippy::result_large_err)]
fn require_fields(body: &Map<String, Value>, fields: &[FieldCheck]) -> Result<(), Response> {
    for (name, ok) in fields {
        match body.get(*name) {
            None => {
                return Err(error(
                    400,
                    "invalid_request_error",
                    &format!("{name}: Field required"),
                ))
            }
            Some(v) if !ok(v) => {
                return Err(error(
                    400,
                    "invalid_request_error",
                    &format!("{name}: Input has the wrong type"),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A rough token count of a body (4 bytes a token, at least 1).
fn token_estimate(body: &Map<String, Value>) -> u64 {
    let len = serde_json::to_string(body).map(|s| s.len()).unwrap_or(0);
    (len as u64 / 4).max(1)
}

/// The 429 of a spent window.
pub fn rate_limited(resets_at: i64, now: i64) -> Response {
    let mut resp = error(
        429,
        "rate_limit_error",
        "This request would exceed your account's rate limit. Please try again later.",
    );
    put(
        resp.headers_mut(),
        "retry-after",
        (resets_at - now).max(1).to_string(),
    );
    resp
}

/// One message answer (text only).
struct Message {
    id: String,
    model: String,
    text: String,
    input_tokens: u64,
    output_tokens: u64,
}

impl Message {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": self.usage(self.output_tokens),
        })
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        })
    }

    fn start_events(&self) -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": self.usage(1),
            }}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
        ]
    }

    fn delta_events(&self, n: usize) -> Vec<Value> {
        split_text(&self.text, n)
            .into_iter()
            .map(|t| {
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": t}})
            })
            .collect()
    }

    /// The whole stream: `message_start`, `content_block_start`, `ping`, the deltas,
    /// `content_block_stop`, `message_delta`, `message_stop`.
    fn events(&self, n: usize) -> Vec<Value> {
        let mut ev = self.start_events();
        ev.extend(self.delta_events(n));
        ev.push(json!({"type": "content_block_stop", "index": 0}));
        ev.push(json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": self.output_tokens}}));
        ev.push(json!({"type": "message_stop"}));
        ev
    }
}

/// The reply text for an account's turn (`{account_id}`, `{model}`, `{seq}` replaced).
pub fn reply_text(g: &mut crate::state::Inner, account_id: &str, model: &str) -> String {
    g.responses_served += 1;
    let seq = g.responses_served;
    g.registry
        .get(account_id)
        .and_then(|acc| acc.reply_text.clone())
        .unwrap_or_else(|| g.behavior.reply_text.clone())
        .replace("{account_id}", account_id)
        .replace("{model}", model)
        .replace("{seq}", &seq.to_string())
}

async fn messages(State(st): State<Shared>, req: Request) -> Response {
    let req = Incoming::of(&req);
    let (account_id, failure) = match admit(&st, &req, false, true).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let body = match req.json_object() {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = require_fields(
        &body,
        &[
            ("model", Value::is_string),
            ("max_tokens", Value::is_u64),
            ("messages", Value::is_array),
        ],
    ) {
        return r;
    }
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let now = st.clock.now();
    let (msg, delta_count, delay) = {
        let mut g = st.lock();
        let g = &mut *g;
        let Some(acc) = g.registry.get_mut(&account_id) else {
            return auth_error("Invalid bearer token");
        };
        let outcome = if failure.is_some() {
            acc.quota.check(now)
        } else {
            acc.quota.consume(now)
        };
        if let Err(e) = outcome {
            return rate_limited(e.resets_at, now);
        }
        if failure.is_none() {
            acc.turns += 1;
        }
        let text = reply_text(g, &account_id, &model);
        let output_tokens = (text.len() as u64 / 4).max(1);
        (
            Message {
                id: format!("msg_01{}", random_alnum(22)),
                model,
                text,
                input_tokens: token_estimate(&body),
                output_tokens,
            },
            g.behavior.delta_count,
            Duration::from_millis(g.behavior.event_delay_ms),
        )
    };
    if !stream {
        // An SSE-mode failure on a JSON turn: the server error it stands for.
        if failure.is_some() {
            return error_answer(500, error_body_for_status(500));
        }
        return Json(msg.json()).into_response();
    }
    let events = match failure.map(|f| f.mode) {
        Some(FailMode::SseFailed) => {
            let mut ev = msg.start_events();
            ev.push(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
            ev
        }
        Some(FailMode::SseTruncated) => {
            let mut ev = msg.start_events();
            ev.extend(msg.delta_events(delta_count));
            ev
        }
        _ => msg.events(delta_count),
    };
    let mut resp = sse_body(events, delay).into_response();
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

async fn count_tokens(State(st): State<Shared>, req: Request) -> Response {
    let req = Incoming::of(&req);
    if let Err(r) = admit(&st, &req, false, true).await {
        return r;
    }
    let body = match req.json_object() {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = require_fields(
        &body,
        &[("model", Value::is_string), ("messages", Value::is_array)],
    ) {
        return r;
    }
    Json(json!({"input_tokens": token_estimate(&body)})).into_response()
}

/// The `GET /v1/models` list.
pub fn models_list() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, name)| {
            json!({"type": "model", "id": id, "display_name": name,
                   "created_at": "2026-09-29T00:00:00Z"})
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": MODELS.first().map(|m| m.0),
        "last_id": MODELS.last().map(|m| m.0),
    })
}

async fn models(State(st): State<Shared>, req: Request) -> Response {
    let req = Incoming::of(&req);
    if let Err(r) = admit(&st, &req, false, true).await {
        return r;
    }
    Json(models_list()).into_response()
}

/// `/api/oauth/usage` for an account (windows rolled by the caller).
pub fn usage_json(acc: &Account) -> Value {
    let window = |w: &Window| {
        json!({
            "utilization": (w.used_percent() * 100.0).round() / 100.0,
            "resets_at": rfc3339(w.reset_at as f64).replace(".000000Z", "+00:00"),
        })
    };
    json!({
        "five_hour": window(&acc.quota.primary),
        "seven_day": window(&acc.quota.secondary),
        "seven_day_oauth_apps": null,
        "seven_day_sonnet": null,
        "seven_day_opus": null,
        "extra_usage": {"is_enabled": false, "monthly_limit": null, "used_credits": null, "utilization": null},
    })
}

async fn usage(State(st): State<Shared>, req: Request) -> Response {
    let req = Incoming::of(&req);
    let account_id = match admit(&st, &req, true, false).await {
        Ok((a, _)) => a,
        Err(r) => return r,
    };
    let now = st.clock.now();
    let mut g = st.lock();
    match g.registry.get_mut(&account_id) {
        Some(acc) => {
            acc.quota.roll(now);
            Json(usage_json(acc)).into_response()
        }
        None => auth_error("Invalid bearer token"),
    }
}

/// `/api/oauth/profile` for an account: who it is and its plan.
pub fn profile_json(acc: &Account) -> Value {
    let sub = crate::control::claude_subscription(&acc.plan);
    json!({
        "account": {
            "uuid": acc.account_uuid,
            "email": acc.email,
            "full_name": null,
            "display_name": acc.email.split('@').next().unwrap_or_default(),
            "has_claude_max": sub == "max",
            "has_claude_pro": sub == "pro",
        },
        "organization": {
            "uuid": acc.organization_uuid,
            "name": format!("{}'s Organization", acc.email),
            "organization_type": format!("claude_{sub}"),
            "billing_type": "stripe_subscription",
            "rate_limit_tier": format!("default_claude_{sub}"),
        },
    })
}

async fn profile(State(st): State<Shared>, req: Request) -> Response {
    let req = Incoming::of(&req);
    let account_id = match admit(&st, &req, true, false).await {
        Ok((a, _)) => a,
        Err(r) => return r,
    };
    match st.lock().registry.get(&account_id) {
        Some(acc) => Json(profile_json(acc)).into_response(),
        None => auth_error("Invalid bearer token"),
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    crate::errors::json_status(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// `POST /v1/oauth/token` (`grant_type=refresh_token`, JSON).
async fn token(State(st): State<Shared>, req: Request) -> Response {
    let bytes = match req.extensions().get::<DecodedBody>() {
        Some(DecodedBody(Ok(b))) => b.clone(),
        _ => return oauth_error(400, "invalid_request", "Unreadable body"),
    };
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&bytes) else {
        return oauth_error(400, "invalid_request", "The request body must be JSON");
    };
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if field("client_id") != Some(CLAUDE_CLIENT_ID) {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    if field("grant_type") != Some("refresh_token") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "Only grant_type=refresh_token is simulated",
        );
    }
    let Some(rt) = field("refresh_token").map(str::to_string) else {
        return oauth_error(400, "invalid_request", "refresh_token is required");
    };
    let invalid = || oauth_error(400, "invalid_grant", "Invalid refresh token");
    let begun = {
        let mut g = st.lock();
        if g.registry.provider_of_refresh_token(&rt) != Some(Provider::Claude) {
            if g.registry.owner_of_refresh_token(&rt).is_none() {
                g.registry.unknown_refresh_calls += 1;
            }
            return invalid();
        }
        let global = g.behavior.refresh_delay_ms;
        g.registry
            .begin_refresh(&rt)
            .map(|(_, d)| d.unwrap_or(global))
    };
    let delay = match begun {
        Ok(d) => d,
        Err(_) => return invalid(),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let now = st.clock.now();
    let mut g = st.lock();
    let result = g.registry.finish_refresh_with(&rt, now, true);
    match result {
        Ok(set) => {
            let Some(acc) = g.registry.get(&set_owner(&g, &set.access_token)) else {
                return invalid();
            };
            Json(json!({
                "token_type": "Bearer",
                "access_token": set.access_token,
                "expires_in": set.access_token_expires_at - now,
                "refresh_token": set.refresh_token,
                "scope": crate::control::CLAUDE_SCOPES.join(" "),
                "account": {"uuid": acc.account_uuid, "email_address": acc.email},
                "organization": {"uuid": acc.organization_uuid, "name": format!("{}'s Organization", acc.email)},
            }))
            .into_response()
        }
        Err(RefreshDenied::Unknown) => invalid(),
        Err(RefreshDenied::Reused) => {
            oauth_error(400, "invalid_grant", "Refresh token has already been used")
        }
        Err(RefreshDenied::Invalidated) => {
            oauth_error(400, "invalid_grant", "Refresh token has been revoked")
        }
        Err(RefreshDenied::Expired) => {
            oauth_error(400, "invalid_grant", "Refresh token has expired")
        }
        Err(RefreshDenied::Scripted(f)) => {
            let status = f.status.unwrap_or(if f.is_permanent() { 400 } else { 500 });
            match (&f.body, f.is_permanent()) {
                (Some(b), _) => crate::errors::json_status(status, b.clone()),
                (None, true) => oauth_error(status, "invalid_grant", "Invalid refresh token"),
                (None, false) => oauth_error(
                    status,
                    f.error.as_deref().unwrap_or("server_error"),
                    "The token endpoint had an error.",
                ),
            }
        }
    }
}

fn set_owner(g: &crate::state::Inner, access_token: &str) -> String {
    g.registry
        .owner_of_access_token(access_token)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{NewAccount, Registry};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn betas_are_found_in_lists_and_repeats() {
        let h = headers(&[("anthropic-beta", "claude-code-20250219, oauth-2025-04-20")]);
        assert!(has_beta(&h, OAUTH_BETA));
        let h = headers(&[
            ("anthropic-beta", "claude-code-20250219"),
            ("anthropic-beta", "oauth-2025-04-20"),
        ]);
        assert!(has_beta(&h, OAUTH_BETA));
        let h = headers(&[("anthropic-beta", "oauth-2025-04-200")]);
        assert!(!has_beta(&h, OAUTH_BETA));
    }

    #[test]
    fn x_api_key_wins_over_bearer() {
        let h = headers(&[("x-api-key", "k"), ("authorization", "Bearer b")]);
        assert_eq!(presented(&h), Some(Presented::ApiKey("k")));
        let h = headers(&[("authorization", "Bearer b")]);
        assert_eq!(presented(&h), Some(Presented::Bearer("b")));
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    fn claude_account(credential: CredentialKind) -> Account {
        let mut r = Registry::new();
        r.create(
            NewAccount {
                account_id: Some("c".into()),
                provider: Some(Provider::Claude),
                credential: Some(credential),
                primary_limit: Some(10),
                secondary_limit: Some(100),
                ..Default::default()
            },
            1000,
        )
        .unwrap()
        .clone()
    }

    #[test]
    fn unified_headers_follow_the_windows() {
        let mut acc = claude_account(CredentialKind::Oauth);
        assert!(acc.current.access_token.starts_with("sk-ant-oat01-"));
        assert!(acc.current.refresh_token.starts_with("sk-ant-ort01-"));
        let mut h = HeaderMap::new();
        insert_rate_limit_headers(&mut h, &acc);
        assert_eq!(h["anthropic-ratelimit-unified-5h-utilization"], "0.0");
        assert_eq!(h["anthropic-ratelimit-unified-5h-status"], "allowed");
        assert_eq!(h["anthropic-ratelimit-unified-5h-reset"], "19000");
        assert_eq!(h["anthropic-ratelimit-unified-7d-reset"], "605800");
        assert_eq!(
            h["anthropic-ratelimit-unified-representative-claim"],
            "five_hour"
        );
        acc.quota.primary.used = 8;
        let mut h = HeaderMap::new();
        insert_rate_limit_headers(&mut h, &acc);
        assert_eq!(h["anthropic-ratelimit-unified-5h-utilization"], "0.8");
        assert_eq!(
            h["anthropic-ratelimit-unified-5h-status"],
            "allowed_warning"
        );
        assert_eq!(h["anthropic-ratelimit-unified-status"], "allowed_warning");
        acc.quota.secondary.used = 100;
        let mut h = HeaderMap::new();
        insert_rate_limit_headers(&mut h, &acc);
        assert_eq!(h["anthropic-ratelimit-unified-7d-status"], "rejected");
        assert_eq!(h["anthropic-ratelimit-unified-status"], "rejected");
        assert_eq!(
            h["anthropic-ratelimit-unified-representative-claim"],
            "seven_day"
        );
        assert_eq!(h["anthropic-ratelimit-unified-reset"], "605800");
        assert!(h.get("anthropic-ratelimit-requests-limit").is_none());
    }

    #[test]
    fn api_key_accounts_get_request_and_token_headers() {
        let mut acc = claude_account(CredentialKind::ApiKey);
        assert!(acc.current.access_token.starts_with("sk-ant-api03-"));
        assert!(acc.current.refresh_token.is_empty());
        acc.quota.primary.used = 3;
        let mut h = HeaderMap::new();
        insert_rate_limit_headers(&mut h, &acc);
        assert_eq!(h["anthropic-ratelimit-requests-limit"], "10");
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "7");
        assert_eq!(h["anthropic-ratelimit-tokens-remaining"], "7000");
        assert_eq!(
            h["anthropic-ratelimit-requests-reset"],
            "1970-01-01T05:16:40Z"
        );
        assert!(h.get("anthropic-ratelimit-unified-status").is_none());
    }

    #[test]
    fn stream_events_are_in_order_and_add_up() {
        let m = Message {
            id: "msg_1".into(),
            model: "claude-sonnet-5-5".into(),
            text: "Hello there".into(),
            input_tokens: 12,
            output_tokens: 3,
        };
        let ev = m.events(3);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let text: String = ev
            .iter()
            .filter_map(|e| e["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "Hello there");
        assert_eq!(ev[0]["message"]["usage"]["input_tokens"], 12);
        assert_eq!(ev[7]["usage"]["output_tokens"], 3);
        assert_eq!(ev[7]["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn error_bodies_have_anthropics_shape() {
        let b = error_body_for_status(529);
        assert_eq!(b["type"], "error");
        assert_eq!(b["error"]["type"], "overloaded_error");
        assert!(b["request_id"].as_str().unwrap().starts_with("req_"));
        assert_eq!(
            error_body_for_status(429)["error"]["type"],
            "rate_limit_error"
        );
        assert_eq!(
            error_body_for_status(401)["error"]["type"],
            "authentication_error"
        );
        assert_eq!(error_body_for_status(500)["error"]["type"], "api_error");
        let models = models_list();
        assert_eq!(models["data"][0]["type"], "model");
        assert_eq!(models["first_id"], MODELS[0].0);
        assert_eq!(models["has_more"], false);
    }
}
