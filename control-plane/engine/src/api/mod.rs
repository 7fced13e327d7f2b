//! The admin HTTP API (`/api/v1`, JSON) and its OpenAPI document, generated from the handlers
//! and types here (utoipa): every route is registered through [`OpenApiRouter`], so the document
//! served at `/api/v1/openapi.json` *is* the route table (the tenant-isolation test walks it).
//!
//! Rules this module keeps:
//! - a handler parses its HTTP input, calls one use case in [`crate::ops`] with an [`Ops`] acting
//!   for the caller ([`Caller::ops`]), and renders the result; no workflow is written here;
//! - every route but the open ones (sign-in, bootstrap, the OpenAPI document, `/healthz`,
//!   `/readyz`) needs a caller (`/metrics` one that sees every pool: see `probes`): `Authorization: Bearer` with a session token or an API token (`cma_…`), or the
//!   session cookie — and with the cookie, a state-changing method also needs the
//!   `X-CSRF-Token` header that sign-in returned (bound to the session: see [`csrf_token_for`]);
//! - bodies are JSON of at most [`MAX_BODY_BYTES`] (else 413); unknown fields and parameters are
//!   errors; a bad one is a 400 naming its path (`routing.strategy`, `limit`);
//! - every failure is `{"error": {"kind", "message", "field"?}}` through [`ApiError`], which maps
//!   an [`OpsError`]'s kind to one status code; internal details stay in the server log;
//! - only metadata is ever returned: never an account token, a password or a prompt; a raw pool
//!   key or API token only in the one answer that creates it.
//! - every answer but `/healthz` and `/readyz` goes only to a client address inside
//!   `admin_allowed_cidrs` (when set; else 403): the client is the TCP peer, or what a trusted
//!   proxy's `X-Forwarded-For` says (`admin_trusted_proxies`, the rule of
//!   `codexmesh_proto::network`), and the audit log and the sign-in throttle see that address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::ops::{self, ErrorKind, Notice, Ops, OpsError};
use codexmesh_model::operators::Access;

mod accounts;
mod alerts;
mod config;
mod events;
mod invites;
mod keys;
mod logins;
mod mcp;
mod operators;
mod pools;
mod probes;
mod reports;

/// The largest request body accepted (an auth.json is far smaller).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The session cookie (HttpOnly) and the CSRF cookie (readable by the dashboard's script).
pub const SESSION_COOKIE: &str = "codexmesh_session";
pub const CSRF_COOKIE: &str = "codexmesh_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Clone)]
pub(crate) struct ApiState {
    /// Local (shell) access: only ever used to authenticate a caller and to build the caller's
    /// own [`Ops`] ([`Caller::ops`]).
    base: Arc<Ops>,
    envoys: crate::envoys::Envoys,
    live: events::Live,
    logins: logins::Logins,
    metrics: crate::metrics::Metrics,
}

/// Who is calling, from where, and how it proved it (a request extension set by
/// [`authenticate`]).
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub access: Access,
    pub client: Option<String>,
    /// A session that may only set up its second factor (`require_totp`).
    pub totp_setup_only: bool,
}

impl Caller {
    /// The use-case context acting for this caller.
    pub fn ops(&self, state: &ApiState) -> Ops {
        state
            .base
            .acting_as(self.access.clone(), self.client.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("sign in first"))
    }
}

/// The client's address (a request extension set by [`admit_client`]): the TCP peer, or what a
/// trusted proxy's `X-Forwarded-For` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientAddress(pub IpAddr);

/// Routes any address may reach: liveness and readiness probes come from the node (the
/// kubelet), whose address an operator's allowlist need not name, and learn only "ok".
const OPEN_TO_ANY_ADDRESS: &[&str] = &["/healthz", "/readyz"];

/// The client address as [`admit_client`] decided it.
fn client_address(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<ClientAddress>()
        .map(|c| c.0.to_string())
}

/// Decides the client address of every request (see [`ClientAddress`]) and refuses one outside
/// `admin_allowed_cidrs` with 403 (all routes but [`OPEN_TO_ANY_ADDRESS`]). Without a peer
/// address (only in tests that call the router directly) nothing is decided, and a set
/// allowlist refuses.
async fn admit_client(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let settings = state.base.settings();
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| {
            let forwarded: Vec<&str> = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                // A value that is not text counts as a malformed hop.
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            codexmesh_model::network::client_address(
                c.0.ip(),
                forwarded,
                settings.admin_trusted_proxies.set(),
            )
        });
    let allowed = &settings.admin_allowed_cidrs;
    let open = OPEN_TO_ANY_ADDRESS.contains(&request.uri().path());
    if !open && !client.is_some_and(|ip| allowed.admits(ip)) {
        let shown = client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        tracing::info!(client = %shown, path = request.uri().path(), "admin API: refused a client outside admin_allowed_cidrs");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::Forbidden,
            format!("the admin API does not answer {shown} (admin_allowed_cidrs)"),
        )
        .into_response();
    }
    if let Some(ip) = client {
        request.extensions_mut().insert(ClientAddress(ip));
    }
    next.run(request).await
}

/// The CSRF token of a session: SHA-256 of a fixed label and the session token (which is
/// HttpOnly: a page on another origin can neither read it nor derive this).
pub(crate) fn csrf_token_for(session_token: &str) -> String {
    let digest = Sha256::digest(format!("codexmesh-csrf/v1:{session_token}").as_bytes());
    hex::encode(&digest[..16])
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Finds the caller (bearer session or API token, or the session cookie with its CSRF header
/// for state-changing methods) and adds it to the request; 401 without one.
async fn authenticate(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let client = client_address(&request);
    let headers = request.headers();
    let (access, totp_setup_only) = if let Some(token) = bearer(headers) {
        let verified = if codexmesh_model::operators::looks_like_api_token(token) {
            ops::operators::verify_token(&state.base, token)
                .await
                .map(|a| (a, false))
        } else {
            operators::verify_session(&state.base, token).await
        };
        match verified {
            Ok((access, setup)) => (access, setup),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else if let Some(token) = cookie(headers, SESSION_COOKIE) {
        if changes_state(request.method()) {
            let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            let expected = csrf_token_for(token);
            let ok = presented.is_some_and(|p| {
                subtle::ConstantTimeEq::ct_eq(p.as_bytes(), expected.as_bytes()).into()
            });
            if !ok {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorKind::Forbidden,
                    format!(
                        "a cookie session needs the {CSRF_HEADER} header (from sign-in or the \
                         {CSRF_COOKIE} cookie) on every change"
                    ),
                )
                .into_response();
            }
        }
        match operators::verify_session(&state.base, token).await {
            Ok((access, setup)) => (access, setup),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else {
        return ApiError::unauthenticated(
            "sign in (POST /api/v1/session) or send Authorization: Bearer <session or API token>",
        )
        .into_response();
    };
    if totp_setup_only && !operators::allowed_during_totp_setup(request.method(), request.uri()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::Forbidden,
            "a second factor is required: set it up (POST /api/v1/me/totp, then \
             /api/v1/me/totp/confirm) and sign in again",
        )
        .into_response();
    }
    request.extensions_mut().insert(Caller {
        access,
        client,
        totp_setup_only,
    });
    next.run(request).await
}

/// An error answer: `{"error": {"kind", "message", "field"?}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// not_found, invalid, conflict, forbidden, unauthenticated, rate_limited, too_large,
    /// unsupported_media_type, upstream, unavailable, internal.
    kind: String,
    message: String,
    /// The input at fault: a body field path (`routing.strategy`) or a parameter (`limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    fn raw(status: StatusCode, kind: &str, message: String, field: Option<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: ErrorDetail {
                    kind: kind.to_owned(),
                    message,
                    field,
                },
            },
        }
    }

    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::raw(status, kind.as_str(), message.into(), None)
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::raw(
            StatusCode::BAD_REQUEST,
            ErrorKind::Invalid.as_str(),
            message.into(),
            Some(field.into()),
        )
    }

    pub fn unauthenticated(message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Unauthenticated,
            message,
        )
    }

    fn too_large() -> Self {
        Self::raw(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            None,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The one place an [`OpsError`] becomes an HTTP answer: invalid input 400 (naming the field
/// when known), unauthenticated 401, forbidden 403, not found 404, conflict 409, rate limited
/// 429, upstream 502, store unavailable 503 (a full disk says so), else 500 (details only in
/// the server log).
impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        let kind = e.kind();
        let status = match kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unauthenticated | ErrorKind::TotpRequired => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        };
        let message = match kind {
            ErrorKind::Unavailable if e.is_disk_full() => {
                tracing::error!(
                    error = %e,
                    "admin API: the store's disk is full; changes fail until space is freed"
                );
                "the store's disk is full: changes cannot be saved until space is freed \
                 (reads and serving still work)"
                    .to_owned()
            }
            ErrorKind::Unavailable => {
                tracing::error!(error = %e, "admin API: store unavailable");
                "the store is unavailable; try again".to_owned()
            }
            ErrorKind::Internal => {
                tracing::error!(error = %e, "admin API: internal error");
                "internal error (see the control plane's log)".to_owned()
            }
            _ => match &e {
                // The field is in its own member: the message without the prefix.
                OpsError::RequestLog(ops::RequestLogError::Invalid { message, .. }) => {
                    message.clone()
                }
                other => other.to_string(),
            },
        };
        let field = (kind == ErrorKind::Invalid)
            .then(|| e.field().map(api_field_name))
            .flatten();
        Self::raw(status, kind.as_str(), message, field)
    }
}

/// Use-case field names are CLI flag names without dashes (`max-attempts`); the API's are
/// snake_case.
fn api_field_name(field: &str) -> String {
    field.replace('-', "_")
}

/// A JSON body: at most [`MAX_BODY_BYTES`] (413), `application/json` (415), unknown fields
/// and malformed values rejected with the path of the field at fault (400).
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !is_json {
            return Err(ApiError::raw(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON (Content-Type: application/json)".to_owned(),
                None,
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The body's bytes, refusing more than [`MAX_BODY_BYTES`].
pub(crate) async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<bytes::Bytes, ApiError> {
    match bytes::Bytes::from_request(req, state).await {
        Ok(b) => Ok(b),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::too_large())
        }
        Err(rejection) => Err(ApiError::invalid("body", rejection.body_text())),
    }
}

/// Parses JSON, naming the path of the field at fault.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::invalid(field_path(&path, &inner.to_string()), inner.to_string())
    })?;
    de.end().map_err(|e| {
        ApiError::invalid("body", format!("trailing characters after the JSON: {e}"))
    })?;
    Ok(value)
}

/// The field a deserialization error is about: its path, extended by the unknown field's name
/// (serde names it only in the message); the whole body is `body`.
pub(crate) fn field_path(path: &str, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    let base = if path == "." { "" } else { path };
    match (base, unknown) {
        ("", None) => "body".to_owned(),
        ("", Some(name)) => name.to_owned(),
        (base, Some(name)) if !base.ends_with(name) => format!("{base}.{name}"),
        (base, _) => base.to_owned(),
    }
}

/// Query parameters: unknown ones and bad values are 400s naming the parameter.
pub(crate) struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(QueryParams)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                ApiError::invalid(field_path(&path, &inner), inner)
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// A use case's value with the notices a person should read.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Reply<T> {
    #[serde(flatten)]
    pub value: T,
    pub notices: Vec<Notice>,
}

impl<T> From<ops::Outcome<T>> for Reply<T> {
    fn from(o: ops::Outcome<T>) -> Self {
        Reply {
            value: o.value,
            notices: o.notices,
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("session token (JWT) or API token (cma_…)")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "set by sign-in; state-changing requests also need the X-CSRF-Token header",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "codexmesh admin API",
        version = "1",
        description = "Pools, accounts, keys, activity, logs and operators of a codexmesh \
                       control plane. Generated from the code that serves it."
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("session_cookie" = [])),
    components(schemas(ErrorBody, ErrorDetail, Notice, events::ChangeEvent, events::ActivityEvent))
)]
struct ApiDoc;

/// Every `/api/v1` route with its OpenAPI description: the open ones and those behind
/// [`authenticate`].
fn api_routes(state: &ApiState) -> OpenApiRouter<ApiState> {
    let protected = OpenApiRouter::new()
        .merge(pools::routes())
        .merge(accounts::routes())
        .merge(keys::routes())
        .merge(reports::routes())
        .merge(events::routes())
        .merge(logins::routes())
        .merge(operators::protected_routes())
        .merge(config::routes())
        .merge(alerts::routes())
        .merge(invites::protected_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(operators::open_routes())
        .merge(invites::open_routes())
        .merge(protected)
}

/// The OpenAPI document (JSON) of the admin API.
pub fn openapi_json() -> String {
    let doc = document();
    doc.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot render the OpenAPI document");
        "{}".to_owned()
    })
}

fn document() -> utoipa::openapi::OpenApi {
    // The routes need a state only to be built; this one is never served.
    let mut router = OpenApiRouter::<ApiState>::with_openapi(ApiDoc::openapi())
        .merge(operators::open_routes())
        .merge(pools::routes())
        .merge(accounts::routes())
        .merge(keys::routes())
        .merge(reports::routes())
        .merge(events::routes())
        .merge(logins::routes())
        .merge(operators::protected_routes())
        .merge(config::routes())
        .merge(alerts::routes())
        .merge(invites::open_routes())
        .merge(invites::protected_routes());
    router.to_openapi()
}

/// The admin API over `ops` (shell access, used to authenticate callers), the Envoy registry,
/// and the live state the events stream reads (`snapshots`: the snapshot hub's watch;
/// `shutdown`: ends every stream).
pub(crate) fn router(
    ops: Ops,
    envoys: crate::envoys::Envoys,
    snapshots: tokio::sync::watch::Receiver<Arc<codexmesh_proto::v1::Snapshot>>,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: crate::metrics::Metrics,
) -> Router {
    let mcp_shutdown = shutdown.clone();
    let state = ApiState {
        base: Arc::new(ops),
        envoys,
        live: events::Live::new(snapshots, shutdown),
        logins: logins::Logins::default(),
        metrics,
    };
    let (api, doc) = api_routes(&state).split_for_parts();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }
            }),
        )
        .merge(api)
        .merge(probes::routes(&state))
        .merge(mcp::routes(&state, &mcp_shutdown))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "no such route (see /api/v1/openapi.json)",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(no_store))
        // After the layers: the dashboard's files set their own caching (revalidated by ETag).
        .merge(crate::dashboard::routes())
        // Outermost, over every route (the dashboard and any added later included).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admit_client,
        ))
        .with_state(state)
}

/// No answer is cached by a browser or proxy (some carry a secret shown once: a new key, a
/// session token) or sniffed as another content type.
async fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_name_the_input_at_fault() {
        assert_eq!(field_path(".", "expected value"), "body");
        assert_eq!(
            field_path(".", "unknown field `colour`, expected one of `name`"),
            "colour"
        );
        assert_eq!(
            field_path("routing", "unknown field `x`, expected `strategy`"),
            "routing.x"
        );
        assert_eq!(
            field_path("routing.strategy", "invalid type: integer"),
            "routing.strategy"
        );
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let a = csrf_token_for("session-a");
        assert_eq!(a, csrf_token_for("session-a"));
        assert_ne!(a, csrf_token_for("session-b"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn cookies_and_bearer_tokens_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            header::HeaderValue::from_static("a=1; codexmesh_session=tok; b=2"),
        );
        h.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("bearer  xyz"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(bearer(&h), Some("xyz"));
    }

    #[test]
    fn the_document_lists_every_route() {
        let doc = document();
        assert!(doc.paths.paths.contains_key("/api/v1/pools"));
        assert!(doc.paths.paths.len() > 20, "{:?}", doc.paths.paths.keys());
    }

    /// The document as served, reviewed as a diff whenever the API changes (`cargo insta
    /// review`, or `INSTA_UPDATE=always`).
    #[test]
    fn the_openapi_document_is_reviewed() {
        insta::assert_snapshot!("openapi", openapi_json());
    }
}
