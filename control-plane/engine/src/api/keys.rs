//! `/api/v1/keys`: list, create (the raw key shown once), read, rotate (a new secret shown
//! once), revoke, a key's own routing, and its policy (`GET`/`PUT /api/v1/keys/{key}/policy`;
//! `{}` clears it).
//!
//! Rules: each handler is one [`crate::ops::keys`] call for the [`Caller`]; a raw key appears
//! only in the answer that creates or rotates it (never in a list, a read, a log or the audit).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::PoolFilter;
use super::pools::{RoutingBody, SettingValue};
use super::{ApiError, ApiState, Caller, JsonBody, QueryParams, Reply};
use crate::ops::{self, keys::IssuedKey};
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::records::{Changed, Pool, PoolKey};
use codexmesh_model::routing::{RoutingPatch, RoutingView};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(create))
        .routes(routes!(get_one))
        .routes(routes!(rotate))
        .routes(routes!(revoke))
        .routes(routes!(set_routing))
        .routes(routes!(get_policy, put_policy))
}

/// `POST /api/v1/pools/{pool}/keys`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    /// Default: `key-N`.
    pub label: Option<String>,
    /// An operator's key: its answers may carry route explanations.
    #[serde(default)]
    pub operator: bool,
    /// The key's limits (absent or `{}`: none).
    pub policy: Option<KeyPolicy>,
}

/// A policy body, its faults named `policy.<field>` as the ops check names them.
fn policy_from_json(body: serde_json::Value) -> Result<KeyPolicy, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = match super::field_path(&path, &message).as_str() {
            "body" => "policy".to_owned(),
            f => format!("policy.{f}"),
        };
        ApiError::invalid(field, message)
    })
}

/// A key and its secret: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IssuedKeyReply {
    pub key: PoolKey,
    /// The raw key (`cmk_…`). Store it now: it is never shown again.
    pub secret: String,
}

impl From<IssuedKey> for IssuedKeyReply {
    fn from(k: IssuedKey) -> Self {
        Self {
            secret: k.secret.expose().to_owned(),
            key: k.key,
        }
    }
}

/// A key's own routing: `inherit: true` makes it follow its pool again; otherwise the named
/// settings (as for a pool) apply on top of the pool's current ones. Neither: only reads it.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRoutingBody {
    #[serde(default)]
    pub inherit: bool,
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

impl KeyRoutingBody {
    fn patch(self) -> Result<(bool, RoutingPatch), ApiError> {
        let routing = RoutingBody {
            strategy: self.strategy,
            max_attempts: self.max_attempts,
            explain_routes: self.explain_routes,
            primary: self.primary,
            primary_threshold: self.primary_threshold,
            secondary_threshold: self.secondary_threshold,
            circuit_failures: self.circuit_failures,
            circuit_open_ms: self.circuit_open_ms,
            cooldown_max_ms: self.cooldown_max_ms,
            websockets: self.websockets,
        };
        Ok((self.inherit, routing.patch()?))
    }
}

/// A key's effective routing.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct KeyRoutingReply {
    pub key: PoolKey,
    pub pool: Pool,
    pub routing: RoutingView,
    pub changed: bool,
}

/// Keys the caller sees (never their secrets).
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(PoolFilter),
    responses((status = 200, body = Vec<PoolKey>), (status = 404, body = super::ErrorBody)))]
async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<PoolFilter>,
) -> Result<Json<Vec<PoolKey>>, ApiError> {
    Ok(Json(
        ops::keys::list(&caller.ops(&state), q.pool.as_deref())
            .await?
            .value,
    ))
}

/// Creates a key for the pool; the answer holds its secret, shown this once.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/keys", tag = "keys",
    params(("pool" = String, Path, description = "Pool name")), request_body = CreateKey,
    responses((status = 201, body = Reply<IssuedKeyReply>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<Reply<IssuedKeyReply>>), ApiError> {
    let o = ops::keys::issue_with_policy(
        &caller.ops(&state),
        &pool,
        body.label.as_deref(),
        body.operator,
        body.policy.as_ref(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Reply {
            value: o.value.into(),
            notices: o.notices,
        }),
    ))
}

/// One key (by id or label).
#[utoipa::path(get, path = "/api/v1/keys/{key}", tag = "keys",
    params(("key" = String, Path, description = "Key id or label")),
    responses((status = 200, body = PoolKey), (status = 404, body = super::ErrorBody)))]
async fn get_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<PoolKey>, ApiError> {
    Ok(Json(ops::keys::get(&caller.ops(&state), &key).await?.value))
}

/// Gives the key a new secret (same id, label and routing); the old one stops working.
#[utoipa::path(post, path = "/api/v1/keys/{key}/rotate", tag = "keys",
    params(("key" = String, Path, description = "Key id or label")),
    responses((status = 200, body = Reply<IssuedKeyReply>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn rotate(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Reply<IssuedKeyReply>>, ApiError> {
    let o = ops::keys::rotate(&caller.ops(&state), &key).await?;
    Ok(Json(Reply {
        value: o.value.into(),
        notices: o.notices,
    }))
}

/// Revokes the key (its requests are refused from the next snapshot on).
#[utoipa::path(post, path = "/api/v1/keys/{key}/revoke", tag = "keys",
    params(("key" = String, Path, description = "Key id or label")),
    responses((status = 200, body = Reply<Changed<PoolKey>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Reply<Changed<PoolKey>>>, ApiError> {
    Ok(Json(
        ops::keys::revoke(&caller.ops(&state), &key).await?.into(),
    ))
}

/// Gives the key its own routing, makes it inherit its pool's, or (empty object) reads it.
#[utoipa::path(patch, path = "/api/v1/keys/{key}/routing", tag = "keys",
    params(("key" = String, Path, description = "Key id or label")), request_body = KeyRoutingBody,
    responses((status = 200, body = Reply<KeyRoutingReply>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn set_routing(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<KeyRoutingBody>,
) -> Result<Json<Reply<KeyRoutingReply>>, ApiError> {
    let (inherit, patch) = body.patch()?;
    let o = ops::keys::set_routing(&caller.ops(&state), &key, inherit, &patch).await?;
    let r = o.value;
    Ok(Json(Reply {
        value: KeyRoutingReply {
            key: r.key,
            pool: r.pool,
            routing: r.routing,
            changed: r.changed,
        },
        notices: o.notices,
    }))
}

/// The key's policy (`{}`: none).
#[utoipa::path(get, path = "/api/v1/keys/{key}/policy", tag = "keys",
    params(("key" = String, Path, description = "Key id or label")),
    responses((status = 200, body = KeyPolicy), (status = 404, body = super::ErrorBody)))]
async fn get_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<KeyPolicy>, ApiError> {
    let key = ops::keys::get(&caller.ops(&state), &key).await?.value;
    Ok(Json(key.policy.unwrap_or_default()))
}

/// Replaces the key's policy with the body (`{}` clears it); the answer is the key.
#[utoipa::path(put, path = "/api/v1/keys/{key}/policy", tag = "keys",
    params(("key" = String, Path, description = "Key id or label")), request_body = KeyPolicy,
    responses((status = 200, body = Reply<Changed<PoolKey>>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn put_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<Reply<Changed<PoolKey>>>, ApiError> {
    let policy = policy_from_json(body)?;
    Ok(Json(
        ops::keys::set_policy(&caller.ops(&state), &key, &policy)
            .await?
            .into(),
    ))
}
