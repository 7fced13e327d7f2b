//! Claude and Gemini accounts kept alive by the real `codexmesh serve` (and the CLI) against
//! the simulator's Anthropic and Google endpoints, no Envoy: refresh before expiry with the
//! rotated refresh token stored (the simulator's lineage sees no reuse), single flight across
//! two replicas on one PostgreSQL, a revoked lineage → `needs_reauth`, a Google refresh that
//! keeps its refresh token, a SIGKILL right after the persist losing nothing, and quota bars
//! filled from the usage polls (`/api/oauth/usage`, `retrieveUserQuota`).
//!
//! Accounts are imported from the simulator's credential files through the store (the model's
//! `parse_file` and `Store::import_account`, what every import surface calls), so these tests
//! do not depend on the CLI's import options.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use codexmesh_model::credential_files;
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{Actor, Store};
use codexmesh_test_kit::pg::TempPostgres;
use codexmesh_test_kit::{AnyError, Cli, Served, Sim, TestResult, Workspace};
use serde_json::{json, Value};

fn workspace(sim: &Sim) -> Result<Workspace, AnyError> {
    let mut ws = Workspace::new()?;
    // Every base and token URL (Codex, Claude, Google) at the simulator.
    ws.extra_args = sim.cp_args();
    Ok(ws)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn sim_id(acct: &Value) -> String {
    s(&acct["account_id"])
}

/// Creates a simulator account of `provider` from `spec` and imports the credentials file its
/// CLI would have written as `label` (a Gemini file carries its `project_id`, CP's format).
async fn import(
    ws: &Workspace,
    sim: &Sim,
    provider: &str,
    label: &str,
    spec: Value,
) -> Result<(Value, Value), AnyError> {
    let acct = match provider {
        "claude" => sim.create_claude_account(spec).await?,
        "claude_api_key" => sim.create_claude_api_key_account(spec).await?,
        _ => sim.create_gemini_account(spec).await?,
    };
    let mut file = sim.credentials_file(&sim_id(&acct)).await?;
    if provider == "gemini" {
        file["project_id"] = acct["project_id"].clone();
    }
    let imported = store_import(ws, file.to_string().as_bytes(), label).await?;
    Ok((acct, imported))
}

/// Imports a credential file of any provider into pool `main` as `label`, sealed under the
/// workspace's master key (generated like the binary does when the data dir has none yet).
async fn store_import(ws: &Workspace, bytes: &[u8], label: &str) -> Result<Value, AnyError> {
    let key_path = ws.data_dir().join("master.key");
    if !key_path.exists() {
        std::fs::create_dir_all(ws.data_dir())?;
        std::fs::write(&key_path, MasterKey::generate()?.to_base64())?;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    let key = KeySource::from_file(&key_path)?;
    let store = Store::open(&ws.store_url()).await?;
    store.verify_master_key(&key).await?;
    let creds = credential_files::parse_file(bytes, None)?;
    let imported = store
        .import_account(&Actor::new("test"), "main", Some(label), &creds, &key)
        .await?;
    store.close().await;
    Ok(serde_json::to_value(&imported.account)?)
}

/// An imported account whose token is due at once (2 s lifetime); the tokens the simulator
/// issues from then on live `ttl` seconds; its token endpoint answers after `delay_ms`.
async fn due_account(
    ws: &Workspace,
    sim: &Sim,
    provider: &str,
    label: &str,
    ttl: i64,
    delay_ms: u64,
) -> Result<(Value, Value), AnyError> {
    let (acct, imported) = import(
        ws,
        sim,
        provider,
        label,
        json!({"access_token_ttl_secs": 2}),
    )
    .await?;
    sim.patch_account(
        &sim_id(&acct),
        json!({"access_token_ttl_secs": ttl, "refresh_delay_ms": delay_ms}),
    )
    .await?;
    Ok((acct, imported))
}

/// The account `label` in `status --json`.
fn status_account(ws: &Workspace, label: &str) -> Result<Value, AnyError> {
    let status = ws.ok_json(&["status"])?;
    status["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["accounts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["label"] == label)
        .ok_or_else(|| format!("no account {label} in status: {status}").into())
}

async fn wait_status(
    ws: &Workspace,
    label: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value, AnyError> {
    let deadline = Instant::now() + within;
    loop {
        let a = status_account(ws, label);
        if let Ok(a) = &a {
            if pred(a) {
                return Ok(a.clone());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{label}: {what} not within {within:?}: {a:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `have` (unix ms) is the simulator's expiry `want_secs` (unix s), within the second or two
/// between its clock reading and ours (the store computes it from `expires_in`).
fn near_expiry(have: &Value, want_secs: &Value) -> bool {
    match (have.as_i64(), want_secs.as_i64()) {
        (Some(h), Some(w)) => (h - w * 1000).abs() <= 2_000,
        _ => false,
    }
}

/// The body keys of each call to the token endpoint at `path` (the simulator keeps no
/// Claude or Google body, only its keys).
async fn token_call_keys(sim: &Sim, path: &str) -> Result<Vec<Vec<String>>, AnyError> {
    Ok(sim
        .requests_where(&format!("path_contains={path}"))
        .await?
        .iter()
        .map(|r| {
            let mut keys: Vec<String> = r["body_json_keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            keys.sort();
            keys
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_refreshes_before_expiry_and_stores_the_rotated_token() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = due_account(&ws, &sim, "claude", "cl", 8 * 3600, 0).await?;
    let id = sim_id(&acct);
    let served = Served::start(&ws, &[])?;
    // The scheduler refreshes the due token, once: the new one lives 8 h.
    sim.wait_account(&id, Duration::from_secs(20), "a scheduled refresh", |a| {
        a["refresh_successes"] == 1
    })
    .await?;
    let rotated = sim.account(&id).await?;
    let st = wait_status(&ws, "cl", Duration::from_secs(5), "the new token", |a| {
        a["token_revision"].as_i64() > imported["token_revision"].as_i64()
    })
    .await?;
    assert!(
        near_expiry(
            &st["access_token_expires_at_ms"],
            &rotated["access_token_expires_at"]
        ),
        "{st} {rotated}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sim.account(&id).await?["refresh_calls"], 1, "not due again");
    // A manual refresh sends the rotated token (stored with the new access token): the
    // simulator revokes a lineage whose consumed token comes back, so a success with the
    // lineage alive proves it was not replayed.
    let out = ws.ok_json(&["account", "refresh", "cl"])?;
    assert_eq!(out["by"], "this", "{out}");
    let after = sim.account(&id).await?;
    assert_eq!(after["refresh_calls"], 2);
    assert_eq!(after["refresh_successes"], 2);
    assert_eq!(
        after["revoked"], false,
        "no refresh token replayed: {after}"
    );
    assert_ne!(
        after["refresh_token"], rotated["refresh_token"],
        "rotated again"
    );
    let keys = token_call_keys(&sim, "/v1/oauth/token").await?;
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert_eq!(k, &["client_id", "grant_type", "refresh_token", "scope"]);
    }
    // Nothing the operator sees carries a token.
    let text = out.to_string() + &ws.ok(&["status", "--json"])?.stdout;
    for t in [&after["access_token"], &after["refresh_token"]] {
        assert!(!text.contains(&s(t)), "a token leaked");
    }
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_claude_lineage_needs_reauth() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, _) = import(&ws, &sim, "claude", "gone", json!({})).await?;
    sim.patch_account(&sim_id(&acct), json!({"revoke": true}))
        .await?;
    let run = ws.run(&["account", "refresh", "gone"])?;
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("invalid_grant"), "{}", run.stderr);
    let st = status_account(&ws, "gone")?;
    assert_eq!(st["state"], "needs_reauth", "{st}");
    assert_eq!(st["state_reason"], "invalid_grant");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_refresh_keeps_the_refresh_token() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = due_account(&ws, &sim, "gemini", "gm", 3600, 0).await?;
    let id = sim_id(&acct);
    let served = Served::start(&ws, &[])?;
    sim.wait_account(&id, Duration::from_secs(20), "a scheduled refresh", |a| {
        a["refresh_successes"] == 1
    })
    .await?;
    wait_status(&ws, "gm", Duration::from_secs(5), "the new token", |a| {
        a["token_revision"].as_i64() > imported["token_revision"].as_i64()
    })
    .await?;
    // Google did not rotate: the same refresh token works again.
    let out = ws.ok_json(&["account", "refresh", "gm"])?;
    assert_eq!(out["by"], "this", "{out}");
    let after = sim.account(&id).await?;
    assert_eq!(after["refresh_successes"], 2);
    assert_eq!(after["refresh_token"], acct["refresh_token"]);
    assert_eq!(
        token_call_keys(&sim, "/google/oauth2/token").await?.len(),
        2
    );
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_refresh_a_claude_account_once() -> TestResult {
    let Some(pg) = TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let sim = Sim::start()?;
    let mut ws = workspace(&sim)?;
    ws.store_override = Some(pg.url.clone());
    ws.ok(&["pool", "create", "main"])?;
    let (acct, _) = due_account(&ws, &sim, "claude", "dup", 8 * 3600, 2_000).await?;
    let (gacct, _) = due_account(&ws, &sim, "gemini", "gdup", 3600, 2_000).await?;
    let a = Served::start(&ws, &[])?;
    let b = Served::start(&ws, &[])?;
    for id in [sim_id(&acct), sim_id(&gacct)] {
        sim.wait_account(&id, Duration::from_secs(20), "a refresh", |x| {
            x["refresh_successes"] == 1
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in [sim_id(&acct), sim_id(&gacct)] {
        let state = sim.account(&id).await?;
        assert_eq!(
            state["refresh_calls"], 1,
            "one call across replicas: {state}"
        );
        assert_eq!(state["revoked"], false);
    }
    a.stop()?;
    b.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_a_claude_persist_loses_no_rotated_token() -> TestResult {
    use std::os::unix::process::ExitStatusExt;
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = due_account(&ws, &sim, "claude", "crash", 8 * 3600, 0).await?;
    let id = sim_id(&acct);
    let mut served = Served::start_env(
        &ws,
        &["--refresh-lease-secs", "3"],
        &[("CODEXMESH_FAULT", "kill_after_refresh_persist")],
    )?;
    let status = served.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let rotated = sim.account(&id).await?;
    assert_eq!(rotated["refresh_successes"], 1);
    let st = status_account(&ws, "crash")?;
    assert!(st["token_revision"].as_i64() > imported["token_revision"].as_i64());
    // After the dead holder's lease ran out, the next refresh sends the rotated token.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let r = ws.ok_json(&["account", "refresh", "crash", "--refresh-lease-secs", "3"])?;
    assert_eq!(r["by"], "this", "{r}");
    let after = sim.account(&id).await?;
    assert_eq!(after["refresh_successes"], 2);
    assert_eq!(
        after["revoked"], false,
        "the consumed token was not replayed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_bars_come_from_the_provider_polls() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let limits = json!({"primary_limit": 100, "secondary_limit": 1000});
    let (cl, _) = import(&ws, &sim, "claude", "cq", limits.clone()).await?;
    let (gm, _) = import(&ws, &sim, "gemini", "gq", limits.clone()).await?;
    let (key, _) = import(&ws, &sim, "claude_api_key", "kq", json!({})).await?;
    sim.patch_account(
        &sim_id(&cl),
        json!({"primary_used": 42, "secondary_used": 75}),
    )
    .await?;
    sim.patch_account(&sim_id(&gm), json!({"primary_used": 40}))
        .await?;
    let served = Served::start(&ws, &["--quota-poll-interval-secs", "1"])?;
    let st = wait_status(&ws, "cq", Duration::from_secs(15), "Claude bars", |a| {
        a["quota"]["primary"]["used_percent"] == 42.0
    })
    .await?;
    let q = &st["quota"];
    assert_eq!(q["primary"]["source"], "poll");
    assert_eq!(q["primary"]["window_minutes"], 300);
    assert!(q["primary"]["resets_in_secs"].as_i64() > Some(0));
    assert_eq!(q["secondary"]["window_minutes"], 10_080);
    assert_eq!(q["secondary"]["used_percent"], 7.5, "{q}");
    let st = wait_status(&ws, "gq", Duration::from_secs(15), "Gemini bar", |a| {
        a["quota"]["primary"]["used_percent"]
            .as_f64()
            .is_some_and(|u| (u - 40.0).abs() < 0.01)
    })
    .await?;
    assert_eq!(st["quota"]["primary"]["window_minutes"], 1_440);
    assert!(st["quota"]["secondary"].is_null());
    // What went out: the Claude poll with the OAuth beta, the Gemini one for its project.
    let polls = sim.requests_where("path_contains=/api/oauth/usage").await?;
    assert!(!polls.is_empty());
    for p in &polls {
        assert!(
            s(&p["headers"]["anthropic-beta"]).contains("oauth-2025-04-20"),
            "{p}"
        );
    }
    let polls = sim
        .requests_where("path_contains=retrieveUserQuota")
        .await?;
    assert!(!polls.is_empty());
    for p in &polls {
        assert_eq!(p["project"], gm["project_id"], "{p}");
    }
    // An API-key account has no usage endpoint and is never refreshed.
    let k = sim.account(&sim_id(&key)).await?;
    assert_eq!(k["refresh_calls"], 0);
    assert!(status_account(&ws, "kq")?["quota"]["primary"].is_null());
    served.stop()?;
    Ok(())
}

/// Reports `outcomes` to `served` as an Envoy node would.
async fn report(
    ws: &Workspace,
    served: &Served,
    outcomes: Vec<codexmesh_proto::v1::Outcome>,
) -> Result<u32, AnyError> {
    use codexmesh_proto::v1 as pb;
    let token = std::fs::read_to_string(ws.data_dir().join("push.token"))?;
    let mut client =
        pb::mesh_client::MeshClient::connect(format!("http://{}", served.grpc)).await?;
    let mut req = tonic::Request::new(pb::ReportBatch {
        node_id: "provider-test".into(),
        outcomes,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    Ok(client.report(req).await?.into_inner().accepted)
}

fn outcome(account: &Value, status: u32, path: &str) -> codexmesh_proto::v1::Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0);
    codexmesh_proto::v1::Outcome {
        pool_id: s(&account["pool_id"]),
        key_id: "key_test".into(),
        account_id: s(&account["id"]),
        attempt: 1,
        status,
        started_at_unix_ms: now - 50,
        latency_ms: 40,
        request_path: path.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_429s_cool_down_until_the_reset_and_a_401_rejects_an_api_key() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (_, cl) = import(&ws, &sim, "claude", "c429", json!({})).await?;
    let (_, gm) = import(&ws, &sim, "gemini", "g429", json!({})).await?;
    let (key_acct, key) = import(&ws, &sim, "claude_api_key", "k401", json!({})).await?;
    let served = Served::start(&ws, &["--quota-poll-interval-secs", "0"])?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let now = i64::try_from(now)?;
    // Claude: a 429 whose unified 7d window is rejected (the filter reports it spent) with
    // its reset: that window is 100 % until then.
    let mut c = outcome(&cl, 429, "/v1/messages");
    c.error_code = "rate_limit_error".into();
    c.resets_at_unix = now + 3 * 86_400;
    c.quota = Some(codexmesh_proto::v1::QuotaSummary {
        primary: Some(codexmesh_proto::v1::QuotaWindow {
            used_percent: 30.0,
            window_minutes: 300,
            resets_at_unix: now + 3600,
        }),
        secondary: Some(codexmesh_proto::v1::QuotaWindow {
            used_percent: 100.0,
            window_minutes: 10_080,
            resets_at_unix: now + 3 * 86_400,
        }),
        observed_at_unix_ms: now * 1000,
    });
    // Gemini: RESOURCE_EXHAUSTED / QUOTA_EXHAUSTED with a reset 9 h away: the daily window.
    let mut g = outcome(&gm, 429, "/v1internal:streamGenerateContent");
    g.error_code = "QUOTA_EXHAUSTED".into();
    g.resets_at_unix = now + 9 * 3600;
    assert_eq!(report(&ws, &served, vec![c, g]).await?, 2);
    let st = wait_status(&ws, "g429", Duration::from_secs(5), "the spent day", |a| {
        a["quota"]["primary"]["used_percent"] == 100.0
    })
    .await?;
    let p = &st["quota"]["primary"];
    assert_eq!(p["window_minutes"], 1_440, "{p}");
    assert_eq!(p["resets_at_unix"], now + 9 * 3600);
    assert_eq!(p["source"], "limit");
    assert!(st["quota"]["secondary"].is_null());
    let st = wait_status(&ws, "c429", Duration::from_secs(5), "the spent week", |a| {
        a["quota"]["secondary"]["used_percent"] == 100.0
    })
    .await?;
    assert_eq!(st["quota"]["secondary"]["window_minutes"], 10_080);
    assert_eq!(st["quota"]["secondary"]["resets_at_unix"], now + 3 * 86_400);
    assert_eq!(st["quota"]["primary"]["used_percent"], 30.0);
    assert_eq!(st["quota"]["primary"]["window_minutes"], 300);

    // A 401 for an API-key account routed with the snapshot carrying its key: the key is
    // bad, the account leaves routing; nothing is sent to a token endpoint.
    let mut u = outcome(&key, 401, "/v1/messages");
    u.snapshot_version = u64::try_from(key["token_revision"].as_i64().unwrap_or(0))?;
    report(&ws, &served, vec![u]).await?;
    let st = wait_status(&ws, "k401", Duration::from_secs(5), "needs_reauth", |a| {
        a["state"] == "needs_reauth"
    })
    .await?;
    assert_eq!(st["state_reason"], "api_key_rejected");
    assert_eq!(sim.account(&sim_id(&key_acct)).await?["refresh_calls"], 0);
    served.stop()?;
    Ok(())
}
