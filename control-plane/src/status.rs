//! The status report shared by `codexmesh status --json` and `GET /api/v1/status`.

use serde::Serialize;

use crate::store::{Account, KeyStatus, Pool, Store, StoreError};
use crate::util::now_ms;

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The store revision: the version the next snapshot carries.
    pub revision: i64,
    pub generated_at_ms: i64,
    pub pools: Vec<PoolStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    #[serde(flatten)]
    pub pool: Pool,
    pub keys: KeyCounts,
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KeyCounts {
    pub active: u32,
    pub revoked: u32,
}

pub async fn build(store: &Store) -> Result<StatusReport, StoreError> {
    // Read the revision first: the rest is then at least as new as the number shown.
    let revision = store.revision().await?;
    let pools = store.list_pools().await?;
    let keys = store.list_keys(None).await?;
    let accounts = store.list_accounts(None).await?;
    let pools = pools
        .into_iter()
        .map(|pool| {
            let mut counts = KeyCounts::default();
            for k in keys.iter().filter(|k| k.pool_id == pool.id) {
                match k.status {
                    KeyStatus::Active => counts.active += 1,
                    KeyStatus::Revoked => counts.revoked += 1,
                }
            }
            let accounts = accounts
                .iter()
                .filter(|a| a.pool_id == pool.id)
                .cloned()
                .collect();
            PoolStatus {
                pool,
                keys: counts,
                accounts,
            }
        })
        .collect();
    Ok(StatusReport {
        revision,
        generated_at_ms: now_ms(),
        pools,
    })
}
