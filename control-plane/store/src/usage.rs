//! What keys used (issue 15): tokens per key per UTC day and week, and the quota-share
//! attribution state (last evidence per account, per-key use since it, attributed points).
//!
//! Rules: written in the transaction that stores the outcomes they come from
//! ([`record_usage_tx`]), never a snapshot input by themselves (no revision bump: the usage
//! push worker decides when a snapshot must carry new counts); one row per key for tokens (a
//! report of a later day or week starts that count over, an earlier one is not counted);
//! attribution follows `codexmesh_model::usage` and keeps points for 7 days
//! ([`Store::prune_share_points`]). Policy refusals (no account) count nothing here.

use std::collections::{BTreeMap, HashMap};

use sqlx::{Any, Transaction};

use crate::error::StoreError;
use crate::rows::{col, NullableF64};
use crate::Store;
use codexmesh_model::records::{AccountWithToken, OutcomeRecord, PoolKey, QuotaWindowRecord};
use codexmesh_model::usage::{
    day_start, split, week_start, window_delta, KeyUsageView, PendingUse, ShareWindow, TokenCount,
    WindowMark,
};
use codexmesh_model::util::now_ms;

/// One attributed point row.
#[derive(Debug, Clone, PartialEq)]
pub struct SharePoint {
    pub key_id: String,
    pub window: ShareWindow,
    pub at_ms: i64,
    pub points: f64,
}

fn tokens(o: &OutcomeRecord) -> u64 {
    u64::try_from(o.input_tokens.max(0))
        .unwrap_or(0)
        .saturating_add(u64::try_from(o.output_tokens.max(0)).unwrap_or(0))
}

fn mark(w: Option<&QuotaWindowRecord>) -> Option<WindowMark> {
    w.map(|w| WindowMark {
        used_percent: w.used_percent,
        resets_at_unix: w.resets_at_unix,
    })
}

/// The last evidence stored for an account: (primary, secondary).
type Marks = (Option<WindowMark>, Option<WindowMark>);

/// Counts the batch's tokens per key and runs the share attribution for its accounts.
pub(crate) async fn record_usage_tx(
    tx: &mut Transaction<'static, Any>,
    outcomes: &[OutcomeRecord],
    received_ms: i64,
) -> Result<(), StoreError> {
    // Tokens per (key, day, week).
    let mut per: BTreeMap<(&str, i64, i64), u64> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.key_id.is_empty()) {
        let n = tokens(o);
        if n == 0 {
            continue;
        }
        let at = if o.started_at_ms > 0 {
            o.started_at_ms
        } else {
            received_ms
        }
        .div_euclid(1000);
        *per.entry((o.key_id.as_str(), day_start(at), week_start(at)))
            .or_default() += n;
    }
    for ((key_id, day, week), n) in per {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO key_token_usage (key_id, day_start, tokens_today, week_start, \
               tokens_this_week, updated_at) VALUES ($1, $2, $3, $4, $3, $5) \
             ON CONFLICT (key_id) DO UPDATE SET \
               tokens_today = CASE \
                 WHEN excluded.day_start = key_token_usage.day_start \
                   THEN key_token_usage.tokens_today + excluded.tokens_today \
                 WHEN excluded.day_start > key_token_usage.day_start THEN excluded.tokens_today \
                 ELSE key_token_usage.tokens_today END, \
               day_start = CASE WHEN excluded.day_start > key_token_usage.day_start \
                 THEN excluded.day_start ELSE key_token_usage.day_start END, \
               tokens_this_week = CASE \
                 WHEN excluded.week_start = key_token_usage.week_start \
                   THEN key_token_usage.tokens_this_week + excluded.tokens_this_week \
                 WHEN excluded.week_start > key_token_usage.week_start \
                   THEN excluded.tokens_this_week \
                 ELSE key_token_usage.tokens_this_week END, \
               week_start = CASE WHEN excluded.week_start > key_token_usage.week_start \
                 THEN excluded.week_start ELSE key_token_usage.week_start END, \
               updated_at = excluded.updated_at",
        )
        .bind(key_id.to_owned())
        .bind(day)
        .bind(n)
        .bind(week)
        .bind(received_ms)
        .execute(&mut **tx)
        .await?;
    }
    attribute_tx(tx, outcomes, received_ms).await
}

/// The share attribution for the batch's accounts, in the order their requests started.
async fn attribute_tx(
    tx: &mut Transaction<'static, Any>,
    outcomes: &[OutcomeRecord],
    received_ms: i64,
) -> Result<(), StoreError> {
    let mut by_account: BTreeMap<&str, Vec<&OutcomeRecord>> = BTreeMap::new();
    for o in outcomes
        .iter()
        .filter(|o| !o.account_id.is_empty() && !o.key_id.is_empty())
    {
        by_account.entry(o.account_id.as_str()).or_default().push(o);
    }
    for (account_id, mut list) in by_account {
        list.sort_by_key(|o| o.started_at_ms);
        let mut marks = load_marks(tx, account_id).await?;
        let mut pending = load_pending(tx, account_id).await?;
        let mut points: Vec<SharePoint> = Vec::new();
        let mut marks_moved = false;
        for o in list {
            let p = pending.entry(o.key_id.clone()).or_insert((0, 0));
            p.0 = p.0.saturating_add(tokens(o));
            p.1 += 1;
            let (primary, secondary) = (mark(o.primary.as_ref()), mark(o.secondary.as_ref()));
            if primary.is_none() && secondary.is_none() {
                continue;
            }
            let at_ms = o
                .quota_observed_at_ms
                .filter(|t| *t > 0)
                .unwrap_or(received_ms);
            let uses: Vec<PendingUse> = pending
                .iter()
                .map(|(k, (t, r))| PendingUse {
                    key_id: k.clone(),
                    tokens: *t,
                    requests: *r,
                })
                .collect();
            for (window, now, before) in [
                (ShareWindow::Primary, primary, &mut marks.0),
                (ShareWindow::Secondary, secondary, &mut marks.1),
            ] {
                let Some(now) = now else { continue };
                let delta = window_delta(*before, now);
                for (key_id, share) in split(delta, &uses) {
                    points.push(SharePoint {
                        key_id,
                        window,
                        at_ms: window.bucket_end(at_ms),
                        points: share,
                    });
                }
                *before = Some(now);
            }
            pending.clear();
            marks_moved = true;
        }
        for p in &points {
            sqlx::query(
                "INSERT INTO share_points (key_id, window_kind, at, account_id, points) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key_id, window_kind, at, account_id) \
                 DO UPDATE SET points = share_points.points + excluded.points",
            )
            .bind(p.key_id.clone())
            .bind(p.window.as_str())
            .bind(p.at_ms)
            .bind(account_id.to_owned())
            .bind(p.points)
            .execute(&mut **tx)
            .await?;
        }
        if marks_moved {
            save_marks(tx, account_id, &marks, received_ms).await?;
        }
        sqlx::query("DELETE FROM share_pending WHERE account_id = $1")
            .bind(account_id.to_owned())
            .execute(&mut **tx)
            .await?;
        for (key_id, (t, r)) in pending {
            sqlx::query(
                "INSERT INTO share_pending (account_id, key_id, tokens, requests) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(account_id.to_owned())
            .bind(key_id)
            .bind(i64::try_from(t).unwrap_or(i64::MAX))
            .bind(i64::try_from(r).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn load_marks(
    tx: &mut Transaction<'static, Any>,
    account_id: &str,
) -> Result<Marks, StoreError> {
    let row = sqlx::query(
        "SELECT primary_used, primary_resets_at, secondary_used, secondary_resets_at \
         FROM share_marks WHERE account_id = $1",
    )
    .bind(account_id.to_owned())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok((None, None));
    };
    let w = |used: &str, resets: &str| -> Result<Option<WindowMark>, StoreError> {
        let u: Option<f64> = col(&row, used)?;
        Ok(u.map(|used_percent| WindowMark {
            used_percent,
            resets_at_unix: col::<Option<i64>>(&row, resets).ok().flatten().unwrap_or(0),
        }))
    };
    Ok((
        w("primary_used", "primary_resets_at")?,
        w("secondary_used", "secondary_resets_at")?,
    ))
}

async fn save_marks(
    tx: &mut Transaction<'static, Any>,
    account_id: &str,
    marks: &Marks,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO share_marks (account_id, primary_used, primary_resets_at, secondary_used, \
           secondary_resets_at, observed_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (account_id) DO UPDATE SET primary_used = excluded.primary_used, \
           primary_resets_at = excluded.primary_resets_at, \
           secondary_used = excluded.secondary_used, \
           secondary_resets_at = excluded.secondary_resets_at, \
           observed_at = excluded.observed_at",
    )
    .bind(account_id.to_owned())
    .bind(NullableF64(marks.0.map(|m| m.used_percent)))
    .bind(marks.0.map(|m| m.resets_at_unix))
    .bind(NullableF64(marks.1.map(|m| m.used_percent)))
    .bind(marks.1.map(|m| m.resets_at_unix))
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn load_pending(
    tx: &mut Transaction<'static, Any>,
    account_id: &str,
) -> Result<BTreeMap<String, (u64, u64)>, StoreError> {
    let rows =
        sqlx::query("SELECT key_id, tokens, requests FROM share_pending WHERE account_id = $1")
            .bind(account_id.to_owned())
            .fetch_all(&mut **tx)
            .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let key: String = col(&r, "key_id")?;
        let t: i64 = col(&r, "tokens")?;
        let n: i64 = col(&r, "requests")?;
        out.insert(
            key,
            (u64::try_from(t).unwrap_or(0), u64::try_from(n).unwrap_or(0)),
        );
    }
    Ok(out)
}

impl Store {
    /// Every key's counted tokens (as stored: read them with `TokenCount::as_of`).
    pub async fn key_token_counts(&self) -> Result<HashMap<String, TokenCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, day_start, tokens_today, week_start, tokens_this_week \
             FROM key_token_usage",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let n = |name: &str| -> Result<u64, StoreError> {
                Ok(u64::try_from(col::<i64>(&r, name)?).unwrap_or(0))
            };
            out.insert(
                col::<String>(&r, "key_id")?,
                TokenCount {
                    day_start_unix: col(&r, "day_start")?,
                    tokens_today: n("tokens_today")?,
                    week_start_unix: col(&r, "week_start")?,
                    tokens_this_week: n("tokens_this_week")?,
                },
            );
        }
        Ok(out)
    }

    /// Every key's attributed share points that still count at `now_ms` (within each
    /// window's trailing span), oldest first.
    pub async fn share_points(&self, now_ms: i64) -> Result<Vec<SharePoint>, StoreError> {
        let since_ms = now_ms - ShareWindow::Secondary.trailing_ms();
        let primary_since = now_ms - ShareWindow::Primary.trailing_ms();
        let rows = sqlx::query(
            "SELECT key_id, window_kind, at, points FROM share_points \
             WHERE at > $1 AND (window_kind = 'secondary' OR at > $2) ORDER BY at",
        )
        .bind(since_ms)
        .bind(primary_since)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = col(&r, "window_kind")?;
            let Some(window) = ShareWindow::parse(&kind) else {
                return Err(StoreError::Corrupt(format!(
                    "unknown share window {kind:?}"
                )));
            };
            out.push(SharePoint {
                key_id: col(&r, "key_id")?,
                window,
                at_ms: col(&r, "at")?,
                points: col(&r, "points")?,
            });
        }
        Ok(out)
    }

    /// Deletes attributed points older than `before_ms` (the 7-day window's end).
    pub async fn prune_share_points(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM share_points WHERE at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

impl Store {
    /// Each of `keys`' counted use as of now, its shares measured against its pool's account
    /// count (from `accounts`, one row per membership); keys with nothing counted are absent.
    pub async fn key_usage_views(
        &self,
        keys: &[PoolKey],
        accounts: &[AccountWithToken],
    ) -> Result<HashMap<String, KeyUsageView>, StoreError> {
        let mut per_pool: HashMap<&str, usize> = HashMap::new();
        for a in accounts {
            *per_pool.entry(a.account.pool_id.as_str()).or_default() += 1;
        }
        let members: HashMap<String, usize> = per_pool
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        self.usage_views(keys, &members).await
    }

    /// [`Store::key_usage_views`] with the pools' account counts given (`pool id → count`).
    pub async fn usage_views(
        &self,
        keys: &[PoolKey],
        accounts_per_pool: &HashMap<String, usize>,
    ) -> Result<HashMap<String, KeyUsageView>, StoreError> {
        let now = now_ms();
        let counts = self.key_token_counts().await?;
        let points = self.share_points(now).await?;
        let mut by_key: HashMap<&str, Vec<(ShareWindow, i64, f64)>> = HashMap::new();
        for p in &points {
            by_key
                .entry(p.key_id.as_str())
                .or_default()
                .push((p.window, p.at_ms, p.points));
        }
        let mut out = HashMap::new();
        for k in keys {
            let count = counts.get(&k.id).copied();
            let pts = by_key
                .get(k.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            if count.is_none() && pts.is_empty() {
                continue;
            }
            let shares = k.policy.as_ref().map_or((None, None), |p| {
                (p.primary_share_percent, p.secondary_share_percent)
            });
            let view = KeyUsageView::compute(
                count,
                pts,
                accounts_per_pool.get(&k.pool_id).copied().unwrap_or(0),
                shares,
                now,
            );
            if !view.is_empty() {
                out.insert(k.id.clone(), view);
            }
        }
        Ok(out)
    }
}

impl Store {
    /// Accounts per pool (pool id → memberships): a pool's quota capacity in accounts.
    pub async fn pool_member_counts(&self) -> Result<HashMap<String, usize>, StoreError> {
        let rows = sqlx::query(
            "SELECT pool_id, CAST(COUNT(*) AS BIGINT) AS n FROM pool_memberships GROUP BY pool_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let n: i64 = col(&r, "n")?;
            out.insert(
                col::<String>(&r, "pool_id")?,
                usize::try_from(n).unwrap_or(0),
            );
        }
        Ok(out)
    }

    /// `keys` with their counted use filled in (listings).
    pub async fn with_usage(&self, mut keys: Vec<PoolKey>) -> Result<Vec<PoolKey>, StoreError> {
        let members = self.pool_member_counts().await?;
        let mut views = self.usage_views(&keys, &members).await?;
        for k in &mut keys {
            k.usage = views.remove(&k.id);
        }
        Ok(keys)
    }
}

impl Store {
    /// Bumps the revision without changing anything else, so the snapshot builder rebuilds
    /// and carries the keys' current counts (the usage push worker's publish).
    pub async fn publish_usage(&self) -> Result<i64, StoreError> {
        let (tx, revision) = self.begin_write().await?;
        tx.commit().await?;
        Ok(revision)
    }
}
