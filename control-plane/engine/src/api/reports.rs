//! What operators read: the status report, quota windows with reset times (and a refresh-now
//! of a pool's), the request log (filtered, paged), per-account activity, and the Envoys
//! connected to this control plane.
//!
//! Rules: read-only but for the quota refresh, which writes only quota evidence (see
//! [`crate::ops::reports::refresh_quota`]); each handler is one [`crate::ops::reports`] (or registry) call for the
//! [`Caller`]; parameters are typed and unknown ones are errors.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::PoolFilter;
use super::{ApiError, ApiState, Caller, QueryParams, Reply};
use crate::envoys::EnvoyView;
use crate::ops;
use crate::ops::activity::ActivityRequest;
use crate::ops::overview::Overview;
use crate::ops::reports::{AccountQuota, QuotaRefresh, RequestLogEntry, StatusReport};
use codexmesh_model::activity::Activity;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(quota))
        .routes(routes!(refresh_quota))
        .routes(routes!(overview))
        .routes(routes!(requests))
        .routes(routes!(envoys))
        .routes(routes!(gateway))
        .routes(routes!(activity))
        .routes(routes!(pool_activity))
        .routes(routes!(account_activity))
}

/// The activity window: `since` (a duration: `1h`, `24h`, `7d`; default 24h, at most 30 days)
/// cut into buckets of `bucket` (default: a 48th of the window, whole minutes).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WindowParams {
    pub since: Option<String>,
    pub bucket: Option<String>,
}

/// Activity of every pool the caller sees, per account: requests, success rate, health score,
/// fallbacks, latency percentiles and a timeline.
#[utoipa::path(get, path = "/api/v1/activity", tag = "reports", params(ActivityRequest),
    responses((status = 200, body = Reply<Activity>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn activity(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<ActivityRequest>,
) -> Result<Json<Reply<Activity>>, ApiError> {
    Ok(Json(
        ops::activity::activity(&caller.ops(&state), &q)
            .await?
            .into(),
    ))
}

/// One pool's activity, per account and in total.
#[utoipa::path(get, path = "/api/v1/pools/{pool}/activity", tag = "reports",
    params(("pool" = String, Path, description = "Pool name"), WindowParams),
    responses((status = 200, body = Reply<Activity>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn pool_activity(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    QueryParams(w): QueryParams<WindowParams>,
) -> Result<Json<Reply<Activity>>, ApiError> {
    let q = ActivityRequest {
        pool: Some(pool),
        account: None,
        since: w.since,
        bucket: w.bucket,
    };
    Ok(Json(
        ops::activity::activity(&caller.ops(&state), &q)
            .await?
            .into(),
    ))
}

/// One account's activity (in the pools the caller sees).
#[utoipa::path(get, path = "/api/v1/accounts/{account}/activity", tag = "reports",
    params(("account" = String, Path, description = "Account id or label"), WindowParams),
    responses((status = 200, body = Reply<Activity>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn account_activity(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
    QueryParams(w): QueryParams<WindowParams>,
) -> Result<Json<Reply<Activity>>, ApiError> {
    let q = ActivityRequest {
        pool: None,
        account: Some(account),
        since: w.since,
        bucket: w.bucket,
    };
    Ok(Json(
        ops::activity::activity(&caller.ops(&state), &q)
            .await?
            .into(),
    ))
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
    /// `true`: only attempts that did not succeed (status outside 2xx, or a reset).
    pub failed: Option<bool>,
    /// Only entries received at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
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
        failed: q.failed.unwrap_or(false),
        since_ms: q.since_ms,
    };
    Ok(Json(
        ops::reports::requests(&caller.ops(&state), &filter)
            .await?
            .value,
    ))
}

/// The Envoys subscribed to this control plane, with the snapshot version each was sent and
/// the one its reports say it runs (each replica lists its own subscribers), and every node
/// the store has a snapshot verdict from (`connected: false` when not subscribed here): the
/// last version its filter accepted (ACK) and the last it rejected (NACK) with the reason.
#[utoipa::path(get, path = "/api/v1/envoys", tag = "reports",
    responses((status = 200, body = Vec<EnvoyView>)))]
async fn envoys(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<EnvoyView>>, ApiError> {
    Ok(Json(
        ops::reports::envoys(&caller.ops(&state), state.envoys.list())
            .await?
            .value,
    ))
}

/// Polls the pool's account usage now (at most once per pool every 10 s; within that, the
/// stored evidence) and returns the pool's quota rows. Whoever sees the pool may: it changes
/// nothing but quota evidence.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/quota/refresh", tag = "reports",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = Reply<QuotaRefresh>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn refresh_quota(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<Reply<QuotaRefresh>>, ApiError> {
    Ok(Json(
        ops::reports::refresh_quota(&caller.ops(&state), &pool)
            .await?
            .into(),
    ))
}

/// Every pool the caller sees at a glance: accounts by state, the combined headroom of the
/// 5-hour and weekly windows (weighted mean of what is left over active accounts, and the next
/// reset), and the last hour's requests, errors and failovers.
#[utoipa::path(get, path = "/api/v1/overview", tag = "reports",
    responses((status = 200, body = Reply<Overview>)))]
async fn overview(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Reply<Overview>>, ApiError> {
    Ok(Json(
        ops::overview::overview(&caller.ops(&state)).await?.into(),
    ))
}

/// Where clients reach the gateway (setting `gateway_url`), for the client snippets a new key
/// comes with.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct GatewayView {
    /// The gateway's base URL as clients reach it; null when not configured.
    pub url: Option<String>,
}

/// The gateway's address as clients reach it (setting `gateway_url`; `up` sets its Envoy's).
#[utoipa::path(get, path = "/api/v1/gateway", tag = "reports",
    responses((status = 200, body = GatewayView)))]
async fn gateway(State(state): State<ApiState>, _caller: Caller) -> Json<GatewayView> {
    let url = state.base.settings().gateway_url.trim();
    Json(GatewayView {
        url: (!url.is_empty()).then(|| url.trim_end_matches('/').to_owned()),
    })
}
