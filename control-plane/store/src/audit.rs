//! The audit log: every snapshot-input write adds one row in its own transaction (with the
//! revision it made), and operators read the newest. Rules: writes go through [`audit`] inside
//! the caller's transaction; this module uses only `rows` and `error`.

use sqlx::{Any, Transaction};

use crate::error::StoreError;
use crate::rows::{audit_from_row, AUDIT_COLS};
use crate::{Actor, Store};
use codexmesh_model::records::AuditEntry;

/// Adds the audit row for a write, in the write's transaction.
pub(crate) async fn audit(
    tx: &mut Transaction<'static, Any>,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
    revision: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail, revision) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(codexmesh_model::util::now_ms())
    .bind(actor.name.clone())
    .bind(action.to_owned())
    .bind(target.map(str::to_owned))
    .bind(detail.to_string())
    .bind(revision)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLS} FROM audit_log ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}
