//! `/api/v1/pools`: list, create, read, change routing and network (the client addresses the
//! pool's keys work from), archive and restore.
//!
//! Rules: each handler is one [`crate::ops::pools`] call for the [`Caller`]; routing changes
//! arrive as a typed JSON object whose values go through the same parser as the CLI's flags
//! (one validation for both surfaces), with errors naming the JSON field.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiState, Caller, JsonBody, Reply};
use crate::ops::{self, pools::PoolSummary, OpsError};
use codexmesh_model::network::AllowedCidrs;
use codexmesh_model::records::{Changed, Pool};
use codexmesh_model::routing::{InvalidSetting, RawRoutingFlags, RoutingPatch, RoutingView};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one))
        .routes(routes!(set_routing))
        .routes(routes!(set_network))
        .routes(routes!(archive))
        .routes(routes!(restore))
}

/// A routing setting's value: a number, a boolean or a word (`off`, `default`, `none`), as
/// the CLI flag of the same name takes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum SettingValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl SettingValue {
    fn as_flag_text(&self) -> String {
        match self {
            SettingValue::Bool(b) => b.to_string(),
            // Whole numbers without a fraction (`3`, not `3.0`): the flag parsers take both
            // for percentages and only the first for counts.
            SettingValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
                format!("{}", *n as i64)
            }
            SettingValue::Number(n) => n.to_string(),
            SettingValue::Text(t) => t.clone(),
        }
    }
}

/// A change to routing settings: only the named settings change. Values and their ranges
/// are those of `codexmesh pool set-routing` (`strategy`: quota_first, round_robin, …;
/// `primary`: an account id or label, or `none`; the thresholds in percent; `circuit_failures`,
/// `circuit_open_ms`, `cooldown_max_ms`: a number, `off` or `default`; `websockets`: on/off).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoutingBody {
    pub strategy: Option<SettingValue>,
    pub max_attempts: Option<SettingValue>,
    pub explain_routes: Option<SettingValue>,
    pub primary: Option<SettingValue>,
    pub primary_threshold: Option<SettingValue>,
    pub secondary_threshold: Option<SettingValue>,
    pub circuit_failures: Option<SettingValue>,
    pub circuit_open_ms: Option<SettingValue>,
    pub cooldown_max_ms: Option<SettingValue>,
    pub websockets: Option<SettingValue>,
}

/// The JSON field of a routing flag (`--explain` is `explain_routes` here).
fn routing_field(flag: &str) -> String {
    match flag {
        "--explain" => "explain_routes".to_owned(),
        other => other.trim_start_matches("--").replace('-', "_"),
    }
}

impl RoutingBody {
    /// The patch, parsed by the CLI's own parser; errors name the JSON field.
    pub fn patch(&self) -> Result<RoutingPatch, ApiError> {
        let text = |v: &Option<SettingValue>| v.as_ref().map(SettingValue::as_flag_text);
        let (strategy, max_attempts, explain, primary) = (
            text(&self.strategy),
            text(&self.max_attempts),
            text(&self.explain_routes),
            text(&self.primary),
        );
        let (primary_threshold, secondary_threshold) = (
            text(&self.primary_threshold),
            text(&self.secondary_threshold),
        );
        let (circuit_failures, circuit_open_ms, cooldown_max_ms, websockets) = (
            text(&self.circuit_failures),
            text(&self.circuit_open_ms),
            text(&self.cooldown_max_ms),
            text(&self.websockets),
        );
        RawRoutingFlags {
            strategy: strategy.as_deref(),
            max_attempts: max_attempts.as_deref(),
            explain: explain.as_deref(),
            primary: primary.as_deref(),
            primary_threshold: primary_threshold.as_deref(),
            secondary_threshold: secondary_threshold.as_deref(),
            circuit_failures: circuit_failures.as_deref(),
            circuit_open_ms: circuit_open_ms.as_deref(),
            cooldown_max_ms: cooldown_max_ms.as_deref(),
            websockets: websockets.as_deref(),
        }
        .parse()
        .map_err(|e: InvalidSetting| {
            ApiError::invalid(
                routing_field(e.flag),
                format!(
                    "invalid {} {:?}: expected {}",
                    routing_field(e.flag),
                    e.value,
                    e.expected
                ),
            )
        })
    }
}

/// `POST /api/v1/pools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreatePool {
    /// Lowercase letters, digits, `-` and `_`.
    pub name: String,
}

/// A pool's routing after a change (or as it is).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PoolRoutingReply {
    pub pool: Pool,
    /// The effective settings, defaults filled in.
    pub routing: RoutingView,
    pub changed: bool,
}

/// Pools the caller sees, with account and key counts.
#[utoipa::path(get, path = "/api/v1/pools", tag = "pools",
    responses((status = 200, body = Vec<PoolSummary>), (status = 401, body = super::ErrorBody)))]
async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<PoolSummary>>, ApiError> {
    Ok(Json(ops::pools::list(&caller.ops(&state)).await?.value))
}

/// Creates a pool (owners).
#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = CreatePool,
    responses((status = 201, body = Pool), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreatePool>,
) -> Result<(StatusCode, Json<Pool>), ApiError> {
    let pool = ops::pools::create(&caller.ops(&state), &body.name).await?;
    Ok((StatusCode::CREATED, Json(pool.value)))
}

/// One pool with its counts.
#[utoipa::path(get, path = "/api/v1/pools/{pool}", tag = "pools",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = PoolSummary), (status = 404, body = super::ErrorBody)))]
async fn get_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<PoolSummary>, ApiError> {
    let ops = caller.ops(&state);
    ops.see_pool(&pool)?;
    ops::pools::list(&ops)
        .await?
        .value
        .into_iter()
        .find(|p| p.pool.name == pool)
        .map(Json)
        .ok_or_else(|| {
            ApiError::from(OpsError::from(codexmesh_store::StoreError::NotFound {
                what: codexmesh_store::Entity::Pool,
                ident: pool.clone(),
                lookup: codexmesh_store::Lookup::Name,
            }))
        })
}

/// Changes the pool's routing (only the settings named); an empty object only reads it.
#[utoipa::path(patch, path = "/api/v1/pools/{pool}/routing", tag = "pools",
    params(("pool" = String, Path, description = "Pool name")), request_body = RoutingBody,
    responses((status = 200, body = Reply<PoolRoutingReply>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn set_routing(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    JsonBody(body): JsonBody<RoutingBody>,
) -> Result<Json<Reply<PoolRoutingReply>>, ApiError> {
    let patch = body.patch()?;
    let outcome = ops::pools::set_routing(&caller.ops(&state), &pool, &patch).await?;
    let notices = outcome.notices;
    let r = outcome.value;
    Ok(Json(Reply {
        value: PoolRoutingReply {
            pool: r.pool,
            routing: r.routing,
            changed: r.changed,
        },
        notices,
    }))
}

/// A change to the pool's network settings: only the named ones change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NetworkBody {
    /// The client addresses (CIDRs such as `10.0.0.0/8` or `2001:db8::/32`, or single
    /// addresses) the pool's keys work from, replacing the list; `[]` admits any address.
    /// Others get `403 client_address_not_allowed` from the gateway.
    pub allowed_cidrs: Option<Vec<String>>,
}

impl NetworkBody {
    /// The new allowlist, if named; a bad entry is an error naming it (`allowed_cidrs[1]`).
    fn allowed(&self) -> Result<Option<AllowedCidrs>, ApiError> {
        self.allowed_cidrs
            .as_ref()
            .map(|entries| {
                AllowedCidrs::parse(entries).map_err(|e| {
                    ApiError::invalid(format!("allowed_cidrs[{}]", e.index), e.to_string())
                })
            })
            .transpose()
    }
}

/// Changes the pool's network settings (only those named); an empty object only reads them.
#[utoipa::path(patch, path = "/api/v1/pools/{pool}/network", tag = "pools",
    params(("pool" = String, Path, description = "Pool name")), request_body = NetworkBody,
    responses((status = 200, body = Reply<Changed<Pool>>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn set_network(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    JsonBody(body): JsonBody<NetworkBody>,
) -> Result<Json<Reply<Changed<Pool>>>, ApiError> {
    let allowed = body.allowed()?;
    Ok(Json(
        ops::pools::set_network(&caller.ops(&state), &pool, allowed.as_ref())
            .await?
            .into(),
    ))
}

/// Archives the pool: it leaves the snapshot (its keys stop working); nothing is deleted.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/archive", tag = "pools",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = Reply<Changed<Pool>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn archive(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<Reply<Changed<Pool>>>, ApiError> {
    Ok(Json(
        ops::pools::set_archived(&caller.ops(&state), &pool, true)
            .await?
            .into(),
    ))
}

/// Serves an archived pool again.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/restore", tag = "pools",
    params(("pool" = String, Path, description = "Pool name")),
    responses((status = 200, body = Reply<Changed<Pool>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn restore(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<Json<Reply<Changed<Pool>>>, ApiError> {
    Ok(Json(
        ops::pools::set_archived(&caller.ops(&state), &pool, false)
            .await?
            .into(),
    ))
}
