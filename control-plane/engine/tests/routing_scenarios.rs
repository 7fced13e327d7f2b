//! Routing settings in the store: the 0003 upgrade of an existing database, changes and their
//! revisions and audit rows, and what the snapshot carries. Against SQLite always, and against
//! a throwaway PostgreSQL when its binaries exist.

use codexmesh_proto::v1 as pb;
use sqlx::migrate::Migrator;

mod support;

use codexmesh_engine::snapshot;
use codexmesh_model::routing::{Primary, RoutingPatch};
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::*;
use support::{creds, pg};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn key_hash(n: u8) -> String {
    hex::encode([n; 32])
}

fn patch() -> RoutingPatch {
    RoutingPatch::default()
}

/// Creates a database at the 0002 schema (what the previous release left behind), fills it as
/// that release would have, then opens it with this one: 0003 must apply and keep everything.
async fn upgrade_from_0002(url: &str, full: &Migrator) -> TestResult {
    let db = support::database_at_version(url, full, 2).await?;
    sqlx::query(
        "INSERT INTO pools (id, name, strategy, max_attempts, explain_routes, created_at) \
         VALUES ('pool_rr', 'legacy-rr', 'round_robin', 3, 0, 1), \
                ('pool_po', 'legacy-po', 'priority_order', 5, 1, 2)",
    )
    .execute(&db)
    .await?;
    sqlx::query(
        "INSERT INTO accounts (id, pool_id, label, chatgpt_account_id, priority, weight, \
           sealed_access_token, sealed_refresh_token, sealed_id_token, tokens_updated_at, \
           created_at, updated_at) \
         VALUES ('acc_old', 'pool_rr', 'old-account', 'chatgpt-old', 2, 4, $1, $1, $1, 1, 1, 1)",
    )
    .bind(vec![0u8; 40])
    .execute(&db)
    .await?;
    sqlx::query(
        "INSERT INTO pool_keys (id, pool_id, label, key_hash, status, operator, created_at) \
         VALUES ('key_old', 'pool_rr', 'old-key', $1, 'active', 0, 1)",
    )
    .bind(key_hash(9))
    .execute(&db)
    .await?;
    sqlx::query(
        "INSERT INTO outcomes (received_at, node_id, pool_id, key_id, account_id, attempt, \
           status, started_at, latency_ms, snapshot_version) \
         VALUES (1, 'node', 'pool_rr', 'key_old', 'acc_old', 1, 200, 1, 5, 3)",
    )
    .execute(&db)
    .await?;
    sqlx::query("UPDATE meta SET value = 7 WHERE key = 'revision'")
        .execute(&db)
        .await?;
    db.close().await;

    let store = Store::open(url).await?;
    assert_eq!(store.revision().await?, 7, "a migration is not a mutation");
    let pools = store.list_pools().await?;
    let rr = pools
        .iter()
        .find(|p| p.name == "legacy-rr")
        .ok_or("legacy-rr")?;
    let po = pools
        .iter()
        .find(|p| p.name == "legacy-po")
        .ok_or("legacy-po")?;
    // Existing pools keep their strategy; their new settings read as the defaults.
    assert_eq!(
        rr.routing,
        Routing {
            strategy: Strategy::RoundRobin,
            ..Routing::default()
        }
    );
    assert_eq!(
        po.routing,
        Routing {
            strategy: Strategy::PriorityOrder,
            max_attempts: 5,
            explain_routes: true,
            ..Routing::default()
        }
    );
    let keys = store.list_keys(None).await?;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].routing_mode, RoutingMode::Inherit);
    assert_eq!(keys[0].routing_override, None);
    let accounts = store.list_accounts(None).await?;
    assert_eq!((accounts[0].priority, accounts[0].weight), (2, 4));
    let outcomes = store.recent_outcomes("acc_old", 5).await?;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(
        (
            outcomes[0].strategy.clone(),
            outcomes[0].route_reason.clone()
        ),
        (None, None)
    );
    // New pools get the product default.
    let fresh = store.create_pool(&Actor::new("t"), "fresh").await?;
    assert_eq!(fresh.routing.strategy, Strategy::QuotaFirst);
    assert_eq!(
        store.pool_by_name("fresh").await?.routing.strategy,
        Strategy::QuotaFirst
    );
    // The upgraded rows map into a snapshot with the old strategy.
    let snap = snapshot::build(&store.snapshot_data().await?, &MasterKey::generate()?, "t");
    let p = snap
        .pools
        .iter()
        .find(|p| p.name == "legacy-rr")
        .ok_or("legacy-rr in snapshot")?;
    assert_eq!(
        p.routing.as_ref().map(|r| r.strategy),
        Some(pb::Strategy::RoundRobin as i32)
    );
    assert_eq!(p.keys[0].routing_override, None);
    store.close().await;
    // Opening again applies nothing twice.
    let again = Store::open(url).await?;
    assert_eq!(again.revision().await?, 8);
    again.close().await;
    Ok(())
}

#[tokio::test]
async fn sqlite_upgrade_from_0002() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    // An empty file is an empty SQLite database (sqlx will not create one without ?mode=rwc).
    std::fs::File::create(&path)?;
    upgrade_from_0002(&format!("sqlite://{}", path.display()), &SQLITE_MIGRATIONS).await
}

async fn import(
    store: &Store,
    key: &MasterKey,
    pool: &str,
    label: &str,
    chatgpt: &str,
) -> Result<Account, Box<dyn std::error::Error>> {
    let c = creds(chatgpt, &format!("{label}@example.com"), chatgpt)?;
    Ok(store
        .import_account(&Actor::new("test"), pool, Some(label), &c, key)
        .await?
        .account)
}

/// Routing changes against one store; `tag` keeps names unique on a shared Postgres.
async fn exercise_routing(store: &Store, tag: &str, key: &MasterKey) -> TestResult {
    let actor = Actor::new("test");
    let name = format!("r-{tag}");
    let other = format!("r2-{tag}");
    let created = store.create_pool(&actor, &name).await?;
    assert_eq!(created.routing, Routing::default());
    assert_eq!(created.routing.strategy, Strategy::QuotaFirst);
    store.create_pool(&actor, &other).await?;
    let a = import(store, key, &name, "a", &format!("ra-{tag}")).await?;
    let b = import(store, key, &name, "b", &format!("rb-{tag}")).await?;
    let stranger = import(store, key, &other, "s", &format!("rs-{tag}")).await?;
    let k1 = store
        .create_key(&actor, &name, Some("k1"), false, &key_hash(1))
        .await?;
    let k2 = store
        .create_key(&actor, &name, Some("k2"), false, &key_hash(2))
        .await?;
    assert_eq!(k1.routing_mode, RoutingMode::Inherit);

    // One change: one revision, one audit row; the primary is resolved by label in the pool.
    let r0 = store.revision().await?;
    let change = RoutingPatch {
        strategy: Some(Strategy::PrimaryFirst),
        primary: Some(Primary::Account("b".into())),
        primary_threshold_percent: Some(Some(90.5)),
        circuit_open_ms: Some(Some(5000)),
        ..patch()
    };
    let done = store.set_pool_routing(&actor, &name, &change).await?;
    assert!(done.changed);
    assert_eq!(store.revision().await?, r0 + 1);
    let expected = Routing {
        strategy: Strategy::PrimaryFirst,
        primary_account_id: Some(b.id.clone()),
        primary_threshold_percent: Some(90.5),
        circuit_open_ms: Some(5000),
        ..Routing::default()
    };
    assert_eq!(done.item.routing, expected);
    assert_eq!(store.pool_by_name(&name).await?.routing, expected);
    let audit = store.recent_audit(1).await?;
    assert_eq!(audit[0].action, "pool.set_routing");
    assert_eq!(audit[0].revision, r0 + 1);
    assert_eq!(audit[0].target.as_deref(), Some(created.id.as_str()));

    // The same change again, and an empty one: nothing written.
    assert!(
        !store
            .set_pool_routing(&actor, &name, &change)
            .await?
            .changed
    );
    assert!(
        !store
            .set_pool_routing(&actor, &name, &patch())
            .await?
            .changed
    );
    assert_eq!(store.revision().await?, r0 + 1);

    // Bad values and accounts outside the pool: refused, nothing written.
    let bad = [
        RoutingPatch {
            max_attempts: Some(0),
            ..patch()
        },
        RoutingPatch {
            max_attempts: Some(11),
            ..patch()
        },
        RoutingPatch {
            primary_threshold_percent: Some(Some(0.0)),
            ..patch()
        },
        RoutingPatch {
            secondary_threshold_percent: Some(Some(f64::NAN)),
            ..patch()
        },
        RoutingPatch {
            circuit_failures: Some(Some(0)),
            ..patch()
        },
        RoutingPatch {
            cooldown_max_ms: Some(Some(999)),
            ..patch()
        },
        RoutingPatch {
            primary: Some(Primary::Account(stranger.id.clone())),
            ..patch()
        },
        RoutingPatch {
            strategy: Some(Strategy::RoundRobin),
            primary: Some(Primary::Account("s".into())),
            ..patch()
        },
        RoutingPatch {
            primary: Some(Primary::Account("nobody".into())),
            ..patch()
        },
    ];
    for p in &bad {
        let r = store.set_pool_routing(&actor, &name, p).await;
        assert!(matches!(r, Err(StoreError::Invalid { .. })), "{p:?}: {r:?}");
        let r = store
            .set_key_routing(&actor, &k1.id, &KeyRoutingChange::Custom(p.clone()))
            .await;
        assert!(matches!(r, Err(StoreError::Invalid { .. })), "{p:?}: {r:?}");
    }
    assert!(matches!(
        store
            .set_pool_routing(&actor, "no-such-pool", &change)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.revision().await?, r0 + 1);
    assert_eq!(store.pool_by_name(&name).await?.routing, expected);
    assert_eq!(store.key_routing(&k1.id).await?.key.routing_override, None);

    // A key's own settings start from its pool's; later pool changes leave them alone.
    let custom = store
        .set_key_routing(
            &actor,
            "k1",
            &KeyRoutingChange::Custom(RoutingPatch {
                strategy: Some(Strategy::RoundRobin),
                ..patch()
            }),
        )
        .await?;
    assert!(custom.changed);
    assert_eq!(custom.item.key.routing_mode, RoutingMode::Custom);
    let k1_routing = Routing {
        strategy: Strategy::RoundRobin,
        ..expected.clone()
    };
    assert_eq!(custom.item.key.routing_override.as_ref(), Some(&k1_routing));
    assert_eq!(custom.item.effective(), &k1_routing);
    assert_eq!(store.recent_audit(1).await?[0].action, "key.set_routing");
    let r1 = store.revision().await?;
    assert_eq!(r1, r0 + 2);
    store
        .set_pool_routing(
            &actor,
            &name,
            &RoutingPatch {
                max_attempts: Some(5),
                ..patch()
            },
        )
        .await?;
    assert_eq!(
        store.key_routing(&k1.id).await?.key.routing_override,
        Some(k1_routing.clone())
    );
    // An inheriting key follows the pool.
    let k2_now = store.key_routing(&k2.id).await?;
    assert_eq!(k2_now.key.routing_mode, RoutingMode::Inherit);
    assert_eq!(k2_now.effective().max_attempts, 5);
    // The same custom change again: nothing written.
    let same = store
        .set_key_routing(
            &actor,
            &k1.id,
            &KeyRoutingChange::Custom(RoutingPatch {
                strategy: Some(Strategy::RoundRobin),
                ..patch()
            }),
        )
        .await?;
    assert!(!same.changed);
    assert_eq!(store.revision().await?, r1 + 1);

    // Priority and weight.
    let set = store
        .set_account_routing(&actor, "a", None, Some(7), Some(3))
        .await?;
    assert!(set.changed);
    assert_eq!((set.item.priority, set.item.weight), (7, 3));
    assert_eq!(store.recent_audit(1).await?[0].action, "account.set");
    let r2 = store.revision().await?;
    assert!(
        !store
            .set_account_routing(&actor, &a.id, None, Some(7), None)
            .await?
            .changed
    );
    for w in [0, 1001] {
        assert!(matches!(
            store
                .set_account_routing(&actor, &a.id, None, None, Some(w))
                .await,
            Err(StoreError::Invalid { .. })
        ));
    }
    assert_eq!(store.revision().await?, r2);
    // A weight of 0 (written by hand) still goes out as 1.
    sqlx::query("UPDATE accounts SET weight = 0 WHERE id = $1")
        .bind(b.id.clone())
        .execute(store.sql_pool())
        .await?;

    // The snapshot: the pool's settings (unset = 0), an override only on the custom key.
    let snap = snapshot::build(&store.snapshot_data().await?, key, "t");
    let p = snap
        .pools
        .iter()
        .find(|p| p.name == name)
        .ok_or("pool in snapshot")?;
    assert_eq!(
        p.routing,
        Some(pb::RoutingSettings {
            strategy: pb::Strategy::PrimaryFirst as i32,
            max_attempts: 5,
            explain_routes: false,
            primary_threshold_percent: 90.5,
            secondary_threshold_percent: 0.0,
            circuit_failures: 0,
            circuit_open_ms: 5000,
            cooldown_max_ms: 0,
            primary_account_id: b.id.clone(),
            websockets_disabled: false,
        })
    );
    let override_of = |id: &str| {
        p.keys
            .iter()
            .find(|k| k.id == id)
            .map(|k| k.routing_override.clone())
    };
    assert_eq!(
        override_of(&k1.id),
        Some(Some(pb::RoutingSettings {
            strategy: pb::Strategy::RoundRobin as i32,
            max_attempts: 3,
            primary_threshold_percent: 90.5,
            circuit_open_ms: 5000,
            primary_account_id: b.id.clone(),
            ..Default::default()
        }))
    );
    assert_eq!(override_of(&k2.id), Some(None));
    let acc = |id: &str| p.accounts.iter().find(|x| x.id == id).cloned();
    let pa = acc(&a.id).ok_or("a")?;
    assert_eq!((pa.priority, pa.weight), (7, 3));
    assert_eq!(acc(&b.id).ok_or("b")?.weight, 1);

    // Back to inherit: the override is gone; doing it twice writes once.
    let back = store
        .set_key_routing(&actor, &k1.id, &KeyRoutingChange::Inherit)
        .await?;
    assert!(back.changed);
    assert_eq!(back.item.key.routing_mode, RoutingMode::Inherit);
    assert_eq!(back.item.key.routing_override, None);
    assert_eq!(back.item.effective().max_attempts, 5);
    let r3 = store.revision().await?;
    assert!(
        !store
            .set_key_routing(&actor, &k1.id, &KeyRoutingChange::Inherit)
            .await?
            .changed
    );
    assert_eq!(store.revision().await?, r3);

    // Removing the owner account clears it wherever it was the primary.
    store
        .set_key_routing(
            &actor,
            &k2.id,
            &KeyRoutingChange::Custom(RoutingPatch {
                primary: Some(Primary::Account(b.id.clone())),
                ..patch()
            }),
        )
        .await?;
    store.remove_account(&actor, &b.id).await?;
    let removal = store.recent_audit(1).await?;
    let detail: serde_json::Value =
        serde_json::from_str(removal[0].detail.as_deref().unwrap_or("null"))?;
    assert_eq!(
        detail["cleared_primary_of"],
        serde_json::json!({"pools": [name.clone()], "keys": [k2.id.clone()]})
    );
    assert_eq!(
        store.pool_by_name(&name).await?.routing.primary_account_id,
        None
    );
    let k2_after = store.key_routing(&k2.id).await?;
    assert_eq!(
        k2_after
            .key
            .routing_override
            .as_ref()
            .map(|r| r.primary_account_id.clone()),
        Some(None)
    );
    // "none" clears it too.
    let cleared = store
        .set_pool_routing(
            &actor,
            &name,
            &RoutingPatch {
                primary: Some(Primary::Account("a".into())),
                ..patch()
            },
        )
        .await?;
    assert_eq!(cleared.item.routing.primary_account_id, Some(a.id.clone()));
    let cleared = store
        .set_pool_routing(
            &actor,
            &name,
            &RoutingPatch {
                primary: Some(Primary::Clear),
                ..patch()
            },
        )
        .await?;
    assert_eq!(cleared.item.routing.primary_account_id, None);
    Ok(())
}

#[tokio::test]
async fn sqlite_routing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}/cm.db", dir.path().display())).await?;
    exercise_routing(&store, "lite", &MasterKey::generate()?).await
}

/// The same against PostgreSQL: `CODEXMESH_TEST_POSTGRES_URL` when set (routing only: the
/// upgrade needs an empty database), else a temporary cluster of its own (both); skipped with a
/// note when no PostgreSQL binaries exist.
#[tokio::test]
async fn postgres_routing_and_upgrade() -> TestResult {
    if let Ok(url) = std::env::var("CODEXMESH_TEST_POSTGRES_URL") {
        let store = Store::open(&url).await?;
        let tag = codexmesh_model::util::random_alnum(8)?.to_ascii_lowercase();
        exercise_routing(&store, &tag, &MasterKey::from_bytes(&[7u8; 32])?).await?;
        store.close().await;
        return Ok(());
    }
    let Some(temp) = pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    // A second, empty database for the upgrade.
    let upgrade_url = support::empty_database(&temp, "upgrade_0002").await?;
    upgrade_from_0002(&upgrade_url, &POSTGRES_MIGRATIONS).await?;
    let store = Store::open(&temp.url).await?;
    assert_eq!(store.backend(), Backend::Postgres);
    exercise_routing(&store, "pg", &MasterKey::generate()?).await?;
    store.close().await;
    Ok(())
}
