//! Admin HTTP API (axum): health, status and the request log. Loopback by default; with
//! `admin_token` set, every `/api/` route needs `Authorization: Bearer <admin token>` (`/healthz`
//! stays open for probes). It only ever shows metadata (never tokens, keys or prompts).

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::config::Secret;
use codexmesh_model::util;
use codexmesh_store::Store;

#[derive(Clone)]
struct ApiState {
    store: Store,
    health_window_secs: u64,
    /// SHA-256 of the admin token; None: no token configured.
    token_digest: Option<[u8; 32]>,
}

pub fn router(store: Store, health_window_secs: u64, admin_token: Option<&Secret>) -> Router {
    let state = ApiState {
        store,
        health_window_secs,
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
    match crate::status::build(&state.store, state.health_window_secs).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "status: store read failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": "store unavailable"})),
            )
                .into_response()
        }
    }
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
) -> Result<crate::requests::Filter, (String, String)> {
    let mut filter = crate::requests::Filter::default();
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
    use crate::requests::RequestLogError;
    let filter = match request_filter(params) {
        Ok(f) => f,
        Err((field, message)) => return bad_field(&field, &message),
    };
    match crate::requests::query(&state.store, &filter).await {
        Ok(entries) => Json(entries).into_response(),
        Err(RequestLogError::Invalid { field, message }) => bad_field(field, &message),
        Err(RequestLogError::Store(e)) => {
            tracing::error!(error = %e, "requests: store read failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": "store unavailable"})),
            )
                .into_response()
        }
    }
}
