//! Quota evidence: per-account windows, credits and plan, written compare-and-set on a version
//! (see `codexmesh_model::quota::merge`). Rules: a write bumps the revision only when the
//! caller says the evidence moved enough to change routing; expiring windows is one bumping
//! write for all of them. Uses only `rows` and `error`.

use std::collections::HashMap;

use sqlx::{Any, Transaction};

use crate::error::StoreError;
use crate::rows::{quota_from_row, NullableF64, QUOTA_COLS};
use crate::Store;
use codexmesh_model::records::{QuotaRecord, WindowKind};
use codexmesh_model::util::now_ms;

/// What a compare-and-set write of quota evidence did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWrite {
    /// Written; `Some(revision)` when it bumped the revision.
    Written(Option<i64>),
    /// Someone wrote since the caller read: read, merge and try again.
    Conflict,
    /// The account no longer exists.
    Gone,
}

/// Every account's quota evidence, inside a snapshot read.
pub(crate) async fn all_quota_tx(
    tx: &mut Transaction<'static, Any>,
) -> Result<HashMap<String, QuotaRecord>, StoreError> {
    sqlx::query(&format!("SELECT {QUOTA_COLS} FROM account_quota"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(quota_from_row)
        .collect()
}

impl Store {
    pub async fn quota(&self, account_id: &str) -> Result<Option<QuotaRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {QUOTA_COLS} FROM account_quota WHERE account_id = $1"
        ))
        .bind(account_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| quota_from_row(&r).map(|(_, q)| q)).transpose()
    }

    pub async fn all_quota(&self) -> Result<HashMap<String, QuotaRecord>, StoreError> {
        sqlx::query(&format!("SELECT {QUOTA_COLS} FROM account_quota"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(quota_from_row)
            .collect()
    }

    /// Writes `new` as the account's evidence if its stored version is still `expected`
    /// (None: no row yet). With `bump` the same transaction bumps the revision first.
    pub async fn write_quota(
        &self,
        account_id: &str,
        expected: Option<i64>,
        new: &QuotaRecord,
        bump: bool,
    ) -> Result<QuotaWrite, StoreError> {
        let (mut tx, revision) = if bump {
            let (tx, r) = self.begin_write().await?;
            (tx, Some(r))
        } else {
            (self.pool.begin().await?, None)
        };
        let w = |k: WindowKind| new.window(k).cloned();
        let (p, s) = (w(WindowKind::Primary), w(WindowKind::Secondary));
        let c = new.credits.clone();
        let version = expected.map_or(1, |v| v + 1);
        let values = "$2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                      $18, $19";
        let sql = match expected {
            None => format!(
                "INSERT INTO account_quota ({QUOTA_COLS}, updated_at) \
                 SELECT $1, {values} WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1) \
                 ON CONFLICT (account_id) DO NOTHING"
            ),
            Some(_) => "UPDATE account_quota SET primary_used_percent = $2, \
                   primary_window_minutes = $3, primary_resets_at = $4, primary_observed_at = $5, \
                   primary_source = $6, secondary_used_percent = $7, \
                   secondary_window_minutes = $8, secondary_resets_at = $9, \
                   secondary_observed_at = $10, secondary_source = $11, \
                   credits_has_credits = $12, credits_unlimited = $13, credits_balance = $14, \
                   credits_observed_at = $15, plan = $16, plan_observed_at = $17, \
                   version = $18, updated_at = $19 \
                 WHERE account_id = $1 AND version = $20"
                .to_owned(),
        };
        let mut q = sqlx::query(&sql)
            .bind(account_id.to_owned())
            .bind(NullableF64(p.as_ref().map(|x| x.used_percent)))
            .bind(p.as_ref().map(|x| x.window_minutes))
            .bind(p.as_ref().map(|x| x.resets_at_unix))
            .bind(p.as_ref().map(|x| x.observed_at_ms))
            .bind(p.as_ref().map(|x| x.source.clone()))
            .bind(NullableF64(s.as_ref().map(|x| x.used_percent)))
            .bind(s.as_ref().map(|x| x.window_minutes))
            .bind(s.as_ref().map(|x| x.resets_at_unix))
            .bind(s.as_ref().map(|x| x.observed_at_ms))
            .bind(s.as_ref().map(|x| x.source.clone()))
            .bind(c.as_ref().map(|x| i64::from(x.has_credits)))
            .bind(c.as_ref().map(|x| i64::from(x.unlimited)))
            .bind(c.as_ref().and_then(|x| x.balance.clone()))
            .bind(c.as_ref().map(|x| x.observed_at_ms))
            .bind(new.plan.clone())
            .bind(new.plan.as_ref().map(|_| new.plan_observed_at_ms))
            .bind(version)
            .bind(now_ms());
        if let Some(v) = expected {
            q = q.bind(v);
        }
        let done = q.execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            // Dropping the transaction rolls back the revision bump too.
            drop(tx);
            let exists: Option<String> =
                sqlx::query_scalar("SELECT id FROM accounts WHERE id = $1")
                    .bind(account_id.to_owned())
                    .fetch_optional(&self.pool)
                    .await?;
            return Ok(if exists.is_some() {
                QuotaWrite::Conflict
            } else {
                QuotaWrite::Gone
            });
        }
        tx.commit().await?;
        Ok(QuotaWrite::Written(revision))
    }

    /// Windows whose reset time has passed start over at 0 %: one bumping write for all of
    /// them (so the snapshot says so), or nothing when none is due. Returns the revision.
    pub async fn expire_quota_windows(&self, now_unix: i64) -> Result<Option<i64>, StoreError> {
        let due: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM account_quota WHERE \
               (primary_used_percent > 0 AND primary_resets_at > 0 AND primary_resets_at <= $1) \
               OR (secondary_used_percent > 0 AND secondary_resets_at > 0 \
                   AND secondary_resets_at <= $1)",
        )
        .bind(now_unix)
        .fetch_one(&self.pool)
        .await?;
        if due == 0 {
            return Ok(None);
        }
        let (mut tx, revision) = self.begin_write().await?;
        let now = now_ms();
        let mut changed = 0;
        for w in ["primary", "secondary"] {
            changed += sqlx::query(&format!(
                "UPDATE account_quota SET {w}_used_percent = 0, {w}_observed_at = $2, \
                   {w}_source = 'reset', version = version + 1, updated_at = $2 \
                 WHERE {w}_used_percent > 0 AND {w}_resets_at > 0 AND {w}_resets_at <= $1"
            ))
            .bind(now_unix)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if changed == 0 {
            return Ok(None); // someone else did it first; the drop undoes our bump
        }
        tx.commit().await?;
        Ok(Some(revision))
    }
}
