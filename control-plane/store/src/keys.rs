//! API keys: issuing (only the hash is stored), listing, revoking, finding by id or label (a
//! key's routing override changes in `routing`). Rules: every write is one bumping transaction
//! with an audit row; the raw key never reaches the store.

use serde_json::json;

use crate::audit::audit;
use crate::error::{ConflictReason, Entity, StoreError};
use crate::rows::{key_from_row, policy_column, KEY_SELECT};
use crate::tx::{is_unique_violation, pool_by_name_tx, resolve_key_tx, validate_label};
use crate::{Actor, Store};
use codexmesh_model::keys::RawKey;
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::records::{Changed, KeyStatus, PoolKey};
use codexmesh_model::util::{self, now_ms};

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
        self.issue_key_with_policy(actor, pool, label, operator, None)
            .await
    }

    /// [`Store::issue_key`] with the key's policy written in the same transaction (checked
    /// with [`KeyPolicy::validate`] first).
    pub async fn issue_key_with_policy(
        &self,
        actor: &Actor,
        pool: &str,
        label: Option<&str>,
        operator: bool,
        policy: Option<&KeyPolicy>,
    ) -> Result<(PoolKey, RawKey), StoreError> {
        let raw = RawKey::generate()?;
        let key = self
            .create_key_with_policy(actor, pool, label, operator, &raw.hash_hex(), policy)
            .await?;
        Ok((key, raw))
    }

    /// Stores a new key's hash. The caller generated the raw key and shows it once.
    pub async fn create_key(
        &self,
        actor: &Actor,
        pool_name: &str,
        label: Option<&str>,
        operator: bool,
        key_hash_hex: &str,
    ) -> Result<PoolKey, StoreError> {
        self.create_key_with_policy(actor, pool_name, label, operator, key_hash_hex, None)
            .await
    }

    /// [`Store::create_key`] with the key's policy (None or empty: none).
    pub async fn create_key_with_policy(
        &self,
        actor: &Actor,
        pool_name: &str,
        label: Option<&str>,
        operator: bool,
        key_hash_hex: &str,
        policy: Option<&KeyPolicy>,
    ) -> Result<PoolKey, StoreError> {
        if let Some(p) = policy {
            check_policy(p)?;
        }
        let policy_json = policy_column(policy)?;
        if let Some(l) = label {
            validate_label(l)?;
        }
        if key_hash_hex.len() != 64 || hex::decode(key_hash_hex).is_err() {
            return Err(StoreError::invalid(
                "key_hash",
                "key hash must be 64 hex digits",
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
            "INSERT INTO pool_keys (id, pool_id, label, key_hash, status, operator, created_at, \
               policy) \
             VALUES ($1, $2, $3, $4, 'active', $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(pool.id.clone())
        .bind(label.clone())
        .bind(key_hash_hex.to_ascii_lowercase())
        .bind(i64::from(operator))
        .bind(now_ms())
        .bind(policy_json)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict(
                    Entity::Key,
                    key_hash_hex.to_ascii_lowercase(),
                    ConflictReason::HashTaken,
                )
            } else {
                e.into()
            }
        })?;
        audit(
            &mut tx,
            actor,
            "key.create",
            Some(&id),
            json!({"pool": pool.name, "label": label, "operator": operator,
                   "policy": policy.filter(|p| !p.is_empty())}),
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

    /// Gives an active key a new secret: the same id, label, pool and routing, a new hash (the
    /// old secret stops working with the next snapshot). Returns the raw key, shown once.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        ident: &str,
    ) -> Result<(PoolKey, RawKey), StoreError> {
        let raw = RawKey::generate()?;
        let (mut tx, revision) = self.begin_write().await?;
        let key = resolve_key_tx(&mut tx, ident).await?;
        if key.status == KeyStatus::Revoked {
            return Err(StoreError::conflict(
                Entity::Key,
                key.id,
                ConflictReason::Revoked,
            ));
        }
        sqlx::query("UPDATE pool_keys SET key_hash = $1 WHERE id = $2")
            .bind(raw.hash_hex())
            .bind(key.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "key.rotate",
            Some(&key.id),
            json!({"pool": key.pool, "label": key.label}),
            revision,
        )
        .await?;
        let key = resolve_key_tx(&mut tx, &key.id).await?;
        tx.commit().await?;
        Ok((key, raw))
    }

    /// Replaces the key's policy (`policy` empty: the key has none). Checked with
    /// [`KeyPolicy::validate`]; unchanged when equal (no revision bump, no audit row).
    pub async fn set_key_policy(
        &self,
        actor: &Actor,
        ident: &str,
        policy: &KeyPolicy,
    ) -> Result<Changed<PoolKey>, StoreError> {
        check_policy(policy)?;
        let (mut tx, revision) = self.begin_write().await?;
        let key = resolve_key_tx(&mut tx, ident).await?;
        let wanted = (!policy.is_empty()).then_some(policy);
        if key.policy.as_ref() == wanted {
            return Ok(Changed {
                changed: false,
                item: key,
            });
        }
        sqlx::query("UPDATE pool_keys SET policy = $1 WHERE id = $2")
            .bind(policy_column(wanted)?)
            .bind(key.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "key.set_policy",
            Some(&key.id),
            json!({"pool": key.pool, "label": key.label, "from": key.policy, "to": wanted}),
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

    /// A key by id or label (a label must be unique).
    pub async fn find_key(&self, ident: &str) -> Result<PoolKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key = resolve_key_tx(&mut tx, ident).await;
        tx.rollback().await?;
        key
    }
}

/// The store's check of a policy: the model's rule, the field named `policy.<field>`.
pub(crate) fn check_policy(policy: &KeyPolicy) -> Result<(), StoreError> {
    policy.validate().map_err(|e| StoreError::InvalidPath {
        field: format!("policy.{}", e.field),
        message: format!("policy.{e}"),
    })
}
