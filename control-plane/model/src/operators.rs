//! Operators (people who run codexmesh), their roles, API tokens for automation, and the one
//! question every surface asks: may this principal see or change pool X?
//!
//! Rules: pure (no I/O besides the OS random source for new secrets); no printable type holds a
//! password, hash, TOTP secret or raw token ([`RawApiToken`] and [`RawBootstrapSecret`] redact
//! themselves in `Debug` and are not `Serialize`).
//!
//! Roles (issue 11): an **owner** sees and changes everything, operators included; an **admin**
//! sees and changes only the pools assigned to it and creates viewers/admins for those pools (never
//! owners); a **viewer** reads the pools assigned to it and changes nothing. What a principal may
//! not see does not exist for it (surfaces answer 404, not 403): [`Access::sees_pool`].

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::util::{self, RandomError};

string_enum! {
    /// What an operator (or API token) may do.
    Role { Owner = "owner", Admin = "admin", Viewer = "viewer" }
}

impl Role {
    /// May change things (pools, accounts, keys) it sees.
    pub fn can_write(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// Sees every pool, assigned or not.
    pub fn sees_all_pools(self) -> bool {
        self == Role::Owner
    }

    /// May create, change and disable operators (an admin only below itself, see
    /// [`Role::may_grant`]).
    pub fn manages_operators(self) -> bool {
        self.can_write()
    }

    /// May create pools (a new pool is assigned to nobody, so only an owner).
    pub fn may_create_pools(self) -> bool {
        self == Role::Owner
    }

    /// May give `other` to an operator or a token: an owner any role, an admin admin or viewer,
    /// a viewer nothing.
    pub fn may_grant(self, other: Role) -> bool {
        match self {
            Role::Owner => true,
            Role::Admin => other != Role::Owner,
            Role::Viewer => false,
        }
    }

    /// The rank for comparisons (owner 2, admin 1, viewer 0).
    pub fn rank(self) -> u8 {
        match self {
            Role::Owner => 2,
            Role::Admin => 1,
            Role::Viewer => 0,
        }
    }
}

/// An operator as every surface may print it (no password hash, TOTP secret or counters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Operator {
    pub id: String,
    /// The sign-in name (an email or a handle; unique).
    pub name: String,
    pub role: Role,
    /// Pool names assigned to it (owners see all regardless).
    pub pools: Vec<String>,
    pub disabled: bool,
    pub totp_enabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An API token as every surface may print it (never the token or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub label: String,
    pub role: Role,
    /// Pool names it is scoped to (an owner token: all pools, this is empty).
    pub pools: Vec<String>,
    /// The operator who created it (None: the shell).
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

impl ApiToken {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }
}

/// Who is acting: what an access decision and the audit log need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Local CLI use (the shell user): full access, like an owner.
    Shell {
        user: String,
    },
    Operator {
        id: String,
        name: String,
    },
    Token {
        id: String,
        label: String,
    },
}

impl Principal {
    /// The audit log's actor text: `cli:alice`, `operator:bob`, `token:ci-deploy`.
    pub fn actor(&self) -> String {
        match self {
            Principal::Shell { user } => format!("cli:{user}"),
            Principal::Operator { name, .. } => format!("operator:{name}"),
            Principal::Token { label, .. } => format!("token:{label}"),
        }
    }
}

/// A principal with its role and pool scope: answers "may it see / change pool X".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub principal: Principal,
    pub role: Role,
    /// Assigned pool names (ignored for owners).
    pub pools: Vec<String>,
}

impl Access {
    /// The local shell: everything.
    pub fn shell(user: impl Into<String>) -> Self {
        Self {
            principal: Principal::Shell { user: user.into() },
            role: Role::Owner,
            pools: Vec::new(),
        }
    }

    fn assigned(&self, pool: &str) -> bool {
        self.pools.iter().any(|p| p == pool)
    }

    /// May see the pool (and everything in it). When false a surface says "not found".
    pub fn sees_pool(&self, pool: &str) -> bool {
        self.role.sees_all_pools() || self.assigned(pool)
    }

    /// May change the pool (its settings, accounts, keys).
    pub fn may_change_pool(&self, pool: &str) -> bool {
        self.role.can_write() && self.sees_pool(pool)
    }

    /// May create a pool.
    pub fn may_create_pool(&self) -> bool {
        self.role.may_create_pools()
    }

    /// Keeps the pools it may see, in order.
    pub fn visible<'a, I: IntoIterator<Item = &'a str>>(&self, pools: I) -> Vec<&'a str> {
        pools.into_iter().filter(|p| self.sees_pool(p)).collect()
    }

    /// May see the operator `target` at all: owners all; admins themselves and operators whose
    /// pools are all among its own (not owners); viewers only themselves.
    pub fn sees_operator(&self, target: &Operator) -> bool {
        if self.is_operator(&target.id) || self.role.sees_all_pools() {
            return true;
        }
        self.role == Role::Admin
            && target.role != Role::Owner
            && target.pools.iter().all(|p| self.assigned(p))
    }

    /// May create an operator (or token) with `role` over `pools`, or change one to that: the
    /// role must be grantable and every pool its own (owners: any).
    pub fn may_grant(&self, role: Role, pools: &[String]) -> bool {
        self.role.may_grant(role)
            && (self.role.sees_all_pools() || pools.iter().all(|p| self.assigned(p)))
    }

    /// May change (role, pools, disable, password) the operator `target`: owners anyone; admins
    /// non-owners they see (not themselves: no self-promotion); viewers nobody.
    pub fn may_manage_operator(&self, target: &Operator) -> bool {
        match self.role {
            Role::Owner => true,
            Role::Admin => {
                !self.is_operator(&target.id)
                    && target.role != Role::Owner
                    && self.sees_operator(target)
            }
            Role::Viewer => false,
        }
    }

    fn is_operator(&self, id: &str) -> bool {
        matches!(&self.principal, Principal::Operator { id: me, .. } if me == id)
    }
}

/// API token format: `cma_` + 40 alphanumerics from the OS CSPRNG; stored only as SHA-256 (a
/// fast hash is enough for long random tokens, as for pool keys).
pub const API_TOKEN_PREFIX: &str = "cma_";
const TOKEN_RANDOM_LEN: usize = 40;

/// A new API token: shown once, never stored. `Debug` redacts it; not `Serialize`.
pub struct RawApiToken(String);

impl RawApiToken {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(format!(
            "{API_TOKEN_PREFIX}{}",
            util::random_alnum(TOKEN_RANDOM_LEN)?
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash_hex(&self) -> String {
        secret_hash_hex(&self.0)
    }
}

impl std::fmt::Debug for RawApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawApiToken(<redacted>)")
    }
}

/// Whether `s` has the shape of an API token.
pub fn looks_like_api_token(s: &str) -> bool {
    s.strip_prefix(API_TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == TOKEN_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The one-time bootstrap secret: `cmb_` + 40 alphanumerics; stored only as SHA-256.
pub const BOOTSTRAP_PREFIX: &str = "cmb_";

pub struct RawBootstrapSecret(String);

impl RawBootstrapSecret {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(format!(
            "{BOOTSTRAP_PREFIX}{}",
            util::random_alnum(TOKEN_RANDOM_LEN)?
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash_hex(&self) -> String {
        secret_hash_hex(&self.0)
    }
}

impl std::fmt::Debug for RawBootstrapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawBootstrapSecret(<redacted>)")
    }
}

/// SHA-256 hex of a long random secret (API token, bootstrap secret): what the store keeps.
pub fn secret_hash_hex(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// Operator sign-in names: 1-128 printable characters without spaces (an email or a handle).
pub fn validate_operator_name(name: &str) -> Result<(), crate::ids::InvalidValue> {
    if name.is_empty()
        || name.chars().count() > 128
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(crate::ids::InvalidValue::new(
            "name",
            format!(
                "invalid operator name {name:?}: expected 1-128 printable characters without \
                 spaces (an email or a handle)"
            ),
        ));
    }
    Ok(())
}

/// Passwords: 12-1024 characters (length is what matters; no composition rules).
pub fn validate_password(password: &str) -> Result<(), crate::ids::InvalidValue> {
    let n = password.chars().count();
    if !(12..=1024).contains(&n) {
        return Err(crate::ids::InvalidValue::new(
            "password",
            "the password must be 12 to 1024 characters long",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, role: Role, pools: &[&str]) -> Operator {
        Operator {
            id: id.into(),
            name: format!("{id}@x"),
            role,
            pools: pools.iter().map(|p| (*p).to_owned()).collect(),
            disabled: false,
            totp_enabled: false,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn access(o: &Operator) -> Access {
        Access {
            principal: Principal::Operator {
                id: o.id.clone(),
                name: o.name.clone(),
            },
            role: o.role,
            pools: o.pools.clone(),
        }
    }

    #[test]
    fn roles_say_what_they_may_do() {
        assert!(Role::Owner.can_write() && Role::Owner.sees_all_pools());
        assert!(Role::Admin.can_write() && !Role::Admin.sees_all_pools());
        assert!(!Role::Viewer.can_write() && !Role::Viewer.sees_all_pools());
        assert!(Role::Owner.may_grant(Role::Owner));
        assert!(Role::Admin.may_grant(Role::Admin) && Role::Admin.may_grant(Role::Viewer));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(Role::ALL.iter().all(|r| !Role::Viewer.may_grant(*r)));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
        assert!(
            Role::Owner.rank() > Role::Admin.rank() && Role::Admin.rank() > Role::Viewer.rank()
        );
    }

    #[test]
    fn pool_access_follows_role_and_assignment() {
        let owner = access(&op("o", Role::Owner, &[]));
        let admin = access(&op("a", Role::Admin, &["p1", "p2"]));
        let viewer = access(&op("v", Role::Viewer, &["p1"]));
        assert!(owner.sees_pool("any") && owner.may_change_pool("any") && owner.may_create_pool());
        assert!(admin.sees_pool("p1") && admin.may_change_pool("p2"));
        assert!(!admin.sees_pool("p3") && !admin.may_change_pool("p3") && !admin.may_create_pool());
        assert!(viewer.sees_pool("p1") && !viewer.may_change_pool("p1"));
        assert!(!viewer.sees_pool("p2"));
        assert_eq!(admin.visible(["p1", "p3", "p2"]), vec!["p1", "p2"]);
        let shell = Access::shell("alice");
        assert!(shell.may_change_pool("x") && shell.may_create_pool());
        assert_eq!(shell.principal.actor(), "cli:alice");
    }

    #[test]
    fn operator_management_stays_within_scope() {
        let owner_op = op("o", Role::Owner, &[]);
        let admin_op = op("a", Role::Admin, &["p1", "p2"]);
        let (owner, admin) = (access(&owner_op), access(&admin_op));
        let viewer_in = op("v1", Role::Viewer, &["p1"]);
        let viewer_out = op("v2", Role::Viewer, &["p1", "p3"]);
        let viewer = access(&viewer_in);
        // Owners: everything.
        assert!(owner.may_manage_operator(&admin_op) && owner.may_manage_operator(&owner_op));
        assert!(owner.may_grant(Role::Owner, &[]));
        // Admins: non-owners within their pools, never themselves, never owner.
        assert!(admin.sees_operator(&viewer_in) && admin.may_manage_operator(&viewer_in));
        assert!(!admin.sees_operator(&viewer_out) && !admin.may_manage_operator(&viewer_out));
        assert!(!admin.sees_operator(&owner_op) && !admin.may_manage_operator(&owner_op));
        assert!(admin.sees_operator(&admin_op) && !admin.may_manage_operator(&admin_op));
        assert!(admin.may_grant(Role::Viewer, &["p1".into()]));
        assert!(!admin.may_grant(Role::Viewer, &["p3".into()]));
        assert!(!admin.may_grant(Role::Owner, &[]));
        // Viewers: themselves, read only.
        assert!(viewer.sees_operator(&viewer_in) && !viewer.sees_operator(&viewer_out));
        assert!(!viewer.may_manage_operator(&viewer_in));
        assert!(!viewer.may_grant(Role::Viewer, &["p1".into()]));
    }

    #[test]
    fn secrets_have_their_format_and_redact() -> Result<(), RandomError> {
        let t = RawApiToken::generate()?;
        assert!(looks_like_api_token(t.expose()), "{}", t.expose());
        assert_eq!(format!("{t:?}"), "RawApiToken(<redacted>)");
        assert_eq!(t.hash_hex(), secret_hash_hex(t.expose()));
        assert_eq!(t.hash_hex().len(), 64);
        let b = RawBootstrapSecret::generate()?;
        assert!(b.expose().starts_with(BOOTSTRAP_PREFIX));
        assert!(!format!("{b:?}").contains(b.expose()));
        assert!(!looks_like_api_token("cmk_abc"));
        Ok(())
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(validate_operator_name("alice@example.com").is_ok());
        assert!(validate_operator_name("").is_err());
        assert!(validate_operator_name("a b").is_err());
        assert!(validate_password("correct horse battery").is_ok());
        assert_eq!(
            validate_password("short").map_err(|e| e.field),
            Err("password")
        );
    }
}
