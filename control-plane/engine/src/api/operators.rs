//! Sessions, the first owner, operators, API tokens, the caller's own second factor, and the
//! audit log.
//!
//! Rules: each handler is one [`crate::ops::operators`] call for the [`Caller`]; sign-in sets
//! the session cookie (HttpOnly, SameSite=Strict) and returns the same token and its CSRF token
//! in the body (for clients that send `Authorization: Bearer`); a password, TOTP code or token
//! is never echoed except the one answer that creates a token.

use axum::http::{Method, Uri};
use utoipa_axum::router::OpenApiRouter;

use super::ApiState;
use crate::ops::{self, Ops, OpsError};
use codexmesh_model::operators::Access;

/// The open routes: sign-in and the first owner.
pub(super) fn open_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
}

/// The routes behind authentication.
pub(super) fn protected_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
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
