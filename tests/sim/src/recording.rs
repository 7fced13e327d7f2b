//! The request log, and the layer that records every non-control request, decodes its body
//! for handlers, and adds the quota headers to `/codex/*` answers.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::body::{self, DecodedBody, MAX_WIRE_BODY};
use crate::clock::real_unix_now;
use crate::state::Shared;

/// At least this many of the newest records are kept; the oldest go first.
pub const MAX_RECORDS: usize = 100_000;
/// The log may run this far past [`MAX_RECORDS`] before it is cut back: trimming one record per
/// request would move the whole log each time (the simulator slowed to a crawl after 100k turns).
pub const TRIM_SLACK: usize = 10_000;
/// Only the newest this many records keep their decoded JSON body.
pub const MAX_RECORDS_WITH_BODY: usize = 1_000;

/// Append a record, keeping the log bounded.
pub fn push_record(log: &mut Vec<RequestRecord>, record: RequestRecord) {
    log.push(record);
    if log.len() > MAX_RECORDS_WITH_BODY {
        let idx = log.len() - MAX_RECORDS_WITH_BODY - 1;
        log[idx].body_json = None;
        for frame in log[idx].ws_requests.iter_mut().flatten() {
            frame.body_json = None;
        }
    }
    if log.len() > MAX_RECORDS + TRIM_SLACK {
        let extra = log.len() - MAX_RECORDS;
        log.drain(..extra);
    }
}

/// One request as the simulator received it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Arrival order (never reused, also across `DELETE /__sim/requests`).
    pub seq: u64,
    /// Simulated arrival time (unix ms).
    pub at_unix_ms: i64,
    /// Real arrival time (unix ms).
    pub real_unix_ms: i64,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Headers, lowercased names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// Body length on the wire.
    pub body_len: usize,
    /// Hex SHA-256 of the body as received (before decoding).
    pub body_sha256: String,
    /// Decoded body length, when decoding worked.
    pub decoded_body_len: Option<usize>,
    /// Top-level keys of a JSON object body.
    pub body_json_keys: Option<Vec<String>>,
    /// `model` of a JSON body.
    pub model: Option<String>,
    /// `stream` of a JSON body.
    pub stream: Option<bool>,
    /// Account of the bearer token or `x-api-key` (or, at a token endpoint, of the refresh
    /// token).
    pub account_id: Option<String>,
    /// That account's provider (`codex`, `claude`, `gemini`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Session id of the body: Claude's `session_id` inside the JSON string
    /// `metadata.user_id` (or the legacy `…_session_<uuid>`), Gemini's `request.session_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Gemini's `project` in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Gemini's `user_prompt_id` in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_prompt_id: Option<String>,
    /// Answer status (`null` until the handler answered).
    pub status: Option<u16>,
    /// Names of the request's `tools` (a tool without a name by its `type`), when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// `tool_choice` when sent: a string, or an object's `type`/`name`/`mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// `text.format.type` when sent (`json_schema`, `json_object`, `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// The decoded JSON body (shown with `?include_body=1`).
    #[serde(skip)]
    pub body_json: Option<Value>,
    /// Whether the request asked for a WebSocket upgrade (`Upgrade: websocket`).
    pub websocket: bool,
    /// The `Sec-WebSocket-Extensions` the client offered (the simulator declines them all:
    /// its 101 names none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_extensions_offered: Option<String>,
    /// Data frames (text or binary) received on an accepted WebSocket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_frames_received: Option<u64>,
    /// Data frames (text) sent on an accepted WebSocket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_frames_sent: Option<u64>,
    /// The request frames of an accepted WebSocket, in order (the first
    /// [`MAX_WS_FRAMES_RECORDED`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_requests: Option<Vec<WsFrameRecord>>,
    /// How an accepted WebSocket ended; absent while it is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_close: Option<WsClose>,
}

/// At most this many request frames are kept per WebSocket connection (counts go on).
pub const MAX_WS_FRAMES_RECORDED: usize = 1_000;

/// One request frame received on a WebSocket.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WsFrameRecord {
    /// Simulated arrival time (unix ms).
    pub at_unix_ms: i64,
    /// Frame length in bytes.
    pub len: usize,
    /// `type` of the JSON frame (`response.create`, ...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `model`.
    pub model: Option<String>,
    /// `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// `generate` as sent (absent: `null`, which means true).
    pub generate: Option<bool>,
    /// Top-level keys of the JSON frame.
    pub body_json_keys: Option<Vec<String>>,
    /// The id of the response that answered it.
    pub response_id: Option<String>,
    /// Names of the request's `tools` (a tool without a name by its `type`), when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// `tool_choice` when sent: a string, or an object's `type`/`name`/`mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// `text.format.type` when sent (`json_schema`, `json_object`, `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// `completed`, `warmup`, `failed` (injected `sse_failed`), `truncated` (injected
    /// `sse_truncated`), `ignored` (`response.processed`), or `error:<code>` after an error
    /// event (`previous_response_not_found`, `usage_limit_reached`, `invalid_request`, ...).
    pub outcome: String,
    /// The decoded frame (shown with `?include_body=1`, newest records only, like bodies).
    #[serde(skip)]
    pub body_json: Option<Value>,
}

/// How a WebSocket connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WsClose {
    /// The client sent a close frame.
    Client,
    /// The client went away without one (or the connection failed).
    ClientGone,
    /// `websocket_max_lifetime_secs` passed: the simulator sent a close frame.
    Lifetime,
    /// An injected `sse_truncated` turn: the simulator dropped the connection, no close frame.
    Truncated,
}

/// The sequence number of the request being handled (set by [`layer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSeq(pub u64);

/// Change the record `seq`, if it is still in the log.
pub fn with_record(log: &mut [RequestRecord], seq: u64, f: impl FnOnce(&mut RequestRecord)) {
    if let Ok(idx) = log.binary_search_by_key(&seq, |r| r.seq) {
        if let Some(r) = log.get_mut(idx) {
            f(r);
        }
    }
}

/// Whether a request asks for a WebSocket upgrade.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_ascii_lowercase())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// A string field of a JSON or form body.
pub fn body_field(body: &[u8], key: &str) -> Option<String> {
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        return m.get(key)?.as_str().map(str::to_string);
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    form.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The refresh token named by a token-endpoint body (JSON or form).
pub fn refresh_token_of(body: &[u8]) -> Option<String> {
    body_field(body, "refresh_token")
}

/// The account a request is about: the owner of the refresh token or authorization code at
/// the token endpoint, of the approved login at the device poll, else of the bearer.
fn account_of(
    g: &crate::state::Inner,
    path: &str,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Option<String> {
    let owner = match path {
        crate::claude::TOKEN_PATH | crate::gemini::TOKEN_PATH => body
            .and_then(refresh_token_of)
            .and_then(|rt| g.registry.owner_of_refresh_token(&rt)),
        "/oauth/token" => body.and_then(|b| {
            refresh_token_of(b)
                .and_then(|rt| g.registry.owner_of_refresh_token(&rt))
                .or_else(|| body_field(b, "code").and_then(|c| g.device.owner_of_code(&c)))
        }),
        crate::device::POLL_PATH => body
            .and_then(|b| body_field(b, "device_auth_id"))
            .and_then(|id| g.device.owner_of_device(&id)),
        _ => headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .and_then(|k| g.registry.owner_of_access_token(k.trim()))
            .or_else(|| bearer(headers).and_then(|t| g.registry.owner_of_access_token(t))),
    };
    owner.map(str::to_string)
}

/// Claude's session id: `session_id` in the JSON string `metadata.user_id`, or the legacy
/// `user_…_session_<uuid>` form.
pub fn claude_session_id(body: &serde_json::Map<String, Value>) -> Option<String> {
    let user_id = body.get("metadata")?.get("user_id")?.as_str()?;
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(user_id) {
        return m.get("session_id")?.as_str().map(str::to_string);
    }
    user_id
        .rsplit_once("_session_")
        .map(|(_, s)| s.to_string())
        .filter(|s| !s.is_empty())
}

/// The non-secret facts of a Claude or Gemini body: session id, project, user_prompt_id
/// (never any prompt text).
fn provider_body_facts(
    path: &str,
    body: Option<&serde_json::Map<String, Value>>,
) -> (Option<String>, Option<String>, Option<String>) {
    let Some(body) = body else {
        return (None, None, None);
    };
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if crate::gemini::is_gemini_path(path) {
        (
            s(body.get("request").and_then(|r| r.get("session_id"))),
            s(body.get("project")),
            s(body.get("user_prompt_id")),
        )
    } else if crate::claude::is_claude_path(path) {
        (claude_session_id(body), None, None)
    } else {
        (None, None, None)
    }
}

/// Axum middleware: record, decode, add quota headers.
pub async fn layer(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/__sim") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let raw = match axum::body::to_bytes(body, MAX_WIRE_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"detail": "Request body too large"})),
            )
                .into_response()
        }
    };
    let decoded = body::decode(&parts.headers, &raw);
    let json: Option<Value> = decoded
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice(b).ok());
    let obj = json.as_ref().and_then(Value::as_object);
    let now_ms = st.clock.now_ms();
    let websocket = is_websocket_upgrade(&parts.headers);
    let (tools, tool_choice, text_format) =
        obj.map(crate::reply::logged_fields).unwrap_or_default();
    // Claude and Gemini bodies are prompts: only their facts are kept, never the body.
    let other_provider =
        crate::claude::is_claude_path(&path) || crate::gemini::is_gemini_path(&path);
    let (session_id, project, user_prompt_id) = provider_body_facts(&path, obj);
    let seq = {
        let mut g = st.lock();
        let account_id = account_of(
            &g,
            &path,
            &parts.headers,
            decoded.as_ref().ok().map(Vec::as_slice),
        );
        let provider = account_id
            .as_deref()
            .and_then(|a| g.registry.get(a))
            .map(|a| a.provider.as_str().to_string());
        let seq = g.next_seq;
        g.next_seq += 1;
        push_record(
            &mut g.requests,
            RequestRecord {
                seq,
                at_unix_ms: now_ms,
                real_unix_ms: (real_unix_now() * 1000.0) as i64,
                method: parts.method.to_string(),
                path: path.clone(),
                query: parts.uri.query().map(str::to_string),
                headers: header_map(&parts.headers),
                body_len: raw.len(),
                body_sha256: hex(&Sha256::digest(&raw)),
                decoded_body_len: decoded.as_ref().ok().map(Vec::len),
                body_json_keys: obj.map(|m| m.keys().cloned().collect()),
                model: obj
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                stream: obj.and_then(|m| m.get("stream")).and_then(Value::as_bool),
                provider,
                account_id,
                session_id,
                project,
                user_prompt_id,
                status: None,
                tools,
                tool_choice,
                text_format,
                body_json: if other_provider { None } else { json.clone() },
                websocket,
                ws_extensions_offered: if websocket {
                    parts
                        .headers
                        .get(axum::http::header::SEC_WEBSOCKET_EXTENSIONS)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                } else {
                    None
                },
                ws_frames_received: None,
                ws_frames_sent: None,
                ws_requests: None,
                ws_close: None,
            },
        );
        seq
    };
    let mut req = Request::from_parts(parts, Body::from(raw));
    req.extensions_mut()
        .insert(DecodedBody(decoded.map(bytes::Bytes::from)));
    req.extensions_mut().insert(RequestSeq(seq));
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    let mut g = st.lock();
    let account_id = g
        .requests
        .iter()
        .rev()
        .find(|r| r.seq == seq)
        .and_then(|r| r.account_id.clone());
    if let Some(r) = g.requests.iter_mut().rev().find(|r| r.seq == seq) {
        r.status = Some(status);
    }
    if other_provider {
        if crate::claude::is_claude_path(&path) {
            if !resp.headers().contains_key("request-id") {
                crate::upstream::put(
                    resp.headers_mut(),
                    "request-id",
                    crate::claude::new_request_id(),
                );
            }
            let now = st.clock.now();
            let acc = account_id.as_deref().and_then(|a| g.registry.get_mut(a));
            let api = path != crate::claude::TOKEN_PATH;
            if let Some(acc) =
                acc.filter(|a| api && a.provider == crate::accounts::Provider::Claude)
            {
                acc.quota.roll(now);
                crate::claude::insert_rate_limit_headers(resp.headers_mut(), acc);
            }
        }
        return resp;
    }
    if g.behavior.session_cookies {
        add_session_cookies(resp.headers_mut(), account_id.as_deref(), seq);
    }
    if (path.contains("/codex/") || path.ends_with("/v1/responses"))
        && !resp.headers().contains_key("x-codex-primary-used-percent")
    {
        if let Some(acc) = account_id.as_deref() {
            let now = st.clock.now();
            let reset_after = g.behavior.reset_after_headers;
            if let Some(acc) = g.registry.get_mut(acc) {
                acc.quota.roll(now);
                crate::upstream::insert_quota_headers(resp.headers_mut(), acc, now, reset_after);
            }
        }
    }
    resp
}

/// The cookies chatgpt.com's edge and backend set: bot management on every answer, and the
/// account's `_puid` when the bearer named one (a client holding it could act as the account).
fn add_session_cookies(headers: &mut HeaderMap, account_id: Option<&str>, seq: u64) {
    let mut cookies = vec![format!(
        "__cf_bm=sim{seq:016x}; path=/; domain=.chatgpt.com; HttpOnly; Secure; SameSite=None"
    )];
    if let Some(account) = account_id {
        cookies.push(format!(
            "_puid=user-{account}:{seq}; path=/; domain=.chatgpt.com; HttpOnly; Secure; SameSite=Lax"
        ));
    }
    for cookie in cookies {
        if let Ok(value) = axum::http::HeaderValue::from_str(&cookie) {
            headers.append(axum::http::header::SET_COOKIE, value);
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("bearer  xyz "));
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn refresh_token_from_json_or_form() {
        assert_eq!(
            refresh_token_of(br#"{"refresh_token":"rt_1"}"#).as_deref(),
            Some("rt_1")
        );
        assert_eq!(
            refresh_token_of(b"grant_type=refresh_token&refresh_token=rt_2").as_deref(),
            Some("rt_2")
        );
        assert_eq!(refresh_token_of(b"x=1"), None);
    }

    fn record(seq: u64) -> RequestRecord {
        RequestRecord {
            seq,
            at_unix_ms: 0,
            real_unix_ms: 0,
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: BTreeMap::new(),
            body_len: 0,
            body_sha256: String::new(),
            decoded_body_len: None,
            body_json_keys: None,
            model: None,
            stream: None,
            account_id: None,
            provider: None,
            session_id: None,
            project: None,
            user_prompt_id: None,
            status: None,
            tools: None,
            tool_choice: None,
            text_format: None,
            body_json: Some(Value::Null),
            websocket: false,
            ws_extensions_offered: None,
            ws_frames_received: None,
            ws_frames_sent: None,
            ws_requests: None,
            ws_close: None,
        }
    }

    #[test]
    fn log_is_bounded() {
        let mut log = Vec::new();
        let cap = (MAX_RECORDS + TRIM_SLACK) as u64;
        for seq in 0..cap {
            push_record(&mut log, record(seq));
        }
        assert_eq!(
            log.len(),
            MAX_RECORDS + TRIM_SLACK,
            "within the slack: nothing cut"
        );
        push_record(&mut log, record(cap));
        assert_eq!(log.len(), MAX_RECORDS, "cut back to the newest MAX_RECORDS");
        assert_eq!(log[0].seq, cap + 1 - MAX_RECORDS as u64);
        assert_eq!(log[log.len() - 1].seq, cap);
        assert!(log[log.len() - MAX_RECORDS_WITH_BODY - 1]
            .body_json
            .is_none());
        assert!(log[log.len() - MAX_RECORDS_WITH_BODY].body_json.is_some());
    }

    #[test]
    fn websocket_records_are_found_and_frame_bodies_age_out() {
        let mut h = HeaderMap::new();
        assert!(!is_websocket_upgrade(&h));
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&h));

        let mut log: Vec<RequestRecord> = (0..5).map(|s| record(s * 2)).collect();
        with_record(&mut log, 4, |r| r.ws_frames_sent = Some(3));
        with_record(&mut log, 5, |r| r.ws_frames_sent = Some(9));
        assert_eq!(log[2].ws_frames_sent, Some(3));
        assert!(log.iter().filter(|r| r.ws_frames_sent.is_some()).count() == 1);

        let mut log = Vec::new();
        let mut first = record(0);
        first.ws_requests = Some(vec![WsFrameRecord {
            body_json: Some(Value::Null),
            ..WsFrameRecord::default()
        }]);
        push_record(&mut log, first);
        for seq in 1..=MAX_RECORDS_WITH_BODY as u64 {
            push_record(&mut log, record(seq));
        }
        let frames = log[0].ws_requests.as_ref().unwrap();
        assert!(frames[0].body_json.is_none());
    }

    #[test]
    fn headers_are_lowercased_and_joined() {
        let mut h = HeaderMap::new();
        h.append("X-A", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let m = header_map(&h);
        assert_eq!(m.get("x-a").map(String::as_str), Some("1, 2"));
    }
}
