//! Outcomes: what Envoys report about each attempt, the request log built on them, the
//! all-time per-account counters and the inputs of health scores, and the log's retention.
//! Rules: none of this is snapshot input, so no revision bump and no audit row; counters move
//! in the same transaction as the outcomes they count. Uses only `rows` and `error`.

use std::collections::HashMap;

use sqlx::{Any, Transaction};

use crate::error::StoreError;
use crate::rows::{
    counters_from_row, logged_outcome_from_row, outcome_group_from_row, NullableF64,
    COUNTERS_SELECT, OUTCOME_COLS,
};
use crate::Store;
use codexmesh_model::records::{
    Counters, LoggedOutcome, OutcomeGroup, OutcomeRecord, RequestLogQuery,
};
use codexmesh_model::util::now_ms;

/// Adds a batch of outcomes to the all-time counters (same transaction as the outcomes).
/// Outcomes for accounts that no longer exist are skipped.
async fn bump_counters_tx(
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
                   error_source, fallback, retry_after, token_expires_at, strategy, route_reason, \
                   input_tokens, output_tokens, policy_refusal) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                   $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, \
                   $33)",
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
            .bind(NullableF64(o.primary.map(|_| p.used_percent)))
            .bind(o.primary.map(|_| p.window_minutes))
            .bind(o.primary.map(|_| p.resets_at_unix))
            .bind(NullableF64(o.secondary.map(|_| s.used_percent)))
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
            .bind((o.input_tokens != 0).then_some(o.input_tokens))
            .bind((o.output_tokens != 0).then_some(o.output_tokens))
            .bind(o.policy_refusal.clone())
            .execute(&mut *tx)
            .await?;
        }
        bump_counters_tx(&mut tx, outcomes, received).await?;
        crate::usage::record_usage_tx(&mut tx, outcomes, received).await?;
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
        let visible = match &q.visible_pool_ids {
            None => String::new(),
            Some(ids) if ids.is_empty() => " AND 1 = 0".to_owned(),
            Some(ids) => format!(
                " AND pool_id IN ({})",
                (0..ids.len())
                    .map(|i| format!("${}", i + 8))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let sql = format!(
            "SELECT {OUTCOME_COLS} FROM outcomes \
             WHERE ($1 = '' OR pool_id = $1) AND ($2 = '' OR account_id = $2) \
               AND ($3 = '' OR key_id = $3) AND ($4 = 0 OR id < $4) \
               AND ($6 = 0 OR status < 200 OR status > 299) AND received_at >= $7{visible} \
             ORDER BY id DESC LIMIT $5"
        );
        let mut query = sqlx::query(&sql)
            .bind(q.pool_id.clone().unwrap_or_default())
            .bind(q.account_id.clone().unwrap_or_default())
            .bind(q.key_id.clone().unwrap_or_default())
            .bind(q.before_id.unwrap_or(0))
            .bind(q.limit.max(0))
            .bind(i64::from(q.failed_only))
            .bind(q.since_ms.max(0));
        for id in q.visible_pool_ids.iter().flatten() {
            query = query.bind(id.clone());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(logged_outcome_from_row).collect()
    }

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
        rows.iter().map(outcome_group_from_row).collect()
    }

    pub async fn all_counters(&self) -> Result<HashMap<String, Counters>, StoreError> {
        let rows = sqlx::query(COUNTERS_SELECT).fetch_all(&self.pool).await?;
        rows.iter().map(counters_from_row).collect()
    }
}
