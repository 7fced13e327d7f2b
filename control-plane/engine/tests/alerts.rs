//! Alerts end to end on the store (issue 15): conditions driven through the store (an account
//! marked `needs_reauth`, quota evidence, usage samples), two evaluators (two replicas) on one
//! store, and a loopback HTTP receiver that checks every delivery's signature. Each alert is
//! delivered once per episode, a `resolved` once when it clears, only to the webhooks that hear
//! its pool, and never twice when another replica evaluates too. On SQLite, and on PostgreSQL
//! when the test kit can start one.

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use codexmesh_engine::alerts::{Evaluator, LEASE};
use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::{alerts, forecast, pools, ErrorKind, Ops};
use codexmesh_engine::webhooks;
use codexmesh_model::operators::{Access, Role};
use codexmesh_model::util::now_ms;
use codexmesh_store::{Actor, PoolSample, QuotaRecord, Store, WindowEvidence};
use serde_json::Value;
use support::pg;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What the receiver got: (path, signature header, body).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

async fn receive(
    State(got): State<Received>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let sig = headers
        .get(webhooks::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    got.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((path.clone(), sig, body));
    if path == "broken" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// A loopback receiver on a port chosen now; returns its base URL.
async fn receiver(got: Received) -> Res<String> {
    let app = Router::new()
        .route("/hook/{path}", post(receive))
        .with_state(got);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

fn settings(dir: &tempfile::TempDir, store: String) -> Res<Settings> {
    let flags = SettingsFlags {
        store: Some(store),
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    Ok(Settings::resolve(&flags, &|_| None)?)
}

async fn import(ops: &Ops, n: u32, pool: &str) -> Res<String> {
    let creds = support::creds(&format!("login-{n}"), "x@example.com", &format!("a{n}"))?;
    let key = ops.settings().master_keys()?;
    let r = ops
        .store()
        .await?
        .import_account(ops.actor(), pool, Some(&format!("acc{n}")), &creds, &key)
        .await?;
    Ok(r.account.id)
}

/// Replaces an account's 5-hour evidence: `used` %, resetting in `reset_in_secs`.
async fn quota(store: &Store, id: &str, used: f64, reset_in_secs: i64) -> TestResult {
    let current = store.quota(id).await?;
    let record = QuotaRecord {
        primary: Some(WindowEvidence {
            used_percent: used,
            window_minutes: 300,
            resets_at_unix: now_ms() / 1000 + reset_in_secs,
            observed_at_ms: now_ms(),
            source: "poll".into(),
        }),
        ..QuotaRecord::default()
    };
    store
        .write_quota(id, current.map(|q| q.version), &record, true)
        .await?;
    Ok(())
}

/// Deliveries to `path` so far, each checked against `secret`, as JSON.
fn deliveries(got: &Received, path: &str, secret: &str) -> Res<Vec<Value>> {
    let all = got
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut out = Vec::new();
    for (p, sig, body) in all.into_iter().filter(|(p, _, _)| p == path) {
        assert!(
            webhooks::verify(secret, &sig, &body),
            "bad signature on {p}: {sig}"
        );
        assert!(!body.contains("whsec_"), "a secret in a delivery: {body}");
        out.push(serde_json::from_str(&body)?);
    }
    Ok(out)
}

/// (kind, state) of each delivery.
fn kinds(v: &[Value]) -> Vec<(String, String)> {
    v.iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pair(kind: &str, state: &str) -> (String, String) {
    (kind.to_owned(), state.to_owned())
}

async fn exercise(dir: &tempfile::TempDir, url: String) -> TestResult {
    let got: Received = Arc::default();
    let base = receiver(Arc::clone(&got)).await?;
    let settings = settings(dir, url)?;
    let ops = Ops::new(settings.clone(), Actor::new("cli:tester"));
    pools::create(&ops, "team").await?;
    pools::create(&ops, "other").await?;
    let a1 = import(&ops, 1, "team").await?;
    let a2 = import(&ops, 2, "team").await?;
    let o1 = import(&ops, 3, "other").await?;
    let store = ops.store().await?.clone();

    // Webhooks: one for team, one for every pool, one that always answers 500.
    let team = alerts::add_webhook(&ops, "team-hook", &format!("{base}/team"), Some("team"))
        .await?
        .value;
    assert!(team.secret.starts_with("whsec_"));
    assert_eq!(
        team.webhook.url,
        format!("{}/…", base.trim_end_matches("/hook"))
    );
    let all = alerts::add_webhook(&ops, "all-hook", &format!("{base}/all"), None)
        .await?
        .value;
    let broken = alerts::add_webhook(&ops, "broken", &format!("{base}/broken"), Some("other"))
        .await?
        .value;
    // Listing never shows a secret.
    let listed = serde_json::to_string(&alerts::list_webhooks(&ops).await?.value)?;
    assert!(!listed.contains("whsec_"), "{listed}");
    // Bad input names its field; a duplicate name conflicts.
    let bad = alerts::add_webhook(&ops, "x", "ftp://nope/", None)
        .await
        .err();
    assert_eq!(bad.as_ref().and_then(|e| e.field()), Some("url"));
    let dup = alerts::add_webhook(&ops, "team-hook", &format!("{base}/x"), None).await;
    assert_eq!(dup.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    // An admin of `other` neither sees nor removes the team's or the global webhook.
    let admin = ops.acting_as(
        Access {
            role: Role::Admin,
            pools: vec!["other".into()],
            ..Access::shell("x")
        },
        None,
    );
    let seen: Vec<String> = alerts::list_webhooks(&admin)
        .await?
        .value
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(seen, ["broken"]);
    let hidden = alerts::remove_webhook(&admin, "team-hook").await;
    assert_eq!(hidden.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    let global = alerts::add_webhook(&admin, "mine", &format!("{base}/m"), None).await;
    assert_eq!(global.err().map(|e| e.kind()), Some(ErrorKind::Forbidden));

    let r1 = Evaluator::from_settings(&settings, store.clone(), "replica-1")?;
    let r2 = Evaluator::from_settings(&settings, store.clone(), "replica-2")?;

    // Nothing holds: nothing is sent.
    let quiet = r1.tick().await?;
    assert!(quiet.evaluated);
    assert_eq!((quiet.opened, quiet.delivered), (0, 0));
    // The other replica does not evaluate while the first holds the lease.
    assert!(!r2.tick().await?.evaluated);

    // An account needs a new login: one firing to the team hook and one to the global hook.
    store
        .mark_needs_reauth(
            &Actor::new("refresher"),
            &a1,
            "refresh_token_reused",
            "test",
        )
        .await?;
    let fired = r1.tick().await?;
    assert_eq!((fired.opened, fired.delivered), (1, 2));
    let t = deliveries(&got, "team", &team.secret)?;
    assert_eq!(kinds(&t), [pair("needs_reauth", "firing")]);
    assert_eq!(t[0]["pool"], "team");
    assert_eq!(t[0]["severity"], "critical");
    assert_eq!(t[0]["subject"], format!("{a1}@team"));
    assert!(t[0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("acc1"));
    assert_eq!(deliveries(&got, "all", &all.secret)?.len(), 1);
    // Quiet while it holds: more ticks, and the second replica taking over the lease.
    r1.tick().await?;
    store.release_lease(LEASE, "replica-1").await?;
    let takeover = r2.tick().await?;
    assert!(takeover.evaluated);
    assert_eq!((takeover.opened, takeover.delivered), (0, 0));
    assert!(!r1.tick().await?.evaluated);
    assert_eq!(deliveries(&got, "team", &team.secret)?.len(), 1);

    // The account comes back: one resolved, with the same episode.
    import(&ops, 1, "team").await?;
    let cleared = r2.tick().await?;
    assert_eq!((cleared.closed, cleared.delivered), (1, 2));
    let t = deliveries(&got, "team", &team.secret)?;
    assert_eq!(
        kinds(&t),
        [
            pair("needs_reauth", "firing"),
            pair("needs_reauth", "resolved")
        ]
    );
    assert_eq!(t[0]["episode"], t[1]["episode"]);
    assert!(t[1]["closed_at"].as_i64().is_some());

    // Headroom under 10 %: headroom_low; then spent: pool_exhausted (and headroom_low clears).
    quota(&store, &a1, 95.0, 3 * 3600).await?;
    quota(&store, &a2, 93.0, 3 * 3600).await?;
    r2.tick().await?;
    quota(&store, &a1, 100.0, 3 * 3600).await?;
    quota(&store, &a2, 100.0, 3 * 3600).await?;
    r2.tick().await?;
    r2.tick().await?;
    let t = deliveries(&got, "team", &team.secret)?;
    assert_eq!(kinds(&t[2..3]), [pair("headroom_low", "firing")]);
    // One tick opened one and closed the other (in episode order), the next sent nothing.
    let mut second = kinds(&t[3..]);
    second.sort();
    assert_eq!(
        second,
        [
            pair("headroom_low", "resolved"),
            pair("pool_exhausted", "firing"),
        ]
    );
    // The window resets: exhausted clears.
    quota(&store, &a1, 0.0, 5 * 3600).await?;
    quota(&store, &a2, 0.0, 5 * 3600).await?;
    r2.tick().await?;
    let t = deliveries(&got, "team", &team.secret)?;
    assert_eq!(kinds(&t[5..]), [pair("pool_exhausted", "resolved")]);

    // A burn of 100 points an hour (0 % half an hour ago, 50 % now) runs out in 30 minutes,
    // before the reset in 4 hours: forecast_runs_out.
    let team_id = store.pool_by_name("team").await?.id;
    // Only this history (the ticks above stored samples of their own, seconds apart).
    sqlx::query("DELETE FROM pool_usage_samples")
        .execute(store.sql_pool())
        .await?;
    store
        .record_pool_sample(
            &team_id,
            PoolSample {
                at_ms: now_ms() - 30 * 60_000,
                primary_used: Some(0.0),
                secondary_used: None,
            },
        )
        .await?;
    quota(&store, &a1, 50.0, 4 * 3600).await?;
    quota(&store, &a2, 50.0, 4 * 3600).await?;
    let f = forecast::forecast(&ops, "team").await?.value;
    assert_eq!(f.primary.used_percent, Some(50.0));
    let burn = f.primary.burn_percent_per_hour.unwrap_or_default();
    assert!((burn - 100.0).abs() < 1.0, "burn {burn}");
    assert!(f.primary.runs_out_before_reset);
    assert_eq!(f.secondary.used_percent, None);
    r2.tick().await?;
    let t = deliveries(&got, "team", &team.secret)?;
    assert_eq!(kinds(&t[6..]), [pair("forecast_runs_out", "firing")]);
    // Nobody else's webhook heard about team but the global one.
    assert!(deliveries(&got, "broken", &broken.secret)?.is_empty());
    assert_eq!(deliveries(&got, "all", &all.secret)?.len(), t.len());

    // A failing receiver: the attempt is recorded on the webhook, and retried later (not now).
    store
        .mark_needs_reauth(&Actor::new("refresher"), &o1, "revoked", "test")
        .await?;
    let failing = r2.tick().await?;
    assert_eq!(failing.failed, 1);
    let hooks = alerts::list_webhooks(&ops).await?.value;
    let b = hooks
        .iter()
        .find(|h| h.name == "broken")
        .ok_or("broken hook")?;
    assert_eq!(b.last_status, Some(500));
    assert!(b.last_error.is_some());
    assert_eq!(deliveries(&got, "broken", &broken.secret)?.len(), 1);
    r2.tick().await?;
    assert_eq!(
        deliveries(&got, "broken", &broken.secret)?.len(),
        1,
        "backoff"
    );

    // The episodes as the API lists them; an admin of `other` sees only its own.
    let open = alerts::episodes(&ops, true, None).await?.value;
    let mut open_kinds: Vec<&str> = open.iter().map(|e| e.kind.as_str()).collect();
    open_kinds.sort_unstable();
    assert_eq!(open_kinds, ["forecast_runs_out", "needs_reauth"]);
    let theirs = alerts::episodes(&admin, false, None).await?.value;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].pool.as_deref(), Some("other"));

    // A test delivery is signed too; removing a webhook is audited.
    let test = alerts::test_webhook(&ops, "team-hook").await?.value;
    assert!(test.delivered);
    let last = deliveries(&got, "team", &team.secret)?;
    assert_eq!(
        last.last().map(|d| d["kind"].clone()),
        Some(Value::from("test"))
    );
    alerts::remove_webhook(&ops, "all-hook").await?;
    let audit = store.recent_audit(50).await?;
    for action in [
        "alert.webhook_add",
        "alert.webhook_remove",
        "alert.webhook_test",
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e.action == action && e.outcome == "ok"),
            "{action} not audited"
        );
    }
    assert!(!serde_json::to_string(&audit)?.contains("whsec_"));
    Ok(())
}

#[tokio::test]
async fn sqlite_alerts_fire_once_per_episode() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/cm.db", dir.path().display());
    exercise(&dir, url).await
}

#[tokio::test]
async fn postgres_alerts_fire_once_per_episode() -> TestResult {
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
    let dir = tempfile::tempdir()?;
    exercise(&dir, url).await
}

/// `serve` runs the evaluator: with a short interval, evidence written to the store raises
/// `headroom_low` at the webhook once, and clearing it resolves it once; stopping is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_evaluator() -> TestResult {
    let got: Received = Arc::default();
    let base = receiver(Arc::clone(&got)).await?;
    let dir = tempfile::tempdir()?;
    let flags = SettingsFlags {
        store: Some(format!("sqlite://{}/cm.db", dir.path().display())),
        data_dir: Some(dir.path().to_owned()),
        grpc_listen: Some("127.0.0.1:0".parse()?),
        admin_listen: Some("127.0.0.1:0".parse()?),
        alert_interval_ms: Some(100),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    let ops = Ops::new(settings.clone(), Actor::new("cli:tester"));
    pools::create(&ops, "team").await?;
    let a1 = import(&ops, 1, "team").await?;
    let hook = alerts::add_webhook(&ops, "h", &format!("{base}/serve"), None)
        .await?
        .value;
    let store = ops.store().await?.clone();
    let running = codexmesh_engine::server::start(&settings, store.clone()).await?;

    let wait_for = |n: usize| {
        let got = Arc::clone(&got);
        let secret = hook.secret.clone();
        async move {
            for _ in 0..100 {
                let seen = deliveries(&got, "serve", &secret)?;
                if seen.len() >= n {
                    return Ok::<_, Box<dyn std::error::Error>>(seen);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(format!("fewer than {n} deliveries within 10 s").into())
        }
    };
    quota(&store, &a1, 95.0, 3600).await?;
    let fired = wait_for(1).await?;
    assert_eq!(kinds(&fired), [pair("headroom_low", "firing")]);
    quota(&store, &a1, 20.0, 3600).await?;
    let resolved = wait_for(2).await?;
    assert_eq!(
        kinds(&resolved),
        [
            pair("headroom_low", "firing"),
            pair("headroom_low", "resolved")
        ]
    );
    // Quiet afterwards: several more intervals add nothing.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(deliveries(&got, "serve", &hook.secret)?.len(), 2);
    running.shutdown_token().cancel();
    running.finish().await?;
    Ok(())
}
