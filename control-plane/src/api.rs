//! Admin HTTP API (axum): health, status and the request log. Loopback by default and without
//! authentication, so it only ever shows metadata (never tokens, keys or prompts).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::store::Store;

#[derive(Clone)]
struct ApiState {
    store: Store,
    health_window_secs: u64,
}

pub fn router(store: Store, health_window_secs: u64) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/requests", get(requests))
        .with_state(ApiState {
            store,
            health_window_secs,
        })
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
