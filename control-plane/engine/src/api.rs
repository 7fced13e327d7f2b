//! Admin HTTP API (axum): health, status and the request log. Loopback by default; with
//! `admin_token` set, every `/api/` route needs `Authorization: Bearer <admin token>` (`/healthz`
//! stays open for probes). It only ever shows metadata (never tokens, keys or prompts).
//!
//! Rules: a handler parses its HTTP input, calls a use case in [`crate::ops`] and renders its
//! result; no workflow is written here. Every failure goes through [`error_response`], which
//! maps an [`OpsError`]'s kind to one status code.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::config::Secret;
use crate::ops::{self, ErrorKind, Ops, OpsError};
use codexmesh_model::util;

#[derive(Clone)]
struct ApiState {
    ops: Arc<Ops>,
    /// SHA-256 of the admin token; None: no token configured.
    token_digest: Option<[u8; 32]>,
}

pub(crate) fn router(ops: Ops, admin_token: Option<&Secret>) -> Router {
    let state = ApiState {
        ops: Arc::new(ops),
        token_digest: admin_token.map(|t| util::token_digest(t.expose())),
    };
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/requests", get(requests))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .with_state(state)
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(digest) = &state.token_digest {
        let presented = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !util::bearer_matches(presented, digest) {
            return (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({"error": {
                    "message": "missing or wrong admin token (Authorization: Bearer <admin token>)"
                }})),
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn status(State(state): State<ApiState>) -> Response {
    match ops::reports::status(&state.ops).await {
        Ok(outcome) => Json(outcome.value).into_response(),
        Err(e) => error_response("status", &e),
    }
}

/// The one place an [`OpsError`] becomes an HTTP answer: invalid input 400 (naming the field
/// when known), not found 404, conflict 409, upstream 502, store unavailable 503, else 500.
fn error_response(what: &str, e: &OpsError) -> Response {
    let kind = e.kind();
    let status = match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    };
    let body = match kind {
        ErrorKind::Invalid => match e.field() {
            Some(field) => {
                let message = match e {
                    // The field is in its own member: the message without the prefix.
                    OpsError::RequestLog(ops::RequestLogError::Invalid { message, .. }) => {
                        message.clone()
                    }
                    other => other.to_string(),
                };
                serde_json::json!({"error": {"field": field, "message": message}})
            }
            None => serde_json::json!({"error": {"message": e.to_string()}}),
        },
        ErrorKind::NotFound
        | ErrorKind::Conflict
        | ErrorKind::Upstream
        | ErrorKind::Unauthenticated
        | ErrorKind::Forbidden
        | ErrorKind::RateLimited => {
            serde_json::json!({"error": {"message": e.to_string()}})
        }
        ErrorKind::Unavailable => {
            tracing::error!(error = %e, "{what}: store read failed");
            serde_json::json!({"error": "store unavailable"})
        }
        ErrorKind::Internal => {
            tracing::error!(error = %e, "{what} failed");
            serde_json::json!({"error": {"message": "internal error"}})
        }
    };
    (status, Json(body)).into_response()
}

/// A 400 naming the query parameter at fault.
fn bad_field(field: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": {"field": field, "message": message}})),
    )
        .into_response()
}

/// Reads the request-log query; Err names the parameter at fault and why.
fn request_filter(
    params: HashMap<String, String>,
) -> Result<ops::reports::Filter, (String, String)> {
    let mut filter = ops::reports::Filter::default();
    for (name, value) in params {
        let number = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| (name.clone(), format!("{value:?} is not a whole number")))
        };
        match name.as_str() {
            "pool" => filter.pool = Some(value.clone()),
            "account" => filter.account = Some(value.clone()),
            "key" => filter.key = Some(value.clone()),
            "limit" => filter.limit = Some(number()?),
            "before" => filter.before = Some(number()?),
            _ => {
                return Err((
                    name.clone(),
                    "unknown parameter (pool, account, key, limit, before)".to_owned(),
                ))
            }
        }
    }
    Ok(filter)
}

/// `GET /api/v1/requests?pool=&account=&key=&limit=&before=`: the request log, newest first.
async fn requests(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filter = match request_filter(params) {
        Ok(f) => f,
        Err((field, message)) => return bad_field(&field, &message),
    };
    match ops::reports::requests(&state.ops, &filter).await {
        Ok(outcome) => Json(outcome.value).into_response(),
        Err(e) => error_response("requests", &e),
    }
}
