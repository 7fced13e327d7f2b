//! The snapshot ACK/NACK table (`envoy_nodes`, migration 0011) on SQLite and on PostgreSQL:
//! verdicts are kept per node, a NACK keeps the last ACK, nothing bumps the revision, and nodes
//! not seen for the retention period are forgotten.

mod support;

use codexmesh_model::util;
use codexmesh_store::{SnapshotVerdict, Store, ENVOY_NODE_RETENTION_MS};
use support::pg;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn exercise(store: &Store, tag: &str) -> TestResult {
    let (a, b, c) = (format!("a-{tag}"), format!("b-{tag}"), format!("c-{tag}"));
    let revision = store.revision().await?;
    let ack = |version, at_ms| SnapshotVerdict {
        version,
        accepted: true,
        detail: None,
        pool_id: None,
        at_ms,
    };
    store.record_snapshot_verdict(&a, &ack(5, 100)).await?;
    let nack = SnapshotVerdict {
        version: 6,
        accepted: false,
        detail: Some("pool p1: routing.max_attempts is 50, expected 0 (the default) to 10".into()),
        pool_id: Some("p1".into()),
        at_ms: 200,
    };
    store.record_snapshot_verdict(&a, &nack).await?;
    store.record_snapshot_verdict(&b, &ack(6, 300)).await?;
    // A NACK without a pool (a message that did not decode).
    let undecodable = SnapshotVerdict {
        version: 0,
        accepted: false,
        detail: Some("message does not decode".into()),
        pool_id: None,
        at_ms: 250,
    };
    store.record_snapshot_verdict(&b, &undecodable).await?;

    let nodes = store.envoy_nodes().await?;
    let node = |id: &str| nodes.iter().find(|n| n.node_id == id).cloned();
    let na = node(&a).ok_or("node a missing")?;
    assert_eq!(
        na.acked.as_ref().map(|x| (x.version, x.at_ms)),
        Some((5, 100))
    );
    let rejected = na.rejected.ok_or("node a has no rejection")?;
    assert_eq!((rejected.version, rejected.at_ms), (6, 200));
    assert!(rejected.detail.contains("max_attempts is 50"));
    assert_eq!(rejected.pool_id.as_deref(), Some("p1"));
    let nb = node(&b).ok_or("node b missing")?;
    assert_eq!(nb.acked.as_ref().map(|x| x.version), Some(6));
    assert_eq!(nb.rejected.as_ref().map(|r| r.version), Some(0));
    assert_eq!(nb.rejected.and_then(|r| r.pool_id), None);

    // The next ACK moves only the ACK.
    store.record_snapshot_verdict(&a, &ack(7, 400)).await?;
    let na = store
        .envoy_nodes()
        .await?
        .into_iter()
        .find(|n| n.node_id == a)
        .ok_or("node a missing")?;
    assert_eq!(na.acked.map(|x| x.version), Some(7));
    assert_eq!(na.rejected.map(|r| r.version), Some(6));
    assert_eq!(
        store.revision().await?,
        revision,
        "verdicts are not snapshot input"
    );

    // Not seen for the retention period: forgotten at the next write (of any node).
    sqlx::query("UPDATE envoy_nodes SET seen_at = $1 WHERE node_id = $2")
        .bind(util::now_ms() - ENVOY_NODE_RETENTION_MS - 1000)
        .bind(b.clone())
        .execute(store.sql_pool())
        .await?;
    store.record_snapshot_verdict(&c, &ack(7, 500)).await?;
    let ids: Vec<String> = store
        .envoy_nodes()
        .await?
        .into_iter()
        .map(|n| n.node_id)
        .filter(|id| id.ends_with(tag))
        .collect();
    assert_eq!(ids, vec![a, c]);
    Ok(())
}

#[tokio::test]
async fn sqlite_envoy_nodes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}/cm.db", dir.path().display())).await?;
    exercise(&store, "s").await
}

/// Against `CODEXMESH_TEST_POSTGRES_URL` when set, else a temporary cluster of its own; skipped
/// (with a note) only when no PostgreSQL binaries exist.
#[tokio::test]
async fn postgres_envoy_nodes() -> TestResult {
    let temp;
    let url = match std::env::var("CODEXMESH_TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => {
            temp = match pg::TempPostgres::start().map_err(|e| e.to_string())? {
                Some(t) => t,
                None => return Ok(()),
            };
            temp.url.clone()
        }
    };
    let store = Store::open(&url).await?;
    let tag = util::random_alnum(8)?.to_ascii_lowercase();
    exercise(&store, &tag).await?;
    store.close().await;
    Ok(())
}
