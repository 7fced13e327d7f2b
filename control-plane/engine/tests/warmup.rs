//! Account warm-up against the simulator (issue 15): a pool's schedule fires once at its slot
//! (whichever replica ticks), each active account gets exactly one request with its own token
//! (Codex `/codex/responses`, Claude `/v1/messages`), the request log shows them (route reason `warmup`), their quota
//! headers become evidence, the run is audited; a schedule turned off does nothing.

mod support;

use codexmesh_engine::alerts::Evaluator;
use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::warmup::{self, WarmupChange};
use codexmesh_engine::ops::{pools, ErrorKind, Ops};
use codexmesh_model::util::{fmt_utc_ms, now_ms};
use codexmesh_store::Actor;
use codexmesh_test_kit::sim::Sim;
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Creates a simulator account and imports it into `pool`; (sim account id, store account id).
async fn import(ops: &Ops, sim: &Sim, pool: &str, label: &str) -> Res<(String, String)> {
    let acct = sim.create_account(json!({})).await?;
    let creds = codexmesh_model::credentials::parse(acct["auth_json"].to_string().as_bytes())?;
    let key = ops.settings().master_keys()?;
    let r = ops
        .store()
        .await?
        .import_account(ops.actor(), pool, Some(label), &creds, &key)
        .await?;
    Ok((
        acct["account_id"].as_str().unwrap_or_default().to_owned(),
        r.account.id,
    ))
}

/// Creates a simulator Claude subscription account and imports its credentials file.
async fn import_claude(ops: &Ops, sim: &Sim, pool: &str, label: &str) -> Res<(String, String)> {
    let acct = sim.create_claude_account(json!({})).await?;
    let file = acct["credentials_file"].to_string();
    let creds = codexmesh_model::credential_files::parse_file(file.as_bytes(), None)?;
    let key = ops.settings().master_keys()?;
    let r = ops
        .store()
        .await?
        .import_account(ops.actor(), pool, Some(label), &creds, &key)
        .await?;
    Ok((
        acct["account_id"].as_str().unwrap_or_default().to_owned(),
        r.account.id,
    ))
}

async fn warmups_to(sim: &Sim, sim_id: &str) -> Res<Vec<Value>> {
    Ok(sim.requests_of(sim_id, "/codex/responses").await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_warms_each_account_once() -> TestResult {
    let sim = Sim::start()?;
    let dir = tempfile::tempdir()?;
    let flags = SettingsFlags {
        store: Some(format!("sqlite://{}/cm.db", dir.path().display())),
        data_dir: Some(dir.path().to_owned()),
        upstream_base_url: Some(sim.base_url()),
        claude_base_url: Some(sim.root_url()),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    let ops = Ops::new(settings.clone(), Actor::new("cli:tester"));
    pools::create(&ops, "team").await?;
    pools::create(&ops, "quiet").await?;
    let (s1, a1) = import(&ops, &sim, "team", "one").await?;
    let (s2, a2) = import(&ops, &sim, "team", "two").await?;
    let (s3, _) = import(&ops, &sim, "quiet", "three").await?;
    let (sc, ac) = import_claude(&ops, &sim, "team", "claude").await?;

    // Bad input names its field and changes nothing.
    let bad = warmup::set(
        &ops,
        "team",
        &WarmupChange::On {
            at: "25:00".into(),
            weekdays: None,
        },
    )
    .await;
    assert_eq!(bad.as_ref().err().and_then(|e| e.field()), Some("at"));
    let bad = warmup::set(
        &ops,
        "team",
        &WarmupChange::On {
            at: "07:30".into(),
            weekdays: Some("fri-mon".into()),
        },
    )
    .await;
    assert_eq!(
        bad.as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::Invalid)
    );
    assert!(!warmup::get(&ops, "team").await?.value.enabled);

    // This minute (UTC), every day; the quiet pool's is set and turned off again.
    let at = fmt_utc_ms(now_ms())[11..16].to_owned();
    let on = warmup::set(
        &ops,
        "team",
        &WarmupChange::On {
            at: at.clone(),
            weekdays: Some("all".into()),
        },
    )
    .await?
    .value;
    assert!(on.enabled);
    assert_eq!(on.at.as_deref(), Some(at.as_str()));
    warmup::set(
        &ops,
        "quiet",
        &WarmupChange::On {
            at: at.clone(),
            weekdays: None,
        },
    )
    .await?;
    let off = warmup::set(&ops, "quiet", &WarmupChange::Off).await?.value;
    assert!(!off.enabled);
    assert_eq!(off.at.as_deref(), Some(at.as_str()));

    let store = ops.store().await?.clone();
    let r1 = Evaluator::from_settings(&settings, store.clone(), "replica-1")?;
    let r2 = Evaluator::from_settings(&settings, store.clone(), "replica-2")?;
    let tick = r1.tick().await?;
    assert_eq!(tick.warmups.len(), 1, "{tick:?}");
    let run = &tick.warmups[0];
    assert_eq!((run.pool.as_str(), run.sent, run.succeeded), ("team", 3, 3));
    let claude = sim.requests_of(&sc, "/v1/messages").await?;
    assert_eq!(claude.len(), 1, "{claude:?}");
    // Exactly one request each, with its own token; none to the pool that is off.
    for sim_id in [&s1, &s2] {
        let reqs = warmups_to(&sim, sim_id).await?;
        assert_eq!(reqs.len(), 1, "{sim_id}: {reqs:?}");
    }
    assert!(warmups_to(&sim, &s3).await?.is_empty());

    // Once per slot: more ticks, and the other replica (after the lease moves), run nothing.
    assert!(r1.tick().await?.warmups.is_empty());
    store
        .release_lease(codexmesh_engine::alerts::LEASE, "replica-1")
        .await?;
    assert!(r2.tick().await?.warmups.is_empty());
    for sim_id in [&s1, &s2] {
        assert_eq!(warmups_to(&sim, sim_id).await?.len(), 1);
    }
    assert_eq!(sim.requests_of(&sc, "/v1/messages").await?.len(), 1);

    // The request log shows them like any traffic; the quota headers became evidence.
    let logged: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT account_id, key_id, status FROM outcomes WHERE route_reason = 'warmup' ORDER BY account_id",
    )
    .fetch_all(store.sql_pool())
    .await?;
    let mut expected = vec![a1.clone(), a2.clone(), ac.clone()];
    expected.sort();
    assert_eq!(
        logged.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(
        logged.iter().all(|r| r.1 == "warmup" && r.2 == 200),
        "{logged:?}"
    );
    for id in [&a1, &a2, &ac] {
        let q = store.quota(id).await?.ok_or("no evidence")?;
        let p = q.primary.ok_or("no 5-hour window")?;
        assert_eq!(p.source, "headers");
    }
    // Audited once, and the schedule shows the run.
    let audit = store.recent_audit(50).await?;
    let runs: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "pool.warmup_run")
        .collect();
    assert_eq!(runs.len(), 1);
    assert!(audit.iter().any(|e| e.action == "pool.set_warmup"));
    assert!(warmup::get(&ops, "team").await?.value.last_run_ms.is_some());
    Ok(())
}
