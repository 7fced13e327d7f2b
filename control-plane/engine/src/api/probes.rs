//! What monitoring reads on the admin listener, outside `/api/v1`: `GET /metrics` (Prometheus,
//! OpenMetrics text) and `GET /readyz` (Kubernetes readiness; `/healthz`, liveness, is in
//! [`super::router`]).
//!
//! Rules this module keeps:
//! - `/metrics` names every pool and account, so it needs a caller (as every protected route:
//!   401 without one) whose access covers every pool the newest snapshot holds: an owner, or a
//!   principal assigned to all of them; anyone else gets 403 in the API's error shape;
//! - `/readyz` is open and says nothing about tenants: 200 `{"status": "ready"}`, or 503 with
//!   `{"status": "not_ready", "reason", "message"}` ([`crate::metrics::readiness`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, ApiState, Caller};
use crate::metrics::{self, NotReady, READY_STORE_TIMEOUT};
use crate::ops::ErrorKind;
use codexmesh_model::operators::Access;
use codexmesh_proto::v1 as pb;

pub(super) fn routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route(
            "/metrics",
            get(scrape).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                super::authenticate,
            )),
        )
        .route("/readyz", get(readyz))
}

/// Whether `access` sees every pool of `snapshot` (so every label `/metrics` shows).
fn covers_every_pool(access: &Access, snapshot: &pb::Snapshot) -> bool {
    access.role.sees_all_pools() || snapshot.pools.iter().all(|p| access.sees_pool(&p.name))
}

async fn scrape(State(state): State<ApiState>, caller: Caller) -> Response {
    let snapshot = state.live.snapshots.borrow().clone();
    if !covers_every_pool(&caller.access, &snapshot) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::Forbidden,
            "/metrics names every pool and account: it needs an owner, or an operator or API \
             token assigned to every pool",
        )
        .into_response();
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let snapshot = state.live.snapshots.borrow().clone();
    let shutting_down = state.live.shutdown.is_cancelled();
    let ready = match state.base.store().await {
        Ok(store) => metrics::readiness(store, &snapshot, shutting_down, READY_STORE_TIMEOUT).await,
        Err(_) => Err(NotReady::StoreUnavailable),
    };
    match ready {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "reason": why.code(),
                "message": why.to_string(),
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_model::operators::{Principal, Role};

    fn access(role: Role, pools: &[&str]) -> Access {
        Access {
            principal: Principal::Token {
                id: "t".into(),
                label: "prom".into(),
            },
            role,
            pools: pools.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn metrics_need_every_pool() {
        let snapshot = pb::Snapshot {
            pools: ["a", "b"]
                .iter()
                .map(|n| pb::Pool {
                    name: (*n).into(),
                    ..pb::Pool::default()
                })
                .collect(),
            ..pb::Snapshot::default()
        };
        assert!(covers_every_pool(&access(Role::Owner, &[]), &snapshot));
        assert!(covers_every_pool(
            &access(Role::Viewer, &["a", "b"]),
            &snapshot
        ));
        assert!(!covers_every_pool(&access(Role::Admin, &["a"]), &snapshot));
        assert!(!covers_every_pool(&access(Role::Viewer, &[]), &snapshot));
    }
}
