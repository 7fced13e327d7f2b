//! OAuth device-code login as the Codex CLI speaks it (`codex login --device-auth`).
//!
//! Every path is under the issuer (`https://auth.openai.com`), which the simulator serves at
//! its own root:
//! 1. `POST /api/accounts/deviceauth/usercode`, JSON `{"client_id"}` → `{"device_auth_id",
//!    "user_code", "interval" (seconds, as a string), "expires_at" (RFC 3339)}`;
//! 2. the user opens `/codex/device` and types the code; here a test says so instead
//!    (`POST /__sim/device/approve` or `.../deny`, or the auto-approve knob);
//! 3. `POST /api/accounts/deviceauth/token`, JSON `{"device_auth_id","user_code"}`, every
//!    `interval` seconds: 403 `deviceauth_authorization_pending` until approved, then 200
//!    `{"authorization_code","code_challenge","code_verifier"}` (the server mints the PKCE pair);
//! 4. `POST /oauth/token`, form `grant_type=authorization_code&code&redirect_uri=
//!    {issuer}/deviceauth/callback&client_id&code_verifier` → tokens of a new lineage (served by
//!    [`crate::oauth`] with [`DeviceLogins::check_code`] and [`DeviceLogins::mark_exchanged`]).
//!
//! [`DeviceLogins`] holds the logins and their state machine; it knows nothing of HTTP.

use std::collections::VecDeque;

use axum::extract::{Request, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::accounts::{random_alnum, random_uuid};
use crate::body::DecodedBody;
use crate::clock::rfc3339;
use crate::errors::{detail, json_status, openai_error};
use crate::jwt::CODEX_CLIENT_ID;
use crate::state::Shared;

/// Step 1: ask for a user code.
pub const USERCODE_PATH: &str = "/api/accounts/deviceauth/usercode";
/// Step 3: poll for the authorization code.
pub const POLL_PATH: &str = "/api/accounts/deviceauth/token";
/// The page the CLI tells the user to open (`{issuer}/codex/device`).
pub const VERIFICATION_PATH: &str = "/codex/device";
/// The path of the `redirect_uri` the code exchange must name (`{issuer}/deviceauth/callback`).
pub const CALLBACK_PATH: &str = "/deviceauth/callback";

/// Default polling interval the usercode answer asks for (seconds).
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 5;
/// Default lifetime of a user code (the CLI says "expires in 15 minutes").
pub const DEFAULT_CODE_TTL_SECS: i64 = 900;
/// How long an authorization code can be exchanged after approval (simulated seconds).
pub const AUTH_CODE_TTL_SECS: i64 = 600;
/// At most this many logins are kept (the oldest go first).
pub const MAX_LOGINS: usize = 10_000;

/// `error.code` of a poll before approval.
pub const CODE_PENDING: &str = "deviceauth_authorization_pending";
/// `error.code` of a poll after the user denied.
pub const CODE_DENIED: &str = "deviceauth_authorization_denied";
/// `error.code` of a poll after the user code (or the unexchanged authorization code) expired.
pub const CODE_EXPIRED: &str = "deviceauth_user_code_expired";
/// `error.code` of a poll naming no login.
pub const CODE_NOT_FOUND: &str = "deviceauth_not_found";

/// Letters and digits that cannot be misread.
const USER_CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Whom an approved login signs in as. `account_id` naming an existing account logs into
/// it (with `plan`/`email`, if given, applied to it); otherwise a new account is created at
/// the code exchange (`account_id` default: a random UUID).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInAs {
    /// Existing or new account id.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Plan of the account.
    #[serde(default)]
    pub plan: Option<String>,
    /// Email of the account.
    #[serde(default)]
    pub email: Option<String>,
}

/// What an approval hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The account the tokens will be for.
    pub account_id: String,
    /// Plan to set on the account at the exchange.
    pub plan: Option<String>,
    /// Email to set on the account at the exchange.
    pub email: Option<String>,
    /// The code for `POST /oauth/token`.
    pub authorization_code: String,
    /// `BASE64URL(SHA256(code_verifier))`.
    pub code_challenge: String,
    /// The PKCE verifier the exchange must present.
    pub code_verifier: String,
    /// When the login was approved.
    pub approved_at: i64,
    /// Until when the code can be exchanged.
    pub code_expires_at: i64,
    /// When the code was exchanged.
    pub exchanged_at: Option<i64>,
}

/// Where a login stands, expiry aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the user.
    Pending,
    /// The user approved.
    Approved(Box<Grant>),
    /// The user denied, at this time.
    Denied(i64),
}

/// One device-code login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLogin {
    /// The id the client polls with.
    pub device_auth_id: String,
    /// The code the user types (`XXXX-XXXXX`).
    pub user_code: String,
    /// The client that asked.
    pub client_id: String,
    /// When it was asked for.
    pub created_at: i64,
    /// When the user code stops being accepted.
    pub expires_at: i64,
    /// Polls so far.
    pub polls: u64,
    /// State.
    pub phase: Phase,
}

/// A login's state as the control API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the user.
    Pending,
    /// Approved; the authorization code is waiting to be exchanged.
    Approved,
    /// Denied by the user.
    Denied,
    /// Not approved in time, or approved but not exchanged in time.
    Expired,
    /// Tokens were issued.
    Exchanged,
}

impl DeviceLogin {
    /// The state at `now`.
    pub fn status(&self, now: i64) -> Status {
        match &self.phase {
            Phase::Pending if now >= self.expires_at => Status::Expired,
            Phase::Pending => Status::Pending,
            Phase::Denied(_) => Status::Denied,
            Phase::Approved(g) if g.exchanged_at.is_some() => Status::Exchanged,
            Phase::Approved(g) if now >= g.code_expires_at => Status::Expired,
            Phase::Approved(_) => Status::Approved,
        }
    }

    /// The grant, once approved.
    pub fn grant(&self) -> Option<&Grant> {
        match &self.phase {
            Phase::Approved(g) => Some(g),
            _ => None,
        }
    }

    /// The control API's view.
    pub fn view(&self, now: i64) -> DeviceLoginView {
        let grant = self.grant();
        DeviceLoginView {
            device_auth_id: self.device_auth_id.clone(),
            user_code: self.user_code.clone(),
            client_id: self.client_id.clone(),
            status: self.status(now),
            created_at: self.created_at,
            expires_at: self.expires_at,
            polls: self.polls,
            account_id: grant.map(|g| g.account_id.clone()),
            approved_at: grant.map(|g| g.approved_at),
            authorization_code: grant.map(|g| g.authorization_code.clone()),
            code_expires_at: grant.map(|g| g.code_expires_at),
            exchanged_at: grant.and_then(|g| g.exchanged_at),
            denied_at: match self.phase {
                Phase::Denied(at) => Some(at),
                _ => None,
            },
        }
    }
}

/// What `GET /__sim/device` shows of a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceLoginView {
    /// Poll id.
    pub device_auth_id: String,
    /// User code.
    pub user_code: String,
    /// Client that asked.
    pub client_id: String,
    /// State.
    pub status: Status,
    /// Asked at (unix seconds, simulated).
    pub created_at: i64,
    /// User code expiry.
    pub expires_at: i64,
    /// Polls so far.
    pub polls: u64,
    /// Account it signs in as, once approved.
    pub account_id: Option<String>,
    /// Approval time.
    pub approved_at: Option<i64>,
    /// The authorization code, once approved.
    pub authorization_code: Option<String>,
    /// Authorization code expiry.
    pub code_expires_at: Option<i64>,
    /// Exchange time.
    pub exchanged_at: Option<i64>,
    /// Denial time.
    pub denied_at: Option<i64>,
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Not approved yet.
    Pending,
    /// Approved (also after the exchange): the code and the PKCE pair.
    Approved {
        /// For `POST /oauth/token`.
        authorization_code: String,
        /// S256 challenge of the verifier.
        code_challenge: String,
        /// The verifier to present.
        code_verifier: String,
    },
    /// The user denied.
    Denied,
    /// Too late.
    Expired,
    /// No login has this id and user code.
    NotFound,
}

/// Why a code exchange is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemError {
    /// No approval issued this code.
    Unknown,
    /// Already exchanged.
    Used,
    /// Past [`AUTH_CODE_TTL_SECS`].
    Expired,
    /// `SHA256(code_verifier)` is not the challenge.
    VerifierMismatch,
    /// `redirect_uri` is not `{issuer}/deviceauth/callback`.
    RedirectMismatch,
}

/// Why a control call on a login fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// Bad arguments (400).
    BadRequest(String),
    /// No such login (404).
    NotFound(String),
    /// The login is not pending, or the choice is ambiguous (409).
    Conflict(String),
}

/// Every device-code login, oldest first.
#[derive(Debug, Default)]
pub struct DeviceLogins {
    logins: VecDeque<DeviceLogin>,
}

/// `BASE64URL(SHA256(verifier))` without padding (PKCE S256, RFC 7636).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A user code as typed: no dashes or blanks, upper case.
fn normalize_user_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn random_user_code() -> String {
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())]))
            .collect()
    };
    let head = pick(4);
    let tail = pick(5);
    format!("{head}-{tail}")
}

/// Whether a `redirect_uri` is the device callback (`<scheme>://<host>/deviceauth/callback`;
/// the host is not checked, since the client may reach the issuer by any name).
pub fn is_device_callback(redirect_uri: &str) -> bool {
    match redirect_uri.parse::<axum::http::Uri>() {
        Ok(uri) => {
            uri.scheme().is_some()
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.path() == CALLBACK_PATH
                && uri.query().is_none()
        }
        Err(_) => false,
    }
}

fn new_grant(who: SignInAs, now: i64) -> Grant {
    let mut bytes = [0u8; 64];
    rand::rng().fill(&mut bytes[..]);
    let code_verifier = URL_SAFE_NO_PAD.encode(bytes);
    Grant {
        account_id: who
            .account_id
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(random_uuid),
        plan: who.plan,
        email: who.email,
        authorization_code: format!("ac_{}", random_alnum(48)),
        code_challenge: pkce_challenge(&code_verifier),
        code_verifier,
        approved_at: now,
        code_expires_at: now + AUTH_CODE_TTL_SECS,
        exchanged_at: None,
    }
}

impl DeviceLogins {
    /// No logins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every login, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &DeviceLogin> {
        self.logins.iter()
    }

    /// Whether a freshly drawn (canonical) user code is in use.
    fn user_code_taken(&self, code: &str) -> bool {
        self.logins.iter().any(|l| l.user_code == code)
    }

    /// Step 1: a new pending login valid for `ttl_secs`.
    pub fn start(&mut self, client_id: &str, now: i64, ttl_secs: i64) -> DeviceLogin {
        // 32^9 codes: a clash is all but impossible; the bound keeps the loop finite anyway.
        let mut user_code = random_user_code();
        for _ in 0..16 {
            if !self.user_code_taken(&user_code) {
                break;
            }
            user_code = random_user_code();
        }
        let login = DeviceLogin {
            device_auth_id: format!("deviceauth_{}", random_alnum(32)),
            user_code,
            client_id: client_id.to_string(),
            created_at: now,
            expires_at: now + ttl_secs,
            polls: 0,
            phase: Phase::Pending,
        };
        self.logins.push_back(login.clone());
        while self.logins.len() > MAX_LOGINS {
            self.logins.pop_front();
        }
        login
    }

    /// Step 3: a poll. With `auto = Some((n, who))` a pending login is approved as `who` once
    /// `n` polls have been answered "pending" (so poll `n + 1` gets the code).
    pub fn poll(
        &mut self,
        device_auth_id: &str,
        user_code: &str,
        now: i64,
        auto: Option<(u64, &SignInAs)>,
    ) -> PollOutcome {
        let Some(login) = self
            .logins
            .iter_mut()
            .rev()
            .find(|l| l.device_auth_id == device_auth_id)
        else {
            return PollOutcome::NotFound;
        };
        if normalize_user_code(&login.user_code) != normalize_user_code(user_code) {
            return PollOutcome::NotFound;
        }
        login.polls += 1;
        if let Some((after, who)) = auto {
            if login.status(now) == Status::Pending && login.polls > after {
                login.phase = Phase::Approved(Box::new(new_grant(who.clone(), now)));
            }
        }
        match login.status(now) {
            Status::Pending => PollOutcome::Pending,
            Status::Denied => PollOutcome::Denied,
            Status::Expired => PollOutcome::Expired,
            Status::Approved | Status::Exchanged => match login.grant() {
                Some(g) => PollOutcome::Approved {
                    authorization_code: g.authorization_code.clone(),
                    code_challenge: g.code_challenge.clone(),
                    code_verifier: g.code_verifier.clone(),
                },
                None => PollOutcome::NotFound,
            },
        }
    }

    /// The login a control call means: the newest with this user code, or, without one, the
    /// only pending login.
    fn index_for_control(&self, user_code: Option<&str>, now: i64) -> Result<usize, ControlError> {
        match user_code {
            Some(code) => {
                let norm = normalize_user_code(code);
                self.logins
                    .iter()
                    .rposition(|l| normalize_user_code(&l.user_code) == norm)
                    .ok_or_else(|| {
                        ControlError::NotFound(format!("no device login with user code {code}"))
                    })
            }
            None => {
                let pending: Vec<usize> = self
                    .logins
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.status(now) == Status::Pending)
                    .map(|(i, _)| i)
                    .collect();
                match pending.as_slice() {
                    [i] => Ok(*i),
                    [] => Err(ControlError::NotFound("no pending device login".into())),
                    many => Err(ControlError::Conflict(format!(
                        "{} pending device logins: name one by user_code",
                        many.len()
                    ))),
                }
            }
        }
    }

    fn pending_mut(
        &mut self,
        user_code: Option<&str>,
        now: i64,
    ) -> Result<&mut DeviceLogin, ControlError> {
        let idx = self.index_for_control(user_code, now)?;
        let login = self
            .logins
            .get_mut(idx)
            .ok_or_else(|| ControlError::NotFound("device login vanished".into()))?;
        match login.status(now) {
            Status::Pending => Ok(login),
            other => Err(ControlError::Conflict(format!(
                "device login {} is {}",
                login.user_code,
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ))),
        }
    }

    /// The user approves a pending login.
    pub fn approve(
        &mut self,
        user_code: Option<&str>,
        who: SignInAs,
        now: i64,
    ) -> Result<&DeviceLogin, ControlError> {
        if who
            .account_id
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(ControlError::BadRequest(
                "account_id must not be empty".into(),
            ));
        }
        let login = self.pending_mut(user_code, now)?;
        login.phase = Phase::Approved(Box::new(new_grant(who, now)));
        Ok(login)
    }

    /// The user denies a pending login.
    pub fn deny(
        &mut self,
        user_code: Option<&str>,
        now: i64,
    ) -> Result<&DeviceLogin, ControlError> {
        let login = self.pending_mut(user_code, now)?;
        login.phase = Phase::Denied(now);
        Ok(login)
    }

    fn grant_by_code(&self, code: &str) -> Option<&Grant> {
        self.logins
            .iter()
            .rev()
            .filter_map(DeviceLogin::grant)
            .find(|g| g.authorization_code == code)
    }

    /// Step 4, first half: whether this exchange may have tokens (nothing changes).
    pub fn check_code(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
        now: i64,
    ) -> Result<&Grant, RedeemError> {
        let grant = self.grant_by_code(code).ok_or(RedeemError::Unknown)?;
        if grant.exchanged_at.is_some() {
            return Err(RedeemError::Used);
        }
        if now >= grant.code_expires_at {
            return Err(RedeemError::Expired);
        }
        if !is_device_callback(redirect_uri) {
            return Err(RedeemError::RedirectMismatch);
        }
        if pkce_challenge(code_verifier) != grant.code_challenge {
            return Err(RedeemError::VerifierMismatch);
        }
        Ok(grant)
    }

    /// Step 4, second half: the code was exchanged and cannot be again.
    pub fn mark_exchanged(&mut self, code: &str, now: i64) {
        for login in self.logins.iter_mut().rev() {
            if let Phase::Approved(g) = &mut login.phase {
                if g.authorization_code == code {
                    g.exchanged_at = Some(now);
                    return;
                }
            }
        }
    }

    /// The account an authorization code is for.
    pub fn owner_of_code(&self, code: &str) -> Option<&str> {
        self.grant_by_code(code).map(|g| g.account_id.as_str())
    }

    /// The account an approved login is for.
    pub fn owner_of_device(&self, device_auth_id: &str) -> Option<&str> {
        self.logins
            .iter()
            .rev()
            .find(|l| l.device_auth_id == device_auth_id)
            .and_then(DeviceLogin::grant)
            .map(|g| g.account_id.as_str())
    }

    /// Views of every login, oldest first.
    pub fn views(&self, now: i64) -> Vec<DeviceLoginView> {
        self.logins.iter().map(|l| l.view(now)).collect()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: the issuer's device-auth endpoints.

/// The issuer routes of the device flow.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route(USERCODE_PATH, post(usercode))
        .route(POLL_PATH, post(poll))
        .route(VERIFICATION_PATH, get(verification_page))
}

/// A pydantic-style validation answer (the deviceauth endpoints are a FastAPI-like service:
/// a form body is refused with `model_attributes_type`, a missing field with `missing`).
fn validation_error(kind: &str, loc: &[&str], msg: &str) -> Response {
    json_status(
        400,
        json!({"detail": [{"type": kind, "loc": loc, "msg": msg}]}),
    )
}

#[allow(clippy::result_large_err)]
fn json_object(req: &Request) -> Result<Map<String, Value>, Response> {
    let body = match req.extensions().get::<DecodedBody>() {
        Some(DecodedBody(Ok(b))) => b.clone(),
        _ => return Err(detail(400, "Unreadable body")),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(validation_error(
            "model_attributes_type",
            &["body"],
            "Input should be a valid dictionary or object to extract fields from",
        )),
    }
}

#[allow(clippy::result_large_err)]
fn required_str(m: &Map<String, Value>, key: &str) -> Result<String, Response> {
    match m.get(key) {
        None | Some(Value::Null) => Err(validation_error(
            "missing",
            &["body", key],
            "Field required",
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(validation_error(
            "string_type",
            &["body", key],
            "Input should be a valid string",
        )),
    }
}

async fn usercode(State(st): State<Shared>, req: Request) -> Response {
    let (enabled, interval, ttl) = {
        let g = st.lock();
        (
            g.behavior.device_login_enabled,
            g.behavior.device_poll_interval_secs,
            g.behavior.device_code_ttl_secs,
        )
    };
    if !enabled {
        // What the CLI reports as "device code login is not enabled for this Codex server".
        return detail(404, "Not Found");
    }
    let m = match json_object(&req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let client_id = match required_str(&m, "client_id") {
        Ok(c) => c,
        Err(r) => return r,
    };
    if client_id != CODEX_CLIENT_ID {
        return openai_error(
            401,
            "invalid_client",
            "invalid_request_error",
            "Unknown client_id.",
        );
    }
    let now = st.clock.now();
    let login = st.lock().device.start(&client_id, now, ttl);
    Json(json!({
        "device_auth_id": login.device_auth_id,
        "user_code": login.user_code,
        "interval": interval.to_string(),
        "expires_at": rfc3339(login.expires_at as f64),
    }))
    .into_response()
}

async fn poll(State(st): State<Shared>, req: Request) -> Response {
    let m = match json_object(&req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let device_auth_id = match required_str(&m, "device_auth_id") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let user_code = match required_str(&m, "user_code") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = st.clock.now();
    let (outcome, denied_status, expired_status) = {
        let mut g = st.lock();
        let auto = g.behavior.device_auto_approve_after_polls.map(|n| {
            (
                n,
                g.behavior
                    .device_auto_approve_as
                    .clone()
                    .unwrap_or_default(),
            )
        });
        let denied_status = g.behavior.device_denied_status;
        let expired_status = g.behavior.device_expired_status;
        let outcome = g.device.poll(
            &device_auth_id,
            &user_code,
            now,
            auto.as_ref().map(|(n, who)| (*n, who)),
        );
        (outcome, denied_status, expired_status)
    };
    match outcome {
        PollOutcome::Pending => openai_error(
            403,
            CODE_PENDING,
            "invalid_request_error",
            "Device authorization is pending. Please try again.",
        ),
        PollOutcome::Approved {
            authorization_code,
            code_challenge,
            code_verifier,
        } => Json(json!({
            "authorization_code": authorization_code,
            "code_challenge": code_challenge,
            "code_verifier": code_verifier,
        }))
        .into_response(),
        PollOutcome::Denied => openai_error(
            denied_status,
            CODE_DENIED,
            "invalid_request_error",
            "Device authorization was denied.",
        ),
        PollOutcome::Expired => openai_error(
            expired_status,
            CODE_EXPIRED,
            "invalid_request_error",
            "Your device code has expired. Please start again.",
        ),
        PollOutcome::NotFound => openai_error(
            404,
            CODE_NOT_FOUND,
            "invalid_request_error",
            "Device authorization not found.",
        ),
    }
}

async fn verification_page() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>codexmesh-sim: device login</title></head><body>\
         <h1>Device login (simulated)</h1>\
         <p>The simulator has no sign-in page. A test approves a code with \
         <code>POST /__sim/device/approve {\"user_code\":\"XXXX-XXXXX\"}</code> \
         (or denies it with <code>POST /__sim/device/deny</code>).</p></body></html>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn user_codes_look_right() {
        let mut d = DeviceLogins::new();
        let a = d.start(CODEX_CLIENT_ID, T0, 900);
        let b = d.start(CODEX_CLIENT_ID, T0, 900);
        assert_ne!(a.user_code, b.user_code);
        assert_ne!(a.device_auth_id, b.device_auth_id);
        assert_eq!(a.user_code.len(), 10);
        assert_eq!(&a.user_code[4..5], "-");
        assert!(a
            .user_code
            .bytes()
            .all(|c| c == b'-' || USER_CODE_ALPHABET.contains(&c)));
        assert!(a.device_auth_id.starts_with("deviceauth_"));
        assert_eq!(a.expires_at, T0 + 900);
        assert_eq!(normalize_user_code(" abcd-efghj "), "ABCDEFGHJ");
    }

    #[test]
    fn callback_check() {
        assert!(is_device_callback(
            "http://127.0.0.1:4000/deviceauth/callback"
        ));
        assert!(is_device_callback(
            "https://auth.openai.com/deviceauth/callback"
        ));
        assert!(!is_device_callback(
            "https://auth.openai.com/api/accounts/deviceauth/callback"
        ));
        assert!(!is_device_callback("http://localhost:1455/auth/callback"));
        assert!(!is_device_callback("/deviceauth/callback"));
        assert!(!is_device_callback("http://h/deviceauth/callback?x=1"));
        assert!(!is_device_callback(""));
    }

    #[test]
    fn pending_then_approved_then_exchanged() {
        let mut d = DeviceLogins::new();
        let l = d.start(CODEX_CLIENT_ID, T0, 900);
        let id = l.device_auth_id.clone();
        assert_eq!(
            d.poll(&id, &l.user_code, T0 + 5, None),
            PollOutcome::Pending
        );
        // A wrong user code or id names nothing.
        assert_eq!(
            d.poll(&id, "ZZZZ-ZZZZZ", T0 + 5, None),
            PollOutcome::NotFound
        );
        assert_eq!(
            d.poll("deviceauth_x", &l.user_code, T0, None),
            PollOutcome::NotFound
        );

        let who = SignInAs {
            account_id: Some("acc-d".into()),
            plan: Some("pro".into()),
            email: None,
        };
        let approved = d
            .approve(Some(&l.user_code.to_lowercase()), who, T0 + 7)
            .unwrap();
        assert_eq!(approved.status(T0 + 7), Status::Approved);
        assert_eq!(d.owner_of_device(&id), Some("acc-d"));
        let PollOutcome::Approved {
            authorization_code,
            code_challenge,
            code_verifier,
        } = d.poll(&id, &l.user_code, T0 + 10, None)
        else {
            panic!("not approved");
        };
        assert_eq!(pkce_challenge(&code_verifier), code_challenge);
        assert!(code_verifier.len() >= 43);
        assert_eq!(d.owner_of_code(&authorization_code), Some("acc-d"));

        let cb = "http://127.0.0.1:1/deviceauth/callback";
        assert_eq!(
            d.check_code(&authorization_code, "wrong", cb, T0 + 11)
                .err(),
            Some(RedeemError::VerifierMismatch)
        );
        assert_eq!(
            d.check_code(
                &authorization_code,
                &code_verifier,
                "http://localhost:1455/auth/callback",
                T0 + 11
            )
            .err(),
            Some(RedeemError::RedirectMismatch)
        );
        assert_eq!(
            d.check_code("ac_nope", &code_verifier, cb, T0 + 11).err(),
            Some(RedeemError::Unknown)
        );
        let g = d
            .check_code(&authorization_code, &code_verifier, cb, T0 + 11)
            .unwrap();
        assert_eq!(g.plan.as_deref(), Some("pro"));
        d.mark_exchanged(&authorization_code, T0 + 11);
        assert_eq!(
            d.check_code(&authorization_code, &code_verifier, cb, T0 + 12)
                .err(),
            Some(RedeemError::Used)
        );
        // Polls after the exchange still show the grant; the state says exchanged.
        assert!(matches!(
            d.poll(&id, &l.user_code, T0 + 13, None),
            PollOutcome::Approved { .. }
        ));
        let v = &d.views(T0 + 13)[0];
        assert_eq!(v.status, Status::Exchanged);
        assert_eq!(v.polls, 3);
        assert_eq!(v.exchanged_at, Some(T0 + 11));
        // Approving again is a conflict.
        assert!(matches!(
            d.approve(Some(&l.user_code), SignInAs::default(), T0 + 14),
            Err(ControlError::Conflict(_))
        ));
    }

    #[test]
    fn denial_and_expiry() {
        let mut d = DeviceLogins::new();
        let a = d.start(CODEX_CLIENT_ID, T0, 900);
        let b = d.start(CODEX_CLIENT_ID, T0, 900);
        // Two pending: the control call must name one.
        assert!(matches!(d.deny(None, T0), Err(ControlError::Conflict(_))));
        d.deny(Some(&a.user_code), T0 + 1).unwrap();
        assert_eq!(
            d.poll(&a.device_auth_id, &a.user_code, T0 + 2, None),
            PollOutcome::Denied
        );
        assert!(matches!(
            d.approve(Some(&a.user_code), SignInAs::default(), T0 + 3),
            Err(ControlError::Conflict(_))
        ));
        // The user code of b runs out.
        assert_eq!(
            d.poll(&b.device_auth_id, &b.user_code, T0 + 899, None),
            PollOutcome::Pending
        );
        assert_eq!(
            d.poll(&b.device_auth_id, &b.user_code, T0 + 900, None),
            PollOutcome::Expired
        );
        assert!(matches!(
            d.approve(None, SignInAs::default(), T0 + 901),
            Err(ControlError::NotFound(_))
        ));
        assert!(matches!(
            d.approve(Some("NONE-XXXXX"), SignInAs::default(), T0),
            Err(ControlError::NotFound(_))
        ));
        assert!(matches!(
            d.approve(
                None,
                SignInAs {
                    account_id: Some(" ".into()),
                    ..SignInAs::default()
                },
                T0
            ),
            Err(ControlError::BadRequest(_))
        ));
    }

    #[test]
    fn unexchanged_code_expires() {
        let mut d = DeviceLogins::new();
        let l = d.start(CODEX_CLIENT_ID, T0, 900);
        d.approve(None, SignInAs::default(), T0 + 890).unwrap();
        // Approved in time: the code outlives the user code...
        let PollOutcome::Approved {
            authorization_code,
            code_verifier,
            ..
        } = d.poll(&l.device_auth_id, &l.user_code, T0 + 950, None)
        else {
            panic!("not approved");
        };
        let cb = "http://h/deviceauth/callback";
        let at = T0 + 890 + AUTH_CODE_TTL_SECS;
        assert!(d
            .check_code(&authorization_code, &code_verifier, cb, at - 1)
            .is_ok());
        // ...but not for ever.
        assert_eq!(
            d.check_code(&authorization_code, &code_verifier, cb, at)
                .err(),
            Some(RedeemError::Expired)
        );
        assert_eq!(
            d.poll(&l.device_auth_id, &l.user_code, at, None),
            PollOutcome::Expired
        );
        // A new account id was drawn.
        assert_eq!(d.owner_of_code(&authorization_code).unwrap().len(), 36);
    }

    #[test]
    fn auto_approval_after_n_polls() {
        let mut d = DeviceLogins::new();
        let l = d.start(CODEX_CLIENT_ID, T0, 900);
        let who = SignInAs {
            account_id: Some("acc-auto".into()),
            ..SignInAs::default()
        };
        for _ in 0..2 {
            assert_eq!(
                d.poll(&l.device_auth_id, &l.user_code, T0, Some((2, &who))),
                PollOutcome::Pending
            );
        }
        assert!(matches!(
            d.poll(&l.device_auth_id, &l.user_code, T0, Some((2, &who))),
            PollOutcome::Approved { .. }
        ));
        assert_eq!(d.owner_of_device(&l.device_auth_id), Some("acc-auto"));
        // Zero approves at the first poll; an expired login is never auto-approved.
        let m = d.start(CODEX_CLIENT_ID, T0, 900);
        assert!(matches!(
            d.poll(&m.device_auth_id, &m.user_code, T0, Some((0, &who))),
            PollOutcome::Approved { .. }
        ));
        let n = d.start(CODEX_CLIENT_ID, T0, 900);
        assert_eq!(
            d.poll(&n.device_auth_id, &n.user_code, T0 + 900, Some((0, &who))),
            PollOutcome::Expired
        );
    }

    #[test]
    fn logins_are_bounded() {
        let mut d = DeviceLogins::new();
        let first = d.start(CODEX_CLIENT_ID, T0, 900);
        for _ in 0..MAX_LOGINS {
            d.start(CODEX_CLIENT_ID, T0, 900);
        }
        assert_eq!(d.all().count(), MAX_LOGINS);
        assert_eq!(
            d.poll(&first.device_auth_id, &first.user_code, T0, None),
            PollOutcome::NotFound
        );
    }
}
