//! Operator use cases (issue 11): the first owner from a one-time bootstrap secret; creating,
//! listing and changing operators within what the acting principal may do; passwords (argon2id);
//! sign-in with throttling; session tokens; API tokens; reading the audit log.
//!
//! Rules: every use case that acts for someone takes its [`Access`] and checks it first; what
//! the principal may not see is "not found" (a surface answers 404), what it sees but may not
//! change is [`OpsError::Forbidden`]. Raw secrets (passwords, tokens, bootstrap secrets) exist
//! only in the arguments and in the one result that shows them once.
//!
//! Decisions (documented for the admin API that builds on this):
//! - **Session tokens** are HS256 JWTs (`{"alg":"HS256","typ":"JWT"}`, claims `sub` operator
//!   id, `role`, `epoch`, `iat`, `exp`, `typ:"session"`), signed with a key derived from the
//!   master key by HKDF-SHA256 (`MasterKey::derive("operator-session-signing/v1")`): no new
//!   secret file, and rotating the master key signs everyone out. Signed and checked here with
//!   `hmac`+`sha2` (constant-time compare) rather than `jsonwebtoken`: its signing backends
//!   (`rust_crypto`) bring rsa, p256, p384 and ed25519 into the tree for one HMAC. A token is
//!   revoked when the operator's `session_epoch` moves (sign-out, password, role, disable).
//! - **Sign-in throttling**, in the store so it holds across processes: per operator, 5
//!   consecutive failures lock it for 15 minutes (a success resets the count); per client
//!   address, 20 failures within 15 minutes lock the address for 15 minutes. A locked operator
//!   or address is refused before the password is checked ([`ErrorKind::RateLimited`]). An
//!   unknown name still costs one argon2 verification (against a dummy hash) so timing does not
//!   tell which names exist; every failure has the same message.
//! - **Bootstrap**: a `cmb_…` secret valid for one hour and once, only while no owner exists;
//!   issuing a new one drops older unused ones.
//! - **TOTP** (RFC 6238 via `totp-rs`: SHA-1, 6 digits, 30 s, one step of skew): enrolling
//!   stores a 20-byte random secret sealed with the master key (owner = operator id, field
//!   `totp_secret`) and shows it once (base32 and an `otpauth://` URI); it is enabled only after
//!   a code is confirmed. Then sign-in needs a code; a wrong or missing code counts as a failed
//!   sign-in. Not yet: the setting that requires TOTP for everyone, replay protection (a code
//!   works again within its window), recovery codes.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Ops, OpsError, Outcome};
use codexmesh_model::operators::{
    secret_hash_hex, validate_operator_name, validate_password, Access, ApiToken, Operator,
    Principal, RawApiToken, RawBootstrapSecret, Role,
};
use codexmesh_model::records::{AuditEntry, Changed};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::{Actor, AuditFilter, Entity, Lookup, NewOperator, StoreError, Throttle};

/// How long a bootstrap secret is valid.
pub const BOOTSTRAP_TTL_MS: i64 = 60 * 60 * 1000;
/// How long a session token is valid.
pub const SESSION_TTL_SECS: i64 = 12 * 60 * 60;
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
const SESSION_KEY_PURPOSE: &str = "operator-session-signing/v1";
const SIGN_IN_FAILED: &str = "wrong name or password";

/// The audit actor for a principal: the shell is the ops' own actor (`cli:USER`).
fn actor_for(ops: &Ops, access: &Access) -> Actor {
    match access.principal {
        Principal::Shell { .. } => ops.actor().clone(),
        _ => Actor::new(access.principal.actor()),
    }
}

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

/// Creates the one-time secret that makes the first owner. Refused once an owner exists.
pub async fn bootstrap_secret(ops: &Ops) -> Result<Outcome<IssuedBootstrap>, OpsError> {
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

/// Uses the bootstrap secret to create the first owner (once, before it expires).
pub async fn bootstrap_owner(
    ops: &Ops,
    secret: &str,
    name: &str,
    password: &str,
) -> Result<Outcome<Operator>, OpsError> {
    validate_operator_name(name).map_err(StoreError::from)?;
    validate_password(password).map_err(StoreError::from)?;
    let hash = hash_password(password)?;
    let store = ops.store().await?;
    let op = store
        .consume_bootstrap_secret(
            &Actor::new(format!("bootstrap:{name}")),
            &secret_hash_hex(secret),
            name,
            &hash,
        )
        .await?;
    Ok(Outcome::new(op))
}

/// Creates an operator with `role` over `pools` (owners take no pools).
pub async fn create(
    ops: &Ops,
    access: &Access,
    name: &str,
    role: Role,
    pools: &[String],
    password: Option<&str>,
) -> Result<Outcome<Operator>, OpsError> {
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
    check_pools_grantable(access, role, pools)?;
    let hash = password.map(hash_password).transpose()?;
    let store = ops.store().await?;
    let op = store
        .create_operator(
            &actor_for(ops, access),
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

/// The operators `access` may see.
pub async fn list(ops: &Ops, access: &Access) -> Result<Outcome<Vec<Operator>>, OpsError> {
    let store = ops.store().await?;
    let all = store.list_operators().await?;
    Ok(Outcome::new(
        all.into_iter()
            .filter(|o| access.sees_operator(o))
            .collect(),
    ))
}

/// The operator `ident` if `access` may manage it (not visible: not found).
async fn managed(ops: &Ops, access: &Access, ident: &str) -> Result<Operator, OpsError> {
    let store = ops.store().await?;
    let op = match store.find_operator(ident).await {
        Ok(op) => op,
        Err(StoreError::NotFound { .. }) => return Err(not_found(ident)),
        Err(e) => return Err(e.into()),
    };
    if !access.sees_operator(&op) {
        return Err(not_found(ident));
    }
    if !access.may_manage_operator(&op) {
        return Err(OpsError::Forbidden(format!(
            "a {} may not change operator {}",
            access.role, op.name
        )));
    }
    Ok(op)
}

/// Refuses to leave the store without an enabled owner.
async fn keep_an_owner(ops: &Ops, op: &Operator) -> Result<(), OpsError> {
    if op.role != Role::Owner || op.disabled {
        return Ok(());
    }
    let owners = ops
        .store()
        .await?
        .list_operators()
        .await?
        .into_iter()
        .filter(|o| o.role == Role::Owner && !o.disabled)
        .count();
    if owners <= 1 {
        return Err(OpsError::Conflict(format!(
            "{} is the last owner: make another owner first",
            op.name
        )));
    }
    Ok(())
}

/// Sets an operator's role (revokes its sessions).
pub async fn set_role(
    ops: &Ops,
    access: &Access,
    ident: &str,
    role: Role,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let op = managed(ops, access, ident).await?;
    check_pools_grantable(access, role, &op.pools)?;
    if role != Role::Owner {
        keep_an_owner(ops, &op).await?;
    }
    let store = ops.store().await?;
    Ok(Outcome::new(
        store
            .set_operator_role(&actor_for(ops, access), &op.id, role)
            .await?,
    ))
}

/// Replaces an operator's pools.
pub async fn assign(
    ops: &Ops,
    access: &Access,
    ident: &str,
    pools: &[String],
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let op = managed(ops, access, ident).await?;
    check_pools_grantable(access, op.role, pools)?;
    let store = ops.store().await?;
    Ok(Outcome::new(
        store
            .set_operator_pools(&actor_for(ops, access), &op.id, pools)
            .await?,
    ))
}

/// Disables (revoking its sessions) or re-enables an operator.
pub async fn set_disabled(
    ops: &Ops,
    access: &Access,
    ident: &str,
    disabled: bool,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let op = managed(ops, access, ident).await?;
    if disabled {
        keep_an_owner(ops, &op).await?;
    }
    let store = ops.store().await?;
    Ok(Outcome::new(
        store
            .set_operator_disabled(&actor_for(ops, access), &op.id, disabled)
            .await?,
    ))
}

/// Sets an operator's password (revokes its sessions, clears its lockout). An operator may
/// always set its own.
pub async fn set_password(
    ops: &Ops,
    access: &Access,
    ident: &str,
    password: &str,
) -> Result<Outcome<Operator>, OpsError> {
    validate_password(password).map_err(StoreError::from)?;
    let store = ops.store().await?;
    let target = store.find_operator(ident).await.map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(ident),
        e => e.into(),
    })?;
    let own = matches!(&access.principal, Principal::Operator { id, .. } if *id == target.id);
    if !own {
        managed(ops, access, ident).await?;
    }
    let hash = hash_password(password)?;
    Ok(Outcome::new(
        store
            .set_operator_password(&actor_for(ops, access), &target.id, &hash)
            .await?,
    ))
}

const TOTP_FIELD: &str = "totp_secret";
const TOTP_SECRET_LEN: usize = 20;

fn totp_for(secret: Vec<u8>) -> Result<totp_rs::TOTP, OpsError> {
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret)
        .map_err(|e| OpsError::Conflict(format!("cannot set up the second factor: {e}")))
}

/// Whether `code` is the current TOTP code of the sealed secret.
fn totp_check(ops: &Ops, operator_id: &str, sealed: &[u8], code: &str) -> Result<bool, OpsError> {
    let secret = ops
        .settings()
        .master_key()?
        .open(operator_id, TOTP_FIELD, sealed)
        .map_err(StoreError::from)?;
    let totp = totp_for(secret)?;
    let now = u64::try_from(now_ms() / 1000).unwrap_or_default();
    Ok(totp.check(code.trim(), now))
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

/// The operator itself, or one `access` manages.
async fn self_or_managed(ops: &Ops, access: &Access, ident: &str) -> Result<Operator, OpsError> {
    let store = ops.store().await?;
    let target = store.find_operator(ident).await.map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(ident),
        e => e.into(),
    })?;
    if matches!(&access.principal, Principal::Operator { id, .. } if *id == target.id) {
        return Ok(target);
    }
    managed(ops, access, ident).await
}

/// Starts enrolling a second factor: a new secret, sealed, not yet enabled.
pub async fn totp_enroll(
    ops: &Ops,
    access: &Access,
    ident: &str,
) -> Result<Outcome<TotpEnrollment>, OpsError> {
    let op = self_or_managed(ops, access, ident).await?;
    let mut secret = vec![0u8; TOTP_SECRET_LEN];
    util::random_bytes(&mut secret).map_err(StoreError::from)?;
    let sealed = ops
        .settings()
        .master_key()?
        .seal(&op.id, TOTP_FIELD, &secret)
        .map_err(StoreError::from)?;
    let totp = totp_for(secret)?;
    let secret_base32 = totp.get_secret_base32();
    let uri = format!(
        "otpauth://totp/codexmesh:{}?secret={secret_base32}&issuer=codexmesh&algorithm=SHA1&digits=6&period=30",
        op.name.replace(':', "_")
    );
    let operator = ops
        .store()
        .await?
        .enroll_operator_totp(&actor_for(ops, access), &op.id, &sealed)
        .await?;
    Ok(Outcome::new(TotpEnrollment {
        operator,
        secret_base32,
        uri,
    }))
}

/// Enables the enrolled second factor once `code` proves the operator has it.
pub async fn totp_confirm(
    ops: &Ops,
    access: &Access,
    ident: &str,
    code: &str,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let op = self_or_managed(ops, access, ident).await?;
    let store = ops.store().await?;
    let creds = store.operator_credentials(&op.id).await?;
    let Some(sealed) = creds.totp_secret_sealed else {
        return Err(OpsError::invalid(
            "totp",
            format!("operator {} has no enrolled second factor", op.name),
        ));
    };
    if !totp_check(ops, &op.id, &sealed, code)? {
        return Err(OpsError::invalid("code", "the code does not match"));
    }
    Ok(Outcome::new(
        store
            .set_operator_totp_enabled(&actor_for(ops, access), &op.id, true)
            .await?,
    ))
}

/// Turns the second factor off and drops its secret.
pub async fn totp_disable(
    ops: &Ops,
    access: &Access,
    ident: &str,
) -> Result<Outcome<Changed<Operator>>, OpsError> {
    let op = self_or_managed(ops, access, ident).await?;
    Ok(Outcome::new(
        ops.store()
            .await?
            .set_operator_totp_enabled(&actor_for(ops, access), &op.id, false)
            .await?,
    ))
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
}

const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn mac(key: &[u8; 32], signing_input: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: new_from_slice cannot fail here.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    m.update(signing_input.as_bytes());
    m
}

fn sign(key: &[u8; 32], claims: &Claims) -> Result<String, OpsError> {
    let payload = serde_json::to_vec(claims)
        .map_err(|e| OpsError::Conflict(format!("cannot encode the session: {e}")))?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(JWT_HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = mac(key, &input).finalize().into_bytes();
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The claims of a token signed with `key`, not yet checked against the clock or the store.
fn verify_signature(key: &[u8; 32], token: &str) -> Option<Claims> {
    let (input, sig) = token.rsplit_once('.')?;
    let (header, payload) = input.split_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    mac(key, input).verify_slice(&sig).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fn unauthenticated() -> OpsError {
    OpsError::Unauthenticated(SIGN_IN_FAILED.into())
}

fn session_key(ops: &Ops) -> Result<[u8; 32], OpsError> {
    Ok(ops.settings().master_key()?.derive(SESSION_KEY_PURPOSE))
}

/// A successful sign-in.
#[derive(Debug)]
pub struct SignedIn {
    pub operator: Operator,
    pub token: SessionToken,
    pub expires_at_ms: i64,
}

/// Checks a name and password from `client` (an address) with throttling, and issues a
/// session token.
pub async fn sign_in(
    ops: &Ops,
    name: &str,
    password: &str,
    totp_code: Option<&str>,
    client: &str,
) -> Result<Outcome<SignedIn>, OpsError> {
    let store = ops.store().await?;
    if let Some(until) = store.client_locked_until(client).await? {
        return Err(OpsError::RateLimited(format!(
            "too many failed sign-ins from this address: try again {}",
            util::human_until(until, now_ms())
        )));
    }
    let creds = match store.operator_credentials(name).await {
        Ok(c) => Some(c),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(until) = creds
        .as_ref()
        .and_then(|c| c.locked_until_ms)
        .filter(|u| *u > now_ms())
    {
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
    let second_ok = match &creds {
        Some(c) if password_ok && c.operator.totp_enabled => {
            let code = totp_code.unwrap_or_default();
            match &c.totp_secret_sealed {
                Some(sealed) => totp_check(ops, &c.operator.id, sealed, code)?,
                None => false,
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
            store.record_client_failure(client, CLIENT_THROTTLE).await?;
            if let Some(c) = other {
                store
                    .record_operator_failure(&c.operator.id, OPERATOR_THROTTLE)
                    .await?;
            }
            return Err(unauthenticated());
        }
    };
    store.record_operator_success(&creds.operator.id).await?;
    let iat = now_ms() / 1000;
    let claims = Claims {
        sub: creds.operator.id.clone(),
        role: creds.operator.role.as_str().to_owned(),
        epoch: creds.session_epoch,
        iat,
        exp: iat + SESSION_TTL_SECS,
        typ: "session".into(),
    };
    let token = SessionToken(sign(&session_key(ops)?, &claims)?);
    Ok(Outcome::new(SignedIn {
        operator: creds.operator,
        token,
        expires_at_ms: claims.exp * 1000,
    }))
}

/// The access a session token grants: signature, expiry, and the operator's current epoch,
/// role and state (any change since issue revokes it).
pub async fn verify_session(ops: &Ops, token: &str) -> Result<Access, OpsError> {
    let claims = verify_signature(&session_key(ops)?, token).ok_or_else(unauthenticated)?;
    if claims.typ != "session" || claims.exp <= now_ms() / 1000 {
        return Err(unauthenticated());
    }
    let store = ops.store().await?;
    let creds = match store.operator_credentials(&claims.sub).await {
        Ok(c) => c,
        Err(StoreError::NotFound { .. }) => return Err(unauthenticated()),
        Err(e) => return Err(e.into()),
    };
    if creds.operator.disabled
        || creds.session_epoch != claims.epoch
        || creds.operator.role.as_str() != claims.role
    {
        return Err(unauthenticated());
    }
    Ok(Access {
        principal: Principal::Operator {
            id: creds.operator.id.clone(),
            name: creds.operator.name.clone(),
        },
        role: creds.operator.role,
        pools: creds.operator.pools,
    })
}

/// Revokes every session of the signed-in operator.
pub async fn sign_out(ops: &Ops, access: &Access) -> Result<Outcome<()>, OpsError> {
    let Principal::Operator { id, .. } = &access.principal else {
        return Err(OpsError::invalid(
            "session",
            "only an operator session signs out",
        ));
    };
    ops.store()
        .await?
        .bump_session_epoch(&actor_for(ops, access), id)
        .await?;
    Ok(Outcome::new(()))
}

/// A new API token and its secret, shown once.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: ApiToken,
    pub secret: RawApiToken,
}

/// Issues an API token with `role` over `pools` (within what `access` may grant).
pub async fn issue_token(
    ops: &Ops,
    access: &Access,
    label: &str,
    role: Role,
    pools: &[String],
) -> Result<Outcome<IssuedToken>, OpsError> {
    codexmesh_store::validate_label(label)?;
    if role == Role::Owner && !pools.is_empty() {
        return Err(OpsError::invalid(
            "pools",
            "owner tokens reach every pool: they take no --pools",
        ));
    }
    check_pools_grantable(access, role, pools)?;
    let secret = RawApiToken::generate().map_err(StoreError::from)?;
    let created_by = match &access.principal {
        Principal::Operator { id, .. } => Some(id.as_str()),
        _ => None,
    };
    let token = ops
        .store()
        .await?
        .create_api_token(
            &actor_for(ops, access),
            label,
            &secret.hash_hex(),
            role,
            pools,
            created_by,
        )
        .await?;
    Ok(Outcome::new(IssuedToken { token, secret }))
}

fn token_visible(access: &Access, t: &ApiToken) -> bool {
    access.role.sees_all_pools()
        || (access.role.can_write()
            && t.role != Role::Owner
            && t.pools.iter().all(|p| access.sees_pool(p)))
}

/// The API tokens `access` may see (owners all; admins those within their pools).
pub async fn list_tokens(ops: &Ops, access: &Access) -> Result<Outcome<Vec<ApiToken>>, OpsError> {
    let all = ops.store().await?.list_api_tokens().await?;
    Ok(Outcome::new(
        all.into_iter()
            .filter(|t| token_visible(access, t))
            .collect(),
    ))
}

pub async fn revoke_token(
    ops: &Ops,
    access: &Access,
    ident: &str,
) -> Result<Outcome<Changed<ApiToken>>, OpsError> {
    let store = ops.store().await?;
    let t = store.find_api_token(ident).await?;
    if !token_visible(access, &t) {
        return Err(StoreError::NotFound {
            what: Entity::ApiToken,
            ident: ident.to_owned(),
            lookup: Lookup::IdOrLabel,
        }
        .into());
    }
    Ok(Outcome::new(
        store
            .revoke_api_token(&actor_for(ops, access), &t.id)
            .await?,
    ))
}

/// The access an API token grants (revoked or unknown: unauthenticated).
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

/// Audit log rows, newest first, filtered and paged. Limit 1..=1000. Non-owners see only rows
/// about their pools (TODO(issue 11, API): rows without a pool are owner-only).
pub async fn audit(
    ops: &Ops,
    access: &Access,
    filter: AuditFilter,
) -> Result<Outcome<Vec<AuditEntry>>, OpsError> {
    if !(1..=1000).contains(&filter.limit) {
        return Err(OpsError::invalid(
            "limit",
            format!("--limit {} is outside 1..=1000", filter.limit),
        ));
    }
    if !access.role.sees_all_pools() {
        match &filter.pool {
            Some(p) if access.sees_pool(p) => {}
            _ => {
                return Err(OpsError::Forbidden(
                    "only owners read the whole audit log: name one of your pools (--pool)".into(),
                ))
            }
        }
    }
    Ok(Outcome::new(
        ops.store().await?.audit_entries(&filter).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn session_tokens_are_hs256_and_tamper_evident() -> Result<(), OpsError> {
        let key = [7u8; 32];
        let claims = Claims {
            sub: "op_1".into(),
            role: "admin".into(),
            epoch: 3,
            iat: 1,
            exp: 2,
            typ: "session".into(),
        };
        let t = sign(&key, &claims)?;
        assert_eq!(verify_signature(&key, &t), Some(claims));
        assert_eq!(verify_signature(&[8u8; 32], &t), None);
        // A changed payload (role: owner) fails the signature.
        let (h, rest) = t.split_once('.').ok_or_else(unauthenticated)?;
        let (_, sig) = rest.split_once('.').ok_or_else(unauthenticated)?;
        let forged = URL_SAFE_NO_PAD
            .encode(r#"{"sub":"op_1","role":"owner","epoch":3,"iat":1,"exp":2,"typ":"session"}"#);
        assert_eq!(verify_signature(&key, &format!("{h}.{forged}.{sig}")), None);
        // Standard JWT: the claims decode with jsonwebtoken's (unverified) reader.
        let header = jsonwebtoken_header_alg(&t);
        assert_eq!(header.as_deref(), Some("HS256"));
        Ok(())
    }

    fn jsonwebtoken_header_alg(t: &str) -> Option<String> {
        let h = t.split('.').next()?;
        let v: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        v.get("alg")?.as_str().map(str::to_owned)
    }
}
