//! Operators, their pool assignments, API tokens, the first-run bootstrap secret and sign-in
//! bookkeeping (issue 11).
//!
//! Rules: secrets arrive already hashed (argon2id PHC strings for passwords, SHA-256 hex for API
//! tokens and bootstrap secrets) and never leave except as [`OperatorCredentials`] (whose `Debug`
//! redacts them); every change an operator makes is one transaction with an audit row whose
//! detail holds names, roles and pools only — never a password, hash, secret or token. No
//! snapshot carries any of this, so these writes do not bump `meta.revision` (they take the
//! `meta` row first all the same, keeping the one lock order: `begin_unpublished_write`). Sign-in
//! counters (failures, lockouts, last use, the last TOTP step used) are bookkeeping: no bump; a
//! sign-in attempt gets an audit row (`session.sign_in`, revision 0) but bumps nothing.
//!
//! The last enabled owner stays: a change that demotes or disables an owner counts the enabled
//! owners again inside its own transaction (after its update, under the write lock every writer
//! takes first) and rolls back when none is left, so two such changes racing each other cannot
//! both pass ([`ConflictReason::LastOwner`]).

use serde_json::json;
use sqlx::{Any, Transaction};

use crate::audit::audit;
use crate::crypto::Keys;
use crate::error::{ConflictReason, Entity, Lookup, StoreError};
use crate::rows::{api_token_from_row, col, operator_from_row, API_TOKEN_COLS, OPERATOR_COLS};
use crate::sealing::{sealing_key_tx, TOTP_FIELD};
use crate::tx::{is_unique_violation, pool_by_name_tx};
use crate::{Actor, Store};
use codexmesh_model::operators::{validate_operator_name, ApiToken, Operator, Role};
use codexmesh_model::records::Changed;
use codexmesh_model::util::{self, now_ms};

/// What sign-in needs about an operator. `Debug` shows no hash or sealed secret.
#[derive(Clone)]
pub struct OperatorCredentials {
    pub operator: Operator,
    /// argon2id PHC string; None until a password is set.
    pub password_hash: Option<String>,
    pub session_epoch: i64,
    pub failed_signins: i64,
    pub locked_until_ms: Option<i64>,
    pub totp_secret_sealed: Option<Vec<u8>>,
}

impl std::fmt::Debug for OperatorCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorCredentials")
            .field("operator", &self.operator)
            .field("session_epoch", &self.session_epoch)
            .field("failed_signins", &self.failed_signins)
            .field("locked_until_ms", &self.locked_until_ms)
            .finish_non_exhaustive()
    }
}

/// A new operator, as the store writes it.
#[derive(Debug, Clone)]
pub struct NewOperator<'a> {
    pub name: &'a str,
    pub role: Role,
    pub pools: &'a [String],
    pub password_hash: Option<&'a str>,
}

/// The sign-in throttle's parameters (the engine decides them; the store counts).
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Failures that lock.
    pub max_failures: i64,
    /// For client addresses: failures count within this window.
    pub window_ms: i64,
    /// How long a lock lasts.
    pub lock_ms: i64,
}

async fn pool_names_tx(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    owner_col: &str,
    owner: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT p.name FROM {table} a JOIN pools p ON p.id = a.pool_id \
         WHERE a.{owner_col} = $1 ORDER BY p.name"
    ))
    .bind(owner.to_owned())
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|r| col(r, "name")).collect()
}

async fn operator_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<Operator, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {OPERATOR_COLS} FROM operators WHERE id = $1 OR name = $1 \
         ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1"
    ))
    .bind(ident.to_owned())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Operator, ident, Lookup::IdOrName))?;
    let mut op = operator_from_row(&row)?;
    op.pools = pool_names_tx(tx, "operator_pools", "operator_id", &op.id).await?;
    Ok(op)
}

async fn api_token_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<ApiToken, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {API_TOKEN_COLS} FROM api_tokens WHERE id = $1 OR label = $1 \
         ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1"
    ))
    .bind(ident.to_owned())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::ApiToken, ident, Lookup::IdOrLabel))?;
    let mut t = api_token_from_row(&row)?;
    t.pools = pool_names_tx(tx, "api_token_pools", "token_id", &t.id).await?;
    Ok(t)
}

/// Replaces the pool rows of an operator or token; every name must be a pool.
async fn set_pools_tx(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    owner_col: &str,
    owner: &str,
    pools: &[String],
    with_created_at: bool,
) -> Result<(), StoreError> {
    sqlx::query(&format!("DELETE FROM {table} WHERE {owner_col} = $1"))
        .bind(owner.to_owned())
        .execute(&mut **tx)
        .await?;
    let mut seen = std::collections::BTreeSet::new();
    for name in pools {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let pool = pool_by_name_tx(tx, name).await?;
        let q = if with_created_at {
            format!("INSERT INTO {table} ({owner_col}, pool_id, created_at) VALUES ($1, $2, $3)")
        } else {
            format!("INSERT INTO {table} ({owner_col}, pool_id) VALUES ($1, $2)")
        };
        let mut q = sqlx::query(&q).bind(owner.to_owned()).bind(pool.id.clone());
        if with_created_at {
            q = q.bind(now_ms());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Refuses, inside the change's transaction and after its update, a change that left no enabled
/// owner when `before` was one (the caller's error rolls the transaction back).
async fn keep_an_owner_tx(
    tx: &mut Transaction<'static, Any>,
    before: &Operator,
) -> Result<(), StoreError> {
    if before.role != Role::Owner || before.disabled {
        return Ok(());
    }
    let owners: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM operators WHERE role = 'owner' AND disabled = 0")
            .fetch_one(&mut **tx)
            .await?;
    if owners == 0 {
        return Err(StoreError::conflict(
            Entity::Operator,
            before.name.clone(),
            ConflictReason::LastOwner,
        ));
    }
    Ok(())
}

async fn insert_operator_tx(
    tx: &mut Transaction<'static, Any>,
    new: &NewOperator<'_>,
) -> Result<String, StoreError> {
    validate_operator_name(new.name)?;
    let id = util::new_id("op")?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO operators (id, name, role, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id.clone())
    .bind(new.name.to_owned())
    .bind(new.role.as_str().to_owned())
    .bind(new.password_hash.map(str::to_owned))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::conflict(Entity::Operator, new.name, ConflictReason::NameTaken)
        } else {
            e.into()
        }
    })?;
    if new.role != Role::Owner {
        set_pools_tx(tx, "operator_pools", "operator_id", &id, new.pools, true).await?;
    }
    Ok(id)
}

impl Store {
    /// Whether any enabled owner exists (no owner: `bootstrap` may create one).
    pub async fn owner_exists(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM operators WHERE role = 'owner' AND disabled = 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    pub async fn create_operator(
        &self,
        actor: &Actor,
        new: &NewOperator<'_>,
    ) -> Result<Operator, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let id = insert_operator_tx(&mut tx, new).await?;
        let op = operator_tx(&mut tx, &id).await?;
        audit(
            &mut tx,
            actor,
            "operator.create",
            Some(&id),
            json!({"name": op.name, "role": op.role, "pools": op.pools}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(op)
    }

    /// Stores a bootstrap secret's hash, valid until `expires_at_ms`. Expired unused ones are
    /// dropped; the others stay valid (several replicas starting together each print one, and
    /// each must work until the first creates the owner).
    pub async fn create_bootstrap_secret(
        &self,
        actor: &Actor,
        secret_hash_hex: &str,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        sqlx::query("DELETE FROM bootstrap_secrets WHERE used_at IS NULL AND expires_at <= $1")
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO bootstrap_secrets (secret_hash, created_at, expires_at) \
             VALUES ($1, $2, $3)",
        )
        .bind(secret_hash_hex.to_owned())
        .bind(now_ms())
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "operator.bootstrap_secret",
            None,
            json!({"expires_at_ms": expires_at_ms}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses the bootstrap secret (valid once, before it expires, while no owner exists) to
    /// create the first owner, in one transaction. Any failure is the same not-found error (no
    /// hint whether the secret was wrong, used or expired).
    pub async fn consume_bootstrap_secret(
        &self,
        actor: &Actor,
        secret_hash_hex: &str,
        name: &str,
        password_hash: &str,
    ) -> Result<Operator, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let now = now_ms();
        let used = sqlx::query(
            "UPDATE bootstrap_secrets SET used_at = $1 \
             WHERE secret_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(secret_hash_hex.to_owned())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let owners: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operators WHERE role = 'owner'")
            .fetch_one(&mut *tx)
            .await?;
        if used != 1 || owners > 0 {
            return Err(StoreError::not_found(
                Entity::BootstrapSecret,
                "(given)",
                Lookup::Valid,
            ));
        }
        let id = insert_operator_tx(
            &mut tx,
            &NewOperator {
                name,
                role: Role::Owner,
                pools: &[],
                password_hash: Some(password_hash),
            },
        )
        .await?;
        let op = operator_tx(&mut tx, &id).await?;
        audit(
            &mut tx,
            actor,
            "operator.bootstrap",
            Some(&id),
            json!({"name": op.name, "role": op.role}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(op)
    }

    pub async fn list_operators(&self) -> Result<Vec<Operator>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM operators ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(operator_tx(&mut tx, &id).await?);
        }
        tx.rollback().await?;
        Ok(out)
    }

    /// An operator by id or name.
    pub async fn find_operator(&self, ident: &str) -> Result<Operator, StoreError> {
        let mut tx = self.pool.begin().await?;
        let op = operator_tx(&mut tx, ident).await;
        tx.rollback().await?;
        op
    }

    /// What sign-in checks, by id or name.
    pub async fn operator_credentials(
        &self,
        ident: &str,
    ) -> Result<OperatorCredentials, StoreError> {
        let mut tx = self.pool.begin().await?;
        let operator = operator_tx(&mut tx, ident).await?;
        let row = sqlx::query(
            "SELECT password_hash, session_epoch, failed_signins, locked_until, \
             totp_secret_sealed FROM operators WHERE id = $1",
        )
        .bind(operator.id.clone())
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(OperatorCredentials {
            operator,
            password_hash: col(&row, "password_hash")?,
            session_epoch: col(&row, "session_epoch")?,
            failed_signins: col(&row, "failed_signins")?,
            locked_until_ms: col(&row, "locked_until")?,
            totp_secret_sealed: col(&row, "totp_secret_sealed")?,
        })
    }

    /// Runs one audited operator change: `apply` gets the transaction and the operator and
    /// says whether it changed anything (no change: nothing is written, no audit row). The
    /// audit detail gets the operator's `name` and, unless `apply` named them, its `pools`.
    async fn change_operator<F>(
        &self,
        actor: &Actor,
        ident: &str,
        action: &str,
        apply: F,
    ) -> Result<Changed<Operator>, StoreError>
    where
        F: for<'t> FnOnce(
            &'t mut Transaction<'static, Any>,
            &'t Operator,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<Option<serde_json::Value>, StoreError>>
                    + Send
                    + 't,
            >,
        >,
    {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let before = operator_tx(&mut tx, ident).await?;
        let Some(detail) = apply(&mut tx, &before).await? else {
            tx.rollback().await?;
            return Ok(Changed {
                changed: false,
                item: before,
            });
        };
        sqlx::query("UPDATE operators SET updated_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(before.id.clone())
            .execute(&mut *tx)
            .await?;
        let after = operator_tx(&mut tx, &before.id).await?;
        let mut detail = detail;
        if let Some(map) = detail.as_object_mut() {
            map.insert("name".into(), json!(after.name));
            // The row concerns the operator's pools, before and after (tenant isolation: the
            // admins of those pools read it).
            let mut pools: Vec<&String> = before.pools.iter().chain(&after.pools).collect();
            pools.sort();
            pools.dedup();
            map.entry("pools").or_insert_with(|| json!(pools));
        }
        audit(&mut tx, actor, action, Some(&after.id), detail, revision).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: after,
        })
    }

    /// Sets the role (and with it revokes every session: the epoch moves). An owner's pool
    /// rows are dropped (owners see all). Demoting the last enabled owner is refused
    /// ([`ConflictReason::LastOwner`]), checked in the transaction.
    pub async fn set_operator_role(
        &self,
        actor: &Actor,
        ident: &str,
        role: Role,
    ) -> Result<Changed<Operator>, StoreError> {
        self.change_operator(actor, ident, "operator.set_role", move |tx, op| {
            Box::pin(async move {
                if op.role == role {
                    return Ok(None);
                }
                sqlx::query(
                    "UPDATE operators SET role = $1, session_epoch = session_epoch + 1 \
                     WHERE id = $2",
                )
                .bind(role.as_str().to_owned())
                .bind(op.id.clone())
                .execute(&mut **tx)
                .await?;
                if role == Role::Owner {
                    sqlx::query("DELETE FROM operator_pools WHERE operator_id = $1")
                        .bind(op.id.clone())
                        .execute(&mut **tx)
                        .await?;
                }
                keep_an_owner_tx(tx, op).await?;
                Ok(Some(json!({"from": op.role, "to": role})))
            })
        })
        .await
    }

    /// Replaces the operator's pool assignment.
    pub async fn set_operator_pools(
        &self,
        actor: &Actor,
        ident: &str,
        pools: &[String],
    ) -> Result<Changed<Operator>, StoreError> {
        let mut wanted: Vec<String> = pools.to_vec();
        wanted.sort();
        wanted.dedup();
        self.change_operator(actor, ident, "operator.assign", move |tx, op| {
            Box::pin(async move {
                if op.pools == wanted {
                    return Ok(None);
                }
                if op.role == Role::Owner {
                    return Err(StoreError::invalid(
                        "pools",
                        "owners see every pool: they take no assignment",
                    ));
                }
                set_pools_tx(tx, "operator_pools", "operator_id", &op.id, &wanted, true).await?;
                Ok(Some(json!({"from": op.pools, "to": wanted})))
            })
        })
        .await
    }

    /// Disables or enables the operator; disabling revokes its sessions. Disabling the last
    /// enabled owner is refused ([`ConflictReason::LastOwner`]), checked in the transaction.
    pub async fn set_operator_disabled(
        &self,
        actor: &Actor,
        ident: &str,
        disabled: bool,
    ) -> Result<Changed<Operator>, StoreError> {
        let action = if disabled {
            "operator.disable"
        } else {
            "operator.enable"
        };
        self.change_operator(actor, ident, action, move |tx, op| {
            Box::pin(async move {
                if op.disabled == disabled {
                    return Ok(None);
                }
                sqlx::query(
                    "UPDATE operators SET disabled = $1, session_epoch = session_epoch + 1 \
                     WHERE id = $2",
                )
                .bind(i64::from(disabled))
                .bind(op.id.clone())
                .execute(&mut **tx)
                .await?;
                if disabled {
                    keep_an_owner_tx(tx, op).await?;
                }
                Ok(Some(json!({})))
            })
        })
        .await
    }

    /// Stores a new password hash, clears the lockout and revokes every session.
    pub async fn set_operator_password(
        &self,
        actor: &Actor,
        ident: &str,
        password_hash: &str,
    ) -> Result<Operator, StoreError> {
        let hash = password_hash.to_owned();
        let changed = self
            .change_operator(actor, ident, "operator.set_password", move |tx, op| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE operators SET password_hash = $1, failed_signins = 0, \
                         locked_until = NULL, session_epoch = session_epoch + 1 WHERE id = $2",
                    )
                    .bind(hash)
                    .bind(op.id.clone())
                    .execute(&mut **tx)
                    .await?;
                    Ok(Some(json!({})))
                })
            })
            .await?;
        Ok(changed.item)
    }

    /// Stores a TOTP secret, sealed for the operator with the key `sealing` chooses in this
    /// transaction (not yet enabled: [`Store::set_operator_totp_enabled`] after the operator
    /// proves it has it), replacing any earlier one, turning the factor off and forgetting the
    /// last step used (a new secret's codes start afresh).
    pub async fn enroll_operator_totp(
        &self,
        actor: &Actor,
        ident: &str,
        secret: &[u8],
        keys: &(impl Keys + ?Sized),
    ) -> Result<Operator, StoreError> {
        let secret = secret.to_vec();
        // Read again now: the closure below cannot hold `keys` across its await points.
        let ring = keys.reload();
        Ok(self
            .change_operator(actor, ident, "operator.totp_enroll", move |tx, op| {
                Box::pin(async move {
                    let key = sealing_key_tx(tx, &*ring).await?;
                    let sealed = key.seal(&op.id, TOTP_FIELD, &secret)?;
                    sqlx::query(
                        "UPDATE operators SET totp_secret_sealed = $1, totp_enabled = 0, \
                         totp_last_step = NULL WHERE id = $2",
                    )
                    .bind(sealed)
                    .bind(op.id.clone())
                    .execute(&mut **tx)
                    .await?;
                    Ok(Some(json!({})))
                })
            })
            .await?
            .item)
    }

    /// Turns the enrolled second factor on or off (off also drops the secret). Either way the
    /// operator's sessions end.
    pub async fn set_operator_totp_enabled(
        &self,
        actor: &Actor,
        ident: &str,
        enabled: bool,
    ) -> Result<Changed<Operator>, StoreError> {
        let action = if enabled {
            "operator.totp_enable"
        } else {
            "operator.totp_disable"
        };
        self.change_operator(actor, ident, action, move |tx, op| {
            Box::pin(async move {
                if op.totp_enabled == enabled {
                    return Ok(None);
                }
                let sql = if enabled {
                    "UPDATE operators SET totp_enabled = 1, session_epoch = session_epoch + 1 \
                     WHERE id = $1 AND totp_secret_sealed IS NOT NULL"
                } else {
                    "UPDATE operators SET totp_enabled = 0, totp_secret_sealed = NULL, \
                     totp_last_step = NULL, session_epoch = session_epoch + 1 WHERE id = $1"
                };
                let n = sqlx::query(sql)
                    .bind(op.id.clone())
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Err(StoreError::invalid(
                        "totp",
                        format!("operator {} has no enrolled second factor", op.name),
                    ));
                }
                Ok(Some(json!({})))
            })
        })
        .await
    }

    /// Revokes every session of the operator (sign-out everywhere; audited as
    /// `session.sign_out`).
    pub async fn bump_session_epoch(&self, actor: &Actor, ident: &str) -> Result<i64, StoreError> {
        self.change_operator(actor, ident, "session.sign_out", move |tx, op| {
            Box::pin(async move {
                sqlx::query("UPDATE operators SET session_epoch = session_epoch + 1 WHERE id = $1")
                    .bind(op.id.clone())
                    .execute(&mut **tx)
                    .await?;
                Ok(Some(json!({})))
            })
        })
        .await?;
        Ok(self.operator_credentials(ident).await?.session_epoch)
    }

    /// Counts a failed sign-in of the operator; at `max_failures` it locks for `lock_ms` (and
    /// the count restarts). Returns the lock end when locked.
    pub async fn record_operator_failure(
        &self,
        operator_id: &str,
        throttle: Throttle,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let failures: i64 = sqlx::query_scalar(
            "UPDATE operators SET failed_signins = failed_signins + 1 WHERE id = $1 \
             RETURNING failed_signins",
        )
        .bind(operator_id.to_owned())
        .fetch_one(&mut *tx)
        .await?;
        let locked = if failures >= throttle.max_failures {
            let until = now + throttle.lock_ms;
            sqlx::query("UPDATE operators SET failed_signins = 0, locked_until = $1 WHERE id = $2")
                .bind(until)
                .bind(operator_id.to_owned())
                .execute(&mut *tx)
                .await?;
            Some(until)
        } else {
            None
        };
        tx.commit().await?;
        Ok(locked)
    }

    /// A successful sign-in: counters reset, the time noted, and the audit row
    /// (`session.sign_in`, outcome `ok`, revision 0: nothing the snapshot reads changed) written
    /// in the same transaction. `detail` holds metadata only (its `pools` place the row).
    pub async fn record_sign_in(
        &self,
        actor: &Actor,
        operator_id: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE operators SET failed_signins = 0, locked_until = NULL, last_signin_at = $1 \
             WHERE id = $2",
        )
        .bind(now_ms())
        .bind(operator_id.to_owned())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "session.sign_in",
            Some(operator_id),
            detail,
            0,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses up TOTP time step `step` of the operator: true when it is later than every step
    /// used before (then it is noted), false for a replay (the same or an older step). One
    /// conditional update, so two uses of one code racing each other cannot both succeed.
    pub async fn use_totp_step(&self, operator_id: &str, step: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE operators SET totp_last_step = $1 \
             WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(operator_id.to_owned())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The client address's lock end, when it is locked now.
    pub async fn client_locked_until(&self, client: &str) -> Result<Option<i64>, StoreError> {
        let until: Option<Option<i64>> =
            sqlx::query_scalar("SELECT locked_until FROM signin_failures WHERE client = $1")
                .bind(client.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(until.flatten().filter(|u| *u > now_ms()))
    }

    /// Counts a failed sign-in from `client` in a fixed window; at `max_failures` within the
    /// window the client locks for `lock_ms`. Returns the lock end when locked.
    pub async fn record_client_failure(
        &self,
        client: &str,
        throttle: Throttle,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        // Read, then write: SQLite's write lock is taken first (a deferred transaction that
        // reads and then writes fails with "database is locked" at once, without waiting, when
        // another writer committed in between).
        let (mut tx, _) = self.begin_unpublished_write().await?;
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT window_start, failures FROM signin_failures WHERE client = $1")
                .bind(client.to_owned())
                .fetch_optional(&mut *tx)
                .await?;
        let (start, failures) = match row {
            Some((start, n)) if now - start < throttle.window_ms => (start, n + 1),
            _ => (now, 1),
        };
        let locked = (failures >= throttle.max_failures).then_some(now + throttle.lock_ms);
        sqlx::query(
            "INSERT INTO signin_failures (client, window_start, failures, locked_until) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (client) DO UPDATE SET window_start = $2, failures = $3, \
             locked_until = $4",
        )
        .bind(client.to_owned())
        .bind(start)
        .bind(if locked.is_some() { 0 } else { failures })
        .bind(locked)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(locked)
    }

    /// Stores a new API token's hash with its role and pools (every pool must exist).
    pub async fn create_api_token(
        &self,
        actor: &Actor,
        label: &str,
        token_hash_hex: &str,
        role: Role,
        pools: &[String],
        created_by: Option<&str>,
    ) -> Result<ApiToken, StoreError> {
        crate::tx::validate_label(label)?;
        if token_hash_hex.len() != 64 || hex::decode(token_hash_hex).is_err() {
            return Err(StoreError::invalid(
                "token_hash",
                "token hash must be 64 hex digits",
            ));
        }
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let id = util::new_id("tok")?;
        sqlx::query(
            "INSERT INTO api_tokens (id, label, token_hash, role, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.clone())
        .bind(label.to_owned())
        .bind(token_hash_hex.to_ascii_lowercase())
        .bind(role.as_str().to_owned())
        .bind(created_by.map(str::to_owned))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict(Entity::ApiToken, label, ConflictReason::NameTaken)
            } else {
                e.into()
            }
        })?;
        if role != Role::Owner {
            set_pools_tx(&mut tx, "api_token_pools", "token_id", &id, pools, false).await?;
        }
        let token = api_token_tx(&mut tx, &id).await?;
        audit(
            &mut tx,
            actor,
            "token.create",
            Some(&id),
            json!({"label": token.label, "role": token.role, "pools": token.pools}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM api_tokens ORDER BY created_at, id")
                .fetch_all(&mut *tx)
                .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(api_token_tx(&mut tx, &id).await?);
        }
        tx.rollback().await?;
        Ok(out)
    }

    /// An API token by id or label.
    pub async fn find_api_token(&self, ident: &str) -> Result<ApiToken, StoreError> {
        let mut tx = self.pool.begin().await?;
        let t = api_token_tx(&mut tx, ident).await;
        tx.rollback().await?;
        t
    }

    /// The token whose hash this is (revoked ones too: the caller checks), noting its use.
    pub async fn api_token_by_hash(
        &self,
        token_hash_hex: &str,
    ) -> Result<Option<ApiToken>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM api_tokens WHERE token_hash = $1")
                .bind(token_hash_hex.to_ascii_lowercase())
                .fetch_optional(&self.pool)
                .await?;
        let Some(id) = id else { return Ok(None) };
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id.clone())
            .execute(&self.pool)
            .await?;
        Ok(Some(self.find_api_token(&id).await?))
    }

    pub async fn revoke_api_token(
        &self,
        actor: &Actor,
        ident: &str,
    ) -> Result<Changed<ApiToken>, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let token = api_token_tx(&mut tx, ident).await?;
        if token.is_revoked() {
            tx.rollback().await?;
            return Ok(Changed {
                changed: false,
                item: token,
            });
        }
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(token.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "token.revoke",
            Some(&token.id),
            json!({"label": token.label, "role": token.role, "pools": token.pools}),
            revision,
        )
        .await?;
        let token = api_token_tx(&mut tx, &token.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counting failed sign-ins reads and then writes; beside other writers (here: each other,
    /// on a file with several connections) it must wait for the write lock, never fail with
    /// "database is locked", and lose no count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_failures_are_counted_beside_other_writers(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/cm.db", dir.path().display());
        let store = Store::open(&url).await?;
        let throttle = Throttle {
            max_failures: 1_000,
            window_ms: 3_600_000,
            lock_ms: 60_000,
        };
        let mut tasks = Vec::new();
        for task in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .record_client_failure(&format!("10.1.0.{task}"), throttle)
                        .await?;
                    store
                        .record_client_failure("10.1.0.shared", throttle)
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        for (client, expected) in [("10.1.0.0", 25), ("10.1.0.7", 25), ("10.1.0.shared", 200)] {
            let failures: i64 =
                sqlx::query_scalar("SELECT failures FROM signin_failures WHERE client = $1")
                    .bind(client.to_owned())
                    .fetch_one(&store.pool)
                    .await?;
            assert_eq!(failures, expected, "{client}");
        }
        Ok(())
    }
}
