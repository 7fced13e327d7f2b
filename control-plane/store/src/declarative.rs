//! Declarative apply (`codexmesh apply`): reads what documents speak about and runs a plan's
//! steps ([`codexmesh_model::declarative_plan`]), all in one transaction.
//!
//! Rules: the state is read and the plan decided *inside* the write transaction (after its
//! first statement took the write lock), so the plan is checked against what it changes and a
//! concurrent writer waits; any error, in planning or in any step, rolls everything back (a file
//! applies whole or not at all); a plan with no steps writes nothing and a plan of operator
//! steps only does not move the revision, else it moves once for the whole file (one snapshot);
//! every step adds the audit row its imperative command adds (`"via": "apply"` in the detail);
//! a new key's raw secret exists only in the returned [`NewKey`]. Uses `rows`, `tx`, `audit`,
//! `error` and the routing writer of `routing`.

use serde_json::json;
use sqlx::{Any, Transaction};

use crate::audit::audit;
use crate::error::StoreError;
use crate::routing::write_routing_tx;
use crate::rows::{
    account_from_row, col, key_from_row, operator_from_row, pool_from_row, ACCOUNT_SELECT,
    KEY_SELECT, OPERATOR_COLS, POOL_SELECT,
};
use crate::tx::{attach_memberships_tx, pool_by_name_tx, resolve_key_tx};
use crate::{Actor, Store};
use codexmesh_model::declarative_plan::{ConfigState, Plan, Step};
use codexmesh_model::keys::RawKey;
use codexmesh_model::operators::Role;
use codexmesh_model::records::{PoolKey, Routing};
use codexmesh_model::util::{self, now_ms};

/// A key an apply created, with its secret (shown once). `Debug` hides the secret.
#[derive(Debug)]
pub struct NewKey {
    pub key: PoolKey,
    pub secret: RawKey,
}

/// What [`Store::apply_config`] did.
#[derive(Debug)]
pub struct Applied {
    pub plan: Plan,
    /// The revision the apply made (None: nothing written, a dry run or no changes). A plan of
    /// operator changes only names the revision it was made at.
    pub revision: Option<i64>,
    pub new_keys: Vec<NewKey>,
}

/// Everything documents speak about, read in the caller's transaction.
async fn read_state_tx(tx: &mut Transaction<'static, Any>) -> Result<ConfigState, StoreError> {
    let pools = sqlx::query(&format!("{POOL_SELECT} ORDER BY name"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(pool_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut accounts = sqlx::query(&format!("{ACCOUNT_SELECT} ORDER BY a.label, a.id"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(account_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_memberships_tx(tx, &mut accounts, None, None).await?;
    let keys = sqlx::query(&format!("{KEY_SELECT} ORDER BY k.created_at, k.id"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut operators = sqlx::query(&format!(
        "SELECT {OPERATOR_COLS} FROM operators ORDER BY name"
    ))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(operator_from_row)
    .collect::<Result<Vec<_>, _>>()?;
    let assignments = sqlx::query(
        "SELECT o.operator_id AS operator_id, p.name AS name FROM operator_pools o \
         JOIN pools p ON p.id = o.pool_id ORDER BY p.name",
    )
    .fetch_all(&mut **tx)
    .await?;
    for r in &assignments {
        let id: String = col(r, "operator_id")?;
        let pool: String = col(r, "name")?;
        if let Some(op) = operators.iter_mut().find(|o| o.id == id) {
            op.pools.push(pool);
        }
    }
    Ok(ConfigState {
        pools,
        accounts,
        keys,
        operators,
    })
}

impl Store {
    /// What documents speak about, as one consistent read (`get`).
    pub async fn config_state(&self) -> Result<ConfigState, StoreError> {
        let mut tx = self.begin_consistent_read().await?;
        let state = read_state_tx(&mut tx).await?;
        tx.rollback().await?;
        Ok(state)
    }

    /// Reads the state, lets `decide` plan against it, and (unless `dry_run`, or the plan has
    /// no steps) runs the plan: one transaction, all or nothing.
    pub async fn apply_config<E, F>(
        &self,
        actor: &Actor,
        dry_run: bool,
        decide: F,
    ) -> Result<Applied, E>
    where
        E: From<StoreError>,
        F: FnOnce(&ConfigState) -> Result<Plan, E>,
    {
        if dry_run {
            let state = self.config_state().await?;
            return Ok(Applied {
                plan: decide(&state)?,
                revision: None,
                new_keys: Vec::new(),
            });
        }
        // The write lock first (no revision move yet), then the read the plan is made from.
        let (mut tx, at) = self.begin_unpublished_write().await?;
        let state = read_state_tx(&mut tx).await?;
        let plan = decide(&state)?;
        if plan.is_noop() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(Applied {
                plan,
                revision: None,
                new_keys: Vec::new(),
            });
        }
        let revision = if plan.publishes() {
            sqlx::query_scalar(
                "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?
        } else {
            at
        };
        let mut new_keys = Vec::new();
        for step in &plan.steps {
            if let Some(k) = run_step_tx(&mut tx, actor, step, revision).await? {
                new_keys.push(k);
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Applied {
            plan,
            revision: Some(revision),
            new_keys,
        })
    }
}

async fn pool_id_tx(tx: &mut Transaction<'static, Any>, name: &str) -> Result<String, StoreError> {
    Ok(pool_by_name_tx(tx, name).await?.id)
}

/// Runs one step and adds its audit row.
async fn run_step_tx(
    tx: &mut Transaction<'static, Any>,
    actor: &Actor,
    step: &Step,
    revision: i64,
) -> Result<Option<NewKey>, StoreError> {
    let mut new_key = None;
    let (action, target, detail) = match step {
        Step::CreatePool { name } => {
            crate::tx::validate_pool_name(name)?;
            let id = util::new_id("pool")?;
            let r = Routing::default();
            sqlx::query(
                "INSERT INTO pools (id, name, strategy, max_attempts, explain_routes, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id.clone())
            .bind(name.clone())
            .bind(r.strategy.as_str())
            .bind(i64::from(r.max_attempts))
            .bind(i64::from(r.explain_routes))
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            ("pool.create", id, json!({"name": name}))
        }
        Step::RestorePool { name } | Step::ArchivePool { name } => {
            let archive = matches!(step, Step::ArchivePool { .. });
            let id = pool_id_tx(tx, name).await?;
            sqlx::query("UPDATE pools SET archived_at = $1 WHERE id = $2")
                .bind(archive.then(now_ms))
                .bind(id.clone())
                .execute(&mut **tx)
                .await?;
            let action = if archive {
                "pool.archive"
            } else {
                "pool.restore"
            };
            (action, id, json!({"name": name}))
        }
        Step::SetPoolRouting { pool, from, to } => {
            let id = pool_id_tx(tx, pool).await?;
            write_routing_tx(tx, "pools", &id, to).await?;
            (
                "pool.set_routing",
                id,
                json!({"pool": pool, "from": from, "to": to}),
            )
        }
        Step::SetPoolNetwork { pool, from, to } => {
            let id = pool_id_tx(tx, pool).await?;
            sqlx::query("UPDATE pools SET allowed_cidrs = $1 WHERE id = $2")
                .bind(to.to_stored())
                .bind(id.clone())
                .execute(&mut **tx)
                .await?;
            (
                "pool.set_network",
                id,
                json!({"pool": pool, "from": from, "to": to}),
            )
        }
        Step::Join {
            pool,
            account_id,
            label,
            priority,
            weight,
        } => {
            let id = pool_id_tx(tx, pool).await?;
            sqlx::query(
                "INSERT INTO pool_memberships (pool_id, account_id, priority, weight, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(account_id.clone())
            .bind(i64::from(*priority))
            .bind(i64::from(*weight))
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            touch_account_tx(tx, account_id).await?;
            (
                "account.join",
                account_id.clone(),
                json!({"pool": pool, "label": label, "priority": priority, "weight": weight}),
            )
        }
        Step::SetMembership {
            pool,
            account_id,
            label,
            from,
            to,
        } => {
            let id = pool_id_tx(tx, pool).await?;
            sqlx::query(
                "UPDATE pool_memberships SET priority = $1, weight = $2 \
                 WHERE pool_id = $3 AND account_id = $4",
            )
            .bind(i64::from(to.0))
            .bind(i64::from(to.1))
            .bind(id)
            .bind(account_id.clone())
            .execute(&mut **tx)
            .await?;
            touch_account_tx(tx, account_id).await?;
            (
                "account.set",
                account_id.clone(),
                json!({"pool": pool, "label": label,
                       "from": {"priority": from.0, "weight": from.1},
                       "to": {"priority": to.0, "weight": to.1}}),
            )
        }
        Step::SetEgressProxy {
            account_id,
            label,
            from,
            to,
        } => {
            sqlx::query("UPDATE accounts SET egress_proxy = $1 WHERE id = $2")
                .bind(to.clone())
                .bind(account_id.clone())
                .execute(&mut **tx)
                .await?;
            touch_account_tx(tx, account_id).await?;
            (
                "account.set_egress_proxy",
                account_id.clone(),
                json!({"label": label, "from": from, "to": to}),
            )
        }
        Step::Leave {
            pool,
            account_id,
            label,
        } => {
            let id = pool_id_tx(tx, pool).await?;
            // An owner must be a member: where it led this pool or one of its keys, no more.
            sqlx::query(
                "UPDATE pools SET primary_account_id = NULL \
                 WHERE id = $1 AND primary_account_id = $2",
            )
            .bind(id.clone())
            .bind(account_id.clone())
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE pool_keys SET primary_account_id = NULL \
                 WHERE pool_id = $1 AND primary_account_id = $2",
            )
            .bind(id.clone())
            .bind(account_id.clone())
            .execute(&mut **tx)
            .await?;
            let gone =
                sqlx::query("DELETE FROM pool_memberships WHERE pool_id = $1 AND account_id = $2")
                    .bind(id)
                    .bind(account_id.clone())
                    .execute(&mut **tx)
                    .await?;
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM pool_memberships WHERE account_id = $1")
                    .bind(account_id.clone())
                    .fetch_one(&mut **tx)
                    .await?;
            if gone.rows_affected() == 0 || left == 0 {
                return Err(StoreError::Corrupt(format!(
                    "account {label} cannot leave pool {pool}: not a member, or its last pool"
                )));
            }
            (
                "account.leave",
                account_id.clone(),
                json!({"pool": pool, "label": label}),
            )
        }
        Step::CreateKey {
            pool,
            label,
            operator,
            routing,
            policy,
        } => {
            crate::tx::validate_label(label)?;
            if let Some(p) = policy {
                crate::keys::check_policy(p)?;
            }
            let pool_id = pool_id_tx(tx, pool).await?;
            let secret = RawKey::generate()?;
            let id = util::new_id("key")?;
            sqlx::query(
                "INSERT INTO pool_keys (id, pool_id, label, key_hash, status, operator, \
                 created_at) VALUES ($1, $2, $3, $4, 'active', $5, $6)",
            )
            .bind(id.clone())
            .bind(pool_id)
            .bind(label.clone())
            .bind(secret.hash_hex())
            .bind(i64::from(*operator))
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
            if let Some(r) = routing {
                write_routing_tx(tx, "pool_keys", &id, r).await?;
            }
            if policy.is_some() {
                sqlx::query("UPDATE pool_keys SET policy = $1 WHERE id = $2")
                    .bind(crate::rows::policy_column(policy.as_ref())?)
                    .bind(id.clone())
                    .execute(&mut **tx)
                    .await?;
            }
            let key = resolve_key_tx(tx, &id).await?;
            new_key = Some(NewKey { key, secret });
            (
                "key.create",
                id,
                json!({"pool": pool, "label": label, "operator": operator,
                       "routing": routing, "policy": policy}),
            )
        }
        Step::SetKeyOperator {
            key_id,
            pool,
            label,
            operator,
        } => {
            sqlx::query("UPDATE pool_keys SET operator = $1 WHERE id = $2")
                .bind(i64::from(*operator))
                .bind(key_id.clone())
                .execute(&mut **tx)
                .await?;
            (
                "key.set",
                key_id.clone(),
                json!({"pool": pool, "label": label, "operator": operator}),
            )
        }
        Step::SetKeyRouting {
            key_id,
            pool,
            label,
            from,
            to,
        } => {
            match to {
                Some(r) => write_routing_tx(tx, "pool_keys", key_id, r).await?,
                None => {
                    sqlx::query(
                        "UPDATE pool_keys SET routing_mode = 'inherit', strategy = NULL, \
                           max_attempts = NULL, explain_routes = NULL, primary_account_id = NULL, \
                           primary_threshold_percent = NULL, secondary_threshold_percent = NULL, \
                           circuit_failures = NULL, circuit_open_ms = NULL, cooldown_max_ms = NULL, \
                           websockets = NULL \
                         WHERE id = $1",
                    )
                    .bind(key_id.clone())
                    .execute(&mut **tx)
                    .await?;
                }
            }
            let mode = |r: &Option<Routing>| if r.is_some() { "custom" } else { "inherit" };
            (
                "key.set_routing",
                key_id.clone(),
                json!({"pool": pool, "label": label, "from_mode": mode(from), "from": from,
                       "mode": mode(to), "to": to}),
            )
        }
        Step::SetKeyPolicy {
            key_id,
            pool,
            label,
            from,
            to,
        } => {
            if let Some(p) = to {
                crate::keys::check_policy(p)?;
            }
            sqlx::query("UPDATE pool_keys SET policy = $1 WHERE id = $2")
                .bind(crate::rows::policy_column(to.as_ref())?)
                .bind(key_id.clone())
                .execute(&mut **tx)
                .await?;
            (
                "key.set_policy",
                key_id.clone(),
                json!({"pool": pool, "label": label, "from": from, "to": to}),
            )
        }
        Step::RevokeKey {
            key_id,
            pool,
            label,
        } => {
            sqlx::query(
                "UPDATE pool_keys SET status = 'revoked', revoked_at = $1 \
                 WHERE id = $2 AND status = 'active'",
            )
            .bind(now_ms())
            .bind(key_id.clone())
            .execute(&mut **tx)
            .await?;
            (
                "key.revoke",
                key_id.clone(),
                json!({"pool": pool, "label": label}),
            )
        }
        Step::SetOperatorRole {
            operator_id,
            name,
            from,
            to,
        } => {
            // A new role ends the operator's sessions (the epoch moves), as `operator set-role`.
            sqlx::query(
                "UPDATE operators SET role = $1, session_epoch = session_epoch + 1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(to.as_str().to_owned())
            .bind(now_ms())
            .bind(operator_id.clone())
            .execute(&mut **tx)
            .await?;
            if *to == Role::Owner {
                sqlx::query("DELETE FROM operator_pools WHERE operator_id = $1")
                    .bind(operator_id.clone())
                    .execute(&mut **tx)
                    .await?;
            }
            (
                "operator.set_role",
                operator_id.clone(),
                json!({"name": name, "from": from, "to": to}),
            )
        }
        Step::SetOperatorPools {
            operator_id,
            name,
            from,
            to,
        } => {
            sqlx::query("DELETE FROM operator_pools WHERE operator_id = $1")
                .bind(operator_id.clone())
                .execute(&mut **tx)
                .await?;
            for pool in to {
                let pool_id = pool_id_tx(tx, pool).await?;
                sqlx::query(
                    "INSERT INTO operator_pools (operator_id, pool_id, created_at) \
                     VALUES ($1, $2, $3)",
                )
                .bind(operator_id.clone())
                .bind(pool_id)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
            }
            sqlx::query("UPDATE operators SET updated_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(operator_id.clone())
                .execute(&mut **tx)
                .await?;
            let mut pools: Vec<&String> = from.iter().chain(to).collect();
            pools.sort();
            pools.dedup();
            (
                "operator.assign",
                operator_id.clone(),
                json!({"name": name, "from": from, "to": to, "pools": pools}),
            )
        }
    };
    let mut detail = detail;
    if let Some(map) = detail.as_object_mut() {
        map.insert("via".into(), json!("apply"));
    }
    audit(tx, actor, action, Some(&target), detail, revision).await?;
    Ok(new_key)
}

async fn touch_account_tx(
    tx: &mut Transaction<'static, Any>,
    account_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE accounts SET updated_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(account_id.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_model::declarative_plan::Plan;

    async fn store() -> Result<Store, StoreError> {
        Store::open("sqlite::memory:").await
    }

    #[tokio::test]
    async fn a_failing_step_rolls_the_whole_plan_back() -> Result<(), StoreError> {
        let s = store().await?;
        let actor = Actor::new("test");
        let before = s.revision().await?;
        let plan = Plan {
            objects: Vec::new(),
            steps: vec![
                Step::CreatePool { name: "a".into() },
                // Not a member: the step refuses, and the pool above goes too.
                Step::Leave {
                    pool: "a".into(),
                    account_id: "acc_x".into(),
                    label: "x".into(),
                },
            ],
        };
        let r = s
            .apply_config(&actor, false, |_| Ok::<_, StoreError>(plan))
            .await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
        assert_eq!(s.revision().await?, before);
        assert!(s.list_pools().await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn one_revision_per_apply_and_none_for_nothing() -> Result<(), StoreError> {
        let s = store().await?;
        let actor = Actor::new("test");
        let before = s.revision().await?;
        let plan = Plan {
            objects: Vec::new(),
            steps: vec![
                Step::CreatePool { name: "a".into() },
                Step::CreatePool { name: "b".into() },
                Step::CreateKey {
                    pool: "a".into(),
                    label: "ci".into(),
                    operator: false,
                    routing: None,
                    policy: None,
                },
            ],
        };
        let applied = s
            .apply_config(&actor, false, |_| Ok::<_, StoreError>(plan))
            .await?;
        assert_eq!(applied.revision, Some(before + 1));
        assert_eq!(s.revision().await?, before + 1);
        assert_eq!(applied.new_keys.len(), 1);
        let key = &applied.new_keys[0];
        assert_eq!(key.key.label, "ci");
        assert_eq!(key.key.key_hash_hex, key.secret.hash_hex());
        let state = s.config_state().await?;
        assert_eq!(state.pools.len(), 2);
        let none = s
            .apply_config(&actor, false, |_| Ok::<_, StoreError>(Plan::default()))
            .await?;
        assert_eq!(none.revision, None);
        assert_eq!(s.revision().await?, before + 1);
        let audit = s.recent_audit(10).await?;
        assert_eq!(
            audit
                .iter()
                .filter(|a| a
                    .detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("\"via\":\"apply\""))
                .count(),
            3
        );
        Ok(())
    }
}
