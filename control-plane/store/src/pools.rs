//! Pools: creating, archiving, restoring, listing and finding them by name, and the client
//! addresses their keys work from (their routing settings change in `routing`). Rules: every
//! write is one bumping transaction with an audit row (a change that changes nothing writes
//! nothing); an archived pool keeps its rows (accounts, keys, the log) but leaves the snapshot.

use serde_json::json;

use crate::audit::audit;
use crate::error::{ConflictReason, Entity, Lookup, StoreError};
use crate::rows::{pool_from_row, POOL_SELECT};
use crate::tx::pool_by_name_tx;
use crate::tx::{is_unique_violation, validate_pool_name};
use crate::{Actor, Store};
use codexmesh_model::records::{AllowedCidrs, Changed, Pool, Routing};
use codexmesh_model::util::{self, now_ms};

impl Store {
    pub async fn create_pool(&self, actor: &Actor, name: &str) -> Result<Pool, StoreError> {
        validate_pool_name(name)?;
        let (mut tx, revision) = self.begin_write().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM pools WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::conflict(
                Entity::Pool,
                name,
                ConflictReason::NameTaken,
            ));
        }
        // The product defaults (quota_first), named explicitly: the column's DEFAULT is the
        // pre-0003 'round_robin' (see migrations/*/0003_routing.sql).
        let pool = Pool {
            id: util::new_id("pool")?,
            name: name.to_owned(),
            routing: Routing::default(),
            created_at_ms: now_ms(),
            archived_at_ms: None,
            allowed_cidrs: AllowedCidrs::default(),
        };
        sqlx::query(
            "INSERT INTO pools (id, name, strategy, max_attempts, explain_routes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(pool.id.clone())
        .bind(pool.name.clone())
        .bind(pool.routing.strategy.as_str())
        .bind(i64::from(pool.routing.max_attempts))
        .bind(i64::from(pool.routing.explain_routes))
        .bind(pool.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict(Entity::Pool, name, ConflictReason::NameTaken)
            } else {
                e.into()
            }
        })?;
        audit(
            &mut tx,
            actor,
            "pool.create",
            Some(&pool.id),
            json!({"name": name}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(pool)
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        sqlx::query(&format!("{POOL_SELECT} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(pool_from_row)
            .collect()
    }

    pub async fn pool_by_name(&self, name: &str) -> Result<Pool, StoreError> {
        let row = sqlx::query(&format!("{POOL_SELECT} WHERE name = $1"))
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => pool_from_row(&r),
            None => Err(StoreError::not_found(Entity::Pool, name, Lookup::Name)),
        }
    }

    /// Archives the pool (`archived`) or brings it back: an archived pool leaves the snapshot,
    /// so its keys stop working and its accounts serve only their other pools.
    pub async fn set_pool_archived(
        &self,
        actor: &Actor,
        name: &str,
        archived: bool,
    ) -> Result<Changed<Pool>, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let pool = pool_by_name_tx(&mut tx, name).await?;
        if pool.archived_at_ms.is_some() == archived {
            return Ok(Changed {
                changed: false,
                item: pool,
            });
        }
        sqlx::query("UPDATE pools SET archived_at = $1 WHERE id = $2")
            .bind(archived.then(now_ms))
            .bind(pool.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            if archived {
                "pool.archive"
            } else {
                "pool.restore"
            },
            Some(&pool.id),
            json!({"name": pool.name}),
            revision,
        )
        .await?;
        let pool = pool_by_name_tx(&mut tx, name).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: pool,
        })
    }

    /// Replaces the client addresses the pool's keys work from (empty: any address). The list
    /// is already checked (`AllowedCidrs` is made only from valid entries).
    pub async fn set_pool_allowed_cidrs(
        &self,
        actor: &Actor,
        name: &str,
        allowed: &AllowedCidrs,
    ) -> Result<Changed<Pool>, StoreError> {
        let (mut tx, revision) = self.begin_write().await?;
        let pool = pool_by_name_tx(&mut tx, name).await?;
        if &pool.allowed_cidrs == allowed {
            // Dropping the transaction undoes the revision bump: no push.
            return Ok(Changed {
                changed: false,
                item: pool,
            });
        }
        sqlx::query("UPDATE pools SET allowed_cidrs = $1 WHERE id = $2")
            .bind(allowed.to_stored())
            .bind(pool.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "pool.set_network",
            Some(&pool.id),
            json!({"pool": pool.name, "from": pool.allowed_cidrs, "to": allowed}),
            revision,
        )
        .await?;
        let pool = pool_by_name_tx(&mut tx, name).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: pool,
        })
    }
}
