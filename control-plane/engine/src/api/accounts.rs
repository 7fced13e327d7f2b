//! `/api/v1/accounts` and pool memberships: list, read, import a credential file upload (Codex
//! auth.json, Claude Code .credentials.json or `{"api_key"}`, Gemini CLI oauth_creds.json) into a
//! pool, pause, resume, refresh now, delete, set its egress proxy; join a pool, change priority
//! and weight there, leave it.
//!
//! Rules: each handler is one [`crate::ops::accounts`] call for the [`Caller`]; an upload is
//! the credential file itself as the JSON body, parsed by the same parser as `account import`
//! (errors name `auth_json` for a Codex file, else the field's path in the file, `provider` or
//! `project`); an account is shown with the memberships the caller sees only.

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{read_body, ApiError, ApiState, Caller, JsonBody, QueryParams, Reply};
use crate::ops::{self, accounts::Removed};
use codexmesh_model::credentials;
use codexmesh_model::records::{Account, Changed, ImportResult, Provider};

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one, remove))
        .routes(routes!(import))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(refresh))
        .routes(routes!(put_egress_proxy))
        .routes(routes!(put_membership, leave))
}

/// `?pool=`: only this pool's accounts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PoolFilter {
    /// Pool name.
    pub pool: Option<String>,
}

/// `?label=`: the new account's label (default: from the login's email).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ImportParams {
    pub label: Option<String>,
    /// `codex`, `claude` or `gemini`: the provider the file must be (default: by content).
    pub provider: Option<Provider>,
    /// Gemini: the Code Assist project (default: the file's `project_id`, else discovered).
    pub project: Option<String>,
}

/// An account's priority and weight in a pool (both optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MembershipBody {
    /// Lower is tried first by priority strategies.
    pub priority: Option<u32>,
    /// Share for weighted strategies (at least 1).
    pub weight: Option<u32>,
}

/// An account's egress proxy.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EgressProxyBody {
    /// `http://HOST:PORT` (e.g. `http://proxy.internal:3128`); `null` for direct.
    pub egress_proxy: Option<String>,
}

/// What a deletion did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RemovedReply {
    pub account: Account,
    /// The account and its tokens are gone (false: it only left the pool).
    pub deleted: bool,
}

impl From<Removed> for RemovedReply {
    fn from(r: Removed) -> Self {
        Self {
            account: r.account,
            deleted: r.deleted,
        }
    }
}

/// The account after a refresh.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RefreshedReply {
    pub account: Account,
    /// This control plane called the token endpoint (false: another had just refreshed it).
    pub by_us: bool,
}

/// Accounts the caller sees.
#[utoipa::path(get, path = "/api/v1/accounts", tag = "accounts", params(PoolFilter),
    responses((status = 200, body = Vec<Account>), (status = 404, body = super::ErrorBody)))]
async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<PoolFilter>,
) -> Result<Json<Vec<Account>>, ApiError> {
    Ok(Json(
        ops::accounts::list(&caller.ops(&state), q.pool.as_deref())
            .await?
            .value,
    ))
}

/// One account (by id or label).
#[utoipa::path(get, path = "/api/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "Account id or label")),
    responses((status = 200, body = Account), (status = 404, body = super::ErrorBody)))]
async fn get_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(
        ops::accounts::get(&caller.ops(&state), &account)
            .await?
            .value,
    ))
}

/// Deletes the account and its stored tokens from every pool (the caller must manage all of
/// them).
#[utoipa::path(delete, path = "/api/v1/accounts/{account}", tag = "accounts",
    params(("account" = String, Path, description = "Account id or label")),
    responses((status = 200, body = Reply<RemovedReply>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<Reply<RemovedReply>>, ApiError> {
    let o = ops::accounts::remove(&caller.ops(&state), &account, None).await?;
    Ok(Json(Reply {
        value: o.value.into(),
        notices: o.notices,
    }))
}

/// Imports a credential file (the file itself is the body: Codex `auth.json`, Claude Code
/// `.credentials.json` or `{"api_key":…}`, Gemini CLI `oauth_creds.json`) into the pool; a
/// login already stored gets the newer tokens and joins the pool.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/accounts", tag = "accounts",
    params(("pool" = String, Path, description = "Pool name"), ImportParams),
    request_body(content = Object, description = "The credential file's content", content_type = "application/json"),
    responses((status = 201, body = Reply<ImportResult>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody), (status = 413, body = super::ErrorBody)))]
async fn import(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    QueryParams(q): QueryParams<ImportParams>,
    request: Request,
) -> Result<(StatusCode, Json<Reply<ImportResult>>), ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(ApiError::raw(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the auth.json as the body with Content-Type: application/json".to_owned(),
            None,
        ));
    }
    let bytes = read_body(request, &state).await?;
    if bytes.len() as u64 > credentials::MAX_FILE_BYTES {
        return Err(ApiError::raw(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "an auth.json is at most {} bytes",
                credentials::MAX_FILE_BYTES
            ),
            None,
        ));
    }
    let creds =
        codexmesh_model::credential_files::parse_file(&bytes, q.provider).map_err(|source| {
            ops::OpsError::CredentialFile {
                path: "body".into(),
                source,
            }
        })?;
    let creds = ops::accounts::with_project(creds, q.project.as_deref())?;
    let o = ops::accounts::import(&caller.ops(&state), &creds, &pool, q.label.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(o.into())))
}

/// Stops routing to the account (in every pool it serves).
#[utoipa::path(post, path = "/api/v1/accounts/{account}/pause", tag = "accounts",
    params(("account" = String, Path, description = "Account id or label")),
    responses((status = 200, body = Reply<Changed<Account>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn pause(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<Reply<Changed<Account>>>, ApiError> {
    Ok(Json(
        ops::accounts::pause(&caller.ops(&state), &account)
            .await?
            .into(),
    ))
}

/// Routes to a paused account again.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/resume", tag = "accounts",
    params(("account" = String, Path, description = "Account id or label")),
    responses((status = 200, body = Reply<Changed<Account>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn resume(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<Reply<Changed<Account>>>, ApiError> {
    Ok(Json(
        ops::accounts::resume(&caller.ops(&state), &account)
            .await?
            .into(),
    ))
}

/// Refreshes the account's access token now (single-flight with every replica).
#[utoipa::path(post, path = "/api/v1/accounts/{account}/refresh", tag = "accounts",
    params(("account" = String, Path, description = "Account id or label")),
    responses((status = 200, body = Reply<RefreshedReply>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody),
              (status = 502, body = super::ErrorBody)))]
async fn refresh(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
) -> Result<Json<Reply<RefreshedReply>>, ApiError> {
    let o = ops::accounts::refresh(&caller.ops(&state), &account).await?;
    Ok(Json(Reply {
        value: RefreshedReply {
            account: o.value.account,
            by_us: o.value.by_us,
        },
        notices: o.notices,
    }))
}

/// Sets or (with `null`) clears the account's egress proxy: its token refresh, quota polls and
/// warm-up go through that HTTP proxy (CONNECT), never directly while it is set.
#[utoipa::path(put, path = "/api/v1/accounts/{account}/egress_proxy", tag = "accounts",
    params(("account" = String, Path, description = "Account id or label")),
    request_body = EgressProxyBody,
    responses((status = 200, body = Reply<Changed<Account>>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn put_egress_proxy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(account): Path<String>,
    JsonBody(body): JsonBody<EgressProxyBody>,
) -> Result<Json<Reply<Changed<Account>>>, ApiError> {
    Ok(Json(
        ops::accounts::set_egress_proxy(
            &caller.ops(&state),
            &account,
            body.egress_proxy.as_deref(),
        )
        .await?
        .into(),
    ))
}

/// Adds the account to the pool, or changes its priority/weight there when it is a member.
#[utoipa::path(put, path = "/api/v1/pools/{pool}/accounts/{account}", tag = "accounts",
    params(("pool" = String, Path, description = "Pool name"),
           ("account" = String, Path, description = "Account id or label")),
    request_body = MembershipBody,
    responses((status = 200, body = Reply<Changed<Account>>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn put_membership(
    State(state): State<ApiState>,
    caller: Caller,
    Path((pool, account)): Path<(String, String)>,
    JsonBody(body): JsonBody<MembershipBody>,
) -> Result<Json<Reply<Changed<Account>>>, ApiError> {
    Ok(Json(
        ops::accounts::put_membership(
            &caller.ops(&state),
            &account,
            &pool,
            body.priority,
            body.weight,
        )
        .await?
        .into(),
    ))
}

/// Takes the account out of the pool (deleting it when that was its last pool).
#[utoipa::path(delete, path = "/api/v1/pools/{pool}/accounts/{account}", tag = "accounts",
    params(("pool" = String, Path, description = "Pool name"),
           ("account" = String, Path, description = "Account id or label")),
    responses((status = 200, body = Reply<RemovedReply>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn leave(
    State(state): State<ApiState>,
    caller: Caller,
    Path((pool, account)): Path<(String, String)>,
) -> Result<Json<Reply<RemovedReply>>, ApiError> {
    let o = ops::accounts::remove(&caller.ops(&state), &account, Some(&pool)).await?;
    Ok(Json(Reply {
        value: o.value.into(),
        notices: o.notices,
    }))
}
