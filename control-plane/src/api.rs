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
}

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .with_state(ApiState { store })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn status(State(state): State<ApiState>) -> Response {
    match crate::status::build(&state.store).await {
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
