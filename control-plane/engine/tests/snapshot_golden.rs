//! Store fixture → snapshot, as a golden file (`snapshots/snapshot_golden__*.snap`): what the
//! filters run on for a known set of pools, accounts, keys, routing settings and quota evidence.
//! A change to the snapshot builder, the store's reads or the contract shows up in review as a
//! diff of the snapshot itself.
//!
//! Random identifiers (`acc_…`, `pool_…`, `key_…`) are replaced by their order of first
//! appearance (`<acc#1>`), the build time is zeroed and key hashes are cut to 4 bytes (after
//! checking them), so the file is stable from run to run; everything else is as built.

mod support;

use codexmesh_engine::snapshot;
use codexmesh_model::records::{QuotaRecord, WindowEvidence};
use codexmesh_model::routing::RoutingPatch;
use codexmesh_model::Strategy;
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::{Actor, Store};
use codexmesh_test_kit::source::StableIds;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn window(used: f64, minutes: i64) -> WindowEvidence {
    WindowEvidence {
        used_percent: used,
        window_minutes: minutes,
        // Far in the future: the builder sends passed resets as 0 %, these stay as they are.
        resets_at_unix: 4_000_000_000,
        observed_at_ms: 1_700_000_000_000,
        source: "poll".into(),
    }
}

#[tokio::test]
async fn a_known_store_builds_the_known_snapshot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await?;
    let key = MasterKey::from_bytes(&[9u8; 32])?;
    let actor = Actor::cli();

    store.create_pool(&actor, "team-a").await?;
    store.create_pool(&actor, "team-b").await?;
    let alice = store
        .import_account(
            &actor,
            "team-a",
            Some("alice"),
            &support::creds("chatgpt-alice", "alice@example.com", "a1")?,
            &key,
        )
        .await?
        .account;
    let bob = store
        .import_account(
            &actor,
            "team-a",
            Some("bob"),
            &support::creds("chatgpt-bob", "bob@example.com", "b1")?,
            &key,
        )
        .await?
        .account;
    let carol = store
        .import_account(
            &actor,
            "team-b",
            Some("carol"),
            &support::creds("chatgpt-carol", "carol@example.com", "c1")?,
            &key,
        )
        .await?
        .account;
    store
        .set_pool_routing(
            &actor,
            "team-a",
            &RoutingPatch {
                strategy: Some(Strategy::PriorityOrder),
                max_attempts: Some(2),
                primary_threshold_percent: Some(Some(90.0)),
                circuit_failures: Some(Some(4)),
                ..RoutingPatch::default()
            },
        )
        .await?;
    store
        .set_account_routing(&actor, &bob.id, None, Some(1), Some(3))
        .await?;
    // Carol is one login in two pools: one account, with team-a's own priority and weight.
    store
        .join_pool(&actor, &carol.id, "team-a", Some(2), Some(5))
        .await?;
    store.set_account_paused(&actor, &carol.id, true).await?;
    // Issue 15: a key with a policy (its counted usage depends on the clock: key_usage.rs).
    store
        .create_key_with_policy(
            &actor,
            "team-a",
            Some("ci"),
            false,
            &hex::encode([1u8; 32]),
            Some(&codexmesh_model::policy::KeyPolicy {
                allowed_models: vec!["gpt-5*".into(), "o3".into()],
                requests_per_minute: Some(60),
                tokens_per_day: Some(200_000),
                primary_share_percent: Some(20.0),
                ..Default::default()
            }),
        )
        .await?;
    store
        .create_key(&actor, "team-b", Some("ops"), true, &hex::encode([2u8; 32]))
        .await?;
    let quota = QuotaRecord {
        primary: Some(window(42.0, 300)),
        secondary: Some(window(7.5, 10_080)),
        ..QuotaRecord::default()
    };
    store.write_quota(&alice.id, None, &quota, true).await?;

    let mut snap = snapshot::build(&store.snapshot_data().await?, &key, "cp-golden");
    store.close().await;
    // The build time is the only clock reading in a snapshot; key hashes are checked here and
    // shortened to 4 bytes so the golden file stays readable.
    snap.generated_at_unix_ms = 0;
    for (pool, byte) in snap.pools.iter_mut().zip([1u8, 2]) {
        for k in &mut pool.keys {
            assert_eq!(k.key_hash, vec![byte; 32]);
            k.key_hash.truncate(4);
        }
    }
    insta::assert_snapshot!(
        "known_store",
        StableIds::default().text(&format!("{snap:#?}"))
    );
    Ok(())
}
