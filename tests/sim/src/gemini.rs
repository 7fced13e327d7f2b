//! Google's Code Assist API as Gemini CLI meets it (`shared/docs/claude-gemini-protocol.md`
//! 2.3-2.4): `POST /v1internal:<method>` and Google's token endpoint
//! `POST /google/oauth2/token` (standing in for `https://oauth2.googleapis.com/token`).
//!
//! Rules it keeps:
//! - Every `/v1internal:*` call needs `Authorization: Bearer <live token of a gemini account>`,
//!   else 401 `UNAUTHENTICATED`. Errors are google.rpc: `{"error":{"code","message","status",
//!   "details"}}`.
//! - `generateContent` and `streamGenerateContent` must carry the account's own `project`
//!   (else 403 `PERMISSION_DENIED`: a gateway has to rewrite it per account), a `model` and
//!   `request.contents`; they take one turn from the daily window (the account's primary, 1440
//!   minutes on the simulated clock). A spent window answers 429 `RESOURCE_EXHAUSTED` with
//!   ErrorInfo `QUOTA_EXHAUSTED` (`quotaResetDelay`, `quotaResetTimeStamp`), RetryInfo and
//!   QuotaFailure.
//! - Answers are the Code Assist envelope `{response:{candidates,usageMetadata,modelVersion},
//!   traceId}`; `streamGenerateContent?alt=sse` sends `data: <envelope>` frames (no event
//!   names, no `[DONE]`), without `alt=sse` a JSON array of them. A request asking for JSON
//!   (`generationConfig.responseJsonSchema`/`responseSchema`, or `responseMimeType`
//!   `application/json`, as Gemini CLI's model router does) gets a JSON document as its text.
//! - The start-up methods answer as the CLI needs: `loadCodeAssist` (standard tier, the
//!   account's project), `onboardUser` (a done operation), `retrieveUserQuota` (buckets from
//!   the daily window), `countTokens` (no project needed), the rest `{}`.
//! - The token endpoint takes a form (JSON too), any non-empty `client_id`/`client_secret`
//!   (recorded on the account), and keeps the refresh token unless the knob
//!   `google_rotates_refresh_tokens` is on; unknown or revoked → 400 `invalid_grant`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::accounts::{AuthError, Provider, RefreshDenied};
use crate::body::DecodedBody;
use crate::clock::rfc3339;
use crate::recording::{bearer, body_field};
use crate::sse::split_text;
use crate::state::{FailMode, InjectedFailure, Shared};
use crate::upstream::{frames_body, random_hex};

/// Google's token endpoint here.
pub const TOKEN_PATH: &str = "/google/oauth2/token";
/// The Code Assist API version prefix.
pub const PREFIX: &str = "/v1internal:";
/// The Code Assist methods served (POST unless noted).
pub const METHODS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "loadCodeAssist",
    "onboardUser",
    "retrieveUserQuota",
    "listExperiments",
    "fetchAdminControls",
    "recordCodeAssistMetrics",
    "setCodeAssistGlobalUserSetting",
    "getCodeAssistGlobalUserSetting",
];
/// The models `retrieveUserQuota` reports buckets for.
pub const QUOTA_MODELS: &[&str] = &[
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3.1-flash-lite",
];

/// The Code Assist and token routes.
pub fn routes() -> Router<Shared> {
    let mut r = Router::new().route(TOKEN_PATH, post(token));
    for m in METHODS {
        let path = format!("{PREFIX}{m}");
        r = if *m == "getCodeAssistGlobalUserSetting" {
            r.route(&path, get(code_assist).post(code_assist))
        } else {
            r.route(&path, post(code_assist))
        };
    }
    r
}

/// Whether Google serves this path here.
pub fn is_gemini_path(path: &str) -> bool {
    path.starts_with(PREFIX) || path.starts_with("/v1internal/") || path == TOKEN_PATH
}

/// The google.rpc status name of an HTTP status.
pub fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// `{"error":{"code","message","status","details"}}`.
pub fn error_body(code: u16, message: &str, details: Vec<Value>) -> Value {
    let mut e = json!({"code": code, "message": message, "status": status_name(code)});
    if !details.is_empty() {
        e["details"] = Value::Array(details);
    }
    json!({ "error": e })
}

/// The default body of an injected failure with this status.
pub fn error_body_for_status(status: u16) -> Value {
    let message = match status {
        429 => "Resource has been exhausted (e.g. check quota).",
        503 => "The service is currently unavailable.",
        401 => "Request had invalid authentication credentials.",
        s if s >= 500 => "Internal error encountered.",
        _ => "Injected failure.",
    };
    error_body(status, message, Vec::new())
}

/// A google.rpc error answer.
pub fn error(code: u16, message: &str, details: Vec<Value>) -> Response {
    json_answer(code, error_body(code, message, details))
}

fn json_answer(code: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// A duration as google.protobuf.Duration JSON (`"539.47s"`, `"0.539s"`).
fn duration(secs: f64) -> String {
    let s = format!("{secs:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

/// RFC 3339 without fractions (`2025-10-20T19:14:08Z`).
pub fn timestamp(unix: i64) -> String {
    rfc3339(unix as f64).replace(".000000Z", "Z")
}

/// The 429 body of a spent daily quota, as Gemini CLI parses it.
pub fn quota_exhausted_body(model: &str, resets_at: i64, now: i64) -> Value {
    let delay = (resets_at - now).max(0) as f64;
    error_body(
        429,
        &format!(
            "You have exhausted your capacity on this model. Your quota will reset after {}s.",
            resets_at.saturating_sub(now).max(0)
        ),
        vec![
            json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "QUOTA_EXHAUSTED",
                "domain": "cloudcode-pa.googleapis.com",
                "metadata": {
                    "model": model,
                    "quotaResetDelay": duration(delay),
                    "quotaResetTimeStamp": timestamp(resets_at),
                },
            }),
            json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": duration(delay),
            }),
            json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "cloudcode-pa.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateContentRequestsPerDayPerProjectPerUser",
                }],
            }),
        ],
    )
}

/// Check the bearer: the id of the gemini account, or a 401.
#[allow(clippy::result_large_err)]
pub fn authenticate(st: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let unauthenticated = || {
        error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            vec![json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                "domain": "googleapis.com",
            })],
        )
    };
    let Some(token) = bearer(headers) else {
        return Err(unauthenticated());
    };
    let now = st.clock.now();
    let g = st.lock();
    match g.registry.authenticate(token, now) {
        Ok(acc) if acc.provider == Provider::Gemini => Ok(acc.id.clone()),
        Ok(_) | Err(AuthError::Unknown | AuthError::Expired { .. } | AuthError::Revoked { .. }) => {
            Err(unauthenticated())
        }
    }
}

fn failure_answer(f: &InjectedFailure, path: &str) -> Response {
    let mut resp = json_answer(f.status, f.body_for_path(path));
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

/// Whether a Code Assist request asks for a JSON answer.
pub fn wants_json(request: &Map<String, Value>) -> bool {
    let Some(cfg) = request.get("generationConfig").and_then(Value::as_object) else {
        return false;
    };
    cfg.contains_key("responseJsonSchema")
        || cfg.contains_key("responseSchema")
        || cfg.get("responseMimeType").and_then(Value::as_str) == Some("application/json")
}

/// The JSON text answering a request that asks for JSON: an instance of its schema, or the
/// model router's `{"reasoning","model_choice"}`.
pub fn json_text(request: &Map<String, Value>) -> String {
    let cfg = &request["generationConfig"];
    let schema = cfg
        .get("responseJsonSchema")
        .or_else(|| cfg.get("responseSchema"))
        .map(lowercase_types);
    if let Some(schema) = schema {
        let doc = crate::reply::arguments(Some(&schema));
        if doc != "{}" {
            return doc;
        }
    }
    json!({"reasoning": "A simple request; the simulator answers it.", "model_choice": "flash"})
        .to_string()
}

/// OpenAPI-style schemas (`"type":"OBJECT"`) as JSON-schema ones.
fn lowercase_types(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        _ => lowercase_types(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(lowercase_types).collect()),
        other => other.clone(),
    }
}

/// One answer envelope; `finish` adds `finishReason` and the full usage.
fn envelope(text: &str, model: &str, usage: (u64, u64), finish: bool, trace: &str) -> Value {
    let mut candidate = json!({
        "content": {"role": "model", "parts": [{"text": text}]},
        "index": 0,
    });
    let mut response = json!({"modelVersion": model, "responseId": trace});
    if finish {
        candidate["finishReason"] = json!("STOP");
        response["usageMetadata"] = json!({
            "promptTokenCount": usage.0,
            "candidatesTokenCount": usage.1,
            "totalTokenCount": usage.0 + usage.1,
            "trafficType": "PROVISIONED_THROUGHPUT",
        });
    }
    response["candidates"] = json!([candidate]);
    json!({"response": response, "traceId": trace})
}

/// The chunks of a streamed answer (the last one finishes).
pub fn stream_chunks(
    text: &str,
    n: usize,
    model: &str,
    usage: (u64, u64),
    trace: &str,
) -> Vec<Value> {
    let parts = split_text(text, n.max(1));
    let last = parts.len().saturating_sub(1);
    if parts.is_empty() {
        return vec![envelope("", model, usage, true, trace)];
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, t)| envelope(t, model, usage, i == last, trace))
        .collect()
}

/// The buckets of `retrieveUserQuota` for an account (window rolled by the caller).
pub fn quota_buckets(acc: &crate::accounts::Account) -> Value {
    let w = &acc.quota.primary;
    let remaining = w.limit.saturating_sub(w.used);
    let fraction = if w.limit == 0 {
        0.0
    } else {
        remaining as f64 / w.limit as f64
    };
    let buckets: Vec<Value> = QUOTA_MODELS
        .iter()
        .map(|m| {
            json!({
                "modelId": m,
                "tokenType": "REQUESTS",
                "remainingAmount": remaining.to_string(),
                "remainingFraction": fraction,
                "resetTime": timestamp(w.reset_at),
            })
        })
        .collect();
    json!({ "buckets": buckets })
}

async fn code_assist(State(st): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers = req.headers().clone();
    let decoded = req.extensions().get::<DecodedBody>().cloned();
    let method = path.strip_prefix(PREFIX).unwrap_or_default().to_string();
    let account_id = match authenticate(&st, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let delay = st.lock().behavior.response_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failure = st.lock().behavior.take_failure(&path, Some(&account_id));
    if let Some(f) = &failure {
        if f.mode == FailMode::Http {
            return failure_answer(f, &path);
        }
    }
    let body: Map<String, Value> = match &decoded {
        Some(DecodedBody(Ok(b))) if b.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Some(DecodedBody(Ok(b))) => match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return error(
                    400,
                    "Invalid JSON payload received. Expected an object.",
                    Vec::new(),
                )
            }
            Err(e) => {
                return error(
                    400,
                    &format!("Invalid JSON payload received. {e}"),
                    Vec::new(),
                )
            }
        },
        _ => return error(400, "Could not decode the request body.", Vec::new()),
    };
    let now = st.clock.now();
    let project = {
        let g = st.lock();
        g.registry
            .get(&account_id)
            .and_then(|a| a.project_id.clone())
            .unwrap_or_default()
    };
    match method.as_str() {
        "generateContent" | "streamGenerateContent" => {
            let stream = method == "streamGenerateContent";
            generate(&st, &account_id, &project, &body, stream, &query, failure, now).await
        }
        "countTokens" => {
            let Some(request) = body.get("request").and_then(Value::as_object) else {
                return error(400, "request: Field required.", Vec::new());
            };
            let len = serde_json::to_string(request).map(|s| s.len()).unwrap_or(0);
            Json(json!({"totalTokens": (len / 4).max(1)})).into_response()
        }
        "loadCodeAssist" => Json(json!({
            "currentTier": {
                "id": "standard-tier",
                "name": "Gemini Code Assist Standard",
                "description": "Unlimited coding assistant with the most powerful Gemini models",
                "userDefinedCloudaicompanionProject": true,
            },
            "allowedTiers": [{
                "id": "standard-tier",
                "name": "Gemini Code Assist Standard",
                "isDefault": true,
                "userDefinedCloudaicompanionProject": true,
            }],
            "cloudaicompanionProject": project,
            "gcpManaged": false,
        }))
        .into_response(),
        "onboardUser" => Json(json!({
            "name": format!("operations/onboard-{}", random_hex(16)),
            "done": true,
            "response": {
                "@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
                "cloudaicompanionProject": {"id": project, "name": project},
            },
        }))
        .into_response(),
        "retrieveUserQuota" => {
            let mut g = st.lock();
            match g.registry.get_mut(&account_id) {
                Some(acc) => {
                    acc.quota.roll(now);
                    Json(quota_buckets(acc)).into_response()
                }
                None => error(401, "Unknown account.", Vec::new()),
            }
        }
        "listExperiments" => Json(json!({"experimentIds": [], "flags": []})).into_response(),
        _ => Json(json!({})).into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn generate(
    st: &Shared,
    account_id: &str,
    project: &str,
    body: &Map<String, Value>,
    stream: bool,
    query: &str,
    failure: Option<InjectedFailure>,
    now: i64,
) -> Response {
    let sent_project = body
        .get("project")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if sent_project != project {
        let shown: String = sent_project.chars().take(100).collect();
        return error(
            403,
            &format!(
                "Permission 'cloudaicompanion.companions.generateChat' denied on resource '//cloudaicompanion.googleapis.com/projects/{shown}/locations/global' (or it may not exist)."
            ),
            vec![json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "IAM_PERMISSION_DENIED",
                "domain": "cloudaicompanion.googleapis.com",
                "metadata": {
                    "permission": "cloudaicompanion.companions.generateChat",
                    "resource": format!("projects/{shown}/locations/global"),
                },
            })],
        );
    }
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return error(400, "model: Field required.", Vec::new());
    };
    let Some(request) = body.get("request").and_then(Value::as_object) else {
        return error(400, "request: Field required.", Vec::new());
    };
    if !request.get("contents").is_some_and(Value::is_array) {
        return error(400, "request.contents: Field required.", Vec::new());
    }
    let (text, delta_count, delay) = {
        let mut g = st.lock();
        let g = &mut *g;
        let Some(acc) = g.registry.get_mut(account_id) else {
            return error(401, "Unknown account.", Vec::new());
        };
        let outcome = if failure.is_some() {
            acc.quota.check(now)
        } else {
            acc.quota.consume(now)
        };
        if let Err(e) = outcome {
            return json_answer(429, quota_exhausted_body(&model, e.resets_at, now));
        }
        if failure.is_none() {
            acc.turns += 1;
        }
        let text = crate::claude::reply_text(g, account_id, &model);
        let text = if wants_json(request) {
            json_text(request)
        } else {
            text
        };
        (
            text,
            g.behavior.delta_count,
            Duration::from_millis(g.behavior.event_delay_ms),
        )
    };
    let prompt_len = serde_json::to_string(request).map(|s| s.len()).unwrap_or(0);
    let usage = (
        (prompt_len as u64 / 4).max(1),
        (text.len() as u64 / 4).max(1),
    );
    let trace = random_hex(16);
    if !stream {
        // An SSE-mode failure on a unary call: the server error it stands for.
        if failure.is_some() {
            return json_answer(500, error_body_for_status(500));
        }
        return Json(envelope(&text, &model, usage, true, &trace)).into_response();
    }
    let mut chunks = stream_chunks(&text, delta_count, &model, usage, &trace);
    match failure.map(|f| f.mode) {
        Some(FailMode::SseFailed) => {
            chunks.truncate(1);
            chunks.push(error_body(500, "Internal error encountered.", Vec::new()));
        }
        Some(FailMode::SseTruncated) => {
            chunks.pop();
        }
        _ => {}
    }
    let sse = query.split('&').any(|kv| kv == "alt=sse");
    if !sse {
        return Json(Value::Array(chunks)).into_response();
    }
    let frames = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    let mut resp = frames_body(frames, delay).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    json_answer(
        status,
        json!({"error": error, "error_description": description}),
    )
}

/// `POST /google/oauth2/token` (`grant_type=refresh_token`).
async fn token(State(st): State<Shared>, req: Request) -> Response {
    let bytes = match req.extensions().get::<DecodedBody>() {
        Some(DecodedBody(Ok(b))) => b.clone(),
        _ => return oauth_error(400, "invalid_request", "Unreadable body"),
    };
    let field = |k: &str| body_field(&bytes, k).filter(|v| !v.is_empty());
    let (Some(client_id), Some(client_secret)) = (field("client_id"), field("client_secret"))
    else {
        return oauth_error(401, "invalid_client", "The OAuth client was not found.");
    };
    if field("grant_type").as_deref() != Some("refresh_token") {
        return oauth_error(400, "unsupported_grant_type", "Invalid grant_type: ");
    }
    let Some(rt) = field("refresh_token") else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: refresh_token",
        );
    };
    let invalid = || oauth_error(400, "invalid_grant", "Token has been expired or revoked.");
    let (begun, rotate) = {
        let mut g = st.lock();
        if g.registry.provider_of_refresh_token(&rt) != Some(Provider::Gemini) {
            if g.registry.owner_of_refresh_token(&rt).is_none() {
                g.registry.unknown_refresh_calls += 1;
            }
            return invalid();
        }
        let global = g.behavior.refresh_delay_ms;
        let rotate = g.behavior.google_rotates_refresh_tokens;
        let begun = g
            .registry
            .begin_refresh(&rt)
            .map(|(id, d)| (id, d.unwrap_or(global)));
        if let Ok((id, _)) = &begun {
            if let Some(acc) = g.registry.get_mut(id) {
                acc.last_client = Some((client_id, client_secret));
            }
        }
        (begun, rotate)
    };
    let delay = match begun {
        Ok((_, d)) => d,
        Err(_) => return invalid(),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let now = st.clock.now();
    let result = st.lock().registry.finish_refresh_with(&rt, now, rotate);
    match result {
        Ok(set) => {
            let mut answer = json!({
                "access_token": set.access_token,
                "expires_in": set.access_token_expires_at - now,
                "scope": crate::control::GOOGLE_SCOPES,
                "token_type": "Bearer",
                "id_token": set.id_token,
            });
            if rotate {
                answer["refresh_token"] = json!(set.refresh_token);
            }
            Json(answer).into_response()
        }
        Err(RefreshDenied::Scripted(f)) => {
            let status = f.status.unwrap_or(if f.is_permanent() { 400 } else { 500 });
            match (&f.body, f.is_permanent()) {
                (Some(b), _) => json_answer(status, b.clone()),
                (None, true) => oauth_error(
                    status,
                    "invalid_grant",
                    "Token has been expired or revoked.",
                ),
                (None, false) => oauth_error(
                    status,
                    f.error.as_deref().unwrap_or("internal_failure"),
                    "Backend Error",
                ),
            }
        }
        Err(_) => invalid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_body_has_what_gemini_cli_reads() {
        let b = quota_exhausted_body("gemini-2.5-pro", 1_000_540, 1_000_000);
        let e = &b["error"];
        assert_eq!(e["code"], 429);
        assert_eq!(e["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(e["details"][0]["reason"], "QUOTA_EXHAUSTED");
        assert_eq!(e["details"][0]["metadata"]["quotaResetDelay"], "540s");
        assert_eq!(
            e["details"][0]["metadata"]["quotaResetTimeStamp"],
            "1970-01-12T13:55:40Z"
        );
        assert_eq!(e["details"][1]["retryDelay"], "540s");
        assert!(e["details"][2]["violations"][0]["quotaId"]
            .as_str()
            .unwrap()
            .contains("PerDay"));
        assert_eq!(duration(0.539), "0.539s");
    }

    #[test]
    fn classifier_requests_get_json_text() {
        let req = json!({
            "contents": [],
            "generationConfig": {"responseJsonSchema": {
                "type": "object",
                "properties": {
                    "reasoning": {"type": "string"},
                    "model_choice": {"type": "string", "enum": ["flash", "pro"]}
                },
                "required": ["reasoning", "model_choice"]
            }}
        });
        let req = req.as_object().unwrap();
        assert!(wants_json(req));
        let v: Value = serde_json::from_str(&json_text(req)).unwrap();
        assert_eq!(v["model_choice"], "flash");
        assert!(v["reasoning"].is_string());
        let plain = json!({"contents": []});
        assert!(!wants_json(plain.as_object().unwrap()));
        let mime = json!({"generationConfig": {"responseMimeType": "application/json"}});
        let v: Value = serde_json::from_str(&json_text(mime.as_object().unwrap())).unwrap();
        assert_eq!(v["model_choice"], "flash");
    }

    #[test]
    fn stream_chunks_join_to_the_text_and_the_last_finishes() {
        let chunks = stream_chunks("Hello from Gemini", 4, "gemini-2.5-pro", (10, 4), "t");
        assert_eq!(chunks.len(), 4);
        let text: String = chunks
            .iter()
            .map(|c| {
                c["response"]["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(text, "Hello from Gemini");
        assert!(chunks[..3]
            .iter()
            .all(|c| c["response"]["candidates"][0].get("finishReason").is_none()));
        let last = &chunks[3]["response"];
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"]["totalTokenCount"], 14);
        assert_eq!(chunks[0]["traceId"], "t");
    }

    #[test]
    fn paths_and_status_names() {
        assert!(is_gemini_path("/v1internal:generateContent"));
        assert!(is_gemini_path(TOKEN_PATH));
        assert!(!is_gemini_path("/v1/messages"));
        assert_eq!(status_name(403), "PERMISSION_DENIED");
        assert_eq!(error_body_for_status(503)["error"]["status"], "UNAVAILABLE");
    }
}
