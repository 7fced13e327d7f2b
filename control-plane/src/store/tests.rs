//! Store tests, run against SQLite always and against Postgres when
//! `CODEXMESH_TEST_POSTGRES_URL` names a database the test may fill (it uses fresh pool names, but
//! give it a scratch database).

use serde_json::json;

use super::*;
use crate::authjson::{self, CodexCredentials};
use crate::crypto::MasterKey;
use crate::util;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn creds(
    account: &str,
    email: &str,
    access: &str,
) -> Result<CodexCredentials, authjson::AuthJsonError> {
    let ns = "https://api.openai.com/auth";
    let id_token = authjson::unsigned_jwt(&json!({
        "email": email,
        ns: {"chatgpt_account_id": account, "chatgpt_plan_type": "plus", "chatgpt_user_id": "u1"}
    }));
    let access_token = authjson::unsigned_jwt(&json!({"exp": 2_000_000_000, "n": access}));
    authjson::parse(
        json!({
            "auth_mode": "chatgpt",
            "tokens": {"id_token": id_token, "access_token": access_token,
                       "refresh_token": format!("rt-{access}"), "account_id": account}
        })
        .to_string()
        .as_bytes(),
    )
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Result<Store, StoreError> {
    Store::open(&format!("sqlite://{}/nested/cm.db", dir.path().display())).await
}

/// The whole lifecycle against one store; `tag` keeps names unique on a shared Postgres.
async fn exercise(store: &Store, tag: &str, key: &MasterKey) -> TestResult {
    let actor = Actor("test".into());
    let pool_name = format!("p-{tag}");

    let r0 = store.revision().await?;
    let pool = store.create_pool(&actor, &pool_name).await?;
    let r1 = store.revision().await?;
    assert_eq!(r1, r0 + 1, "create_pool bumps the revision once");

    // A failed mutation leaves the revision alone.
    let dup = store.create_pool(&actor, &pool_name).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert!(matches!(
        store.create_pool(&actor, "bad name!").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.revision().await?, r1);

    // Import, then re-import the same ChatGPT account: one row, new tokens.
    let c1 = creds(&format!("acct-{tag}"), "a@example.com", "first")?;
    let imported = store
        .import_account(&actor, &pool_name, None, &c1, key)
        .await?;
    assert_eq!(imported.action, ImportAction::Created);
    assert_eq!(imported.account.label, "a@example.com");
    assert_eq!(imported.account.plan.as_deref(), Some("plus"));
    assert_eq!(
        imported.account.access_token_expires_at_ms,
        Some(2_000_000_000_000)
    );
    assert_eq!(imported.revision, store.revision().await?);
    let c2 = creds(&format!("acct-{tag}"), "a@example.com", "second")?;
    let again = store
        .import_account(&actor, &pool_name, None, &c2, key)
        .await?;
    assert_eq!(again.action, ImportAction::Updated);
    assert_eq!(again.account.id, imported.account.id);
    assert_eq!(store.list_accounts(Some(&pool_name)).await?.len(), 1);

    // Same email, another workspace: label is made distinct.
    let c3 = creds(&format!("other-{tag}"), "a@example.com", "third")?;
    let other = store
        .import_account(&actor, &pool_name, None, &c3, key)
        .await?;
    assert_ne!(other.account.label, "a@example.com");
    assert!(other.account.label.starts_with("a@example.com/"));

    // A different master key is refused before anything is written.
    let before = store.revision().await?;
    let wrong = MasterKey::generate()?;
    assert!(matches!(
        store
            .import_account(&actor, &pool_name, None, &c1, &wrong)
            .await,
        Err(StoreError::MasterKeyMismatch)
    ));
    assert!(matches!(
        store.verify_master_key(&wrong).await,
        Err(StoreError::MasterKeyMismatch)
    ));
    store.verify_master_key(key).await?;
    assert_eq!(store.revision().await?, before);

    // The snapshot carries the latest token, decrypted; the store never holds it in clear.
    let data = store.snapshot_data().await?;
    assert_eq!(data.revision, store.revision().await?);
    let row = data
        .accounts
        .iter()
        .find(|a| a.account.id == imported.account.id)
        .ok_or("imported account missing from snapshot data")?;
    let plain = key.open_string(&row.account.id, "access_token", &row.sealed_access_token)?;
    assert_eq!(plain, c2.access_token);
    assert!(!row
        .sealed_access_token
        .windows(plain.len())
        .any(|w| w == plain.as_bytes()));
    let snap = crate::snapshot::build(&data, key, "cp-test");
    let p = snap
        .pools
        .iter()
        .find(|p| p.name == pool_name)
        .ok_or("pool missing from snapshot")?;
    assert_eq!(p.accounts.len(), 2);
    assert!(p.accounts.iter().any(|a| a.access_token == c2.access_token));
    // A snapshot built with the wrong key degrades the account instead of failing.
    let degraded = crate::snapshot::build(&data, &wrong, "cp-test");
    let dp = degraded
        .pools
        .iter()
        .find(|p| p.name == pool_name)
        .ok_or("pool missing")?;
    assert!(dp.accounts.iter().all(|a| a.access_token.is_empty()
        && a.state == codexmesh_proto::v1::AccountState::NeedsReauth as i32));

    // Pause / resume: a no-op does not bump.
    let r = store.revision().await?;
    let paused = store
        .set_account_paused(&actor, &imported.account.id, true)
        .await?;
    assert!(paused.changed);
    assert_eq!(paused.item.state, AccountState::Paused);
    assert_eq!(store.revision().await?, r + 1);
    let again = store
        .set_account_paused(&actor, &imported.account.id, true)
        .await?;
    assert!(!again.changed);
    assert_eq!(store.revision().await?, r + 1);
    // Re-import keeps a paused account paused.
    let re = store
        .import_account(&actor, &pool_name, None, &c2, key)
        .await?;
    assert_eq!(re.account.state, AccountState::Paused);
    let resumed = store
        .set_account_paused(&actor, &imported.account.id, false)
        .await?;
    assert_eq!(resumed.item.state, AccountState::Active);

    // Keys: only the hash is stored; revoke bumps once; revoked keys stay in the snapshot.
    let (k, raw) = crate::keys::issue(store, &actor, &pool_name, None, true).await?;
    assert_eq!(k.key_hash_hex, raw.hash_hex());
    assert_eq!(k.label, "key-1");
    assert!(k.operator);
    let r = store.revision().await?;
    let revoked = store.revoke_key(&actor, &k.id).await?;
    assert!(revoked.changed);
    assert_eq!(revoked.item.status, KeyStatus::Revoked);
    assert!(revoked.item.revoked_at_ms.is_some());
    assert_eq!(store.revision().await?, r + 1);
    assert!(!store.revoke_key(&actor, &k.id).await?.changed);
    let snap = crate::snapshot::build(&store.snapshot_data().await?, key, "cp");
    let pk = snap
        .pools
        .iter()
        .flat_map(|p| p.keys.iter())
        .find(|pk| pk.id == k.id)
        .ok_or("key missing from snapshot")?;
    assert_eq!(pk.key_hash, raw.hash().to_vec());
    assert_eq!(pk.status, codexmesh_proto::v1::KeyStatus::Revoked as i32);
    assert!(matches!(
        store
            .create_key(&actor, "no-such-pool", None, false, &raw.hash_hex())
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Outcomes are stored but do not move the revision.
    let r = store.revision().await?;
    let outcome = OutcomeRecord {
        pool_id: pool.id.clone(),
        key_id: k.id.clone(),
        account_id: imported.account.id.clone(),
        attempt: 1,
        status: 429,
        error_code: Some("usage_limit_reached".into()),
        started_at_ms: util::now_ms(),
        latency_ms: 12,
        request_path: Some("/backend-api/codex/responses".into()),
        snapshot_version: 3,
        plan: Some("plus".into()),
        resets_at_unix: Some(2_000_000_000),
        primary: Some(QuotaWindowRecord {
            used_percent: 99.5,
            window_minutes: 300,
            resets_at_unix: 2_000_000_000,
        }),
        secondary: None,
        quota_observed_at_ms: Some(1),
        credits_has_credits: true,
        credits_unlimited: false,
        credits_balance: Some("12.5".into()),
    };
    assert_eq!(
        store
            .record_outcomes("node-1", &[outcome.clone(), outcome.clone()])
            .await?,
        2
    );
    assert_eq!(store.revision().await?, r);
    let back = store.recent_outcomes(&imported.account.id, 10).await?;
    assert_eq!(back.len(), 2);
    assert_eq!(back[0], outcome);

    // Ambiguous labels name the candidates.
    let c4 = creds(&format!("dup-{tag}"), "z@example.com", "x")?;
    store
        .import_account(&actor, &pool_name, Some("twin"), &c4, key)
        .await?;
    let c5 = creds(&format!("dup2-{tag}"), "y@example.com", "y")?;
    store
        .import_account(&actor, &pool_name, Some("twin"), &c5, key)
        .await?;
    assert!(matches!(
        store.set_account_paused(&actor, "twin", true).await,
        Err(StoreError::Ambiguous { .. })
    ));

    // Remove deletes the row; an unknown id is NotFound.
    let removed = store.remove_account(&actor, &other.account.id).await?;
    assert_eq!(removed.id, other.account.id);
    assert!(matches!(
        store.remove_account(&actor, &other.account.id).await,
        Err(StoreError::NotFound(_))
    ));

    // Every mutation left an audit row with its revision; no secrets in them.
    let audit = store.recent_audit(100).await?;
    assert!(audit.iter().any(|e| e.action == "pool.create"));
    assert!(audit.iter().any(|e| e.action == "account.reimport"));
    assert!(audit.iter().any(|e| e.action == "key.revoke"));
    let dump = serde_json::to_string(&audit)?;
    assert!(!dump.contains(&c2.access_token) && !dump.contains("rt-second"));
    Ok(())
}

#[tokio::test]
async fn sqlite_lifecycle() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = sqlite_store(&dir).await?;
    assert_eq!(store.backend(), Backend::Sqlite);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await?;
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    exercise(&store, "lite", &MasterKey::generate()?).await
}

#[tokio::test]
async fn sqlite_revision_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = sqlite_store(&dir).await?;
    assert_eq!(store.revision().await?, 1);
    store.create_pool(&Actor("t".into()), "a").await?;
    store.create_pool(&Actor("t".into()), "b").await?;
    let r = store.revision().await?;
    assert_eq!(r, 3);
    store.close().await;
    let store = sqlite_store(&dir).await?;
    assert_eq!(store.revision().await?, r);
    Ok(())
}

#[tokio::test]
async fn concurrent_writers_get_distinct_revisions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = sqlite_store(&dir).await?;
    let b = sqlite_store(&dir).await?;
    let start = a.revision().await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.create_pool(&Actor("t".into()), &format!("pool-{i}"))
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(a.revision().await?, start + 10);
    let audit = a.recent_audit(100).await?;
    let mut revs: Vec<i64> = audit.iter().map(|e| e.revision).collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 10, "each mutation has its own revision");
    Ok(())
}

#[tokio::test]
async fn in_memory_sqlite_works() -> TestResult {
    let store = Store::open("sqlite::memory:").await?;
    store.create_pool(&Actor("t".into()), "m").await?;
    assert_eq!(store.list_pools().await?.len(), 1);
    assert_eq!(store.revision().await?, 2);
    Ok(())
}

#[test]
fn sqlite_paths() {
    assert_eq!(
        sqlite_file_path("sqlite://data/codexmesh.db"),
        Some(PathBuf::from("data/codexmesh.db"))
    );
    assert_eq!(
        sqlite_file_path("sqlite:///tmp/x.db?mode=rwc"),
        Some(PathBuf::from("/tmp/x.db"))
    );
    assert_eq!(sqlite_file_path("sqlite::memory:"), None);
    assert_eq!(sqlite_file_path("postgres://h/db"), None);
}

#[tokio::test]
async fn postgres_lifecycle() -> TestResult {
    let Ok(url) = std::env::var("CODEXMESH_TEST_POSTGRES_URL") else {
        eprintln!("note: postgres_lifecycle skipped: set CODEXMESH_TEST_POSTGRES_URL to run it");
        return Ok(());
    };
    let store = Store::open(&url).await?;
    assert_eq!(store.backend(), Backend::Postgres);
    // Reopening runs the (already applied) migrations again: must be a no-op.
    let store2 = Store::open(&url).await?;
    let tag = util::random_alnum(8)?.to_ascii_lowercase();
    // A fixed key, so reruns against the same database pass the fingerprint check.
    exercise(&store, &tag, &MasterKey::from_bytes(&[7u8; 32])?).await?;
    assert_eq!(store2.revision().await?, store.revision().await?);
    Ok(())
}
