//! Store operations: pools, accounts, keys, outcomes, audit, snapshot reads.

use std::collections::HashMap;

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::TokenUpdate;
use super::{
    audit, col, col_bool, col_u32, is_unique_violation, Account, AccountState, AccountWithToken,
    Actor, AuditEntry, Changed, ImportAction, ImportResult, ImportSource, KeyStatus, LoggedOutcome,
    Membership, OutcomeRecord, Pool, PoolKey, RequestLogQuery, Routing, RoutingMode,
    SnapshotAccount, SnapshotData, Store, StoreError, Strategy,
};
use crate::crypto::MasterKey;
use codexmesh_model::credentials::CodexCredentials;
use codexmesh_model::ids::{self, MAX_LABEL_LEN};
use codexmesh_model::keys::RawKey;
use codexmesh_model::util::{self, now_ms};

/// `pools` and `pool_keys` name their routing columns alike, so `routing_from_row` reads both.
pub(super) const POOL_SELECT: &str = "SELECT id, name, created_at, strategy, max_attempts, \
     explain_routes, primary_account_id, primary_threshold_percent, secondary_threshold_percent, \
     circuit_failures, circuit_open_ms, cooldown_max_ms, websockets FROM pools";

/// An account's own columns; its pools come from `pool_memberships` ([`attach_memberships_tx`]).
/// (`accounts.pool_id`, `priority` and `weight` are pre-0005 leftovers: not read.)
pub(super) const ACCOUNT_SELECT: &str = "SELECT a.id, a.label, \
     a.chatgpt_account_id, a.chatgpt_user_id, a.email, a.plan, a.state, a.state_reason, \
     a.cooldown_until, a.access_token_expires_at, a.tokens_updated_at, \
     a.created_at, a.updated_at, a.sealed_access_token, a.token_revision, a.health, \
     a.last_refresh_at, a.refresh_failures, a.next_refresh_at, a.last_refresh_error, \
     a.source_path, a.source_hash \
     FROM accounts a";

const MEMBERSHIP_SELECT: &str = "SELECT m.account_id, m.pool_id, p.name AS pool_name, \
     m.priority, m.weight, m.created_at FROM pool_memberships m JOIN pools p ON p.id = m.pool_id";

const KEY_SELECT: &str = "SELECT k.id, k.pool_id, p.name AS pool_name, k.label, \
     k.key_hash, k.status, k.operator, k.created_at, k.revoked_at, k.routing_mode, k.strategy, \
     k.max_attempts, k.explain_routes, k.primary_account_id, k.primary_threshold_percent, \
     k.secondary_threshold_percent, k.circuit_failures, k.circuit_open_ms, k.cooldown_max_ms, \
     k.websockets FROM pool_keys k JOIN pools p ON p.id = k.pool_id";

/// Pool names: see [`codexmesh_model::ids::validate_pool_name`].
pub fn validate_pool_name(name: &str) -> Result<(), StoreError> {
    ids::validate_pool_name(name).map_err(StoreError::from)
}

/// Labels: see [`codexmesh_model::ids::validate_label`].
pub fn validate_label(label: &str) -> Result<(), StoreError> {
    ids::validate_label(label).map_err(StoreError::from)
}

fn opt_u32(row: &AnyRow, name: &str) -> Result<Option<u32>, StoreError> {
    col::<Option<i64>>(row, name)?
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("{name} = {v} is out of range")))
        })
        .transpose()
}

/// The routing columns of a `pools` or `pool_keys` row. NULL strategy / max_attempts /
/// explain_routes (possible only in key rows) read as the defaults.
pub(super) fn routing_from_row(row: &AnyRow) -> Result<Routing, StoreError> {
    let defaults = Routing::default();
    let strategy = match col::<Option<String>>(row, "strategy")? {
        Some(s) => Strategy::parse(&s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown strategy {s:?}")))?,
        None => defaults.strategy,
    };
    Ok(Routing {
        strategy,
        max_attempts: opt_u32(row, "max_attempts")?.unwrap_or(defaults.max_attempts),
        explain_routes: col::<Option<i64>>(row, "explain_routes")?.is_some_and(|v| v != 0),
        primary_account_id: col(row, "primary_account_id")?,
        primary_threshold_percent: col(row, "primary_threshold_percent")?,
        secondary_threshold_percent: col(row, "secondary_threshold_percent")?,
        circuit_failures: opt_u32(row, "circuit_failures")?,
        circuit_open_ms: opt_u32(row, "circuit_open_ms")?,
        cooldown_max_ms: opt_u32(row, "cooldown_max_ms")?,
        websockets: col::<Option<i64>>(row, "websockets")?.is_none_or(|v| v != 0),
    })
}

pub(super) fn pool_from_row(row: &AnyRow) -> Result<Pool, StoreError> {
    Ok(Pool {
        id: col(row, "id")?,
        name: col(row, "name")?,
        routing: routing_from_row(row)?,
        created_at_ms: col(row, "created_at")?,
    })
}

pub(super) fn account_from_row(row: &AnyRow) -> Result<Account, StoreError> {
    let state: String = col(row, "state")?;
    Ok(Account {
        id: col(row, "id")?,
        // Filled in from its memberships.
        pool_id: String::new(),
        pool: String::new(),
        label: col(row, "label")?,
        chatgpt_account_id: col(row, "chatgpt_account_id")?,
        chatgpt_user_id: col(row, "chatgpt_user_id")?,
        email: col(row, "email")?,
        plan: col(row, "plan")?,
        state: AccountState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown account state {state:?}")))?,
        state_reason: col(row, "state_reason")?,
        cooldown_until_ms: col(row, "cooldown_until")?,
        priority: 0,
        weight: 1,
        access_token_expires_at_ms: col(row, "access_token_expires_at")?,
        tokens_updated_at_ms: col(row, "tokens_updated_at")?,
        created_at_ms: col(row, "created_at")?,
        updated_at_ms: col(row, "updated_at")?,
        token_revision: col(row, "token_revision")?,
        health: col_u32(row, "health")?.min(100),
        last_refresh_at_ms: col(row, "last_refresh_at")?,
        refresh_failures: col_u32(row, "refresh_failures")?,
        next_refresh_at_ms: col(row, "next_refresh_at")?,
        last_refresh_error: col(row, "last_refresh_error")?,
        source_path: col(row, "source_path")?,
        source_hash: col(row, "source_hash")?,
        pools: Vec::new(),
    })
}

fn membership_from_row(row: &AnyRow) -> Result<(String, Membership), StoreError> {
    Ok((
        col(row, "account_id")?,
        Membership {
            pool_id: col(row, "pool_id")?,
            pool: col(row, "pool_name")?,
            priority: col_u32(row, "priority")?,
            weight: col_u32(row, "weight")?,
            created_at_ms: col(row, "created_at")?,
        },
    ))
}

/// Fills in `accounts`' memberships (all of them when `only` is None, else those of the one
/// account `only`) and puts the one in `view_pool` (else the first by pool name) in view.
pub(super) async fn attach_memberships_tx(
    tx: &mut Transaction<'static, Any>,
    accounts: &mut [Account],
    only: Option<&str>,
    view_pool: Option<&str>,
) -> Result<(), StoreError> {
    let rows = match only {
        Some(id) => {
            sqlx::query(&format!(
                "{MEMBERSHIP_SELECT} WHERE m.account_id = $1 ORDER BY p.name"
            ))
            .bind(id.to_owned())
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            sqlx::query(&format!("{MEMBERSHIP_SELECT} ORDER BY p.name"))
                .fetch_all(&mut **tx)
                .await?
        }
    };
    let mut of: HashMap<String, Vec<Membership>> = HashMap::new();
    for r in &rows {
        let (account_id, m) = membership_from_row(r)?;
        of.entry(account_id).or_default().push(m);
    }
    for a in accounts.iter_mut() {
        a.pools = of.remove(&a.id).unwrap_or_default();
        let shown = view_pool
            .and_then(|p| a.membership(p))
            .or_else(|| a.pools.first())
            .cloned();
        if let Some(m) = shown {
            a.view_membership(&m);
        }
    }
    Ok(())
}

pub(super) fn key_from_row(row: &AnyRow) -> Result<PoolKey, StoreError> {
    let status: String = col(row, "status")?;
    let mode: String = col(row, "routing_mode")?;
    let routing_mode = RoutingMode::parse(&mode)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown routing mode {mode:?}")))?;
    Ok(PoolKey {
        id: col(row, "id")?,
        pool_id: col(row, "pool_id")?,
        pool: col(row, "pool_name")?,
        label: col(row, "label")?,
        key_hash_hex: col(row, "key_hash")?,
        status: KeyStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key status {status:?}")))?,
        operator: col_bool(row, "operator")?,
        created_at_ms: col(row, "created_at")?,
        revoked_at_ms: col(row, "revoked_at")?,
        routing_mode,
        routing_override: match routing_mode {
            RoutingMode::Custom => Some(routing_from_row(row)?),
            RoutingMode::Inherit => None,
        },
    })
}

/// Which unique pool column a lookup matches on (a closed set: it is put into the SQL).
#[derive(Clone, Copy)]
pub(super) enum PoolKeyColumn {
    Id,
    Name,
}

/// The pool whose id or name equals `value`, if there is one.
pub(super) async fn find_pool_tx(
    tx: &mut Transaction<'static, Any>,
    column: PoolKeyColumn,
    value: &str,
) -> Result<Option<Pool>, StoreError> {
    let column = match column {
        PoolKeyColumn::Id => "id",
        PoolKeyColumn::Name => "name",
    };
    let row = sqlx::query(&format!("{POOL_SELECT} WHERE {column} = $1"))
        .bind(value.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(pool_from_row).transpose()
}

pub(super) async fn pool_by_name_tx(
    tx: &mut Transaction<'static, Any>,
    name: &str,
) -> Result<Pool, StoreError> {
    find_pool_tx(tx, PoolKeyColumn::Name, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no pool named {name:?}")))
}

/// One row out of an id-or-label lookup; several label matches are an error naming them.
fn pick_one<T>(
    rows: &[AnyRow],
    what: &'static str,
    ident: &str,
    map: fn(&AnyRow) -> Result<T, StoreError>,
    id_of: fn(&T) -> &str,
) -> Result<T, StoreError> {
    let mut found: Vec<T> = rows.iter().map(map).collect::<Result<_, _>>()?;
    match found.len() {
        0 => Err(StoreError::NotFound(format!(
            "no {what} with id or label {ident:?}"
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(StoreError::Ambiguous {
            what,
            ident: ident.to_owned(),
            ids: found.iter().map(id_of).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Rows whose `id` equals `ident`, else those whose `label` does.
async fn rows_by_id_or_label(
    tx: &mut Transaction<'static, Any>,
    select: &str,
    alias: &str,
    ident: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    let by_id = sqlx::query(&format!("{select} WHERE {alias}.id = $1"))
        .bind(ident.to_owned())
        .fetch_all(&mut **tx)
        .await?;
    if !by_id.is_empty() {
        return Ok(by_id);
    }
    Ok(sqlx::query(&format!(
        "{select} WHERE {alias}.label = $1 ORDER BY {alias}.id"
    ))
    .bind(ident.to_owned())
    .fetch_all(&mut **tx)
    .await?)
}

fn outcome_from_row(r: &AnyRow) -> Result<OutcomeRecord, StoreError> {
    let window = |prefix: &str| -> Result<Option<super::QuotaWindowRecord>, StoreError> {
        let used: Option<f64> = col(r, &format!("{prefix}_used_percent"))?;
        Ok(match used {
            Some(used_percent) => Some(super::QuotaWindowRecord {
                used_percent,
                window_minutes: col::<Option<i64>>(r, &format!("{prefix}_window_minutes"))?
                    .unwrap_or(0),
                resets_at_unix: col::<Option<i64>>(r, &format!("{prefix}_resets_at"))?.unwrap_or(0),
            }),
            None => None,
        })
    };
    Ok(OutcomeRecord {
        pool_id: col(r, "pool_id")?,
        key_id: col(r, "key_id")?,
        account_id: col(r, "account_id")?,
        attempt: col(r, "attempt")?,
        status: col(r, "status")?,
        error_code: col(r, "error_code")?,
        started_at_ms: col(r, "started_at")?,
        latency_ms: col(r, "latency_ms")?,
        request_path: col(r, "request_path")?,
        snapshot_version: col(r, "snapshot_version")?,
        plan: col(r, "plan")?,
        resets_at_unix: col(r, "resets_at")?,
        primary: window("primary")?,
        secondary: window("secondary")?,
        quota_observed_at_ms: col(r, "quota_observed_at")?,
        credits_has_credits: col_bool(r, "credits_has_credits")?,
        credits_unlimited: col_bool(r, "credits_unlimited")?,
        credits_balance: col(r, "credits_balance")?,
        error_source: col(r, "error_source")?,
        fallback: col_bool(r, "fallback")?,
        retry_after_unix: col(r, "retry_after")?,
        token_expires_at_unix: col(r, "token_expires_at")?,
        strategy: col(r, "strategy")?,
        route_reason: col(r, "route_reason")?,
    })
}

pub(super) async fn resolve_account_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<Account, StoreError> {
    let rows = rows_by_id_or_label(tx, ACCOUNT_SELECT, "a", ident).await?;
    let mut account = [pick_one(&rows, "account", ident, account_from_row, |a| {
        &a.id
    })?];
    let id = account[0].id.clone();
    attach_memberships_tx(tx, &mut account, Some(&id), None).await?;
    let [account] = account;
    Ok(account)
}

/// [`resolve_account_tx`] with the membership in `pool` in view; an error naming the account's
/// pools when it is not a member there.
pub(super) async fn resolve_member_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
    pool: &Pool,
) -> Result<Account, StoreError> {
    let mut account = resolve_account_tx(tx, ident).await?;
    let m = account.membership(&pool.id).cloned().ok_or_else(|| {
        StoreError::NotFound(format!(
            "account {} is not in pool {:?} (its pools: {})",
            account.label,
            pool.name,
            account.pool_names()
        ))
    })?;
    account.view_membership(&m);
    Ok(account)
}

/// The account by id or label, with the membership in pool `pool_name` in view when given;
/// without a pool, an account in several pools is an error asking for one.
pub(super) async fn resolve_account_for_pool_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
    pool_name: Option<&str>,
) -> Result<Account, StoreError> {
    match pool_name {
        Some(name) => {
            let pool = pool_by_name_tx(tx, name).await?;
            resolve_member_tx(tx, ident, &pool).await
        }
        None => {
            let account = resolve_account_tx(tx, ident).await?;
            if account.pools.len() > 1 {
                return Err(StoreError::Invalid(format!(
                    "account {} is in several pools ({}): name one with --pool",
                    account.label,
                    account.pool_names()
                )));
            }
            Ok(account)
        }
    }
}

pub(super) async fn resolve_key_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<PoolKey, StoreError> {
    let rows = rows_by_id_or_label(tx, KEY_SELECT, "k", ident).await?;
    pick_one(&rows, "key", ident, key_from_row, |k| &k.id)
}

/// Records the master key's fingerprint on first use and refuses a different key afterwards.
pub(super) async fn check_master_key_tx(
    tx: &mut Transaction<'static, Any>,
    key: &MasterKey,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('master_key_fp', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key.fingerprint())
    .execute(&mut **tx)
    .await?;
    let stored: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'master_key_fp'")
        .fetch_one(&mut **tx)
        .await?;
    if stored == key.fingerprint() {
        Ok(())
    } else {
        Err(StoreError::MasterKeyMismatch)
    }
}

impl Store {
    // ---- pools ----

    pub async fn create_pool(&self, actor: &Actor, name: &str) -> Result<Pool, StoreError> {
        validate_pool_name(name)?;
        let (mut tx, revision) = self.begin_write().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM pools WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "a pool named {name:?} already exists"
            )));
        }
        // The product defaults (quota_first), named explicitly: the column's DEFAULT is the
        // pre-0003 'round_robin' (see migrations/*/0003_routing.sql).
        let pool = Pool {
            id: util::new_id("pool")?,
            name: name.to_owned(),
            routing: Routing::default(),
            created_at_ms: now_ms(),
        };
        sqlx::query(
            "INSERT INTO pools (id, name, strategy, max_attempts, explain_routes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(pool.id.clone())
        .bind(pool.name.clone())
        .bind(pool.routing.strategy.as_str())
        .bind(i64::from(pool.routing.max_attempts))
        .bind(i64::from(pool.routing.explain_routes))
        .bind(pool.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("a pool named {name:?} already exists"))
            } else {
                e.into()
            }
        })?;
        audit(
            &mut tx,
            actor,
            "pool.create",
            Some(&pool.id),
            json!({"name": name}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(pool)
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        sqlx::query(&format!("{POOL_SELECT} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(pool_from_row)
            .collect()
    }

    pub async fn pool_by_name(&self, name: &str) -> Result<Pool, StoreError> {
        let row = sqlx::query(&format!("{POOL_SELECT} WHERE name = $1"))
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => pool_from_row(&r),
            None => Err(StoreError::NotFound(format!("no pool named {name:?}"))),
        }
    }

    // ---- accounts ----

    /// Imports (or, for a ChatGPT account already in the pool, updates) an account's tokens,
    /// sealed under `key`. A re-import brings a `needs_reauth` account back to `active` but
    /// leaves a paused one paused.
    pub async fn import_account(
        &self,
        actor: &Actor,
        pool_name: &str,
        label: Option<&str>,
        creds: &CodexCredentials,
        key: &MasterKey,
    ) -> Result<ImportResult, StoreError> {
        self.import_account_from(actor, pool_name, label, creds, key, None)
            .await
    }

    /// [`Store::import_account`], remembering the watched-folder file it came from.
    ///
    /// One login (same ChatGPT account id and user) is one account, whatever the pools: a
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
        creds: &CodexCredentials,
        key: &MasterKey,
        source: Option<&ImportSource>,
    ) -> Result<ImportResult, StoreError> {
        if let Some(l) = label {
            validate_label(l)?;
        }
        let (mut tx, revision) = self.begin_write().await?;
        check_master_key_tx(&mut tx, key).await?;
        let pool = pool_by_name_tx(&mut tx, pool_name).await?;
        let existing = find_login_tx(&mut tx, creds).await?;
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
                       source_hash = COALESCE($4, source_hash) \
                     WHERE id = $5",
                )
                .bind(label.map(str::to_owned))
                .bind(now)
                .bind(source.map(|s| s.path.clone()))
                .bind(source.map(|s| s.hash.clone()))
                .bind(id.clone())
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
                       source_path = COALESCE($12, source_path), source_hash = COALESCE($13, source_hash) \
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
                       source_hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', 0, 1, $8, $9, $10, $11, $12, $12, \
                       $12, $13, $14, $15)",
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
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        // SQLite keeps the pre-0005 UNIQUE (pool_id, chatgpt_account_id).
                        StoreError::Conflict(format!(
                            "another user of ChatGPT account {} was first imported into pool \
                             {:?}: import this login into another pool first, then add it \
                             here with `codexmesh account join`",
                            creds.chatgpt_account_id, pool.name
                        ))
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
            json!({"pool": pool.name, "chatgpt_account_id": creds.chatgpt_account_id,
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
            codexmesh_model::routing::check_weight(w)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
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
                return Err(StoreError::Invalid(format!(
                    "account {} needs re-authentication: import a fresh auth.json for it",
                    account.label
                )))
            }
            (true, _) => AccountState::Paused,
            (false, _) => AccountState::Active,
        };
        sqlx::query(
            "UPDATE accounts SET state = $1, state_reason = $2, cooldown_until = NULL, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(target.as_str())
        .bind(paused.then(|| format!("paused by {}", actor.0)))
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

    // ---- keys ----

    /// Stores a new key's hash. The caller generated the raw key and shows it once.
    pub async fn create_key(
        &self,
        actor: &Actor,
        pool_name: &str,
        label: Option<&str>,
        operator: bool,
        key_hash_hex: &str,
    ) -> Result<PoolKey, StoreError> {
        if let Some(l) = label {
            validate_label(l)?;
        }
        if key_hash_hex.len() != 64 || hex::decode(key_hash_hex).is_err() {
            return Err(StoreError::Invalid(
                "key hash must be 64 hex digits".to_owned(),
            ));
        }
        let (mut tx, revision) = self.begin_write().await?;
        let pool = pool_by_name_tx(&mut tx, pool_name).await?;
        let id = util::new_id("key")?;
        let label = match label {
            Some(l) => l.to_owned(),
            None => {
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM pool_keys WHERE pool_id = $1")
                        .bind(pool.id.clone())
                        .fetch_one(&mut *tx)
                        .await?;
                format!("key-{}", n + 1)
            }
        };
        sqlx::query(
            "INSERT INTO pool_keys (id, pool_id, label, key_hash, status, operator, created_at) \
             VALUES ($1, $2, $3, $4, 'active', $5, $6)",
        )
        .bind(id.clone())
        .bind(pool.id.clone())
        .bind(label.clone())
        .bind(key_hash_hex.to_ascii_lowercase())
        .bind(i64::from(operator))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict("a key with this hash already exists".to_owned())
            } else {
                e.into()
            }
        })?;
        audit(
            &mut tx,
            actor,
            "key.create",
            Some(&id),
            json!({"pool": pool.name, "label": label, "operator": operator}),
            revision,
        )
        .await?;
        let key = resolve_key_tx(&mut tx, &id).await?;
        tx.commit().await?;
        Ok(key)
    }

    pub async fn list_keys(&self, pool: Option<&str>) -> Result<Vec<PoolKey>, StoreError> {
        let rows = match pool {
            Some(name) => {
                self.pool_by_name(name).await?;
                sqlx::query(&format!(
                    "{KEY_SELECT} WHERE p.name = $1 ORDER BY k.created_at, k.id"
                ))
                .bind(name.to_owned())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{KEY_SELECT} ORDER BY p.name, k.created_at, k.id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    pub async fn revoke_key(
        &self,
        actor: &Actor,
        ident: &str,
    ) -> Result<Changed<PoolKey>, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let key = resolve_key_tx(&mut tx, ident).await?;
        if key.status == KeyStatus::Revoked {
            return Ok(Changed {
                changed: false,
                item: key,
            });
        }
        sqlx::query("UPDATE pool_keys SET status = 'revoked', revoked_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(key.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "key.revoke",
            Some(&key.id),
            json!({"pool": key.pool, "label": key.label}),
            revision,
        )
        .await?;
        let key = resolve_key_tx(&mut tx, &key.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: key,
        })
    }

    // ---- outcomes and audit ----

    /// Appends outcome metadata. Not a snapshot input, so no revision bump.
    pub async fn record_outcomes(
        &self,
        node_id: &str,
        outcomes: &[OutcomeRecord],
    ) -> Result<u32, StoreError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let received = now_ms();
        let mut tx = self.pool.begin().await?;
        for o in outcomes {
            let (p, s) = (
                o.primary.unwrap_or_default(),
                o.secondary.unwrap_or_default(),
            );
            sqlx::query(
                "INSERT INTO outcomes (received_at, node_id, pool_id, key_id, account_id, attempt, \
                   status, error_code, started_at, latency_ms, request_path, snapshot_version, plan, \
                   resets_at, primary_used_percent, primary_window_minutes, primary_resets_at, \
                   secondary_used_percent, secondary_window_minutes, secondary_resets_at, \
                   quota_observed_at, credits_has_credits, credits_unlimited, credits_balance, \
                   error_source, fallback, retry_after, token_expires_at, strategy, route_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                   $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30)",
            )
            .bind(received)
            .bind(node_id.to_owned())
            .bind(o.pool_id.clone())
            .bind(o.key_id.clone())
            .bind(o.account_id.clone())
            .bind(o.attempt)
            .bind(o.status)
            .bind(o.error_code.clone())
            .bind(o.started_at_ms)
            .bind(o.latency_ms)
            .bind(o.request_path.clone())
            .bind(o.snapshot_version)
            .bind(o.plan.clone())
            .bind(o.resets_at_unix)
            .bind(super::NullableF64(o.primary.map(|_| p.used_percent)))
            .bind(o.primary.map(|_| p.window_minutes))
            .bind(o.primary.map(|_| p.resets_at_unix))
            .bind(super::NullableF64(o.secondary.map(|_| s.used_percent)))
            .bind(o.secondary.map(|_| s.window_minutes))
            .bind(o.secondary.map(|_| s.resets_at_unix))
            .bind(o.quota_observed_at_ms)
            .bind(i64::from(o.credits_has_credits))
            .bind(i64::from(o.credits_unlimited))
            .bind(o.credits_balance.clone())
            .bind(o.error_source.clone())
            .bind(i64::from(o.fallback))
            .bind(o.retry_after_unix)
            .bind(o.token_expires_at_unix)
            .bind(o.strategy.clone())
            .bind(o.route_reason.clone())
            .execute(&mut *tx)
            .await?;
        }
        super::lifecycle::bump_counters_tx(&mut tx, outcomes, received).await?;
        tx.commit().await?;
        Ok(u32::try_from(outcomes.len()).unwrap_or(u32::MAX))
    }

    /// Deletes up to `limit` outcomes received before `before_ms`, oldest first: the request
    /// log's retention. Bounded so one call never holds the write lock for long.
    pub async fn prune_outcomes(&self, before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM outcomes WHERE id IN \
               (SELECT id FROM outcomes WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn count_outcomes(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outcomes")
            .fetch_one(&self.pool)
            .await?)
    }

    /// An account by id or label (a label must be unique).
    pub async fn find_account(&self, ident: &str) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let account = resolve_account_tx(&mut tx, ident).await;
        tx.rollback().await?;
        account
    }

    /// A key by id or label (a label must be unique).
    pub async fn find_key(&self, ident: &str) -> Result<PoolKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key = resolve_key_tx(&mut tx, ident).await;
        tx.rollback().await?;
        key
    }

    /// Most recent outcomes for an account (newest first).
    pub async fn recent_outcomes(
        &self,
        account_id: &str,
        limit: i64,
    ) -> Result<Vec<OutcomeRecord>, StoreError> {
        let query = RequestLogQuery {
            account_id: Some(account_id.to_owned()),
            limit,
            ..RequestLogQuery::default()
        };
        Ok(self
            .request_log(&query)
            .await?
            .into_iter()
            .map(|e| e.outcome)
            .collect())
    }

    /// The request log, newest first: reported attempts matching every given filter.
    pub async fn request_log(&self, q: &RequestLogQuery) -> Result<Vec<LoggedOutcome>, StoreError> {
        // '' stands for "any": a typed text parameter works the same on SQLite and Postgres,
        // where an untyped `$1 IS NULL` would not.
        let rows = sqlx::query(
            "SELECT id, received_at, node_id, pool_id, key_id, account_id, attempt, status, \
               error_code, started_at, latency_ms, request_path, snapshot_version, plan, \
               resets_at, primary_used_percent, primary_window_minutes, primary_resets_at, \
               secondary_used_percent, secondary_window_minutes, secondary_resets_at, \
               quota_observed_at, credits_has_credits, credits_unlimited, credits_balance, \
               error_source, fallback, retry_after, token_expires_at, strategy, route_reason \
             FROM outcomes \
             WHERE ($1 = '' OR pool_id = $1) AND ($2 = '' OR account_id = $2) \
               AND ($3 = '' OR key_id = $3) AND ($4 = 0 OR id < $4) \
             ORDER BY id DESC LIMIT $5",
        )
        .bind(q.pool_id.clone().unwrap_or_default())
        .bind(q.account_id.clone().unwrap_or_default())
        .bind(q.key_id.clone().unwrap_or_default())
        .bind(q.before_id.unwrap_or(0))
        .bind(q.limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LoggedOutcome {
                    id: col(r, "id")?,
                    received_at_ms: col(r, "received_at")?,
                    node_id: col(r, "node_id")?,
                    outcome: outcome_from_row(r)?,
                })
            })
            .collect()
    }

    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail, revision FROM audit_log \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: col(r, "id")?,
                    at_ms: col(r, "at")?,
                    actor: col(r, "actor")?,
                    action: col(r, "action")?,
                    target: col(r, "target")?,
                    detail: col(r, "detail")?,
                    revision: col(r, "revision")?,
                })
            })
            .collect()
    }

    // ---- snapshot ----

    /// Fails early when `key` is not the key this store's secrets were sealed with.
    pub async fn verify_master_key(&self, key: &MasterKey) -> Result<(), StoreError> {
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'master_key_fp'")
                .fetch_optional(&self.pool)
                .await?;
        match stored {
            Some(fp) if fp != key.fingerprint() => Err(StoreError::MasterKeyMismatch),
            _ => Ok(()),
        }
    }

    /// Reads everything a snapshot needs, consistently with the revision it reports.
    pub async fn snapshot_data(&self) -> Result<SnapshotData, StoreError> {
        let mut tx = self.begin_consistent_read().await?;
        let revision: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'revision'")
            .fetch_one(&mut *tx)
            .await?;
        let pools = sqlx::query(&format!("{POOL_SELECT} ORDER BY name"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(pool_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let keys = sqlx::query(&format!("{KEY_SELECT} ORDER BY k.created_at, k.id"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(key_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // Only the columns a snapshot carries, without the pools join: at 10,000 accounts the
        // whole account row (26 columns) cost ~300 ms through sqlx, these ~150 ms.
        let accounts = sqlx::query(SNAPSHOT_ACCOUNT_SELECT)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(AccountWithToken {
                    account: snapshot_account_from_row(r)?,
                    sealed_access_token: col(r, "sealed_access_token")?,
                    quota: None,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let quotas = super::lifecycle::all_quota_tx(&mut tx).await?;
        let accounts = accounts
            .into_iter()
            .map(|mut a| {
                // An account in several pools is sent in each.
                a.quota = quotas.get(&a.account.id).cloned();
                a
            })
            .collect();
        tx.commit().await?;
        Ok(SnapshotData {
            revision,
            pools,
            keys,
            accounts,
        })
    }
}

/// What [`Store::snapshot_data`] reads of each account, once per membership (with that pool's
/// priority and weight), in the order accounts are sent.
const SNAPSHOT_ACCOUNT_SELECT: &str = "SELECT a.id, m.pool_id, a.label, a.chatgpt_account_id, \
     a.plan, a.state, a.state_reason, a.cooldown_until, m.priority, m.weight, \
     a.access_token_expires_at, a.token_revision, a.health, a.sealed_access_token \
     FROM pool_memberships m JOIN accounts a ON a.id = m.account_id \
     ORDER BY m.priority, a.label, a.id, m.pool_id";

fn snapshot_account_from_row(row: &AnyRow) -> Result<SnapshotAccount, StoreError> {
    let state: String = col(row, "state")?;
    Ok(SnapshotAccount {
        id: col(row, "id")?,
        pool_id: col(row, "pool_id")?,
        label: col(row, "label")?,
        chatgpt_account_id: col(row, "chatgpt_account_id")?,
        plan: col(row, "plan")?,
        state: AccountState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown account state {state:?}")))?,
        state_reason: col(row, "state_reason")?,
        cooldown_until_ms: col(row, "cooldown_until")?,
        priority: col_u32(row, "priority")?,
        weight: col_u32(row, "weight")?,
        access_token_expires_at_ms: col(row, "access_token_expires_at")?,
        token_revision: col(row, "token_revision")?,
        health: col_u32(row, "health")?.min(100),
    })
}

/// Email, else the ChatGPT account id; disambiguated when another account in the pool already
/// uses it (one email can belong to several workspaces).
async fn default_account_label(
    tx: &mut Transaction<'static, Any>,
    pool_id: &str,
    creds: &CodexCredentials,
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

/// The account with the same login as `creds` (same ChatGPT account id and user), with its
/// stored access token expiry. A row without a user id (an auth.json without the claim) is the
/// login when it is the only candidate: the older import could not tell users apart. The expiry
/// is None when the account needs re-authentication (its tokens are not worth keeping).
async fn find_login_tx(
    tx: &mut Transaction<'static, Any>,
    creds: &CodexCredentials,
) -> Result<Option<(String, Option<i64>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, chatgpt_user_id, access_token_expires_at, state FROM accounts \
         WHERE chatgpt_account_id = $1 ORDER BY id",
    )
    .bind(creds.chatgpt_account_id.clone())
    .fetch_all(&mut **tx)
    .await?;
    let mut exact = None;
    let mut loose = Vec::new();
    for r in &rows {
        let id: String = col(r, "id")?;
        let user: Option<String> = col(r, "chatgpt_user_id")?;
        // A login that needs re-authentication has nothing worth keeping: any import replaces
        // its tokens.
        let expiry: Option<i64> = col(r, "access_token_expires_at")?;
        let state: String = col(r, "state")?;
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
pub(super) async fn add_membership_tx(
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
    /// Generates a key, stores only its hash, and returns the stored row plus the raw key (which
    /// exists nowhere else: the caller shows it once).
    pub async fn issue_key(
        &self,
        actor: &Actor,
        pool: &str,
        label: Option<&str>,
        operator: bool,
    ) -> Result<(PoolKey, RawKey), StoreError> {
        let raw = RawKey::generate()?;
        let key = self
            .create_key(actor, pool, label, operator, &raw.hash_hex())
            .await?;
        Ok((key, raw))
    }
}
