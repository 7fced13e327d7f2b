//! Store operations for the account lifecycle: leases, token refresh, quota evidence, health and
//! activity counters, watched-folder provenance.
//!
//! Revision rule: a write bumps `meta.revision` (and so reaches every Envoy) only when it changes
//! what routing sees: new tokens, a state change, quota evidence that moved meaningfully (see
//! `codexmesh_model::quota::merge`), a published health score that moved (see `crate::health`). Leases,
//! refresh bookkeeping and counters never bump.

use std::collections::HashMap;

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use super::ops::{account_from_row, resolve_account_tx, ACCOUNT_SELECT};
use super::{
    audit, col, col_bool, Account, AccountSecrets, Actor, Counters, CreditsEvidence, Lease,
    NullableF64, OutcomeGroup, OutcomeRecord, QuotaRecord, RefreshedTokens, Store, StoreError,
    WindowEvidence,
};
use crate::crypto::MasterKey;
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

const QUOTA_COLS: &str = "account_id, primary_used_percent, primary_window_minutes, \
     primary_resets_at, primary_observed_at, primary_source, secondary_used_percent, \
     secondary_window_minutes, secondary_resets_at, secondary_observed_at, secondary_source, \
     credits_has_credits, credits_unlimited, credits_balance, credits_observed_at, plan, \
     plan_observed_at, version";

fn window_from_row(row: &AnyRow, prefix: &str) -> Result<Option<WindowEvidence>, StoreError> {
    let used: Option<f64> = col(row, &format!("{prefix}_used_percent"))?;
    let Some(used_percent) = used else {
        return Ok(None);
    };
    Ok(Some(WindowEvidence {
        used_percent,
        window_minutes: col::<Option<i64>>(row, &format!("{prefix}_window_minutes"))?.unwrap_or(0),
        resets_at_unix: col::<Option<i64>>(row, &format!("{prefix}_resets_at"))?.unwrap_or(0),
        observed_at_ms: col::<Option<i64>>(row, &format!("{prefix}_observed_at"))?.unwrap_or(0),
        source: col::<Option<String>>(row, &format!("{prefix}_source"))?.unwrap_or_default(),
    }))
}

fn quota_from_row(row: &AnyRow) -> Result<(String, QuotaRecord), StoreError> {
    let credits_seen: Option<i64> = col(row, "credits_observed_at")?;
    let credits = match credits_seen {
        Some(observed_at_ms) => Some(CreditsEvidence {
            has_credits: col::<Option<i64>>(row, "credits_has_credits")?.unwrap_or(0) != 0,
            unlimited: col::<Option<i64>>(row, "credits_unlimited")?.unwrap_or(0) != 0,
            balance: col(row, "credits_balance")?,
            observed_at_ms,
        }),
        None => None,
    };
    Ok((
        col(row, "account_id")?,
        QuotaRecord {
            primary: window_from_row(row, "primary")?,
            secondary: window_from_row(row, "secondary")?,
            credits,
            plan: col(row, "plan")?,
            plan_observed_at_ms: col::<Option<i64>>(row, "plan_observed_at")?.unwrap_or(0),
            version: col(row, "version")?,
        },
    ))
}

/// Every account's quota evidence, inside a snapshot read.
pub(super) async fn all_quota_tx(
    tx: &mut Transaction<'static, Any>,
) -> Result<HashMap<String, QuotaRecord>, StoreError> {
    sqlx::query(&format!("SELECT {QUOTA_COLS} FROM account_quota"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(quota_from_row)
        .collect()
}

/// Adds a batch of outcomes to the all-time counters (same transaction as the outcomes).
/// Outcomes for accounts that no longer exist are skipped.
pub(super) async fn bump_counters_tx(
    tx: &mut Transaction<'static, Any>,
    outcomes: &[OutcomeRecord],
    now: i64,
) -> Result<(), StoreError> {
    let mut per: HashMap<&str, Counters> = HashMap::new();
    for o in outcomes.iter().filter(|o| !o.account_id.is_empty()) {
        let c = per.entry(o.account_id.as_str()).or_default();
        c.requests += 1;
        if codexmesh_model::health::classify(o.status, o.error_source.as_deref())
            == codexmesh_model::health::Class::Success
        {
            c.successes += 1;
            if o.fallback {
                c.fallbacks_served += 1;
            }
        }
    }
    for (account_id, c) in per {
        sqlx::query(
            "INSERT INTO account_stats (account_id, requests, successes, fallbacks_served, \
               updated_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1) \
             ON CONFLICT (account_id) DO UPDATE SET \
               requests = account_stats.requests + excluded.requests, \
               successes = account_stats.successes + excluded.successes, \
               fallbacks_served = account_stats.fallbacks_served + excluded.fallbacks_served, \
               updated_at = excluded.updated_at",
        )
        .bind(account_id.to_owned())
        .bind(c.requests)
        .bind(c.successes)
        .bind(c.fallbacks_served)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    // ---- leases ----

    /// Takes (or renews) lease `name` for `holder` until now + `ttl_ms`, when it is free,
    /// expired, or already ours. One conditional upsert: atomic on SQLite and Postgres.
    pub async fn try_acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
               expires_at = excluded.expires_at \
             WHERE leases.expires_at <= $4 OR leases.holder = excluded.holder",
        )
        .bind(name.to_owned())
        .bind(holder.to_owned())
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a lease back (only if `holder` still holds it).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name.to_owned())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT name, holder, expires_at FROM leases WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Lease {
                name: col(&r, "name")?,
                holder: col(&r, "holder")?,
                expires_at_ms: col(&r, "expires_at")?,
            })
        })
        .transpose()
    }

    // ---- accounts and tokens ----

    /// An account by id or label (several label matches are an error naming them).
    pub async fn account(&self, ident: &str) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let account = resolve_account_tx(&mut tx, ident).await?;
        tx.commit().await?;
        Ok(account)
    }

    /// [`Store::account`] with its membership in pool `pool` in view; without a pool, an
    /// account in several pools is an error asking for one.
    pub async fn account_in_pool(
        &self,
        ident: &str,
        pool: Option<&str>,
    ) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let account = super::ops::resolve_account_for_pool_tx(&mut tx, ident, pool).await;
        tx.rollback().await?;
        account
    }

    /// An account (by id) with its three tokens opened under `key`.
    pub async fn account_secrets(
        &self,
        id: &str,
        key: &MasterKey,
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
            .ok_or_else(|| StoreError::NotFound(format!("no account with id {id:?}")))?;
        let mut account = [account_from_row(&row)?];
        let mut tx = self.pool.begin().await?;
        super::ops::attach_memberships_tx(&mut tx, &mut account, Some(id), None).await?;
        tx.rollback().await?;
        let [account] = account;
        let open = |field: &str| -> Result<String, StoreError> {
            let sealed: Vec<u8> = col(&row, &format!("sealed_{field}"))?;
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
        key: &MasterKey,
    ) -> Result<i64, StoreError> {
        let access = key.seal_str(id, "access_token", &tokens.access_token)?;
        let refresh = key.seal_str(id, "refresh_token", &tokens.refresh_token)?;
        let id_tok = key.seal_str(id, "id_token", &tokens.id_token)?;
        let (mut tx, revision) = self.begin_write().await?;
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
            return Err(StoreError::NotFound(format!(
                "account {id} was removed while it was being refreshed"
            )));
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
            return Err(StoreError::NotFound(format!("no account with id {id:?}")));
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

    // ---- quota evidence ----

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
        let w = |k: super::WindowKind| new.window(k).cloned();
        let (p, s) = (
            w(super::WindowKind::Primary),
            w(super::WindowKind::Secondary),
        );
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

    // ---- health and counters ----

    /// Outcomes received since `since_ms`, grouped by account, status, error source, fallback
    /// and whether they are at least as new as `recent_since_ms`.
    pub async fn outcome_groups(
        &self,
        since_ms: i64,
        recent_since_ms: i64,
    ) -> Result<Vec<OutcomeGroup>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, status, error_source, fallback, \
               CAST(CASE WHEN received_at >= $2 THEN 1 ELSE 0 END AS BIGINT) AS recent, \
               CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(latency_ms) AS BIGINT) AS latency \
             FROM outcomes WHERE received_at >= $1 \
             GROUP BY 1, 2, 3, 4, 5",
        )
        .bind(since_ms)
        .bind(recent_since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutcomeGroup {
                    account_id: col(r, "account_id")?,
                    status: col(r, "status")?,
                    error_source: col(r, "error_source")?,
                    fallback: col_bool(r, "fallback")?,
                    recent: col_bool(r, "recent")?,
                    count: col(r, "n")?,
                    latency_sum_ms: col::<Option<i64>>(r, "latency")?.unwrap_or(0),
                })
            })
            .collect()
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

    pub async fn all_counters(&self) -> Result<HashMap<String, Counters>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, requests, successes, fallbacks_served FROM account_stats",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    col(r, "account_id")?,
                    Counters {
                        requests: col(r, "requests")?,
                        successes: col(r, "successes")?,
                        fallbacks_served: col(r, "fallbacks_served")?,
                    },
                ))
            })
            .collect()
    }
}
