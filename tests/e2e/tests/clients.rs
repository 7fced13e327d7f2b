//! Real OpenAI SDKs (Python and Node, pinned in tests/clients) on the gateway's `/v1` surface
//! with a pool key: each scenario asserts what the SDK returned and what the simulator received
//! (an account's token and id, never the pool key).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use codexmesh_test_kit::{repo_root, Stack, StackOptions};
use serde_json::Value;

fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

fn node_sdk_installed() -> bool {
    repo_root()
        .join("tests/clients/node_modules/openai/package.json")
        .exists()
}

/// Runs one scenario of a client script (bounded at 60 s); returns its JSON answer.
async fn run_client(stack: &Stack, program: PathBuf, script: &str, scenario: &str) -> Value {
    let script = repo_root().join("tests/clients").join(script);
    let mut cmd = Command::new(&program);
    cmd.arg(&script)
        .arg(scenario)
        .env("OPENAI_BASE_URL", stack.envoy.url("/v1"))
        .env("OPENAI_API_KEY", &stack.key)
        .env_remove("OPENAI_ORG_ID")
        .env_remove("OPENAI_PROJECT_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = match tokio::time::timeout(Duration::from_secs(60), waiter).await {
        Ok(done) => done.unwrap().unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{scenario}: the client did not finish in 60 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{scenario} failed: {stderr}\n{stdout}\nenvoy log:\n{}",
        codexmesh_test_kit::tail(&stack.envoy.proc.log_text())
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"))
}

async fn py(stack: &Stack, scenario: &str) -> Value {
    run_client(stack, python(), "py_client.py", scenario).await
}

/// Every turn the simulator received carried an account's credentials, never the pool key.
async fn assert_upstream_saw_accounts_only(stack: &Stack, at_least: usize) {
    let turns = stack.sim.turn_requests().await.unwrap();
    assert!(turns.len() >= at_least, "{} turns: {turns:#?}", turns.len());
    let tokens: Vec<String> = (0..stack.accounts.len())
        .map(|i| format!("Bearer {}", stack.access_token(i)))
        .collect();
    for turn in &turns {
        assert!(
            !turn.to_string().contains(&stack.key),
            "pool key upstream: {turn}"
        );
        let auth = turn["headers"]["authorization"]
            .as_str()
            .unwrap_or_default();
        assert!(
            tokens.iter().any(|t| t == auth),
            "not an account token: {auth}"
        );
        assert!(turn["headers"]["chatgpt-account-id"].is_string(), "{turn}");
        assert!(
            turn["path"].as_str().unwrap().ends_with("/codex/responses"),
            "{turn}"
        );
    }
}

async fn stack() -> Stack {
    Stack::start_with(StackOptions::accounts(2).without_quota_polling())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_python_sdk_uses_responses_and_models() {
    let stack = stack().await;
    stack.sim.clear_requests().await.unwrap();
    let models = py(&stack, "models").await;
    let ids = models["ids"].as_array().unwrap();
    assert!(!ids.is_empty(), "{models}");
    assert_eq!(models["retrieved"], ids[0]);

    let created = py(&stack, "responses_create").await;
    assert_eq!(created["status"], "completed", "{created}");
    assert!(
        created["text"].as_str().unwrap().contains("simulator"),
        "{created}"
    );
    assert!(created["usage"].as_u64().unwrap() > 0);

    let streamed = py(&stack, "responses_stream").await;
    let types: Vec<&str> = streamed["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types.first(), Some(&"response.created"), "{types:?}");
    assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");
    assert!(!streamed["text"].as_str().unwrap().is_empty());

    let helper = py(&stack, "responses_stream_helper").await;
    assert_eq!(helper["status"], "completed");
    assert!(helper["deltas"].as_u64().unwrap() > 0);
    assert_eq!(helper["text"], streamed["text"]);
    assert_upstream_saw_accounts_only(&stack, 3).await;
}

#[tokio::test]
async fn the_python_sdk_uses_chat_completions_with_streaming_and_tools() {
    let stack = stack().await;
    stack.sim.clear_requests().await.unwrap();
    let chat = py(&stack, "chat").await;
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["finish_reason"], "stop");
    assert!(
        chat["text"].as_str().unwrap().contains("simulator"),
        "{chat}"
    );
    assert!(chat["total_tokens"].as_u64().unwrap() > 0);
    // The system message became the upstream's instructions.
    let turn = stack.sim.turn_requests().await.unwrap().pop().unwrap();
    assert!(!turn.to_string().contains(&stack.key));

    let streamed = py(&stack, "chat_stream").await;
    assert_eq!(streamed["text"], chat["text"]);
    assert_eq!(streamed["finish_reason"], "stop");
    assert!(streamed["total_tokens"].as_u64().unwrap() > 0, "{streamed}");
    assert!(streamed["chunks"].as_u64().unwrap() > 2);

    let tools = py(&stack, "chat_tools").await;
    assert_eq!(tools["finish_reason"], "tool_calls", "{tools}");
    assert_eq!(tools["calls"][0]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(tools["calls"][0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["city"], "Paris");
    assert_eq!(tools["second_finish_reason"], "stop");
    assert!(
        tools["second_text"]
            .as_str()
            .unwrap()
            .contains("Sunny, 21 C"),
        "the tool result reached the model: {tools}"
    );

    let streamed_tools = py(&stack, "chat_tools_stream").await;
    assert_eq!(streamed_tools["names"][0], "get_weather");
    assert_eq!(streamed_tools["finish_reason"], "tool_calls");
    let args: Value = serde_json::from_str(streamed_tools["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["city"], "Paris");

    let refused = py(&stack, "bad_request").await;
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["param"], "n");
    assert_upstream_saw_accounts_only(&stack, 5).await;
}

#[tokio::test]
async fn the_python_async_client_and_the_node_sdk_work() {
    let stack = stack().await;
    let answer = py(&stack, "async_client").await;
    for field in ["chat", "responses", "stream"] {
        assert!(
            answer[field].as_str().unwrap().contains("simulator"),
            "{field}: {answer}"
        );
    }
    if !node_sdk_installed() {
        eprintln!("SKIPPED: the Node OpenAI SDK is not installed (scripts/setup.sh --test)");
        return;
    }
    let node = PathBuf::from("node");
    let responses = run_client(&stack, node.clone(), "node_client.mjs", "responses").await;
    assert_eq!(responses["status"], "completed");
    assert_eq!(responses["text"], responses["streamed"], "{responses}");
    let chat = run_client(&stack, node, "node_client.mjs", "chat").await;
    assert_eq!(chat["finish_reason"], "stop");
    assert_eq!(chat["stream_finish_reason"], "stop");
    assert_eq!(chat["text"], chat["streamed"], "{chat}");
    assert_upstream_saw_accounts_only(&stack, 7).await;
}
