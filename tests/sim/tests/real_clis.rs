//! The real Claude Code and Gemini CLI against the simulator directly (no gateway): each
//! completes a prompt and exits 0, and the simulator saw the account's credential.
//!
//! The pinned CLIs live in `tests/agent-clis/node_modules` (installed by the project's setup;
//! `AGENT_CLIS_DIR` names another `agent-clis` folder). Without them the tests say so and pass.
//! The CLIs run with a fresh `HOME`, their non-essential traffic, telemetry and updates off, so
//! they only talk to the simulator on 127.0.0.1.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use codexmesh_sim::{start, RunningSim};
use serde_json::{json, Value};

const REPLY: &str = "pong from the simulator";

fn clis_dir() -> PathBuf {
    std::env::var_os("AGENT_CLIS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-clis"))
}

/// The CLI at `rel` under the agent-clis folder, or `None` (and a note) when not installed.
fn cli(rel: &str) -> Option<PathBuf> {
    let p = clis_dir().join("node_modules").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: {} is not installed", p.display());
        None
    }
}

/// Run `cmd` to completion within `limit` (killed by its PID past it).
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "timed out after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn sim_with_reply() -> (RunningSim, reqwest::Client) {
    let sim = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/__sim/behavior", sim.base_url()))
        .json(&json!({"reply_text": REPLY}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    (sim, http)
}

async fn create(sim: &RunningSim, http: &reqwest::Client, spec: Value) -> Value {
    let r = http
        .post(format!("{}/__sim/accounts", sim.base_url()))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    r.json().await.unwrap()
}

async fn requests(sim: &RunningSim, http: &reqwest::Client) -> Vec<Value> {
    http.get(format!("{}/__sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn claude_cmd(bin: &Path, home: &Path, base: &str, env: (&str, &str)) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-p", "Reply with pong"])
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ANTHROPIC_BASE_URL", base)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env(env.0, env.1);
    cmd
}

fn temp_home(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sim-real-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_completes_with_an_api_key_and_with_an_oauth_token() {
    let Some(bin) = cli("@anthropic-ai/claude-code-linux-x64/claude") else {
        return;
    };
    let (sim, http) = sim_with_reply().await;
    let key = create(
        &sim,
        &http,
        json!({"account_id": "key", "provider": "claude", "credential": "api_key"}),
    )
    .await;
    let oauth = create(
        &sim,
        &http,
        json!({"account_id": "sub", "provider": "claude"}),
    )
    .await;
    let base = sim.base_url();
    for (account, env) in [
        (
            "key",
            (
                "ANTHROPIC_API_KEY",
                key["api_key"].as_str().unwrap().to_string(),
            ),
        ),
        (
            "sub",
            (
                "CLAUDE_CODE_OAUTH_TOKEN",
                oauth["access_token"].as_str().unwrap().to_string(),
            ),
        ),
    ] {
        let home = temp_home(account);
        let cmd = claude_cmd(&bin, &home, &base, (env.0, &env.1));
        let out = tokio::task::spawn_blocking(move || run(cmd, Duration::from_secs(120)))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{account}: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(REPLY), "{account}: {stdout}");
        let _ = std::fs::remove_dir_all(&home);
    }
    let log = requests(&sim, &http).await;
    let turns: Vec<&Value> = log.iter().filter(|r| r["path"] == "/v1/messages").collect();
    assert!(turns.iter().all(|r| r["status"] == 200), "{turns:?}");
    let by_key = turns.iter().find(|r| r["account_id"] == "key").unwrap();
    assert_eq!(by_key["headers"]["x-api-key"], key["api_key"]);
    assert_eq!(by_key["stream"], true);
    assert!(by_key["session_id"].is_string());
    assert_eq!(
        by_key["session_id"],
        by_key["headers"]["x-claude-code-session-id"]
    );
    let by_oauth = turns.iter().find(|r| r["account_id"] == "sub").unwrap();
    assert_eq!(
        by_oauth["headers"]["authorization"],
        format!("Bearer {}", oauth["access_token"].as_str().unwrap())
    );
    assert!(by_oauth["headers"]["anthropic-beta"]
        .as_str()
        .unwrap()
        .contains("oauth-2025-04-20"));
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_completes_in_code_assist_mode() {
    let Some(bin) = cli(".bin/gemini") else {
        return;
    };
    let (sim, http) = sim_with_reply().await;
    let acc = create(
        &sim,
        &http,
        json!({"account_id": "gem", "provider": "gemini", "project_id": "proj-gem"}),
    )
    .await;
    let home = temp_home("gemini");
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::write(
        home.join(".gemini/settings.json"),
        json!({
            "security": {"auth": {"selectedType": "oauth-personal"}},
            "privacy": {"usageStatisticsEnabled": false},
            "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false},
            "telemetry": {"enabled": false},
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["-p", "Reply with pong"])
        .current_dir(&home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("GOOGLE_GENAI_USE_GCA", "true")
        .env(
            "GOOGLE_CLOUD_ACCESS_TOKEN",
            acc["access_token"].as_str().unwrap(),
        )
        .env("GOOGLE_CLOUD_PROJECT", "proj-gem")
        .env("CODE_ASSIST_ENDPOINT", sim.base_url())
        .env("GEMINI_CLI_TRUST_WORKSPACE", "true")
        .env("GEMINI_CLI_NO_RELAUNCH", "true");
    let out = tokio::task::spawn_blocking(move || run(cmd, Duration::from_secs(180)))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(REPLY), "{stdout}");
    let _ = std::fs::remove_dir_all(&home);
    let log = requests(&sim, &http).await;
    let paths: Vec<&str> = log.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(paths.contains(&"/v1internal:loadCodeAssist"), "{paths:?}");
    // The model router's classifier got JSON on the first try (no retries).
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == "/v1internal:generateContent")
            .count(),
        1,
        "{paths:?}"
    );
    let stream = log
        .iter()
        .find(|r| r["path"] == "/v1internal:streamGenerateContent")
        .unwrap();
    assert_eq!(stream["query"], "alt=sse");
    assert_eq!(stream["status"], 200);
    assert_eq!(stream["project"], "proj-gem");
    assert!(stream["session_id"].is_string());
    assert!(
        log.iter().all(|r| r["account_id"] == "gem"),
        "every call carried the account's token"
    );
    sim.shutdown().await.unwrap();
}
