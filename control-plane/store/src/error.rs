//! The store's error type. Rules: a variant carries what code needs to act on it (which entity
//! was not found and how it was looked up, which field was invalid, what a conflict was about),
//! and its message is derived from those fields, never parsed back out of them. Depends on no
//! other store module except `crypto` (for its error type).

use std::fmt;
use std::path::PathBuf;

use crate::crypto::CryptoError;
use codexmesh_model::util::RandomError;

/// What kind of stored thing an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Pool,
    Account,
    Key,
    /// An account's membership in a pool.
    Membership,
    Operator,
    ApiToken,
    BootstrapSecret,
    /// An alert webhook.
    Webhook,
    Invite,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Pool => "pool",
            Entity::Account => "account",
            Entity::Key => "key",
            Entity::Membership => "membership",
            Entity::Operator => "operator",
            Entity::ApiToken => "API token",
            Entity::BootstrapSecret => "bootstrap secret",
            Entity::Webhook => "webhook",
            Entity::Invite => "invite",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a [`StoreError::NotFound`] lookup went (it picks the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By unique name: `no pool named "x"`.
    Name,
    /// By id: `no account with id "x"`.
    Id,
    /// By id, then label: `no key with id or label "x"`.
    IdOrLabel,
    /// By id, then name: `no operator with id or name "x"`.
    IdOrName,
    /// A secret that is unknown, used or expired (which one is not said): `no valid bootstrap
    /// secret matches`.
    Valid,
    /// By id, gone while a refresh of it was under way.
    RemovedWhileRefreshing,
    /// An account (`ident` is its label) that is not a member of `pool`; `its_pools` names the
    /// pools it is in. `what` is [`Entity::Membership`].
    InPool { pool: String, its_pools: String },
}

/// What a [`StoreError::Conflict`] is about (it picks the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// Another `what` already has the name `ident`.
    NameTaken,
    /// Another `what` already has the hash `ident`.
    HashTaken,
    /// Another user of ChatGPT account `ident` was first imported into `pool` (SQLite keeps the
    /// pre-0005 UNIQUE (pool_id, chatgpt_account_id)).
    LoginInPool { pool: String },
    /// The account (`ident` is its label) needs re-authentication before it can be resumed.
    NeedsReauth,
    /// The key `ident` is revoked (a revoked key cannot get a new secret).
    Revoked,
    /// The pool `ident` is archived (restore it first).
    Archived,
    /// The change would leave no enabled owner (`ident` is the operator's name).
    LastOwner,
    /// The invite `ident` cannot be redeemed any more: revoked, used up or expired.
    InviteClosed(codexmesh_model::invites::InviteStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store URL {0:?} is not sqlite:PATH or postgres://...")]
    BadUrl(String),
    #[error("cannot prepare the SQLite file {}: {source}", path.display())]
    SqliteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `what` that `ident` names does not exist.
    #[error("{}", not_found_message(*.what, .ident, .lookup))]
    NotFound {
        what: Entity,
        ident: String,
        lookup: Lookup,
    },
    /// The input is fine but the stored state refuses it.
    #[error("{}", conflict_message(*.what, .ident, .reason))]
    Conflict {
        what: Entity,
        ident: String,
        reason: ConflictReason,
    },
    /// Input `field` (a flag or parameter name without dashes) is unacceptable.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Input at a path built at run time (`policy.requests_per_minute`) is unacceptable.
    #[error("{message}")]
    InvalidPath { field: String, message: String },
    #[error("{what} {ident:?} is ambiguous (matches {ids}); use the id")]
    Ambiguous {
        what: Entity,
        ident: String,
        ids: String,
    },
    #[error(
        "the master key does not match the one this store's secrets were sealed with \
         (check CODEXMESH_MASTER_KEY / the data dir's master.key)"
    )]
    MasterKeyMismatch,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

fn not_found_message(what: Entity, ident: &str, lookup: &Lookup) -> String {
    match lookup {
        Lookup::Name => format!("no {what} named {ident:?}"),
        Lookup::Id => format!("no {what} with id {ident:?}"),
        Lookup::IdOrLabel => format!("no {what} with id or label {ident:?}"),
        Lookup::IdOrName => format!("no {what} with id or name {ident:?}"),
        Lookup::Valid => format!("no valid {what} matches (unknown, already used or expired)"),
        Lookup::RemovedWhileRefreshing => {
            format!("{what} {ident} was removed while it was being refreshed")
        }
        Lookup::InPool { pool, its_pools } => {
            format!("account {ident} is not in pool {pool:?} (its pools: {its_pools})")
        }
    }
}

fn conflict_message(what: Entity, ident: &str, reason: &ConflictReason) -> String {
    match reason {
        ConflictReason::NameTaken => format!("a {what} named {ident:?} already exists"),
        ConflictReason::HashTaken => format!("a {what} with this hash already exists"),
        ConflictReason::LoginInPool { pool } => format!(
            "another user of ChatGPT account {ident} was first imported into pool {pool:?}: \
             import this login into another pool first, then add it here with \
             `codexmesh account join`"
        ),
        ConflictReason::NeedsReauth => {
            format!("{what} {ident} needs re-authentication: import a fresh auth.json for it")
        }
        ConflictReason::Revoked => {
            format!("{what} {ident} is revoked: issue a new one instead")
        }
        ConflictReason::Archived => {
            format!("{what} {ident} is archived: restore it first")
        }
        ConflictReason::LastOwner => {
            format!("{ident} is the last owner: make another owner first")
        }
        ConflictReason::InviteClosed(status) => {
            use codexmesh_model::invites::InviteStatus;
            let why = match status {
                InviteStatus::Revoked => "was revoked",
                InviteStatus::UsedUp => "has been used as often as it allows",
                InviteStatus::Expired | InviteStatus::Active => "has expired",
            };
            format!("this {what} {why}: ask whoever sent it for a new one")
        }
    }
}

impl StoreError {
    /// Whether the database refused a write because its disk (or file) is full: SQLite's
    /// `SQLITE_FULL` (13), PostgreSQL's `disk_full` (53100). Reads still work then.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("13" | "53100"))
                    || d.message().contains("disk is full")
            }
            _ => false,
        }
    }

    pub(crate) fn not_found(what: Entity, ident: impl Into<String>, lookup: Lookup) -> Self {
        StoreError::NotFound {
            what,
            ident: ident.into(),
            lookup,
        }
    }

    pub(crate) fn conflict(what: Entity, ident: impl Into<String>, reason: ConflictReason) -> Self {
        StoreError::Conflict {
            what,
            ident: ident.into(),
            reason,
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<codexmesh_model::ids::InvalidValue> for StoreError {
    fn from(e: codexmesh_model::ids::InvalidValue) -> Self {
        StoreError::invalid(e.field, e.message)
    }
}

/// The field is the flag without its dashes (`--weight` → `weight`).
impl From<codexmesh_model::routing::InvalidSetting> for StoreError {
    fn from(e: codexmesh_model::routing::InvalidSetting) -> Self {
        StoreError::invalid(e.flag.trim_start_matches("--"), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_the_fields() {
        let cases: Vec<(StoreError, &str)> = vec![
            (
                StoreError::not_found(Entity::Pool, "p", Lookup::Name),
                r#"no pool named "p""#,
            ),
            (
                StoreError::not_found(Entity::Account, "acc_1", Lookup::Id),
                r#"no account with id "acc_1""#,
            ),
            (
                StoreError::not_found(Entity::Key, "k", Lookup::IdOrLabel),
                r#"no key with id or label "k""#,
            ),
            (
                StoreError::not_found(Entity::Account, "acc_1", Lookup::RemovedWhileRefreshing),
                "account acc_1 was removed while it was being refreshed",
            ),
            (
                StoreError::not_found(
                    Entity::Membership,
                    "a@x",
                    Lookup::InPool {
                        pool: "p".into(),
                        its_pools: "q, r".into(),
                    },
                ),
                r#"account a@x is not in pool "p" (its pools: q, r)"#,
            ),
            (
                StoreError::conflict(Entity::Pool, "p", ConflictReason::NameTaken),
                r#"a pool named "p" already exists"#,
            ),
            (
                StoreError::conflict(Entity::Key, "ab12", ConflictReason::HashTaken),
                "a key with this hash already exists",
            ),
            (
                StoreError::conflict(
                    Entity::Account,
                    "cgpt-1",
                    ConflictReason::LoginInPool { pool: "p".into() },
                ),
                "another user of ChatGPT account cgpt-1 was first imported into pool \"p\": \
                 import this login into another pool first, then add it here with \
                 `codexmesh account join`",
            ),
            (
                StoreError::conflict(Entity::Account, "a@x", ConflictReason::NeedsReauth),
                "account a@x needs re-authentication: import a fresh auth.json for it",
            ),
            (
                StoreError::conflict(Entity::Operator, "root", ConflictReason::LastOwner),
                "root is the last owner: make another owner first",
            ),
            (
                StoreError::invalid("key_hash", "key hash must be 64 hex digits"),
                "key hash must be 64 hex digits",
            ),
            (
                StoreError::Ambiguous {
                    what: Entity::Account,
                    ident: "a".into(),
                    ids: "acc_1, acc_2".into(),
                },
                r#"account "a" is ambiguous (matches acc_1, acc_2); use the id"#,
            ),
        ];
        for (e, message) in cases {
            assert_eq!(e.to_string(), message, "{e:?}");
        }
    }

    #[test]
    fn model_errors_keep_their_field() {
        let e = StoreError::from(codexmesh_model::ids::InvalidValue::new(
            "label",
            "bad label",
        ));
        assert!(
            matches!(e, StoreError::Invalid { field: "label", .. }),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "bad label");
        let setting = codexmesh_model::routing::check_weight(0).unwrap_err();
        let message = setting.to_string();
        let e = StoreError::from(setting);
        assert!(
            matches!(
                e,
                StoreError::Invalid {
                    field: "weight",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), message);
    }
}
