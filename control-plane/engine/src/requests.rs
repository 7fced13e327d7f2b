//! The request log as operators read it (`codexmesh requests`, `GET /api/v1/requests`): one
//! entry per upstream attempt with its route facts (account, strategy, why, failover), names
//! instead of ids. Metadata only: the store never holds a prompt or a body.

use std::collections::HashMap;

use serde::Serialize;

use codexmesh_store::{LoggedOutcome, RequestLogQuery, Store, StoreError};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

/// What the operator asked for: names or labels, checked here.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Pool name.
    pub pool: Option<String>,
    /// Account id or label.
    pub account: Option<String>,
    /// Key id or label.
    pub key: Option<String>,
    /// Only entries older than this entry id (paging backwards).
    pub before: Option<i64>,
    pub limit: Option<i64>,
    /// Only attempts that did not succeed (status outside 2xx, or a reset).
    pub failed: bool,
    /// Only entries received at or after this time (Unix ms).
    pub since_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    /// A filter that names nothing, or a bad number; `field` is the query parameter / flag.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RequestLogEntry {
    pub id: i64,
    pub received_at_ms: i64,
    pub started_at_ms: i64,
    pub node_id: String,
    pub pool_id: String,
    /// None when the pool was deleted since.
    pub pool: Option<String>,
    pub key_id: String,
    pub key: Option<String>,
    pub account_id: String,
    pub account: Option<String>,
    pub attempt: i64,
    /// 0: no answer (reset or connect failure).
    pub status: i64,
    pub latency_ms: i64,
    pub strategy: Option<String>,
    /// Why this attempt's account was chosen: affinity, turn_state, strategy, probe, failover.
    pub reason: Option<String>,
    /// This attempt served a request another account had failed first.
    pub fallback: bool,
    /// client, upstream or transport (None for a success).
    pub error_source: Option<String>,
    pub error_code: Option<String>,
    pub path: Option<String>,
    pub primary_used_percent: Option<f64>,
    pub secondary_used_percent: Option<f64>,
    pub snapshot_version: i64,
    /// Tokens the answer stated (0: none).
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Refused by the key's policy before any account was tried (`rate_limited`,
    /// `model_not_allowed`, …): then `account_id` is empty.
    pub policy_refusal: Option<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> RequestLogError {
    RequestLogError::Invalid {
        field,
        message: message.into(),
    }
}

/// A missing pool, account or key is the operator's typo, reported against its field.
pub(crate) fn named(field: &'static str, e: StoreError) -> RequestLogError {
    match e {
        StoreError::NotFound { .. } | StoreError::Invalid { .. } | StoreError::Ambiguous { .. } => {
            invalid(field, e.to_string())
        }
        other => RequestLogError::Store(other),
    }
}

pub fn check_limit(limit: Option<i64>) -> Result<i64, RequestLogError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(invalid("limit", format!("{n} is outside 1..={MAX_LIMIT}"))),
    }
}

/// The log as `filter` asks; `visible_pools` (pool names, None: all) limits it to a tenant's
/// pools.
pub async fn query(
    store: &Store,
    filter: &Filter,
    visible_pools: Option<&[String]>,
) -> Result<Vec<RequestLogEntry>, RequestLogError> {
    let limit = check_limit(filter.limit)?;
    if let Some(before) = filter.before.filter(|b| *b < 1) {
        return Err(invalid("before", format!("{before} is not an entry id")));
    }
    if let Some(since) = filter.since_ms.filter(|s| *s < 0) {
        return Err(invalid(
            "since_ms",
            format!("{since} is not a time (Unix ms)"),
        ));
    }
    let pool_id = match &filter.pool {
        Some(name) => Some(
            store
                .pool_by_name(name)
                .await
                .map_err(|e| named("pool", e))?
                .id,
        ),
        None => None,
    };
    let account_id = match &filter.account {
        Some(ident) => Some(
            store
                .find_account(ident)
                .await
                .map_err(|e| named("account", e))?
                .id,
        ),
        None => None,
    };
    let key_id = match &filter.key {
        Some(ident) => Some(store.find_key(ident).await.map_err(|e| named("key", e))?.id),
        None => None,
    };
    let pools: HashMap<String, String> = store
        .list_pools()
        .await?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect();
    let visible_pool_ids = visible_pools.map(|names| {
        pools
            .iter()
            .filter(|(_, name)| names.contains(name))
            .map(|(id, _)| id.clone())
            .collect()
    });
    let rows = store
        .request_log(&RequestLogQuery {
            pool_id,
            account_id,
            key_id,
            before_id: filter.before,
            failed_only: filter.failed,
            since_ms: filter.since_ms.unwrap_or(0),
            limit,
            visible_pool_ids,
        })
        .await?;
    let accounts: HashMap<String, String> = store
        .list_accounts(None)
        .await?
        .into_iter()
        .map(|a| (a.id, a.label))
        .collect();
    let keys: HashMap<String, String> = store
        .list_keys(None)
        .await?
        .into_iter()
        .map(|k| (k.id, k.label))
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| entry(row, &pools, &accounts, &keys))
        .collect())
}

fn entry(
    row: LoggedOutcome,
    pools: &HashMap<String, String>,
    accounts: &HashMap<String, String>,
    keys: &HashMap<String, String>,
) -> RequestLogEntry {
    let o = row.outcome;
    RequestLogEntry {
        id: row.id,
        received_at_ms: row.received_at_ms,
        started_at_ms: o.started_at_ms,
        node_id: row.node_id,
        pool: pools.get(&o.pool_id).cloned(),
        pool_id: o.pool_id,
        key: keys.get(&o.key_id).cloned(),
        key_id: o.key_id,
        account: accounts.get(&o.account_id).cloned(),
        account_id: o.account_id,
        attempt: o.attempt,
        status: o.status,
        latency_ms: o.latency_ms,
        strategy: o.strategy,
        reason: o.route_reason,
        fallback: o.fallback,
        error_source: o.error_source,
        error_code: o.error_code,
        path: o.request_path,
        primary_used_percent: o.primary.map(|w| w.used_percent),
        secondary_used_percent: o.secondary.map(|w| w.used_percent),
        snapshot_version: o.snapshot_version,
        input_tokens: o.input_tokens,
        output_tokens: o.output_tokens,
        policy_refusal: o.policy_refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_store::{Actor, OutcomeRecord};

    fn record(pool_id: &str, account_id: &str, status: i64) -> OutcomeRecord {
        OutcomeRecord {
            pool_id: pool_id.to_owned(),
            key_id: "k-gone".to_owned(),
            account_id: account_id.to_owned(),
            attempt: 1,
            status,
            latency_ms: 12,
            strategy: Some("quota_first".to_owned()),
            route_reason: Some("affinity".to_owned()),
            ..OutcomeRecord::default()
        }
    }

    #[tokio::test]
    async fn filters_page_and_name_things() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open("sqlite::memory:").await?;
        let pool = store.create_pool(&Actor::new("t"), "main").await?;
        let other = store.create_pool(&Actor::new("t"), "other").await?;
        store
            .record_outcomes(
                "node-a",
                &[
                    record(&pool.id, "acc-1", 200),
                    record(&other.id, "acc-2", 429),
                    record(&pool.id, "acc-2", 200),
                ],
            )
            .await?;
        let all = query(&store, &Filter::default(), None).await?;
        assert_eq!(all.len(), 3);
        assert!(
            all[0].id > all[1].id && all[1].id > all[2].id,
            "newest first"
        );
        assert_eq!(all[0].pool.as_deref(), Some("main"));
        assert_eq!(all[0].key, None, "a key that no longer exists has no label");
        assert_eq!(all[0].reason.as_deref(), Some("affinity"));
        assert_eq!(all[0].node_id, "node-a");

        let main = query(
            &store,
            &Filter {
                pool: Some("main".into()),
                ..Filter::default()
            },
            None,
        )
        .await?;
        assert_eq!(main.len(), 2);
        assert!(main.iter().all(|e| e.pool_id == pool.id));

        let page = query(
            &store,
            &Filter {
                before: Some(all[0].id),
                limit: Some(1),
                ..Filter::default()
            },
            None,
        )
        .await?;
        assert_eq!(page.len(), 1);
        // A tenant limited to the other pool sees none of main's entries; no pools, nothing.
        let tenant = query(&store, &Filter::default(), Some(&["other".to_owned()])).await?;
        assert!(tenant.iter().all(|e| e.pool_id != pool.id), "{tenant:?}");
        assert!(tenant.len() < all.len());
        assert!(query(&store, &Filter::default(), Some(&[]))
            .await?
            .is_empty());
        assert_eq!(page[0].id, all[1].id);
        assert_eq!(page[0].status, 429);

        // What did not succeed (a 429, a reset with no status), and what is recent.
        store
            .record_outcomes("node-a", &[record(&pool.id, "acc-1", 0)])
            .await?;
        let failed = query(
            &store,
            &Filter {
                failed: true,
                ..Filter::default()
            },
            None,
        )
        .await?;
        assert_eq!(
            failed.iter().map(|e| e.status).collect::<Vec<_>>(),
            vec![0, 429]
        );
        let newest = query(&store, &Filter::default(), None).await?[0].received_at_ms;
        let recent = query(
            &store,
            &Filter {
                since_ms: Some(newest),
                ..Filter::default()
            },
            None,
        )
        .await?;
        assert!(!recent.is_empty() && recent.iter().all(|e| e.received_at_ms >= newest));
        let future = query(
            &store,
            &Filter {
                since_ms: Some(newest + 60_000),
                ..Filter::default()
            },
            None,
        )
        .await?;
        assert!(future.is_empty());

        for (filter, field) in [
            (
                Filter {
                    pool: Some("nope".into()),
                    ..Filter::default()
                },
                "pool",
            ),
            (
                Filter {
                    account: Some("nobody".into()),
                    ..Filter::default()
                },
                "account",
            ),
            (
                Filter {
                    key: Some("nokey".into()),
                    ..Filter::default()
                },
                "key",
            ),
            (
                Filter {
                    limit: Some(0),
                    ..Filter::default()
                },
                "limit",
            ),
            (
                Filter {
                    before: Some(-3),
                    ..Filter::default()
                },
                "before",
            ),
            (
                Filter {
                    since_ms: Some(-1),
                    ..Filter::default()
                },
                "since_ms",
            ),
        ] {
            let got = query(&store, &filter, None).await;
            assert!(
                matches!(&got, Err(RequestLogError::Invalid { field: f, .. }) if *f == field),
                "{field}: {got:?}"
            );
        }
        Ok(())
    }
}
