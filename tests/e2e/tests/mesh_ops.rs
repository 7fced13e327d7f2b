//! Operating the mesh through real Envoy, the built wasm module, `codexmesh serve` and the
//! simulator: a file given to `codexmesh apply` is what Envoy serves (a new pool, its account,
//! its key and its client allowlist; dry runs and `get` → `apply` change nothing; a bad file
//! changes nothing), and a master-key rotation SIGKILLed while it re-seals leaves Envoy serving
//! every account's real token; a re-run finishes it and a token refreshed afterwards (sealed
//! under the new key, which the running server never held) reaches the upstream. The
//! simulator's request log is the witness of what reached the upstream.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use codexmesh_test_kit::wait::{self, Probe};
use codexmesh_test_kit::{
    import_account, openai_error_code, AnyError, Cli, Stack, StackOptions, TestResult, POOL,
};
use serde_json::{json, Value};

/// The node id the kit gives the stack's Envoy.
const NODE: &str = "envoy";
/// The pool the applied file declares.
const NEW_POOL: &str = "ops";

/// The bearer token of a simulator request-log entry.
fn bearer(req: &Value) -> String {
    req["headers"]["authorization"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_owned()
}

fn revision(stack: &Stack) -> Result<u64, AnyError> {
    let status = stack.cp.cli_json(&["status"])?;
    Ok(status["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {status}"))?)
}

/// Waits (bounded) until the stack's Envoy has ACKed a snapshot of at least `version`.
async fn until_acked(stack: &Stack, version: u64) -> TestResult {
    wait::until_async(
        Duration::from_secs(20),
        Duration::from_millis(100),
        &format!("Envoy to ACK snapshot v{version}"),
        || async {
            let status = stack.cp.cli_json(&["status"])?;
            let acked = status["envoys"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["node_id"] == NODE))
                .and_then(|e| e["acked_version"].as_u64());
            Ok(if acked >= Some(version) {
                Probe::Ready(())
            } else {
                Probe::NotYet(status["envoys"].to_string())
            })
        },
    )
    .await?;
    Ok(())
}

/// The pool document of the first test, allowlisting `cidr`, with `extra` appended to `spec`.
fn pool_doc(cidr: &str, extra: &str) -> String {
    format!(
        "api_version: codexmesh.dev/v1\n\
         kind: Pool\n\
         metadata:\n  name: {NEW_POOL}\n\
         spec:\n  \
           accounts:\n    - account: acct-0\n  \
           keys:\n    - label: ci\n  \
           network:\n    allowed_cidrs:\n      - {cidr}\n\
         {extra}"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String, AnyError> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_str().ok_or("test dir is not UTF-8")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_file_is_what_envoy_serves() -> TestResult {
    let stack = Stack::start_with(StackOptions::accounts(2).without_quota_polling()).await?;
    let dir = stack.dir.path();
    let token = stack.access_token(0);

    // A new pool naming an imported account, a key and an allowlist of the test's address.
    let file = write(dir, "ops.yaml", &pool_doc("127.0.0.1/32", ""))?;
    let applied = stack.cp.cli_json(&["apply", "-f", &file])?;
    assert_eq!(applied["changed"], true, "{applied}");
    assert_eq!(applied["dry_run"], false, "{applied}");
    let new_keys = applied["new_keys"]
        .as_array()
        .ok_or_else(|| format!("no new_keys in {applied}"))?;
    assert_eq!(new_keys.len(), 1, "{applied}");
    assert_eq!(new_keys[0]["pool"], NEW_POOL, "{applied}");
    assert_eq!(new_keys[0]["label"], "ci", "{applied}");
    let key = new_keys[0]["secret"]
        .as_str()
        .filter(|s| s.starts_with("cmk_"))
        .ok_or_else(|| format!("no key secret in {applied}"))?
        .to_owned();
    let applied_at = applied["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {applied}"))?;
    assert!(revision(&stack)? >= applied_at);

    // Envoy serves the new key with the member's own token; the pool key never goes upstream.
    stack
        .wait_until_serving(&key, Duration::from_secs(20))
        .await?;
    stack.sim.clear_requests().await?;
    let (status, body) = stack.turn(&key).await?;
    assert_eq!(status, 200, "{body}");
    let seen = stack.sim.requests().await?;
    let turns: Vec<&Value> = seen
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/codex/responses"))
        })
        .collect();
    assert_eq!(turns.len(), 1, "{seen:?}");
    assert_eq!(bearer(turns[0]), token, "the member's access token went up");
    for r in &seen {
        assert!(
            !r.to_string().contains(&key),
            "the pool key reached the upstream: {r}"
        );
    }

    // A dry run of the same file, and `get` applied back, change nothing.
    let before = revision(&stack)?;
    let dry = stack.cp.cli_json(&["apply", "-f", &file, "--dry-run"])?;
    assert_eq!(dry["changed"], false, "{dry}");
    assert!(
        dry["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("no changes")),
        "{dry}"
    );
    assert_eq!(dry["new_keys"].as_array().map(Vec::len), Some(0), "{dry}");
    let got = stack
        .cp
        .ok(&["get", "pools", NEW_POOL, "-o", "yaml"])?
        .stdout;
    for wanted in ["name: ops", "label: ci", "127.0.0.1/32", "acct-0"] {
        assert!(got.contains(wanted), "get shows {wanted}:\n{got}");
    }
    assert!(!got.contains(&key), "get prints no secret:\n{got}");
    let round = write(dir, "ops-got.yaml", &got)?;
    let again = stack.cp.cli_json(&["apply", "-f", &round])?;
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(
        revision(&stack)?,
        before,
        "a no-change apply moved the revision"
    );

    // The same file allowlisting 10.0.0.0/8: once Envoy has it, the key is refused at once and
    // nothing reaches the upstream.
    let closed = write(dir, "ops.yaml", &pool_doc("10.0.0.0/8", ""))?;
    let applied = stack.cp.cli_json(&["apply", "-f", &closed])?;
    assert_eq!(applied["changed"], true, "{applied}");
    assert_eq!(applied["new_keys"].as_array().map(Vec::len), Some(0));
    assert!(
        applied.to_string().contains("10.0.0.0/8"),
        "the diff names the new list: {applied}"
    );
    let closed_at = applied["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {applied}"))?;
    until_acked(&stack, closed_at).await?;
    stack.sim.clear_requests().await?;
    let (status, body) = stack.turn(&key).await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(openai_error_code(&body), "client_address_not_allowed");
    assert!(
        stack.sim.requests().await?.is_empty(),
        "a refused client reached the upstream"
    );
    // The stack's own pool is untouched by the file.
    let (status, body) = stack.turn(&stack.key).await?;
    assert_eq!(status, 200, "{POOL}: {body}");
    stack.sim.clear_requests().await?;

    // A file with an unknown field (that would also reopen the pool): exit 2, FILE:LINE and the
    // field path, and nothing applied.
    let before = revision(&stack)?;
    let listed = stack
        .cp
        .ok(&["get", "pools", NEW_POOL, "-o", "json"])?
        .stdout;
    let bad_text = pool_doc("127.0.0.1/32", "  routing:\n    max_attemps: 2\n");
    let line = bad_text
        .lines()
        .position(|l| l.contains("max_attemps"))
        .ok_or("no bad line")?
        + 1;
    let bad = write(dir, "bad.yaml", &bad_text)?;
    let r = stack.cp.cli(&["apply", "-f", &bad])?;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("bad.yaml:{line}:")),
        "names FILE:LINE ({line}): {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("spec.routing.max_attemps"),
        "names the field path: {}",
        r.stderr
    );
    assert!(r.stderr.contains("unknown field"), "says why: {}", r.stderr);
    assert_eq!(
        revision(&stack)?,
        before,
        "a refused file moved the revision"
    );
    let after = stack
        .cp
        .ok(&["get", "pools", NEW_POOL, "-o", "json"])?
        .stdout;
    assert_eq!(after, listed, "a refused file changed the pool");
    assert!(after.contains("10.0.0.0/8") && !after.contains("127.0.0.1/32"));
    let (status, body) = stack.turn(&key).await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(openai_error_code(&body), "client_address_not_allowed");
    assert!(stack.sim.requests().await?.is_empty());
    Ok(())
}

/// The key versions a key file holds (`vN:…` lines; a bare key is version 1).
fn key_versions(path: &Path) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(':') {
            Some((v, _)) if v.starts_with('v') => v.to_owned(),
            _ => "v1".to_owned(),
        })
        .collect())
}

/// A small generator seeded at run time (the kill moment differs per run).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Sends turns with the stack's key (bounded) until every token of `tokens` has reached the
/// simulator; every turn must answer 200 and carry one of them.
async fn every_token_reaches_the_upstream(
    stack: &Stack,
    tokens: &[String],
    at: &str,
) -> TestResult {
    stack.sim.clear_requests().await?;
    let mut missing: Vec<&String> = tokens.iter().collect();
    for n in 0..40 {
        let (status, body) = stack.turn(&stack.key).await?;
        assert_eq!(status, 200, "{at}: turn {n}: {body}");
        let seen: Vec<String> = stack
            .sim
            .turn_requests()
            .await?
            .iter()
            .map(bearer)
            .collect();
        for t in &seen {
            assert!(tokens.contains(t), "{at}: an unexpected token went up");
        }
        missing.retain(|t| !seen.contains(t));
        if missing.is_empty() {
            return Ok(());
        }
    }
    Err(format!(
        "{at}: {} account(s) never served in 40 turns",
        missing.len()
    )
    .into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rotation_keeps_envoy_serving() -> TestResult {
    const SERVING: usize = 3;
    // More sealed rows, so the re-sealing (20 ms a row with slow_reseal) lasts long enough to
    // be killed part-way.
    const PADDING: usize = 37;
    let rows = (SERVING + PADDING) as u64;
    let stack = Stack::start_with(StackOptions::accounts(SERVING).without_quota_polling()).await?;
    // The kill is timed by the test-only slow_reseal fault: a binary without the test-faults
    // feature ignores CODEXMESH_FAULT (and would finish every rotation before the kill).
    let probe = stack
        .cp
        .command()
        .env("CODEXMESH_FAULT", "no_such_fault")
        .args(["secrets", "status", "--json"])
        .output()?;
    if probe.status.success() {
        return Err(format!(
            "{} was built without the test-faults feature (it ignores CODEXMESH_FAULT): \
             cargo build -p codexmesh --features test-faults",
            stack.art.codexmesh.display()
        )
        .into());
    }
    let dir = stack.dir.path();
    stack.cp.cli_json(&["pool", "create", "bulk"])?;
    for i in 0..PADDING {
        import_account(
            &stack.sim,
            &stack.cp,
            dir,
            "bulk",
            &format!("bulk-{i}"),
            json!({}),
        )
        .await?;
    }
    stack
        .cp
        .cli_json(&["pool", "set-routing", POOL, "--strategy", "round_robin"])?;
    until_acked(&stack, revision(&stack)?).await?;
    let tokens: Vec<String> = (0..SERVING).map(|i| stack.access_token(i)).collect();
    every_token_reaches_the_upstream(&stack, &tokens, "before").await?;

    // The key file the stack's control plane uses (its data dir, as every CLI run gets it).
    let key_file: PathBuf = stack.cp.env.data_dir.join("master.key");
    let first = std::fs::read_to_string(&key_file)?;
    assert_eq!(key_versions(&key_file)?.len(), 1, "{key_file:?}");

    let mut seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos(),
    ) | 1;
    let mut pending = None;
    let mut tried = Vec::new();
    for round in 0..5 {
        let log = std::fs::File::create(dir.join(format!("rotate-{round}.log")))?;
        let mut cmd = stack.cp.command();
        cmd.args(["secrets", "rotate-master-key"])
            .env("CODEXMESH_FAULT", "slow_reseal")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn()?;
        // Re-sealing starts once the key file holds the next key; then kill it somewhere in
        // the first half of the re-sealing (40 rows × 20 ms), at a moment chosen now.
        let deadline = Instant::now() + Duration::from_secs(20);
        let started = loop {
            if key_versions(&key_file)?.len() >= 2 {
                break true;
            }
            if child.try_wait()?.is_some() {
                break false;
            }
            if Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                return Err("the rotation wrote no next key within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let delay = Duration::from_millis(60 + next(&mut seed) % 340);
        tokio::time::sleep(delay).await;
        let finished = child.try_wait()?.is_some();
        if !finished {
            child.kill()?; // SIGKILL, by its PID
        }
        let exit = child.wait()?;
        let status = stack.cp.cli_json(&["secrets", "status"])?;
        tried.push(format!(
            "round {round}: started {started:?}, killed after {delay:?}, finished {finished} \
             ({exit}): {status}"
        ));
        assert_eq!(status["keyring_holds_current"], true, "{status}");
        let left = status["rows_to_reseal"].as_u64().unwrap_or(0);
        if !finished && status["rotating_to"].is_u64() && left > 0 && left < rows {
            eprintln!("{}", tried.join("\n"));
            pending = Some(status);
            break;
        }
    }
    let pending = pending.ok_or_else(|| {
        format!(
            "no rotation was killed while re-sealing:\n{}",
            tried.join("\n")
        )
    })?;
    let to = pending["rotating_to"].as_u64().ok_or("rotating_to")?;
    let human = stack.cp.ok(&["secrets", "status"])?;
    assert!(
        human.stdout.contains(&format!("rotation:        to v{to}")),
        "status shows the rotation pending: {}",
        human.stdout
    );
    assert!(
        key_versions(&key_file)?.len() >= 2,
        "both keys stay on disk"
    );

    // The server keeps building snapshots (some rows now sealed under a key it never held) and
    // Envoy keeps serving each account's real token.
    stack.cp.cli_json(&[
        "pool",
        "set-routing",
        POOL,
        "--strategy",
        "round_robin",
        "--max-attempts",
        "2",
    ])?;
    until_acked(&stack, revision(&stack)?).await?;
    every_token_reaches_the_upstream(&stack, &tokens, "rotation pending").await?;

    // A re-run finishes it: one key version on disk, the new one.
    let done = stack.cp.cli_json(&["secrets", "rotate-master-key"])?;
    assert_eq!(done["to_version"].as_u64(), Some(to), "{done}");
    assert_eq!(done["old_keys_removed"], true, "{done}");
    let status = stack.cp.cli_json(&["secrets", "status"])?;
    assert_eq!(status["rotating_to"], Value::Null, "{status}");
    assert_eq!(status["current_version"].as_u64(), Some(to), "{status}");
    assert_eq!(status["keyring_versions"], json!([to]), "{status}");
    assert_eq!(key_versions(&key_file)?, vec![format!("v{to}")]);
    let old_key = first
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("empty key file")?;
    let old_key = old_key.split_once(':').map_or(old_key, |(_, k)| k);
    assert!(
        !std::fs::read_to_string(&key_file)?.contains(old_key),
        "the old key left the file"
    );
    every_token_reaches_the_upstream(&stack, &tokens, "rotated").await?;

    // A refresh now (sealed under the new key only): its token reaches the upstream.
    let sim_id = stack.account_id(1);
    let refreshed = stack.cp.cli_json(&["account", "refresh", "acct-1"])?;
    assert_eq!(refreshed["refreshed"], true, "{refreshed}");
    let now = stack.sim.account(&sim_id).await?;
    let new_token = now["access_token"]
        .as_str()
        .ok_or_else(|| format!("no token in {now}"))?
        .to_owned();
    assert_ne!(new_token, tokens[1], "the refresh issued a new token");
    assert_eq!(now["refresh_successes"].as_u64(), Some(1), "{now}");
    let mut after = tokens.clone();
    after[1] = new_token;
    until_acked(&stack, revision(&stack)?).await?;
    every_token_reaches_the_upstream(&stack, &after, "refreshed").await?;

    let cp_log = stack.cp.proc()?.log_text();
    assert!(
        !cp_log.contains("cannot open the sealed access token"),
        "the server failed to open a token"
    );
    assert_eq!(key_versions(&key_file)?, vec![format!("v{to}")]);
    Ok(())
}
