//! The real Claude Code (2.1.332) and Gemini CLI (0.61.0), pinned in tests/agent-clis, through
//! Envoy with the wasm filter and `codexmesh serve`, against the simulator standing in for
//! Anthropic and Google: configured the way the README tells a developer (the pool key is their
//! only credential), kept off the internet by their own settings ([`codexmesh_test_kit::agent_clis`]).
//!
//! What each test shows: a prompt completes; the simulator saw the account's own credential (and
//! for Gemini the account's own project) and never the pool key; a session continues on its
//! account across turns; a 429 on that account fails over to another before the CLI sees
//! anything. The pool also holds a Codex account, which no Claude or Gemini request may reach.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use codexmesh_test_kit::agent_clis::{ClaudeCode, ClaudeKeyHeader, GeminiCli};
use codexmesh_test_kit::{Stack, StackOptions, POOL};
use serde_json::{json, Value};

type TestResult = Result<()>;

/// A Claude or Gemini account of the simulator, imported into the pool from the file its CLI
/// would have written.
struct Imported {
    sim_id: String,
    access_token: String,
    project_id: Option<String>,
    reply: String,
}

/// The stack: pool `team` with one Codex account (so the pool is mixed), plus `claude` Claude
/// subscription accounts and `gemini` Gemini accounts imported with `codexmesh account import`.
async fn mixed_stack(
    claude: usize,
    gemini: usize,
) -> Result<(Stack, Vec<Imported>, Vec<Imported>)> {
    let stack = Stack::start_with(StackOptions::accounts(1)).await?;
    let mut claudes = Vec::new();
    for i in 0..claude {
        let reply = format!("claude account {i} answered");
        let a = stack
            .sim
            .create_claude_account(json!({ "reply_text": reply }))
            .await?;
        claudes.push(import(&stack, &a, &format!("claude-{i}"), reply, "claude").await?);
    }
    let mut geminis = Vec::new();
    for i in 0..gemini {
        let reply = format!("gemini account {i} answered");
        let a = stack
            .sim
            .create_gemini_account(json!({ "reply_text": reply }))
            .await?;
        geminis.push(import(&stack, &a, &format!("gemini-{i}"), reply, "gemini").await?);
    }
    Ok((stack, claudes, geminis))
}

async fn import(
    stack: &Stack,
    account: &Value,
    label: &str,
    reply: String,
    provider: &str,
) -> Result<Imported> {
    let sim_id = str_field(account, "account_id")?;
    let path = stack.dir.path().join(format!("{provider}_{label}.json"));
    stack.sim.write_credentials_file(&sim_id, &path).await?;
    let path_text = path.display().to_string();
    let mut args = vec![
        "account",
        "import",
        path_text.as_str(),
        "--pool",
        POOL,
        "--label",
        label,
    ];
    let project_id = account["project_id"].as_str().map(str::to_owned);
    if let Some(p) = &project_id {
        args.extend(["--project", p.as_str()]);
    }
    stack.cp.cli_json(&args)?;
    Ok(Imported {
        sim_id,
        access_token: str_field(account, "access_token")?,
        project_id,
        reply,
    })
}

fn str_field(v: &Value, name: &str) -> Result<String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {name} in {v}"))
}

/// Waits (bounded) until the newest snapshot carries the imported accounts: a direct request of
/// the provider's own kind answers 200 through Envoy.
async fn wait_for_provider(
    stack: &Stack,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut req = stack.http.post(stack.envoy.url(path)).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send().await {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{path} did not answer 200 within 20 s; last: {last}")
}

/// No header of any request the simulator logged carries the pool key.
async fn assert_pool_key_never_upstream(stack: &Stack) -> TestResult {
    for r in stack.sim.requests().await? {
        let headers = r["headers"].as_object().cloned().unwrap_or_default();
        for (name, value) in headers {
            let value = value.as_str().unwrap_or_default();
            assert!(
                !value.contains(&stack.key),
                "the pool key reached the simulator in {name} of {} {}",
                r["method"],
                r["path"]
            );
        }
    }
    Ok(())
}

/// The requests that came through the gateway on paths containing `path` since the log was
/// cleared, oldest first.
async fn upstream(stack: &Stack, path: &str) -> Result<Vec<Value>> {
    stack.sim.gateway_requests_to(path).await
}

fn account_of(r: &Value) -> String {
    r["account_id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_prompts_through_the_gateway_keep_their_account_and_fail_over() -> TestResult {
    let (stack, claudes, _) = mixed_stack(2, 0).await?;
    wait_for_provider(
        &stack,
        "/v1/messages?beta=true",
        &[
            ("x-api-key", &stack.key),
            ("anthropic-version", "2023-06-01"),
        ],
        json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
               "messages": [{"role": "user", "content": "ready?"}]}),
    )
    .await?;
    stack.sim.clear_requests().await?;

    let user = ClaudeCode::new(
        stack.dir.path(),
        &stack.envoy.url(""),
        &stack.key,
        ClaudeKeyHeader::XApiKey,
    )?;
    let session = "3f1d8a52-7c4e-4b1a-9d2e-6a5b4c3d2e1f";

    // Turn 1: a prompt completes, on one Claude account, with that account's credential.
    let first = user
        .prompt("Reply with pong", &["--session-id", session])
        .await?
        .ok()?;
    let turns = upstream(&stack, "/v1/messages").await?;
    assert_eq!(turns.len(), 1, "one upstream request per prompt: {turns:?}");
    let pinned = account_of(&turns[0]);
    let served = claudes
        .iter()
        .find(|a| a.sim_id == pinned)
        .ok_or_else(|| anyhow!("the turn reached {pinned}, not a Claude account"))?;
    assert!(
        first.stdout.contains(&served.reply),
        "stdout: {}",
        first.stdout
    );
    let headers = &turns[0]["headers"];
    assert_eq!(
        headers["authorization"].as_str(),
        Some(format!("Bearer {}", served.access_token).as_str()),
        "the subscription token goes as a bearer"
    );
    assert!(
        headers.get("x-api-key").is_none(),
        "x-api-key is removed: {headers}"
    );
    let beta = headers["anthropic-beta"].as_str().unwrap_or_default();
    assert!(beta.contains("oauth-2025-04-20"), "anthropic-beta: {beta}");
    assert!(
        beta.contains("claude-code-20250219"),
        "the client's betas pass: {beta}"
    );
    assert_eq!(turns[0]["session_id"].as_str(), Some(session));

    // Turn 2 resumes the session: the same account answers.
    user.prompt("And once more", &["--resume", session])
        .await?
        .ok()?;
    let turns = upstream(&stack, "/v1/messages").await?;
    assert_eq!(turns.len(), 2);
    assert_eq!(
        account_of(&turns[1]),
        pinned,
        "the session stays on its account"
    );

    // Turn 3: that account answers 429; the gateway retries on the other before the CLI sees it.
    stack
        .sim
        .behavior(json!({"fail_next": [{
            "status": 429, "account_id": pinned, "path_contains": "/v1/messages",
            "headers": {"retry-after": "120"}
        }]}))
        .await?;
    let third = user
        .prompt("Third turn", &["--resume", session])
        .await?
        .ok()?;
    let turns = upstream(&stack, "/v1/messages").await?;
    assert_eq!(turns.len(), 4, "the 429 and its failover: {turns:?}");
    assert_eq!(account_of(&turns[2]), pinned);
    assert_eq!(turns[2]["status"], 429);
    let other = account_of(&turns[3]);
    assert_ne!(other, pinned, "the failover went to the other account");
    assert_eq!(turns[3]["status"], 200);
    let other_reply = &claudes
        .iter()
        .find(|a| a.sim_id == other)
        .ok_or_else(|| anyhow!("failover reached {other}, not a Claude account"))?
        .reply;
    assert!(
        third.stdout.contains(other_reply.as_str()),
        "stdout: {}",
        third.stdout
    );

    // The pool key as a bearer token (ANTHROPIC_AUTH_TOKEN) works the same way.
    let bearer_user = ClaudeCode::new(
        &stack.dir.path().join("bearer"),
        &stack.envoy.url(""),
        &stack.key,
        ClaudeKeyHeader::Bearer,
    )?;
    bearer_user.prompt("Reply with pong", &[]).await?.ok()?;

    // Nothing of this reached the Codex account, and the pool key never left the gateway.
    let codex_account = stack.account_id(0);
    for r in stack.sim.gateway_requests().await? {
        assert_ne!(
            account_of(&r),
            codex_account,
            "a Claude request reached the Codex account: {r}"
        );
    }
    assert_pool_key_never_upstream(&stack).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_cli_prompts_through_the_gateway_keep_their_account_and_fail_over() -> TestResult {
    let (stack, _, geminis) = mixed_stack(0, 2).await?;
    let bearer = format!("Bearer {}", stack.key);
    wait_for_provider(
        &stack,
        "/v1internal:countTokens",
        &[("authorization", &bearer)],
        json!({"request": {"model": "models/gemini-2.5-pro",
                           "contents": [{"role": "user", "parts": [{"text": "ready?"}]}]}}),
    )
    .await?;
    stack.sim.clear_requests().await?;

    let user = GeminiCli::new(stack.dir.path(), &stack.envoy.url(""), &stack.key)?;

    // Turn 1: the start-up calls are answered by the gateway; the turn reaches one Gemini
    // account with its token and its own project.
    let first = user.prompt("Reply with pong", &[]).await?.ok()?;
    let streams = upstream(&stack, ":streamGenerateContent").await?;
    assert_eq!(streams.len(), 1, "one streamed turn: {streams:?}");
    let pinned = account_of(&streams[0]);
    let served = geminis
        .iter()
        .find(|a| a.sim_id == pinned)
        .ok_or_else(|| anyhow!("the turn reached {pinned}, not a Gemini account"))?;
    assert!(
        first.stdout.contains(&served.reply),
        "stdout: {}",
        first.stdout
    );
    for r in upstream(&stack, "/v1internal:").await? {
        assert_eq!(
            account_of(&r),
            pinned,
            "every call of the session on one account: {r}"
        );
        assert_eq!(
            r["headers"]["authorization"].as_str(),
            Some(format!("Bearer {}", served.access_token).as_str())
        );
        let path = r["path"].as_str().unwrap_or_default();
        if path.contains("enerateContent") {
            assert_eq!(r["project"].as_str(), served.project_id.as_deref(), "{r}");
        }
    }
    for startup in [":loadCodeAssist", ":retrieveUserQuota", ":listExperiments"] {
        assert!(
            upstream(&stack, startup).await?.is_empty(),
            "{startup} is answered by the gateway, never by an account"
        );
    }
    let session = streams[0]["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!session.is_empty(), "Gemini CLI sends request.session_id");

    // Turn 2 resumes the session: the same account answers.
    user.prompt("And once more", &["--resume", "latest"])
        .await?
        .ok()?;
    let streams = upstream(&stack, ":streamGenerateContent").await?;
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[1]["session_id"].as_str(), Some(session.as_str()));
    assert_eq!(
        account_of(&streams[1]),
        pinned,
        "the session stays on its account"
    );

    // Turn 3: that account's daily quota answers 429 RESOURCE_EXHAUSTED; the gateway moves the
    // turn to the other account before the CLI sees anything.
    stack
        .sim
        .behavior(json!({"fail_next": [{
            "status": 429, "account_id": pinned, "path_contains": ":streamGenerateContent"
        }]}))
        .await?;
    let third = user
        .prompt("Third turn", &["--resume", "latest"])
        .await?
        .ok()?;
    let streams = upstream(&stack, ":streamGenerateContent").await?;
    assert_eq!(streams.len(), 4, "the 429 and its failover: {streams:?}");
    assert_eq!(account_of(&streams[2]), pinned);
    assert_eq!(streams[2]["status"], 429);
    let other = account_of(&streams[3]);
    assert_ne!(other, pinned);
    assert_eq!(streams[3]["status"], 200);
    let other_account = geminis
        .iter()
        .find(|a| a.sim_id == other)
        .ok_or_else(|| anyhow!("failover reached {other}, not a Gemini account"))?;
    assert_eq!(
        streams[3]["project"].as_str(),
        other_account.project_id.as_deref(),
        "the retried attempt carries the new account's project"
    );
    assert!(
        third.stdout.contains(other_account.reply.as_str()),
        "stdout: {}",
        third.stdout
    );

    let codex_account = stack.account_id(0);
    for r in stack.sim.gateway_requests().await? {
        assert_ne!(
            account_of(&r),
            codex_account,
            "a Gemini request reached the Codex account: {r}"
        );
    }
    assert_pool_key_never_upstream(&stack).await
}
