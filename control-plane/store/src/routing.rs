//! Routing changes: a pool's settings, a key's override, an account's priority and weight.
//! Each is one bumping transaction with an audit row; a change that changes nothing is rolled
//! back (no new revision, no push). Uses `rows`, `tx`, `audit` and `error`, no other aggregate.

use serde_json::json;
use sqlx::{Any, Transaction};

use crate::audit::audit;
use crate::error::StoreError;
use crate::rows::{account_from_row, NullableF64, ACCOUNT_SELECT};
use crate::tx::{
    pool_by_id_tx, pool_by_name_tx, resolve_account_for_pool_tx, resolve_key_tx, resolve_member_tx,
};
use crate::{Actor, Store};
use codexmesh_model::records::{Account, Changed, Pool, PoolKey};
use codexmesh_model::routing::{self, Primary, Routing, RoutingMode, RoutingPatch};
use codexmesh_model::util::now_ms;

/// A key's routing: the key (with its mode and override) and its pool.
#[derive(Debug, Clone)]
pub struct KeyRouting {
    pub key: PoolKey,
    pub pool: Pool,
}

impl KeyRouting {
    /// What the filter uses for this key: its override when custom, else its pool's settings.
    pub fn effective(&self) -> &Routing {
        self.key
            .routing_override
            .as_ref()
            .unwrap_or(&self.pool.routing)
    }
}

/// What `key set-routing` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyRoutingChange {
    /// Drop the override: follow the pool again.
    Inherit,
    /// Own settings: the current override (or, for an inheriting key, a copy of the pool's
    /// settings) with the patch applied. An empty patch changes nothing.
    Custom(RoutingPatch),
}

/// The owner account a patch names, resolved among `pool`'s members (id first, then label):
/// `None` = not named, `Some(None)` = cleared.
async fn resolve_primary_tx(
    tx: &mut Transaction<'static, Any>,
    pool: &Pool,
    primary: Option<&Primary>,
) -> Result<Option<Option<String>>, StoreError> {
    let ident = match primary {
        None => return Ok(None),
        Some(Primary::Clear) => return Ok(Some(None)),
        Some(Primary::Account(ident)) => ident,
    };
    let mut rows = sqlx::query(&format!(
        "{ACCOUNT_SELECT} JOIN pool_memberships m ON m.account_id = a.id \
         WHERE m.pool_id = $1 AND a.id = $2"
    ))
    .bind(pool.id.clone())
    .bind(ident.clone())
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        rows = sqlx::query(&format!(
            "{ACCOUNT_SELECT} JOIN pool_memberships m ON m.account_id = a.id \
             WHERE m.pool_id = $1 AND a.label = $2 ORDER BY a.id"
        ))
        .bind(pool.id.clone())
        .bind(ident.clone())
        .fetch_all(&mut **tx)
        .await?;
    }
    let accounts: Vec<Account> = rows
        .iter()
        .map(account_from_row)
        .collect::<Result<_, _>>()?;
    match accounts.as_slice() {
        [one] => Ok(Some(Some(one.id.clone()))),
        [] => Err(StoreError::invalid(
            "primary",
            format!(
                "invalid --primary {ident:?}: no account with that id or label in pool {:?}",
                pool.name
            ),
        )),
        several => Err(StoreError::invalid(
            "primary",
            format!(
                "invalid --primary {ident:?}: several accounts in pool {:?} have that label \
                 ({}); use the id",
                pool.name,
                several
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Writes every routing column of a `pools` or `pool_keys` row (same column names in both).
pub(crate) async fn write_routing_tx(
    tx: &mut Transaction<'static, Any>,
    table: &'static str,
    id: &str,
    r: &Routing,
) -> Result<(), StoreError> {
    // Key rows also record that they now carry their own settings.
    let mode = if table == "pool_keys" {
        ", routing_mode = 'custom'"
    } else {
        ""
    };
    sqlx::query(&format!(
        "UPDATE {table} SET strategy = $1, max_attempts = $2, explain_routes = $3, \
           primary_account_id = $4, primary_threshold_percent = $5, \
           secondary_threshold_percent = $6, circuit_failures = $7, circuit_open_ms = $8, \
           cooldown_max_ms = $9, websockets = $10{mode} WHERE id = $11"
    ))
    .bind(r.strategy.as_str())
    .bind(i64::from(r.max_attempts))
    .bind(i64::from(r.explain_routes))
    .bind(r.primary_account_id.clone())
    .bind(NullableF64(r.primary_threshold_percent))
    .bind(NullableF64(r.secondary_threshold_percent))
    .bind(r.circuit_failures.map(i64::from))
    .bind(r.circuit_open_ms.map(i64::from))
    .bind(r.cooldown_max_ms.map(i64::from))
    .bind(i64::from(r.websockets))
    .bind(id.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Changes the given routing settings of a pool; the rest stay as they are.
    pub async fn set_pool_routing(
        &self,
        actor: &Actor,
        pool_name: &str,
        patch: &RoutingPatch,
    ) -> Result<Changed<Pool>, StoreError> {
        // Checked before the transaction: a bad value writes nothing.
        patch.validate().map_err(StoreError::from)?;
        let (mut tx, revision) = self.begin_write().await?;
        let pool = pool_by_name_tx(&mut tx, pool_name).await?;
        let primary = resolve_primary_tx(&mut tx, &pool, patch.primary.as_ref()).await?;
        let routing = pool.routing.apply(patch, primary);
        if routing == pool.routing {
            // Nothing to do: dropping the transaction also undoes the revision bump.
            return Ok(Changed {
                changed: false,
                item: pool,
            });
        }
        write_routing_tx(&mut tx, "pools", &pool.id, &routing).await?;
        audit(
            &mut tx,
            actor,
            "pool.set_routing",
            Some(&pool.id),
            json!({"pool": pool.name, "from": pool.routing, "to": routing}),
            revision,
        )
        .await?;
        let pool = pool_by_id_tx(&mut tx, &pool.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: pool,
        })
    }

    /// A key's routing, found by id or label.
    pub async fn key_routing(&self, ident: &str) -> Result<KeyRouting, StoreError> {
        let mut tx = self.pool.begin().await?;
        let key = resolve_key_tx(&mut tx, ident).await?;
        let pool = pool_by_id_tx(&mut tx, &key.pool_id).await?;
        tx.commit().await?;
        Ok(KeyRouting { key, pool })
    }

    /// Gives a key its own routing settings, changes them, or drops them (inherit).
    pub async fn set_key_routing(
        &self,
        actor: &Actor,
        ident: &str,
        change: &KeyRoutingChange,
    ) -> Result<Changed<KeyRouting>, StoreError> {
        if let KeyRoutingChange::Custom(patch) = change {
            patch.validate().map_err(StoreError::from)?;
        }
        let (mut tx, revision) = self.begin_write().await?;
        let key = resolve_key_tx(&mut tx, ident).await?;
        let pool = pool_by_id_tx(&mut tx, &key.pool_id).await?;
        let (to, detail) = match change {
            KeyRoutingChange::Inherit => {
                if key.routing_mode == RoutingMode::Inherit {
                    return Ok(Changed {
                        changed: false,
                        item: KeyRouting { key, pool },
                    });
                }
                sqlx::query(
                    "UPDATE pool_keys SET routing_mode = 'inherit', strategy = NULL, \
                       max_attempts = NULL, explain_routes = NULL, primary_account_id = NULL, \
                       primary_threshold_percent = NULL, secondary_threshold_percent = NULL, \
                       circuit_failures = NULL, circuit_open_ms = NULL, cooldown_max_ms = NULL, \
                       websockets = NULL \
                     WHERE id = $1",
                )
                .bind(key.id.clone())
                .execute(&mut *tx)
                .await?;
                (RoutingMode::Inherit, serde_json::Value::Null)
            }
            KeyRoutingChange::Custom(patch) => {
                if patch.is_empty() {
                    return Ok(Changed {
                        changed: false,
                        item: KeyRouting { key, pool },
                    });
                }
                // An inheriting key starts from what it has been using: its pool's settings.
                let base = key
                    .routing_override
                    .clone()
                    .unwrap_or_else(|| pool.routing.clone());
                let primary = resolve_primary_tx(&mut tx, &pool, patch.primary.as_ref()).await?;
                let routing = base.apply(patch, primary);
                if key.routing_override.as_ref() == Some(&routing) {
                    return Ok(Changed {
                        changed: false,
                        item: KeyRouting { key, pool },
                    });
                }
                write_routing_tx(&mut tx, "pool_keys", &key.id, &routing).await?;
                (RoutingMode::Custom, json!(routing))
            }
        };
        audit(
            &mut tx,
            actor,
            "key.set_routing",
            Some(&key.id),
            json!({"pool": pool.name, "label": key.label, "from_mode": key.routing_mode,
                   "from": key.routing_override, "mode": to, "to": detail}),
            revision,
        )
        .await?;
        let key = resolve_key_tx(&mut tx, &key.id).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: KeyRouting { key, pool },
        })
    }

    /// Sets an account's priority (lower goes first in priority_order and primary_first) and
    /// weight (its share in round robin and session spreading) in one pool: `pool` names it,
    /// and may be left out for an account in one pool only.
    pub async fn set_account_routing(
        &self,
        actor: &Actor,
        ident: &str,
        pool: Option<&str>,
        priority: Option<u32>,
        weight: Option<u32>,
    ) -> Result<Changed<Account>, StoreError> {
        if let Some(w) = weight {
            routing::check_weight(w).map_err(StoreError::from)?;
        }
        let (mut tx, revision) = self.begin_write().await?;
        let account = resolve_account_for_pool_tx(&mut tx, ident, pool).await?;
        let new_priority = priority.unwrap_or(account.priority);
        let new_weight = weight.unwrap_or(account.weight);
        if (new_priority, new_weight) == (account.priority, account.weight) {
            return Ok(Changed {
                changed: false,
                item: account,
            });
        }
        sqlx::query(
            "UPDATE pool_memberships SET priority = $1, weight = $2 \
             WHERE pool_id = $3 AND account_id = $4",
        )
        .bind(i64::from(new_priority))
        .bind(i64::from(new_weight))
        .bind(account.pool_id.clone())
        .bind(account.id.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE accounts SET updated_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(account.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "account.set",
            Some(&account.id),
            json!({"pool": account.pool, "label": account.label,
                   "from": {"priority": account.priority, "weight": account.weight},
                   "to": {"priority": new_priority, "weight": new_weight}}),
            revision,
        )
        .await?;
        let pool = pool_by_id_tx(&mut tx, &account.pool_id).await?;
        let account = resolve_member_tx(&mut tx, &account.id, &pool).await?;
        tx.commit().await?;
        Ok(Changed {
            changed: true,
            item: account,
        })
    }
}
