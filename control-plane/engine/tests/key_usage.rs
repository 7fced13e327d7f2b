//! Issue 15 in the store, on SQLite and PostgreSQL: key policies stored and read back, token
//! counts per key per UTC day and week (rollover, late reports), the share attribution state
//! (points split across keys, a reset), policy refusals in the request log without counting
//! against any account, and the snapshot carrying a key's policy and usage.

mod support;

use codexmesh_engine::snapshot;
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::records::{OutcomeRecord, QuotaWindowRecord, RequestLogQuery};
use codexmesh_model::usage::{day_start, week_start, ShareWindow, DAY_SECS, WEEK_SECS};
use codexmesh_model::util;
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::{Actor, Store};
use support::{creds, pg};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn outcome(key: &str, account: &str, started_ms: i64, tokens: i64) -> OutcomeRecord {
    OutcomeRecord {
        pool_id: "p".into(),
        key_id: key.into(),
        account_id: account.into(),
        attempt: 1,
        status: 200,
        started_at_ms: started_ms,
        input_tokens: tokens,
        output_tokens: 0,
        ..OutcomeRecord::default()
    }
}

fn with_primary(
    mut o: OutcomeRecord,
    used: f64,
    resets_at: i64,
    observed_ms: i64,
) -> OutcomeRecord {
    o.primary = Some(QuotaWindowRecord {
        used_percent: used,
        window_minutes: 300,
        resets_at_unix: resets_at,
    });
    o.quota_observed_at_ms = Some(observed_ms);
    o
}

async fn exercise(store: &Store, tag: &str) -> TestResult {
    let actor = Actor::cli();
    let key = MasterKey::from_bytes(&[7u8; 32])?;
    let pool = format!("usage-{tag}");
    store.create_pool(&actor, &pool).await?;
    let acct = store
        .import_account(
            &actor,
            &pool,
            Some(&format!("u-{tag}")),
            &creds(&format!("cg-{tag}"), "u@example.com", tag)?,
            &key,
        )
        .await?
        .account;

    // A policy is stored as given and read back with the key; empty is none.
    let policy = KeyPolicy {
        tokens_per_day: Some(1000),
        primary_share_percent: Some(20.0),
        ..KeyPolicy::default()
    };
    let (k1, _) = store
        .issue_key_with_policy(
            &actor,
            &pool,
            Some(&format!("k1-{tag}")),
            false,
            Some(&policy),
        )
        .await?;
    assert_eq!(k1.policy.as_ref(), Some(&policy));
    let (k2, _) = store
        .issue_key(&actor, &pool, Some(&format!("k2-{tag}")), false)
        .await?;
    assert_eq!(k2.policy, None);
    let changed = store
        .set_key_policy(&actor, &k2.id, &KeyPolicy::default())
        .await?;
    assert!(!changed.changed);
    let bad = KeyPolicy {
        requests_per_minute: Some(0),
        ..KeyPolicy::default()
    };
    let e = store
        .set_key_policy(&actor, &k2.id, &bad)
        .await
        .err()
        .ok_or("accepted rpm 0")?;
    assert!(e.to_string().contains("policy.requests_per_minute"), "{e}");

    // Tokens: Monday 10:00 and 23:00, Tuesday 01:00 → Tuesday's day, the week's sum.
    let monday = week_start(util::now_ms() / 1000) - WEEK_SECS; // last week's Monday
    let at = |secs: i64| secs * 1000;
    store
        .record_outcomes(
            "n",
            &[
                outcome(&k1.id, &acct.id, at(monday + 10 * 3600), 100),
                outcome(&k1.id, &acct.id, at(monday + 23 * 3600), 50),
            ],
        )
        .await?;
    store
        .record_outcomes(
            "n",
            &[outcome(&k1.id, &acct.id, at(monday + DAY_SECS + 3600), 30)],
        )
        .await?;
    let c = store.key_token_counts().await?[&k1.id];
    assert_eq!((c.day_start_unix, c.tokens_today), (monday + DAY_SECS, 30));
    assert_eq!((c.week_start_unix, c.tokens_this_week), (monday, 180));
    // A late report of Monday counts in its week, not in the later day.
    store
        .record_outcomes("n", &[outcome(&k1.id, &acct.id, at(monday + 3600), 5)])
        .await?;
    let c = store.key_token_counts().await?[&k1.id];
    assert_eq!((c.tokens_today, c.tokens_this_week), (30, 185));
    // A new week starts both counts over; read as of now, last week's count is 0.
    let now = util::now_ms() / 1000;
    assert_eq!(c.as_of(now).tokens_this_week, 0);
    store
        .record_outcomes("n", &[outcome(&k1.id, &acct.id, at(now), 40)])
        .await?;
    let c = store.key_token_counts().await?[&k1.id];
    assert_eq!((c.day_start_unix, c.tokens_today), (day_start(now), 40));
    assert_eq!(
        (c.week_start_unix, c.tokens_this_week),
        (week_start(now), 40)
    );

    // Shares: the first evidence sets the base; the next splits its delta by tokens; a reset
    // counts the new value whole.
    let t0 = util::now_ms() - 60_000;
    let resets = now + 3 * 3600;
    store
        .record_outcomes(
            "n",
            &[with_primary(
                outcome(&k1.id, &acct.id, t0, 10),
                10.0,
                resets,
                t0,
            )],
        )
        .await?;
    store
        .record_outcomes(
            "n",
            &[
                outcome(&k1.id, &acct.id, t0 + 1000, 300),
                with_primary(
                    outcome(&k2.id, &acct.id, t0 + 2000, 100),
                    14.0,
                    resets + 1,
                    t0 + 2000,
                ),
            ],
        )
        .await?;
    let points = store.share_points(util::now_ms()).await?;
    let mine: Vec<_> = points
        .iter()
        .filter(|p| p.key_id == k1.id || p.key_id == k2.id)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    let of = |id: &str| {
        mine.iter()
            .find(|p| p.key_id == id)
            .map(|p| p.points)
            .unwrap_or(-1.0)
    };
    assert!((of(&k1.id) - 3.0).abs() < 1e-9, "{mine:?}");
    assert!((of(&k2.id) - 1.0).abs() < 1e-9, "{mine:?}");
    // Stored at the end of their minute (the primary window's bucket).
    let bucket = ShareWindow::Primary.bucket_end(t0 + 2000);
    assert!(bucket > t0 + 2000 && bucket <= t0 + 62_000);
    assert!(mine
        .iter()
        .all(|p| p.window == ShareWindow::Primary && p.at_ms == bucket));
    store
        .record_outcomes(
            "n",
            &[with_primary(
                outcome(&k2.id, &acct.id, t0 + 3000, 0),
                2.0,
                resets + 5 * 3600,
                t0 + 3000,
            )],
        )
        .await?;
    let k2_points: f64 = store
        .share_points(util::now_ms())
        .await?
        .iter()
        .filter(|p| p.key_id == k2.id)
        .map(|p| p.points)
        .sum();
    assert!((k2_points - 3.0).abs() < 1e-9, "{k2_points}");

    // Refusals land in the request log with their reason and count against no account.
    let before = store
        .all_counters()
        .await?
        .get(&acct.id)
        .map(|c| c.requests);
    let mut refused = outcome(&k2.id, "", util::now_ms(), 0);
    refused.status = 429;
    refused.policy_refusal = Some("rate_limited".into());
    store.record_outcomes("n", &[refused]).await?;
    let log = store
        .request_log(&RequestLogQuery {
            key_id: Some(k2.id.clone()),
            limit: 1,
            ..RequestLogQuery::default()
        })
        .await?;
    assert_eq!(
        log[0].outcome.policy_refusal.as_deref(),
        Some("rate_limited")
    );
    assert_eq!(log[0].outcome.account_id, "");
    assert_eq!(
        store
            .all_counters()
            .await?
            .get(&acct.id)
            .map(|c| c.requests),
        before
    );

    // The snapshot carries the policy and the counted use (one account: capacity 100 points).
    let snap = snapshot::build(&store.snapshot_data().await?, &key, "cp");
    let sk = snap
        .pools
        .iter()
        .flat_map(|p| &p.keys)
        .find(|k| k.id == k1.id)
        .ok_or("k1 in the snapshot")?;
    assert_eq!(sk.policy.as_ref(), Some(&policy.to_proto()));
    let usage = sk.usage.as_ref().ok_or("usage")?;
    assert_eq!(usage.tokens_today, 40 + 10 + 300);
    assert_eq!(usage.day_start_unix, day_start(now));
    assert!(
        (usage.primary_share_used_percent - 3.0).abs() < 1e-9,
        "{usage:?}"
    );
    assert_eq!(usage.share_blocked_until_unix, 0);
    // Listings show the same.
    let listed = store
        .with_usage(vec![store.find_key(&k1.id).await?])
        .await?;
    assert_eq!(listed[0].usage.map(|u| u.tokens.tokens_today), Some(350));
    Ok(())
}

#[tokio::test]
async fn sqlite_counts_tokens_and_shares() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await?;
    exercise(&store, "lite").await?;
    store.close().await;
    Ok(())
}

/// Against `CODEXMESH_TEST_POSTGRES_URL` when set, else a temporary cluster of its own; skipped
/// only when no PostgreSQL binaries exist (CODEXMESH_REQUIRE_POSTGRES=1 makes that a failure).
#[tokio::test]
async fn postgres_counts_tokens_and_shares() -> TestResult {
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
