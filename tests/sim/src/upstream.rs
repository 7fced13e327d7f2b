//! The ChatGPT backend endpoints: model turns (SSE or JSON), compaction, the model list, usage
//! status and the account check. Served both under `/backend-api` and at the root.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::accounts::{Account, AuthError};
use crate::body::DecodedBody;
use crate::errors::{detail, invalid_api_key, json_status};
use crate::quota::Window;
use crate::recording::bearer;
use crate::reply::{decide, Reply};
use crate::sse::{frame, FunctionCall, Turn};
use crate::state::{FailMode, InjectedFailure, Shared};

/// Request fields the upstream refuses with `Unsupported parameter`.
pub const UNSUPPORTED_FIELDS: &[&str] = &[
    "max_output_tokens",
    "temperature",
    "top_p",
    "safety_identifier",
    "prompt_cache_retention",
];

/// The full request path (handlers under `/backend-api` see it stripped otherwise).
pub fn full_path(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|| req.uri().path().to_string())
}

/// Default model when a body names none.
pub const DEFAULT_MODEL: &str = "gpt-5.1-codex";

/// The upstream routes (mounted at `/` and at `/backend-api`).
pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/codex/responses",
            post(responses).get(crate::websocket::responses_websocket),
        )
        .route(
            "/v1/responses",
            post(responses).get(crate::websocket::responses_websocket),
        )
        .route("/codex/responses/compact", post(compact))
        .route("/codex/models", get(models))
        .route("/wham/usage", get(usage))
        .route("/wham/accounts/check", get(accounts_check))
        .route("/api/codex/usage", get(usage))
        .route("/api/codex/accounts/check", get(accounts_check))
}

/// A percentage with at most 4 decimals and at least one (`50.0`, `33.3333`).
fn fmt_percent(p: f64) -> String {
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

pub(crate) fn put(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Add the `x-codex-*` quota headers of an account.
pub fn insert_quota_headers(headers: &mut HeaderMap, acc: &Account, now: i64, reset_after: bool) {
    let windows: [(&Window, [&'static str; 4]); 2] = [
        (
            &acc.quota.primary,
            [
                "x-codex-primary-used-percent",
                "x-codex-primary-window-minutes",
                "x-codex-primary-reset-at",
                "x-codex-primary-reset-after-seconds",
            ],
        ),
        (
            &acc.quota.secondary,
            [
                "x-codex-secondary-used-percent",
                "x-codex-secondary-window-minutes",
                "x-codex-secondary-reset-at",
                "x-codex-secondary-reset-after-seconds",
            ],
        ),
    ];
    for (w, [used, minutes, reset_at, reset_after_name]) in windows {
        put(headers, used, fmt_percent(w.used_percent()));
        put(headers, minutes, w.window_minutes().to_string());
        put(headers, reset_at, w.reset_at.to_string());
        if reset_after {
            put(
                headers,
                reset_after_name,
                w.reset_after_secs(now).to_string(),
            );
        }
    }
    put(
        headers,
        "x-codex-credits-has-credits",
        acc.credits.has_credits.to_string(),
    );
    put(
        headers,
        "x-codex-credits-unlimited",
        acc.credits.unlimited.to_string(),
    );
    if let Some(b) = &acc.credits.balance {
        put(headers, "x-codex-credits-balance", b.clone());
    }
    put(headers, "x-codex-active-limit", "codex".to_string());
}

/// Check the bearer (and `chatgpt-account-id`, if sent); the account id or a 401.
#[allow(clippy::result_large_err)]
pub fn authenticate(st: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let Some(token) = bearer(headers) else {
        return Err(invalid_api_key(
            "Missing bearer authentication in header. You need to provide your access token in an Authorization header.",
        ));
    };
    let now = st.clock.now();
    let g = st.lock();
    let acc = match g.registry.authenticate(token, now) {
        Ok(acc) if acc.provider != crate::accounts::Provider::Codex => {
            return Err(invalid_api_key(
                "Incorrect access token provided. Your authentication token is not valid.",
            ))
        }
        Ok(acc) => acc,
        Err(AuthError::Unknown) => {
            return Err(invalid_api_key(
                "Incorrect access token provided. Your authentication token is not valid.",
            ))
        }
        Err(AuthError::Expired { .. }) => {
            return Err(invalid_api_key(
                "Provided authentication token is expired. Please try signing in again.",
            ))
        }
        Err(AuthError::Revoked { .. }) => {
            return Err(invalid_api_key(
                "Your authentication token has been invalidated. Please try signing in again.",
            ))
        }
    };
    if let Some(claimed) = headers.get("chatgpt-account-id") {
        if claimed.as_bytes() != acc.id.as_bytes() {
            return Err(invalid_api_key(
                "The chatgpt-account-id header does not match the access token's account.",
            ));
        }
    }
    Ok(acc.id.clone())
}

pub(crate) fn failure_response(f: &InjectedFailure) -> Response {
    let mut resp = json_status(f.status, f.body_or_default());
    for (k, v) in &f.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// Upstream-style validation of a `/codex/responses` body.
pub fn validate(body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Request body must be a JSON object".into());
    };
    if obj.get("store").and_then(Value::as_bool) == Some(true) {
        return Err("Store must be set to false".into());
    }
    for field in UNSUPPORTED_FIELDS {
        if obj.get(*field).is_some_and(|v| !v.is_null()) {
            return Err(format!("Unsupported parameter: {field}"));
        }
    }
    Ok(())
}

/// What a handler needs of a request, taken out so no `&Request` lives across an await.
struct Incoming {
    path: String,
    headers: HeaderMap,
    decoded: Option<DecodedBody>,
    /// The connection's reset switch (plain HTTP).
    conn: Option<crate::flap::ConnReset>,
}

impl Incoming {
    fn of(req: &Request) -> Self {
        Self {
            path: full_path(req),
            headers: req.headers().clone(),
            decoded: req.extensions().get::<DecodedBody>().cloned(),
            conn: crate::flap::ConnReset::of(req.extensions()),
        }
    }
}

#[allow(clippy::result_large_err)]
fn parse_body(req: &Incoming) -> Result<Value, Response> {
    let decoded = match &req.decoded {
        Some(DecodedBody(Ok(b))) => b.clone(),
        Some(DecodedBody(Err(e))) => {
            return Err(detail(400, &format!("Could not decode body: {e}")))
        }
        None => return Err(detail(500, "body not captured")),
    };
    serde_json::from_slice(&decoded)
        .map_err(|e| detail(400, &format!("Could not parse request body as JSON: {e}")))
}

pub(crate) fn usage_limit_body(plan: &str, resets_at: i64, now: i64) -> Value {
    json!({"error": {
        "type": "usage_limit_reached",
        "message": "The usage limit has been reached",
        "plan_type": plan,
        "resets_at": resets_at,
        "resets_in_seconds": (resets_at - now).max(0),
    }})
}

pub(crate) fn usage_limit_response(plan: &str, resets_at: i64, now: i64) -> Response {
    json_status(429, usage_limit_body(plan, resets_at, now))
}

pub(crate) fn random_hex(n: usize) -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

enum Prepared {
    Answer(Response),
    Turn {
        turn: Turn,
        stream: bool,
        failure: Option<InjectedFailure>,
        delay: Duration,
        account_id: String,
        turn_state: bool,
        etag: String,
    },
}

/// Everything a model turn does before answering: auth, delay, injected failures, body
/// checks and quota.
async fn prepare_turn(st: &Shared, req: Incoming, compact: bool) -> Prepared {
    let path = req.path.clone();
    let headers = &req.headers;
    let account_id = match authenticate(st, headers) {
        Ok(a) => a,
        Err(r) => return Prepared::Answer(r),
    };
    let response_delay = st.lock().behavior.response_delay_ms;
    if response_delay > 0 {
        tokio::time::sleep(Duration::from_millis(response_delay)).await;
    }
    let failure = {
        let mut g = st.lock();
        let queued = g.behavior.take_failure(&path, Some(&account_id));
        queued.or_else(|| {
            let flap = g.behavior.flap.as_ref()?;
            (!compact).then(|| flap.failure_now(&account_id)).flatten()
        })
    };
    if let Some(f) = &failure {
        if f.mode == FailMode::Reset && !compact {
            return Prepared::Answer(crate::flap::reset_answer(req.conn.as_ref()));
        }
        if f.mode == FailMode::Http || compact {
            return Prepared::Answer(failure_response(f));
        }
    }
    let body = match parse_body(&req) {
        Ok(b) => b,
        Err(r) => return Prepared::Answer(r),
    };
    if compact {
        if !body.is_object() {
            return Prepared::Answer(detail(400, "Request body must be a JSON object"));
        }
    } else if let Err(msg) = validate(&body) {
        return Prepared::Answer(detail(400, &msg));
    }
    let stream = body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| {
            headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/event-stream"))
        });
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL)
        .to_string();
    if !compact && st.lock().behavior.refuses_model(&model) {
        let shown: String = model.chars().take(100).collect();
        return Prepared::Answer(detail(
            400,
            &format!(
                "The '{shown}' model is not supported when using Codex with a ChatGPT account."
            ),
        ));
    }
    let now = st.clock.now();
    let mut g = st.lock();
    let g = &mut *g;
    let Some(acc) = g.registry.get_mut(&account_id) else {
        return Prepared::Answer(invalid_api_key("Unknown account."));
    };
    let outcome = if failure.is_some() {
        acc.quota.check(now)
    } else {
        acc.quota.consume(now)
    };
    if let Err(e) = outcome {
        return Prepared::Answer(usage_limit_response(&acc.plan, e.resets_at, now));
    }
    if failure.is_none() {
        acc.turns += 1;
    }
    let raw_len = serde_json::to_string(&body).map(|s| s.len()).unwrap_or(0);
    let originator = headers.get("originator").and_then(|v| v.to_str().ok());
    let request = (!compact).then(|| body.as_object()).flatten();
    let turn = new_turn(g, &account_id, model, raw_len, now, request, originator);
    if failure.is_none() && !compact {
        g.response_index.insert(&turn.response_id, &account_id);
    }
    let (_, etag) = g.behavior.models_response();
    Prepared::Turn {
        turn,
        stream,
        failure,
        delay: Duration::from_millis(g.behavior.event_delay_ms),
        account_id,
        turn_state: g.behavior.turn_state,
        etag,
    }
}

/// A new turn's answer for `account_id` (its reply text, fresh ids, the knobs' delta count);
/// counts it in `responses_served`. With the `request` body, the reply is decided by
/// [`crate::reply::decide`] (function calls, tool output, `text.format`); `originator` is the
/// client's header of that name.
pub(crate) fn new_turn(
    g: &mut crate::state::Inner,
    account_id: &str,
    model: String,
    raw_len: usize,
    now: i64,
    request: Option<&serde_json::Map<String, Value>>,
    originator: Option<&str>,
) -> Turn {
    g.responses_served += 1;
    let seq = g.responses_served;
    let text = g
        .registry
        .get(account_id)
        .and_then(|acc| acc.reply_text.clone())
        .unwrap_or_else(|| g.behavior.reply_text.clone())
        .replace("{account_id}", account_id)
        .replace("{model}", &model)
        .replace("{seq}", &seq.to_string());
    let reply = match request {
        Some(body) => decide(body, text, g.behavior.tool_policy(originator)),
        None => Reply::Text(text),
    };
    let (text, calls) = match reply {
        Reply::Text(t) => (t, Vec::new()),
        Reply::Calls(calls) => (
            String::new(),
            calls
                .into_iter()
                .map(|(name, arguments)| FunctionCall {
                    item_id: format!("fc_{}", random_hex(32)),
                    call_id: format!("call_{}", random_hex(24)),
                    name,
                    arguments,
                })
                .collect(),
        ),
    };
    Turn {
        response_id: format!("resp_{}", random_hex(32)),
        item_id: format!("msg_{}", random_hex(32)),
        model,
        text,
        delta_count: g.behavior.delta_count,
        created_at: now,
        input_tokens: (raw_len as i64 / 4).max(1),
        calls,
    }
}

/// Stream events as SSE, one chunk per event, sleeping `delay` before each event after the
/// first.
pub fn sse_body(events: Vec<Value>, delay: Duration) -> Body {
    frames_body(events.iter().map(frame).collect(), delay)
}

/// Stream ready-made frames, one chunk each, sleeping `delay` before each after the first.
pub fn frames_body(frames: Vec<String>, delay: Duration) -> Body {
    let stream = futures_util::stream::unfold(
        (frames.into_iter(), 0usize),
        move |(mut it, i)| async move {
            let f = it.next()?;
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, Infallible>(Bytes::from(f)), (it, i + 1)))
        },
    );
    Body::from_stream(stream)
}

/// The filler a model turn's request asks for with the test-only headers `x-sim-filler-events: N`
/// and `x-sim-filler-bytes: B` (default 1024): N SSE comment frames (`: xxx…`, which every SSE
/// reader skips) of about B bytes each after the first event. Each is made only when the
/// connection takes the previous one, so a long, large stream costs the simulator nothing
/// while its reader stalls. Bounded: at most [`MAX_FILLER_EVENTS`] of [`MAX_FILLER_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filler {
    pub events: u64,
    pub bytes: usize,
}

/// Most filler frames one stream may ask for.
pub const MAX_FILLER_EVENTS: u64 = 100_000_000;
/// Largest filler frame.
pub const MAX_FILLER_BYTES: usize = 1 << 20;

impl Filler {
    /// From the request's headers; `None` without `x-sim-filler-events` (or with 0 or garbage).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let events = number("x-sim-filler-events")?.min(MAX_FILLER_EVENTS);
        let bytes = number("x-sim-filler-bytes")
            .map_or(1024, |b| usize::try_from(b).unwrap_or(MAX_FILLER_BYTES))
            .clamp(8, MAX_FILLER_BYTES);
        (events > 0).then_some(Self { events, bytes })
    }

    /// One comment frame of about `bytes` bytes (shared: cloning it copies nothing).
    fn frame(&self) -> Bytes {
        let mut f = String::with_capacity(self.bytes + 4);
        f.push_str(": ");
        f.extend(std::iter::repeat_n('x', self.bytes.saturating_sub(4)));
        f.push_str("\n\n");
        Bytes::from(f)
    }
}

/// [`sse_body`] with `filler` frames after the first event, each made as the reader takes the
/// last; `delay` goes before every frame after the first.
pub fn filled_sse_body(events: Vec<Value>, delay: Duration, filler: Filler) -> Body {
    let frames: Vec<Bytes> = events.iter().map(|e| Bytes::from(frame(e))).collect();
    let chunk = filler.frame();
    let stream = futures_util::stream::unfold(
        (frames.into_iter(), 0u64, filler.events),
        move |(mut it, sent, mut filler_left)| {
            let chunk = chunk.clone();
            async move {
                let next = if sent > 0 && filler_left > 0 {
                    filler_left -= 1;
                    chunk
                } else {
                    it.next()?
                };
                if sent > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<Bytes, Infallible>(next), (it, sent + 1, filler_left)))
            }
        },
    );
    Body::from_stream(stream)
}

async fn responses(State(st): State<Shared>, req: Request) -> Response {
    let filler = Filler::of(req.headers());
    let (turn, stream, failure, delay, account_id, turn_state, etag) =
        match prepare_turn(&st, Incoming::of(&req), false).await {
            Prepared::Answer(r) => return r,
            Prepared::Turn {
                turn,
                stream,
                failure,
                delay,
                account_id,
                turn_state,
                etag,
            } => (turn, stream, failure, delay, account_id, turn_state, etag),
        };
    let mut headers = HeaderMap::new();
    put(&mut headers, "x-models-etag", etag);
    put(
        &mut headers,
        "x-request-id",
        format!("req_{}", random_hex(24)),
    );
    if turn_state {
        put(
            &mut headers,
            "x-codex-turn-state",
            format!("ts_{}_{}", account_id, &turn.response_id[5..17]),
        );
    }
    if let Some(f) = &failure {
        for (k, v) in &f.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
    }
    if !stream {
        return (headers, axum::Json(turn.response_json())).into_response();
    }
    let events = match failure.as_ref().map(|f| f.mode) {
        Some(FailMode::SseFailed) => {
            let error = failure
                .as_ref()
                .and_then(|f| f.body.clone())
                .unwrap_or_else(
                    || json!({"code": "server_error", "message": "The simulated model failed."}),
                );
            turn.failed_events(error)
        }
        Some(FailMode::SseTruncated) => turn.truncated_events(),
        _ => turn.events(),
    };
    put(&mut headers, "content-type", "text/event-stream".into());
    put(&mut headers, "cache-control", "no-cache".into());
    match filler {
        Some(filler) => (headers, filled_sse_body(events, delay, filler)).into_response(),
        None => (headers, sse_body(events, delay)).into_response(),
    }
}

async fn compact(State(st): State<Shared>, req: Request) -> Response {
    match prepare_turn(&st, Incoming::of(&req), true).await {
        Prepared::Answer(r) => r,
        Prepared::Turn { turn, .. } => axum::Json(json!({
            "output": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{
                        "type": "input_text",
                        "text": format!("(codexmesh-sim compacted the conversation; response {})", turn.response_id),
                    }],
                },
                {
                    "type": "compaction",
                    "encrypted_content": format!("sim-compaction-{}", turn.response_id),
                },
            ]
        }))
        .into_response(),
    }
}

async fn models(State(st): State<Shared>, req: Request) -> Response {
    if let Err(r) = authenticate(&st, req.headers()) {
        return r;
    }
    let path = full_path(&req);
    let account = bearer(req.headers()).and_then(|t| {
        st.lock()
            .registry
            .owner_of_access_token(t)
            .map(str::to_string)
    });
    let (body, etag, failure) = {
        let mut g = st.lock();
        let f = g.behavior.take_failure(&path, account.as_deref());
        let (b, e) = g.behavior.models_response();
        (b, e, f)
    };
    if let Some(f) = failure {
        return failure_response(&f);
    }
    let mut headers = HeaderMap::new();
    put(&mut headers, "etag", etag.clone());
    let unchanged = req
        .headers()
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| crate::models::etag_matches(v, &etag));
    if unchanged {
        return (axum::http::StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, axum::Json(body)).into_response()
}

fn take_failure_for(st: &Shared, req: &Request, account: &str) -> Option<InjectedFailure> {
    st.lock()
        .behavior
        .take_failure(&full_path(req), Some(account))
}

fn window_json(w: &Window, now: i64) -> Value {
    json!({
        "used_percent": w.used_percent().round() as i64,
        "limit_window_seconds": w.window_secs,
        "reset_after_seconds": w.reset_after_secs(now),
        "reset_at": w.reset_at,
    })
}

/// The `/wham/usage` payload of an account (rolled to `now`).
pub fn usage_payload(acc: &Account, now: i64) -> Value {
    let q = &acc.quota;
    let reached = q.primary.exhausted() || q.secondary.exhausted();
    json!({
        "plan_type": acc.plan,
        "rate_limit": {
            "allowed": !reached,
            "limit_reached": reached,
            "primary_window": window_json(&q.primary, now),
            "secondary_window": window_json(&q.secondary, now),
        },
        "credits": {
            "has_credits": acc.credits.has_credits,
            "unlimited": acc.credits.unlimited,
            "balance": acc.credits.balance,
        },
        "additional_rate_limits": null,
    })
}

async fn usage(State(st): State<Shared>, req: Request) -> Response {
    let account_id = match authenticate(&st, req.headers()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(f) = take_failure_for(&st, &req, &account_id) {
        return failure_response(&f);
    }
    let now = st.clock.now();
    let mut g = st.lock();
    match g.registry.get_mut(&account_id) {
        Some(acc) => {
            acc.quota.roll(now);
            axum::Json(usage_payload(acc, now)).into_response()
        }
        None => invalid_api_key("Unknown account."),
    }
}

async fn accounts_check(State(st): State<Shared>, req: Request) -> Response {
    let account_id = match authenticate(&st, req.headers()) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(f) = take_failure_for(&st, &req, &account_id) {
        return failure_response(&f);
    }
    let g = st.lock();
    let Some(acc) = g.registry.get(&account_id) else {
        return invalid_api_key("Unknown account.");
    };
    axum::Json(json!({
        "accounts": [{
            "id": acc.id,
            "plan_type": acc.plan,
            "workspace_backend_origin": "NO_CONSTRAINT",
            "account_routing_override": "NO_CONSTRAINT",
            "name": null,
            "profile_picture_url": null,
            "structure": "personal",
        }],
        "account_ordering": [acc.id],
        "default_account_id": acc.id,
    }))
    .into_response()
}

/// 404 for every other path.
pub async fn not_found() -> impl IntoResponse {
    detail(404, "Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_like_upstream() {
        assert!(validate(&json!({"model": "m", "store": false, "stream": true})).is_ok());
        assert_eq!(
            validate(&json!({"store": true})).unwrap_err(),
            "Store must be set to false"
        );
        assert_eq!(
            validate(&json!({"temperature": 0.2})).unwrap_err(),
            "Unsupported parameter: temperature"
        );
        assert_eq!(
            validate(&json!({"max_output_tokens": 5})).unwrap_err(),
            "Unsupported parameter: max_output_tokens"
        );
        assert!(validate(&json!({"top_p": null})).is_ok());
        assert!(validate(&json!([1])).is_err());
    }

    #[test]
    fn percent_formatting() {
        assert_eq!(fmt_percent(0.0), "0.0");
        assert_eq!(fmt_percent(100.0), "100.0");
        assert_eq!(fmt_percent(12.5), "12.5");
        assert_eq!(fmt_percent(100.0 / 3.0), "33.3333");
        assert_eq!(fmt_percent(0.00001), "0.0");
    }

    #[tokio::test]
    async fn filler_frames_come_after_the_first_event_and_are_bounded() {
        let mut headers = HeaderMap::new();
        assert_eq!(Filler::of(&headers), None);
        headers.insert("x-sim-filler-events", HeaderValue::from_static("3"));
        headers.insert("x-sim-filler-bytes", HeaderValue::from_static("16"));
        let filler = Filler::of(&headers).unwrap();
        assert_eq!(
            filler,
            Filler {
                events: 3,
                bytes: 16
            }
        );
        headers.insert(
            "x-sim-filler-bytes",
            HeaderValue::from_static("999999999999"),
        );
        assert_eq!(Filler::of(&headers).unwrap().bytes, MAX_FILLER_BYTES);
        headers.insert("x-sim-filler-events", HeaderValue::from_static("nope"));
        assert_eq!(Filler::of(&headers), None);

        let events = vec![json!({"type": "a"}), json!({"type": "b"})];
        let body = filled_sse_body(events, Duration::ZERO, filler);
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let blocks: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(blocks.len(), 5, "{text}");
        assert!(blocks[0].contains("\"a\""), "{text}");
        assert!(blocks[1..4]
            .iter()
            .all(|b| b.starts_with(": ") && b.len() == 14));
        assert!(blocks[4].contains("\"b\""), "{text}");
    }
}
