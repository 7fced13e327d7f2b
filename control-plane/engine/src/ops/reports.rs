//! The reports operators read: the status report, quota windows (and refreshing them now), and
//! the request log. Both the CLI and the admin API call these.
//!
//! Rules: read-only, but for [`refresh_quota`], which writes nothing but quota evidence (what
//! the background poller writes anyway) and so is allowed to whoever sees the pool, viewers
//! included: refreshing live state changes no setting, so it is not an audited change. It asks
//! the upstream at most once per pool per [`QUOTA_REFRESH_COOLDOWN_MS`] (a store lease, shared
//! by replicas), so no caller can turn it into a stream of upstream calls. A request-log
//! filter's numbers are checked before the store is opened; a principal sees only its pools,
//! their accounts (with the memberships it sees) and entries. Envoy nodes are no tenant's, but
//! a snapshot rejection's reason concerning a pool the principal does not see is replaced by
//! [`HIDDEN_REASON`].

use std::collections::HashSet;

use serde::Serialize;

use super::{Notice, Ops, OpsError, Outcome};
use crate::requests;
use codexmesh_model::records::AccountState;

pub use crate::envoys::EnvoyView;
pub use crate::requests::{Filter, RequestLogEntry, DEFAULT_LIMIT, MAX_LIMIT};
pub use crate::status::{
    AccountStatus, EnvoyStatus, HealthView, KeyCounts, PoolStatus, QuotaView, RejectionView,
    StatusReport, SyncState, WindowView,
};

/// What a snapshot rejection's reason reads as for a principal who does not see its pool.
pub const HIDDEN_REASON: &str = "rejected for a reason concerning a pool outside your access";

/// Whether a rejection about `pool_id` must be hidden from a principal who sees `visible` (pool
/// ids; None: every pool).
fn hides(visible: Option<&HashSet<String>>, pool_id: Option<&String>) -> bool {
    match (visible, pool_id) {
        (Some(visible), Some(id)) => !visible.contains(id),
        _ => false,
    }
}

/// The ids of the pools the principal sees (None: all of them), among `pools`.
fn visible_pool_ids<'a>(
    ops: &Ops,
    pools: impl Iterator<Item = &'a codexmesh_store::Pool>,
) -> Option<HashSet<String>> {
    ops.visible_pools().map(|_| {
        pools
            .filter(|p| ops.access().sees_pool(&p.name))
            .map(|p| p.id.clone())
            .collect()
    })
}

/// Pools, their accounts with quota, health and counters, and key counts; each Envoy node's
/// snapshot verdicts.
pub async fn status(ops: &Ops) -> Result<Outcome<StatusReport>, OpsError> {
    let store = ops.store().await?;
    let mut report = crate::status::build(store, ops.settings().health_window.as_secs()).await?;
    let visible = visible_pool_ids(ops, report.pools.iter().map(|p| &p.pool));
    for e in &mut report.envoys {
        if let Some(r) = &mut e.last_rejection {
            if hides(visible.as_ref(), r.pool_id.as_ref()) {
                r.reason = HIDDEN_REASON.to_owned();
            }
        }
    }
    report
        .pools
        .retain(|p| ops.access().sees_pool(&p.pool.name));
    for pool in &mut report.pools {
        for a in &mut pool.accounts {
            a.account = ops.redact_account(a.account.clone());
        }
    }
    Ok(Outcome::new(report))
}

/// The Envoys: those subscribed to this replica (`live`, from its registry) and every node
/// the store has a snapshot verdict from (connected to another replica, or gone), each with its
/// last ACK and NACK as stored (what every replica wrote).
pub async fn envoys(ops: &Ops, live: Vec<EnvoyView>) -> Result<Outcome<Vec<EnvoyView>>, OpsError> {
    let store = ops.store().await?;
    let nodes = store.envoy_nodes().await?;
    let mut views = live;
    for node in nodes {
        let verdicts: Vec<codexmesh_store::SnapshotVerdict> = node
            .acked
            .iter()
            .map(|a| codexmesh_store::SnapshotVerdict {
                version: a.version,
                accepted: true,
                detail: None,
                pool_id: None,
                at_ms: a.at_ms,
            })
            .chain(
                node.rejected
                    .iter()
                    .map(|r| codexmesh_store::SnapshotVerdict {
                        version: r.version,
                        accepted: false,
                        detail: Some(r.detail.clone()),
                        pool_id: r.pool_id.clone(),
                        at_ms: r.at_ms,
                    }),
            )
            .collect();
        let mut matched = false;
        for v in views.iter_mut().filter(|v| v.node_id == node.node_id) {
            verdicts.iter().for_each(|x| v.show_verdict(x));
            matched = true;
        }
        if !matched {
            let mut v = EnvoyView::offline(node.node_id.clone());
            verdicts.iter().for_each(|x| v.show_verdict(x));
            views.push(v);
        }
    }
    if ops.visible_pools().is_some() {
        let pools = store.list_pools().await?;
        let visible = visible_pool_ids(ops, pools.iter());
        for v in &mut views {
            if v.nack_reason.is_some() && hides(visible.as_ref(), v.nack_pool_id.as_ref()) {
                v.nack_reason = Some(HIDDEN_REASON.to_owned());
            }
        }
    }
    Ok(Outcome::new(views))
}

/// The request log, newest first, filtered.
pub async fn requests(
    ops: &Ops,
    filter: &Filter,
) -> Result<Outcome<Vec<RequestLogEntry>>, OpsError> {
    // Checked before the store is opened: a bad number touches nothing.
    requests::check_limit(filter.limit)?;
    let visible = ops.visible_pools();
    let mut filter = filter.clone();
    if visible.is_some() {
        // Names resolve among what the principal sees (field-named errors as the log's own).
        if let Some(p) = &filter.pool {
            ops.see_pool(p).map_err(|e| named_field("pool", e))?;
        }
        if let Some(a) = &filter.account {
            let account = ops
                .account_to_see(a)
                .await
                .map_err(|e| named_field("account", e))?;
            filter.account = Some(account.id);
        }
        if let Some(k) = &filter.key {
            let key = ops.key_to_see(k).await.map_err(|e| named_field("key", e))?;
            filter.key = Some(key.id);
        }
    }
    let store = ops.store().await?;
    Ok(Outcome::new(
        requests::query(store, &filter, visible.as_deref()).await?,
    ))
}

/// A filter name that does not resolve is the request log's invalid-parameter error, as when
/// the store answers it (see `requests::named`).
fn named_field(field: &'static str, e: OpsError) -> OpsError {
    match e {
        OpsError::Store(s) => crate::requests::named(field, s).into(),
        other => other,
    }
}

/// One account's quota windows in one pool, with their reset times.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountQuota {
    pub pool: String,
    pub account_id: String,
    pub label: String,
    pub state: AccountState,
    pub plan: Option<String>,
    /// The 5-hour window (None before the first evidence).
    pub primary: Option<WindowView>,
    /// The weekly window.
    pub secondary: Option<WindowView>,
}

/// The quota windows of every account the principal sees (of `pool`, or of all its pools).
pub async fn quota(ops: &Ops, pool: Option<&str>) -> Result<Outcome<Vec<AccountQuota>>, OpsError> {
    if let Some(p) = pool {
        ops.see_pool(p)?;
    }
    let report = status(ops).await?.value;
    let mut rows = Vec::new();
    for p in report.pools {
        if pool.is_some_and(|want| want != p.pool.name) {
            continue;
        }
        if pool.is_some() || p.pool.archived_at_ms.is_none() {
            for a in p.accounts {
                let (primary, secondary, plan) = match a.quota {
                    Some(q) => (q.primary, q.secondary, q.plan.or(a.account.plan.clone())),
                    None => (None, None, a.account.plan.clone()),
                };
                rows.push(AccountQuota {
                    pool: p.pool.name.clone(),
                    account_id: a.account.id,
                    label: a.account.label,
                    state: a.account.state,
                    plan,
                    primary,
                    secondary,
                });
            }
        }
    }
    if let Some(want) = pool {
        if !rows.iter().any(|r| r.pool == want) {
            // The pool exists (see_pool passed) but may have no accounts: still an answer.
            ops.store().await?.pool_by_name(want).await?;
        }
    }
    Ok(Outcome::new(rows))
}

/// The shortest time between two refresh-now polls of one pool.
pub const QUOTA_REFRESH_COOLDOWN_MS: i64 = 10_000;
/// How long one account's poll may take.
const QUOTA_REFRESH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Polls in flight at once.
const QUOTA_REFRESH_CONCURRENCY: usize = 4;

/// What [`refresh_quota`] did, and the pool's quota rows after it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuotaRefresh {
    /// Accounts polled (active and cooling-down members; 0 when within the cooldown).
    pub polled: u32,
    /// Polls that brought no evidence (see the notices).
    pub failed: u32,
    /// The pool was refreshed less than 10 s ago: nothing was polled now.
    pub cooldown: bool,
    /// The pool's quota rows after the polls (as `GET /api/v1/quota?pool=`).
    pub accounts: Vec<AccountQuota>,
}

/// Polls the usage of `pool`'s active and cooling-down accounts (each at its provider's usage
/// endpoint; API-key accounts are not polled) now (at most once per pool per
/// [`QUOTA_REFRESH_COOLDOWN_MS`]), records the evidence, and returns the pool's quota rows.
pub async fn refresh_quota(ops: &Ops, pool: &str) -> Result<Outcome<QuotaRefresh>, OpsError> {
    codexmesh_model::ids::validate_pool_name(pool).map_err(|e| OpsError::Invalid {
        field: "pool",
        message: e.message,
    })?;
    ops.see_pool(pool)?;
    let store = ops.store().await?;
    let accounts: Vec<_> = store
        .list_accounts(Some(pool))
        .await?
        .into_iter()
        .filter(|a| matches!(a.state, AccountState::Active | AccountState::CoolingDown))
        // An API-key account has no usage endpoint: its evidence is passive only.
        .filter(crate::quota::pollable)
        .collect();
    let mut notices = Vec::new();
    let (mut polled, mut failed, mut refused) = (0u32, 0u32, 0u32);
    let lease = format!("quota-refresh:{pool}");
    let holder = crate::refresh::holder_id("quota-refresh");
    let cooldown = !store
        .try_acquire_lease(&lease, &holder, QUOTA_REFRESH_COOLDOWN_MS)
        .await?;
    if cooldown {
        notices.push(Notice::note(
            "quota_refresh_recent",
            format!(
                "pool {pool} was refreshed less than {} s ago: showing the stored evidence",
                QUOTA_REFRESH_COOLDOWN_MS / 1000
            ),
        ));
    } else if !accounts.is_empty() {
        let key = ops.settings().master_keys()?;
        store.verify_master_key(&key).await?;
        let http = crate::oauth::http_client_for(ops.settings())
            .map_err(|e| OpsError::Http(e.to_string()))?;
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(QUOTA_REFRESH_CONCURRENCY));
        let mut jobs = tokio::task::JoinSet::new();
        for a in &accounts {
            let (store, key, http, limit) =
                (store.clone(), key.clone(), http.clone(), limit.clone());
            let upstreams = crate::quota::Upstreams::from_settings(ops.settings());
            let (id, label) = (a.id.clone(), a.label.clone());
            jobs.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = crate::quota::poll_account(
                    &store,
                    &key,
                    &http,
                    &upstreams,
                    &id,
                    QUOTA_REFRESH_TIMEOUT,
                )
                .await;
                (label, result)
            });
        }
        while let Some(joined) = jobs.join_next().await {
            polled += 1;
            let (label, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(error = %e, "a quota poll task failed");
                    continue;
                }
            };
            match result {
                Ok((_, crate::quota::Polled::Recorded { .. })) => {}
                Ok((_, crate::quota::Polled::Unauthorized(status))) => {
                    failed += 1;
                    refused += 1;
                    notices.push(Notice::warning(
                        "quota_poll_unauthorized",
                        format!(
                            "the upstream refused the access token of {label} (HTTP {status}): \
                             the control plane refreshes it when due, or run \
                             `codexmesh account refresh {label}`"
                        ),
                    ));
                }
                Ok((_, crate::quota::Polled::Failed(why))) => {
                    failed += 1;
                    tracing::info!(account = %label, error = %why, "quota refresh: poll failed");
                }
                Err(e) => {
                    failed += 1;
                    tracing::info!(account = %label, error = %e, "quota refresh: poll skipped");
                }
            }
        }
        let other = failed.saturating_sub(refused);
        if other > 0 {
            notices.push(Notice::warning(
                "quota_poll_failed",
                format!(
                    "{other} of {polled} usage polls failed (see the control plane's log); \
                     their rows show the last evidence"
                ),
            ));
        }
    }
    let rows = quota(ops, Some(pool)).await?.value;
    Ok(Outcome::with_notices(
        QuotaRefresh {
            polled,
            failed,
            cooldown,
            accounts: rows,
        },
        notices,
    ))
}
