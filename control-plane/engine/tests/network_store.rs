//! A pool's `allowed_cidrs` in the store, on SQLite and PostgreSQL (a throwaway cluster of the
//! test kit, or `CODEXMESH_TEST_POSTGRES_URL`): written canonically in one bumping, audited
//! transaction, a no-op writes nothing, it survives a reopen, and the snapshot carries it.

mod support;

use codexmesh_engine::snapshot;
use codexmesh_model::network::AllowedCidrs;
use codexmesh_model::util;
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::*;
use support::pg;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn exercise(url: &str, tag: &str) -> TestResult {
    let store = Store::open(url).await?;
    let actor = Actor::new("test");
    let name = format!("net-{tag}");
    let pool = store.create_pool(&actor, &name).await?;
    assert!(
        pool.allowed_cidrs.is_empty(),
        "a new pool admits any address"
    );

    let list: AllowedCidrs = "10.0.0.0/8, ::ffff:192.168.1.1, 2001:db8::/32".parse()?;
    let before = store.revision().await?;
    let changed = store.set_pool_allowed_cidrs(&actor, &name, &list).await?;
    assert!(changed.changed);
    assert_eq!(
        changed.item.allowed_cidrs.to_strings(),
        ["10.0.0.0/8", "192.168.1.1/32", "2001:db8::/32"]
    );
    assert_eq!(store.revision().await?, before + 1);
    // The same list again writes nothing and moves no revision.
    let again = store.set_pool_allowed_cidrs(&actor, &name, &list).await?;
    assert!(!again.changed);
    assert_eq!(store.revision().await?, before + 1);
    let audit = store
        .audit_entries(&AuditFilter {
            action: Some("pool.set_network".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await?;
    let row = audit
        .iter()
        .find(|r| r.target.as_deref() == Some(pool.id.as_str()))
        .ok_or("no audit row")?;
    let detail: serde_json::Value = serde_json::from_str(row.detail.as_deref().unwrap_or(""))?;
    assert_eq!(detail["to"][0], "10.0.0.0/8", "{detail}");

    // Read back through a new handle, and pushed with the pool.
    drop(store);
    let store = Store::open(url).await?;
    assert_eq!(store.pool_by_name(&name).await?.allowed_cidrs, list);
    let snap = snapshot::build(&store.snapshot_data().await?, &MasterKey::generate()?, "t");
    let pushed = snap
        .pools
        .iter()
        .find(|p| p.name == name)
        .ok_or("pool missing")?;
    assert_eq!(pushed.allowed_cidrs, list.to_strings());

    // Emptied: any address again.
    let cleared = store
        .set_pool_allowed_cidrs(&actor, &name, &AllowedCidrs::default())
        .await?;
    assert!(cleared.changed && cleared.item.allowed_cidrs.is_empty());
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn sqlite_keeps_a_pools_allowed_cidrs() -> TestResult {
    let dir = tempfile::tempdir()?;
    exercise(&format!("sqlite://{}/cm.db", dir.path().display()), "lite").await
}

/// Skipped (with a note from the kit) only when no PostgreSQL binaries exist.
#[tokio::test]
async fn postgres_keeps_a_pools_allowed_cidrs() -> TestResult {
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
    let tag = util::random_alnum(8)?.to_ascii_lowercase();
    exercise(&url, &tag).await
}
