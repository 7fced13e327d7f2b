//! The real Codex CLI (npm `@openai/codex`, pinned in tests/codex-cli) talking to the gateway with
//! a pool key, as a developer would configure it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codexmesh_e2e::{repo_root, Stack, StackOptions, POOL};
use serde_json::json;

const REPLY: &str = "codexmesh e2e reply: the pool answered";

/// A throwaway CODEX_HOME whose config points the CLI at the gateway with the pool key as
/// `env_key`, the way README tells a developer to.
fn codex_home(stack: &Stack, websockets: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let home = stack.dir.path().join("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    let config = format!(
        r#"model_provider = "codexmesh"
model = "gpt-5.1-codex"
check_for_update_on_startup = false

[model_providers.codexmesh]
name = "OpenAI"
base_url = "{base}/backend-api/codex"
env_key = "CODEXMESH_API_KEY"
wire_api = "responses"
supports_websockets = {websockets}

[features]
plugins = false
remote_plugin = false
apps = false

[analytics]
enabled = false

[feedback]
enabled = false
"#,
        base = stack.envoy.url(""),
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    let workdir = stack.dir.path().join("codex-work");
    std::fs::create_dir_all(&workdir).unwrap();
    (home, workdir)
}

/// Runs `codex exec PROMPT` to completion (bounded at 90 s); returns (success, stdout, stderr).
async fn codex_exec(stack: &Stack, prompt: &str) -> (bool, String, String) {
    codex_exec_with(stack, prompt, false).await
}

async fn codex_exec_with(stack: &Stack, prompt: &str, websockets: bool) -> (bool, String, String) {
    let codex = repo_root().join("tests/codex-cli/node_modules/.bin/codex");
    assert!(
        codex.exists(),
        "Codex CLI missing at {}: scripts/setup.sh --test installs it",
        codex.display()
    );
    let (home, workdir) = codex_home(stack, websockets);
    let child = Command::new(&codex)
        .args(["exec", "--skip-git-repo-check", "--color", "never", prompt])
        .current_dir(&workdir)
        .env("CODEX_HOME", &home)
        .env("CODEXMESH_API_KEY", &stack.key)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(Duration::from_secs(90), waiter).await {
        Ok(done) => done.unwrap().unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("codex exec did not finish within 90 s");
        }
    };
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_gets_its_answer_through_the_gateway() {
    let stack = Stack::start(2).await.unwrap();
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let started = Instant::now();
    let (ok, stdout, stderr) = codex_exec(&stack, "say hi").await;
    assert!(
        ok,
        "codex exec failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(REPLY),
        "answer missing from codex output:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    // It went through the pool: an imported account served it, with the gateway's credentials.
    let turns = stack.sim.turn_requests().await.unwrap();
    assert!(
        !turns.is_empty(),
        "the CLI's turn never reached the upstream"
    );
    let served_by = turns[0]["account_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        served_by == stack.account_id(0) || served_by == stack.account_id(1),
        "served by {served_by}"
    );
    assert_eq!(turns[0]["headers"]["originator"], "codex_exec");
    let recorded = serde_json::to_string(&turns).unwrap();
    assert!(!recorded.contains(&stack.key), "pool key leaked upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_that_tries_websockets_falls_back_to_sse_at_once() {
    let stack = Stack::start(1).await.unwrap();
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    let started = Instant::now();
    let (ok, stdout, stderr) = codex_exec_with(&stack, "say hi", true).await;
    assert!(
        ok && stdout.contains(REPLY),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The 426 is taken at once: no multi-second upgrade retries.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_cli_completes_twenty_turns_while_accounts_exhaust_one_after_another() {
    // 7 + 7 + 10 turns for the harness's warm-up plus 20 CLI turns; priority order spends the
    // accounts one after another, so two of them run dry mid-run.
    let stack = Stack::start_with(StackOptions {
        accounts: vec![
            json!({"primary_limit": 7}),
            json!({"primary_limit": 7}),
            json!({"primary_limit": 10}),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack
        .cp
        .cli_json(&["pool", "set-routing", POOL, "--strategy", "priority_order"])
        .unwrap();
    for (label, priority) in [("acct-0", "0"), ("acct-1", "1"), ("acct-2", "2")] {
        stack
            .cp
            .cli_json(&["account", "set", label, "--priority", priority])
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    for turn in 1..=20 {
        let (ok, stdout, stderr) = codex_exec(&stack, &format!("turn {turn}")).await;
        assert!(
            ok && stdout.contains(REPLY),
            "turn {turn} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    let turns = stack.sim.turn_requests().await.unwrap();
    let order: Vec<usize> = turns
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| {
            (0..3)
                .find(|i| r["account_id"] == stack.account_id(*i).as_str())
                .expect("served by a pool account")
        })
        .collect();
    assert_eq!(order.len(), 20);
    // One after another: never back to an account that ran dry.
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    assert_eq!((order[0], order[19]), (0, 2), "{order:?}");
    // Accounts 0 and 1 were spent to their last turn before the next took over: either the
    // quota evidence took them out first, or their 429 failed over invisibly.
    for i in 0..2 {
        let acct = stack.sim.account(&stack.account_id(i)).await.unwrap();
        assert_eq!(
            acct["primary"]["used"], acct["primary"]["limit"],
            "account {i}: {acct}"
        );
    }
}
