//! Sessions, the first owner, operators, API tokens, the caller's own second factor, and the
//! audit log.
//!
//! Rules: each handler is one [`crate::ops::operators`] call for the [`Caller`]; sign-in sets
//! the session cookie (HttpOnly, SameSite=Strict, Secure when the page is HTTPS) and returns the
//! same token and its CSRF token in the body (for clients that send `Authorization: Bearer`);
//! a password, TOTP code or token is never echoed, except the one answer that creates an API
//! token. The open routes (sign-in, bootstrap) act with no principal: the use case checks the
//! credentials it is given, and the audit log names the client address.

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    csrf_token_for, ApiError, ApiState, Caller, JsonBody, QueryParams, Reply, CSRF_COOKIE,
    SESSION_COOKIE,
};
use crate::ops::{self, Ops, OpsError};
use codexmesh_model::operators::{Access, ApiToken, Operator, Principal, Role};
use codexmesh_model::records::{AuditEntry, Changed};
use codexmesh_store::AuditFilter;

/// The open routes: sign-in and the first owner.
pub(super) fn open_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(sign_in))
        .routes(routes!(bootstrap))
}

/// The routes behind authentication.
pub(super) fn protected_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(sign_out))
        .routes(routes!(me))
        .routes(routes!(totp_enroll, totp_disable))
        .routes(routes!(totp_confirm))
        .routes(routes!(list_operators, create_operator))
        .routes(routes!(get_operator))
        .routes(routes!(set_role))
        .routes(routes!(assign_pools))
        .routes(routes!(disable_operator))
        .routes(routes!(enable_operator))
        .routes(routes!(set_password))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(audit))
}

/// A session token's principal, and whether it may only set up its second factor.
pub(super) async fn verify_session(base: &Ops, token: &str) -> Result<(Access, bool), OpsError> {
    let session = ops::operators::verify_session(base, token).await?;
    Ok((session.access, session.totp_setup_only))
}

/// What a session restricted to setting up TOTP may call.
pub(super) fn allowed_during_totp_setup(method: &Method, uri: &Uri) -> bool {
    matches!(
        (method, uri.path()),
        (&Method::POST, "/api/v1/me/totp")
            | (&Method::POST, "/api/v1/me/totp/confirm")
            | (&Method::DELETE, "/api/v1/session")
            | (&Method::GET, "/api/v1/me")
    )
}

/// The use-case context of an open route: no principal, the client's address for the audit
/// log and the sign-in throttle.
fn anonymous(state: &ApiState, request_client: Option<String>) -> Ops {
    state
        .base
        .acting_as(state.base.access().clone(), request_client)
}

/// The client address `admit_client` decided (the sign-in throttle keys on it).
fn client_of(client: Option<&super::ClientAddress>) -> Option<String> {
    client.map(|c| c.0.to_string())
}

/// The operator id of an operator caller; API tokens have no "me" to change.
fn my_operator_id(caller: &Caller) -> Result<&str, ApiError> {
    match &caller.access.principal {
        Principal::Operator { id, .. } => Ok(id),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ops::ErrorKind::Forbidden,
            "only a signed-in operator has a second factor; API tokens do not",
        )),
    }
}

/// `POST /api/v1/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignInBody {
    pub name: String,
    pub password: String,
    /// The current TOTP code, when the operator has a second factor.
    pub totp: Option<String>,
}

impl std::fmt::Debug for SignInBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInBody")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionReply {
    pub operator: Operator,
    /// For `Authorization: Bearer` (the cookie carries the same session).
    pub token: String,
    /// Send as `X-CSRF-Token` on every change made with the cookie.
    pub csrf_token: String,
    pub expires_at_ms: i64,
    /// The session may only set up a second factor (`require_totp`).
    pub totp_setup_required: bool,
}

/// Whether cookies should be `Secure`: the page that signs in is served over HTTPS (its
/// `Origin`), or a TLS-terminating proxy says so.
fn secure_context(headers: &HeaderMap) -> bool {
    let origin_https = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let proxied_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    origin_https || proxied_https
}

fn cookie_header(name: &str, value: &str, max_age: i64, http_only: bool, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path=/; SameSite=Strict; Max-Age={max_age}");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

fn with_cookies(mut response: Response, cookies: &[String]) -> Response {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// Signs in with a name, password and (when enabled) TOTP code. Failed attempts are
/// throttled per operator and per client address (429 while locked).
#[utoipa::path(post, path = "/api/v1/session", tag = "sessions", request_body = SignInBody,
    security(()),
    responses((status = 200, body = SessionReply), (status = 401, body = super::ErrorBody),
              (status = 429, body = super::ErrorBody)))]
async fn sign_in(State(state): State<ApiState>, request: Request) -> Result<Response, ApiError> {
    let client = client_of(request.extensions().get());
    let secure = secure_context(request.headers());
    let JsonBody(body) = JsonBody::<SignInBody>::from_request(request, &state).await?;
    let ops = anonymous(&state, client);
    let signed =
        ops::operators::sign_in(&ops, &body.name, &body.password, body.totp.as_deref()).await?;
    let signed = signed.value;
    let token = signed.token.expose().to_owned();
    let csrf = csrf_token_for(&token);
    let max_age = ((signed.expires_at_ms - codexmesh_model::util::now_ms()) / 1000).max(0);
    let cookies = [
        cookie_header(SESSION_COOKIE, &token, max_age, true, secure),
        cookie_header(CSRF_COOKIE, &csrf, max_age, false, secure),
    ];
    let reply = SessionReply {
        operator: signed.operator,
        token,
        csrf_token: csrf,
        expires_at_ms: signed.expires_at_ms,
        totp_setup_required: signed.totp_setup_required,
    };
    Ok(with_cookies(Json(reply).into_response(), &cookies))
}

/// Ends every session of the operator (the epoch moves) and clears the cookies.
#[utoipa::path(delete, path = "/api/v1/session", tag = "sessions",
    responses((status = 204), (status = 400, body = super::ErrorBody)))]
async fn sign_out(State(state): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    ops::operators::sign_out(&caller.ops(&state)).await?;
    let cookies = [
        cookie_header(SESSION_COOKIE, "", 0, true, false),
        cookie_header(CSRF_COOKIE, "", 0, false, false),
    ];
    Ok(with_cookies(
        StatusCode::NO_CONTENT.into_response(),
        &cookies,
    ))
}

/// `POST /api/v1/bootstrap`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BootstrapBody {
    /// The one-time secret `serve` printed (`cmb_…`).
    pub secret: String,
    pub name: String,
    pub password: String,
}

/// Creates the first owner with the one-time secret `serve`/`up` printed (valid once, for an
/// hour, and only while no owner exists).
#[utoipa::path(post, path = "/api/v1/bootstrap", tag = "sessions", request_body = BootstrapBody,
    security(()),
    responses((status = 201, body = Operator), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn bootstrap(
    State(state): State<ApiState>,
    request: Request,
) -> Result<(StatusCode, Json<Operator>), ApiError> {
    let client = client_of(request.extensions().get());
    let JsonBody(body) = JsonBody::<BootstrapBody>::from_request(request, &state).await?;
    let ops = anonymous(&state, client);
    let owner =
        ops::operators::bootstrap_owner(&ops, &body.secret, &body.name, &body.password).await?;
    Ok((StatusCode::CREATED, Json(owner.value)))
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MeReply {
    /// `operator:NAME` or `token:LABEL`, as the audit log names it.
    pub actor: String,
    pub role: Role,
    /// Pools it works on (owners: all, this is empty).
    pub pools: Vec<String>,
    /// The operator record (None for API tokens).
    pub operator: Option<Operator>,
    /// The session may only set up its second factor.
    pub totp_setup_only: bool,
}

/// The caller: its role, pools and operator record.
#[utoipa::path(get, path = "/api/v1/me", tag = "sessions",
    responses((status = 200, body = MeReply)))]
async fn me(State(state): State<ApiState>, caller: Caller) -> Result<Json<MeReply>, ApiError> {
    let operator = match &caller.access.principal {
        Principal::Operator { id, .. } => ops::operators::get(&caller.ops(&state), id)
            .await
            .ok()
            .map(|o| o.value),
        _ => None,
    };
    Ok(Json(MeReply {
        actor: caller.access.principal.actor(),
        role: caller.access.role,
        pools: caller.access.pools.clone(),
        operator,
        totp_setup_only: caller.totp_setup_only,
    }))
}

/// A second factor being set up: shown once.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TotpEnrollmentReply {
    /// Base32, for typing into an authenticator app.
    pub secret_base32: String,
    /// `otpauth://totp/…`, for a QR code.
    pub uri: String,
}

/// Starts the caller's second factor (TOTP, RFC 6238): its secret, shown once. It is enabled
/// by confirming a current code.
#[utoipa::path(post, path = "/api/v1/me/totp", tag = "sessions",
    responses((status = 200, body = TotpEnrollmentReply), (status = 403, body = super::ErrorBody)))]
async fn totp_enroll(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<TotpEnrollmentReply>, ApiError> {
    let id = my_operator_id(&caller)?;
    let e = ops::operators::totp_enroll(&caller.ops(&state), id)
        .await?
        .value;
    Ok(Json(TotpEnrollmentReply {
        secret_base32: e.secret_base32.clone(),
        uri: e.uri.clone(),
    }))
}

/// Turns the caller's second factor off.
#[utoipa::path(delete, path = "/api/v1/me/totp", tag = "sessions",
    responses((status = 200, body = Reply<Changed<Operator>>), (status = 403, body = super::ErrorBody)))]
async fn totp_disable(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Reply<Changed<Operator>>>, ApiError> {
    let id = my_operator_id(&caller)?;
    Ok(Json(
        ops::operators::totp_disable(&caller.ops(&state), id)
            .await?
            .into(),
    ))
}

/// `POST /api/v1/me/totp/confirm`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TotpCode {
    /// The authenticator's current 6-digit code.
    pub code: String,
}

/// Enables the enrolled second factor with a current code.
#[utoipa::path(post, path = "/api/v1/me/totp/confirm", tag = "sessions", request_body = TotpCode,
    responses((status = 200, body = Reply<Changed<Operator>>), (status = 400, body = super::ErrorBody)))]
async fn totp_confirm(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<TotpCode>,
) -> Result<Json<Reply<Changed<Operator>>>, ApiError> {
    let id = my_operator_id(&caller)?;
    Ok(Json(
        ops::operators::totp_confirm(&caller.ops(&state), id, &body.code)
            .await?
            .into(),
    ))
}

/// `POST /api/v1/operators`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOperator {
    /// Sign-in name (an email or a handle).
    pub name: String,
    pub role: Role,
    /// Pools it works on (admins and viewers).
    #[serde(default)]
    pub pools: Vec<String>,
    /// 12 to 1024 characters; without one the operator cannot sign in yet.
    pub password: Option<String>,
}

/// Operators the caller sees.
#[utoipa::path(get, path = "/api/v1/operators", tag = "operators",
    responses((status = 200, body = Vec<Operator>)))]
async fn list_operators(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<Operator>>, ApiError> {
    Ok(Json(ops::operators::list(&caller.ops(&state)).await?.value))
}

/// Creates an operator (owners any role; admins admins and viewers of their own pools).
#[utoipa::path(post, path = "/api/v1/operators", tag = "operators", request_body = CreateOperator,
    responses((status = 201, body = Operator), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn create_operator(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateOperator>,
) -> Result<(StatusCode, Json<Operator>), ApiError> {
    let o = ops::operators::create(
        &caller.ops(&state),
        &body.name,
        body.role,
        &body.pools,
        body.password.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(o.value)))
}

/// One operator (by id or name).
#[utoipa::path(get, path = "/api/v1/operators/{operator}", tag = "operators",
    params(("operator" = String, Path, description = "Operator id or name")),
    responses((status = 200, body = Operator), (status = 404, body = super::ErrorBody)))]
async fn get_operator(
    State(state): State<ApiState>,
    caller: Caller,
    Path(operator): Path<String>,
) -> Result<Json<Operator>, ApiError> {
    Ok(Json(
        ops::operators::get(&caller.ops(&state), &operator)
            .await?
            .value,
    ))
}

/// `PUT /api/v1/operators/{operator}/role`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleBody {
    pub role: Role,
}

/// Changes an operator's role (signs it out everywhere).
#[utoipa::path(put, path = "/api/v1/operators/{operator}/role", tag = "operators",
    params(("operator" = String, Path, description = "Operator id or name")), request_body = RoleBody,
    responses((status = 200, body = Reply<Changed<Operator>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn set_role(
    State(state): State<ApiState>,
    caller: Caller,
    Path(operator): Path<String>,
    JsonBody(body): JsonBody<RoleBody>,
) -> Result<Json<Reply<Changed<Operator>>>, ApiError> {
    Ok(Json(
        ops::operators::set_role(&caller.ops(&state), &operator, body.role)
            .await?
            .into(),
    ))
}

/// `PUT /api/v1/operators/{operator}/pools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolsBody {
    pub pools: Vec<String>,
}

/// Replaces an operator's pools.
#[utoipa::path(put, path = "/api/v1/operators/{operator}/pools", tag = "operators",
    params(("operator" = String, Path, description = "Operator id or name")), request_body = PoolsBody,
    responses((status = 200, body = Reply<Changed<Operator>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn assign_pools(
    State(state): State<ApiState>,
    caller: Caller,
    Path(operator): Path<String>,
    JsonBody(body): JsonBody<PoolsBody>,
) -> Result<Json<Reply<Changed<Operator>>>, ApiError> {
    Ok(Json(
        ops::operators::assign(&caller.ops(&state), &operator, &body.pools)
            .await?
            .into(),
    ))
}

/// Disables an operator (signs it out everywhere).
#[utoipa::path(post, path = "/api/v1/operators/{operator}/disable", tag = "operators",
    params(("operator" = String, Path, description = "Operator id or name")),
    responses((status = 200, body = Reply<Changed<Operator>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn disable_operator(
    State(state): State<ApiState>,
    caller: Caller,
    Path(operator): Path<String>,
) -> Result<Json<Reply<Changed<Operator>>>, ApiError> {
    Ok(Json(
        ops::operators::set_disabled(&caller.ops(&state), &operator, true)
            .await?
            .into(),
    ))
}

/// Enables a disabled operator.
#[utoipa::path(post, path = "/api/v1/operators/{operator}/enable", tag = "operators",
    params(("operator" = String, Path, description = "Operator id or name")),
    responses((status = 200, body = Reply<Changed<Operator>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn enable_operator(
    State(state): State<ApiState>,
    caller: Caller,
    Path(operator): Path<String>,
) -> Result<Json<Reply<Changed<Operator>>>, ApiError> {
    Ok(Json(
        ops::operators::set_disabled(&caller.ops(&state), &operator, false)
            .await?
            .into(),
    ))
}

/// `PUT /api/v1/operators/{operator}/password`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    /// 12 to 1024 characters.
    pub password: String,
}

/// Sets an operator's password (signs it out everywhere).
#[utoipa::path(put, path = "/api/v1/operators/{operator}/password", tag = "operators",
    params(("operator" = String, Path, description = "Operator id or name")), request_body = PasswordBody,
    responses((status = 200, body = Operator), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn set_password(
    State(state): State<ApiState>,
    caller: Caller,
    Path(operator): Path<String>,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Result<Json<Operator>, ApiError> {
    Ok(Json(
        ops::operators::set_password(&caller.ops(&state), &operator, &body.password)
            .await?
            .value,
    ))
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateToken {
    pub label: String,
    pub role: Role,
    /// Pools it is scoped to (below owner).
    #[serde(default)]
    pub pools: Vec<String>,
}

/// An API token and its secret: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IssuedTokenReply {
    pub token: ApiToken,
    /// `cma_…`: send as `Authorization: Bearer`. Store it now: it is never shown again.
    pub secret: String,
}

/// API tokens the caller sees (never the tokens themselves).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<ApiToken>)))]
async fn list_tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(
        ops::operators::list_tokens(&caller.ops(&state))
            .await?
            .value,
    ))
}

/// Creates an API token for automation, scoped to a role and pools (within what the caller
/// may grant).
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = IssuedTokenReply), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<IssuedTokenReply>), ApiError> {
    let issued =
        ops::operators::issue_token(&caller.ops(&state), &body.label, body.role, &body.pools)
            .await?
            .value;
    Ok((
        StatusCode::CREATED,
        Json(IssuedTokenReply {
            secret: issued.secret.expose().to_owned(),
            token: issued.token,
        }),
    ))
}

/// Revokes an API token.
#[utoipa::path(post, path = "/api/v1/tokens/{token}/revoke", tag = "tokens",
    params(("token" = String, Path, description = "Token id or label")),
    responses((status = 200, body = Reply<Changed<ApiToken>>), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn revoke_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<Reply<Changed<ApiToken>>>, ApiError> {
    Ok(Json(
        ops::operators::revoke_token(&caller.ops(&state), &token)
            .await?
            .into(),
    ))
}

/// The audit log's filters and paging: newest first, `limit` rows (1-1000, default 100)
/// older than row `before`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditParams {
    /// Exact actor: `operator:bob`, `token:ci`, `cli:alice`.
    pub actor: Option<String>,
    /// Exact action (`pool.create`) or a prefix ending in `.` (`account.`).
    pub action: Option<String>,
    /// Exact target id.
    pub target: Option<String>,
    /// Rows about this pool.
    pub pool: Option<String>,
    /// `ok` or a refusal kind (`forbidden`, `not_found`, …).
    pub outcome: Option<String>,
    /// Only rows at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// The audit log: who did what to what, how it ended, when and from where. A tenant sees the
/// rows about its pools and its own.
#[utoipa::path(get, path = "/api/v1/audit", tag = "reports", params(AuditParams),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)))]
async fn audit(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        pool: q.pool,
        outcome: q.outcome,
        since_ms: q.since_ms,
        before_id: q.before,
        limit: q.limit.unwrap_or(100),
        ..AuditFilter::default()
    };
    Ok(Json(
        ops::operators::audit(&caller.ops(&state), filter)
            .await?
            .value,
    ))
}
