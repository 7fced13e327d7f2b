//! Master key rotation, the store's part: recording the next key, re-sealing every sealed
//! secret under it, and switching to it (`engine::ops::secrets` runs the steps in order and
//! writes the key file; `docs/secrets.md` tells the whole story).
//!
//! Rules:
//! - the sealed secrets are the accounts' three tokens, the operators' TOTP secrets and the
//!   alert webhooks' signing secrets; each
//!   opens with the key of its blob's version, so the store is readable at every point as long
//!   as the keyring holds every version in use;
//! - re-sealing changes no plaintext: it bumps no revision and takes no `meta` row. Each row is
//!   one compare-and-swap statement (only if every blob is still the one read), so a token that
//!   a refresh wrote meanwhile is never overwritten: it is left for the next pass;
//! - the switch ([`Store::finish_key_rotation`]) holds the `meta` revision row like every
//!   sealing writer, checks that no secret is left under another version, and only then makes
//!   the next key current; if a writer sealed with the old key meanwhile, it switches nothing
//!   and says how many are left.

use serde_json::json;
use sqlx::{Any, Row, Transaction};

use crate::alerts::WEBHOOK_SECRET_FIELD;
use crate::audit::audit;
use crate::crypto::{blob_prefix, Keys, MasterKey};
use crate::error::StoreError;
use crate::sealing::{
    key_state_tx, record_first_key_tx, set_meta_tx, KeyMark, KeyState, CURRENT_FP, CURRENT_VERSION,
    NEXT_FP, NEXT_VERSION, TOTP_FIELD,
};
use crate::{Actor, Store};

/// The sealed columns of an account, by their associated-data field name.
const ACCOUNT_FIELDS: [&str; 3] = ["access_token", "refresh_token", "id_token"];

/// Which table a sealed row is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    Account,
    Operator,
    /// An alert webhook's signing secret.
    Webhook,
}

/// One row's sealed secrets as read, to be re-sealed (ciphertext only; `Debug` shows the owner).
#[derive(Clone)]
pub struct SealedRow {
    pub kind: SealedKind,
    pub id: String,
    /// (field, blob) in column order.
    blobs: Vec<(&'static str, Vec<u8>)>,
}

impl std::fmt::Debug for SealedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRow")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// `substr(COL, 1, N) <> $P`: the column's blob is not under the key version whose prefix is
/// bound at `$P` (N is the prefix length: 1 or 5).
fn not_under(column: &str, prefix_len: usize, param: usize) -> String {
    format!("substr({column}, 1, {prefix_len}) <> ${param}")
}

fn accounts_not_under(prefix_len: usize, param: usize) -> String {
    ACCOUNT_FIELDS
        .iter()
        .map(|f| not_under(&format!("sealed_{f}"), prefix_len, param))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Secrets not sealed under `version`, counted inside `tx`.
async fn count_not_under_tx(
    tx: &mut Transaction<'static, Any>,
    version: u32,
) -> Result<u64, StoreError> {
    let prefix = blob_prefix(version);
    let n = prefix.len();
    let accounts: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM accounts WHERE {}",
        accounts_not_under(n, 1)
    ))
    .bind(prefix.clone())
    .fetch_one(&mut **tx)
    .await?;
    let operators: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM operators WHERE totp_secret_sealed IS NOT NULL AND {}",
        not_under("totp_secret_sealed", n, 1)
    ))
    .bind(prefix.clone())
    .fetch_one(&mut **tx)
    .await?;
    let webhooks: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM alert_webhooks WHERE {}",
        not_under("sealed_secret", n, 1)
    ))
    .bind(prefix)
    .fetch_one(&mut **tx)
    .await?;
    Ok(u64::try_from(accounts + operators + webhooks).unwrap_or(0))
}

impl Store {
    /// How many rows (accounts, operators) hold a secret not sealed under key `version`.
    pub async fn count_sealed_not_under(&self, version: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = count_not_under_tx(&mut tx, version).await;
        tx.rollback().await?;
        n
    }

    /// Step 2 of a rotation: records `next` as the key being rotated to, `current` being the
    /// store's current key (recorded here if no secret was sealed yet). Idempotent. A different
    /// next key recorded by an earlier, abandoned attempt is replaced only when no secret is
    /// sealed under its version (else its key is needed: the error names the version).
    pub async fn start_key_rotation(
        &self,
        actor: &Actor,
        current: &MasterKey,
        next: &MasterKey,
    ) -> Result<KeyState, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let state = key_state_tx(&mut tx).await?;
        match state.current {
            None => record_first_key_tx(&mut tx, current).await?,
            Some(c) if !c.matches(current) => return Err(StoreError::MasterKeyMismatch),
            Some(_) => {}
        }
        if next.version() <= current.version() || next.fingerprint() == current.fingerprint() {
            return Err(StoreError::invalid(
                "master_key",
                format!(
                    "the next master key must be a new key with a version above {}",
                    current.version()
                ),
            ));
        }
        match state.next {
            Some(n) if n.matches(next) => {
                tx.rollback().await?;
                return Ok(state);
            }
            Some(n) => {
                let prefix = blob_prefix(n.version);
                let used: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM accounts WHERE NOT ({})",
                    accounts_not_under(prefix.len(), 1).replace(" OR ", " AND ")
                ))
                .bind(prefix.clone())
                .fetch_one(&mut *tx)
                .await?;
                let used_totp: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM operators WHERE totp_secret_sealed IS NOT NULL \
                     AND NOT ({})",
                    not_under("totp_secret_sealed", prefix.len(), 1)
                ))
                .bind(prefix.clone())
                .fetch_one(&mut *tx)
                .await?;
                let used_webhooks: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM alert_webhooks WHERE NOT ({})",
                    not_under("sealed_secret", prefix.len(), 1)
                ))
                .bind(prefix)
                .fetch_one(&mut *tx)
                .await?;
                if used + used_totp + used_webhooks > 0 {
                    return Err(crate::crypto::CryptoError::KeyNotHeld(n.version).into());
                }
            }
            None => {}
        }
        set_meta_tx(&mut tx, NEXT_FP, next.fingerprint()).await?;
        set_meta_tx(&mut tx, NEXT_VERSION, i64::from(next.version())).await?;
        audit(
            &mut tx,
            actor,
            "master_key.rotation_start",
            None,
            json!({"from_version": current.version(), "to_version": next.version()}),
            revision,
        )
        .await?;
        let state = key_state_tx(&mut tx).await?;
        tx.commit().await?;
        Ok(state)
    }

    /// Up to `limit` rows of `kind` after id `after` (in id order) holding a secret not sealed
    /// under `target`.
    pub async fn sealed_rows_not_under(
        &self,
        kind: SealedKind,
        target: &MasterKey,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SealedRow>, StoreError> {
        let prefix = target.blob_prefix();
        let n = prefix.len();
        let sql = match kind {
            SealedKind::Account => format!(
                "SELECT id, sealed_access_token, sealed_refresh_token, sealed_id_token \
                 FROM accounts WHERE id > $1 AND ({}) ORDER BY id LIMIT $3",
                accounts_not_under(n, 2)
            ),
            SealedKind::Operator => format!(
                "SELECT id, totp_secret_sealed FROM operators WHERE id > $1 \
                 AND totp_secret_sealed IS NOT NULL AND {} ORDER BY id LIMIT $3",
                not_under("totp_secret_sealed", n, 2)
            ),
            SealedKind::Webhook => format!(
                "SELECT id, sealed_secret FROM alert_webhooks WHERE id > $1 AND {} \
                 ORDER BY id LIMIT $3",
                not_under("sealed_secret", n, 2)
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(after.to_owned())
            .bind(prefix)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let blobs = match kind {
                    SealedKind::Account => ACCOUNT_FIELDS
                        .iter()
                        .map(|f| Ok((*f, r.try_get::<Vec<u8>, _>(format!("sealed_{f}").as_str())?)))
                        .collect::<Result<Vec<_>, sqlx::Error>>()?,
                    SealedKind::Operator => {
                        vec![(TOTP_FIELD, r.try_get::<Vec<u8>, _>("totp_secret_sealed")?)]
                    }
                    SealedKind::Webhook => {
                        vec![(
                            WEBHOOK_SECRET_FIELD,
                            r.try_get::<Vec<u8>, _>("sealed_secret")?,
                        )]
                    }
                };
                Ok(SealedRow { kind, id, blobs })
            })
            .collect()
    }

    /// Re-seals one row's secrets that are not under `target` (opened with `keys`), only if
    /// the row still holds exactly the blobs read: true when written, false when the row
    /// changed or went meanwhile (a refresh wrote new tokens: they stay, for the next pass).
    pub async fn reseal_row(
        &self,
        keys: &(impl Keys + ?Sized),
        target: &MasterKey,
        row: &SealedRow,
    ) -> Result<bool, StoreError> {
        let prefix = target.blob_prefix();
        let mut fresh = Vec::with_capacity(row.blobs.len());
        for (field, blob) in &row.blobs {
            if blob.starts_with(&prefix) {
                fresh.push(blob.clone());
            } else {
                let plain = keys.open(&row.id, field, blob)?;
                fresh.push(target.seal(&row.id, field, &plain)?);
            }
        }
        let sql = match row.kind {
            SealedKind::Account => {
                "UPDATE accounts SET sealed_access_token = $1, sealed_refresh_token = $2, \
                   sealed_id_token = $3 \
                 WHERE id = $4 AND sealed_access_token = $5 AND sealed_refresh_token = $6 \
                   AND sealed_id_token = $7"
            }
            SealedKind::Operator => {
                "UPDATE operators SET totp_secret_sealed = $1 \
                 WHERE id = $2 AND totp_secret_sealed = $3"
            }
            SealedKind::Webhook => {
                "UPDATE alert_webhooks SET sealed_secret = $1 WHERE id = $2 AND sealed_secret = $3"
            }
        };
        let mut q = sqlx::query(sql);
        for blob in fresh {
            q = q.bind(blob);
        }
        q = q.bind(row.id.clone());
        for (_, blob) in &row.blobs {
            q = q.bind(blob.clone());
        }
        Ok(q.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// The last store step of a rotation: holding the `meta` revision row (no writer can seal
    /// meanwhile), makes `target` (the recorded next key) current if no secret is left under
    /// another version. Returns how many rows are left (0: switched, or switched already).
    pub async fn finish_key_rotation(
        &self,
        actor: &Actor,
        target: &MasterKey,
    ) -> Result<u64, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let state = key_state_tx(&mut tx).await?;
        let target_mark = KeyMark::of(target);
        if state.current == Some(target_mark) && state.next.is_none() {
            tx.rollback().await?;
            return Ok(0);
        }
        if state.next != Some(target_mark) {
            return Err(StoreError::MasterKeyMismatch);
        }
        let left = count_not_under_tx(&mut tx, target.version()).await?;
        if left > 0 {
            tx.rollback().await?;
            return Ok(left);
        }
        set_meta_tx(&mut tx, CURRENT_FP, target.fingerprint()).await?;
        set_meta_tx(&mut tx, CURRENT_VERSION, i64::from(target.version())).await?;
        sqlx::query("DELETE FROM meta WHERE key IN ($1, $2)")
            .bind(NEXT_FP)
            .bind(NEXT_VERSION)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "master_key.rotation_finish",
            None,
            json!({"from_version": state.current.map(|c| c.version),
                   "to_version": target.version()}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(0)
    }
}
