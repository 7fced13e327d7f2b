//! `/api/v1/alerts` (webhooks and episodes), `/api/v1/pools/{pool}/forecast` and
//! `/api/v1/pools/{pool}/warmup`.
//!
//! Rules: each handler is one [`crate::ops::alerts`] or [`crate::ops::forecast`] call for the
//! [`Caller`]; a webhook's signing secret appears only in the answer that creates it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiState, Caller, JsonBody, QueryParams, Reply};
use crate::ops::warmup::{WarmupChange, WarmupView};
use crate::ops::{self, alerts::NewWebhook, alerts::WebhookTest, forecast::PoolForecast};
use codexmesh_model::alerts::{Episode, Webhook};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(forecast))
        .routes(routes!(list_webhooks, add_webhook))
        .routes(routes!(remove_webhook))
        .routes(routes!(test_webhook))
        .routes(routes!(episodes))
        .routes(routes!(get_warmup, set_warmup))
}

/// `PUT /api/v1/pools/{pool}/warmup`: `{"at": "07:30", "weekdays": "mon-fri"}` turns it on,
/// `{"enabled": false}` off (keeping the time).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WarmupBody {
    /// `HH:MM`, UTC. Needed to turn it on.
    pub at: Option<String>,
    /// `mon-fri`, `sat,sun`, `all` (default).
    pub weekdays: Option<String>,
    /// False turns it off (default true).
    pub enabled: Option<bool>,
}

/// The pool's warm-up schedule.
#[utoipa::path(get, path = "/api/v1/pools/{pool}/warmup", tag = "alerts",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = WarmupView), (status = 404, body = super::ErrorBody)))]
async fn get_warmup(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<WarmupView>, ApiError> {
    Ok(Json(
        ops::warmup::get(&caller.ops(&state), &pool).await?.value,
    ))
}

/// Sets the pool's warm-up: one minimal request per active account at that UTC time.
#[utoipa::path(put, path = "/api/v1/pools/{pool}/warmup", tag = "alerts",
    params(("pool" = String, Path, description = "Pool name")), request_body = WarmupBody,
    responses((status = 200, body = Reply<WarmupView>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn set_warmup(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    JsonBody(body): JsonBody<WarmupBody>,
) -> Result<Json<Reply<WarmupView>>, ApiError> {
    let change = if body.enabled == Some(false) {
        WarmupChange::Off
    } else {
        WarmupChange::On {
            at: body.at.ok_or_else(|| {
                ApiError::from(crate::ops::OpsError::Invalid {
                    field: "at",
                    message: "at (HH:MM, UTC) is required to turn warm-up on".into(),
                })
            })?,
            weekdays: body.weekdays,
        }
    };
    Ok(Json(
        ops::warmup::set(&caller.ops(&state), &pool, &change)
            .await?
            .into(),
    ))
}

/// When the pool's 5-hour and weekly windows run out at the current burn rate.
#[utoipa::path(get, path = "/api/v1/pools/{pool}/forecast", tag = "alerts",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = PoolForecast), (status = 404, body = super::ErrorBody)))]
async fn forecast(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<PoolForecast>, ApiError> {
    Ok(Json(
        ops::forecast::forecast(&caller.ops(&state), &pool)
            .await?
            .value,
    ))
}

/// The webhooks the caller sees (a webhook without a pool: owners only).
#[utoipa::path(get, path = "/api/v1/alerts/webhooks", tag = "alerts",
    responses((status = 200, body = Vec<Webhook>)))]
async fn list_webhooks(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<Webhook>>, ApiError> {
    Ok(Json(
        ops::alerts::list_webhooks(&caller.ops(&state)).await?.value,
    ))
}

/// `POST /api/v1/alerts/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AddWebhook {
    /// A label for the webhook (unique).
    pub name: String,
    /// `http://` or `https://`; deliveries are POSTed here.
    pub url: String,
    /// Only this pool's alerts (omitted: every pool's; owners only).
    pub pool: Option<String>,
}

/// Adds a webhook; the answer holds its signing secret (`whsec_…`), shown this once.
#[utoipa::path(post, path = "/api/v1/alerts/webhooks", tag = "alerts", request_body = AddWebhook,
    responses((status = 201, body = Reply<NewWebhook>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
async fn add_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<AddWebhook>,
) -> Result<(StatusCode, Json<Reply<NewWebhook>>), ApiError> {
    let o = ops::alerts::add_webhook(
        &caller.ops(&state),
        &body.name,
        &body.url,
        body.pool.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(o.into())))
}

/// Removes a webhook (id or name).
#[utoipa::path(delete, path = "/api/v1/alerts/webhooks/{webhook}", tag = "alerts",
    params(("webhook" = String, Path, description = "Webhook id or name")),
    responses((status = 200, body = Reply<Webhook>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn remove_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    Path(webhook): Path<String>,
) -> Result<Json<Reply<Webhook>>, ApiError> {
    Ok(Json(
        ops::alerts::remove_webhook(&caller.ops(&state), &webhook)
            .await?
            .into(),
    ))
}

/// Sends a signed test delivery to the webhook now.
#[utoipa::path(post, path = "/api/v1/alerts/webhooks/{webhook}/test", tag = "alerts",
    params(("webhook" = String, Path, description = "Webhook id or name")),
    responses((status = 200, body = Reply<WebhookTest>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn test_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    Path(webhook): Path<String>,
) -> Result<Json<Reply<WebhookTest>>, ApiError> {
    Ok(Json(
        ops::alerts::test_webhook(&caller.ops(&state), &webhook)
            .await?
            .into(),
    ))
}

/// `?open=true&limit=N`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EpisodeParams {
    /// Only episodes still firing.
    pub open: Option<bool>,
    /// At most this many (1..=500, default 100).
    pub limit: Option<i64>,
}

/// Alert episodes about the caller's pools (and the Envoys), newest first.
#[utoipa::path(get, path = "/api/v1/alerts/episodes", tag = "alerts", params(EpisodeParams),
    responses((status = 200, body = Vec<Episode>), (status = 400, body = super::ErrorBody)))]
async fn episodes(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<EpisodeParams>,
) -> Result<Json<Vec<Episode>>, ApiError> {
    Ok(Json(
        ops::alerts::episodes(&caller.ops(&state), q.open.unwrap_or(false), q.limit)
            .await?
            .value,
    ))
}
