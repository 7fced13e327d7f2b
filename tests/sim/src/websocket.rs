//! The Responses WebSocket: `GET /codex/responses` (also under `/backend-api`, and
//! `/v1/responses`) with `Upgrade: websocket`, as the Codex backend serves it.
//!
//! The handshake is checked like an HTTP model turn: a live bearer (else 401), a matching
//! `chatgpt-account-id`, then the first matching injected failure if its mode is `http` (the
//! upgrade is answered with its status and body instead of 101), then the quota (spent → 429
//! `usage_limit_reached`). The 101 carries `x-models-etag`, `x-request-id`,
//! `x-codex-turn-state` (knob `turn_state`), and, added by the recording layer like on every
//! `/codex/*` answer, the `x-codex-*` quota headers. `Sec-WebSocket-Extensions` offers
//! (`permessage-deflate`) are declined: the 101 names none, and the log records the offer.
//!
//! On the connection the client sends text frames `{"type":"response.create", ...the HTTP
//! body's fields...}`; each is answered with text frames carrying the same event JSON as the
//! SSE `data:` lines, `event_delay_ms` apart, preceded by a `codex.rate_limits` event with the
//! account's windows:
//! - `generate: false` (warm-up): `response.created` + `response.completed` with no output and
//!   no usage; no quota is used;
//! - otherwise a full turn (one turn's cost, `turns` +1), after `response_delay_ms`, answered
//!   like an HTTP turn by [`crate::reply::decide`] (function calls, tool output, `text.format`;
//!   the upgrade's `originator` header decides whether the client is the Codex CLI);
//! - `previous_response_id` must name a completed or warm-up response of the same account
//!   (knob `websocket_previous_response_scope`: `account`, or `connection` for this connection
//!   only), else an error event `{"type":"error","status":400,"error":{"code":
//!   "previous_response_not_found",...}}`;
//! - an injected failure matching the turn: `http` → an error event with its status and body
//!   (`{"type":"error","status","error","headers"}`, the shape the Codex CLI reads),
//!   `sse_failed` → `response.failed`, `sse_truncated` → the deltas, then the connection is
//!   dropped without a close frame;
//! - spent quota → an error event with status 429 and the `usage_limit_reached` error;
//! - `response.processed` frames are taken silently; other types get an error event.
//!
//! After `websocket_max_lifetime_secs` (real time) the simulator sends a close frame (1000,
//! `websocket_connection_limit_reached`) once the current turn is done.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::accounts::Account;
use crate::errors::{detail, invalid_api_key};
use crate::quota::Window;
use crate::recording::{
    is_websocket_upgrade, with_record, RequestSeq, WsClose, WsFrameRecord, MAX_WS_FRAMES_RECORDED,
};
use crate::state::{FailMode, InjectedFailure, PreviousResponseScope, ResponseIndex, Shared};
use crate::upstream::{
    authenticate, failure_response, full_path, insert_quota_headers, new_turn, put, random_hex,
    usage_limit_body, usage_limit_response, validate, DEFAULT_MODEL,
};

/// Close code sent when a connection reaches `websocket_max_lifetime_secs`.
pub const LIFETIME_CLOSE_CODE: u16 = 1000;
/// Close reason sent then (the backend's error code for it).
pub const LIFETIME_CLOSE_REASON: &str = "websocket_connection_limit_reached";
/// How long the simulator waits for the client's side of a closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// At most this many frames are read while waiting for it.
const CLOSE_DRAIN_FRAMES: usize = 64;

/// `GET .../responses`: refuse (knob `websocket`: "426"/"404") or accept the upgrade.
pub async fn responses_websocket(State(st): State<Shared>, req: Request) -> Response {
    let mode = st.lock().behavior.websocket;
    let upgrade = is_websocket_upgrade(req.headers());
    if let Some(status) = mode.refusal_status() {
        let msg = if upgrade {
            "WebSocket transport is not available here; use HTTP SSE."
        } else {
            "Use POST for /codex/responses."
        };
        let mut resp = detail(status, msg);
        if status == 426 {
            put(resp.headers_mut(), "upgrade", "websocket".into());
        }
        return resp;
    }
    if !upgrade {
        let mut resp = detail(
            426,
            "Use POST for /codex/responses, or upgrade to a WebSocket.",
        );
        put(resp.headers_mut(), "upgrade", "websocket".into());
        return resp;
    }
    let path = full_path(&req);
    let seq = req.extensions().get::<RequestSeq>().map(|s| s.0);
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let account_id = match authenticate(&st, &parts.headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let failure = st
        .lock()
        .behavior
        .take_failure_if(&path, Some(&account_id), |f| f.mode == FailMode::Http);
    if let Some(f) = failure {
        return failure_response(&f);
    }
    let now = st.clock.now();
    let (etag, turn_state, lifetime, scope) = {
        let mut g = st.lock();
        let g = &mut *g;
        let Some(acc) = g.registry.get_mut(&account_id) else {
            return invalid_api_key("Unknown account.");
        };
        if let Err(e) = acc.quota.check(now) {
            return usage_limit_response(&acc.plan, e.resets_at, now);
        }
        let (_, etag) = g.behavior.models_response();
        if let Some(seq) = seq {
            with_record(&mut g.requests, seq, |r| {
                r.ws_frames_received = Some(0);
                r.ws_frames_sent = Some(0);
                r.ws_requests = Some(Vec::new());
            });
        }
        (
            etag,
            g.behavior.turn_state,
            Duration::from_secs(g.behavior.websocket_max_lifetime_secs),
            g.behavior.websocket_previous_response_scope,
        )
    };
    let originator = parts
        .headers
        .get("originator")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let session = Session {
        st: st.clone(),
        seq,
        path,
        originator,
        account_id: account_id.clone(),
        scope,
        own: ResponseIndex::default(),
        received: 0,
        sent: 0,
    };
    let mut resp = ws.on_upgrade(move |socket| session.run(socket, lifetime));
    let headers = resp.headers_mut();
    put(headers, "x-models-etag", etag);
    put(headers, "x-request-id", format!("req_{}", random_hex(24)));
    if turn_state {
        put(
            headers,
            "x-codex-turn-state",
            format!("ts_{account_id}_{}", random_hex(12)),
        );
    }
    resp
}

/// One accepted connection.
struct Session {
    st: Shared,
    /// The request log record of the upgrade.
    seq: Option<u64>,
    path: String,
    /// The upgrade's `originator` header (the Codex CLI's gets no tool calls by default).
    originator: Option<String>,
    account_id: String,
    scope: PreviousResponseScope,
    /// Responses produced on this connection.
    own: ResponseIndex,
    received: u64,
    sent: u64,
}

/// What to do after a frame was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Continue,
    /// Drop the connection without a close frame.
    Truncate,
    /// Sending failed: the client is gone.
    Gone,
}

/// The answer to one request frame.
struct Answer {
    events: Vec<Value>,
    outcome: String,
    response_id: Option<String>,
    delay: Duration,
    truncate: bool,
}

impl Answer {
    fn silent(outcome: &str) -> Self {
        Self {
            events: Vec::new(),
            outcome: outcome.to_string(),
            response_id: None,
            delay: Duration::ZERO,
            truncate: false,
        }
    }

    fn error(status: u16, code: &str, error: Value, headers: Map<String, Value>) -> Self {
        Self {
            events: vec![json!({
                "type": "error",
                "status": status,
                "error": error,
                "headers": headers,
            })],
            outcome: format!("error:{code}"),
            response_id: None,
            delay: Duration::ZERO,
            truncate: false,
        }
    }

    fn invalid(code: &str, message: &str, param: Option<&str>) -> Self {
        Self::error(
            400,
            code,
            json!({
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
            }),
            Map::new(),
        )
    }
}

impl Session {
    async fn run(mut self, mut socket: WebSocket, lifetime: Duration) {
        let expiry = tokio::time::sleep(lifetime);
        tokio::pin!(expiry);
        // Ends when the client leaves or, at the latest, when the lifetime is up.
        let close = loop {
            tokio::select! {
                () = &mut expiry => {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: LIFETIME_CLOSE_CODE,
                            reason: LIFETIME_CLOSE_REASON.into(),
                        })))
                        .await;
                    drain(&mut socket).await;
                    break WsClose::Lifetime;
                }
                msg = socket.recv() => {
                    let text = match msg {
                        None | Some(Err(_)) => break WsClose::ClientGone,
                        Some(Ok(Message::Close(_))) => {
                            // Lets the queued close reply go out.
                            drain(&mut socket).await;
                            break WsClose::Client;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Text(t))) => t.as_str().to_string(),
                        Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    };
                    match self.frame(&mut socket, &text).await {
                        After::Continue => {}
                        After::Truncate => break WsClose::Truncated,
                        After::Gone => break WsClose::ClientGone,
                    }
                }
            }
        };
        self.update_record(None, Some(close));
        // Dropping the socket closes the TCP connection (without a close frame when
        // truncating).
        drop(socket);
    }

    /// Answer one request frame.
    async fn frame(&mut self, socket: &mut WebSocket, text: &str) -> After {
        self.received += 1;
        let at_unix_ms = self.st.clock.now_ms();
        let parsed: Option<Value> = serde_json::from_str(text).ok();
        let obj = parsed.as_ref().and_then(Value::as_object);
        let field = |k: &str| {
            obj.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (tools, tool_choice, text_format) =
            obj.map(crate::reply::logged_fields).unwrap_or_default();
        let mut record = WsFrameRecord {
            at_unix_ms,
            len: text.len(),
            kind: field("type"),
            model: field("model"),
            previous_response_id: field("previous_response_id"),
            generate: obj.and_then(|m| m.get("generate")).and_then(Value::as_bool),
            body_json_keys: obj.map(|m| m.keys().cloned().collect()),
            response_id: None,
            tools,
            tool_choice,
            text_format,
            outcome: String::new(),
            body_json: parsed.clone(),
        };
        let answer = self.answer(obj, text.len()).await;
        record.outcome = answer.outcome.clone();
        record.response_id = answer.response_id.clone();
        let mut after = if answer.truncate {
            After::Truncate
        } else {
            After::Continue
        };
        for (i, event) in answer.events.iter().enumerate() {
            if i > 0 && !answer.delay.is_zero() {
                tokio::time::sleep(answer.delay).await;
            }
            if socket
                .send(Message::Text(event.to_string().into()))
                .await
                .is_err()
            {
                after = After::Gone;
                break;
            }
            self.sent += 1;
        }
        self.update_record(Some(record), None);
        after
    }

    /// Whether `previous_response_id` names a response this connection may continue.
    fn knows(&self, previous: &str) -> bool {
        match self.scope {
            PreviousResponseScope::Connection => self.own.owner(previous).is_some(),
            PreviousResponseScope::Account => {
                self.st.lock().response_index.owner(previous) == Some(self.account_id.as_str())
            }
        }
    }

    async fn answer(&mut self, obj: Option<&Map<String, Value>>, len: usize) -> Answer {
        let Some(obj) = obj else {
            return Answer::invalid(
                "invalid_json",
                "Could not parse the frame as a JSON object.",
                None,
            );
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("response.create") => {}
            Some("response.processed") => return Answer::silent("ignored"),
            other => {
                return Answer::invalid(
                    "unknown_event_type",
                    &format!("Unsupported event type: {}", other.unwrap_or("(none)")),
                    Some("type"),
                )
            }
        }
        let generate = obj.get("generate").and_then(Value::as_bool).unwrap_or(true);
        let model = obj
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL)
            .to_string();
        if let Some(previous) = obj.get("previous_response_id").and_then(Value::as_str) {
            if !self.knows(previous) {
                return Answer::invalid(
                    "previous_response_not_found",
                    &format!("Previous response with id '{previous}' not found."),
                    Some("previous_response_id"),
                );
            }
        }
        if let Err(msg) = validate(&Value::Object(obj.clone())) {
            return Answer::invalid("invalid_request", &msg, None);
        }
        let failure = if generate {
            let delay = self.st.lock().behavior.response_delay_ms;
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            self.st
                .lock()
                .behavior
                .take_failure(&self.path, Some(&self.account_id))
        } else {
            None
        };
        self.turn(generate, model, failure, len, obj)
    }

    /// The events of a `response.create` that passed the checks.
    fn turn(
        &mut self,
        generate: bool,
        model: String,
        failure: Option<InjectedFailure>,
        len: usize,
        request: &Map<String, Value>,
    ) -> Answer {
        let now = self.st.clock.now();
        let mut guard = self.st.lock();
        let g = &mut *guard;
        let reset_after = g.behavior.reset_after_headers;
        let Some(acc) = g.registry.get_mut(&self.account_id) else {
            return Answer::error(
                401,
                "invalid_api_key",
                json!({"type": "invalid_request_error", "code": "invalid_api_key",
                       "message": "Unknown account.", "param": null}),
                Map::new(),
            );
        };
        if let Some(f) = failure.as_ref().filter(|f| f.mode == FailMode::Http) {
            let body = f.body_or_default();
            let error = body.get("error").cloned().unwrap_or(body);
            let code = error
                .get("code")
                .or_else(|| error.get("type"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| f.status.to_string());
            let mut headers = quota_headers_json(acc, now, reset_after);
            for (k, v) in &f.headers {
                headers.insert(k.to_ascii_lowercase(), Value::String(v.clone()));
            }
            return Answer::error(f.status, &code, error, headers);
        }
        let quota = if !generate {
            acc.quota.roll(now);
            Ok(())
        } else if failure.is_some() {
            acc.quota.check(now)
        } else {
            acc.quota.consume(now)
        };
        if let Err(e) = quota {
            let body = usage_limit_body(&acc.plan, e.resets_at, now);
            let error = body.get("error").cloned().unwrap_or(body);
            return Answer::error(
                429,
                "usage_limit_reached",
                error,
                quota_headers_json(acc, now, reset_after),
            );
        }
        if generate && failure.is_none() {
            acc.turns += 1;
        }
        let rate_limits = rate_limits_event(acc, now);
        let turn = new_turn(
            g,
            &self.account_id,
            model,
            len,
            now,
            generate.then_some(request),
            self.originator.as_deref(),
        );
        let (body, outcome, truncate) = match failure.as_ref().map(|f| f.mode) {
            Some(FailMode::SseFailed) => {
                let error = failure.as_ref().and_then(|f| f.body.clone()).unwrap_or_else(
                    || json!({"code": "server_error", "message": "The simulated model failed."}),
                );
                (turn.failed_events(error), "failed", false)
            }
            Some(FailMode::SseTruncated) => (turn.truncated_events(), "truncated", true),
            _ if !generate => (turn.warmup_events(), "warmup", false),
            _ => (turn.events(), "completed", false),
        };
        if failure.is_none() {
            g.response_index.insert(&turn.response_id, &self.account_id);
            self.own.insert(&turn.response_id, &self.account_id);
        }
        let mut events = Vec::with_capacity(body.len() + 1);
        events.push(rate_limits);
        events.extend(body);
        Answer {
            events,
            outcome: outcome.to_string(),
            response_id: Some(turn.response_id),
            delay: Duration::from_millis(g.behavior.event_delay_ms),
            truncate,
        }
    }

    /// Copy the counters (and a new frame, and how it ended) into the request log.
    fn update_record(&self, frame: Option<WsFrameRecord>, close: Option<WsClose>) {
        let Some(seq) = self.seq else {
            return;
        };
        let mut g = self.st.lock();
        with_record(&mut g.requests, seq, |r| {
            r.ws_frames_received = Some(self.received);
            r.ws_frames_sent = Some(self.sent);
            if let Some(frame) = frame {
                if r.model.is_none() && frame.kind.as_deref() == Some("response.create") {
                    r.model = frame.model.clone();
                }
                let frames = r.ws_requests.get_or_insert_with(Vec::new);
                if frames.len() < MAX_WS_FRAMES_RECORDED {
                    frames.push(frame);
                }
            }
            if close.is_some() {
                r.ws_close = close;
            }
        });
    }
}

/// Read (and drop) what the client still sends while a close handshake finishes: bounded in
/// frames and time.
async fn drain(socket: &mut WebSocket) {
    for _ in 0..CLOSE_DRAIN_FRAMES {
        match tokio::time::timeout(CLOSE_WAIT, socket.recv()).await {
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
}

/// The `x-codex-*` quota headers of an account as a JSON object (for error events).
fn quota_headers_json(acc: &Account, now: i64, reset_after: bool) -> Map<String, Value> {
    let mut headers = HeaderMap::new();
    insert_quota_headers(&mut headers, acc, now, reset_after);
    headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_string(),
                Value::String(v.to_str().ok()?.to_string()),
            ))
        })
        .collect()
}

fn window_event_json(w: &Window, now: i64) -> Value {
    json!({
        "used_percent": w.used_percent(),
        "window_minutes": w.window_minutes(),
        "reset_after_seconds": w.reset_after_secs(now),
        "reset_at": w.reset_at,
    })
}

/// The `codex.rate_limits` event the backend sends on WebSockets before a turn's
/// `response.created` (the shape the Codex CLI parses: `plan_type`, `rate_limits.{primary,
/// secondary}.{used_percent, window_minutes, reset_at}`, `credits`, `metered_limit_name`).
pub fn rate_limits_event(acc: &Account, now: i64) -> Value {
    let q = &acc.quota;
    let reached = q.primary.exhausted() || q.secondary.exhausted();
    json!({
        "type": "codex.rate_limits",
        "plan_type": acc.plan,
        "metered_limit_name": "codex",
        "rate_limits": {
            "allowed": !reached,
            "limit_reached": reached,
            "primary": window_event_json(&q.primary, now),
            "secondary": window_event_json(&q.secondary, now),
        },
        "credits": {
            "has_credits": acc.credits.has_credits,
            "unlimited": acc.credits.unlimited,
            "balance": acc.credits.balance,
        },
        "code_review_rate_limits": null,
    })
}
