//! Accounts: importing logins (one account per login, whatever the pools), their memberships
//! in pools, pausing, removing, their sealed tokens and refresh results, and published health
//! scores (an account's priority and weight in a pool change in `routing`). Rules: a write that
//! changes what routing sees is one bumping transaction with an audit row; refresh bookkeeping
//! does not bump. Tokens are sealed before they reach SQL, with the key `sealing` chooses inside
//! the write transaction (after its first statement), so a rotation cannot interleave.

use serde_json::json;
use sqlx::{Any, Transaction};

use crate::audit::audit;
use crate::crypto::Keys;
use crate::error::{ConflictReason, Entity, Lookup, StoreError};
use crate::rows::{
    account_from_row, login_from_row, sealed_from_row, LoginRow, ACCOUNT_SELECT, LOGIN_SELECT,
};
use crate::sealing::sealing_key_tx;
use crate::tx::{
    attach_memberships_tx, is_unique_violation, pool_by_name_tx, resolve_account_for_pool_tx,
    resolve_account_tx, resolve_member_tx, validate_label,
};
use crate::{Actor, Store};
use codexmesh_model::credentials::LoginCredentials;
use codexmesh_model::ids::MAX_LABEL_LEN;
use codexmesh_model::records::{
    Account, AccountSecrets, AccountState, Changed, ImportAction, ImportResult, ImportSource,
    Provider, RefreshedTokens, TokenUpdate,
};
use codexmesh_model::util::{self, now_ms};

/// Email, else the ChatGPT account id; disambiguated when another account in the pool already
/// uses it (one email can belong to several workspaces).
async fn default_account_label(
    tx: &mut Transaction<'static, Any>,
    pool_id: &str,
    creds: &LoginCredentials,
) -> Result<String, StoreError> {
    let base = creds
        .email
        .clone()
        .unwrap_or_else(|| creds.chatgpt_account_id.clone());
    let taken: Option<String> = sqlx::query_scalar(
        "SELECT a.id FROM accounts a JOIN pool_memberships m ON m.account_id = a.id \
             WHERE m.pool_id = $1 AND a.label = $2",
    )
    .bind(pool_id.to_owned())
    .bind(base.clone())
    .fetch_optional(&mut **tx)
    .await?;
    let label = if taken.is_some() {
        let short: String = creds.chatgpt_account_id.chars().take(8).collect();
        format!("{base}/{short}")
    } else {
        base
    };
    Ok(label.chars().take(MAX_LABEL_LEN).collect())
}

/// The account with the same login as `creds` (same provider, provider's login id and user;
/// for Claude and Gemini, failing that, the one account of that provider and credential kind
/// labelled `label`), with its stored access token expiry. A row without a user id (an auth.json without the claim) is the
/// login when it is the only candidate: the older import could not tell users apart. The expiry
/// is None when the account needs re-authentication (its tokens are not worth keeping).
async fn find_login_tx(
    tx: &mut Transaction<'static, Any>,
    creds: &LoginCredentials,
    label: Option<&str>,
) -> Result<Option<(String, Option<i64>)>, StoreError> {
    let mut rows = sqlx::query(&format!(
        "{LOGIN_SELECT} WHERE chatgpt_account_id = $1 AND provider = $2 ORDER BY id"
    ))
    .bind(creds.chatgpt_account_id.clone())
    .bind(creds.provider.as_str())
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() && creds.provider != Provider::Codex {
        // A Claude file carries no account id: a rotated refresh token has a new fingerprint.
        // The label the operator gives names the login instead (one account of that provider
        // and credential kind with that label).
        if let Some(label) = label {
            rows = sqlx::query(&format!(
                "{LOGIN_SELECT} WHERE label = $1 AND provider = $2 AND credential_kind = $3 \
                 ORDER BY id"
            ))
            .bind(label.to_owned())
            .bind(creds.provider.as_str())
            .bind(creds.credential_kind.as_str())
            .fetch_all(&mut **tx)
            .await?;
            if rows.len() > 1 {
                return Ok(None);
            }
        }
    }
    let mut exact = None;
    let mut loose = Vec::new();
    for r in &rows {
        let LoginRow {
            id,
            user,
            expiry,
            state,
        } = login_from_row(r)?;
        // A login that needs re-authentication has nothing worth keeping: any import replaces
        // its tokens.
        let expiry = expiry.filter(|_| state != AccountState::NeedsReauth.as_str());
        if user == creds.chatgpt_user_id {
            exact = Some((id, expiry));
        } else if user.is_none() || creds.chatgpt_user_id.is_none() {
            loose.push((id, expiry));
        }
    }
    Ok(match (exact, loose.len()) {
        (Some(found), _) => Some(found),
        (None, 1) => loose.pop(),
        _ => None,
    })
}

/// Makes `account_id` a member of `pool_id`; false when it already was (nothing written).
async fn add_membership_tx(
    tx: &mut Transaction<'static, Any>,
    pool_id: &str,
    account_id: &str,
    priority: u32,
    weight: u32,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO pool_memberships (pool_id, account_id, priority, weight, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pool_id, account_id) DO NOTHING",
    )
    .bind(pool_id.to_owned())
    .bind(account_id.to_owned())
    .bind(i64::from(priority))
    .bind(i64::from(weight))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Clears `account_id` as primary_first's owner of pool `pool_id` and of that pool's keys (an
/// owner must be a member); returns where, for the audit row.
async fn clear_primary_in_pool_tx(
    tx: &mut Transaction<'static, Any>,
    pool_id: &str,
    account_id: &str,
) -> Result<serde_json::Value, StoreError> {
    let pools = sqlx::query(
        "UPDATE pools SET primary_account_id = NULL WHERE id = $1 AND primary_account_id = $2",
    )
    .bind(pool_id.to_owned())
    .bind(account_id.to_owned())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM pool_keys WHERE pool_id = $1 AND primary_account_id = $2 ORDER BY id",
    )
    .bind(pool_id.to_owned())
    .bind(account_id.to_owned())
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE pool_keys SET primary_account_id = NULL WHERE pool_id = $1 \
         AND primary_account_id = $2",
    )
    .bind(pool_id.to_owned())
    .bind(account_id.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(json!({"pool": pools > 0, "keys": keys}))
}

impl Store {
    /// Imports (or, for a login the store already has, updates) an account's tokens,
    /// sealed under `key`. A re-import brings a `needs_reauth` account back to `active` but
    /// leaves a paused one paused.
    pub async fn import_account(
        &self,
        actor: &Actor,
        pool_name: &str,
        label: Option<&str>,
        creds: &LoginCredentials,
        key: &(impl Keys + ?Sized),
    ) -> Result<ImportResult, StoreError> {
        self.import_account_from(actor, pool_name, label, creds, key, None)
            .await
    }

    /// [`Store::import_account`], remembering the watched-folder file it came from.
    ///
    /// One login (same provider, provider's login id and user; see `find_login_tx`) is one
    /// account, whatever the pools: a
    /// login the store already has gains a membership in `pool_name` (priority 0, weight 1)
    /// when it lacks one, and never a second token lineage. Its tokens are replaced unless
    /// the stored ones are newer (the imported access token expires earlier: its refresh
    /// token was most likely rotated since, and replaying it would revoke the login), in
    /// which case they are kept ([`TokenUpdate::KeptNewer`]); an account that needs
    /// re-authentication always takes the imported tokens. Replaced tokens start a new
    /// generation: `token_revision` is this write's revision and any refresh backoff is
    /// cleared.
    pub async fn import_account_from(
        &self,
        actor: &Actor,
        pool_name: &str,
        label: Option<&str>,
        creds: &LoginCredentials,
        key: &(impl Keys + ?Sized),
        source: Option<&ImportSource>,
    ) -> Result<ImportResult, StoreError> {
        if let Some(l) = label {
            validate_label(l)?;
        }
        let (mut tx, revision) = self.begin_write().await?;
        let key = sealing_key_tx(&mut tx, key).await?;
        let pool = pool_by_name_tx(&mut tx, pool_name).await?;
        let existing = find_login_tx(&mut tx, creds, label).await?;
        let now = now_ms();
        let (id, action) = match &existing {
            Some((id, _)) => (id.clone(), ImportAction::Updated),
            None => (util::new_id("acc")?, ImportAction::Created),
        };
        let tokens = match existing {
            None => TokenUpdate::New,
            Some((_, stored_expiry)) => match (creds.access_token_expires_at_ms, stored_expiry) {
                (Some(imported), Some(stored)) if imported < stored => TokenUpdate::KeptNewer,
                _ => TokenUpdate::Replaced,
            },
        };
        let seal = |field: &str, value: &str| key.seal_str(&id, field, value);
        let access = seal("access_token", &creds.access_token)?;
        let refresh = seal("refresh_token", &creds.refresh_token)?;
        let id_tok = seal("id_token", &creds.id_token)?;

        match tokens {
            TokenUpdate::KeptNewer => {
                sqlx::query(
                    "UPDATE accounts SET label = COALESCE($1, label), updated_at = $2, \
                       source_path = COALESCE($3, source_path), \
                       source_hash = COALESCE($4, source_hash), \
                       project_id = COALESCE($6, project_id) \
                     WHERE id = $5",
                )
                .bind(label.map(str::to_owned))
                .bind(now)
                .bind(source.map(|s| s.path.clone()))
                .bind(source.map(|s| s.hash.clone()))
                .bind(id.clone())
                .bind(creds.project_id.clone())
                .execute(&mut *tx)
                .await?;
            }
            TokenUpdate::Replaced => {
                sqlx::query(
                    "UPDATE accounts SET \
                       sealed_access_token = $1, sealed_refresh_token = $2, sealed_id_token = $3, \
                       access_token_expires_at = $4, email = $5, plan = $6, \
                       chatgpt_user_id = COALESCE($7, chatgpt_user_id), \
                       label = COALESCE($8, label), tokens_updated_at = $9, updated_at = $9, \
                       state_reason = CASE WHEN state = 'needs_reauth' THEN NULL ELSE state_reason END, \
                       state = CASE WHEN state = 'needs_reauth' THEN 'active' ELSE state END, \
                       token_revision = $11, refresh_failures = 0, next_refresh_at = NULL, \
                       last_refresh_error = NULL, \
                       source_path = COALESCE($12, source_path), source_hash = COALESCE($13, source_hash), \
                       project_id = COALESCE($14, project_id) \
                     WHERE id = $10",
                )
                .bind(access)
                .bind(refresh)
                .bind(id_tok)
                .bind(creds.access_token_expires_at_ms)
                .bind(creds.email.clone())
                .bind(creds.plan.clone())
                .bind(creds.chatgpt_user_id.clone())
                .bind(label.map(str::to_owned))
                .bind(now)
                .bind(id.clone())
                .bind(revision)
                .bind(source.map(|s| s.path.clone()))
                .bind(source.map(|s| s.hash.clone()))
                .bind(creds.project_id.clone())
                .execute(&mut *tx)
                .await?;
            }
            TokenUpdate::New => {
                let label = match label {
                    Some(l) => l.to_owned(),
                    None => default_account_label(&mut tx, &pool.id, creds).await?,
                };
                // accounts.pool_id / priority / weight: pre-0005 columns, not read (see
                // migrations/*/0005_memberships.sql); pool_id names the first pool.
                sqlx::query(
                    "INSERT INTO accounts (id, pool_id, label, chatgpt_account_id, chatgpt_user_id, \
                       email, plan, state, priority, weight, access_token_expires_at, \
                       sealed_access_token, sealed_refresh_token, sealed_id_token, \
                       tokens_updated_at, created_at, updated_at, token_revision, source_path, \
                       source_hash, provider, credential_kind, project_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', 0, 1, $8, $9, $10, $11, $12, $12, \
                       $12, $13, $14, $15, $16, $17, $18)",
                )
                .bind(id.clone())
                .bind(pool.id.clone())
                .bind(label)
                .bind(creds.chatgpt_account_id.clone())
                .bind(creds.chatgpt_user_id.clone())
                .bind(creds.email.clone())
                .bind(creds.plan.clone())
                .bind(creds.access_token_expires_at_ms)
                .bind(access)
                .bind(refresh)
                .bind(id_tok)
                .bind(now)
                .bind(revision)
                .bind(source.map(|s| s.path.clone()))
                .bind(source.map(|s| s.hash.clone()))
                .bind(creds.provider.as_str())
                .bind(creds.credential_kind.as_str())
                .bind(creds.project_id.clone())
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        // SQLite keeps the pre-0005 UNIQUE (pool_id, chatgpt_account_id).
                        StoreError::conflict(
                            Entity::Account,
                            creds.chatgpt_account_id.clone(),
                            ConflictReason::LoginInPool {
                                pool: pool.name.clone(),
                            },
                        )
                    } else {
                        e.into()
                    }
                })?;
            }
        }
        let joined_pool = add_membership_tx(&mut tx, &pool.id, &id, 0, 1).await?;
        let action_name = match action {
            ImportAction::Created => "account.import",
            ImportAction::Updated => "account.reimport",
        };
        audit(
            &mut tx,
            actor,
            action_name,
            Some(&id),
            json!({"pool": pool.name, "provider": creds.provider,
                   "chatgpt_account_id": creds.chatgpt_account_id,
                   "source": source.map(|s| s.path.clone()), "joined_pool": joined_pool,
                   "tokens": tokens}),
            revision,
        )
        .await?;
        let account = resolve_member_tx(&mut tx, &id, &pool).await?;
        tx.commit().await?;
        Ok(ImportResult {
            action,
            account,
            revision,
            joined_pool,
            tokens,
        })
    }

    /// Accounts with every membership; with `pool`, that pool's members (its membership in
    /// view), else every account once (its first pool in view).
    pub async fn list_accounts(&self, pool: Option<&str>) -> Result<Vec<Account>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (rows, view) = match pool {
            Some(name) => {
                let pool = pool_by_name_tx(&mut tx, name).await?;
                let rows = sqlx::query(&format!(
                    "{ACCOUNT_SELECT} JOIN pool_memberships m ON m.account_id = a.id \
                     WHERE m.pool_id = $1 ORDER BY m.priority, a.label, a.id"
                ))
                .bind(pool.id.clone())
                .fetch_all(&mut *tx)
                .await?;
                (rows, Some(pool.id))
            }
            None => {
                // Ordered by first pool below.
                let rows = sqlx::query(&format!("{ACCOUNT_SELECT} ORDER BY a.label, a.id"))
                    .fetch_all(&mut *tx)
                    .await?;
                (rows, None)
            }
        };
        let mut accounts = rows
            .iter()
            .map(account_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        attach_memberships_tx(&mut tx, &mut accounts, None, view.as_deref()).await?;
        tx.rollback().await?;
        if view.is_none() {
            accounts.sort_by(|a, b| {
                (&a.pool, a.priority, &a.label, &a.id).cmp(&(&b.pool, b.priority, &b.label, &b.id))
            });
        }
        Ok(accounts)
    }

    /// Adds an account (by id or label) to another pool, with that pool's priority and weight
    /// for it (defaults 0 and 1). `changed == false`: it was a member already (nothing written).
    pub async fn join_pool(
        &self,
        actor: &Actor,
        ident: &str,
        pool_name: &str,
        priority: Option<u32>,
        weight: Option<u32>,
    ) -> Result<Changed<Account>, StoreError> {
        if let Some(w) = weight {
            codexmesh_model::routing::check_weight(w).map_err(StoreError::from)?;
        }
        let (mut tx, revision) = self.begin_write().await?;
        let pool = pool_by_name_tx(&mut tx, pool_name).await?;
        let account = resolve_account_tx(&mut tx, ident).await?;
        if account.membership(&pool.id).is_some() {
            let account = resolve_member_tx(&mut tx, &account.id, &pool).await?;
            return Ok(Changed {
                changed: false,
                item: account,
            });
        }
        add_membership_tx(
            &mut tx,
            &pool.id,
            &account.id,
            priority.unwrap_or(0),
            weight.unwrap_or(1),
        )
        .await?;
        audit(
            &mut tx,
            actor,
            "account.join",
            Some(&account.id),
            json!({"pool": pool.name, "label": account.label,
                   "priority": priority.unwrap_or(0), "weight": weight.unwrap_or(1)}),
            revision,
        )
        .await?;
        let account = resolve_member_tx(&mut tx, &account.id, &pool).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: account,
        })
    }

    /// Pauses (`true`) or resumes (`false`) an account found by id or label.
    pub async fn set_account_paused(
        &self,
        actor: &Actor,
        ident: &str,
        paused: bool,
    ) -> Result<Changed<Account>, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let account = resolve_account_tx(&mut tx, ident).await?;
        let target = match (paused, account.state) {
            (true, AccountState::Paused) | (false, AccountState::Active) => {
                // Nothing to do: dropping the transaction also undoes the revision bump.
                return Ok(Changed {
                    changed: false,
                    item: account,
                });
            }
            (false, AccountState::NeedsReauth) => {
                return Err(StoreError::conflict(
                    Entity::Account,
                    account.label,
                    ConflictReason::NeedsReauth,
                ))
            }
            (true, _) => AccountState::Paused,
            (false, _) => AccountState::Active,
        };
        sqlx::query(
            "UPDATE accounts SET state = $1, state_reason = $2, cooldown_until = NULL, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(target.as_str())
        .bind(paused.then(|| format!("paused by {}", actor.name)))
        .bind(now_ms())
        .bind(account.id.clone())
        .execute(&mut *tx)
        .await?;
        let action = if paused {
            "account.pause"
        } else {
            "account.resume"
        };
        audit(
            &mut tx,
            actor,
            action,
            Some(&account.id),
            json!({"from": account.state}),
            revision,
        )
        .await?;
        let account = resolve_account_tx(&mut tx, &account.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: account,
        })
    }

    /// Deletes an account (from every pool) and its sealed tokens.
    pub async fn remove_account(&self, actor: &Actor, ident: &str) -> Result<Account, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let account = resolve_account_tx(&mut tx, ident).await?;
        // The foreign keys clear it where it was primary_first's owner (those pools and keys
        // fall back to the first account by priority); the audit row says where.
        let primary_of_pools: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pools WHERE primary_account_id = $1")
                .bind(account.id.clone())
                .fetch_all(&mut *tx)
                .await?;
        let primary_of_keys: Vec<String> =
            sqlx::query_scalar("SELECT id FROM pool_keys WHERE primary_account_id = $1")
                .bind(account.id.clone())
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(account.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "account.remove",
            Some(&account.id),
            json!({"pool": account.pool, "pools": account.pool_names(), "label": account.label,
                   "chatgpt_account_id": account.chatgpt_account_id,
                   "cleared_primary_of": {"pools": primary_of_pools, "keys": primary_of_keys}}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(account)
    }

    /// Takes an account (by id or label) out of one pool: its membership goes, and where it
    /// was primary_first's owner in that pool (the pool's or a key's setting) that is cleared.
    /// Leaving its last pool removes the account ([`Store::remove_account`]); the returned flag
    /// says so.
    pub async fn leave_pool(
        &self,
        actor: &Actor,
        ident: &str,
        pool_name: &str,
    ) -> Result<(Account, bool), StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let pool = pool_by_name_tx(&mut tx, pool_name).await?;
        let account = resolve_member_tx(&mut tx, ident, &pool).await?;
        if account.pools.len() <= 1 {
            // Its last pool: the whole account goes (dropping the transaction undoes the bump).
            drop(tx);
            let removed = self.remove_account(actor, &account.id).await?;
            return Ok((removed, true));
        }
        let cleared = clear_primary_in_pool_tx(&mut tx, &pool.id, &account.id).await?;
        sqlx::query("DELETE FROM pool_memberships WHERE pool_id = $1 AND account_id = $2")
            .bind(pool.id.clone())
            .bind(account.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "account.leave",
            Some(&account.id),
            json!({"pool": pool.name, "label": account.label, "cleared_primary_of": cleared}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok((account, false))
    }

    /// An account by id or label (a label must be unique).
    pub async fn find_account(&self, ident: &str) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let account = resolve_account_tx(&mut tx, ident).await;
        tx.rollback().await?;
        account
    }

    /// An account by id or label (several label matches are an error naming them).
    pub async fn account(&self, ident: &str) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let account = resolve_account_tx(&mut tx, ident).await?;
        tx.commit().await?;
        Ok(account)
    }

    /// Sets (or with `None` clears) the egress proxy of account `ident` (checked and made
    /// canonical by [`codexmesh_model::egress::parse_egress_proxy`]); audited, and published:
    /// the snapshot carries each account's proxy, so Envoys move its requests onto the
    /// proxy's clusters.
    pub async fn set_account_egress_proxy(
        &self,
        actor: &Actor,
        ident: &str,
        proxy: Option<&str>,
    ) -> Result<Changed<Account>, StoreError> {
        let proxy = proxy
            .map(codexmesh_model::egress::parse_egress_proxy)
            .transpose()
            .map_err(|m| StoreError::invalid("egress_proxy", m))?;
        let (mut tx, revision) = self.begin_write().await?;
        let account = resolve_account_tx(&mut tx, ident).await?;
        if account.egress_proxy == proxy {
            tx.rollback().await?;
            return Ok(Changed {
                changed: false,
                item: account,
            });
        }
        sqlx::query("UPDATE accounts SET egress_proxy = $1, updated_at = $2 WHERE id = $3")
            .bind(proxy.clone())
            .bind(now_ms())
            .bind(account.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "account.set_egress_proxy",
            Some(&account.id),
            json!({"label": account.label, "from": account.egress_proxy, "to": proxy}),
            revision,
        )
        .await?;
        let account = resolve_account_tx(&mut tx, &account.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: account,
        })
    }

    /// [`Store::account`] with its membership in pool `pool` in view; without a pool, an
    /// account in several pools is an error asking for one.
    pub async fn account_in_pool(
        &self,
        ident: &str,
        pool: Option<&str>,
    ) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let account = resolve_account_for_pool_tx(&mut tx, ident, pool).await;
        tx.rollback().await?;
        account
    }

    /// An account (by id) with its three tokens opened with `key` (the key of each blob's
    /// version).
    pub async fn account_secrets(
        &self,
        id: &str,
        key: &(impl Keys + ?Sized),
    ) -> Result<AccountSecrets, StoreError> {
        let select = ACCOUNT_SELECT.replacen(
            "SELECT ",
            "SELECT a.sealed_refresh_token, a.sealed_id_token, ",
            1,
        );
        let row = sqlx::query(&format!("{select} WHERE a.id = $1"))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Account, id, Lookup::Id))?;
        let mut account = [account_from_row(&row)?];
        let mut tx = self.pool.begin().await?;
        attach_memberships_tx(&mut tx, &mut account, Some(id), None).await?;
        tx.rollback().await?;
        let [account] = account;
        let open = |field: &str| -> Result<String, StoreError> {
            let sealed = sealed_from_row(&row, field)?;
            Ok(key.open_string(&account.id, field, &sealed)?)
        };
        Ok(AccountSecrets {
            access_token: open("access_token")?,
            refresh_token: open("refresh_token")?,
            id_token: open("id_token")?,
            account,
        })
    }

    /// Persists a successful refresh in one transaction that bumps the revision: the new
    /// tokens (sealed), their expiry, `token_revision` = this revision, the refresh bookkeeping
    /// cleared. Returns the revision. This must commit before anything uses the new refresh
    /// token, and before the lease is released.
    pub async fn store_refreshed_tokens(
        &self,
        actor: &Actor,
        id: &str,
        tokens: &RefreshedTokens,
        key: &(impl Keys + ?Sized),
    ) -> Result<i64, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let key = sealing_key_tx(&mut tx, key).await?;
        let access = key.seal_str(id, "access_token", &tokens.access_token)?;
        let refresh = key.seal_str(id, "refresh_token", &tokens.refresh_token)?;
        let id_tok = key.seal_str(id, "id_token", &tokens.id_token)?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE accounts SET sealed_access_token = $1, sealed_refresh_token = $2, \
               sealed_id_token = $3, access_token_expires_at = $4, plan = COALESCE($5, plan), \
               email = COALESCE($6, email), tokens_updated_at = $7, updated_at = $7, \
               last_refresh_at = $7, token_revision = $8, refresh_failures = 0, \
               next_refresh_at = NULL, last_refresh_error = NULL \
             WHERE id = $9",
        )
        .bind(access)
        .bind(refresh)
        .bind(id_tok)
        .bind(tokens.access_token_expires_at_ms)
        .bind(tokens.plan.clone())
        .bind(tokens.email.clone())
        .bind(now)
        .bind(revision)
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(
                Entity::Account,
                id,
                Lookup::RemovedWhileRefreshing,
            ));
        }
        audit(
            &mut tx,
            actor,
            "account.refresh",
            Some(id),
            json!({"access_token_expires_at_ms": tokens.access_token_expires_at_ms}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// A permanent refresh failure: the account leaves routing (`needs_reauth`, with the
    /// reason) in a transaction that bumps the revision.
    pub async fn mark_needs_reauth(
        &self,
        actor: &Actor,
        id: &str,
        reason: &str,
        detail: &str,
    ) -> Result<i64, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE accounts SET state = 'needs_reauth', state_reason = $1, \
               last_refresh_error = $2, refresh_failures = 0, next_refresh_at = NULL, \
               cooldown_until = NULL, updated_at = $3 \
             WHERE id = $4",
        )
        .bind(reason.to_owned())
        .bind(detail.to_owned())
        .bind(now_ms())
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Account, id, Lookup::Id));
        }
        audit(
            &mut tx,
            actor,
            "account.needs_reauth",
            Some(id),
            json!({"reason": reason}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// A transient refresh failure: bookkeeping only (not snapshot input, no bump).
    pub async fn record_refresh_failure(
        &self,
        id: &str,
        failures: u32,
        next_attempt_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE accounts SET refresh_failures = $1, next_refresh_at = $2, \
               last_refresh_error = $3 WHERE id = $4",
        )
        .bind(i64::from(failures))
        .bind(next_attempt_at_ms)
        .bind(error.chars().take(200).collect::<String>())
        .bind(id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Publishes new health scores, all in one bumping transaction. Returns the revision.
    pub async fn set_health(&self, scores: &[(String, u32)]) -> Result<Option<i64>, StoreError> {
        if scores.is_empty() {
            return Ok(None);
        }
        let (mut tx, revision) = self.begin_write().await?;
        let mut changed = 0;
        for (id, score) in scores {
            changed +=
                sqlx::query("UPDATE accounts SET health = $1 WHERE id = $2 AND health <> $1")
                    .bind(i64::from(*score))
                    .bind(id.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        if changed == 0 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(revision))
    }
}
