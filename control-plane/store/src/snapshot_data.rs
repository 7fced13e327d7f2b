//! The snapshot read: everything a snapshot is built from, in one transaction that sees one
//! consistent state (REPEATABLE READ on Postgres) together with the revision it reports.
//! Rules: read-only; uses `rows`, `error` and `quota` (for the evidence read).

use crate::error::StoreError;
use crate::quota::all_quota_tx;
use crate::rows::{
    key_from_row, pool_from_row, snapshot_account_with_token_from_row, KEY_SELECT, POOL_SELECT,
    SNAPSHOT_ACCOUNT_SELECT,
};
use crate::Store;
use codexmesh_model::records::{AccountWithToken, PoolKey, SnapshotData};

impl Store {
    /// Reads everything a snapshot needs, consistently with the revision it reports.
    pub async fn snapshot_data(&self) -> Result<SnapshotData, StoreError> {
        let mut tx = self.begin_consistent_read().await?;
        let revision: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'revision'")
            .fetch_one(&mut *tx)
            .await?;
        let pools = sqlx::query(&format!("{POOL_SELECT} ORDER BY name"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(pool_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let keys = sqlx::query(&format!("{KEY_SELECT} ORDER BY k.created_at, k.id"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(key_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // Only the columns a snapshot carries, without the pools join: at 10,000 accounts the
        // whole account row (26 columns) cost ~300 ms through sqlx, these ~150 ms.
        let accounts = sqlx::query(SNAPSHOT_ACCOUNT_SELECT)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(snapshot_account_with_token_from_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
        let quotas = all_quota_tx(&mut tx).await?;
        let accounts: Vec<AccountWithToken> = accounts
            .into_iter()
            .map(|mut a| {
                // An account in several pools is sent in each.
                a.quota = quotas.get(&a.account.id).cloned();
                a
            })
            .collect();
        tx.commit().await?;
        // Archived pools are not served: neither they nor their keys and memberships are sent.
        let archived: std::collections::HashSet<String> = pools
            .iter()
            .filter(|p| p.archived_at_ms.is_some())
            .map(|p| p.id.clone())
            .collect();
        let pools = pools
            .into_iter()
            .filter(|p| !archived.contains(&p.id))
            .collect();
        let keys: Vec<PoolKey> = keys
            .into_iter()
            .filter(|k: &PoolKey| !archived.contains(&k.pool_id))
            .collect();
        let accounts: Vec<AccountWithToken> = accounts
            .into_iter()
            .filter(|a: &AccountWithToken| !archived.contains(&a.account.pool_id))
            .collect();
        let key_usage = self.key_usage_views(&keys, &accounts).await?;
        Ok(SnapshotData {
            revision,
            pools,
            keys,
            accounts,
            key_usage,
        })
    }
}
