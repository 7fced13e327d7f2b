//! The real Codex CLI (npm `@openai/codex`, pinned in tests/codex-cli) talking to the gateway with
//! a pool key, as a developer would configure it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use codexmesh_e2e::{repo_root, Stack};
use serde_json::json;

const REPLY: &str = "codexmesh e2e reply: the pool answered";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_gets_its_answer_through_the_gateway() {
    let codex = repo_root().join("tests/codex-cli/node_modules/.bin/codex");
    assert!(
        codex.exists(),
        "Codex CLI missing at {}: scripts/setup.sh --test installs it",
        codex.display()
    );
    let stack = Stack::start(2).await.unwrap();
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();

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
supports_websockets = false

[features]
plugins = false
remote_plugin = false
apps = false

[analytics]
enabled = false

[feedback]
enabled = false
"#,
        base = stack.envoy.url("")
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    let workdir = stack.dir.path().join("codex-work");
    std::fs::create_dir_all(&workdir).unwrap();

    let started = Instant::now();
    let child = Command::new(&codex)
        .args([
            "exec",
            "--skip-git-repo-check",
            "--color",
            "never",
            "say hi",
        ])
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
    // Bounded: the CLI must finish well within a minute against a local stack.
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(Duration::from_secs(90), waiter).await {
        Ok(done) => done.unwrap().unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("codex exec did not finish within 90 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "codex exec failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
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
