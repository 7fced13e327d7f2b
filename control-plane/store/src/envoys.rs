//! Snapshot ACK/NACK per Envoy node (`envoy_nodes`): the last version each node accepted and the
//! last it rejected, with the reason. Every replica writes what its own subscribers report, so
//! `codexmesh status` (which reads only the store) and the admin API of any replica show it.
//!
//! Rules: not snapshot input (no revision bump, no audit row); one upsert per verdict, and the
//! caller writes only when a verdict changed (or a node's first verdict on a new stream, which
//! marks it seen); each write also forgets nodes not seen for
//! [`ENVOY_NODE_RETENTION_MS`] and keeps at most [`MAX_ENVOY_NODES`] rows (the least recently
//! seen go first), so the table cannot grow without bound. Uses only `rows` and `error`.

use sqlx::any::AnyRow;

use crate::error::StoreError;
use crate::rows::col;
use crate::Store;
use codexmesh_model::util::now_ms;

/// A node without a verdict for this long is forgotten: 7 days.
pub const ENVOY_NODE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// At most this many nodes are kept.
pub const MAX_ENVOY_NODES: i64 = 10_000;

/// One verdict of a node's filter on a snapshot version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotVerdict {
    pub version: i64,
    pub accepted: bool,
    /// Why it was rejected (None for an ACK).
    pub detail: Option<String>,
    /// The pool a rejection concerns.
    pub pool_id: Option<String>,
    /// When the filter decided (unix ms).
    pub at_ms: i64,
}

/// The last accepted version of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedVersion {
    pub version: i64,
    pub at_ms: i64,
}

/// The last rejected version of a node, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedVersion {
    pub version: i64,
    pub at_ms: i64,
    pub detail: String,
    pub pool_id: Option<String>,
}

/// What the store knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyNode {
    pub node_id: String,
    pub acked: Option<AckedVersion>,
    pub rejected: Option<RejectedVersion>,
    /// When its last verdict was written (unix ms).
    pub seen_at_ms: i64,
}

const NODE_SELECT: &str = "SELECT node_id, acked_version, acked_at, nacked_version, nacked_at, \
                           nack_detail, nack_pool_id, seen_at FROM envoy_nodes";

fn node_from_row(r: &AnyRow) -> Result<EnvoyNode, StoreError> {
    let acked = match (
        col::<Option<i64>>(r, "acked_version")?,
        col::<Option<i64>>(r, "acked_at")?,
    ) {
        (Some(version), Some(at_ms)) => Some(AckedVersion { version, at_ms }),
        _ => None,
    };
    let rejected = match (
        col::<Option<i64>>(r, "nacked_version")?,
        col::<Option<i64>>(r, "nacked_at")?,
    ) {
        (Some(version), Some(at_ms)) => Some(RejectedVersion {
            version,
            at_ms,
            detail: col::<Option<String>>(r, "nack_detail")?.unwrap_or_default(),
            pool_id: col(r, "nack_pool_id")?,
        }),
        _ => None,
    };
    Ok(EnvoyNode {
        node_id: col(r, "node_id")?,
        acked,
        rejected,
        seen_at_ms: col(r, "seen_at")?,
    })
}

impl Store {
    /// Records `verdict` as node `node_id`'s last ACK or NACK.
    pub async fn record_snapshot_verdict(
        &self,
        node_id: &str,
        verdict: &SnapshotVerdict,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let sql = if verdict.accepted {
            "INSERT INTO envoy_nodes (node_id, acked_version, acked_at, seen_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (node_id) DO UPDATE SET acked_version = excluded.acked_version, \
               acked_at = excluded.acked_at, seen_at = excluded.seen_at"
        } else {
            "INSERT INTO envoy_nodes (node_id, nacked_version, nacked_at, seen_at, nack_detail, \
               nack_pool_id) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (node_id) DO UPDATE SET nacked_version = excluded.nacked_version, \
               nacked_at = excluded.nacked_at, seen_at = excluded.seen_at, \
               nack_detail = excluded.nack_detail, nack_pool_id = excluded.nack_pool_id"
        };
        let mut q = sqlx::query(sql)
            .bind(node_id.to_owned())
            .bind(verdict.version)
            .bind(verdict.at_ms)
            .bind(now);
        if !verdict.accepted {
            q = q
                .bind(verdict.detail.clone().unwrap_or_default())
                .bind(verdict.pool_id.clone());
        }
        q.execute(&self.pool).await?;
        self.forget_old_envoy_nodes(now).await
    }

    async fn forget_old_envoy_nodes(&self, now: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM envoy_nodes WHERE seen_at < $1")
            .bind(now.saturating_sub(ENVOY_NODE_RETENTION_MS))
            .execute(&self.pool)
            .await?;
        // LIMIT with a huge number rather than none: SQLite needs a LIMIT before OFFSET.
        sqlx::query(
            "DELETE FROM envoy_nodes WHERE node_id IN (SELECT node_id FROM envoy_nodes \
             ORDER BY seen_at DESC, node_id LIMIT 1000000000 OFFSET $1)",
        )
        .bind(MAX_ENVOY_NODES)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every node the store knows, by node id.
    pub async fn envoy_nodes(&self) -> Result<Vec<EnvoyNode>, StoreError> {
        let rows = sqlx::query(&format!("{NODE_SELECT} ORDER BY node_id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(version: i64, at_ms: i64) -> SnapshotVerdict {
        SnapshotVerdict {
            version,
            accepted: true,
            detail: None,
            pool_id: None,
            at_ms,
        }
    }

    #[tokio::test]
    async fn verdicts_are_kept_per_node_and_old_nodes_are_forgotten() -> Result<(), StoreError> {
        let store = Store::open("sqlite::memory:").await?;
        assert!(store.envoy_nodes().await?.is_empty());
        store
            .record_snapshot_verdict("node-a", &ack(5, 100))
            .await?;
        let nack = SnapshotVerdict {
            version: 6,
            accepted: false,
            detail: Some("pool p1: routing.max_attempts is 50".into()),
            pool_id: Some("p1".into()),
            at_ms: 200,
        };
        store.record_snapshot_verdict("node-a", &nack).await?;
        store
            .record_snapshot_verdict("node-b", &ack(6, 300))
            .await?;
        let revision = store.revision().await?;

        let nodes = store.envoy_nodes().await?;
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].node_id, "node-a");
        assert_eq!(
            nodes[0].acked,
            Some(AckedVersion {
                version: 5,
                at_ms: 100
            }),
            "a NACK keeps the last ACK"
        );
        assert_eq!(
            nodes[0].rejected,
            Some(RejectedVersion {
                version: 6,
                at_ms: 200,
                detail: "pool p1: routing.max_attempts is 50".into(),
                pool_id: Some("p1".into()),
            })
        );
        assert_eq!(nodes[1].rejected, None);

        // The next ACK moves only the ACK.
        store
            .record_snapshot_verdict("node-a", &ack(7, 400))
            .await?;
        let nodes = store.envoy_nodes().await?;
        assert_eq!(nodes[0].acked.as_ref().map(|a| a.version), Some(7));
        assert_eq!(nodes[0].rejected.as_ref().map(|r| r.version), Some(6));
        assert_eq!(store.revision().await?, revision, "not snapshot input");

        // A node not seen for the retention period is forgotten at the next write.
        sqlx::query("UPDATE envoy_nodes SET seen_at = $1 WHERE node_id = 'node-b'")
            .bind(now_ms() - ENVOY_NODE_RETENTION_MS - 1000)
            .execute(store.sql_pool())
            .await?;
        store
            .record_snapshot_verdict("node-c", &ack(7, 500))
            .await?;
        let ids: Vec<String> = store
            .envoy_nodes()
            .await?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        assert_eq!(ids, vec!["node-a", "node-c"]);
        Ok(())
    }
}
