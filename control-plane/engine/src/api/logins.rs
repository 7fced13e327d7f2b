//! Device-code logins started from the API (the dashboard's "re-login" and "add by login"):
//! `POST /api/v1/pools/{pool}/logins` asks the auth server for a user code and returns it with
//! the page where a person approves it; this replica then waits for the approval in the
//! background and adds the login to the pool exactly as `codexmesh account login` does
//! ([`ops::accounts::login_start`] / [`ops::accounts::login_finish`], acting as the caller, so
//! the caller's rights and audit apply). `GET /api/v1/logins/{id}` tells how it went.
//!
//! Rules this module keeps:
//! - a login is visible only to the principal that started it (anyone else: 404), and only on
//!   the replica that started it (it lives in this process: the dashboard also sees the account
//!   appear through the events stream);
//! - at most [`MAX_PENDING`] logins wait at once per replica (429 beyond; a semaphore permit
//!   taken before the auth server is asked and held by the task that polls it);
//! - a finished login is forgotten [`KEEP_FINISHED`] after it ended; a pending one ends at its
//!   timeout or when the server shuts down;
//! - nothing secret is kept or returned: the user code and verification page are what a person
//!   types in anyway; the device auth id, authorization code and tokens stay inside `ops`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiState, Caller, JsonBody};
use crate::ops::{self, ErrorKind};
use codexmesh_model::operators::Principal;
use codexmesh_model::records::ImportAction;
use codexmesh_model::util::now_ms;

/// Logins waiting for approval at once, per replica.
pub const MAX_PENDING: usize = 16;
/// How long a finished login's outcome stays readable.
pub const KEEP_FINISHED: Duration = Duration::from_secs(600);

/// The logins this replica started (shared by the handlers and the waiting tasks).
#[derive(Clone)]
pub(crate) struct Logins {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    /// One permit per login waiting for approval ([`MAX_PENDING`]), held by its task; taken
    /// before the auth server is asked, so concurrent starts cannot pass the bound.
    waiting: Arc<tokio::sync::Semaphore>,
}

impl Default for Logins {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            waiting: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING)),
        }
    }
}

struct Entry {
    owner: Principal,
    view: LoginView,
    finished_at: Option<Instant>,
}

/// Where a login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoginState {
    /// Waiting for a person to approve the code.
    Pending,
    /// Approved: the login is in the pool (`account_id`).
    Succeeded,
    /// Denied, refused or failed (`error`).
    Failed,
    /// Nobody approved it in time.
    Expired,
}

/// A device-code login started through the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LoginView {
    pub id: String,
    pub pool: String,
    pub state: LoginState,
    /// Where a person approves the code.
    pub verification_url: String,
    /// The code to enter there.
    pub user_code: String,
    pub expires_at_ms: i64,
    /// With `succeeded`: the account the login became (created or updated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// With `succeeded`: whether the login was new to the store (`created`) or refreshed an
    /// account already there (`updated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// With `failed`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/v1/pools/{pool}/logins`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StartLogin {
    /// Label of a new account (default: the login's email); an existing account keeps its own.
    pub label: Option<String>,
}

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(get_one))
}

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written (every change is
        // one insert or field store), so a poisoned map is still sound.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops finished logins older than [`KEEP_FINISHED`].
    fn sweep(map: &mut HashMap<String, Entry>) {
        map.retain(|_, e| e.finished_at.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
    }

    fn finish(&self, id: &str, update: impl FnOnce(&mut LoginView)) {
        if let Some(entry) = self.lock().get_mut(id) {
            update(&mut entry.view);
            entry.finished_at = Some(Instant::now());
        }
    }
}

/// Starts a device-code login into the pool (owners and the pool's admins): answers with the
/// code a person approves at `verification_url`; this replica waits for the approval and adds
/// the login to the pool (a login already stored gets the new tokens: a re-login).
#[utoipa::path(post, path = "/api/v1/pools/{pool}/logins", tag = "accounts",
    params(("pool" = String, Path, description = "Pool name")),
    request_body = StartLogin,
    responses((status = 202, body = LoginView), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody), (status = 429, body = super::ErrorBody),
              (status = 502, body = super::ErrorBody)))]
async fn start(
    State(state): State<ApiState>,
    caller: Caller,
    Path(pool): Path<String>,
    JsonBody(body): JsonBody<StartLogin>,
) -> Result<(StatusCode, Json<LoginView>), ApiError> {
    let Ok(waiting) = Arc::clone(&state.logins.waiting).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RateLimited,
            format!("{MAX_PENDING} logins are already waiting for approval; try again later"),
        ));
    };
    let id = codexmesh_model::util::new_id("lgn")
        .map_err(|e| ops::OpsError::from(codexmesh_store::StoreError::from(e)))?;
    let ops = caller.ops(&state);
    let pending = ops::accounts::login_start(
        &ops,
        &pool,
        body.label.as_deref(),
        crate::login::DEFAULT_TIMEOUT,
    )
    .await?;
    let view = LoginView {
        id: id.clone(),
        pool: pending.pool().to_owned(),
        state: LoginState::Pending,
        verification_url: pending.verification_url(),
        user_code: pending.user_code().to_owned(),
        expires_at_ms: now_ms() + pending.expires_in_minutes() * 60_000,
        account_id: None,
        action: None,
        error: None,
    };
    let mut map = state.logins.lock();
    Logins::sweep(&mut map);
    map.insert(
        id.clone(),
        Entry {
            owner: caller.access.principal.clone(),
            view: view.clone(),
            finished_at: None,
        },
    );
    drop(map);
    let logins = state.logins.clone();
    let shutdown = state.live.shutdown.clone();
    tokio::spawn(async move {
        // Held until the login is no longer waiting.
        let _waiting = waiting;
        let outcome = tokio::select! {
            r = ops::accounts::login_finish(&ops, pending) => Some(r),
            () = shutdown.cancelled() => None,
        };
        logins.finish(&id, |v| match outcome {
            Some(Ok(done)) => {
                v.state = LoginState::Succeeded;
                v.account_id = Some(done.value.account.id.clone());
                v.action = Some(
                    match done.value.action {
                        ImportAction::Created => "created",
                        ImportAction::Updated => "updated",
                    }
                    .to_owned(),
                );
            }
            Some(Err(ops::OpsError::Login(
                crate::login::LoginError::Expired | crate::login::LoginError::TimedOut(_),
            ))) => v.state = LoginState::Expired,
            Some(Err(e)) => {
                v.state = LoginState::Failed;
                v.error = Some(e.to_string());
            }
            None => {
                v.state = LoginState::Failed;
                v.error = Some("the control plane shut down before the approval".to_owned());
            }
        });
    });
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// How a login started with `POST /api/v1/pools/{pool}/logins` stands (only for whoever
/// started it, on the replica that started it).
#[utoipa::path(get, path = "/api/v1/logins/{login}", tag = "accounts",
    params(("login" = String, Path, description = "Login id (lgn_…)")),
    responses((status = 200, body = LoginView), (status = 404, body = super::ErrorBody)))]
async fn get_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path(login): Path<String>,
) -> Result<Json<LoginView>, ApiError> {
    let mut map = state.logins.lock();
    Logins::sweep(&mut map);
    match map.get(&login) {
        Some(e) if e.owner == caller.access.principal => Ok(Json(e.view.clone())),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            format!("no login {login} started by you on this control plane"),
        )),
    }
}
