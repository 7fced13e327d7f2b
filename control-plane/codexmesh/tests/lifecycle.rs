//! Account lifecycle against the ChatGPT simulator, with `codexmesh serve` and the CLI as
//! processes (no Envoy): token refresh (rotation, permanent and transient failures, single
//! flight across processes and replicas, a crash right after the persist), quota evidence
//! (active polls, reported headers and 429s), 401 reports, health, watched folders, export and
//! the device-code login.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::pg::TempPostgres;
use codexmesh_test_kit::{self as kit, AnyError, Cli, Served, Sim, TestResult, Workspace};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Streaming;

// ---- helpers ----

fn workspace(sim: &Sim) -> Result<Workspace, AnyError> {
    let mut ws = Workspace::new()?;
    ws.extra_args = sim.cp_args();
    Ok(ws)
}

/// Creates a simulator account from `spec` and imports its auth.json as `label`.
async fn import(
    ws: &Workspace,
    sim: &Sim,
    pool: &str,
    label: &str,
    spec: Value,
) -> Result<(Value, Value), AnyError> {
    let acct = sim.create_account(spec).await?;
    let out = ws.import_auth(
        &format!("{label}.auth.json"),
        &acct["auth_json"].to_string(),
        pool,
        Some(label),
    )?;
    Ok((acct, out["account"].clone()))
}

fn sim_id(acct: &Value) -> String {
    acct["account_id"].as_str().unwrap_or_default().to_owned()
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

/// Polls `status --json` until `pred` holds for account `label` (bounded).
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

fn push_token(ws: &Workspace) -> Result<String, AnyError> {
    Ok(std::fs::read_to_string(ws.data_dir().join("push.token"))?
        .trim()
        .to_owned())
}

fn authed<T>(msg: T, token: &str) -> Result<tonic::Request<T>, AnyError> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

struct Mesh {
    client: MeshClient<Channel>,
    stream: Streaming<pb::SubscribeResponse>,
    token: String,
}

impl Mesh {
    async fn connect(ws: &Workspace, served: &Served) -> Result<Self, AnyError> {
        let token = push_token(ws)?;
        let mut client = MeshClient::connect(format!("http://{}", served.grpc)).await?;
        let stream = client
            .subscribe(authed(
                pb::SubscribeRequest {
                    node_id: "lifecycle-test".into(),
                    known_version: 0,
                    client_build: "test".into(),
                    egress_proxies: Vec::new(),
                },
                &token,
            )?)
            .await?
            .into_inner();
        Ok(Self {
            client,
            stream,
            token,
        })
    }

    /// Reads snapshots until one satisfies `pred` (bounded).
    async fn snapshot_until(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&pb::Snapshot) -> bool,
    ) -> Result<pb::Snapshot, AnyError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.stream.message())
                .await
                .map_err(|_| format!("no snapshot with {what} within {within:?}"))??
                .ok_or("stream ended")?;
            if let Some(pb::subscribe_response::Kind::Snapshot(s)) = msg.kind {
                if pred(&s) {
                    return Ok(s);
                }
            }
        }
    }

    async fn report(&mut self, outcomes: Vec<pb::Outcome>) -> Result<u32, AnyError> {
        let ack = self
            .client
            .report(authed(
                pb::ReportBatch {
                    node_id: "lifecycle-test".into(),
                    outcomes,
                    ..Default::default()
                },
                &self.token,
            )?)
            .await?
            .into_inner();
        Ok(ack.accepted)
    }
}

fn account_in<'a>(s: &'a pb::Snapshot, id: &str) -> Option<&'a pb::Account> {
    s.pools
        .iter()
        .flat_map(|p| p.accounts.iter())
        .find(|a| a.id == id)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}

type CliThread = std::thread::JoinHandle<Result<kit::Run, String>>;

/// Runs a CLI command on its own thread (the test goes on meanwhile).
fn spawn_cli(ws: &Workspace, args: &[&str]) -> CliThread {
    let mut cmd = ws.command();
    cmd.args(args);
    std::thread::spawn(move || cmd.output().map(kit::Run::from).map_err(|e| e.to_string()))
}

async fn join_cli(h: CliThread) -> Result<kit::Run, AnyError> {
    let joined = tokio::task::spawn_blocking(move || h.join()).await?;
    Ok(joined.map_err(|_| "CLI thread panicked")??)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

// ---- refresh ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_never_resends_a_consumed_token() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = import(&ws, &sim, "main", "alice", json!({})).await?;
    let id = sim_id(&acct);
    let first_rt = s(&acct["refresh_token"]);
    let mut revision = imported["token_revision"]
        .as_i64()
        .ok_or("token_revision")?;
    for round in 1..=3 {
        let out = ws.ok_json(&["account", "refresh", "alice"])?;
        assert_eq!(out["by"], "this", "round {round}: {out}");
        let rev = out["account"]["token_revision"].as_i64().ok_or("rev")?;
        assert!(rev > revision, "round {round}: token_revision moves");
        revision = rev;
        assert_no_tokens(&out.to_string(), &acct);
    }
    let state = sim.account(&id).await?;
    assert_eq!(state["refresh_calls"], 3);
    assert_eq!(state["refresh_successes"], 3);
    assert_eq!(
        state["revoked"], false,
        "no refresh token was replayed: {state}"
    );

    // What went out: the Codex body, each refresh token exactly once, first the imported one.
    let calls = sim
        .requests_where("path_contains=/oauth/token&include_body=1")
        .await?;
    let sent: Vec<String> = calls
        .iter()
        .map(|r| s(&r["body_json"]["refresh_token"]))
        .collect();
    assert_eq!(sent.len(), 3, "{calls:?}");
    assert_eq!(sent[0], first_rt);
    let mut distinct = sent.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "a refresh token was sent twice: {sent:?}"
    );
    for c in &calls {
        assert_eq!(c["body_json"]["client_id"], "app_EMoamEEZ73f0CkXaXp7hrann");
        assert_eq!(c["body_json"]["grant_type"], "refresh_token");
    }

    // The store holds the newest refresh token (persisted before anything else used it).
    let out = ws.path().join("check.json");
    ws.ok(&[
        "account",
        "export",
        "alice",
        "--out",
        out.to_str().ok_or("path")?,
        "--keep",
    ])?;
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let now = sim.account(&id).await?;
    assert_eq!(file["tokens"]["refresh_token"], now["refresh_token"]);
    assert_eq!(file["tokens"]["access_token"], now["access_token"]);
    let st = status_account(&ws, "alice")?;
    assert_eq!(
        st["access_token_expires_at_ms"].as_i64(),
        now["access_token_expires_at"].as_i64().map(|t| t * 1000)
    );
    Ok(())
}

fn assert_no_tokens(text: &str, acct: &Value) {
    for k in ["access_token", "refresh_token", "id_token"] {
        let t = s(&acct[k]);
        assert!(t.is_empty() || !text.contains(&t), "{k} leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusals_put_the_account_in_needs_reauth() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let cases = [
        (json!("refresh_token_reused"), "refresh_token_reused"),
        (json!("invalid_grant"), "invalid_grant"),
        (json!("refresh_token_expired"), "refresh_token_expired"),
        (
            json!("refresh_token_invalidated"),
            "refresh_token_invalidated",
        ),
        (
            json!({"status": 401, "body": {"detail": "nope"}}),
            "http_401",
        ),
    ];
    for (i, (spec, reason)) in cases.iter().enumerate() {
        let label = format!("p{i}");
        let (acct, _) = import(&ws, &sim, "main", &label, json!({})).await?;
        let id = sim_id(&acct);
        sim.patch_account(&id, json!({"fail_next_refresh": [spec]}))
            .await?;
        let r = ws.run(&["account", "refresh", &label])?;
        assert_eq!(r.code, 1, "{label}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("needs re-authentication ({reason})")),
            "{label}: {}",
            r.stderr
        );
        let st = status_account(&ws, &label)?;
        assert_eq!(st["state"], "needs_reauth", "{st}");
        assert_eq!(st["state_reason"], *reason);
        // Never sent again: a second try stops before the token endpoint.
        let again = ws.run(&["account", "refresh", &label])?;
        assert_eq!(again.code, 1);
        assert_eq!(sim.account(&id).await?["refresh_calls"], 1, "{label}");
    }
    let plain = ws.ok(&["status"])?;
    assert!(
        plain.stdout.contains("needs_reauth (refresh_token_reused)"),
        "{}",
        plain.stdout
    );

    // Found by the scheduler: out of routing in the snapshot, one WARN with the label.
    let (acct, imported) = import(
        &ws,
        &sim,
        "main",
        "sched",
        json!({"access_token_ttl_secs": 2}),
    )
    .await?;
    let id = sim_id(&acct);
    let cm_id = s(&imported["id"]);
    sim.patch_account(&id, json!({"fail_next_refresh": ["refresh_token_reused"]}))
        .await?;
    let served = Served::start(&ws, &[])?;
    let mut mesh = Mesh::connect(&ws, &served).await?;
    let snap = mesh
        .snapshot_until(Duration::from_secs(15), "sched in needs_reauth", |s| {
            account_in(s, &cm_id).is_some_and(|a| a.state == pb::AccountState::NeedsReauth as i32)
        })
        .await?;
    let a = account_in(&snap, &cm_id).ok_or("account")?;
    assert_eq!(a.state_reason, "refresh_token_reused");
    // Accounts that were already out stay out, with their reasons.
    let p0 = snap
        .pools
        .iter()
        .flat_map(|p| p.accounts.iter())
        .find(|a| a.label == "p1")
        .ok_or("p1")?;
    assert_eq!(p0.state, pb::AccountState::NeedsReauth as i32);
    assert_eq!(p0.state_reason, "invalid_grant");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warns: Vec<String> = served
        .log_lines("needs re-authentication")
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("sched"))
        .collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert!(warns[0].contains("refresh_token_reused"));
    assert_eq!(sim.account(&id).await?["refresh_calls"], 1);
    for line in served.log_lines("") {
        assert_no_tokens(&line, &acct);
    }
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_and_keep_the_account_serving() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = import(&ws, &sim, "main", "flaky", json!({})).await?;
    let id = sim_id(&acct);
    sim.patch_account(&id, json!({"fail_next_refresh": [503, 502]}))
        .await?;

    // The operator's try fails with the reason and the retry time; nothing leaves routing.
    let r = ws.run(&["account", "refresh", "flaky"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("HTTP 503") && r.stderr.contains("next attempt in"),
        "{}",
        r.stderr
    );
    let st = status_account(&ws, "flaky")?;
    assert_eq!(st["state"], "active");
    assert_eq!(st["refresh_failures"], 1);
    assert!(st["next_refresh_at_ms"].as_i64().is_some());
    assert!(s(&st["last_refresh_error"]).contains("503"));

    // The server's scheduler takes over the backoff: 503, 502, then success.
    let served = Served::start(&ws, &[])?;
    let mut mesh = Mesh::connect(&ws, &served).await?;
    let old_rev = imported["token_revision"].as_u64().ok_or("rev")?;
    let cm_id = s(&imported["id"]);
    sim.wait_account(&id, Duration::from_secs(30), "a successful refresh", |a| {
        a["refresh_successes"] == 1
    })
    .await?;
    let state = sim.account(&id).await?;
    assert_eq!(state["refresh_calls"], 3);
    assert_eq!(state["revoked"], false);
    // Backoff with jitter: 2.5-5 s after the first failure, 5-10 s after the second.
    let at: Vec<i64> = sim
        .requests_where("path_contains=/oauth/token")
        .await?
        .iter()
        .filter_map(|r| r["real_unix_ms"].as_i64())
        .collect();
    assert_eq!(at.len(), 3);
    let (gap1, gap2) = (at[1] - at[0], at[2] - at[1]);
    assert!((2_400..=6_000).contains(&gap1), "first backoff {gap1} ms");
    assert!((4_900..=11_000).contains(&gap2), "second backoff {gap2} ms");
    let st = wait_status(
        &ws,
        "flaky",
        Duration::from_secs(5),
        "cleared bookkeeping",
        |a| a["refresh_failures"] == 0,
    )
    .await?;
    assert_eq!(st["state"], "active");
    assert!(st["last_refresh_error"].is_null());
    assert!(st["next_refresh_at_ms"].is_null());
    // The account stayed in routing throughout, and the new token reached the subscriber.
    let snap = mesh
        .snapshot_until(Duration::from_secs(5), "the new token", |s| {
            account_in(s, &cm_id).is_some_and(|a| a.token_revision > old_rev)
        })
        .await?;
    let a = account_in(&snap, &cm_id).ok_or("account")?;
    assert_eq!(a.state, pb::AccountState::Active as i32);
    assert_eq!(a.access_token, s(&sim.account(&id).await?["access_token"]));
    served.stop()?;
    Ok(())
}

/// A token that is due at once: the sim issues it with a 2 s lifetime, later ones live long.
async fn due_account(
    ws: &Workspace,
    sim: &Sim,
    label: &str,
    delay_ms: u64,
) -> Result<(Value, Value), AnyError> {
    let (acct, imported) =
        import(ws, sim, "main", label, json!({"access_token_ttl_secs": 2})).await?;
    sim.patch_account(
        &sim_id(&acct),
        json!({"access_token_ttl_secs": 3600, "refresh_delay_ms": delay_ms}),
    )
    .await?;
    Ok((acct, imported))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_and_two_cli_runs_make_one_token_call() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = due_account(&ws, &sim, "busy", 3_000).await?;
    let id = sim_id(&acct);
    let served = Served::start(&ws, &[])?;
    // The scheduler's call is in flight (the sim holds it 3 s) ...
    sim.wait_account(&id, Duration::from_secs(10), "the scheduler's call", |a| {
        a["refresh_calls"] == 1
    })
    .await?;
    // ... when two operators ask for the same refresh.
    let runs: Vec<_> = (0..2)
        .map(|_| spawn_cli(&ws, &["account", "refresh", "busy", "--json"]))
        .collect();
    for h in runs {
        let o = join_cli(h).await?;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: Value = serde_json::from_str(o.stdout.trim())?;
        assert_eq!(v["by"], "other", "{v}");
        assert!(v["account"]["token_revision"].as_i64() > imported["token_revision"].as_i64());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = sim.account(&id).await?;
    assert_eq!(
        state["refresh_calls"], 1,
        "exactly one token endpoint call: {state}"
    );
    assert_eq!(state["refresh_successes"], 1);
    let st = status_account(&ws, "busy")?;
    assert_eq!(
        st["access_token_expires_at_ms"].as_i64(),
        state["access_token_expires_at"].as_i64().map(|t| t * 1000)
    );
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_refresh_once() -> TestResult {
    let Some(pg) = TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let sim = Sim::start()?;
    let mut ws = workspace(&sim)?;
    ws.store_override = Some(pg.url.clone());
    ws.ok(&["pool", "create", "main"])?;
    let mut accounts = Vec::new();
    for i in 0..3 {
        accounts.push(due_account(&ws, &sim, &format!("r{i}"), 2_000).await?);
    }
    let a = Served::start(&ws, &[])?;
    let b = Served::start(&ws, &[])?;
    for (acct, _) in &accounts {
        sim.wait_account(&sim_id(acct), Duration::from_secs(20), "a refresh", |x| {
            x["refresh_successes"] == 1
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (acct, _) in &accounts {
        let state = sim.account(&sim_id(acct)).await?;
        assert_eq!(
            state["refresh_calls"], 1,
            "one call per account across replicas: {state}"
        );
        assert_eq!(state["revoked"], false);
    }
    // Both replicas push the same new tokens.
    let mut want = Vec::new();
    for (acct, imported) in &accounts {
        want.push((
            s(&imported["id"]),
            s(&sim.account(&sim_id(acct)).await?["access_token"]),
        ));
    }
    for served in [&a, &b] {
        let mut mesh = Mesh::connect(&ws, served).await?;
        mesh.snapshot_until(Duration::from_secs(5), "the refreshed tokens", |snap| {
            want.iter()
                .all(|(id, token)| account_in(snap, id).is_some_and(|x| &x.access_token == token))
        })
        .await?;
    }
    a.stop()?;
    b.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_persist_then_restart_uses_the_rotated_token() -> TestResult {
    use std::os::unix::process::ExitStatusExt;
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = due_account(&ws, &sim, "crash", 0).await?;
    let id = sim_id(&acct);
    let mut served = Served::start_env(
        &ws,
        &["--refresh-lease-secs", "3"],
        &[("CODEXMESH_FAULT", "kill_after_refresh_persist")],
    )?;
    let status = served.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await; // the log reader catches up
    assert_eq!(served.log_lines("kill_after_refresh_persist").len(), 1);
    let rotated = sim.account(&id).await?;
    assert_eq!(rotated["refresh_successes"], 1);
    // The answer was persisted before the crash.
    let st = status_account(&ws, "crash")?;
    assert!(st["token_revision"].as_i64() > imported["token_revision"].as_i64());
    assert_eq!(
        st["access_token_expires_at_ms"].as_i64(),
        rotated["access_token_expires_at"]
            .as_i64()
            .map(|t| t * 1000)
    );

    // Restart; the next refresh (after the dead process's lease ran out) uses the rotated token.
    let served = Served::start(&ws, &["--refresh-lease-secs", "3"])?;
    let r = ws.ok_json(&["account", "refresh", "crash", "--refresh-lease-secs", "3"])?;
    assert_eq!(r["by"], "this");
    let after = sim.account(&id).await?;
    assert_eq!(after["refresh_calls"], 2);
    assert_eq!(after["refresh_successes"], 2);
    assert_eq!(
        after["revoked"], false,
        "the consumed token was not replayed: {after}"
    );
    let sent: Vec<String> = sim
        .requests_where("path_contains=/oauth/token&include_body=1")
        .await?
        .iter()
        .map(|r| s(&r["body_json"]["refresh_token"]))
        .collect();
    assert_eq!(
        sent,
        [s(&acct["refresh_token"]), s(&rotated["refresh_token"])]
    );
    // Requests with what the restarted server pushes succeed.
    let mut mesh = Mesh::connect(&ws, &served).await?;
    let want = s(&after["access_token"]);
    let cm_id = s(&imported["id"]);
    let snap = mesh
        .snapshot_until(Duration::from_secs(5), "the newest token", |x| {
            account_in(x, &cm_id).is_some_and(|a| a.access_token == want)
        })
        .await?;
    let token = account_in(&snap, &cm_id)
        .map(|a| a.access_token.clone())
        .unwrap_or_default();
    assert_eq!(sim.get_with_token("/wham/usage", &token, &id).await?, 200);
    served.stop()?;
    Ok(())
}

// ---- quota ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_quota_lands_in_status_and_snapshots() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = import(
        &ws,
        &sim,
        "main",
        "q",
        json!({"primary_limit": 100, "secondary_limit": 1000,
               "credits": {"has_credits": true, "unlimited": false, "balance": "7.5"}}),
    )
    .await?;
    let id = sim_id(&acct);
    let cm_id = s(&imported["id"]);
    sim.patch_account(
        &id,
        json!({"primary_used": 42, "secondary_used": 75, "plan": "pro"}),
    )
    .await?;
    let served = Served::start(&ws, &["--quota-poll-interval-secs", "1"])?;
    let st = wait_status(&ws, "q", Duration::from_secs(10), "polled quota", |a| {
        a["quota"]["primary"]["used_percent"] == 42.0
    })
    .await?;
    let q = &st["quota"];
    assert_eq!(q["primary"]["source"], "poll");
    assert_eq!(q["primary"]["window_minutes"], 300);
    assert!(q["primary"]["resets_in_secs"].as_i64() > Some(0));
    assert_eq!(q["secondary"]["used_percent"], 8.0); // the sim rounds 7.5
    assert_eq!(q["secondary"]["window_minutes"], 10_080);
    assert_eq!(q["credits"]["balance"], "7.5");
    assert_eq!(q["plan"], "pro");
    let plain = ws.ok(&["status"])?;
    assert!(
        plain.stdout.contains("42%") && plain.stdout.contains("8%"),
        "{}",
        plain.stdout
    );
    let polls = sim.requests_where("path_contains=/wham/usage").await?;
    assert!(!polls.is_empty());
    for p in &polls {
        assert_eq!(p["headers"]["chatgpt-account-id"], id);
    }

    // Exhaustion is routing news: it reaches subscribers.
    let mut mesh = Mesh::connect(&ws, &served).await?;
    sim.patch_account(&id, json!({"primary_used": 100})).await?;
    mesh.snapshot_until(
        Duration::from_secs(10),
        "an exhausted primary window",
        |s| {
            account_in(s, &cm_id)
                .and_then(|a| a.quota.as_ref()?.primary.as_ref().map(|p| p.used_percent))
                == Some(100.0)
        },
    )
    .await?;
    // The window resets: usable again without anyone's help.
    let reset_at = now_ms() / 1000 + 2;
    sim.patch_account(&id, json!({"primary_reset_at": reset_at}))
        .await?;
    let snap = mesh
        .snapshot_until(Duration::from_secs(15), "the window reset", |s| {
            account_in(s, &cm_id)
                .and_then(|a| a.quota.as_ref()?.primary.as_ref().map(|p| p.used_percent))
                == Some(0.0)
        })
        .await?;
    assert!(snap.generated_at_unix_ms / 1000 >= reset_at);
    wait_status(
        &ws,
        "q",
        Duration::from_secs(5),
        "0 % after the reset",
        |a| a["quota"]["primary"]["used_percent"] == 0.0,
    )
    .await?;
    served.stop()?;
    Ok(())
}

fn outcome(pool_id: &str, account_id: &str, status: u32) -> pb::Outcome {
    pb::Outcome {
        pool_id: pool_id.into(),
        key_id: "key_test".into(),
        account_id: account_id.into(),
        attempt: 1,
        status,
        started_at_unix_ms: now_ms() - 50,
        latency_ms: 40,
        request_path: "/backend-api/codex/responses".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_evidence_and_401s() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, imported) = import(&ws, &sim, "main", "rep", json!({})).await?;
    let id = sim_id(&acct);
    let cm_id = s(&imported["id"]);
    let pool_id = s(&imported["pool_id"]);
    let served = Served::start(&ws, &["--quota-poll-interval-secs", "0"])?;
    let mut mesh = Mesh::connect(&ws, &served).await?;
    let first = mesh
        .snapshot_until(Duration::from_secs(5), "the account", |s| {
            account_in(s, &cm_id).is_some()
        })
        .await?;
    let gen0 = account_in(&first, &cm_id).cloned().ok_or("account")?;

    // x-codex-* headers on an answer.
    let now = now_ms();
    let mut o = outcome(&pool_id, &cm_id, 200);
    o.quota = Some(pb::QuotaSummary {
        primary: Some(pb::QuotaWindow {
            used_percent: 33.0,
            window_minutes: 300,
            resets_at_unix: now / 1000 + 3600,
        }),
        secondary: Some(pb::QuotaWindow {
            used_percent: 4.0,
            window_minutes: 10_080,
            resets_at_unix: now / 1000 + 86_400,
        }),
        // Observed a second ago: the 429 below is newer evidence.
        observed_at_unix_ms: now - 1000,
    });
    o.credits_has_credits = true;
    o.credits_balance = "12".into();
    assert_eq!(mesh.report(vec![o]).await?, 1);
    let st = wait_status(&ws, "rep", Duration::from_secs(5), "header evidence", |a| {
        a["quota"]["primary"]["used_percent"] == 33.0
    })
    .await?;
    assert_eq!(st["quota"]["primary"]["source"], "headers");
    assert_eq!(st["quota"]["secondary"]["used_percent"], 4.0);
    assert_eq!(st["quota"]["credits"]["balance"], "12");
    // Older evidence does not overwrite newer.
    let mut stale = outcome(&pool_id, &cm_id, 200);
    stale.quota = Some(pb::QuotaSummary {
        primary: Some(pb::QuotaWindow {
            used_percent: 90.0,
            window_minutes: 300,
            resets_at_unix: now / 1000 + 3600,
        }),
        secondary: None,
        observed_at_unix_ms: now - 60_000,
    });
    mesh.report(vec![stale]).await?;
    // A 429 usage_limit_reached: that window is spent until resets_at.
    let resets_at = now / 1000 + 600;
    let mut limit = outcome(&pool_id, &cm_id, 429);
    limit.error_code = "usage_limit_reached".into();
    limit.resets_at_unix = resets_at;
    limit.plan = "plus".into();
    mesh.report(vec![limit]).await?;
    let snap = mesh
        .snapshot_until(Duration::from_secs(5), "the spent window", |s| {
            account_in(s, &cm_id)
                .and_then(|a| a.quota.as_ref()?.primary.as_ref().map(|p| p.used_percent))
                == Some(100.0)
        })
        .await?;
    let q = account_in(&snap, &cm_id)
        .and_then(|a| a.quota)
        .ok_or("quota")?;
    assert_eq!(
        q.primary.as_ref().map(|p| p.resets_at_unix),
        Some(resets_at)
    );
    assert_eq!(q.secondary.as_ref().map(|p| p.used_percent), Some(4.0));
    let st = status_account(&ws, "rep")?;
    assert_eq!(st["quota"]["primary"]["source"], "limit");
    assert_eq!(st["health"]["quota_limited"], 1);
    assert_eq!(st["health"]["score"], 100, "429s are quota, not health");

    // A 401 for the current token: one forced refresh, pushed; repeats do nothing.
    let mut u = outcome(&pool_id, &cm_id, 401);
    u.token_expires_at_unix = gen0.access_token_expires_at_unix;
    u.snapshot_version = first.version;
    mesh.report(vec![u.clone(), u.clone()]).await?;
    let snap = mesh
        .snapshot_until(Duration::from_secs(10), "a new token generation", |s| {
            account_in(s, &cm_id).is_some_and(|a| a.token_revision > gen0.token_revision)
        })
        .await?;
    let gen1 = account_in(&snap, &cm_id).cloned().ok_or("account")?;
    assert_eq!(
        gen1.access_token,
        s(&sim.account(&id).await?["access_token"])
    );
    mesh.report(vec![u.clone()]).await?;
    let mut by_version = outcome(&pool_id, &cm_id, 401);
    by_version.snapshot_version = first.version; // routed with the old token
    mesh.report(vec![by_version]).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sim.account(&id).await?["refresh_calls"],
        1,
        "one refresh per generation"
    );
    // A 401 for the new generation forces the next one.
    let mut u2 = outcome(&pool_id, &cm_id, 401);
    u2.token_expires_at_unix = gen1.access_token_expires_at_unix;
    mesh.report(vec![u2.clone(), u2]).await?;
    sim.wait_account(&id, Duration::from_secs(10), "a second refresh", |a| {
        a["refresh_successes"] == 2
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.account(&id).await?["refresh_calls"], 2);
    served.stop()?;
    Ok(())
}

// ---- health ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_drops_under_failures_and_recovers() -> TestResult {
    let sim = Sim::start()?;
    let mut ws = workspace(&sim)?;
    // The CLI's live score uses the same window as the server.
    ws.extra_args
        .extend(["--health-window-secs".to_owned(), "4".to_owned()]);
    ws.ok(&["pool", "create", "main"])?;
    let (_, sick) = import(&ws, &sim, "main", "sick", json!({})).await?;
    let (_, fine) = import(&ws, &sim, "main", "fine", json!({})).await?;
    let (sick_id, fine_id, pool_id) = (s(&sick["id"]), s(&fine["id"]), s(&sick["pool_id"]));
    let served = Served::start(
        &ws,
        &[
            "--health-window-secs",
            "4",
            "--quota-poll-interval-secs",
            "0",
        ],
    )?;
    let mut mesh = Mesh::connect(&ws, &served).await?;
    let mut batch = Vec::new();
    for _ in 0..10 {
        let mut f = outcome(&pool_id, &sick_id, 503);
        f.error_source = "upstream".into();
        batch.push(f);
        let mut ok = outcome(&pool_id, &fine_id, 200);
        ok.attempt = 2;
        ok.fallback = true;
        batch.push(ok);
        let mut client_error = outcome(&pool_id, &fine_id, 400);
        client_error.error_source = "client".into();
        batch.push(client_error);
    }
    assert_eq!(mesh.report(batch).await?, 30);
    let st = wait_status(
        &ws,
        "sick",
        Duration::from_secs(5),
        "a low health score",
        |a| a["health"]["score"].as_u64() < Some(50),
    )
    .await?;
    assert_eq!(st["health"]["failures"], 10);
    assert_eq!(st["counters"]["requests"], 10);
    assert_eq!(st["counters"]["successes"], 0);
    let f = status_account(&ws, "fine")?;
    assert_eq!(f["health"]["score"], 100, "client errors do not count: {f}");
    assert_eq!(f["health"]["fallbacks_served"], 10);
    assert_eq!(f["counters"]["requests"], 20);
    assert_eq!(f["counters"]["successes"], 10);
    assert_eq!(f["counters"]["fallbacks_served"], 10);
    // The published score reaches the filter.
    mesh.snapshot_until(Duration::from_secs(5), "the low score", |s| {
        account_in(s, &sick_id).is_some_and(|a| a.health < 50)
    })
    .await?;
    let plain = ws.ok(&["status"])?;
    assert!(plain.stdout.contains("20/10/10"), "{}", plain.stdout);
    // Successes lift it, and once the failures leave the window it is back to 100.
    mesh.report((0..5).map(|_| outcome(&pool_id, &sick_id, 200)).collect())
        .await?;
    mesh.snapshot_until(Duration::from_secs(10), "the recovered score", |s| {
        account_in(s, &sick_id).is_some_and(|a| a.health == 100)
    })
    .await?;
    let st = status_account(&ws, "sick")?;
    assert_eq!(st["health"]["score"], 100);
    assert_eq!(
        st["counters"]["requests"], 15,
        "all-time counters keep counting"
    );
    served.stop()?;
    Ok(())
}

// ---- watched folders ----

fn write_atomically(path: &Path, text: &str) -> Result<(), AnyError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_folder_add_change_remove() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    let dir = ws.path().join("drop");
    std::fs::create_dir(&dir)?;
    let watch = format!("{}=watched", dir.display());
    let args = [
        "--watch",
        watch.as_str(),
        "--watch-interval-ms",
        "100",
        "--quota-poll-interval-secs",
        "0",
    ];
    let served = Served::start(&ws, &args)?;
    let mut mesh = Mesh::connect(&ws, &served).await?;

    // Add: the pool is created and the account joins it.
    let a = sim
        .create_account(json!({"email": "w@example.com"}))
        .await?;
    let id = sim_id(&a);
    write_atomically(&dir.join("w.json"), &a["auth_json"].to_string())?;
    let st = wait_status(
        &ws,
        "w@example.com",
        Duration::from_secs(10),
        "the import",
        |_| true,
    )
    .await?;
    assert_eq!(st["pool"], "watched");
    assert_eq!(st["chatgpt_account_id"], id);
    assert!(s(&st["source_path"]).ends_with("/drop/w.json"), "{st}");
    let cm_id = s(&st["id"]);

    // Change: a new login for the same account replaces the tokens.
    let relogin = sim
        .call(
            reqwest::Method::POST,
            &format!("/__sim/accounts/{id}/login"),
            None,
        )
        .await?;
    write_atomically(&dir.join("w.json"), &relogin["auth_json"].to_string())?;
    let want = s(&relogin["access_token"]);
    mesh.snapshot_until(Duration::from_secs(10), "the new login's token", |s| {
        account_in(s, &cm_id).is_some_and(|x| x.access_token == want)
    })
    .await?;

    // Junk is skipped and reported once; symlinks out of the folder and hidden files are not read.
    std::fs::write(dir.join("bad.json"), "{nope")?;
    let outside = sim
        .create_account(json!({"email": "out@example.com"}))
        .await?;
    std::fs::write(
        ws.path().join("outside.json"),
        outside["auth_json"].to_string(),
    )?;
    std::os::unix::fs::symlink(ws.path().join("outside.json"), dir.join("link.json"))?;
    let hidden = sim
        .create_account(json!({"email": "hidden@example.com"}))
        .await?;
    std::fs::write(dir.join(".hidden.json"), hidden["auth_json"].to_string())?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let bad = served.log_lines("bad.json");
    assert_eq!(
        bad.iter().filter(|l| l.contains("malformed")).count(),
        1,
        "{bad:?}"
    );
    let pool = ws.ok_json(&["account", "list", "--pool", "watched"])?;
    assert_eq!(pool.as_array().map(Vec::len), Some(1), "{pool}");

    // Remove: the account goes.
    std::fs::remove_file(dir.join("w.json"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pool = ws.ok_json(&["account", "list", "--pool", "watched"])?;
        if pool.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("account not removed: {pool}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.snapshot_until(Duration::from_secs(5), "the removal", |s| {
        account_in(s, &cm_id).is_none()
    })
    .await?;

    // A restart does not re-import unchanged files (their tokens were rotated since).
    let b = sim
        .create_account(json!({"email": "b@example.com"}))
        .await?;
    write_atomically(&dir.join("b.json"), &b["auth_json"].to_string())?;
    wait_status(
        &ws,
        "b@example.com",
        Duration::from_secs(10),
        "the import",
        |_| true,
    )
    .await?;
    served.stop()?;
    let rev = ws.ok_json(&["status"])?["revision"].as_i64();
    let served = Served::start(&ws, &args)?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(ws.ok_json(&["status"])?["revision"].as_i64(), rev);
    served.stop()?;
    Ok(())
}

// ---- export ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_hands_the_login_over() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "main"])?;
    let (acct, _) = import(&ws, &sim, "main", "leaving", json!({})).await?;
    let (kept, _) = import(&ws, &sim, "main", "staying", json!({})).await?;
    let out = ws.path().join("out/leaving.json");
    std::fs::create_dir(ws.path().join("out"))?;
    let out_s = out.to_str().ok_or("path")?;

    let r = ws.run(&["account", "export", "leaving", "--out", out_s, "--json"])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim())?;
    assert_eq!(v["removed"], true);
    assert!(r.stderr.contains("removed account leaving"), "{}", r.stderr);
    assert_no_tokens(&r.stdout, &acct);
    assert_no_tokens(&r.stderr, &acct);
    assert_eq!(std::fs::metadata(&out)?.permissions().mode() & 0o777, 0o600);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(file["auth_mode"], "chatgpt");
    assert_eq!(file["tokens"]["account_id"], acct["account_id"]);
    assert_eq!(file["tokens"]["refresh_token"], acct["refresh_token"]);
    assert!(file["last_refresh"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let list = ws.ok_json(&["account", "list"])?;
    assert!(!list.to_string().contains("leaving"), "{list}");
    // The file is a working Codex login: its refresh token is live.
    let resp = reqwest::Client::new()
        .post(sim.token_url())
        .json(&json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
                      "grant_type": "refresh_token",
                      "refresh_token": file["tokens"]["refresh_token"]}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);

    // Never over an existing file without --force.
    let r = ws.run(&["account", "export", "staying", "--out", out_s])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert!(ws
        .ok_json(&["account", "list"])?
        .to_string()
        .contains("staying"));
    // --force replaces it; --keep keeps the account (and says what that means).
    let r = ws.run(&[
        "account", "export", "staying", "--out", out_s, "--force", "--keep",
    ])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("--keep"), "{}", r.stderr);
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(file["tokens"]["account_id"], kept["account_id"]);
    assert_eq!(std::fs::metadata(&out)?.permissions().mode() & 0o777, 0o600);
    assert!(ws
        .ok_json(&["account", "list"])?
        .to_string()
        .contains("staying"));
    let leftovers: Vec<_> = std::fs::read_dir(ws.path().join("out"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    Ok(())
}

// ---- device-code login ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_joins_a_pool() -> TestResult {
    let sim = Sim::start()?;
    let ws = workspace(&sim)?;
    ws.ok(&["pool", "create", "team"])?;
    sim.behavior(json!({
        "device_auto_approve_after_polls": 1,
        "device_poll_interval_secs": 0,
        "device_auto_approve_as": {"account_id": "dev-acct-1", "plan": "pro",
                                   "email": "dev@example.test"}
    }))
    .await?;
    let r = ws.run(&["account", "login", "--pool", "team", "--json"])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim())?;
    assert_eq!(v["action"], "created");
    assert_eq!(v["account"]["chatgpt_account_id"], "dev-acct-1");
    assert_eq!(v["account"]["plan"], "pro");
    assert_eq!(v["account"]["email"], "dev@example.test");
    assert_eq!(v["account"]["pool"], "team");
    let logins = sim
        .call(reqwest::Method::GET, "/__sim/device", None)
        .await?;
    let login = &logins["logins"][0];
    assert_eq!(login["status"], "exchanged");
    assert!(
        r.stderr
            .contains(&format!("{}/codex/device", sim.root_url())),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(&s(&login["user_code"])), "{}", r.stderr);
    for secret in [&login["device_auth_id"], &login["authorization_code"]] {
        let secret = s(secret);
        assert!(secret.is_empty() || !r.stderr.contains(&secret) && !r.stdout.contains(&secret));
    }
    assert_eq!(sim.account("dev-acct-1").await?["logins"], 1);
    // The stored login works: it refreshes.
    ws.ok(&["account", "refresh", "dev@example.test"])?;

    // Denied at the approval page: a clear error.
    sim.behavior(json!({"reset": true})).await?;
    sim.behavior(json!({"device_poll_interval_secs": 0}))
        .await?;
    let cli = spawn_cli(&ws, &["account", "login", "--pool", "team"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = sim
            .call(reqwest::Method::GET, "/__sim/device", None)
            .await?;
        let pending = v["logins"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["status"] == "pending"));
        if pending {
            break;
        }
        if Instant::now() > deadline {
            return Err("no pending login".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.call(reqwest::Method::POST, "/__sim/device/deny", Some(json!({})))
        .await?;
    let denied = join_cli(cli).await?;
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("denied"), "{}", denied.stderr);

    // Nobody approves: bounded by --timeout-secs.
    let started = Instant::now();
    let r = ws.run(&["account", "login", "--pool", "team", "--timeout-secs", "1"])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no approval within"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Device login switched off; an unknown pool fails before the auth server is asked.
    sim.behavior(json!({"device_login_enabled": false})).await?;
    let r = ws.run(&["account", "login", "--pool", "team"])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not enabled"), "{}", r.stderr);
    let before = sim.requests_where("path_contains=deviceauth").await?.len();
    let r = ws.run(&["account", "login", "--pool", "nope"])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no pool named"), "{}", r.stderr);
    assert_eq!(
        sim.requests_where("path_contains=deviceauth").await?.len(),
        before
    );
    Ok(())
}
