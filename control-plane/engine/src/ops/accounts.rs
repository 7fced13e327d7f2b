//! Account use cases: import a credential file (Codex auth.json, Claude Code
//! .credentials.json or API key, Gemini CLI oauth_creds.json), sign in with the device code,
//! list, set priority and weight, pause, resume, remove, refresh now, export.
//!
//! Rules: everything that can be checked without a person's help (the file, the label, the
//! pool, the master key) is checked before anything is written or anyone is asked to approve a
//! login; a token never leaves the store except through [`export`], which holds the account's
//! refresh lease while the token changes hands. A principal sees only its pools' accounts, each
//! with only the memberships it sees, and every refused change is audited (`guard`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Notice, Ops, OpsError, Outcome};
use crate::login::{self, LoginError, UserCode};
use crate::refresh::{self, Done, RefreshError, Refresher, RefresherConfig, Request, Trigger};
use codexmesh_model::credentials::{self as authjson, CodexCredentials, LoginCredentials};
use codexmesh_model::records::{CredentialKind, Provider};
use codexmesh_model::util::{self, now_ms};
use codexmesh_model::{claude_credentials, credential_files, gemini_credentials};
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{
    files, Account, AccountState, Changed, Entity, ImportResult, Lookup, Store, StoreError,
    TokenUpdate,
};

/// How long [`login_finish`] waits for the approval unless told otherwise.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = login::DEFAULT_TIMEOUT;

/// What an import is told besides the file.
#[derive(Debug, Clone, Default)]
pub struct ImportHints {
    /// The provider the file must be (None: whichever its content says).
    pub provider: Option<Provider>,
    /// Gemini: the Code Assist project (else the file's `project_id`, else discovered).
    pub project: Option<String>,
}

/// Imports the Codex auth.json at `path` into `pool`.
pub async fn import_file(
    ops: &Ops,
    path: &Path,
    pool: &str,
    label: Option<&str>,
) -> Result<Outcome<ImportResult>, OpsError> {
    import_file_with(ops, path, pool, label, &ImportHints::default()).await
}

/// Imports the credential file at `path` (any provider's, told apart by content unless
/// `hints.provider` says) into `pool`.
pub async fn import_file_with(
    ops: &Ops,
    path: &Path,
    pool: &str,
    label: Option<&str>,
    hints: &ImportHints,
) -> Result<Outcome<ImportResult>, OpsError> {
    // Parse and check everything before writing anything.
    let creds =
        read_credential_file(path, hints.provider).map_err(|source| OpsError::CredentialFile {
            path: path.to_owned(),
            source,
        })?;
    let creds = with_project(creds, hints.project.as_deref())?;
    import(ops, &creds, pool, label).await
}

/// Reads and parses a credential file, refusing files larger than any real one before reading
/// them.
fn read_credential_file(
    path: &Path,
    provider: Option<Provider>,
) -> Result<LoginCredentials, credential_files::CredentialFileError> {
    let meta = std::fs::metadata(path).map_err(authjson::AuthJsonError::from)?;
    if meta.len() > authjson::MAX_FILE_BYTES {
        return Err(credential_files::CredentialFileError::TooLarge);
    }
    let bytes = std::fs::read(path).map_err(authjson::AuthJsonError::from)?;
    credential_files::parse_file(&bytes, provider)
}

/// `creds` with the operator's project, which only a Gemini login takes.
pub fn with_project(
    mut creds: LoginCredentials,
    project: Option<&str>,
) -> Result<LoginCredentials, OpsError> {
    if let Some(p) = project {
        if creds.provider != Provider::Gemini {
            return Err(OpsError::Invalid {
                field: "project",
                message: format!(
                    "a project belongs to Gemini accounts only; this is a {} login",
                    creds.provider
                ),
            });
        }
        let p = p.trim();
        if p.is_empty() || p.len() > 100 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(OpsError::Invalid {
                field: "project",
                message: "a project id is 1-100 characters without spaces".to_owned(),
            });
        }
        creds.project_id = Some(p.to_owned());
    }
    Ok(creds)
}

/// The Code Assist project of a Google login, as Gemini CLI finds it at start-up: `POST
/// {gemini_base_url}/v1internal:loadCodeAssist` with the access token, reading
/// `cloudaicompanionProject` (a string, or an object with an `id`).
pub async fn discover_gemini_project(
    http: &reqwest::Client,
    gemini_base_url: &str,
    access_token: &str,
) -> Result<String, String> {
    let url = format!(
        "{}/v1internal:loadCodeAssist",
        gemini_base_url.trim_end_matches('/')
    );
    let body = serde_json::json!({
        "metadata": {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED",
                     "pluginType": "GEMINI"}
    });
    let resp = http
        .post(&url)
        .bearer_auth(access_token)
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("loadCodeAssist failed: {}", crate::oauth::describe(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("loadCodeAssist answered HTTP {}", status.as_u16()));
    }
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|_| "loadCodeAssist answered something other than JSON".to_owned())?;
    let project = v.get("cloudaicompanionProject");
    project
        .and_then(serde_json::Value::as_str)
        .or_else(|| {
            project
                .and_then(|p| p.get("id"))
                .and_then(serde_json::Value::as_str)
        })
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            "loadCodeAssist named no cloudaicompanionProject (a free-tier login is onboarded \
             by running Gemini CLI once)"
                .to_owned()
        })
}

/// A Gemini login without a project gets the one Code Assist names for it; none is an error.
async fn ensure_project(ops: &Ops, creds: &LoginCredentials) -> Result<Option<String>, OpsError> {
    if creds.provider != Provider::Gemini || creds.project_id.is_some() {
        return Ok(None);
    }
    let http =
        crate::oauth::http_client_for(ops.settings()).map_err(|e| OpsError::Http(e.to_string()))?;
    discover_gemini_project(&http, &ops.settings().gemini_base_url, &creds.access_token)
        .await
        .map(Some)
        .map_err(|why| OpsError::Invalid {
            field: "project",
            message: format!(
                "no Code Assist project for this Google login ({why}); pass --project ID \
                 (the API's `project`)"
            ),
        })
}

/// Imports a parsed login into `pool` (a known login updates its tokens). A Gemini login
/// without a project gets the one Code Assist names (see [`discover_gemini_project`]).
pub async fn import(
    ops: &Ops,
    creds: &CodexCredentials,
    pool: &str,
    label: Option<&str>,
) -> Result<Outcome<ImportResult>, OpsError> {
    let result = import_checked(ops, creds, pool, label).await;
    ops.audited("account.import", label, &[pool], result).await
}

async fn import_checked(
    ops: &Ops,
    creds: &CodexCredentials,
    pool: &str,
    label: Option<&str>,
) -> Result<Outcome<ImportResult>, OpsError> {
    if let Some(l) = label {
        codexmesh_store::validate_label(l)?;
    }
    ops.change_pool(pool)?;
    let store = ops.store().await?;
    store.pool_by_name(pool).await?;
    let key = ops.settings().master_keys()?;
    let discovered = ensure_project(ops, creds).await?;
    let with_discovered;
    let creds = match discovered {
        Some(project) => {
            with_discovered = LoginCredentials {
                project_id: Some(project),
                ..creds.clone()
            };
            &with_discovered
        }
        None => creds,
    };
    let mut result = store
        .import_account(ops.actor(), pool, label, creds, &key)
        .await?;
    result.account = ops.redact_account(result.account);
    let mut notices = Vec::new();
    if let Some(exp) = result.account.access_token_expires_at_ms {
        if exp <= now_ms() {
            notices.push(Notice::warning(
                "access_token_expired",
                format!(
                    "this access token already expired ({}); requests through the account \
                     fail until it is refreshed or re-imported",
                    util::fmt_utc_ms(exp)
                ),
            ));
        }
    }
    notices.push(if result.tokens == TokenUpdate::KeptNewer {
        Notice::note(
            "stored_tokens_newer",
            "the stored tokens of this login are newer than this auth.json's (its refresh \
             token was most likely rotated since): kept them, ignored the file's",
        )
    } else if creds.credential_kind == CredentialKind::ApiKey {
        Notice::note(
            "api_key_stored",
            "the gateway now uses this API key (stored sealed; it has no subscription windows)",
        )
    } else {
        Notice::note(
            "refresh_token_taken_over",
            match creds.provider {
                Provider::Codex => {
                    "the gateway now uses this login's refresh token; do not keep using this \
                     auth.json in another Codex install (refresh tokens rotate)"
                }
                Provider::Claude => {
                    "the gateway now uses this login's refresh token; do not keep using this \
                     .credentials.json in a Claude Code install (refresh tokens rotate); a \
                     later file of this login re-imports only with this account's --label"
                }
                Provider::Gemini => {
                    "the gateway now uses this Google login's refresh token; signing out in \
                     Gemini CLI revokes it"
                }
            },
        )
    });
    Ok(Outcome::with_notices(result, notices))
}

/// The accounts the principal sees (of `pool`, or of all its pools).
pub async fn list(ops: &Ops, pool: Option<&str>) -> Result<Outcome<Vec<Account>>, OpsError> {
    if let Some(p) = pool {
        ops.see_pool(p)?;
    }
    let store = ops.store().await?;
    let accounts = store.list_accounts(pool).await?;
    Ok(Outcome::new(
        accounts
            .into_iter()
            .map(|a| ops.redact_account(a))
            .filter(|a| !a.pools.is_empty())
            .collect(),
    ))
}

/// One account as the principal sees it.
pub async fn get(ops: &Ops, ident: &str) -> Result<Outcome<Account>, OpsError> {
    let account = ops.account_to_see(ident).await?;
    Ok(Outcome::new(ops.redact_account(account)))
}

/// Makes the account a member of `pool` with these settings: joins it when it is not a
/// member yet, else changes its priority and/or weight there (the API's `PUT` membership).
pub async fn put_membership(
    ops: &Ops,
    ident: &str,
    pool: &str,
    priority: Option<u32>,
    weight: Option<u32>,
) -> Result<Outcome<Changed<Account>>, OpsError> {
    let account = match ops.account_to_see(ident).await {
        Ok(a) => a,
        Err(e) => {
            return ops
                .audited("account.join", Some(ident), &[pool], Err(e))
                .await
        }
    };
    if account.pools.iter().any(|m| m.pool == pool) && ops.access().sees_pool(pool) {
        set(ops, &account.id, Some(pool), priority, weight).await
    } else {
        join(ops, &account.id, pool, priority, weight).await
    }
}

/// The pool of `account` a change names: `pool` when given (it must be one of the account's
/// pools the principal sees), else its only visible pool. Errors never name unseen pools.
fn membership_pool(ops: &Ops, account: &Account, pool: Option<&str>) -> Result<String, OpsError> {
    let visible: Vec<&str> = account
        .pools
        .iter()
        .map(|m| m.pool.as_str())
        .filter(|p| ops.access().sees_pool(p))
        .collect();
    match pool {
        Some(p) => {
            ops.see_pool(p)?;
            if visible.contains(&p) {
                Ok(p.to_owned())
            } else {
                Err(StoreError::NotFound {
                    what: Entity::Membership,
                    ident: account.label.clone(),
                    lookup: Lookup::InPool {
                        pool: p.to_owned(),
                        its_pools: visible.join(", "),
                    },
                }
                .into())
            }
        }
        None => match visible.as_slice() {
            [only] => Ok((*only).to_owned()),
            _ => Err(OpsError::invalid(
                "pool",
                format!(
                    "account {} is in several pools ({}): name one with --pool",
                    account.label,
                    visible.join(", ")
                ),
            )),
        },
    }
}

/// Sets an account's priority and/or weight in a pool (`pool` is needed when the account is in
/// several); neither: only reads the account as that pool sees it.
pub async fn set(
    ops: &Ops,
    ident: &str,
    pool: Option<&str>,
    priority: Option<u32>,
    weight: Option<u32>,
) -> Result<Outcome<Changed<Account>>, OpsError> {
    let mut aimed = pool.map(str::to_owned);
    let result = async {
        let account = ops.account_to_see(ident).await?;
        let pool = membership_pool(ops, &account, pool)?;
        aimed = Some(pool.clone());
        let store = ops.store().await?;
        let mut changed = if priority.is_none() && weight.is_none() {
            Changed {
                changed: false,
                item: store.account_in_pool(&account.id, Some(&pool)).await?,
            }
        } else {
            ops.change_pool(&pool)?;
            store
                .set_account_routing(ops.actor(), &account.id, Some(&pool), priority, weight)
                .await?
        };
        changed.item = ops.redact_account(changed.item);
        Ok(Outcome::new(changed))
    }
    .await;
    if priority.is_none() && weight.is_none() {
        return result;
    }
    let pools: Vec<&str> = aimed.as_deref().into_iter().collect();
    ops.audited("account.set", Some(ident), &pools, result)
        .await
}

/// Adds the account to another pool (one account, one token lineage, in several pools).
pub async fn join(
    ops: &Ops,
    ident: &str,
    pool: &str,
    priority: Option<u32>,
    weight: Option<u32>,
) -> Result<Outcome<Changed<Account>>, OpsError> {
    let result = async {
        let account = ops.account_to_see(ident).await?;
        ops.change_pool(pool)?;
        let store = ops.store().await?;
        let mut changed = store
            .join_pool(ops.actor(), &account.id, pool, priority, weight)
            .await?;
        changed.item = ops.redact_account(changed.item);
        Ok(Outcome::new(changed))
    }
    .await;
    ops.audited("account.join", Some(ident), &[pool], result)
        .await
}

/// What [`remove`] did: the account as it was, and whether the account itself (and its
/// tokens) went or only one membership.
#[derive(Debug, Clone)]
pub struct Removed {
    pub account: Account,
    pub deleted: bool,
}

/// Deletes the account and its stored tokens (from every pool); with `pool`, takes it out of
/// that pool only (deleting it when that was its last pool).
pub async fn remove(
    ops: &Ops,
    ident: &str,
    pool: Option<&str>,
) -> Result<Outcome<Removed>, OpsError> {
    let action = if pool.is_some() {
        "account.leave"
    } else {
        "account.remove"
    };
    let result = async {
        let store = ops.store().await?;
        let (account, deleted) = match pool {
            Some(p) => {
                let account = ops.account_to_see(ident).await?;
                let p = membership_pool(ops, &account, Some(p))?;
                ops.change_pool(&p)?;
                store.leave_pool(ops.actor(), &account.id, &p).await?
            }
            None => {
                let account = ops.account_to_change(ident).await?;
                (store.remove_account(ops.actor(), &account.id).await?, true)
            }
        };
        let account = ops.redact_account(account);
        Ok(Outcome::new(Removed { account, deleted }))
    }
    .await;
    let pools: Vec<&str> = pool.into_iter().collect();
    ops.audited(action, Some(ident), &pools, result).await
}

/// Stops routing to the account.
pub async fn pause(ops: &Ops, ident: &str) -> Result<Outcome<Changed<Account>>, OpsError> {
    set_paused(ops, ident, true).await
}

/// Routes to a paused account again.
pub async fn resume(ops: &Ops, ident: &str) -> Result<Outcome<Changed<Account>>, OpsError> {
    set_paused(ops, ident, false).await
}

/// Sets (`Some`) or clears (`None`) the account's egress proxy: the HTTP proxy its refresh,
/// quota polls and warm-up go through (checked: `http://HOST:PORT`). Needs the right to change
/// every pool the account is in.
pub async fn set_egress_proxy(
    ops: &Ops,
    ident: &str,
    proxy: Option<&str>,
) -> Result<Outcome<Changed<Account>>, OpsError> {
    let result = async {
        let account = ops.account_to_change(ident).await?;
        let store = ops.store().await?;
        let mut changed = store
            .set_account_egress_proxy(ops.actor(), &account.id, proxy)
            .await?;
        changed.item = ops.redact_account(changed.item);
        Ok(Outcome::new(changed))
    }
    .await;
    ops.audited("account.set_egress_proxy", Some(ident), &[], result)
        .await
}

async fn set_paused(
    ops: &Ops,
    ident: &str,
    paused: bool,
) -> Result<Outcome<Changed<Account>>, OpsError> {
    let result = async {
        let account = ops.account_to_change(ident).await?;
        let store = ops.store().await?;
        let mut changed = store
            .set_account_paused(ops.actor(), &account.id, paused)
            .await?;
        changed.item = ops.redact_account(changed.item);
        Ok(Outcome::new(changed))
    }
    .await;
    let action = if paused {
        "account.pause"
    } else {
        "account.resume"
    };
    ops.audited(action, Some(ident), &[], result).await
}

/// The account after [`refresh`].
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub account: Account,
    /// This process called the token endpoint (false: another process refreshed the same
    /// token generation meanwhile).
    pub by_us: bool,
}

/// Refreshes the account's access token now, single-flight with every other process.
pub async fn refresh(ops: &Ops, ident: &str) -> Result<Outcome<Refreshed>, OpsError> {
    let result = refresh_checked(ops, ident).await;
    ops.audited("account.refresh", Some(ident), &[], result)
        .await
}

async fn refresh_checked(ops: &Ops, ident: &str) -> Result<Outcome<Refreshed>, OpsError> {
    let before = ops.account_to_see(ident).await?;
    // A refresh changes nothing but the token's age: a writer of any of its pools may ask.
    ops.require_writer()?;
    if !before
        .pools
        .iter()
        .any(|m| ops.access().may_change_pool(&m.pool))
    {
        return Err(OpsError::Forbidden(format!(
            "you may not change account {}",
            before.label
        )));
    }
    let store = ops.store().await?;
    let key = ops.settings().master_keys()?;
    store.verify_master_key(&key).await?;
    let http =
        crate::oauth::http_client_for(ops.settings()).map_err(|e| OpsError::Http(e.to_string()))?;
    let refresher = Refresher::new(
        store.clone(),
        key,
        http,
        RefresherConfig::from_settings(ops.settings()),
        refresh::holder_id("cli"),
        ops.actor().clone(),
        None,
    );
    let done = refresher
        .refresh(
            &before.id,
            Request {
                trigger: Trigger::Manual,
                seen_revision: before.token_revision,
                wait: true,
            },
        )
        .await?;
    let account = ops.redact_account(store.account(&before.id).await?);
    Ok(Outcome::new(Refreshed {
        account,
        by_us: matches!(done, Done::Refreshed { .. }),
    }))
}

/// The account after [`export`].
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    /// The account as it was written out (as it was before removal when removed).
    pub account: Account,
    /// The account left its pool (false with `keep`).
    pub removed: bool,
}

/// How [`export`] treats the account and an existing file.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Overwrite an existing file.
    pub force: bool,
    /// Keep the account in its pool (both sides then rotate one refresh token).
    pub keep: bool,
}

/// Writes the account out as a Codex auth.json (mode 0600) and, unless `keep`, removes it from
/// its pool: its refresh token then belongs to whoever holds the file.
pub async fn export(
    ops: &Ops,
    ident: &str,
    path: &Path,
    options: ExportOptions,
) -> Result<Outcome<Exported>, OpsError> {
    if !options.force && std::fs::symlink_metadata(path).is_ok() {
        return Err(OpsError::Conflict(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    // It writes a file on this host: local (shell) use only.
    ops.require_owner("export accounts")?;
    let store = ops.store().await?;
    let key = ops.settings().master_keys()?;
    store.verify_master_key(&key).await?;
    let account = store.account(ident).await?;
    // Hold the refresh lease, so no refresh rotates the token while it changes hands.
    let holder = refresh::holder_id("cli-export");
    let lease = format!("refresh:{}", account.id);
    let lease_ms = i64::try_from(ops.settings().refresh_lease.as_millis()).unwrap_or(60_000);
    let patience = Instant::now()
        + Duration::from_millis(u64::try_from(lease_ms).unwrap_or(60_000))
        + Duration::from_secs(10);
    while !store.try_acquire_lease(&lease, &holder, lease_ms).await? {
        if Instant::now() > patience {
            return Err(RefreshError::LeaseTimeout {
                label: account.label.clone(),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = export_leased(ops, store, &key, &account.id, path, options).await;
    if let Err(e) = store.release_lease(&lease, &holder).await {
        tracing::warn!(error = %e, "cannot release the refresh lease; it expires on its own");
    }
    let (account, removed) = result?;
    let mut notices = Vec::new();
    if account.state == AccountState::NeedsReauth {
        notices.push(Notice::warning(
            "exported_needs_reauth",
            format!(
                "account {} needs re-authentication ({}): the exported refresh token no \
                 longer works",
                account.label,
                account.state_reason.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    notices.push(if removed {
        Notice::info(
            "exported_removed",
            format!(
                "removed account {} from pool(s) {}: its refresh token now belongs to \
                 whoever holds {}",
                account.label,
                account.pool_names(),
                path.display()
            ),
        )
    } else {
        Notice::warning(
            "exported_kept",
            format!(
                "account {} stays in pool(s) {} (--keep): the gateway and the holder of {} \
                 now share one refresh token; whichever refreshes second loses the login",
                account.label,
                account.pool_names(),
                path.display()
            ),
        )
    });
    Ok(Outcome::with_notices(
        Exported {
            path: path.to_owned(),
            account,
            removed,
        },
        notices,
    ))
}

async fn export_leased(
    ops: &Ops,
    store: &Store,
    key: &KeySource,
    id: &str,
    path: &Path,
    options: ExportOptions,
) -> Result<(Account, bool), OpsError> {
    let s = store.account_secrets(id, key).await?;
    let text = match (s.account.provider, s.account.credential_kind) {
        (Provider::Codex, _) => authjson::render(
            &s.id_token,
            &s.access_token,
            &s.refresh_token,
            &s.account.chatgpt_account_id,
            &util::fmt_rfc3339_ms(
                s.account
                    .last_refresh_at_ms
                    .unwrap_or(s.account.tokens_updated_at_ms),
            ),
        ),
        (Provider::Claude, CredentialKind::ApiKey) => {
            serde_json::json!({ "api_key": s.access_token }).to_string() + "\n"
        }
        (Provider::Claude, CredentialKind::Oauth) => claude_credentials::render(
            &s.access_token,
            &s.refresh_token,
            s.account.access_token_expires_at_ms,
            s.account.plan.as_deref(),
        ),
        (Provider::Gemini, _) => gemini_credentials::render(
            &s.access_token,
            &s.refresh_token,
            &s.id_token,
            s.account.access_token_expires_at_ms,
            s.account.project_id.as_deref(),
        ),
    };
    // Mode 0600, never a partial file, and no existing file replaced unless forced.
    let existing = if options.force {
        files::Existing::Replace
    } else {
        files::Existing::Keep
    };
    files::write_file_atomically(path, text.as_bytes(), files::Access::Private, existing).map_err(
        |source| OpsError::Write {
            path: path.to_owned(),
            source,
        },
    )?;
    if options.keep {
        return Ok((s.account, false));
    }
    let removed = store.remove_account(ops.actor(), id).await?;
    Ok((removed, true))
}

/// A device-code login waiting for a person: show them [`PendingLogin::verification_url`] and
/// [`PendingLogin::user_code`], then call [`login_finish`].
#[derive(Debug)]
pub struct PendingLogin {
    http: reqwest::Client,
    issuer: String,
    code: UserCode,
    key: KeySource,
    pool: String,
    label: Option<String>,
    timeout: Duration,
}

impl PendingLogin {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Where the person approves the code.
    pub fn verification_url(&self) -> String {
        login::verification_url(&self.issuer)
    }

    /// The code the person enters there.
    pub fn user_code(&self) -> &str {
        &self.code.user_code
    }

    /// Whole minutes until the code expires (15 when the server did not say).
    pub fn expires_in_minutes(&self) -> i64 {
        self.code
            .expires_at_ms
            .map_or(15, |e| ((e - now_ms()).max(0) + 59_999) / 60_000)
    }
}

/// Starts a device-code login into `pool`: checks everything that can fail without a person's
/// help, then asks the auth server for a user code.
pub async fn login_start(
    ops: &Ops,
    pool: &str,
    label: Option<&str>,
    timeout: Duration,
) -> Result<PendingLogin, OpsError> {
    if let Some(l) = label {
        codexmesh_store::validate_label(l)?;
    }
    if timeout.is_zero() {
        return Err(OpsError::invalid(
            "timeout_secs",
            "--timeout-secs must be at least 1",
        ));
    }
    ops.change_pool(pool)?;
    let store = ops.store().await?;
    store.pool_by_name(pool).await?;
    let key = ops.settings().master_keys()?;
    store.verify_master_key(&key).await?;
    let http =
        crate::oauth::http_client_for(ops.settings()).map_err(|e| OpsError::Http(e.to_string()))?;
    let issuer = ops
        .settings()
        .auth_base_url
        .trim_end_matches('/')
        .to_owned();
    let code = login::request_user_code(&http, &issuer).await?;
    Ok(PendingLogin {
        http,
        issuer,
        code,
        key,
        pool: pool.to_owned(),
        label: label.map(str::to_owned),
        timeout,
    })
}

/// Waits for the approval, exchanges it for tokens and adds the login to the pool, exactly as
/// an imported auth.json (the claims decide the account).
pub async fn login_finish(
    ops: &Ops,
    pending: PendingLogin,
) -> Result<Outcome<ImportResult>, OpsError> {
    let PendingLogin {
        http,
        issuer,
        code,
        key,
        pool,
        label,
        timeout,
    } = pending;
    let approval = login::wait_for_approval(&http, &issuer, &code, timeout).await?;
    let tokens = login::exchange(&http, &issuer, &approval).await?;
    let rendered = authjson::render(
        &tokens.id_token,
        &tokens.access_token,
        &tokens.refresh_token,
        "",
        &util::fmt_rfc3339_ms(now_ms()),
    );
    let creds = authjson::parse(rendered.as_bytes()).map_err(|e| {
        OpsError::Login(LoginError::BadAnswer(format!(
            "the new login's tokens: {e}"
        )))
    })?;
    let store = ops.store().await?;
    let mut result = store
        .import_account(ops.actor(), &pool, label.as_deref(), &creds, &key)
        .await?;
    result.account = ops.redact_account(result.account);
    Ok(Outcome::with_notices(
        result,
        vec![Notice::info(
            "login_approved",
            "approved: the gateway holds this login now",
        )],
    ))
}
