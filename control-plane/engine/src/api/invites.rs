//! Invites: `POST /api/v1/pools/{pool}/invites` (the code and link shown once),
//! `GET /api/v1/invites`, `DELETE /api/v1/invites/{invite}` (revoke), and the open
//! `POST /api/v1/invites/redeem` that the invite page (`GET /invite`) calls.
//!
//! Rules: each handler is one [`crate::ops::invites`] call; the protected ones act for the
//! [`Caller`], redemption for nobody (the code is the credential) from the client address
//! `admit_client` decided (the sign-in throttle keys on it). A code appears only in the answer
//! that creates it, a key's secret only in the answer that redeems it; lists never show either.

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiState, Caller, ClientAddress, JsonBody, QueryParams, Reply};
use crate::ops::{self, invites::InviteRequest};
use codexmesh_model::invites::Invite;
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::records::{Changed, PoolKey};

/// An invite's lifetime when the request names none: 7 days.
const DEFAULT_EXPIRES_IN_SECS: i64 = 7 * 24 * 60 * 60;

/// The routes behind authentication.
pub(super) fn protected_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(list))
        .routes(routes!(revoke))
}

/// The open route: redemption.
pub(super) fn open_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(redeem))
}

/// `POST /api/v1/pools/{pool}/invites`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateInvite {
    /// A note for operators (who it is for).
    pub label: Option<String>,
    /// How many people may redeem it (1..=1000; default 1).
    pub max_uses: Option<u32>,
    /// Seconds it stays valid (60 s to 90 days; default 7 days).
    pub expires_in_secs: Option<i64>,
    /// The policy each key minted from it gets (absent: no limits).
    pub policy: Option<KeyPolicy>,
}

/// A new invite, its code and the link that carries it: the only time either is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IssuedInviteReply {
    pub invite: Invite,
    /// The invite code (`cmi_…`). Hand it (or the link) over now: it is never shown again.
    pub code: String,
    /// `<public_url>/invite#code=…`: the code in the fragment, which no server log sees.
    pub link: String,
}

/// Filters for the invite list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct InviteFilter {
    /// Only this pool's invites.
    pub pool: Option<String>,
}

/// `POST /api/v1/invites/redeem`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RedeemBody {
    /// The invite code (`cmi_…`).
    pub code: String,
    /// Your name: it becomes your key's label.
    pub name: String,
}

impl std::fmt::Debug for RedeemBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeemBody")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A redeemed invite: your key and its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RedeemedReply {
    pub key: PoolKey,
    /// The raw key (`cmk_…`). Store it now: it is never shown again.
    pub secret: String,
    /// The gateway's address as clients reach it (setting `gateway_url`); null when unknown.
    pub gateway: Option<String>,
}

/// Creates an invite to the pool; the answer holds its code and link, shown this once.
#[utoipa::path(post, path = "/api/v1/pools/{pool}/invites", tag = "invites",
    params(("pool" = String, Path, description = "Pool name")), request_body = CreateInvite,
    responses((status = 201, body = Reply<IssuedInviteReply>), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)))]
async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    JsonBody(body): JsonBody<CreateInvite>,
) -> Result<(StatusCode, Json<Reply<IssuedInviteReply>>), ApiError> {
    let expires_in_ms = body
        .expires_in_secs
        .unwrap_or(DEFAULT_EXPIRES_IN_SECS)
        .saturating_mul(1000);
    let o = ops::invites::create(
        &caller.ops(&state),
        &InviteRequest {
            pool: &pool,
            label: body.label.as_deref(),
            max_uses: body.max_uses.unwrap_or(1),
            expires_in_ms,
            policy: body.policy.unwrap_or_default(),
        },
    )
    .await?;
    let issued = o.value;
    Ok((
        StatusCode::CREATED,
        Json(Reply {
            value: IssuedInviteReply {
                invite: issued.invite,
                code: issued.code.expose().to_owned(),
                link: issued.link,
            },
            notices: o.notices,
        }),
    ))
}

/// Invites the caller sees: metadata, uses left, expiry and status (never a code).
#[utoipa::path(get, path = "/api/v1/invites", tag = "invites", params(InviteFilter),
    responses((status = 200, body = Vec<Invite>), (status = 404, body = super::ErrorBody)))]
async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<InviteFilter>,
) -> Result<Json<Vec<Invite>>, ApiError> {
    Ok(Json(
        ops::invites::list(&caller.ops(&state), q.pool.as_deref())
            .await?
            .value,
    ))
}

/// Revokes the invite: nobody can redeem it any more (keys minted from it stay).
#[utoipa::path(delete, path = "/api/v1/invites/{invite}", tag = "invites",
    params(("invite" = String, Path, description = "Invite id or label")),
    responses((status = 200, body = Reply<Changed<Invite>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(invite): Path<String>,
) -> Result<Json<Reply<Changed<Invite>>>, ApiError> {
    Ok(Json(
        ops::invites::revoke(&caller.ops(&state), &invite)
            .await?
            .into(),
    ))
}

/// Redeems an invite code for a pool key of your own (no sign-in: the code is the credential).
/// Wrong codes are throttled per client address like failed sign-ins (429 while locked).
#[utoipa::path(post, path = "/api/v1/invites/redeem", tag = "invites", request_body = RedeemBody,
    security(()),
    responses((status = 201, body = Reply<RedeemedReply>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody),
              (status = 429, body = super::ErrorBody)))]
async fn redeem(
    State(state): State<ApiState>,
    request: Request,
) -> Result<(StatusCode, Json<Reply<RedeemedReply>>), ApiError> {
    let client = request
        .extensions()
        .get::<ClientAddress>()
        .map(|c| c.0.to_string());
    let JsonBody(body) = JsonBody::<RedeemBody>::from_request(request, &state).await?;
    let ops = state.base.acting_as(state.base.access().clone(), client);
    let o = ops::invites::redeem(&ops, &body.code, &body.name).await?;
    let r = o.value;
    Ok((
        StatusCode::CREATED,
        Json(Reply {
            value: RedeemedReply {
                secret: r.secret.expose().to_owned(),
                key: r.key,
                gateway: r.gateway,
            },
            notices: o.notices,
        }),
    ))
}
