//! Operator use cases (issue 11): the first owner from a one-time bootstrap secret; creating,
//! listing and changing operators within what the acting principal may do; passwords (argon2id);
//! sign-in with throttling; session tokens; API tokens; reading the audit log.
//!
//! Rules: every use case that acts for someone acts for [`Ops::access`] (the shell's full access
//! for the CLI, a verified session's or API token's for the admin API) and checks it first; what
//! the principal may not see is "not found" (a surface answers 404), what it sees but may not
//! change is [`OpsError::Forbidden`]. Every change that is refused or fails is audited with its
//! outcome ([`Ops::audited`]); a change that is made is audited by the store in its transaction.
//! Raw secrets (passwords, tokens, bootstrap secrets, TOTP secrets and codes) exist only in the
//! arguments and in the one result that shows them once: never in a log line, an audit detail,
//! an error message or `Debug` output.
//!
//! Decisions (documented for the admin API that builds on this):
//! - **Session tokens** are HS256 JWTs (`{"alg":"HS256","typ":"JWT"}`, claims `sub` operator
//!   id, `role`, `epoch`, `iat`, `exp`, `typ:"session"`, and `scope:"totp_setup"` on a
//!   restricted session), made and checked by `jsonwebtoken` ([`jsonwebtoken::encode`],
//!   [`jsonwebtoken::decode`] with a [`jsonwebtoken::Validation`] that admits HS256 only,
//!   requires `exp` and `sub`, checks `exp` with 5 seconds of leeway; `typ`, `scope` and the
//!   header's `typ` are checked here). The key is derived from the master key by HKDF-SHA256
//!   (`MasterKey::derive("operator-session-signing/v1")`): no new secret file, and rotating the
//!   master key signs everyone out. A token is revoked when the operator's `session_epoch`
//!   moves (sign-out, password, role, disable, TOTP enabled or disabled) and refused when its
//!   role no longer matches.
//! - **The JWT crypto provider** is our own ([`jsonwebtoken::crypto::CryptoProvider`], installed
//!   once per process before the first token is made or checked): HS256 with the `hmac` and
//!   `sha2` crates (constant-time comparison), nothing else. `jsonwebtoken`'s own backends
//!   (`rust_crypto`, `aws_lc_rs`) would bring rsa, p256, p384 and ed25519 into the tree for one
//!   HMAC. Any other algorithm (a header saying `none`, HS512, RS256, ...) is an error, never a
//!   panic; its JWK helpers refuse RSA and EC keys. If another provider was installed first, no
//!   token is made or checked (an internal error) rather than trusting it.
//! - **Sign-in throttling**, in the store so it holds across processes: per operator, 5
//!   consecutive failures lock it for 15 minutes (a success resets the count); per client
//!   address (`ops.actor().client`; local callers without one count as `local`), 20 failures
//!   within 15 minutes lock the address for 15 minutes. A locked operator or address is refused
//!   before the password is checked ([`ErrorKind::RateLimited`](super::ErrorKind)). An unknown
//!   name still costs one argon2 verification (against a dummy hash) so timing does not tell
//!   which names exist; every failure has the same message.
//! - **Sign-in is audited**: `session.sign_in` with outcome `ok`, `unauthenticated` or
//!   `rate_limited`, the actor `operator:NAME` (the name as typed for a failure; a name that is
//!   not a valid operator name shows as `operator:(invalid name)`) and the client address; the
//!   target and pools are the operator's when the name is one. Sign-out is `session.sign_out`.
//! - **Bootstrap**: a `cmb_…` secret valid for one hour and once, only while no owner exists;
//!   each stays valid until it expires or an owner exists (replicas starting together each
//!   print one). Using it is audited as `bootstrap:NAME` (the name as typed for a refused
//!   attempt) with the client address. Wrong secrets count against the client address like
//!   failed sign-ins (20 in 15 minutes lock it); a locked address is refused without an
//!   audit row, as are sign-in attempts from it, so no stranger can grow the log unboundedly.
//! - **TOTP** (RFC 6238 via `totp-rs`: SHA-1, 6 digits, 30 s, one step of skew): enrolling
//!   stores a 20-byte random secret sealed with the master key (owner = operator id, field
//!   `totp_secret`) and shows it once (base32 and an `otpauth://` URI); it is enabled only after
//!   a code is confirmed. Then sign-in needs a code; a wrong or missing code counts as a failed
//!   sign-in. **Replay protection**: a code is accepted only for a time step later than the last
//!   one the operator used (sign-in or confirm; kept in `operators.totp_last_step`), so a code
//!   works once, and the one that confirmed the factor does not also sign in. Not yet: recovery
//!   codes.
//! - **`require_totp`** (setting `CODEXMESH_REQUIRE_TOTP`): an operator without an enabled
//!   second factor who signs in with the right password gets a *restricted* session
//!   ([`SignedIn::totp_setup_required`], claim `scope:"totp_setup"`, valid 15 minutes).
//!   [`verify_session`] reports it as [`Session::totp_setup_only`] (also for an older full token
//!   of an operator still without TOTP while the setting is on), with an [`Access`] that sees no
//!   pool and changes nothing, so a surface that forgot to check still shows nothing; a surface
//!   must allow such a session only [`totp_enroll`] and [`totp_confirm`] for itself and
//!   [`sign_out`] (403 for everything else). Confirming the second factor moves the operator's
//!   session epoch, which ends the restricted session: the operator signs in again with its
//!   password and a *new* code (the confirming one is used up) and gets a full session. API
//!   tokens are not sessions: the setting does not affect them.
//! - **The last owner stays**: demoting or disabling the last enabled owner is refused
//!   ([`ErrorKind::Conflict`](super::ErrorKind)); the store checks it inside the change's
//!   transaction, so two such changes at once cannot both pass.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Ops, OpsError, Outcome};
use codexmesh_model::operators::{
    secret_hash_hex, validate_operator_name, validate_password, Access, ApiToken, Operator,
    Principal, RawApiToken, RawBootstrapSecret, Role,
};
use codexmesh_model::records::{AuditEntry, Changed};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::crypto::{CryptoError, Keys};
use codexmesh_store::{Actor, AuditFilter, Entity, Lookup, NewOperator, StoreError, Throttle};

/// How long a bootstrap secret is valid.
pub const BOOTSTRAP_TTL_MS: i64 = 60 * 60 * 1000;
/// How long a session token is valid.
pub const SESSION_TTL_SECS: i64 = 12 * 60 * 60;
/// How long a restricted session (`require_totp`, no second factor yet) is valid.
pub const TOTP_SETUP_SESSION_TTL_SECS: i64 = 15 * 60;
/// Per operator: consecutive failures that lock it, and for how long.
pub const OPERATOR_THROTTLE: Throttle = Throttle {
    max_failures: 5,
    window_ms: i64::MAX,
    lock_ms: 15 * 60 * 1000,
};
/// Per client address: failures within the window that lock it, and for how long.
pub const CLIENT_THROTTLE: Throttle = Throttle {
    max_failures: 20,
    window_ms: 15 * 60 * 1000,
    lock_ms: 15 * 60 * 1000,
};
/// The client address a sign-in without one (local use) is throttled as.
pub const LOCAL_CLIENT: &str = "local";
const SESSION_KEY_PURPOSE: &str = "operator-session-signing/v1";
const SESSION_TYP: &str = "session";
const TOTP_SETUP_SCOPE: &str = "totp_setup";
const SIGN_IN_FAILED: &str = "wrong name or password";
const SESSION_INVALID: &str = "invalid, expired or revoked session";

fn not_found(ident: &str) -> OpsError {
    StoreError::NotFound {
        what: Entity::Operator,
        ident: ident.to_owned(),
        lookup: Lookup::IdOrName,
    }
    .into()
}

fn check_pools_grantable(access: &Access, role: Role, pools: &[String]) -> Result<(), OpsError> {
    if !access.role.may_grant(role) {
        return Err(OpsError::Forbidden(format!(
            "a {} may not grant the role {role}",
            access.role
        )));
    }
    if let Some(p) = pools.iter().find(|p| !access.sees_pool(p)) {
        return Err(StoreError::NotFound {
            what: Entity::Pool,
            ident: p.clone(),
            lookup: Lookup::Name,
        }
        .into());
    }
    Ok(())
}

fn refs(pools: &[String]) -> Vec<&str> {
    pools.iter().map(String::as_str).collect()
}

/// An argon2id PHC string for `password` (the crate's default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, OpsError> {
    let mut salt = [0u8; 16];
    util::random_bytes(&mut salt).map_err(StoreError::from)?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| OpsError::Conflict(format!("cannot encode the salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OpsError::Conflict(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches the PHC string (argon2's comparison is constant-time).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash nobody's password matches, verified for unknown names (same cost as a real check).
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut pw = [0u8; 24];
        let _ = util::random_bytes(&mut pw);
        hash_password(&hex::encode(pw)).unwrap_or_default()
    })
}

/// A fresh bootstrap secret, shown once.
#[derive(Debug)]
pub struct IssuedBootstrap {
    pub secret: RawBootstrapSecret,
    pub expires_at_ms: i64,
}

/// Whether an owner exists (serve's start-up note: with none, it says how to make the first).
pub async fn owner_exists(ops: &Ops) -> Result<bool, OpsError> {
    Ok(ops.store().await?.owner_exists().await?)
}

/// Creates the one-time secret that makes the first owner. Refused once an owner exists.
pub async fn bootstrap_secret(ops: &Ops) -> Result<Outcome<IssuedBootstrap>, OpsError> {
    let result = async {
        let store = ops.store().await?;
        if store.owner_exists().await? {
            return Err(OpsError::Conflict(
                "an owner exists already: the owner creates operators (codexmesh operator create)"
                    .into(),
            ));
        }
        let secret = RawBootstrapSecret::generate().map_err(StoreError::from)?;
        let expires_at_ms = now_ms() + BOOTSTRAP_TTL_MS;
        store
            .create_bootstrap_secret(ops.actor(), &secret.hash_hex(), expires_at_ms)
            .await?;
        Ok(Outcome::new(IssuedBootstrap {
            secret,
            expires_at_ms,
        }))
    }
    .await;
    ops.audited("operator.bootstrap_secret", None, &[], result)
        .await
}

/// Uses the bootstrap secret to create the first owner (once, before it expires). Audited as
/// `bootstrap:NAME` from the request's client, refusals too (never the secret or password).
pub async fn bootstrap_owner(
    ops: &Ops,
    secret: &str,
    name: &str,
    password: &str,
) -> Result<Outcome<Operator>, OpsError> {
    let actor = actor_as(ops, "bootstrap", name);
    // Guessing is throttled like sign-in, per client address; while the address is locked its
    // attempts are refused unheard and not audited (so they cannot grow the log).
    let client = unlocked_client(ops, "attempts").await?;
    let store = ops.store().await?;
    let result = async {
        validate_operator_name(name).map_err(StoreError::from)?;
        validate_password(password).map_err(StoreError::from)?;
        let hash = hash_password(password)?;
        let op = store
            .consume_bootstrap_secret(&actor, &secret_hash_hex(secret), name, &hash)
            .await;
        if let Err(StoreError::NotFound { .. }) = &op {
            store
                .record_client_failure(&client, CLIENT_THROTTLE)
                .await?;
        }
        Ok(Outcome::new(op?))
    }
    .await;
    if let Err(e) = &result {
        ops.audit_refusal_as(&actor, "operator.bootstrap", None, &[], e)
            .await;
    }
    result
}

/// Creates an operator with `role` over `pools` (owners take no pools).
pub async fn create(
    ops: &Ops,
    name: &str,
    role: Role,
    pools: &[String],
    password: Option<&str>,
) -> Result<Outcome<Operator>, OpsError> {
    let result = async {
        validate_operator_name(name).map_err(StoreError::from)?;
        if let Some(p) = password {
            validate_password(p).map_err(StoreError::from)?;
        }
        if role == Role::Owner && !pools.is_empty() {
            return Err(OpsError::invalid(
                "pools",
                "owners see every pool: they take no --pools",
            ));
        }
        check_pools_grantable(ops.access(), role, pools)?;
        let hash = password.map(hash_password).transpose()?;
        let store = ops.store().await?;
        let op = store
            .create_operator(
                ops.actor(),
                &NewOperator {
                    name,
                    role,
                    pools,
                    password_hash: hash.as_deref(),
                },
            )
            .await?;
        Ok(Outcome::new(op))
    }
    .await;
    ops.audited("operator.create", Some(name), &refs(pools), result)
        .await
}

/// The operators the principal may see.
pub async fn list(ops: &Ops) -> Result<Outcome<Vec<Operator>>, OpsError> {
    let store = ops.store().await?;
    let all = store.list_operators().await?;
    Ok(Outcome::new(
        all.into_iter()
            .filter(|o| ops.access().sees_operator(o))
            .collect(),
    ))
}

/// One operator (by id or name) the principal sees.
pub async fn get(ops: &Ops, ident: &str) -> Result<Outcome<Operator>, OpsError> {
    Ok(Outcome::new(visible(ops, ident).await?))
}

/// The operator `ident` as the principal sees it (not visible: not found).
async fn visible(ops: &Ops, ident: &str) -> Result<Operator, OpsError> {
    let store = ops.store().await?;
    let op = match store.find_operator(ident).await {
        Ok(op) => op,
        Err(StoreError::NotFound { .. }) => return Err(not_found(ident)),
        Err(e) => return Err(e.into()),
    };
    if !ops.access().sees_operator(&op) {
        return Err(not_found(ident));
    }
    Ok(op)
}

/// Refuses `op` unless the principal may manage it (seen but not manageable: forbidden).
fn require_manage(ops: &Ops, op: &Operator) -> Result<(), OpsError> {
    if ops.access().may_manage_operator(op) {
        Ok(())
    } else {
        Err(OpsError::Forbidden(format!(
            "a {} may not change operator {}",
            ops.access().role,
            op.name
        )))
    }
}

fn is_self(ops: &Ops, op: &Operator) -> bool {
    matches!(&ops.access().principal, Principal::Operator { id, .. } if *id == op.id)
}

/// Sets an operator's role (revokes its sessions). The last enabled owner keeps its role.
pub async fn set_role(
    ops: &Ops,
    ident: &str,
    role: Role,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let op = visible(ops, ident).await?;
        pools.clone_from(&op.pools);
        require_manage(ops, &op)?;
        check_pools_grantable(ops.access(), role, &op.pools)?;
        let store = ops.store().await?;
        Ok(Outcome::new(
            store.set_operator_role(ops.actor(), &op.id, role).await?,
        ))
    }
    .await;
    ops.audited("operator.set_role", Some(ident), &refs(&pools), result)
        .await
}

/// Replaces an operator's pools.
pub async fn assign(
    ops: &Ops,
    ident: &str,
    pools: &[String],
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let mut aimed: Vec<String> = pools.to_vec();
    let result = async {
        let op = visible(ops, ident).await?;
        aimed.extend(op.pools.iter().cloned());
        require_manage(ops, &op)?;
        check_pools_grantable(ops.access(), op.role, pools)?;
        let store = ops.store().await?;
        Ok(Outcome::new(
            store.set_operator_pools(ops.actor(), &op.id, pools).await?,
        ))
    }
    .await;
    ops.audited("operator.assign", Some(ident), &refs(&aimed), result)
        .await
}

/// Disables (revoking its sessions) or re-enables an operator. The last enabled owner stays
/// enabled.
pub async fn set_disabled(
    ops: &Ops,
    ident: &str,
    disabled: bool,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let op = visible(ops, ident).await?;
        pools.clone_from(&op.pools);
        require_manage(ops, &op)?;
        let store = ops.store().await?;
        Ok(Outcome::new(
            store
                .set_operator_disabled(ops.actor(), &op.id, disabled)
                .await?,
        ))
    }
    .await;
    let action = if disabled {
        "operator.disable"
    } else {
        "operator.enable"
    };
    ops.audited(action, Some(ident), &refs(&pools), result)
        .await
}

/// Sets an operator's password (revokes its sessions, clears its lockout). An operator may
/// always set its own.
pub async fn set_password(
    ops: &Ops,
    ident: &str,
    password: &str,
) -> Result<Outcome<Operator>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        validate_password(password).map_err(StoreError::from)?;
        let target = visible(ops, ident).await?;
        pools.clone_from(&target.pools);
        if !is_self(ops, &target) {
            require_manage(ops, &target)?;
        }
        let hash = hash_password(password)?;
        let store = ops.store().await?;
        Ok(Outcome::new(
            store
                .set_operator_password(ops.actor(), &target.id, &hash)
                .await?,
        ))
    }
    .await;
    ops.audited("operator.set_password", Some(ident), &refs(&pools), result)
        .await
}

use codexmesh_store::TOTP_FIELD;
const TOTP_SECRET_LEN: usize = 20;
const TOTP_STEP_SECS: u64 = 30;
const TOTP_DIGITS: usize = 6;
/// Time steps accepted on either side of the current one (clock drift, typing time).
const TOTP_SKEW_STEPS: i64 = 1;

/// A TOTP (SHA-1, 6 digits, 30 s) that checks exactly one step: [`totp_step`] walks the skew
/// itself, to know which step a code belongs to.
fn totp_for(secret: Vec<u8>) -> Result<totp_rs::TOTP, OpsError> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP_SECS,
        secret,
    )
    .map_err(|e| OpsError::Conflict(format!("cannot set up the second factor: {e}")))
}

/// The time step (unix time / 30) whose code `code` is, within one step of now, for the sealed
/// secret; None when it is no such code. Each candidate is compared in constant time.
fn totp_step(
    ops: &Ops,
    operator_id: &str,
    sealed: &[u8],
    code: &str,
) -> Result<Option<i64>, OpsError> {
    let secret = ops
        .settings()
        .master_keys()?
        .open(operator_id, TOTP_FIELD, sealed)
        .map_err(StoreError::from)?;
    let totp = totp_for(secret)?;
    let code = code.trim();
    let now_step = now_ms() / 1000 / TOTP_STEP_SECS as i64;
    Ok(
        ((now_step - TOTP_SKEW_STEPS)..=(now_step + TOTP_SKEW_STEPS))
            .find(|step| u64::try_from(*step).is_ok_and(|s| totp.check(code, s * TOTP_STEP_SECS))),
    )
}

/// Whether `code` is a current code of the operator's sealed secret that was not used before;
/// a match uses up its time step (replay protection).
async fn use_totp_code(
    ops: &Ops,
    operator_id: &str,
    sealed: &[u8],
    code: &str,
) -> Result<TotpCheck, OpsError> {
    let Some(step) = totp_step(ops, operator_id, sealed, code)? else {
        return Ok(TotpCheck::Wrong);
    };
    if ops.store().await?.use_totp_step(operator_id, step).await? {
        Ok(TotpCheck::Accepted)
    } else {
        Ok(TotpCheck::Replayed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TotpCheck {
    Accepted,
    Wrong,
    /// A right code whose time step (or a later one) was used already.
    Replayed,
}

/// A second factor's secret, shown once. `Debug` redacts it.
pub struct TotpEnrollment {
    pub operator: Operator,
    /// Base32, for typing into an authenticator.
    pub secret_base32: String,
    /// `otpauth://totp/...`, for a QR code.
    pub uri: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollment")
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

/// The operator itself, or one the principal manages.
async fn self_or_managed(ops: &Ops, ident: &str) -> Result<Operator, OpsError> {
    let target = visible(ops, ident).await?;
    if !is_self(ops, &target) {
        require_manage(ops, &target)?;
    }
    Ok(target)
}

/// Starts enrolling a second factor: a new secret, sealed, not yet enabled (an enabled one is
/// replaced and off until the new one is confirmed).
pub async fn totp_enroll(ops: &Ops, ident: &str) -> Result<Outcome<TotpEnrollment>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let op = self_or_managed(ops, ident).await?;
        pools.clone_from(&op.pools);
        let mut secret = vec![0u8; TOTP_SECRET_LEN];
        util::random_bytes(&mut secret).map_err(StoreError::from)?;
        let keys = ops.settings().master_keys()?;
        let totp = totp_for(secret.clone())?;
        let secret_base32 = totp.get_secret_base32();
        let uri = format!(
            "otpauth://totp/codexmesh:{}?secret={secret_base32}&issuer=codexmesh&algorithm=SHA1&digits=6&period=30",
            op.name.replace(':', "_")
        );
        let operator = ops
            .store()
            .await?
            .enroll_operator_totp(ops.actor(), &op.id, &secret, &keys)
            .await?;
        Ok(Outcome::new(TotpEnrollment {
            operator,
            secret_base32,
            uri,
        }))
    }
    .await;
    ops.audited("operator.totp_enroll", Some(ident), &refs(&pools), result)
        .await
}

/// Enables the enrolled second factor once `code` (a current code, not used before) proves the
/// operator has it. This moves the operator's session epoch: every session ends, a restricted
/// one (`require_totp`) included; the operator signs in again with a new code.
pub async fn totp_confirm(
    ops: &Ops,
    ident: &str,
    code: &str,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let op = self_or_managed(ops, ident).await?;
        pools.clone_from(&op.pools);
        let store = ops.store().await?;
        let creds = store.operator_credentials(&op.id).await?;
        let Some(sealed) = creds.totp_secret_sealed else {
            return Err(OpsError::invalid(
                "totp",
                format!("operator {} has no enrolled second factor", op.name),
            ));
        };
        match use_totp_code(ops, &op.id, &sealed, code).await? {
            TotpCheck::Accepted => {}
            TotpCheck::Wrong => return Err(OpsError::invalid("code", "the code does not match")),
            TotpCheck::Replayed => {
                return Err(OpsError::invalid(
                    "code",
                    "this code was used already: wait for the next one",
                ))
            }
        }
        Ok(Outcome::new(
            store
                .set_operator_totp_enabled(ops.actor(), &op.id, true)
                .await?,
        ))
    }
    .await;
    ops.audited("operator.totp_enable", Some(ident), &refs(&pools), result)
        .await
}

/// Turns the second factor off and drops its secret (ends the operator's sessions).
pub async fn totp_disable(ops: &Ops, ident: &str) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let op = self_or_managed(ops, ident).await?;
        pools.clone_from(&op.pools);
        Ok(Outcome::new(
            ops.store()
                .await?
                .set_operator_totp_enabled(ops.actor(), &op.id, false)
                .await?,
        ))
    }
    .await;
    ops.audited("operator.totp_disable", Some(ident), &refs(&pools), result)
        .await
}

/// HS256 JWTs through `jsonwebtoken` with a crypto provider of our own (see the module doc):
/// HMAC-SHA256 from `hmac` + `sha2`, every other algorithm an error.
mod jwt {
    use std::sync::OnceLock;

    use hmac::{Hmac, Mac};
    use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
    use jsonwebtoken::errors::{Error, ErrorKind};
    use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
    // `jsonwebtoken` re-exports the `signature` crate its traits are built on: the same version
    // by construction.
    use jsonwebtoken::signature;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use sha2::{Digest, Sha256, Sha384, Sha512};

    /// Seconds of clock skew allowed on `exp`.
    pub(super) const LEEWAY_SECS: u64 = 5;

    /// HMAC-SHA256 under one key: the only signer and verifier [`PROVIDER`] makes.
    struct Hs256(Hmac<Sha256>);

    impl Hs256 {
        fn new(secret: &[u8]) -> Result<Self, Error> {
            <Hmac<Sha256> as Mac>::new_from_slice(secret)
                .map(Self)
                .map_err(|_| ErrorKind::InvalidKeyFormat.into())
        }
    }

    impl signature::Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            let mut mac = self.0.clone();
            mac.update(msg);
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }

    impl signature::Verifier<Vec<u8>> for Hs256 {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
            let mut mac = self.0.clone();
            mac.update(msg);
            // Constant-time comparison.
            mac.verify_slice(sig).map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
        match alg {
            Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?)),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
        match alg {
            Algorithm::HS256 => Ok(Box::new(Hs256::new(key.try_get_hmac_secret()?)?)),
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    fn no_rsa_keys(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        Err(ErrorKind::InvalidRsaKey("this provider supports HS256 only".into()).into())
    }

    fn no_ec_keys(
        _der: &[u8],
        _alg: Algorithm,
    ) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
        Err(ErrorKind::InvalidEcdsaKey.into())
    }

    fn digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
        match hash {
            ThumbprintHash::SHA256 => Sha256::digest(data).to_vec(),
            ThumbprintHash::SHA384 => Sha384::digest(data).to_vec(),
            ThumbprintHash::SHA512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The provider: HS256 only; JWK key extraction refused (an error, not
    /// `JwkUtils::new_unimplemented`'s panic), thumbprint digests with `sha2`.
    pub(super) static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        jwk_utils: JwkUtils {
            extract_rsa_public_key_components: no_rsa_keys,
            extract_ec_public_key_coordinates: no_ec_keys,
            compute_digest: digest,
        },
    };

    /// Installs [`PROVIDER`] as the process's provider (the first call; later ones only look at
    /// the outcome). An error when another provider was installed first: then nothing is signed
    /// or checked with it.
    fn install() -> Result<(), Error> {
        static OURS: OnceLock<bool> = OnceLock::new();
        let ours = *OURS.get_or_init(|| match PROVIDER.install_default() {
            Ok(()) => true,
            Err(installed) => std::ptr::eq(installed, &PROVIDER),
        });
        if ours {
            Ok(())
        } else {
            Err(ErrorKind::Provider(
                "another jsonwebtoken crypto provider is installed in this process".into(),
            )
            .into())
        }
    }

    /// Whether `e` says the provider could not be installed (a bug, not a bad token).
    pub(super) fn is_provider_error(e: &Error) -> bool {
        matches!(e.kind(), ErrorKind::Provider(_))
    }

    /// `claims` as an HS256 JWT (`{"alg":"HS256","typ":"JWT"}`) under `key`.
    pub(super) fn sign<T: Serialize>(key: &[u8], claims: &T) -> Result<String, Error> {
        install()?;
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key),
        )
    }

    /// The claims of an HS256 JWT under `key` whose header says `typ: JWT`, with `exp` and
    /// `sub` present and `exp` not past (within [`LEEWAY_SECS`]).
    pub(super) fn verify<T: DeserializeOwned>(key: &[u8], token: &str) -> Result<T, Error> {
        install()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<T>(token, &DecodingKey::from_secret(key), &validation)?;
        if data.header.typ.as_deref() != Some("JWT") {
            return Err(ErrorKind::InvalidToken.into());
        }
        Ok(data.claims)
    }
}

/// A signed session token. `Debug` redacts it.
pub struct SessionToken(String);

impl SessionToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Claims {
    sub: String,
    /// The role's name (`Role` is not `Deserialize`).
    role: String,
    epoch: i64,
    iat: i64,
    exp: i64,
    typ: String,
    /// `totp_setup` on a restricted session; absent on a full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// The session signing keys, one derived from each master key held, newest first: sessions
/// are signed with the first and accepted under any, so a key rotation signs nobody out until
/// its old key leaves the keyring (`docs/secrets.md`).
fn session_keys(ops: &Ops) -> Result<Vec<[u8; 32]>, OpsError> {
    let ring = ops.settings().master_keys()?.keyring();
    Ok(ring
        .keys()
        .iter()
        .map(|k| k.derive(SESSION_KEY_PURPOSE))
        .collect())
}

/// A token could not be made, or the provider is not ours: an internal error (the cause goes
/// to the server log; it names no secret).
fn signing_failed(e: &jsonwebtoken::errors::Error) -> OpsError {
    tracing::error!(error = %e, "cannot sign or check session tokens");
    StoreError::Crypto(CryptoError::SealFailed).into()
}

fn sign_session(ops: &Ops, claims: &Claims) -> Result<SessionToken, OpsError> {
    let keys = session_keys(ops)?;
    let newest = keys
        .first()
        .ok_or(StoreError::Crypto(CryptoError::EmptyKeyring))?;
    jwt::sign(newest, claims)
        .map(SessionToken)
        .map_err(|e| signing_failed(&e))
}

/// The claims of a session token signed with this store's key, not expired (`typ` and `scope`
/// checked); any other token is unauthenticated.
fn session_claims(ops: &Ops, token: &str) -> Result<Claims, OpsError> {
    let mut verified = None;
    for key in session_keys(ops)? {
        match jwt::verify::<Claims>(&key, token) {
            Ok(c) => {
                verified = Some(c);
                break;
            }
            Err(e) if jwt::is_provider_error(&e) => return Err(signing_failed(&e)),
            Err(_) => {}
        }
    }
    let Some(claims) = verified else {
        return Err(session_invalid());
    };
    let scope_ok = matches!(claims.scope.as_deref(), None | Some(TOTP_SETUP_SCOPE));
    if claims.typ != SESSION_TYP || !scope_ok {
        return Err(session_invalid());
    }
    Ok(claims)
}

fn sign_in_failed() -> OpsError {
    OpsError::Unauthenticated(SIGN_IN_FAILED.into())
}

fn session_invalid() -> OpsError {
    OpsError::Unauthenticated(SESSION_INVALID.into())
}

/// A successful sign-in.
#[derive(Debug)]
pub struct SignedIn {
    pub operator: Operator,
    pub token: SessionToken,
    pub expires_at_ms: i64,
    /// A restricted session (`require_totp` and no second factor yet): it may only enroll and
    /// confirm the operator's own second factor and sign out (see [`Session::totp_setup_only`]).
    pub totp_setup_required: bool,
}

/// Who an attempt that is not yet any principal's is audited as: `KIND:NAME` as typed (a
/// string that is no valid operator name, which may be anything someone typed, a password even,
/// is not repeated: `KIND:(invalid name)`), from the request's client address.
fn actor_as(ops: &Ops, kind: &str, name: &str) -> Actor {
    let shown = if validate_operator_name(name).is_ok() {
        name
    } else {
        "(invalid name)"
    };
    Actor::new(format!("{kind}:{shown}")).from_client(ops.actor().client.clone())
}

/// Checks a name and password (and a TOTP code when the operator has a second factor) with
/// throttling, and issues a session token. The client address is `ops.actor().client` (None:
/// local, throttled as [`LOCAL_CLIENT`]); `ops.access()` plays no part (this is how a principal
/// comes to be). Every attempt is audited as `session.sign_in` (see the module doc); neither the
/// password nor the code is ever written anywhere.
pub async fn sign_in(
    ops: &Ops,
    name: &str,
    password: &str,
    totp_code: Option<&str>,
) -> Result<Outcome<SignedIn>, OpsError> {
    let mut known: Option<Operator> = None;
    let result = check_sign_in(ops, name, password, totp_code, &mut known).await;
    // While its address is locked, a client's attempts are refused unheard and not audited
    // (the failures that locked it were), so they cannot grow the log. An operator's lock needs
    // its record: a rate limit without one is the address's.
    let address_locked = matches!(&result, Err(OpsError::RateLimited(_))) && known.is_none();
    if let Some(e) = result.as_ref().err().filter(|_| !address_locked) {
        ops.audit_refusal_as(
            &actor_as(ops, "operator", name),
            "session.sign_in",
            known.as_ref().map(|o| o.id.as_str()),
            known
                .as_ref()
                .map(|o| o.pools.as_slice())
                .unwrap_or_default(),
            e,
        )
        .await;
    }
    result.map(Outcome::new)
}

/// The caller's client address ([`LOCAL_CLIENT`] for the shell), refused while it is locked by
/// too many failed `attempts` (sign-ins, bootstrap secrets).
pub(crate) async fn unlocked_client(ops: &Ops, attempts: &str) -> Result<String, OpsError> {
    let client = ops
        .actor()
        .client
        .clone()
        .unwrap_or_else(|| LOCAL_CLIENT.to_owned());
    if let Some(until) = ops.store().await?.client_locked_until(&client).await? {
        return Err(OpsError::RateLimited(format!(
            "too many failed {attempts} from this address: try again {}",
            util::human_until(until, now_ms())
        )));
    }
    Ok(client)
}

async fn check_sign_in(
    ops: &Ops,
    name: &str,
    password: &str,
    totp_code: Option<&str>,
    known: &mut Option<Operator>,
) -> Result<SignedIn, OpsError> {
    let client = unlocked_client(ops, "sign-ins").await?;
    let store = ops.store().await?;
    let creds = match store.operator_credentials(name).await {
        Ok(c) => Some(c),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    *known = creds.as_ref().map(|c| c.operator.clone());
    if let Some(until) = creds
        .as_ref()
        .and_then(|c| c.locked_until_ms)
        .filter(|u| *u > now_ms())
    {
        // Attempts at a locked operator count against the address too: one address cannot
        // keep trying (and filling the audit log) while the operator is locked.
        store
            .record_client_failure(&client, CLIENT_THROTTLE)
            .await?;
        return Err(OpsError::RateLimited(format!(
            "too many failed sign-ins for this operator: try again {}",
            util::human_until(until, now_ms())
        )));
    }
    let password_ok = match creds.as_ref().and_then(|c| c.password_hash.as_deref()) {
        Some(phc) => verify_password(password, phc),
        None => {
            verify_password(password, dummy_hash());
            false
        }
    };
    // The right password for an operator with a second factor, and no code: ask for it (the
    // dashboard's second step) rather than count a failure.
    if let Some(c) = &creds {
        let no_code = totp_code.is_none_or(|code| code.trim().is_empty());
        if password_ok && c.operator.totp_enabled && no_code && !c.operator.disabled {
            return Err(OpsError::TotpRequired);
        }
    }
    let second_ok = match &creds {
        Some(c) if password_ok && c.operator.totp_enabled => {
            match (&c.totp_secret_sealed, totp_code) {
                (Some(sealed), Some(code)) => {
                    use_totp_code(ops, &c.operator.id, sealed, code).await? == TotpCheck::Accepted
                }
                _ => false,
            }
        }
        _ => true,
    };
    let creds = match creds {
        Some(c)
            if password_ok && second_ok && c.password_hash.is_some() && !c.operator.disabled =>
        {
            c
        }
        other => {
            store
                .record_client_failure(&client, CLIENT_THROTTLE)
                .await?;
            if let Some(c) = other {
                store
                    .record_operator_failure(&c.operator.id, OPERATOR_THROTTLE)
                    .await?;
            }
            return Err(sign_in_failed());
        }
    };
    let setup_only = ops.settings().require_totp && !creds.operator.totp_enabled;
    let iat = now_ms() / 1000;
    let claims = Claims {
        sub: creds.operator.id.clone(),
        role: creds.operator.role.as_str().to_owned(),
        epoch: creds.session_epoch,
        iat,
        exp: iat
            + if setup_only {
                TOTP_SETUP_SESSION_TTL_SECS
            } else {
                SESSION_TTL_SECS
            },
        typ: SESSION_TYP.into(),
        scope: setup_only.then(|| TOTP_SETUP_SCOPE.to_owned()),
    };
    let token = sign_session(ops, &claims)?;
    store
        .record_sign_in(
            &actor_as(ops, "operator", &creds.operator.name),
            &creds.operator.id,
            json!({ "pools": creds.operator.pools, "totp_setup": setup_only }),
        )
        .await?;
    Ok(SignedIn {
        operator: creds.operator,
        token,
        expires_at_ms: claims.exp * 1000,
        totp_setup_required: setup_only,
    })
}

/// What a verified session token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The operator as it is now (its real role and pools).
    pub operator: Operator,
    /// What the session may do: the operator's role and pools, or, for a restricted session,
    /// role viewer without pools (it sees no pool and changes nothing; it still reaches itself
    /// as an operator).
    pub access: Access,
    /// A restricted session: `require_totp` is on and the operator has no enabled second factor
    /// (the token says `scope: totp_setup`, or it is older than the setting). A surface allows
    /// it only [`totp_enroll`] and [`totp_confirm`] of the operator itself and [`sign_out`],
    /// and refuses everything else (HTTP 403).
    pub totp_setup_only: bool,
    pub expires_at_ms: i64,
}

/// The session a token grants: signature (HS256 under this store's key), expiry, and the
/// operator's current epoch, role and state (any change since issue revokes it).
pub async fn verify_session(ops: &Ops, token: &str) -> Result<Session, OpsError> {
    let claims = session_claims(ops, token)?;
    let store = ops.store().await?;
    let creds = match store.operator_credentials(&claims.sub).await {
        Ok(c) => c,
        Err(StoreError::NotFound { .. }) => return Err(session_invalid()),
        Err(e) => return Err(e.into()),
    };
    // `sub` is an id: a name that happens to equal it does not count.
    if creds.operator.id != claims.sub
        || creds.operator.disabled
        || creds.session_epoch != claims.epoch
        || creds.operator.role.as_str() != claims.role
    {
        return Err(session_invalid());
    }
    let totp_setup_only = claims.scope.as_deref() == Some(TOTP_SETUP_SCOPE)
        || (ops.settings().require_totp && !creds.operator.totp_enabled);
    let principal = Principal::Operator {
        id: creds.operator.id.clone(),
        name: creds.operator.name.clone(),
    };
    let access = if totp_setup_only {
        Access {
            principal,
            role: Role::Viewer,
            pools: Vec::new(),
        }
    } else {
        Access {
            principal,
            role: creds.operator.role,
            pools: creds.operator.pools.clone(),
        }
    };
    Ok(Session {
        operator: creds.operator,
        access,
        totp_setup_only,
        expires_at_ms: claims.exp * 1000,
    })
}

/// Revokes every session of the signed-in operator (`session.sign_out`).
pub async fn sign_out(ops: &Ops) -> Result<Outcome<()>, OpsError> {
    let target = match &ops.access().principal {
        Principal::Operator { id, .. } => Some(id.clone()),
        _ => None,
    };
    let result = async {
        let Some(id) = &target else {
            return Err(OpsError::invalid(
                "session",
                "only an operator session signs out",
            ));
        };
        ops.store()
            .await?
            .bump_session_epoch(ops.actor(), id)
            .await?;
        Ok(Outcome::new(()))
    }
    .await;
    ops.audited("session.sign_out", target.as_deref(), &[], result)
        .await
}

/// A new API token and its secret, shown once.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: ApiToken,
    pub secret: RawApiToken,
}

/// Issues an API token with `role` over `pools` (within what the principal may grant).
pub async fn issue_token(
    ops: &Ops,
    label: &str,
    role: Role,
    pools: &[String],
) -> Result<Outcome<IssuedToken>, OpsError> {
    let result = async {
        codexmesh_store::validate_label(label)?;
        if role == Role::Owner && !pools.is_empty() {
            return Err(OpsError::invalid(
                "pools",
                "owner tokens reach every pool: they take no --pools",
            ));
        }
        check_pools_grantable(ops.access(), role, pools)?;
        let secret = RawApiToken::generate().map_err(StoreError::from)?;
        let created_by = match &ops.access().principal {
            Principal::Operator { id, .. } => Some(id.as_str()),
            _ => None,
        };
        let token = ops
            .store()
            .await?
            .create_api_token(
                ops.actor(),
                label,
                &secret.hash_hex(),
                role,
                pools,
                created_by,
            )
            .await?;
        Ok(Outcome::new(IssuedToken { token, secret }))
    }
    .await;
    ops.audited("token.create", Some(label), &refs(pools), result)
        .await
}

fn token_visible(access: &Access, t: &ApiToken) -> bool {
    access.role.sees_all_pools()
        || (access.role.can_write()
            && t.role != Role::Owner
            && t.pools.iter().all(|p| access.sees_pool(p)))
}

/// The API tokens the principal may see (owners all; admins those within their pools).
pub async fn list_tokens(ops: &Ops) -> Result<Outcome<Vec<ApiToken>>, OpsError> {
    let all = ops.store().await?.list_api_tokens().await?;
    Ok(Outcome::new(
        all.into_iter()
            .filter(|t| token_visible(ops.access(), t))
            .collect(),
    ))
}

/// Revokes an API token the principal sees (others: not found).
pub async fn revoke_token(ops: &Ops, ident: &str) -> Result<Outcome<Changed<ApiToken>>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let store = ops.store().await?;
        let unseen = || -> OpsError {
            StoreError::NotFound {
                what: Entity::ApiToken,
                ident: ident.to_owned(),
                lookup: Lookup::IdOrLabel,
            }
            .into()
        };
        let t = match store.find_api_token(ident).await {
            Ok(t) => t,
            Err(StoreError::NotFound { .. }) => return Err(unseen()),
            Err(e) => return Err(e.into()),
        };
        if !token_visible(ops.access(), &t) {
            return Err(unseen());
        }
        pools.clone_from(&t.pools);
        Ok(Outcome::new(
            store.revoke_api_token(ops.actor(), &t.id).await?,
        ))
    }
    .await;
    ops.audited("token.revoke", Some(ident), &refs(&pools), result)
        .await
}

/// The access an API token grants (revoked or unknown: unauthenticated). `require_totp` does
/// not concern API tokens.
pub async fn verify_token(ops: &Ops, raw: &str) -> Result<Access, OpsError> {
    if !codexmesh_model::operators::looks_like_api_token(raw) {
        return Err(OpsError::Unauthenticated("not an API token".into()));
    }
    let token = ops
        .store()
        .await?
        .api_token_by_hash(&secret_hash_hex(raw))
        .await?
        .filter(|t| !t.is_revoked())
        .ok_or_else(|| OpsError::Unauthenticated("unknown or revoked API token".into()))?;
    Ok(Access {
        principal: Principal::Token {
            id: token.id,
            label: token.label,
        },
        role: token.role,
        pools: token.pools,
    })
}

/// The largest page of audit rows.
pub const AUDIT_MAX_LIMIT: i64 = 1000;

/// Audit log rows, newest first, filtered and paged (`limit` 1..=1000). Tenant isolation: a
/// principal limited to some pools (admin, viewer) reads the rows about its pools and its own
/// rows, nothing else; a `pool` filter naming a pool it does not see is "no pool named …",
/// as for a pool that does not exist. Owners (and the shell) read everything.
pub async fn audit(
    ops: &Ops,
    mut filter: AuditFilter,
) -> Result<Outcome<Vec<AuditEntry>>, OpsError> {
    if !(1..=AUDIT_MAX_LIMIT).contains(&filter.limit) {
        return Err(OpsError::invalid(
            "limit",
            format!("--limit {} is outside 1..={AUDIT_MAX_LIMIT}", filter.limit),
        ));
    }
    if let Some(pool) = &filter.pool {
        ops.see_pool(pool)?;
    }
    if let Some(pools) = ops.visible_pools() {
        filter.visible_pools = Some(pools);
        filter.own_actor = Some(ops.actor().name.clone());
    }
    Ok(Outcome::new(
        ops.store().await?.audit_entries(&filter).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const KEY: [u8; 32] = [7u8; 32];

    fn now_secs() -> i64 {
        now_ms() / 1000
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "op_1".into(),
            role: "admin".into(),
            epoch: 3,
            iat: now_secs(),
            exp,
            typ: "session".into(),
            scope: None,
        }
    }

    /// A JWT made by hand: `header` and `payload` as given, signed with HMAC-SHA256 or -512.
    fn forge(header: &str, payload: &str, key: &[u8], sha512: bool) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = if sha512 {
            let mut m = <Hmac<sha2::Sha512> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| <Hmac<sha2::Sha512> as Mac>::new(&Default::default()));
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| <Hmac<sha2::Sha256> as Mac>::new(&Default::default()));
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn parts(t: &str) -> Result<(String, String, String), Box<dyn std::error::Error>> {
        let mut it = t.split('.');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(h), Some(p), Some(s), None) => Ok((h.into(), p.into(), s.into())),
            _ => Err(format!("not a JWT: {t}").into()),
        }
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() -> Result<(), OpsError> {
        let h = hash_password("correct horse battery")?;
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
        assert!(!verify_password("x", "not a phc string"));
        Ok(())
    }

    #[test]
    fn session_tokens_are_standard_hs256_jwts_made_by_jsonwebtoken() -> TestResult {
        let c = claims(now_secs() + 60);
        let t = jwt::sign(&KEY, &c)?;
        let (h, p, s) = parts(&t)?;
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&h)?)?;
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
        let payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p)?)?;
        assert_eq!(payload["sub"], "op_1");
        assert!(payload.get("scope").is_none(), "{payload}");
        // The signature is plain HMAC-SHA256 over `header.payload`: any JWT library checks it.
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&KEY)?;
        m.update(format!("{h}.{p}").as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()), s);
        assert_eq!(jwt::verify::<Claims>(&KEY, &t)?, c);
        // A restricted session carries its scope.
        let restricted = Claims {
            scope: Some(TOTP_SETUP_SCOPE.into()),
            ..claims(now_secs() + 60)
        };
        let t = jwt::sign(&KEY, &restricted)?;
        assert_eq!(jwt::verify::<Claims>(&KEY, &t)?, restricted);
        // A token made by hand the same way verifies too.
        let by_hand = forge(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &serde_json::to_string(&c)?,
            &KEY,
            false,
        );
        assert_eq!(jwt::verify::<Claims>(&KEY, &by_hand)?, c);
        Ok(())
    }

    #[test]
    fn tampered_expired_foreign_and_other_algorithm_tokens_are_refused() -> TestResult {
        let c = claims(now_secs() + 60);
        let t = jwt::sign(&KEY, &c)?;
        let refused = |token: &str| jwt::verify::<Claims>(&KEY, token).is_err();
        // Another key.
        assert!(jwt::verify::<Claims>(&[8u8; 32], &t).is_err());
        // A changed payload (role: owner) under the old signature.
        let (h, _, s) = parts(&t)?;
        let owner = Claims {
            role: "owner".into(),
            ..claims(c.exp)
        };
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_string(&owner)?);
        assert!(refused(&format!("{h}.{forged}.{s}")));
        // A changed signature.
        let mut sig = URL_SAFE_NO_PAD.decode(&s)?;
        sig[0] ^= 1;
        let (_, p, _) = parts(&t)?;
        assert!(refused(&format!(
            "{h}.{p}.{}",
            URL_SAFE_NO_PAD.encode(&sig)
        )));
        assert!(refused(&format!("{t}x")));
        assert!(refused("not.a.jwt") && refused("") && refused(&format!("{h}.{p}")));
        // Expired (beyond the leeway).
        let old = claims(now_secs() - 2 * i64::try_from(jwt::LEEWAY_SECS)?);
        assert!(refused(&jwt::sign(&KEY, &old)?));
        // No `exp` or no `sub`.
        for payload in [
            json!({"sub": "op_1", "role": "admin", "epoch": 3, "iat": 1, "typ": "session"}),
            json!({"role": "admin", "epoch": 3, "iat": 1, "exp": c.exp, "typ": "session"}),
        ] {
            let t = forge(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                &payload.to_string(),
                &KEY,
                false,
            );
            assert!(
                jwt::verify::<serde_json::Value>(&KEY, &t).is_err(),
                "{payload}"
            );
        }
        // Other algorithms in the header: `none` (no signature), HS512 (a valid HMAC-SHA512
        // under the same key), RS256, and a header without `typ`.
        let payload = serde_json::to_string(&c)?;
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        assert!(refused(&none));
        assert!(refused(&forge(
            r#"{"alg":"HS512","typ":"JWT"}"#,
            &payload,
            &KEY,
            true
        )));
        assert!(refused(&forge(
            r#"{"alg":"RS256","typ":"JWT"}"#,
            &payload,
            &KEY,
            false
        )));
        assert!(refused(&forge(r#"{"alg":"HS256"}"#, &payload, &KEY, false)));
        Ok(())
    }

    #[test]
    fn the_provider_makes_hs256_only_and_never_panics() -> TestResult {
        let key = EncodingKey::from_secret(&KEY);
        for alg in [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ] {
            assert!(
                (jwt::PROVIDER.signer_factory)(&alg, &key).is_err(),
                "{alg:?}"
            );
            let dkey = jsonwebtoken::DecodingKey::from_secret(&KEY);
            assert!(
                (jwt::PROVIDER.verifier_factory)(&alg, &dkey).is_err(),
                "{alg:?}"
            );
            // Through jsonwebtoken's own entry point: an error too.
            jwt::sign(&KEY, &claims(now_secs() + 60))?;
            assert!(jsonwebtoken::encode(&Header::new(alg), &claims(1), &key).is_err());
        }
        assert!((jwt::PROVIDER.signer_factory)(&Algorithm::HS256, &key).is_ok());
        assert!((jwt::PROVIDER.jwk_utils.extract_rsa_public_key_components)(b"x").is_err());
        assert!((jwt::PROVIDER.jwk_utils.extract_ec_public_key_coordinates)(
            b"x",
            Algorithm::ES256
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn secrets_stay_out_of_debug() -> TestResult {
        let t = SessionToken("eyJ.secret.sig".into());
        assert_eq!(format!("{t:?}"), "SessionToken(<redacted>)");
        Ok(())
    }
}
