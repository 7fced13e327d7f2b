//! What operators read: the status report, quota windows with reset times, the request log
//! (filtered, paged), per-account activity, and the Envoys connected to this control plane.
//!
//! Rules: read-only; each handler is one [`crate::ops::reports`] (or registry) call for the
//! [`Caller`]; parameters are typed and unknown ones are errors.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::PoolFilter;
use super::{ApiError, ApiState, Caller, QueryParams};
use crate::envoys::EnvoyView;
use crate::ops::{self, reports::AccountQuota, reports::RequestLogEntry, reports::StatusReport};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(quota))
        .routes(routes!(requests))
        .routes(routes!(envoys))
}

/// The request log's filters and paging: newest first, `limit` entries (1-1000, default
/// 100) older than entry `before` (pass the last id of the previous page).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RequestParams {
    /// Pool name.
    pub pool: Option<String>,
    /// Account id or label.
    pub account: Option<String>,
    /// Key id or label.
    pub key: Option<String>,
    pub limit: Option<i64>,
    pub before: Option<i64>,
}

/// Pools, accounts (quota, health, counters) and key counts the caller sees.
#[utoipa::path(get, path = "/api/v1/status", tag = "reports",
    responses((status = 200, body = StatusReport)))]
async fn status(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<StatusReport>, ApiError> {
    Ok(Json(ops::reports::status(&caller.ops(&state)).await?.value))
}

/// Each account's 5-hour and weekly windows with their reset times.
#[utoipa::path(get, path = "/api/v1/quota", tag = "reports", params(PoolFilter),
    responses((status = 200, body = Vec<AccountQuota>), (status = 404, body = super::ErrorBody)))]
async fn quota(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<PoolFilter>,
) -> Result<Json<Vec<AccountQuota>>, ApiError> {
    Ok(Json(
        ops::reports::quota(&caller.ops(&state), q.pool.as_deref())
            .await?
            .value,
    ))
}

/// The request log (metadata only: never a prompt or a body), newest first.
#[utoipa::path(get, path = "/api/v1/requests", tag = "reports", params(RequestParams),
    responses((status = 200, body = Vec<RequestLogEntry>), (status = 400, body = super::ErrorBody)))]
async fn requests(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<RequestParams>,
) -> Result<Json<Vec<RequestLogEntry>>, ApiError> {
    let filter = ops::reports::Filter {
        pool: q.pool,
        account: q.account,
        key: q.key,
        limit: q.limit,
        before: q.before,
    };
    Ok(Json(
        ops::reports::requests(&caller.ops(&state), &filter)
            .await?
            .value,
    ))
}

/// The Envoys subscribed to this control plane, with the snapshot version each was sent and
/// the one its reports say it runs. (Each replica lists its own subscribers.)
#[utoipa::path(get, path = "/api/v1/envoys", tag = "reports",
    responses((status = 200, body = Vec<EnvoyView>)))]
async fn envoys(State(state): State<ApiState>, _caller: Caller) -> Json<Vec<EnvoyView>> {
    Json(state.envoys.list())
}
