//! JSON error answers in the shapes the upstream uses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Any status with a JSON body.
pub fn json_status(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// FastAPI-style `{"detail": "..."}` (what the Codex backend uses for validation errors).
pub fn detail(status: u16, message: &str) -> Response {
    json_status(status, json!({ "detail": message }))
}

/// OpenAI-style `{"error": {"message", "type", "param", "code"}}`.
pub fn openai_error(status: u16, code: &str, kind: &str, message: &str) -> Response {
    json_status(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

/// The 401 for a missing, unknown, expired or revoked access token.
pub fn invalid_api_key(message: &str) -> Response {
    openai_error(401, "invalid_api_key", "invalid_request_error", message)
}
