//! `codexmesh secrets rotate-master-key` as processes (issue 13): a rotation SIGKILLed at
//! moments chosen while the test runs leaves every account readable with the key file on disk
//! and a re-run finishes; a running `serve` keeps pushing the right tokens across a rotation,
//! and refreshes (its own and the CLI's) work afterwards.

use std::process::Stdio;
use std::time::{Duration, Instant};

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::{self as kit, AnyError, Cli, Login, Served, Sim, TestResult, Workspace};
use serde_json::{json, Value};

const ACCOUNTS: usize = 40;

fn key_file_text(ws: &Workspace) -> Result<String, AnyError> {
    Ok(std::fs::read_to_string(ws.data_dir().join("master.key"))?)
}

/// Exports `label` (kept in the pool) and returns its three tokens as stored.
fn exported(ws: &Workspace, label: &str) -> Result<[String; 3], AnyError> {
    let out = ws.path().join(format!("{label}.export.json"));
    let _ = std::fs::remove_file(&out);
    ws.ok(&[
        "account",
        "export",
        label,
        "--out",
        out.to_str().ok_or("path")?,
        "--keep",
    ])?;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let t = |k: &str| v["tokens"][k].as_str().unwrap_or_default().to_owned();
    Ok([t("access_token"), t("refresh_token"), t("id_token")])
}

fn assert_readable(ws: &Workspace, logins: &[Login], at: &str) -> TestResult {
    let list = ws.ok_json(&["account", "list"])?;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(logins.len()),
        "{at}: {list}"
    );
    // Opening needs the keys: first, middle and last account, all three tokens each.
    for n in [0, logins.len() / 2, logins.len() - 1] {
        let l = &logins[n];
        let got = exported(ws, &format!("acc{n}"))?;
        assert_eq!(
            got,
            [
                l.access_token.clone(),
                l.refresh_token.clone(),
                l.id_token.clone()
            ],
            "{at}: acc{n}"
        );
    }
    Ok(())
}

/// A small deterministic generator seeded at run time (the kill moments differ per run).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Whether `secrets status` shows a finished rotation: switched, and the old key dropped.
fn complete(status: &Value) -> bool {
    status["current_version"] != 1
        && status["rotating_to"].is_null()
        && status["keyring_versions"].as_array().map(Vec::len) == Some(1)
}

#[test]
fn a_rotation_killed_at_any_moment_loses_nothing_and_a_rerun_finishes() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "team"])?;
    let mut logins = Vec::new();
    for n in 0..ACCOUNTS {
        let l = Login::new(
            &format!("acct-{n}"),
            &format!("u{n}@example.com"),
            "plus",
            &n.to_string(),
        );
        ws.import_auth(
            &format!("a{n}.json"),
            &l.auth_json(),
            "team",
            Some(&format!("acc{n}")),
        )?;
        logins.push(l);
    }
    let old_key = key_file_text(&ws)?.trim().to_owned();
    assert_readable(&ws, &logins, "before")?;

    let mut seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos(),
    ) | 1;
    let mut kills = 0;
    for round in 0..8 {
        // 20 ms per re-sealed row (test fault): the rotation takes about a second; kill it
        // somewhere in the first 900 ms, at a moment picked now.
        let mut cmd = ws.command();
        cmd.args(["secrets", "rotate-master-key"])
            .env("CODEXMESH_FAULT", "slow_reseal")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let delay = Duration::from_millis(30 + next(&mut seed) % 870);
        std::thread::sleep(delay);
        let finished = child.try_wait()?.is_some();
        if !finished {
            child.kill()?; // SIGKILL, by its PID
            kills += 1;
        }
        let status = child.wait()?;
        let at = format!("round {round}: killed after {delay:?} (finished: {finished}, {status})");
        // Everything stays readable with the key file as it is now, and status works.
        assert_readable(&ws, &logins, &at)?;
        let st = ws.ok_json(&["secrets", "status"])?;
        assert_eq!(st["keyring_holds_current"], true, "{at}: {st}");
        // A run that ended before its kill is a complete rotation; the next round starts
        // another one (and kills that).
        if kills >= 3 {
            break;
        }
    }
    assert!(kills > 0, "the rotation always finished before the kill");
    // Running it again finishes what a kill interrupted, the last step (dropping the old key)
    // included; after a complete one it would start the next rotation, so it is not run then.
    let st = ws.ok_json(&["secrets", "status"])?;
    let done = if !complete(&st) {
        ws.ok_json(&["secrets", "rotate-master-key"])?
    } else {
        st
    };
    let st = ws.ok_json(&["secrets", "status"])?;
    assert_eq!(st["rotating_to"], Value::Null, "{st}");
    let current = st["current_version"].as_u64().ok_or("current_version")?;
    assert!(current >= 2, "{st} after {done}");
    assert_eq!(st["keyring_versions"], json!([current]), "{st}");
    assert!(key_file_text(&ws)?.contains(&format!("v{current}:")));
    assert!(!key_file_text(&ws)?.contains(&old_key));
    assert_readable(&ws, &logins, "after")?;

    // The old key alone opens nothing now: a process given only it is refused.
    let mut cmd = ws.command();
    cmd.env("CODEXMESH_MASTER_KEY", &old_key)
        .args(["account", "export", "acc0", "--out"])
        .arg(ws.path().join("never.json"))
        .arg("--keep");
    let refused = kit::Run::from(cmd.output()?);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("master key"), "{}", refused.stderr);
    assert!(!ws.path().join("never.json").exists());
    // Keys and tokens never reach the output.
    for l in &logins {
        assert!(!done.to_string().contains(&l.access_token));
    }
    assert!(!done.to_string().contains(&old_key));
    Ok(())
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

fn account_in<'a>(s: &'a pb::Snapshot, id: &str) -> Option<&'a pb::Account> {
    s.pools
        .iter()
        .flat_map(|p| p.accounts.iter())
        .find(|a| a.id == id)
}

async fn snapshot_until(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    what: &str,
    pred: impl Fn(&pb::Snapshot) -> bool,
) -> Result<pb::Snapshot, AnyError> {
    let within = Duration::from_secs(15);
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
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

fn token_of(sim_account: &Value) -> String {
    sim_account["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_pushing_the_right_tokens_across_a_rotation() -> TestResult {
    let sim = Sim::start()?;
    let mut ws = Workspace::new()?;
    ws.extra_args = sim.cp_args();
    ws.ok(&["pool", "create", "main"])?;
    let mut ids = Vec::new();
    for label in ["alice", "bob"] {
        let acct = sim.create_account(json!({})).await?;
        let out = ws.import_auth(
            &format!("{label}.json"),
            &acct["auth_json"].to_string(),
            "main",
            Some(label),
        )?;
        let cm_id = out["account"]["id"].as_str().ok_or("id")?.to_owned();
        let sim_id = acct["account_id"].as_str().ok_or("sim id")?.to_owned();
        ids.push((cm_id, sim_id));
    }
    let served = Served::start(&ws, &[])?;
    let mut client = MeshClient::connect(format!("http://{}", served.grpc)).await?;
    let token = push_token(&ws)?;
    let mut stream = client
        .subscribe(authed(
            pb::SubscribeRequest {
                node_id: "rotation-test".into(),
                known_version: 0,
                client_build: "test".into(),
                egress_proxies: Vec::new(),
            },
            &token,
        )?)
        .await?
        .into_inner();
    let first = snapshot_until(&mut stream, "both accounts", |s| {
        ids.iter().all(|(id, _)| account_in(s, id).is_some())
    })
    .await?;
    for (cm, sim_id) in &ids {
        let a = account_in(&first, cm).ok_or("account")?;
        assert_eq!(a.access_token, token_of(&sim.account(sim_id).await?));
    }

    // Rotate while it serves (the CLI rewrites the key file the server read at start).
    let done = ws.ok_json(&["secrets", "rotate-master-key"])?;
    assert_eq!(done["to_version"], 2, "{done}");

    // A refresh by the CLI (sealed under v2, which the server has never held): the server's
    // next snapshot carries the new token, and bob's re-sealed token unchanged.
    let (alice, alice_sim) = &ids[0];
    let (bob, bob_sim) = &ids[1];
    let gen0 = account_in(&first, alice).cloned().ok_or("alice")?;
    ws.ok(&["account", "refresh", "alice"])?;
    let want = token_of(&sim.account(alice_sim).await?);
    let snap = snapshot_until(&mut stream, "alice's refreshed token", |s| {
        account_in(s, alice).is_some_and(|a| a.access_token == want)
    })
    .await?;
    let b = account_in(&snap, bob).ok_or("bob")?;
    assert_eq!(b.access_token, token_of(&sim.account(bob_sim).await?));
    assert_eq!(b.state, pb::AccountState::Active as i32, "{b:?}");

    // The server's own refresher (forced by a reported 401) opens and seals under v2 too.
    let gen1 = account_in(&snap, alice).cloned().ok_or("alice")?;
    assert!(gen1.token_revision > gen0.token_revision);
    let pool_id = snap.pools.first().map(|p| p.id.clone()).ok_or("pool")?;
    let unauthorized = pb::Outcome {
        pool_id,
        key_id: "key_test".into(),
        account_id: bob.clone(),
        attempt: 1,
        status: 401,
        started_at_unix_ms: 0,
        latency_ms: 40,
        request_path: "/backend-api/codex/responses".into(),
        token_expires_at_unix: b.access_token_expires_at_unix,
        snapshot_version: snap.version,
        ..Default::default()
    };
    client
        .report(authed(
            pb::ReportBatch {
                node_id: "rotation-test".into(),
                outcomes: vec![unauthorized],
                ..Default::default()
            },
            &token,
        )?)
        .await?;
    let b0 = b.token_revision;
    let snap = snapshot_until(&mut stream, "bob's server-side refresh", |s| {
        account_in(s, bob).is_some_and(|a| a.token_revision > b0)
    })
    .await?;
    let b = account_in(&snap, bob).ok_or("bob")?;
    assert_eq!(b.access_token, token_of(&sim.account(bob_sim).await?));
    assert!(served.log_lines("sealed_token_unreadable").is_empty());
    let st = ws.ok_json(&["secrets", "status"])?;
    assert_eq!(st["current_version"], 2, "{st}");
    // And both are readable from disk.
    for label in ["alice", "bob"] {
        exported(&ws, label)?;
    }
    served.stop()?;
    Ok(())
}
