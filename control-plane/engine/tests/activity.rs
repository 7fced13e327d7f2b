//! Per-account activity through the use case (issue 11): outcome rows written through the
//! store's ingest path (`record_outcomes`, then moved to chosen times), two pools, failovers, a
//! deleted account, tenant filtering and input errors. On SQLite, and on a throwaway PostgreSQL
//! cluster when its binaries are installed.

mod support;

use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::activity::{activity_at, ActivityRequest};
use codexmesh_engine::ops::{ErrorKind, Ops, OpsError};
use codexmesh_model::activity::{AccountActivity, Activity, Window, MINUTE_MS};
use codexmesh_model::operators::{Access, Principal, Role};
use codexmesh_store::{ActivityQuery, Actor, OutcomeRecord, RequestLogQuery, Store};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// "Now" for every query: 5 minutes into a 10-minute bucket.
const T0: i64 = 1_699_999_800_000; // a multiple of 10 minutes
const NOW: i64 = T0 + 5 * MINUTE_MS;
const BUCKET: i64 = 10 * MINUTE_MS;
/// `since=1h&bucket=10m` at NOW: six buckets, the last holding NOW.
const FROM: i64 = T0 + BUCKET - 6 * BUCKET;

/// A time inside bucket `i` of the 1 h window.
fn at(i: i64, offset_ms: i64) -> i64 {
    FROM + i * BUCKET + offset_ms
}

fn ops_in(
    dir: &tempfile::TempDir,
    store: Option<String>,
) -> Result<Ops, Box<dyn std::error::Error>> {
    let flags = SettingsFlags {
        store: Some(store.unwrap_or_else(|| format!("sqlite://{}/cm.db", dir.path().display()))),
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    Ok(Ops::new(settings, Actor::new("cli:tester")))
}

fn admin_of(pool: &str) -> Access {
    Access {
        principal: Principal::Operator {
            id: "op-1".into(),
            name: "alice".into(),
        },
        role: Role::Admin,
        pools: vec![pool.to_owned()],
    }
}

fn hour() -> ActivityRequest {
    ActivityRequest {
        since: Some("1h".into()),
        bucket: Some("10m".into()),
        ..ActivityRequest::default()
    }
}

/// One attempt, as an Envoy reports it.
struct Row {
    pool_id: String,
    account_id: String,
    at_ms: i64,
    status: i64,
    attempt: i64,
    latency_ms: i64,
    error_source: Option<&'static str>,
}

/// A success; `attempt > 1` is a fallback (what the filter reports).
fn ok(pool_id: &str, account_id: &str, at_ms: i64, attempt: i64, latency_ms: i64) -> Row {
    Row {
        pool_id: pool_id.to_owned(),
        account_id: account_id.to_owned(),
        at_ms,
        status: 200,
        attempt,
        latency_ms,
        error_source: None,
    }
}

/// A first attempt that failed with `status`, caused by `source`.
fn failed(
    pool_id: &str,
    account_id: &str,
    at_ms: i64,
    status: i64,
    source: &'static str,
    latency_ms: i64,
) -> Row {
    Row {
        status,
        error_source: Some(source),
        ..ok(pool_id, account_id, at_ms, 1, latency_ms)
    }
}

/// Writes `row` through the ingest path, then moves it to its time (ingest stamps "now").
async fn record(store: &Store, row: Row) -> TestResult {
    let fallback = row.attempt > 1;
    store
        .record_outcomes(
            "node-a",
            &[OutcomeRecord {
                pool_id: row.pool_id,
                key_id: "key-1".to_owned(),
                account_id: row.account_id,
                attempt: row.attempt,
                status: row.status,
                started_at_ms: row.at_ms - row.latency_ms,
                latency_ms: row.latency_ms,
                error_source: row.error_source.map(str::to_owned),
                fallback,
                strategy: Some("quota_first".to_owned()),
                route_reason: Some(if fallback { "failover" } else { "strategy" }.to_owned()),
                ..OutcomeRecord::default()
            }],
        )
        .await?;
    sqlx::query("UPDATE outcomes SET received_at = $1 WHERE id = (SELECT MAX(id) FROM outcomes)")
        .bind(row.at_ms)
        .execute(store.sql_pool())
        .await?;
    Ok(())
}

/// Imports login number `n` into `pool` as `label`; returns the account id.
async fn import(
    ops: &Ops,
    n: u32,
    pool: &str,
    label: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let creds = support::creds(&format!("login-{n}"), "x@example.com", &format!("a{n}"))?;
    let key = ops.settings().master_key()?;
    let r = ops
        .store()
        .await?
        .import_account(ops.actor(), pool, Some(label), &creds, &key)
        .await?;
    Ok(r.account.id)
}

struct Ids {
    ann: String,
    bob: String,
    cat: String,
    eve_alpha: String,
    eve_beta: String,
    shared: String,
    idle: String,
    gone: String,
}

/// Two pools; in alpha: ann, bob, eve, idle, shared and gone (deleted after its attempt); in
/// beta: cat, another eve, shared. Attempts over the last hour, with failovers.
async fn populate(ops: &Ops) -> Result<Ids, Box<dyn std::error::Error>> {
    let store = ops.store().await?;
    let actor = ops.actor();
    let alpha = store.create_pool(actor, "alpha").await?.id;
    let beta = store.create_pool(actor, "beta").await?.id;
    let ids = Ids {
        ann: import(ops, 1, "alpha", "ann").await?,
        bob: import(ops, 2, "alpha", "bob").await?,
        eve_alpha: import(ops, 3, "alpha", "eve").await?,
        idle: import(ops, 4, "alpha", "idle").await?,
        shared: import(ops, 5, "alpha", "shared").await?,
        gone: import(ops, 6, "alpha", "gone").await?,
        cat: import(ops, 7, "beta", "cat").await?,
        eve_beta: import(ops, 8, "beta", "eve").await?,
    };
    store
        .join_pool(actor, &ids.shared, "beta", None, None)
        .await?;
    store.set_health(&[(ids.ann.clone(), 80)]).await?;

    let (a, b) = (alpha.as_str(), beta.as_str());
    for row in [
        ok(a, &ids.ann, at(0, 1_000), 1, 100),
        // ann hits a quota limit; bob serves the request.
        failed(a, &ids.ann, at(1, 1_000), 429, "upstream", 50),
        ok(a, &ids.bob, at(1, 2_000), 2, 300),
        ok(a, &ids.gone, at(2, 0), 1, 10),
        failed(a, &ids.ann, at(3, 0), 400, "client", 5),
        ok(a, &ids.eve_alpha, at(3, BUCKET - 1), 1, 15),
        // ann fails; shared serves the request, in the current bucket.
        failed(a, &ids.ann, at(5, 0), 502, "upstream", 20),
        ok(a, &ids.shared, at(5, 4 * MINUTE_MS), 2, 200),
        // Just before the window: not counted.
        ok(a, &ids.ann, FROM - 1, 1, 9_999),
        ok(b, &ids.cat, at(0, 0), 1, 40),
        ok(b, &ids.eve_beta, at(2, 0), 1, 45),
        failed(b, &ids.shared, at(4, 0), 500, "upstream", 60),
        ok(b, &ids.cat, at(4, 10), 2, 70),
    ] {
        record(store, row).await?;
    }
    store.remove_account(actor, &ids.gone).await?;
    Ok(ids)
}

fn account<'a>(a: &'a Activity, id: &str) -> Result<&'a AccountActivity, String> {
    a.accounts
        .iter()
        .find(|x| x.account_id == id)
        .ok_or_else(|| format!("no entry for {id}"))
}

fn buckets(stats: &codexmesh_model::activity::ActivityStats) -> Vec<(u64, u64, u64)> {
    stats
        .buckets
        .iter()
        .map(|b| (b.requests, b.errors, b.fallbacks))
        .collect()
}

fn kind<T: std::fmt::Debug>(r: Result<T, OpsError>) -> Option<(ErrorKind, String)> {
    r.err().map(|e| (e.kind(), e.to_string()))
}

async fn one_pool_counts_and_timeline(ops: &Ops, ids: &Ids) -> TestResult {
    let got = activity_at(
        ops,
        &ActivityRequest {
            pool: Some("alpha".into()),
            ..hour()
        },
        NOW,
    )
    .await?;
    assert!(got.notices.is_empty());
    let a = got.value;
    assert_eq!(a.pool.as_deref(), Some("alpha"));
    assert_eq!(
        (a.from_ms, a.to_ms, a.bucket_ms),
        (FROM, T0 + BUCKET, BUCKET)
    );
    assert!(!a.truncated);

    let t = &a.total;
    assert_eq!(
        (
            t.requests,
            t.succeeded,
            t.errors,
            t.rate_limited,
            t.client_errors,
            t.fallbacks
        ),
        (8, 5, 3, 1, 1, 2)
    );
    assert_eq!(t.success_rate, Some(5.0 / 8.0));
    // Latencies 5 10 15 20 50 100 200 300: ranks 4, ceil(7.2) = 8, ceil(7.92) = 8.
    assert_eq!(
        (t.latency_p50_ms, t.latency_p90_ms, t.latency_p99_ms),
        (Some(20), Some(300), Some(300))
    );
    let starts: Vec<i64> = t.buckets.iter().map(|b| b.start_ms).collect();
    assert_eq!(starts, (0..6).map(|i| at(i, 0)).collect::<Vec<_>>());
    assert_eq!(
        buckets(t),
        vec![
            (1, 0, 0),
            (2, 1, 1),
            (1, 0, 0),
            (2, 1, 0),
            (0, 0, 0),
            (2, 1, 1)
        ]
    );

    let labels: Vec<Option<&str>> = a.accounts.iter().map(|x| x.label.as_deref()).collect();
    assert_eq!(
        labels,
        vec![
            Some("ann"),
            Some("bob"),
            Some("eve"),
            Some("idle"),
            Some("shared"),
            None
        ],
        "members (idle too) by label, the deleted account last"
    );

    let ann = account(&a, &ids.ann)?;
    assert_eq!(ann.health, Some(80));
    assert_eq!(ann.pools, vec!["alpha".to_owned()]);
    let s = &ann.stats;
    assert_eq!(
        (
            s.requests,
            s.succeeded,
            s.errors,
            s.rate_limited,
            s.client_errors,
            s.fallbacks
        ),
        (4, 1, 3, 1, 1, 0)
    );
    assert_eq!(s.success_rate, Some(0.25));
    // 5 20 50 100: ranks 2, 4, 4.
    assert_eq!(
        (s.latency_p50_ms, s.latency_p90_ms, s.latency_p99_ms),
        (Some(20), Some(100), Some(100))
    );
    assert_eq!(
        buckets(s),
        vec![
            (1, 0, 0),
            (1, 1, 0),
            (0, 0, 0),
            (1, 1, 0),
            (0, 0, 0),
            (1, 1, 0)
        ]
    );

    let bob = account(&a, &ids.bob)?;
    assert_eq!((bob.stats.requests, bob.stats.fallbacks), (1, 1));
    assert_eq!(bob.stats.success_rate, Some(1.0));
    assert_eq!(bob.health, Some(100));
    assert_eq!(bob.stats.buckets[1].fallbacks, 1);

    // Only alpha's attempt of the account in both pools, and only alpha named.
    let shared = account(&a, &ids.shared)?;
    assert_eq!(shared.pools, vec!["alpha".to_owned()]);
    assert_eq!((shared.stats.requests, shared.stats.fallbacks), (1, 1));
    assert_eq!(shared.stats.buckets[5].requests, 1, "the current bucket");

    let idle = account(&a, &ids.idle)?;
    assert_eq!(idle.stats.requests, 0);
    assert_eq!(idle.stats.success_rate, None);
    assert_eq!(idle.stats.latency_p50_ms, None);
    assert_eq!(idle.stats.buckets.len(), 6);

    let gone = account(&a, &ids.gone)?;
    assert_eq!((gone.label.as_deref(), gone.health), (None, None));
    assert_eq!(gone.pools, vec!["alpha".to_owned()]);
    assert_eq!(gone.stats.buckets[2].requests, 1);
    Ok(())
}

async fn everything_and_one_account(ops: &Ops, ids: &Ids) -> TestResult {
    let all = activity_at(ops, &hour(), NOW).await?.value;
    assert_eq!(all.pool, None);
    assert_eq!((all.total.requests, all.total.fallbacks), (12, 3));
    assert_eq!(all.accounts.len(), 8, "every account, the deleted one too");
    let shared = account(&all, &ids.shared)?;
    assert_eq!(shared.pools, vec!["alpha".to_owned(), "beta".to_owned()]);
    assert_eq!(
        (
            shared.stats.requests,
            shared.stats.succeeded,
            shared.stats.errors
        ),
        (2, 1, 1)
    );
    let cat = account(&all, &ids.cat)?;
    assert_eq!(
        (
            cat.stats.requests,
            cat.stats.fallbacks,
            cat.stats.latency_p50_ms
        ),
        (2, 1, Some(40))
    );

    let by_label = activity_at(
        ops,
        &ActivityRequest {
            account: Some("ann".into()),
            ..hour()
        },
        NOW,
    )
    .await?
    .value;
    assert_eq!(by_label.accounts.len(), 1);
    assert_eq!(by_label.accounts[0].account_id, ids.ann);
    assert_eq!(by_label.total.requests, 4);

    let by_id_in_pool = activity_at(
        ops,
        &ActivityRequest {
            pool: Some("beta".into()),
            account: Some(ids.shared.clone()),
            ..hour()
        },
        NOW,
    )
    .await?
    .value;
    assert_eq!(by_id_in_pool.total.requests, 1);
    assert_eq!(by_id_in_pool.accounts[0].pools, vec!["beta".to_owned()]);

    // The owner sees both accounts labelled eve: the label is ambiguous for it.
    let eve = activity_at(
        ops,
        &ActivityRequest {
            account: Some("eve".into()),
            ..hour()
        },
        NOW,
    )
    .await;
    assert_eq!(kind(eve).map(|k| k.0), Some(ErrorKind::Invalid));

    // The default window: 24 h in 30-minute buckets.
    let day = activity_at(ops, &ActivityRequest::default(), NOW)
        .await?
        .value;
    assert_eq!(
        (day.bucket_ms, day.total.buckets.len()),
        (30 * MINUTE_MS, 48)
    );
    assert_eq!(
        day.total.requests, 13,
        "the row just before the hour counts here"
    );
    Ok(())
}

async fn an_admin_sees_only_its_pool(ops: &Ops, ids: &Ids) -> TestResult {
    let admin = ops.acting_as(admin_of("alpha"), Some("10.0.0.9".into()));
    let mine = activity_at(&admin, &hour(), NOW).await?.value;
    assert_eq!(mine.total.requests, 8, "only alpha's rows");
    assert!(mine
        .accounts
        .iter()
        .all(|a| a.account_id != ids.cat && a.account_id != ids.eve_beta));
    let shared = account(&mine, &ids.shared)?;
    assert_eq!(shared.pools, vec!["alpha".to_owned()], "beta is not named");
    assert_eq!(shared.stats.requests, 1);

    // A pool it may not see is exactly a missing pool.
    let hidden = kind(
        activity_at(
            &admin,
            &ActivityRequest {
                pool: Some("beta".into()),
                ..hour()
            },
            NOW,
        )
        .await,
    );
    let missing = kind(
        activity_at(
            &admin,
            &ActivityRequest {
                pool: Some("nope".into()),
                ..hour()
            },
            NOW,
        )
        .await,
    );
    assert_eq!(
        hidden,
        Some((ErrorKind::NotFound, "no pool named \"beta\"".to_owned()))
    );
    assert_eq!(
        missing,
        Some((ErrorKind::NotFound, "no pool named \"nope\"".to_owned()))
    );

    // An account in none of its pools is exactly a missing account.
    for (ident, shown) in [(ids.cat.as_str(), ids.cat.as_str()), ("cat", "cat")] {
        let got = kind(
            activity_at(
                &admin,
                &ActivityRequest {
                    account: Some(ident.to_owned()),
                    ..hour()
                },
                NOW,
            )
            .await,
        );
        assert_eq!(
            got,
            Some((
                ErrorKind::NotFound,
                format!("no account with id or label {shown:?}")
            ))
        );
    }
    // The account in both pools is visible, with only alpha's rows.
    let both = activity_at(
        &admin,
        &ActivityRequest {
            account: Some("shared".into()),
            ..hour()
        },
        NOW,
    )
    .await?
    .value;
    assert_eq!(both.total.requests, 1);

    // The label eve is not ambiguous for it: beta's eve does not exist here.
    let eve = activity_at(
        &admin,
        &ActivityRequest {
            account: Some("eve".into()),
            ..hour()
        },
        NOW,
    )
    .await?
    .value;
    assert_eq!(eve.accounts.len(), 1);
    assert_eq!(eve.accounts[0].account_id, ids.eve_alpha);

    // An admin of no pool sees nothing at all.
    let nobody = ops.acting_as(
        Access {
            pools: Vec::new(),
            ..admin_of("x")
        },
        None,
    );
    let empty = activity_at(&nobody, &hour(), NOW).await?.value;
    assert_eq!((empty.total.requests, empty.accounts.len()), (0, 0));
    assert_eq!(empty.total.buckets.len(), 6);
    Ok(())
}

async fn the_store_caps_what_it_reads(ops: &Ops, ids: &Ids) -> TestResult {
    let store = ops.store().await?;
    let window = Window::ending_at(NOW, 60 * MINUTE_MS, BUCKET)?;
    let capped = store
        .activity(&ActivityQuery {
            pool: Some("alpha".into()),
            max_rows: 3,
            ..ActivityQuery::new(window)
        })
        .await?;
    assert!(capped.truncated);
    assert_eq!(capped.total.requests, 3);
    // The newest three: bucket 3's last, bucket 5's two.
    assert_eq!(
        buckets(&capped.total),
        vec![
            (0, 0, 0),
            (0, 0, 0),
            (0, 0, 0),
            (1, 0, 0),
            (0, 0, 0),
            (2, 1, 1)
        ]
    );
    // The store keeps the scope too: a pool outside visible_pools is not found.
    let hidden = store
        .activity(&ActivityQuery {
            pool: Some("beta".into()),
            visible_pools: Some(vec!["alpha".into()]),
            ..ActivityQuery::new(window)
        })
        .await;
    assert!(matches!(
        hidden,
        Err(codexmesh_store::StoreError::NotFound { .. })
    ));
    let only_beta = store
        .activity(&ActivityQuery {
            visible_pools: Some(vec!["beta".into()]),
            ..ActivityQuery::new(window)
        })
        .await?;
    assert_eq!(only_beta.total.requests, 4);
    assert!(only_beta
        .accounts
        .iter()
        .all(|a| a.pools == vec!["beta".to_owned()]));
    assert!(only_beta
        .accounts
        .iter()
        .any(|a| a.account_id == ids.shared));
    Ok(())
}

async fn scenario(ops: &Ops) -> TestResult {
    let ids = populate(ops).await?;
    one_pool_counts_and_timeline(ops, &ids).await?;
    everything_and_one_account(ops, &ids).await?;
    an_admin_sees_only_its_pool(ops, &ids).await?;
    the_request_log_filters_failures_and_time(ops).await?;
    the_store_caps_what_it_reads(ops, &ids).await
}

/// The request log's `failed` and `since` filters (the dashboard's and `codexmesh requests
/// --failed --since`) on the same rows, on each store.
async fn the_request_log_filters_failures_and_time(ops: &Ops) -> TestResult {
    let store = ops.store().await?;
    let all = store
        .request_log(&RequestLogQuery {
            limit: 1000,
            ..RequestLogQuery::default()
        })
        .await?;
    let failures = all
        .iter()
        .filter(|r| !(200..300).contains(&r.outcome.status))
        .count();
    assert!(
        failures > 0 && failures < all.len(),
        "the scenario has both"
    );
    let failed = store
        .request_log(&RequestLogQuery {
            failed_only: true,
            limit: 1000,
            ..RequestLogQuery::default()
        })
        .await?;
    assert_eq!(failed.len(), failures);
    assert!(failed
        .iter()
        .all(|r| !(200..300).contains(&r.outcome.status)));
    let mut times: Vec<i64> = all.iter().map(|r| r.received_at_ms).collect();
    times.sort_unstable();
    let middle = times[times.len() / 2];
    let recent = store
        .request_log(&RequestLogQuery {
            since_ms: middle,
            limit: 1000,
            ..RequestLogQuery::default()
        })
        .await?;
    assert_eq!(recent.len(), times.iter().filter(|t| **t >= middle).count());
    Ok(())
}

#[tokio::test]
async fn sqlite_activity() -> TestResult {
    let dir = tempfile::tempdir()?;
    scenario(&ops_in(&dir, None)?).await
}

/// Bad input is refused, naming its field, before the store is opened (this one cannot be).
#[tokio::test]
async fn bad_input_names_its_field_before_the_store_opens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ops = ops_in(&dir, Some("postgres://nobody@127.0.0.1:9/none".into()))?;
    let cases = [
        (Some("soon"), None, None, None, "since"),
        (Some("31d"), None, None, None, "since"),
        (Some("30s"), None, None, None, "since"),
        (Some("30d"), Some("1m"), None, None, "bucket"),
        (Some("1h"), Some("500ms"), None, None, "bucket"),
        (Some("1h"), Some("often"), None, None, "bucket"),
        (Some("1h"), Some("2h"), None, None, "bucket"),
        (None, None, Some("bad name!"), None, "pool"),
        (None, None, None, Some(" "), "account"),
    ];
    for (since, bucket, pool, account, field) in cases {
        let q = ActivityRequest {
            since: since.map(str::to_owned),
            bucket: bucket.map(str::to_owned),
            pool: pool.map(str::to_owned),
            account: account.map(str::to_owned),
        };
        let err = activity_at(&ops, &q, NOW)
            .await
            .err()
            .ok_or("accepted bad input")?;
        assert_eq!(
            (err.kind(), err.field()),
            (ErrorKind::Invalid, Some(field)),
            "{q:?}: {err}"
        );
    }
    // 1000 buckets is the most.
    let q = ActivityRequest {
        since: Some("1000m".into()),
        bucket: Some("1m".into()),
        ..ActivityRequest::default()
    };
    assert!(codexmesh_engine::ops::activity::window_for(&q, NOW).is_ok());
    let q = ActivityRequest {
        since: Some("1001m".into()),
        ..q
    };
    assert_eq!(
        codexmesh_engine::ops::activity::window_for(&q, NOW)
            .err()
            .and_then(|e| e.field().map(str::to_owned)),
        Some("bucket".to_owned())
    );
    Ok(())
}

#[tokio::test]
async fn postgres_activity() -> TestResult {
    let Some(temp) = support::pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        eprintln!("SKIPPED: no PostgreSQL binaries on this machine");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "activity").await?;
    scenario(&ops_in(&dir, Some(url))?).await
}
