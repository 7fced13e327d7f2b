//! The use cases every surface calls: the CLI today, the admin API (reports), later the dashboard
//! and MCP. One function per use case, grouped by aggregate: [`pools`], [`accounts`], [`keys`],
//! [`reports`], [`overview`], [`operators`], [`secrets`] (the master key); [`declarative`] applies
//! and states documents.
//!
//! Rules this module keeps:
//! - a use case decides, validates and writes; a surface only parses its input, calls it and
//!   renders the result. No workflow is written twice;
//! - input is checked before the store is opened or written: bad input changes nothing;
//! - every use case returns `Result<Outcome<T>, OpsError>`: the typed result plus the
//!   [`Notice`]s a person should see (a surface prints or returns them; it never invents them);
//! - [`OpsError::kind`] says what kind of failure it is, so a surface maps it (HTTP status,
//!   exit code) without parsing messages;
//! - it reaches the store through [`Ops::store`] and depends on nothing that serves a surface
//!   (`api`, `server`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::OnceCell;

use crate::config::{ConfigError, Settings};
use codexmesh_model::credential_files::CredentialFileError;
use codexmesh_model::credentials::AuthJsonError;
use codexmesh_model::declarative::{ConfigError as DocumentError, ConfigErrorKind};
use codexmesh_model::operators::{Access, Principal};
use codexmesh_model::routing::InvalidSetting;
use codexmesh_store::{Actor, Store, StoreError};

pub mod accounts;
pub mod activity;
pub mod alerts;
pub mod declarative;
pub mod forecast;
mod guard;
pub mod invites;
pub mod keys;
pub mod operators;
pub mod overview;
pub mod pools;
pub mod reports;
pub mod secrets;
pub mod warmup;

pub use crate::login::LoginError;
pub use crate::refresh::RefreshError;
pub use crate::requests::RequestLogError;

/// The context every use case runs in: the settings, who acts and what it may see and change
/// ([`Access`]; the audit log's [`Actor`] with the client address), and the store, opened on
/// first use so a use case can reject bad input before touching it.
#[derive(Debug)]
pub struct Ops {
    settings: Arc<Settings>,
    access: Access,
    actor: Actor,
    store: OnceCell<Store>,
}

impl Ops {
    /// Local use (the CLI, `up`, background work): shell access, everything. Opens the
    /// settings' store when a use case first needs it.
    pub fn new(settings: Settings, actor: Actor) -> Self {
        Self {
            settings: Arc::new(settings),
            access: Access::shell(actor.name.trim_start_matches("cli:")),
            actor,
            store: OnceCell::new(),
        }
    }

    /// Local use on an already open store (`serve`, `up`).
    pub fn with_store(settings: Settings, actor: Actor, store: Store) -> Self {
        Self {
            settings: Arc::new(settings),
            access: Access::shell(actor.name.trim_start_matches("cli:")),
            actor,
            store: OnceCell::new_with(Some(store)),
        }
    }

    /// The same settings and store, acting for `access` from `client` (an admin API request).
    pub fn acting_as(&self, access: Access, client: Option<String>) -> Self {
        let actor = match &access.principal {
            Principal::Shell { .. } => self.actor.clone(),
            other => Actor::new(other.actor()),
        }
        .from_client(client);
        Self {
            settings: Arc::clone(&self.settings),
            access,
            actor,
            store: OnceCell::new_with(self.store.get().cloned()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Who the audit log names (with the client address for API requests).
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// What the acting principal may see and change.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The store, opened (and migrated) on first use.
    pub async fn store(&self) -> Result<&Store, OpsError> {
        Ok(self
            .store
            .get_or_try_init(|| Store::open(&self.settings.store))
            .await?)
    }
}

/// A use case's result and what a person should be told about it.
#[derive(Debug)]
pub struct Outcome<T> {
    pub value: T,
    pub notices: Vec<Notice>,
}

impl<T> Outcome<T> {
    pub fn new(value: T) -> Self {
        Self {
            value,
            notices: Vec::new(),
        }
    }

    fn with_notices(value: T, notices: Vec<Notice>) -> Self {
        Self { value, notices }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeLevel {
    /// Something is or will go wrong unless the operator acts.
    Warning,
    /// Worth knowing; nothing is wrong.
    Note,
    /// Progress or an account of what was done.
    Info,
}

/// A message for the person who asked: a level, a stable code (for machines and tests) and
/// the text. Displays as the CLI prints it: `warning: …`, `note: …`, or the bare text (info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Notice {
    pub level: NoticeLevel,
    #[schema(value_type = String)]
    pub code: &'static str,
    pub message: String,
}

impl Notice {
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            level: NoticeLevel::Warning,
            code,
            message: message.into(),
        }
    }

    pub fn note(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            level: NoticeLevel::Note,
            code,
            message: message.into(),
        }
    }

    pub fn info(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            level: NoticeLevel::Info,
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            NoticeLevel::Warning => write!(f, "warning: {}", self.message),
            NoticeLevel::Note => write!(f, "note: {}", self.message),
            NoticeLevel::Info => f.write_str(&self.message),
        }
    }
}

/// What kind of failure an [`OpsError`] is: what a surface maps to a status or exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The named pool, account or key does not exist (HTTP 404).
    NotFound,
    /// The input is unacceptable; [`OpsError::field`] names the part when known (HTTP 400).
    Invalid,
    /// The input is fine but the current state refuses it: a name taken, a file already
    /// there, an account that needs re-authentication, a lease held elsewhere (HTTP 409).
    Conflict,
    /// The auth server or the upstream failed or refused (HTTP 502).
    Upstream,
    /// The store cannot be reached (HTTP 503).
    Unavailable,
    /// No valid credentials: a failed sign-in, a bad, expired or revoked token (HTTP 401).
    Unauthenticated,
    /// The principal sees the thing but its role may not do this (HTTP 403). What it may not
    /// see at all is [`ErrorKind::NotFound`].
    Forbidden,
    /// Too many failed sign-ins: locked for a while (HTTP 429).
    RateLimited,
    /// The password was right and the operator has a second factor: sign in again with its
    /// current code (HTTP 401). Only a caller who knew the password ever sees it.
    TotpRequired,
    /// A bug, bad settings or stored data that does not add up (HTTP 500).
    Internal,
}

/// Why a use case failed. The messages are the ones operators read; [`OpsError::kind`] and
/// [`OpsError::field`] are for code.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A bad setting value (a routing flag, a priority, a weight).
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// The auth.json to import is unusable.
    #[error("{}: {source}", path.display())]
    AuthJson {
        path: PathBuf,
        source: AuthJsonError,
    },
    /// The credential file to import (any provider's) is unusable.
    #[error("{}: {source}", path.display())]
    CredentialFile {
        path: PathBuf,
        source: CredentialFileError,
    },
    /// Input that no other variant describes; `field` names the input at fault.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Input that the current state refuses (an existing file without --force).
    #[error("{0}")]
    Conflict(String),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Refresh(#[from] RefreshError),
    #[error("login: {0}")]
    Login(#[from] LoginError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    RequestLog(#[from] RequestLogError),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("this operator signs in with a one-time code too: send it as `totp`")]
    TotpRequired,
    /// A declarative document is malformed, names what does not exist, or asks for what the
    /// principal may not do: `FILE:LINE:COLUMN: field.path: message`.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::NotFound { .. } => ErrorKind::NotFound,
        StoreError::Invalid { .. }
        | StoreError::InvalidPath { .. }
        | StoreError::Ambiguous { .. } => ErrorKind::Invalid,
        StoreError::Conflict { .. } => ErrorKind::Conflict,
        StoreError::Db(_) | StoreError::Migrate(_) | StoreError::SqliteFile { .. } => {
            ErrorKind::Unavailable
        }
        StoreError::BadUrl(_)
        | StoreError::MasterKeyMismatch
        | StoreError::Corrupt(_)
        | StoreError::Crypto(_)
        | StoreError::Random(_) => ErrorKind::Internal,
    }
}

/// The store names the field of its invalid-input errors; other store errors have none.
fn store_field(e: &StoreError) -> Option<&str> {
    match e {
        StoreError::Invalid { field, .. } => Some(field),
        StoreError::InvalidPath { field, .. } => Some(field),
        _ => None,
    }
}

impl OpsError {
    /// Whether the store refused a write because its disk is full
    /// ([`StoreError::is_disk_full`]).
    pub fn is_disk_full(&self) -> bool {
        match self {
            OpsError::Store(e) | OpsError::Refresh(RefreshError::Store(e)) => e.is_disk_full(),
            _ => false,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            OpsError::Store(e) => store_kind(e),
            OpsError::Config(_) | OpsError::Write { .. } | OpsError::Http(_) => ErrorKind::Internal,
            OpsError::Setting(_)
            | OpsError::AuthJson { .. }
            | OpsError::CredentialFile { .. }
            | OpsError::Invalid { .. } => ErrorKind::Invalid,
            OpsError::Conflict(_) => ErrorKind::Conflict,
            OpsError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            OpsError::Forbidden(_) => ErrorKind::Forbidden,
            OpsError::RateLimited(_) => ErrorKind::RateLimited,
            OpsError::TotpRequired => ErrorKind::TotpRequired,
            OpsError::Document(e) => match e.kind {
                ConfigErrorKind::Invalid => ErrorKind::Invalid,
                ConfigErrorKind::Forbidden => ErrorKind::Forbidden,
                ConfigErrorKind::Conflict => ErrorKind::Conflict,
            },
            OpsError::Refresh(e) => match e {
                RefreshError::NeedsReauth { .. } | RefreshError::LeaseTimeout { .. } => {
                    ErrorKind::Conflict
                }
                RefreshError::Failed { .. } => ErrorKind::Upstream,
                RefreshError::Store(e) => store_kind(e),
            },
            OpsError::Login(e) => match e {
                LoginError::Expired | LoginError::Denied | LoginError::TimedOut(_) => {
                    ErrorKind::Conflict
                }
                LoginError::NotEnabled(_)
                | LoginError::Refused { .. }
                | LoginError::Transport(_)
                | LoginError::BadAnswer(_) => ErrorKind::Upstream,
            },
            OpsError::RequestLog(e) => match e {
                RequestLogError::Invalid { .. } => ErrorKind::Invalid,
                RequestLogError::Store(e) => store_kind(e),
            },
        }
    }

    /// The input at fault, for [`ErrorKind::Invalid`] when known: a flag or parameter name
    /// without dashes (`strategy`, `limit`, `auth_json`).
    pub fn field(&self) -> Option<&str> {
        match self {
            OpsError::Setting(e) => Some(e.flag.trim_start_matches("--")),
            OpsError::AuthJson { .. } => Some("auth_json"),
            OpsError::CredentialFile { source, .. } => Some(credential_field(source)),
            OpsError::Invalid { field, .. } => Some(field),
            OpsError::RequestLog(RequestLogError::Invalid { field, .. }) => Some(field),
            OpsError::Document(e) if !e.path.is_empty() => Some(&e.path),
            OpsError::Store(e)
            | OpsError::Refresh(RefreshError::Store(e))
            | OpsError::RequestLog(RequestLogError::Store(e)) => store_field(e),
            _ => None,
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        OpsError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// The field an unusable credential file's error names: the path inside the file where one
/// field is at fault, else the file as a whole (`auth_json` for a Codex one).
fn credential_field(e: &CredentialFileError) -> &str {
    use codexmesh_model::claude_credentials::ClaudeFileError;
    use codexmesh_model::gemini_credentials::GeminiFileError;
    match e {
        CredentialFileError::Claude(ClaudeFileError::Field(f))
        | CredentialFileError::Gemini(GeminiFileError::Field(f)) => &f.path,
        CredentialFileError::Gemini(GeminiFileError::BadIdToken(_)) => "id_token",
        CredentialFileError::Codex(_) => "auth_json",
        CredentialFileError::ProviderMismatch { .. } => "provider",
        _ => "credentials",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_store::{ConflictReason, Entity, Lookup};

    #[test]
    fn kinds_follow_the_cause() {
        let cases: Vec<(OpsError, ErrorKind, Option<&str>)> = vec![
            (
                StoreError::NotFound {
                    what: Entity::Pool,
                    ident: "x".into(),
                    lookup: Lookup::Name,
                }
                .into(),
                ErrorKind::NotFound,
                None,
            ),
            (
                StoreError::NotFound {
                    what: Entity::Membership,
                    ident: "a".into(),
                    lookup: Lookup::InPool {
                        pool: "p".into(),
                        its_pools: "q".into(),
                    },
                }
                .into(),
                ErrorKind::NotFound,
                None,
            ),
            (
                StoreError::Conflict {
                    what: Entity::Pool,
                    ident: "x".into(),
                    reason: ConflictReason::NameTaken,
                }
                .into(),
                ErrorKind::Conflict,
                None,
            ),
            (
                StoreError::Conflict {
                    what: Entity::Account,
                    ident: "a".into(),
                    reason: ConflictReason::NeedsReauth,
                }
                .into(),
                ErrorKind::Conflict,
                None,
            ),
            (
                StoreError::Invalid {
                    field: "primary",
                    message: "invalid --primary \"z\": no account".into(),
                }
                .into(),
                ErrorKind::Invalid,
                Some("primary"),
            ),
            (
                RequestLogError::Store(StoreError::Invalid {
                    field: "label",
                    message: "bad label".into(),
                })
                .into(),
                ErrorKind::Invalid,
                Some("label"),
            ),
            (
                StoreError::Ambiguous {
                    what: Entity::Account,
                    ident: "a".into(),
                    ids: "1, 2".into(),
                }
                .into(),
                ErrorKind::Invalid,
                None,
            ),
            (
                StoreError::Db(sqlx_pool_closed()).into(),
                ErrorKind::Unavailable,
                None,
            ),
            (
                StoreError::MasterKeyMismatch.into(),
                ErrorKind::Internal,
                None,
            ),
            (
                InvalidSetting {
                    flag: "--strategy",
                    value: "fastest".into(),
                    expected: "one of …".into(),
                }
                .into(),
                ErrorKind::Invalid,
                Some("strategy"),
            ),
            (
                OpsError::invalid("timeout_secs", "--timeout-secs must be at least 1"),
                ErrorKind::Invalid,
                Some("timeout_secs"),
            ),
            (
                OpsError::Conflict("x already exists".into()),
                ErrorKind::Conflict,
                None,
            ),
            (
                RefreshError::NeedsReauth {
                    label: "a".into(),
                    reason: "revoked".into(),
                    hint: "log in again",
                }
                .into(),
                ErrorKind::Conflict,
                None,
            ),
            (
                RefreshError::Store(StoreError::NotFound {
                    what: Entity::Account,
                    ident: "acc_1".into(),
                    lookup: Lookup::Id,
                })
                .into(),
                ErrorKind::NotFound,
                None,
            ),
            (
                LoginError::Transport("refused".into()).into(),
                ErrorKind::Upstream,
                None,
            ),
            (LoginError::Denied.into(), ErrorKind::Conflict, None),
            (
                RequestLogError::Invalid {
                    field: "limit",
                    message: "0 is outside 1..=1000".into(),
                }
                .into(),
                ErrorKind::Invalid,
                Some("limit"),
            ),
            (
                RequestLogError::Store(StoreError::Corrupt("x".into())).into(),
                ErrorKind::Internal,
                None,
            ),
        ];
        for (e, kind, field) in cases {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.field(), field, "{e}");
        }
    }

    fn sqlx_pool_closed() -> sqlx::Error {
        sqlx::Error::PoolClosed
    }

    #[test]
    fn errors_keep_their_messages() {
        let e: OpsError = StoreError::NotFound {
            what: Entity::Pool,
            ident: "x".into(),
            lookup: Lookup::Name,
        }
        .into();
        assert_eq!(e.to_string(), "no pool named \"x\"");
        let e: OpsError = LoginError::Denied.into();
        assert_eq!(
            e.to_string(),
            "login: the login was denied at the approval page"
        );
    }

    #[test]
    fn notices_display_as_the_cli_prints_them() {
        assert_eq!(
            Notice::warning("w", "careful").to_string(),
            "warning: careful"
        );
        assert_eq!(Notice::note("n", "fyi").to_string(), "note: fyi");
        assert_eq!(Notice::info("i", "done").to_string(), "done");
    }
}
