//! The reports operators read: the status report and the request log. Both the CLI and the
//! admin API call these.
//!
//! Rules: read-only; a request-log filter's numbers are checked before the store is opened; a
//! principal sees only its pools, their accounts (with the memberships it sees) and entries.

use serde::Serialize;

use super::{Ops, OpsError, Outcome};
use crate::requests;
use codexmesh_model::records::AccountState;

pub use crate::requests::{Filter, RequestLogEntry, DEFAULT_LIMIT, MAX_LIMIT};
pub use crate::status::{
    AccountStatus, HealthView, KeyCounts, PoolStatus, QuotaView, StatusReport, WindowView,
};

/// Pools, their accounts with quota, health and counters, and key counts.
pub async fn status(ops: &Ops) -> Result<Outcome<StatusReport>, OpsError> {
    let store = ops.store().await?;
    let mut report = crate::status::build(store, ops.settings().health_window.as_secs()).await?;
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
