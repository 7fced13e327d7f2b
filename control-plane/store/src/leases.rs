//! Leases: named, expiring locks in the store (one refresher per account, one leader for
//! periodic jobs). Rules: not snapshot input, so no revision bump and no audit row; each call
//! is one statement, atomic on SQLite and Postgres. Uses only `rows` and `error`.

use crate::error::StoreError;
use crate::rows::{lease_from_row, LEASE_SELECT};
use crate::Store;
use codexmesh_model::records::Lease;
use codexmesh_model::util::now_ms;

impl Store {
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
        let row = sqlx::query(&format!("{LEASE_SELECT} WHERE name = $1"))
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(lease_from_row).transpose()
    }
}
