//! Activity (read only): a pool's and each account's attempts over a window, from the request
//! log (`outcomes`), summed by `codexmesh_model::activity` (which defines every count).
//!
//! Rules: reads only, in one transaction, nothing written; the scope is decided here as well
//! as by the caller: with `visible_pools` set, rows of any other pool (or of a deleted pool) are
//! never read and a pool outside it is "not found" like a missing one; at most `max_rows`
//! attempts (the newest) are read, and the result says when there were more (`truncated`).
//! Times are the store's `received_at` (indexed, the same clock as the health window and the
//! log's retention). Row reads use `rows`' typed accessors; uses only `rows` and `error`.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::any::AnyRow;

use crate::error::{Entity, Lookup, StoreError};
use crate::rows::{col, col_bool, col_u32};
use crate::Store;
use codexmesh_model::activity::{
    sort_accounts, AccountActivity, Activity, ActivitySample, Aggregator, Window,
};

/// The most attempts one activity query reads.
pub const ACTIVITY_MAX_ROWS: i64 = 200_000;

/// What to sum: a window and the scope (pool, account, what the caller may see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityQuery {
    /// Only this pool (by name); None: every pool in `visible_pools`.
    pub pool: Option<String>,
    /// Only this account (by id).
    pub account_id: Option<String>,
    /// The pool names the caller may see; None: every pool (deleted ones' rows included).
    pub visible_pools: Option<Vec<String>>,
    /// `[from_ms, to_ms)` in buckets of `bucket_ms`.
    pub window: Window,
    /// Read at most this many attempts (clamped to 1..=[`ACTIVITY_MAX_ROWS`]).
    pub max_rows: i64,
}

impl ActivityQuery {
    /// Everything over `window`, at most [`ACTIVITY_MAX_ROWS`] attempts.
    pub fn new(window: Window) -> Self {
        Self {
            pool: None,
            account_id: None,
            visible_pools: None,
            window,
            max_rows: ACTIVITY_MAX_ROWS,
        }
    }
}

fn sample_from_row(r: &AnyRow) -> Result<ActivitySample, StoreError> {
    Ok(ActivitySample {
        account_id: col(r, "account_id")?,
        pool_id: col(r, "pool_id")?,
        at_ms: col(r, "received_at")?,
        status: col(r, "status")?,
        error_source: col(r, "error_source")?,
        fallback: col_bool(r, "fallback")?,
        latency_ms: col(r, "latency_ms")?,
    })
}

/// An account's name and score as activity shows them.
struct AccountFacts {
    label: String,
    health: u32,
}

impl Store {
    /// The activity of `q`'s scope over its window: totals, per account (members of the pools
    /// in scope, idle ones included, plus any account with attempts there, deleted or not).
    pub async fn activity(&self, q: &ActivityQuery) -> Result<Activity, StoreError> {
        let mut tx = self.pool.begin().await?;
        let pools: HashMap<String, String> = sqlx::query("SELECT id, name FROM pools")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((col(r, "id")?, col(r, "name")?)))
            .collect::<Result<_, StoreError>>()?;
        let visible = |name: &str| {
            q.visible_pools
                .as_ref()
                .is_none_or(|v| v.iter().any(|p| p == name))
        };
        // The pool ids in scope; None: every pool, deleted ones too.
        let scope: Option<HashSet<String>> = match (&q.pool, &q.visible_pools) {
            (Some(name), _) => {
                let id = pools
                    .iter()
                    .find(|(_, n)| *n == name)
                    .filter(|_| visible(name))
                    .map(|(id, _)| id.clone())
                    .ok_or_else(|| StoreError::not_found(Entity::Pool, name, Lookup::Name))?;
                Some(HashSet::from([id]))
            }
            (None, Some(_)) => Some(
                pools
                    .iter()
                    .filter(|(_, n)| visible(n))
                    .map(|(id, _)| id.clone())
                    .collect(),
            ),
            (None, None) => None,
        };
        let in_scope = |pool_id: &str| scope.as_ref().is_none_or(|s| s.contains(pool_id));
        let wanted = |account_id: &str| q.account_id.as_deref().is_none_or(|a| a == account_id);

        let accounts: HashMap<String, AccountFacts> =
            sqlx::query("SELECT id, label, health FROM accounts")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        col(r, "id")?,
                        AccountFacts {
                            label: col(r, "label")?,
                            health: col_u32(r, "health")?.min(100),
                        },
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
        // Current members of the pools in scope: account id → pool ids.
        let mut members: HashMap<String, BTreeSet<String>> = HashMap::new();
        for r in sqlx::query("SELECT account_id, pool_id FROM pool_memberships")
            .fetch_all(&mut *tx)
            .await?
        {
            let (account_id, pool_id): (String, String) =
                (col(&r, "account_id")?, col(&r, "pool_id")?);
            if in_scope(&pool_id) && wanted(&account_id) {
                members.entry(account_id).or_default().insert(pool_id);
            }
        }
        if scope.is_none() {
            // Everything in view: an account in no pool still shows.
            for id in accounts.keys().filter(|id| wanted(id)) {
                members.entry(id.clone()).or_default();
            }
        }

        let max_rows = q.max_rows.clamp(1, ACTIVITY_MAX_ROWS);
        let mut samples = match &scope {
            Some(ids) if ids.is_empty() => Vec::new(),
            _ => {
                let ids: Vec<&String> = scope.iter().flatten().collect();
                let pool_clause = if ids.is_empty() {
                    String::new()
                } else {
                    let marks: Vec<String> =
                        (0..ids.len()).map(|i| format!("${}", i + 5)).collect();
                    format!(" AND pool_id IN ({})", marks.join(", "))
                };
                // '' stands for "any account" (a typed text parameter on both backends).
                let sql = format!(
                    "SELECT account_id, pool_id, received_at, status, error_source, fallback, \
                       latency_ms FROM outcomes \
                     WHERE received_at >= $1 AND received_at < $2 \
                       AND ($3 = '' OR account_id = $3){pool_clause} \
                     ORDER BY received_at DESC, id DESC LIMIT $4"
                );
                let mut query = sqlx::query(&sql)
                    .bind(q.window.from_ms())
                    .bind(q.window.to_ms())
                    .bind(q.account_id.clone().unwrap_or_default())
                    .bind(max_rows + 1);
                for id in ids {
                    query = query.bind(id.clone());
                }
                query
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(sample_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        tx.rollback().await?;
        let truncated = i64::try_from(samples.len()).unwrap_or(i64::MAX) > max_rows;
        samples.truncate(usize::try_from(max_rows).unwrap_or(usize::MAX));

        let mut agg = Aggregator::new(q.window);
        for id in members.keys() {
            agg.include_account(id);
        }
        for s in &samples {
            agg.add(s);
        }
        let (total, sums) = agg.finish();
        let mut out: Vec<AccountActivity> = sums
            .into_iter()
            .map(|a| {
                let facts = accounts.get(&a.account_id);
                let pool_names: BTreeSet<&String> = a
                    .pool_ids
                    .iter()
                    .chain(members.get(&a.account_id).into_iter().flatten())
                    .filter_map(|id| pools.get(id))
                    .collect();
                AccountActivity {
                    label: facts.map(|f| f.label.clone()),
                    health: facts.map(|f| f.health),
                    pools: pool_names.into_iter().cloned().collect(),
                    account_id: a.account_id,
                    stats: a.stats,
                }
            })
            .collect();
        sort_accounts(&mut out);
        Ok(Activity {
            pool: q.pool.clone(),
            from_ms: q.window.from_ms(),
            to_ms: q.window.to_ms(),
            bucket_ms: q.window.bucket_ms(),
            total,
            accounts: out,
            truncated,
        })
    }
}
