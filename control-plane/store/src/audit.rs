//! The audit log: every change adds one row in the change's own transaction (outcome `ok`,
//! with the revision it made); a refused change adds one afterwards ([`Store::audit_refusal`],
//! revision 0). Each row names the pools it concerns in `audit_pools`, which is what tenant
//! isolation filters on: a reader sees rows about its pools, and its own rows.
//!
//! Rules: writes go through [`audit`] inside the caller's transaction (or `audit_refusal`); the
//! pools of a row come from its detail (`pool`, a `pools` list, a pool row's `name`) and, for an
//! account row, from the account's memberships at the time; this module uses only `rows`,
//! `error` and `tx` helpers. Nothing secret is ever in `detail` (callers pass metadata only).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Any, Transaction};

use crate::error::StoreError;
use crate::rows::{audit_from_row, col, AUDIT_COLS};
use crate::{Actor, Store};
use codexmesh_model::records::AuditEntry;
use codexmesh_model::util::now_ms;

/// Filters for [`Store::audit_entries`]; newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exact actor (`cli:alice`, `operator:bob`, `token:ci`).
    pub actor: Option<String>,
    /// Exact action (`pool.create`), or a prefix ending in `.` (`operator.`).
    pub action: Option<String>,
    /// Exact target (an id).
    pub target: Option<String>,
    /// Only rows about this pool.
    pub pool: Option<String>,
    /// Only rows with this outcome (`ok`, `forbidden`, …).
    pub outcome: Option<String>,
    /// Only rows at or after this time.
    pub since_ms: Option<i64>,
    /// Tenant isolation: None sees every row; Some(pools) only rows about one of these pools
    /// or made by `own_actor`.
    pub visible_pools: Option<Vec<String>>,
    /// The reader's own actor name (its own rows stay visible under `visible_pools`).
    pub own_actor: Option<String>,
    /// Only rows with an id below this (paging: pass the last id of the previous page).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// The pools an audit row's detail names: `pool`, each of `pools`, and a pool row's `name`.
fn pools_in_detail(action: &str, detail: &serde_json::Value) -> BTreeSet<String> {
    let mut pools = BTreeSet::new();
    if let Some(p) = detail.get("pool").and_then(|v| v.as_str()) {
        pools.insert(p.to_owned());
    }
    if let Some(list) = detail.get("pools").and_then(|v| v.as_array()) {
        pools.extend(list.iter().filter_map(|v| v.as_str()).map(str::to_owned));
    }
    if action.starts_with("pool.") {
        if let Some(p) = detail.get("name").and_then(|v| v.as_str()) {
            pools.insert(p.to_owned());
        }
    }
    pools
}

/// One row to write (the actor aside).
struct NewRow<'a> {
    action: &'a str,
    target: Option<&'a str>,
    outcome: &'a str,
    detail: &'a serde_json::Value,
    revision: i64,
    pools: BTreeSet<String>,
}

async fn insert_row(
    tx: &mut Transaction<'static, Any>,
    actor: &Actor,
    row: NewRow<'_>,
) -> Result<i64, StoreError> {
    let NewRow {
        action,
        target,
        outcome,
        detail,
        revision,
        mut pools,
    } = row;
    let row = sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, outcome, client, detail, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(now_ms())
    .bind(actor.name.clone())
    .bind(action.to_owned())
    .bind(target.map(str::to_owned))
    .bind(outcome.to_owned())
    .bind(actor.client.clone())
    .bind(detail.to_string())
    .bind(revision)
    .fetch_one(&mut **tx)
    .await?;
    let id: i64 = col(&row, "id")?;
    if action.starts_with("account.") {
        if let Some(account) = target {
            let rows = sqlx::query(
                "SELECT p.name AS name FROM pool_memberships m JOIN pools p ON p.id = m.pool_id \
                 WHERE m.account_id = $1",
            )
            .bind(account.to_owned())
            .fetch_all(&mut **tx)
            .await?;
            for r in &rows {
                pools.insert(col(r, "name")?);
            }
        }
    }
    for pool in pools {
        sqlx::query("INSERT INTO audit_pools (audit_id, pool) VALUES ($1, $2)")
            .bind(id)
            .bind(pool)
            .execute(&mut **tx)
            .await?;
    }
    Ok(id)
}

/// Adds the audit row for a change, in the change's transaction.
pub(crate) async fn audit(
    tx: &mut Transaction<'static, Any>,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
    revision: i64,
) -> Result<(), StoreError> {
    let pools = pools_in_detail(action, &detail);
    let row = NewRow {
        action,
        target,
        outcome: "ok",
        detail: &detail,
        revision,
        pools,
    };
    insert_row(tx, actor, row).await?;
    Ok(())
}

impl Store {
    /// Records a change that was refused or failed: `outcome` is the refusal's kind
    /// (`forbidden`, `not_found`, …), `pools` the pools it was aimed at (when known).
    pub async fn audit_refusal(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        outcome: &str,
        pools: &[String],
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut all = pools_in_detail(action, &detail);
        all.extend(pools.iter().cloned());
        let row = NewRow {
            action,
            target,
            outcome,
            detail: &detail,
            revision: 0,
            pools: all,
        };
        insert_row(&mut tx, actor, row).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` rows (tests and tools).
    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_entries(&AuditFilter {
            limit,
            ..AuditFilter::default()
        })
        .await
    }

    /// The audit log, newest first, filtered and paged (see [`AuditFilter`]).
    pub async fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut next = |v: String| {
            binds.push(v);
            format!("${}", binds.len())
        };
        if let Some(a) = &filter.actor {
            clauses.push(format!("actor = {}", next(a.clone())));
        }
        if let Some(a) = &filter.action {
            match a.strip_suffix('.') {
                // A prefix: compare the start (no LIKE, so `_` and `%` are literal).
                Some(prefix) => clauses.push(format!(
                    "substr(action, 1, {}) = {}",
                    prefix.len() + 1,
                    next(format!("{prefix}."))
                )),
                None => clauses.push(format!("action = {}", next(a.clone()))),
            }
        }
        if let Some(t) = &filter.target {
            clauses.push(format!("target = {}", next(t.clone())));
        }
        if let Some(o) = &filter.outcome {
            clauses.push(format!("outcome = {}", next(o.clone())));
        }
        if let Some(p) = &filter.pool {
            clauses.push(format!(
                "id IN (SELECT audit_id FROM audit_pools WHERE pool = {})",
                next(p.clone())
            ));
        }
        if let Some(visible) = &filter.visible_pools {
            let mut alternatives = Vec::new();
            if !visible.is_empty() {
                let list: Vec<String> = visible.iter().map(|p| next(p.clone())).collect();
                alternatives.push(format!(
                    "id IN (SELECT audit_id FROM audit_pools WHERE pool IN ({}))",
                    list.join(", ")
                ));
            }
            if let Some(me) = &filter.own_actor {
                alternatives.push(format!("actor = {}", next(me.clone())));
            }
            if alternatives.is_empty() {
                alternatives.push("1 = 0".to_owned());
            }
            clauses.push(format!("({})", alternatives.join(" OR ")));
        }
        if let Some(since) = filter.since_ms {
            clauses.push(format!("at >= {since}"));
        }
        if let Some(before) = filter.before_id {
            clauses.push(format!("id < {before}"));
        }
        let mut sql = format!("SELECT {AUDIT_COLS} FROM audit_log");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", filter.limit.max(0)));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut entries = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        self.fill_pools(&mut entries).await?;
        Ok(entries)
    }

    /// Reads each row's pools (one query for the page).
    async fn fill_pools(&self, entries: &mut [AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        // Ids are integers from the rows just read: safe to inline.
        let rows = sqlx::query(&format!(
            "SELECT audit_id, pool FROM audit_pools WHERE audit_id IN ({}) ORDER BY pool",
            ids.join(", ")
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut by_id: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for r in &rows {
            by_id
                .entry(col(r, "audit_id")?)
                .or_default()
                .push(col(r, "pool")?);
        }
        for e in entries {
            e.pools = by_id.remove(&e.id).unwrap_or_default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pools_in_detail;
    use serde_json::json;

    #[test]
    fn a_row_concerns_the_pools_its_detail_names() {
        let got = pools_in_detail("key.create", &json!({"pool": "a", "label": "x"}));
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["a"]);
        let got = pools_in_detail(
            "operator.create",
            &json!({"name": "bob", "pools": ["b", "c"]}),
        );
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["b", "c"]);
        // `name` is a pool only on pool rows.
        assert!(pools_in_detail("operator.create", &json!({"name": "bob"})).is_empty());
        let got = pools_in_detail("pool.create", &json!({"name": "main"}));
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["main"]);
    }
}
