//! Invites (issue 15, "friends mode"): create, list, find, revoke, and redeem (which mints a pool
//! key).
//!
//! Rules this module keeps:
//! - the code reaches the store only as its SHA-256 hex; nothing here ever sees or returns it;
//! - redemption is one transaction that starts like every snapshot change ([`Store::begin_write`]:
//!   the `meta` row first, so redemptions queue on it in both backends) and claims a use with one
//!   conditional `UPDATE … SET uses = uses + 1 WHERE … uses < max_uses`, so concurrent
//!   redemptions can never exceed `max_uses`; a refused redemption writes nothing;
//! - the minted key is written with the invite's policy (`pool_keys.policy`, in the same
//!   transaction), and the redemption row records it ([`apply_invite_policy_tx`]);
//! - creating and revoking an invite change nothing a snapshot carries (unpublished writes);
//!   every change adds its audit row in its own transaction, with metadata only (the redeemer's
//!   name and the new key's id, never a code or a key).

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::audit::audit;
use crate::error::{ConflictReason, Entity, Lookup, StoreError};
use crate::keys::insert_key_tx;
use crate::rows::{col, col_u32, policy_column};
use crate::tx::{pool_by_name_tx, resolve_key_tx};
use crate::{Actor, Store};
use codexmesh_model::invites::{invite_status, Invite, InviteStatus};
use codexmesh_model::keys::RawKey;
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::records::{Changed, PoolKey};
use codexmesh_model::util::{self, now_ms};

const INVITE_SELECT: &str = "SELECT i.id AS id, i.pool_id AS pool_id, p.name AS pool, \
     i.label AS label, i.policy AS policy, i.max_uses AS max_uses, i.uses AS uses, \
     i.expires_at AS expires_at, i.created_by AS created_by, i.created_at AS created_at, \
     i.revoked_at AS revoked_at FROM invites i JOIN pools p ON p.id = i.pool_id";

/// What a new invite is (the code already hashed by the caller).
#[derive(Debug, Clone)]
pub struct NewInvite<'a> {
    pub pool: &'a str,
    pub label: Option<&'a str>,
    pub code_hash_hex: &'a str,
    pub policy: &'a KeyPolicy,
    pub max_uses: u32,
    pub expires_at_ms: i64,
}

/// A redeemed invite: the invite after the use, the new key and its secret (shown once).
#[derive(Debug)]
pub struct Redeemed {
    pub invite: Invite,
    pub key: PoolKey,
    pub secret: RawKey,
}

fn policy_json(policy: &KeyPolicy) -> Result<Option<String>, StoreError> {
    if policy.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(policy)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a key policy: {e}")))
}

fn invite_from_row(row: &AnyRow, now: i64) -> Result<Invite, StoreError> {
    let id: String = col(row, "id")?;
    let policy = match col::<Option<String>>(row, "policy")? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("invite {id}: policy: {e}")))?,
        None => KeyPolicy::default(),
    };
    let max_uses = col_u32(row, "max_uses")?;
    let uses = col_u32(row, "uses")?;
    let expires_at_ms: i64 = col(row, "expires_at")?;
    let revoked_at_ms: Option<i64> = col(row, "revoked_at")?;
    Ok(Invite {
        pool_id: col(row, "pool_id")?,
        pool: col(row, "pool")?,
        label: col(row, "label")?,
        policy,
        max_uses,
        uses,
        uses_left: max_uses.saturating_sub(uses),
        expires_at_ms,
        status: invite_status(revoked_at_ms.is_some(), uses, max_uses, expires_at_ms, now),
        created_by: col(row, "created_by")?,
        created_at_ms: col(row, "created_at")?,
        revoked_at_ms,
        id,
    })
}

async fn invite_tx(tx: &mut Transaction<'static, Any>, id: &str) -> Result<Invite, StoreError> {
    let row = sqlx::query(&format!("{INVITE_SELECT} WHERE i.id = $1"))
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Invite, id, Lookup::Id))?;
    invite_from_row(&row, now_ms())
}

/// Records who redeemed `invite` and the policy their key was minted with (the key's own
/// `pool_keys.policy` is written with the key, from the same invite policy; this row keeps what
/// the invite granted even after an operator changes the key's policy).
async fn apply_invite_policy_tx(
    tx: &mut Transaction<'static, Any>,
    invite: &Invite,
    key_id: &str,
    name: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO invite_redemptions (invite_id, key_id, name, key_policy, redeemed_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(invite.id.clone())
    .bind(key_id.to_owned())
    .bind(name.to_owned())
    .bind(policy_json(&invite.policy)?)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new invite (its code only as the given hash) and audits `invite.create`.
    pub async fn create_invite(
        &self,
        actor: &Actor,
        new: &NewInvite<'_>,
    ) -> Result<Invite, StoreError> {
        if new.code_hash_hex.len() != 64 || hex::decode(new.code_hash_hex).is_err() {
            return Err(StoreError::invalid(
                "code_hash",
                "an invite code hash must be 64 hex digits",
            ));
        }
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let pool = pool_by_name_tx(&mut tx, new.pool).await?;
        let id = util::new_id("inv")?;
        sqlx::query(
            "INSERT INTO invites (id, pool_id, label, code_hash, policy, max_uses, uses, \
             expires_at, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9)",
        )
        .bind(id.clone())
        .bind(pool.id.clone())
        .bind(new.label.map(str::to_owned))
        .bind(new.code_hash_hex.to_ascii_lowercase())
        .bind(policy_json(new.policy)?)
        .bind(i64::from(new.max_uses))
        .bind(new.expires_at_ms)
        .bind(actor.name.clone())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "invite.create",
            Some(&id),
            json!({
                "pool": pool.name,
                "label": new.label,
                "max_uses": new.max_uses,
                "expires_at_ms": new.expires_at_ms,
                "policy": new.policy,
            }),
            revision,
        )
        .await?;
        let invite = invite_tx(&mut tx, &id).await?;
        tx.commit().await?;
        Ok(invite)
    }

    /// Invites (of `pool`, or all), newest first.
    pub async fn list_invites(&self, pool: Option<&str>) -> Result<Vec<Invite>, StoreError> {
        let rows = match pool {
            Some(name) => {
                self.pool_by_name(name).await?;
                sqlx::query(&format!(
                    "{INVITE_SELECT} WHERE p.name = $1 ORDER BY i.created_at DESC, i.id"
                ))
                .bind(name.to_owned())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{INVITE_SELECT} ORDER BY i.created_at DESC, i.id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let now = now_ms();
        rows.iter().map(|r| invite_from_row(r, now)).collect()
    }

    /// Revokes an invite (no more redemptions; keys minted from it stay). Revoking a revoked
    /// invite changes nothing.
    pub async fn revoke_invite(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<Changed<Invite>, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let invite = invite_tx(&mut tx, id).await?;
        if invite.revoked_at_ms.is_some() {
            return Ok(Changed {
                changed: false,
                item: invite,
            });
        }
        sqlx::query("UPDATE invites SET revoked_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(invite.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "invite.revoke",
            Some(&invite.id),
            json!({"pool": invite.pool, "label": invite.label, "uses": invite.uses}),
            revision,
        )
        .await?;
        let invite = invite_tx(&mut tx, &invite.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: invite,
        })
    }

    /// Redeems the invite whose code hashes to `code_hash_hex` for `name`: claims one use and
    /// mints a key labelled `name` in the invite's pool with the invite's policy, in one
    /// transaction (audited `invite.redeem` and `key.create`). Unknown code: not found (no
    /// hint); revoked, used up or expired: a conflict saying which; an archived pool: a
    /// conflict. A refusal writes nothing.
    pub async fn redeem_invite(
        &self,
        actor: &Actor,
        code_hash_hex: &str,
        name: &str,
    ) -> Result<Redeemed, StoreError> {
        let secret = RawKey::generate()?;
        let (mut tx, revision) = self.begin_write().await?;
        let now = now_ms();
        let claimed = sqlx::query(
            "UPDATE invites SET uses = uses + 1 \
             WHERE code_hash = $1 AND revoked_at IS NULL AND expires_at > $2 AND uses < max_uses \
             RETURNING id",
        )
        .bind(code_hash_hex.to_ascii_lowercase())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(claimed) = claimed else {
            let row = sqlx::query(&format!("{INVITE_SELECT} WHERE i.code_hash = $1"))
                .bind(code_hash_hex.to_ascii_lowercase())
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            let Some(row) = row else {
                return Err(StoreError::not_found(
                    Entity::Invite,
                    "(given)",
                    Lookup::Valid,
                ));
            };
            let invite = invite_from_row(&row, now)?;
            let status = match invite.status {
                // Claimed by nobody yet still active: it expired between the two statements.
                InviteStatus::Active => InviteStatus::Expired,
                other => other,
            };
            return Err(StoreError::conflict(
                Entity::Invite,
                invite.id,
                ConflictReason::InviteClosed(status),
            ));
        };
        let id: String = col(&claimed, "id")?;
        let invite = invite_tx(&mut tx, &id).await?;
        let pool = pool_by_name_tx(&mut tx, &invite.pool).await?;
        if pool.archived_at_ms.is_some() {
            return Err(StoreError::conflict(
                Entity::Pool,
                pool.name,
                ConflictReason::Archived,
            ));
        }
        let key_policy = policy_column(Some(&invite.policy))?;
        let (key_id, _) = insert_key_tx(
            &mut tx,
            &pool,
            Some(name),
            false,
            &secret.hash_hex(),
            key_policy,
        )
        .await?;
        apply_invite_policy_tx(&mut tx, &invite, &key_id, name, now).await?;
        audit(
            &mut tx,
            actor,
            "key.create",
            Some(&key_id),
            json!({"pool": pool.name, "label": name, "operator": false, "invite": invite.id,
                   "policy": Some(&invite.policy).filter(|p| !p.is_empty())}),
            revision,
        )
        .await?;
        audit(
            &mut tx,
            actor,
            "invite.redeem",
            Some(&invite.id),
            json!({
                "pool": pool.name,
                "name": name,
                "key_id": key_id,
                "uses": invite.uses,
                "max_uses": invite.max_uses,
            }),
            revision,
        )
        .await?;
        let key = resolve_key_tx(&mut tx, &key_id).await?;
        tx.commit().await?;
        Ok(Redeemed {
            invite,
            key,
            secret,
        })
    }

    /// The policy recorded for a key minted from an invite (None: not minted from one, or
    /// minted with no limits).
    pub async fn invite_key_policy(&self, key_id: &str) -> Result<Option<KeyPolicy>, StoreError> {
        let text: Option<Option<String>> =
            sqlx::query_scalar("SELECT key_policy FROM invite_redemptions WHERE key_id = $1")
                .bind(key_id.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        text.flatten()
            .map(|t| {
                serde_json::from_str(&t)
                    .map_err(|e| StoreError::Corrupt(format!("key {key_id}: invite policy: {e}")))
            })
            .transpose()
    }
}
