//! Store tests, run against SQLite always and against Postgres when
//! `CODEXMESH_TEST_POSTGRES_URL` names a database the test may fill (it uses fresh pool names, but
//! give it a scratch database).

use std::path::PathBuf;

mod support;

use codexmesh_engine::snapshot;
use support::{creds, pg};

use codexmesh_model::util;
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn sqlite_store(dir: &tempfile::TempDir) -> Result<Store, StoreError> {
    Store::open(&format!("sqlite://{}/nested/cm.db", dir.path().display())).await
}

/// The whole lifecycle against one store; `tag` keeps names unique on a shared Postgres.
async fn exercise(store: &Store, tag: &str, key: &MasterKey) -> TestResult {
    let actor = Actor::new("test");
    let pool_name = format!("p-{tag}");

    let r0 = store.revision().await?;
    let pool = store.create_pool(&actor, &pool_name).await?;
    let r1 = store.revision().await?;
    assert_eq!(r1, r0 + 1, "create_pool bumps the revision once");

    // A failed mutation leaves the revision alone.
    let dup = store.create_pool(&actor, &pool_name).await;
    assert!(matches!(dup, Err(StoreError::Conflict { .. })), "{dup:?}");
    assert!(matches!(
        store.create_pool(&actor, "bad name!").await,
        Err(StoreError::Invalid { .. })
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
    let snap = snapshot::build(&data, key, "cp-test");
    let p = snap
        .pools
        .iter()
        .find(|p| p.name == pool_name)
        .ok_or("pool missing from snapshot")?;
    assert_eq!(p.accounts.len(), 2);
    assert!(p.accounts.iter().any(|a| a.access_token == c2.access_token));
    // A snapshot built with the wrong key degrades the account instead of failing.
    let degraded = snapshot::build(&data, &wrong, "cp-test");
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
    let (k, raw) = store.issue_key(&actor, &pool_name, None, true).await?;
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
    let snap = snapshot::build(&store.snapshot_data().await?, key, "cp");
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
        Err(StoreError::NotFound { .. })
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
        error_source: Some("upstream".into()),
        fallback: true,
        retry_after_unix: Some(2_000_000_010),
        token_expires_at_unix: Some(2_000_000_000),
        strategy: Some("quota_first".into()),
        route_reason: Some("failover".into()),
        input_tokens: 1200,
        output_tokens: 340,
        policy_refusal: None,
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
        Err(StoreError::NotFound { .. })
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
        .fetch_one(store.sql_pool())
        .await?;
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    exercise(&store, "lite", &MasterKey::generate()?).await
}

#[tokio::test]
async fn sqlite_revision_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = sqlite_store(&dir).await?;
    assert_eq!(store.revision().await?, 1);
    store.create_pool(&Actor::new("t"), "a").await?;
    store.create_pool(&Actor::new("t"), "b").await?;
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
            s.create_pool(&Actor::new("t"), &format!("pool-{i}")).await
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
    store.create_pool(&Actor::new("t"), "m").await?;
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

/// Against `CODEXMESH_TEST_POSTGRES_URL` when set, else a temporary cluster of its own; skipped
/// (with a note) only when no PostgreSQL binaries exist.
#[tokio::test]
async fn postgres_lifecycle() -> TestResult {
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
    assert_eq!(store.backend(), Backend::Postgres);
    // Reopening runs the (already applied) migrations again: must be a no-op.
    let store2 = Store::open(&url).await?;
    let tag = util::random_alnum(8)?.to_ascii_lowercase();
    // A fixed key, so reruns against the same database pass the fingerprint check.
    exercise(&store, &tag, &MasterKey::from_bytes(&[7u8; 32])?).await?;
    exercise_lifecycle(&store, &tag, &MasterKey::from_bytes(&[7u8; 32])?).await?;
    assert_eq!(store2.revision().await?, store.revision().await?);
    // Leases are exclusive across connection pools on Postgres too.
    for round in 0..20 {
        let name = format!("race-{tag}-{round}");
        let (x, y) = tokio::join!(
            store.try_acquire_lease(&name, "a", 60_000),
            store2.try_acquire_lease(&name, "b", 60_000)
        );
        assert!(x? ^ y?, "round {round}: exactly one holder");
    }
    store.close().await;
    store2.close().await;
    Ok(())
}

/// Leases, refresh persistence, quota compare-and-set, counters and health: against one store
/// (also run against Postgres by the integration tests).
pub(crate) async fn exercise_lifecycle(store: &Store, tag: &str, key: &MasterKey) -> TestResult {
    let actor = Actor::new("test");
    let pool = format!("lc-{tag}");
    store.create_pool(&actor, &pool).await?;
    let imported = store
        .import_account(
            &actor,
            &pool,
            Some("lc"),
            &creds(&format!("lc-{tag}"), "l@x.y", "one")?,
            key,
        )
        .await?;
    let id = imported.account.id.clone();
    assert_eq!(imported.account.token_revision, imported.revision);
    assert_eq!(imported.account.health, 100);

    // Leases: one holder at a time; the holder renews; expiry frees it; release frees it.
    let lease = format!("refresh:{id}");
    let r0 = store.revision().await?;
    assert!(store.try_acquire_lease(&lease, "a", 60_000).await?);
    assert!(!store.try_acquire_lease(&lease, "b", 60_000).await?);
    assert!(
        store.try_acquire_lease(&lease, "a", 60_000).await?,
        "renewal"
    );
    assert_eq!(
        store.lease(&lease).await?.map(|l| l.holder),
        Some("a".into())
    );
    store.release_lease(&lease, "b").await?; // not b's: no effect
    assert!(!store.try_acquire_lease(&lease, "b", 60_000).await?);
    store.release_lease(&lease, "a").await?;
    assert!(
        store.try_acquire_lease(&lease, "b", -1).await?,
        "free after release"
    );
    assert!(
        store.try_acquire_lease(&lease, "c", 60_000).await?,
        "expired lease is taken over"
    );
    store.release_lease(&lease, "c").await?;
    assert_eq!(
        store.revision().await?,
        r0,
        "leases never bump the revision"
    );

    // A refresh: one bumping transaction; tokens sealed; token_revision follows.
    let tokens = RefreshedTokens {
        access_token: "at-new".into(),
        refresh_token: "rt-new".into(),
        id_token: "id-new".into(),
        access_token_expires_at_ms: Some(2_100_000_000_000),
        plan: Some("pro".into()),
        email: None,
    };
    let rev = store
        .store_refreshed_tokens(&actor, &id, &tokens, key)
        .await?;
    assert_eq!(rev, r0 + 1);
    let s = store.account_secrets(&id, key).await?;
    assert_eq!(
        (
            s.access_token.as_str(),
            s.refresh_token.as_str(),
            s.id_token.as_str()
        ),
        ("at-new", "rt-new", "id-new")
    );
    assert_eq!(s.account.token_revision, rev);
    assert_eq!(s.account.plan.as_deref(), Some("pro"));
    assert_eq!(s.account.email.as_deref(), Some("l@x.y"));
    assert!(s.account.last_refresh_at_ms.is_some());
    assert!(!format!("{s:?}").contains("rt-new"));

    // A transient failure is bookkeeping only; a permanent one leaves routing with a reason.
    store
        .record_refresh_failure(&id, 2, 12345, "HTTP 503")
        .await?;
    assert_eq!(store.revision().await?, rev);
    let a = store.account(&id).await?;
    assert_eq!(
        (
            a.refresh_failures,
            a.next_refresh_at_ms,
            a.last_refresh_error.as_deref()
        ),
        (2, Some(12345), Some("HTTP 503"))
    );
    let rev2 = store
        .mark_needs_reauth(&actor, &id, "refresh_token_reused", "refused")
        .await?;
    assert_eq!(rev2, rev + 1);
    let a = store.account(&id).await?;
    assert_eq!(a.state, AccountState::NeedsReauth);
    assert_eq!(a.state_reason.as_deref(), Some("refresh_token_reused"));
    assert_eq!(a.state_display(), "needs_reauth (refresh_token_reused)");
    assert_eq!((a.refresh_failures, a.next_refresh_at_ms), (0, None));
    // A re-import brings it back, with a new token generation.
    let back = store
        .import_account(
            &actor,
            &pool,
            None,
            &creds(&format!("lc-{tag}"), "l@x.y", "two")?,
            key,
        )
        .await?;
    assert_eq!(back.account.state, AccountState::Active);
    assert_eq!(back.account.token_revision, back.revision);

    // Quota evidence: insert, compare-and-set update, conflict, bump only when asked.
    let q = QuotaRecord {
        primary: Some(WindowEvidence {
            used_percent: 42.5,
            window_minutes: 300,
            resets_at_unix: 1,
            observed_at_ms: 10,
            source: "poll".into(),
        }),
        credits: Some(CreditsEvidence {
            has_credits: true,
            unlimited: false,
            balance: Some("3".into()),
            observed_at_ms: 10,
        }),
        plan: Some("plus".into()),
        plan_observed_at_ms: 10,
        ..QuotaRecord::default()
    };
    let r = store.revision().await?;
    assert_eq!(
        store.write_quota(&id, None, &q, true).await?,
        QuotaWrite::Written(Some(r + 1))
    );
    assert_eq!(
        store.write_quota(&id, None, &q, false).await?,
        QuotaWrite::Conflict
    );
    let stored = store.quota(&id).await?.ok_or("no quota row")?;
    assert_eq!(stored.version, 1);
    assert_eq!(stored.primary, q.primary);
    assert_eq!(stored.credits, q.credits);
    assert_eq!(stored.plan.as_deref(), Some("plus"));
    assert!(stored.secondary.is_none());
    let mut q2 = stored.clone();
    q2.secondary = Some(WindowEvidence {
        used_percent: 5.0,
        window_minutes: 10_080,
        resets_at_unix: 4_000_000_000,
        observed_at_ms: 11,
        source: "headers".into(),
    });
    assert_eq!(
        store.write_quota(&id, Some(1), &q2, false).await?,
        QuotaWrite::Written(None)
    );
    assert_eq!(
        store.write_quota(&id, Some(1), &q2, false).await?,
        QuotaWrite::Conflict
    );
    assert_eq!(
        store.revision().await?,
        r + 1,
        "a non-bumping write did not bump"
    );
    assert_eq!(
        store.write_quota("acc_nope", None, &q2, false).await?,
        QuotaWrite::Gone
    );
    // The snapshot reads it.
    let data = store.snapshot_data().await?;
    let row = data
        .accounts
        .iter()
        .find(|a| a.account.id == id)
        .ok_or("account missing from snapshot data")?;
    assert_eq!(row.quota.as_ref().map(|q| q.version), Some(2));
    // The primary reset (unix 1) is long past: one bumping write zeroes it.
    let rr = store.expire_quota_windows(util::now_ms() / 1000).await?;
    assert!(rr.is_some());
    let after = store.quota(&id).await?.ok_or("quota row gone")?;
    assert_eq!(after.primary.as_ref().map(|w| w.used_percent), Some(0.0));
    assert_eq!(
        after.primary.as_ref().map(|w| w.source.as_str()),
        Some("reset")
    );
    assert_eq!(after.secondary.as_ref().map(|w| w.used_percent), Some(5.0));
    assert_eq!(
        store.expire_quota_windows(util::now_ms() / 1000).await?,
        None
    );

    // Outcomes feed counters (same transaction) and the window groups.
    let now = util::now_ms();
    let o = |status: i64, source: Option<&str>, fallback: bool| OutcomeRecord {
        pool_id: imported.account.pool_id.clone(),
        key_id: "k".into(),
        account_id: id.clone(),
        attempt: 1,
        status,
        started_at_ms: now,
        latency_ms: 100,
        error_source: source.map(str::to_owned),
        fallback,
        ..OutcomeRecord::default()
    };
    let batch = vec![
        o(200, None, false),
        o(200, None, true),
        o(503, Some("upstream"), false),
        o(400, Some("client"), false),
        OutcomeRecord {
            account_id: "acc_deleted".into(),
            ..o(200, None, false)
        },
    ];
    let rev_before = store.revision().await?;
    assert_eq!(store.record_outcomes("n", &batch).await?, 5);
    assert_eq!(store.revision().await?, rev_before);
    let counters = store.all_counters().await?;
    assert_eq!(
        counters.get(&id).copied(),
        Some(Counters {
            requests: 4,
            successes: 2,
            fallbacks_served: 1
        })
    );
    assert!(!counters.contains_key("acc_deleted"));
    let groups = store.outcome_groups(now - 60_000, now - 15_000).await?;
    let stats = codexmesh_model::health::window_stats(&groups);
    let w = stats.get(&id).copied().unwrap_or_default();
    assert_eq!(
        (w.requests, w.successes, w.failures, w.fallbacks_served),
        (4, 2, 1, 1)
    );
    assert_eq!(w.recent_failures, 1);
    assert_eq!(w.avg_latency_ms, 100);

    // Retention: only rows older than the cut go, oldest first, a bounded number per call.
    // (Rows are aged by hand; other tests' rows on a shared Postgres are never this old.)
    sqlx::query("UPDATE outcomes SET received_at = 1000 + id WHERE account_id = $1")
        .bind(id.clone())
        .execute(store.sql_pool())
        .await?;
    let before = store.recent_outcomes(&id, 100).await?.len();
    assert_eq!(before, 4);
    assert_eq!(store.prune_outcomes(0, 10).await?, 0, "nothing that old");
    assert_eq!(store.prune_outcomes(1_000_000, 3).await?, 3, "bounded");
    let left = store.recent_outcomes(&id, 100).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].status, 400,
        "the newest of the aged rows is kept longest"
    );
    assert_eq!(store.prune_outcomes(1_000_000, 10).await?, 1);
    assert!(store.count_outcomes().await? >= 1, "the fresh row stays");
    assert_eq!(
        store.all_counters().await?.get(&id).map(|c| c.requests),
        Some(4),
        "all-time counters outlive the request log"
    );

    // Health: published in one bumping write, only for real changes.
    let r = store.revision().await?;
    assert_eq!(store.set_health(&[]).await?, None);
    assert_eq!(
        store.set_health(&[(id.clone(), 100)]).await?,
        None,
        "unchanged: no bump"
    );
    assert_eq!(store.revision().await?, r);
    assert_eq!(store.set_health(&[(id.clone(), 61)]).await?, Some(r + 1));
    assert_eq!(store.account(&id).await?.health, 61);

    // Removing the account removes its quota and counters with it.
    store.remove_account(&actor, &id).await?;
    assert!(store.quota(&id).await?.is_none());
    assert!(!store.all_counters().await?.contains_key(&id));
    Ok(())
}

#[tokio::test]
async fn sqlite_account_lifecycle() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = sqlite_store(&dir).await?;
    exercise_lifecycle(&store, "lite", &MasterKey::generate()?).await
}

#[tokio::test]
async fn sqlite_leases_are_exclusive_across_pools() -> TestResult {
    // Two independent connection pools on one file: exactly one wins each round.
    let dir = tempfile::tempdir()?;
    let a = sqlite_store(&dir).await?;
    let b = sqlite_store(&dir).await?;
    for round in 0..20 {
        let name = format!("race-{round}");
        let (x, y) = tokio::join!(
            a.try_acquire_lease(&name, "a", 60_000),
            b.try_acquire_lease(&name, "b", 60_000)
        );
        assert!(x? ^ y?, "round {round}: exactly one holder");
    }
    Ok(())
}
