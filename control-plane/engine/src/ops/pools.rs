//! Pool use cases: create, list, change routing, set the client addresses a pool's keys work
//! from, and `up`'s first-run pool.
//!
//! Rules: a pool name is checked before the store is opened; a routing change is a parsed
//! [`RoutingPatch`] (flag parsing lives in `codexmesh_model::routing`) and an empty patch only
//! reads. Only owners create pools; a principal sees and changes only its pools (`guard`).

use serde::Serialize;

use super::{Notice, Ops, OpsError, Outcome};
use crate::status::{self, KeyCounts};
use codexmesh_model::keys::RawKey;
use codexmesh_model::routing::{Primary, RoutingMode, RoutingPatch, RoutingView};
use codexmesh_store::{AllowedCidrs, Changed, Pool, Strategy};

/// The pool `up` creates in an empty store.
pub const DEFAULT_POOL: &str = "default";

/// A pool with its account and key counts (`pool list`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolSummary {
    #[serde(flatten)]
    pub pool: Pool,
    pub accounts: usize,
    pub keys: KeyCounts,
}

/// A pool's effective routing after `set_routing`.
#[derive(Debug, Clone)]
pub struct PoolRouting {
    pub pool: Pool,
    pub routing: RoutingView,
    /// The patch had settings (false: this only showed the routing).
    pub requested: bool,
    /// Something actually changed.
    pub changed: bool,
}

/// The pool `up` serves and, when it had to create it, the key it issued (shown once).
#[derive(Debug)]
pub struct FirstPool {
    pub pool: String,
    pub new_key: Option<RawKey>,
}

pub async fn create(ops: &Ops, name: &str) -> Result<Outcome<Pool>, OpsError> {
    let result = async {
        // Validate before touching the store so bad input creates nothing.
        codexmesh_store::validate_pool_name(name)?;
        ops.require_owner("create pools")?;
        let store = ops.store().await?;
        Ok(Outcome::new(store.create_pool(ops.actor(), name).await?))
    }
    .await;
    ops.audited("pool.create", Some(name), &[], result).await
}

/// Archives the pool (`archived`) or restores it. An archived pool leaves the snapshot: its
/// keys stop working, its accounts serve only their other pools; nothing is deleted.
pub async fn set_archived(
    ops: &Ops,
    name: &str,
    archived: bool,
) -> Result<Outcome<Changed<Pool>>, OpsError> {
    let action = if archived {
        "pool.archive"
    } else {
        "pool.restore"
    };
    let result = async {
        ops.change_pool(name)?;
        let store = ops.store().await?;
        let changed = store.set_pool_archived(ops.actor(), name, archived).await?;
        let mut notices = Vec::new();
        if archived && changed.changed {
            notices.push(Notice::note(
                "pool_archived",
                format!(
                    "pool {name} is archived: its keys stop working with the next snapshot;                      restore it to serve it again"
                ),
            ));
        }
        Ok(Outcome::with_notices(changed, notices))
    }
    .await;
    ops.audited(action, Some(name), &[name], result).await
}

/// Replaces the client addresses (CIDRs) the pool's keys work from; an empty list admits any
/// address. `None` only reads the pool. The list was checked where it was parsed.
pub async fn set_network(
    ops: &Ops,
    name: &str,
    allowed: Option<&AllowedCidrs>,
) -> Result<Outcome<Changed<Pool>>, OpsError> {
    let Some(allowed) = allowed else {
        ops.see_pool(name)?;
        let store = ops.store().await?;
        return Ok(Outcome::new(Changed {
            changed: false,
            item: store.pool_by_name(name).await?,
        }));
    };
    let result = async {
        ops.change_pool(name)?;
        let store = ops.store().await?;
        let changed = store
            .set_pool_allowed_cidrs(ops.actor(), name, allowed)
            .await?;
        Ok(Outcome::new(changed))
    }
    .await;
    ops.audited("pool.set_network", Some(name), &[name], result)
        .await
}

/// The pools the principal sees, with counts.
pub async fn list(ops: &Ops) -> Result<Outcome<Vec<PoolSummary>>, OpsError> {
    let store = ops.store().await?;
    let report = status::build(store, ops.settings().health_window.as_secs()).await?;
    Ok(Outcome::new(
        report
            .pools
            .into_iter()
            .filter(|p| ops.access().sees_pool(&p.pool.name))
            .map(|p| PoolSummary {
                accounts: p.accounts.len(),
                keys: p.keys,
                pool: p.pool,
            })
            .collect(),
    ))
}

/// Applies `patch` to the pool's routing (an empty patch only reads it).
pub async fn set_routing(
    ops: &Ops,
    name: &str,
    patch: &RoutingPatch,
) -> Result<Outcome<PoolRouting>, OpsError> {
    if patch.is_empty() {
        ops.see_pool(name)?;
        return routing_result(ops, name, patch).await;
    }
    let result = async {
        ops.change_pool(name)?;
        routing_result(ops, name, patch).await
    }
    .await;
    ops.audited("pool.set_routing", Some(name), &[name], result)
        .await
}

async fn routing_result(
    ops: &Ops,
    name: &str,
    patch: &RoutingPatch,
) -> Result<Outcome<PoolRouting>, OpsError> {
    let store = ops.store().await?;
    let result = if patch.is_empty() {
        Changed {
            changed: false,
            item: store.pool_by_name(name).await?,
        }
    } else {
        store.set_pool_routing(ops.actor(), name, patch).await?
    };
    let pool = result.item;
    let view = pool.routing.view();
    let mut notices: Vec<Notice> = unused_primary(patch, &view).into_iter().collect();
    if result.changed {
        let custom = store
            .list_keys(Some(&pool.name))
            .await?
            .iter()
            .filter(|k| k.routing_mode == RoutingMode::Custom)
            .count();
        if custom > 0 {
            notices.push(Notice::note(
                "keys_keep_own_routing",
                format!(
                    "{custom} key(s) of pool {} have their own routing and keep it \
                     (codexmesh key set-routing ID --inherit to follow the pool)",
                    pool.name
                ),
            ));
        }
    }
    Ok(Outcome::with_notices(
        PoolRouting {
            pool,
            routing: view,
            requested: !patch.is_empty(),
            changed: result.changed,
        },
        notices,
    ))
}

/// `up`'s first run: the store's first pool, or a new [`DEFAULT_POOL`] with a new key.
pub async fn first_pool(ops: &Ops) -> Result<Outcome<FirstPool>, OpsError> {
    ops.require_owner("set up the first pool")?;
    let store = ops.store().await?;
    let pools = store.list_pools().await?;
    Ok(Outcome::new(match pools.first() {
        Some(p) => FirstPool {
            pool: p.name.clone(),
            new_key: None,
        },
        None => {
            store.create_pool(ops.actor(), DEFAULT_POOL).await?;
            let (_key, raw) = store
                .issue_key(ops.actor(), DEFAULT_POOL, None, false)
                .await?;
            FirstPool {
                pool: DEFAULT_POOL.to_owned(),
                new_key: Some(raw),
            }
        }
    }))
}

/// A primary account only steers primary_first: say so rather than let it look effective.
pub(super) fn unused_primary(patch: &RoutingPatch, v: &RoutingView) -> Option<Notice> {
    (matches!(patch.primary, Some(Primary::Account(_))) && v.strategy != Strategy::PrimaryFirst)
        .then(|| {
            Notice::note(
                "primary_unused",
                format!(
                    "the primary account is stored but only matters with --strategy \
                     primary_first (the strategy is {})",
                    v.strategy
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_model::routing::RawRoutingFlags;

    #[test]
    fn a_primary_without_primary_first_gets_a_note() -> Result<(), Box<dyn std::error::Error>> {
        let patch = RawRoutingFlags {
            primary: Some("acct-1"),
            ..RawRoutingFlags::default()
        }
        .parse()?;
        let mut view = codexmesh_model::routing::Routing::default().view();
        view.strategy = Strategy::QuotaFirst;
        let n = unused_primary(&patch, &view).ok_or("no notice")?;
        assert_eq!(n.code, "primary_unused");
        assert_eq!(
            n.to_string(),
            "note: the primary account is stored but only matters with --strategy \
             primary_first (the strategy is quota_first)"
        );
        view.strategy = Strategy::PrimaryFirst;
        assert!(unused_primary(&patch, &view).is_none());
        Ok(())
    }
}
