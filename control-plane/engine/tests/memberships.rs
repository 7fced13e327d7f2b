//! Pool memberships: one login is one account (one token lineage) in any number of pools, with
//! per-pool priority and weight; and the 0005 upgrade, which merges the duplicate rows older
//! releases made for a login imported into two pools. Against SQLite always, and against a
//! throwaway PostgreSQL when its binaries exist.

use serde_json::json;
use sqlx::migrate::Migrator;

mod support;

use codexmesh_engine::snapshot;
use codexmesh_model::credentials::{self as authjson, CodexCredentials};
use codexmesh_model::routing::{Primary, RoutingPatch};
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::*;
use support::{creds, pg};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A login's credentials whose access token expires at `exp` (unix seconds).
fn creds_expiring(
    account: &str,
    refresh: &str,
    exp: i64,
) -> Result<CodexCredentials, authjson::AuthJsonError> {
    let ns = "https://api.openai.com/auth";
    let id_token = authjson::unsigned_jwt(&json!({
        "email": "m@example.com",
        ns: {"chatgpt_account_id": account, "chatgpt_plan_type": "plus", "chatgpt_user_id": "u1"}
    }));
    let access_token = authjson::unsigned_jwt(&json!({"exp": exp, "n": refresh}));
    authjson::parse(
        json!({
            "auth_mode": "chatgpt",
            "tokens": {"id_token": id_token, "access_token": access_token,
                       "refresh_token": refresh, "account_id": account}
        })
        .to_string()
        .as_bytes(),
    )
}

async fn exercise_memberships(store: &Store, tag: &str, key: &MasterKey) -> TestResult {
    let actor = Actor::new("test");
    let (pa, pb) = (format!("ma-{tag}"), format!("mb-{tag}"));
    store.create_pool(&actor, &pa).await?;
    store.create_pool(&actor, &pb).await?;
    let login = format!("login-{tag}");

    // The same login into two pools: one account, two memberships.
    let first = store
        .import_account(
            &actor,
            &pa,
            None,
            &creds_expiring(&login, "rt-1", 2_000_000_000)?,
            key,
        )
        .await?;
    assert_eq!(
        (first.action, first.joined_pool, first.tokens),
        (ImportAction::Created, true, TokenUpdate::New)
    );
    let second = store
        .import_account(
            &actor,
            &pb,
            None,
            &creds_expiring(&login, "rt-1", 2_000_000_000)?,
            key,
        )
        .await?;
    assert_eq!(
        (second.action, second.joined_pool, second.tokens),
        (ImportAction::Updated, true, TokenUpdate::Replaced)
    );
    let id = first.account.id.clone();
    assert_eq!(second.account.id, id);
    assert_eq!(second.account.pool, pb, "the import's pool is in view");
    let names: Vec<&str> = second
        .account
        .pools
        .iter()
        .map(|m| m.pool.as_str())
        .collect();
    assert_eq!(names, [pa.as_str(), pb.as_str()]);
    let all = store.list_accounts(None).await?;
    assert_eq!(all.iter().filter(|a| a.id == id).count(), 1, "listed once");
    assert_eq!(store.list_accounts(Some(&pa)).await?.len(), 1);
    assert_eq!(store.list_accounts(Some(&pb)).await?.len(), 1);

    // Re-importing into a pool it is in: no new membership.
    let again = store
        .import_account(
            &actor,
            &pa,
            None,
            &creds_expiring(&login, "rt-1", 2_000_000_000)?,
            key,
        )
        .await?;
    assert!(!again.joined_pool);

    // Priority and weight are per pool; without a pool an account in two is ambiguous.
    assert!(matches!(
        store
            .set_account_routing(&actor, &id, None, Some(5), Some(3))
            .await,
        Err(StoreError::Invalid { .. })
    ));
    let set = store
        .set_account_routing(&actor, &id, Some(&pb), Some(5), Some(3))
        .await?;
    assert!(set.changed);
    assert_eq!(
        (set.item.pool.as_str(), set.item.priority, set.item.weight),
        (pb.as_str(), 5, 3)
    );
    let in_a = store.list_accounts(Some(&pa)).await?;
    assert_eq!((in_a[0].priority, in_a[0].weight), (0, 1));

    // The snapshot carries it in both pools, with each pool's priority and weight.
    let snap = snapshot::build(&store.snapshot_data().await?, key, "t");
    let member = |pool: &str| {
        snap.pools
            .iter()
            .find(|p| p.name == pool)
            .and_then(|p| p.accounts.iter().find(|a| a.id == id))
            .cloned()
    };
    let (sa, sb) = (member(&pa).ok_or("in a")?, member(&pb).ok_or("in b")?);
    assert_eq!(
        (sa.priority, sa.weight, sb.priority, sb.weight),
        (0, 1, 5, 3)
    );
    assert!(!sa.access_token.is_empty());
    assert_eq!(sa.access_token, sb.access_token);
    assert_eq!(sa.token_revision, sb.token_revision);

    // An older auth.json of the login (its refresh token was rotated since) never replaces
    // the stored tokens; a newer one does, for every pool at once.
    let old = store
        .import_account(
            &actor,
            &pa,
            None,
            &creds_expiring(&login, "rt-0", 1_900_000_000)?,
            key,
        )
        .await?;
    assert_eq!(old.tokens, TokenUpdate::KeptNewer);
    assert_eq!(store.account_secrets(&id, key).await?.refresh_token, "rt-1");
    let newer = store
        .import_account(
            &actor,
            &pb,
            None,
            &creds_expiring(&login, "rt-2", 2_100_000_000)?,
            key,
        )
        .await?;
    assert_eq!(newer.tokens, TokenUpdate::Replaced);
    assert_eq!(store.account_secrets(&id, key).await?.refresh_token, "rt-2");

    // primary_first's owner must be a member; leaving the pool clears it there.
    let primary = |who: &str| RoutingPatch {
        strategy: Some(Strategy::PrimaryFirst),
        primary: Some(Primary::Account(who.to_owned())),
        ..RoutingPatch::default()
    };
    store.set_pool_routing(&actor, &pb, &primary(&id)).await?;
    let k = store
        .create_key(
            &actor,
            &pb,
            Some(&format!("mk-{tag}")),
            false,
            &hex::encode([tag.len() as u8 ^ 0x5a; 32]),
        )
        .await;
    let (left, deleted) = store.leave_pool(&actor, &id, &pb).await?;
    assert!(!deleted);
    assert_eq!(left.id, id);
    assert_eq!(
        store.pool_by_name(&pb).await?.routing.primary_account_id,
        None
    );
    assert!(matches!(
        store.set_pool_routing(&actor, &pb, &primary(&id)).await,
        Err(StoreError::Invalid { .. })
    ));
    let after = store.account(&id).await?;
    assert_eq!(after.pools.len(), 1);
    assert_eq!(after.pool, pa);
    drop(k);

    // Join adds a membership back (once); removing the last membership removes the account.
    let joined = store.join_pool(&actor, &id, &pb, Some(2), None).await?;
    assert!(joined.changed);
    assert_eq!((joined.item.priority, joined.item.weight), (2, 1));
    assert!(!store.join_pool(&actor, &id, &pb, None, None).await?.changed);
    assert!(!store.leave_pool(&actor, &id, &pa).await?.1);
    assert!(store.leave_pool(&actor, &id, &pb).await?.1);
    assert!(matches!(
        store.account(&id).await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn sqlite_memberships() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}/cm.db", dir.path().display())).await?;
    exercise_memberships(&store, "lite", &MasterKey::generate()?).await
}

/// A database at the 0004 schema holding what the dual-ownership bug left: one login as two
/// rows in two pools (plus another account). Opening it with this release merges them.
async fn upgrade_from_0004(url: &str, full: &Migrator) -> TestResult {
    let db = support::database_at_version(url, full, 4).await?;
    for sql in [
        "INSERT INTO pools (id, name, strategy, max_attempts, explain_routes, created_at, \
           primary_account_id) VALUES ('pool_1', 'one', 'primary_first', 3, 0, 1, NULL), \
           ('pool_2', 'two', 'quota_first', 3, 0, 2, NULL)",
        // acc_old: the stale copy in pool one; acc_new: the same login in pool two, refreshed
        // later (higher token_revision); acc_other: another login.
        "INSERT INTO accounts (id, pool_id, label, chatgpt_account_id, chatgpt_user_id, \
           priority, weight, sealed_access_token, sealed_refresh_token, sealed_id_token, \
           tokens_updated_at, created_at, updated_at, token_revision) VALUES \
           ('acc_old', 'pool_1', 'dup-one', 'cg-dup', 'u1', 2, 4, $1, $1, $1, 10, 1, 1, 3), \
           ('acc_new', 'pool_2', 'dup-two', 'cg-dup', 'u1', 1, 2, $1, $1, $1, 20, 2, 2, 9), \
           ('acc_other', 'pool_1', 'other', 'cg-other', NULL, 0, 1, $1, $1, $1, 5, 3, 3, 4)",
        "UPDATE pools SET primary_account_id = 'acc_old' WHERE id = 'pool_1'",
        "INSERT INTO pool_keys (id, pool_id, label, key_hash, status, operator, created_at, \
           routing_mode, strategy, primary_account_id) VALUES \
           ('key_1', 'pool_1', 'k', 'aa', 'active', 0, 1, 'custom', 'primary_first', 'acc_old')",
        "INSERT INTO outcomes (received_at, node_id, pool_id, key_id, account_id, attempt, \
           status, started_at, latency_ms, snapshot_version) VALUES \
           (1, 'n', 'pool_1', 'key_1', 'acc_old', 1, 200, 1, 5, 3), \
           (2, 'n', 'pool_2', 'key_2', 'acc_new', 1, 200, 2, 5, 3)",
        "INSERT INTO account_stats (account_id, requests, successes, fallbacks_served, \
           updated_at) VALUES ('acc_old', 5, 4, 1, 100), ('acc_new', 7, 7, 0, 50)",
        "UPDATE meta SET value = 11 WHERE key = 'revision'",
    ] {
        sqlx::query(sql).bind(vec![0u8; 40]).execute(&db).await?;
    }
    db.close().await;

    let store = Store::open(url).await?;
    assert_eq!(store.revision().await?, 11, "a migration is not a mutation");
    let accounts = store.list_accounts(None).await?;
    assert_eq!(accounts.len(), 2, "{accounts:?}");
    let merged = accounts
        .iter()
        .find(|a| a.id == "acc_new")
        .ok_or("acc_new kept")?;
    let pools: Vec<(&str, u32, u32)> = merged
        .pools
        .iter()
        .map(|m| (m.pool.as_str(), m.priority, m.weight))
        .collect();
    assert_eq!(
        pools,
        [("one", 2, 4), ("two", 1, 2)],
        "both memberships, each its own settings"
    );
    let other = accounts
        .iter()
        .find(|a| a.id == "acc_other")
        .ok_or("acc_other")?;
    assert_eq!(other.pools.len(), 1);
    // References follow the survivor; the request log and counters are kept.
    let one = store.pool_by_name("one").await?;
    assert_eq!(one.routing.primary_account_id.as_deref(), Some("acc_new"));
    let key = store.find_key("key_1").await?;
    assert_eq!(
        key.routing_override
            .and_then(|r| r.primary_account_id)
            .as_deref(),
        Some("acc_new")
    );
    assert_eq!(store.recent_outcomes("acc_new", 10).await?.len(), 2);
    let counters = store.all_counters().await?;
    assert_eq!(
        counters.get("acc_new").copied(),
        Some(Counters {
            requests: 12,
            successes: 11,
            fallbacks_served: 1
        })
    );
    assert!(!counters.contains_key("acc_old"));
    // The login is unique from now on: importing it into either pool finds the survivor.
    let key = MasterKey::generate()?;
    let again = store
        .import_account(
            &Actor::new("t"),
            "one",
            None,
            &creds("cg-dup", "d@example.com", "z")?,
            &key,
        )
        .await?;
    assert_eq!(
        (again.account.id.as_str(), again.joined_pool),
        ("acc_new", false)
    );
    store.close().await;
    let reopened = Store::open(url).await?;
    assert_eq!(reopened.list_accounts(None).await?.len(), 2);
    reopened.close().await;
    Ok(())
}

#[tokio::test]
async fn sqlite_upgrade_merges_dual_ownership() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("old.db");
    std::fs::File::create(&path)?;
    upgrade_from_0004(&format!("sqlite://{}", path.display()), &SQLITE_MIGRATIONS).await
}

/// Both against PostgreSQL: `CODEXMESH_TEST_POSTGRES_URL` when set (memberships only: the
/// upgrade needs an empty database), else a temporary cluster of its own.
#[tokio::test]
async fn postgres_memberships_and_upgrade() -> TestResult {
    if let Ok(url) = std::env::var("CODEXMESH_TEST_POSTGRES_URL") {
        let store = Store::open(&url).await?;
        let tag = codexmesh_model::util::random_alnum(8)?.to_ascii_lowercase();
        exercise_memberships(&store, &tag, &MasterKey::from_bytes(&[7u8; 32])?).await?;
        store.close().await;
        return Ok(());
    }
    let Some(temp) = pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    // A second, empty database for the upgrade.
    let upgrade_url = support::empty_database(&temp, "upgrade_0004").await?;
    upgrade_from_0004(&upgrade_url, &POSTGRES_MIGRATIONS).await?;
    let store = Store::open(&temp.url).await?;
    exercise_memberships(&store, "pg", &MasterKey::generate()?).await?;
    store.close().await;
    Ok(())
}
