//! Admin HTTP API (axum). Minimal for now: health and status. Loopback by default and without
//! authentication, so it only ever shows metadata (never tokens or keys).

use axum::extract::State;
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
