//! Invites ("friends mode", issue 15): an operator hands a person a code, the person redeems it
//! on the control plane's invite page and gets a pool key of their own, once.
//!
//! Rules kept here:
//! - A code is `cmi_` followed by 40 characters from `[A-Za-z0-9]` from the OS CSPRNG (as pool
//!   keys: ≈238 bits), shown once and stored only as `SHA-256(code)` in lowercase hex.
//!   [`RawInviteCode`] redacts itself in `Debug` and is not `Serialize`.
//! - An invite is usable while it is not revoked, not expired and has uses left; its
//!   [`InviteStatus`] says which of those holds, revoked first, then used up, then expired.
//! - An invite's limits are checked here ([`validate_max_uses`], [`validate_ttl_ms`]) before
//!   anything is stored, naming the field at fault.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::InvalidValue;
use crate::policy::KeyPolicy;
use crate::util::{self, RandomError};

pub const INVITE_CODE_PREFIX: &str = "cmi_";
const INVITE_CODE_RANDOM_LEN: usize = 40;
/// The most people one invite may admit.
pub const MAX_INVITE_USES: u32 = 1000;
/// The longest an invite may stay valid: 90 days.
pub const MAX_INVITE_TTL_MS: i64 = 90 * 24 * 60 * 60 * 1000;
/// The shortest: one minute.
pub const MIN_INVITE_TTL_MS: i64 = 60 * 1000;
/// The name a redeemer gives (it becomes the new key's label): as a label.
pub const MAX_REDEEMER_NAME_LEN: usize = crate::ids::MAX_LABEL_LEN;

/// A freshly generated invite code. Shown once and never stored; `Debug` hides it.
pub struct RawInviteCode(String);

impl RawInviteCode {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(format!(
            "{INVITE_CODE_PREFIX}{}",
            util::random_alnum(INVITE_CODE_RANDOM_LEN)?
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash_hex(&self) -> String {
        invite_code_hash_hex(&self.0)
    }
}

impl std::fmt::Debug for RawInviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawInviteCode(<redacted>)")
    }
}

/// What the store keeps of a code: SHA-256 of its UTF-8 bytes, lowercase hex. A fast hash is
/// the right tool: codes are long and random, and guessing is throttled besides.
pub fn invite_code_hash_hex(code: &str) -> String {
    hex::encode(Sha256::digest(code.trim().as_bytes()))
}

/// Whether `s` has the shape of an invite code (obviously wrong input is refused early, but
/// still counts as a failed guess).
pub fn looks_like_invite_code(s: &str) -> bool {
    s.trim()
        .strip_prefix(INVITE_CODE_PREFIX)
        .is_some_and(|rest| {
            rest.len() == INVITE_CODE_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// The link a person opens: the code in the fragment, which browsers never send to a server,
/// so it stays out of every access log.
pub fn invite_link(public_url: &str, code: &RawInviteCode) -> String {
    format!(
        "{}/invite#code={}",
        public_url.trim_end_matches('/'),
        code.expose()
    )
}

string_enum! {
    /// Whether an invite can still be redeemed, and if not why.
    InviteStatus { Active = "active", Revoked = "revoked", UsedUp = "used_up", Expired = "expired" }
}

/// An invite as operators see it: metadata only, never the code (nor its hash).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Invite {
    pub id: String,
    pub pool_id: String,
    /// The pool's name.
    pub pool: String,
    pub label: Option<String>,
    /// The policy each key minted from this invite gets (empty: no limits).
    pub policy: KeyPolicy,
    pub max_uses: u32,
    pub uses: u32,
    pub uses_left: u32,
    pub expires_at_ms: i64,
    pub status: InviteStatus,
    /// Who created it (the audit log's actor name).
    pub created_by: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// An invite's status at `now_ms`: revoked, then used up, then expired, else active.
pub fn invite_status(
    revoked: bool,
    uses: u32,
    max_uses: u32,
    expires_at_ms: i64,
    now_ms: i64,
) -> InviteStatus {
    if revoked {
        InviteStatus::Revoked
    } else if uses >= max_uses {
        InviteStatus::UsedUp
    } else if expires_at_ms <= now_ms {
        InviteStatus::Expired
    } else {
        InviteStatus::Active
    }
}

pub fn validate_max_uses(n: u32) -> Result<(), InvalidValue> {
    if (1..=MAX_INVITE_USES).contains(&n) {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "max_uses",
            format!("max_uses must be 1..={MAX_INVITE_USES}, not {n}"),
        ))
    }
}

pub fn validate_ttl_ms(ms: i64) -> Result<(), InvalidValue> {
    if (MIN_INVITE_TTL_MS..=MAX_INVITE_TTL_MS).contains(&ms) {
        Ok(())
    } else {
        Err(InvalidValue::new(
            "expires_in",
            format!(
                "an invite is valid for 1 minute to 90 days, not {}",
                util::human_span_ms(&ms)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_documented_format_and_hide_in_debug() -> Result<(), RandomError> {
        let c = RawInviteCode::generate()?;
        assert!(looks_like_invite_code(c.expose()), "{}", c.expose());
        assert_eq!(c.expose().len(), 44);
        assert_ne!(c.expose(), RawInviteCode::generate()?.expose());
        assert_eq!(format!("{c:?}"), "RawInviteCode(<redacted>)");
        assert_eq!(c.hash_hex(), invite_code_hash_hex(c.expose()));
        assert_eq!(c.hash_hex().len(), 64);
        assert!(!looks_like_invite_code("cmk_abc"));
        assert!(!looks_like_invite_code(&format!("cmi_{}", "x".repeat(39))));
        Ok(())
    }

    #[test]
    fn the_link_keeps_the_code_in_the_fragment() -> Result<(), RandomError> {
        let c = RawInviteCode::generate()?;
        let link = invite_link("https://mesh.example/", &c);
        assert_eq!(
            link,
            format!("https://mesh.example/invite#code={}", c.expose())
        );
        Ok(())
    }

    #[test]
    fn status_names_the_first_reason_it_cannot_be_used() {
        assert_eq!(invite_status(false, 0, 1, 10, 5), InviteStatus::Active);
        assert_eq!(invite_status(false, 1, 1, 10, 5), InviteStatus::UsedUp);
        assert_eq!(invite_status(false, 0, 1, 10, 10), InviteStatus::Expired);
        assert_eq!(invite_status(true, 1, 1, 10, 50), InviteStatus::Revoked);
        assert_eq!(invite_status(false, 3, 3, 10, 50), InviteStatus::UsedUp);
    }

    #[test]
    fn limits_are_checked_naming_the_field() {
        assert!(validate_max_uses(1).is_ok());
        assert!(validate_max_uses(MAX_INVITE_USES).is_ok());
        assert_eq!(validate_max_uses(0).map_err(|e| e.field), Err("max_uses"));
        assert!(validate_ttl_ms(MIN_INVITE_TTL_MS).is_ok());
        assert_eq!(
            validate_ttl_ms(MAX_INVITE_TTL_MS + 1).map_err(|e| e.field),
            Err("expires_in")
        );
    }
}
