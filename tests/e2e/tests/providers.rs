//! Claude and Gemini on the same listener as Codex, end to end: real Envoy, the built wasm
//! module, `codexmesh serve` and the simulator (which plays Anthropic and Google Code Assist),
//! with raw HTTP as Claude Code (`ANTHROPIC_BASE_URL`) and Gemini CLI (`CODE_ASSIST_ENDPOINT`)
//! send it.
//!
//! What holds here: each request reaches only an account of its route's provider, with that
//! account's credential (never the pool key); Claude's query, `anthropic-version` and betas pass
//! (plus the OAuth betas for an OAuth account); a Gemini generate call carries the serving
//! account's project, also after a failover; Gemini CLI's start-up calls never leave the gateway;
//! a session stays on its account; a 429 fails over invisibly; a spent pool answers in the
//! provider's own error shape; a Claude or Gemini stream cut or failed after its 200 is logged
//! as the account's failure, not a success.

use std::path::Path;
use std::time::Duration;

use codexmesh_test_kit::{import_account, wait, Artifacts, ControlPlane, CpEnv, Envoy, Sim, POOL};
use serde_json::{json, Value};

/// An account of the test's pool.
#[derive(Clone, Copy)]
enum Acct<'a> {
    Codex(&'a str),
    ClaudeOauth(&'a str),
    ClaudeApiKey(&'a str),
    /// Gemini account with its Code Assist project.
    Gemini(&'a str, &'a str),
}

struct Mesh {
    /// The test's directory (a `TempDir`), removed when the test ends.
    _dir: Box<dyn std::any::Any + Send>,
    sim: Sim,
    /// Kept running for the test's length.
    _cp: ControlPlane,
    envoy: Envoy,
    key: String,
    http: reqwest::Client,
    /// The simulator's answer for each account, by id.
    accounts: Vec<(String, Value)>,
}

/// Imports one account: Codex from its auth.json, Claude and Gemini from the file their CLI
/// writes (`codexmesh account import` detects the provider from the content).
async fn add(sim: &Sim, cp: &ControlPlane, dir: &Path, acct: Acct<'_>) -> (String, Value) {
    let (id, created) = match acct {
        Acct::Codex(id) => {
            let created = import_account(sim, cp, dir, POOL, id, json!({"account_id": id}))
                .await
                .unwrap();
            return (id.to_string(), created);
        }
        Acct::ClaudeOauth(id) => (
            id,
            sim.create_claude_account(json!({"account_id": id}))
                .await
                .unwrap(),
        ),
        Acct::ClaudeApiKey(id) => (
            id,
            sim.create_claude_api_key_account(json!({"account_id": id}))
                .await
                .unwrap(),
        ),
        Acct::Gemini(id, project) => (
            id,
            sim.create_gemini_account(json!({"account_id": id, "project_id": project}))
                .await
                .unwrap(),
        ),
    };
    let path = dir.join(format!("{id}.credentials.json"));
    sim.write_credentials_file(id, &path).await.unwrap();
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["account", "import", &path, "--pool", POOL, "--label", id];
    if let Acct::Gemini(_, project) = acct {
        args.extend(["--project", project]);
    }
    cp.cli_json(&args).unwrap();
    (id.to_string(), created)
}

impl Mesh {
    async fn start(accounts: &[Acct<'_>]) -> Self {
        let dir = codexmesh_test_kit::test_dir("codexmesh-e2e-providers-").unwrap();
        let art = Artifacts::locate().unwrap();
        let sim = Sim::spawn(&art, dir.path()).unwrap();
        let env = CpEnv::new(dir.path(), &sim, &art, Vec::new());
        let mut cp = ControlPlane::new(&art, env, dir.path());
        cp.cli_json(&["pool", "create", POOL]).unwrap();
        let mut created = Vec::new();
        for acct in accounts {
            created.push(add(&sim, &cp, dir.path(), *acct).await);
        }
        let key = cp.cli_json(&["key", "create", "--pool", POOL]).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let grpc = cp.start().unwrap();
        let push = cp.env.push_token.clone();
        let envoy = Envoy::start(&art, &cp, grpc, &push, dir.path(), "envoy")
            .await
            .unwrap();
        let mesh = Self {
            _dir: Box::new(dir),
            sim,
            _cp: cp,
            envoy,
            key,
            http: reqwest::Client::new(),
            accounts: created,
        };
        // Serving once the snapshot is in: any gateway answer other than "not ready".
        wait::until_async(
            Duration::from_secs(20),
            Duration::from_millis(50),
            "the gateway to have its routing table",
            || async {
                let resp = mesh.gemini("loadCodeAssist", &json!({})).await?;
                Ok(if resp.status() == 200 {
                    wait::Probe::Ready(())
                } else {
                    wait::Probe::NotYet(format!("{}", resp.status()))
                })
            },
        )
        .await
        .unwrap();
        mesh
    }

    fn created(&self, id: &str) -> &Value {
        &self
            .accounts
            .iter()
            .find(|(i, _)| i == id)
            .unwrap_or_else(|| panic!("no account {id}"))
            .1
    }

    /// A Claude Code turn: `POST /v1/messages?beta=true`, the pool key as `x-api-key` (or as
    /// a bearer), streaming.
    async fn claude_turn(&self, bearer: bool, session: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.envoy.url("/v1/messages?beta=true"))
            .header("anthropic-version", "2023-06-01")
            .header(
                "anthropic-beta",
                "claude-code-20250219,interleaved-thinking-2025-05-14",
            )
            .header("user-agent", "claude-cli/2.1.332 (external, sdk-cli)")
            .json(&json!({
                "model": "claude-sonnet-5-5",
                "max_tokens": 1024,
                "stream": true,
                "messages": [{"role": "user", "content": "Reply with pong"}],
            }));
        req = if bearer {
            req.bearer_auth(&self.key)
        } else {
            req.header("x-api-key", &self.key)
        };
        if let Some(s) = session {
            req = req.header("x-claude-code-session-id", s);
        }
        req.send().await.unwrap()
    }

    /// A Gemini CLI call: `POST /v1internal:<method>`, the pool key as the bearer.
    async fn gemini(&self, method: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.envoy.url(&format!("/v1internal:{method}")))
            .bearer_auth(&self.key)
            .header(
                "user-agent",
                "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64; terminal)",
            )
            .json(body)
            .send()
            .await
    }

    /// What the simulator saw through the gateway on paths containing `path` (not the control
    /// plane's own usage polls and refreshes, `User-Agent: codexmesh/…`).
    async fn seen(&self, path: &str) -> Vec<Value> {
        self.sim.gateway_requests_to(path).await.unwrap()
    }

    /// Nothing the simulator received carries the pool key.
    async fn assert_pool_key_never_upstream(&self) {
        let all = serde_json::to_string(&self.sim.requests().await.unwrap()).unwrap();
        assert!(
            !all.contains(&self.key),
            "the pool key reached the upstream"
        );
    }

    /// Spends an account's primary window at the simulator (its next turn answers 429).
    async fn spend(&self, id: &str) {
        self.sim
            .patch_account(id, json!({"primary_limit": 10, "primary_used": 10}))
            .await
            .unwrap();
    }
}

fn generate_body(session: &str) -> Value {
    json!({
        "model": "gemini-2.5-pro",
        // What Gemini CLI sends: the project the gateway named in loadCodeAssist.
        "project": "codexmesh-pool",
        "user_prompt_id": format!("{session}########0"),
        "request": {
            "contents": [{"role": "user", "parts": [{"text": "Reply with pong"}]}],
            "session_id": session,
        },
    })
}

fn header<'a>(req: &'a Value, name: &str) -> Option<&'a str> {
    req["headers"][name].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_streams_with_the_accounts_oauth_token_whichever_way_the_key_comes() {
    let mesh = Mesh::start(&[Acct::ClaudeOauth("claude-a")]).await;
    let token = mesh.created("claude-a")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    for bearer in [false, true] {
        mesh.sim.clear_requests().await.unwrap();
        let resp = mesh.claude_turn(bearer, Some("sess-1")).await;
        assert_eq!(resp.status(), 200);
        assert!(resp
            .headers()
            .get("content-type")
            .is_some_and(|ct| ct.to_str().unwrap().contains("text/event-stream")));
        let body = resp.text().await.unwrap();
        assert!(body.contains("event: message_stop"), "{body}");
        let seen = mesh.seen("/v1/messages").await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        let req = &seen[0];
        assert_eq!(req["account_id"], "claude-a");
        assert_eq!(
            header(req, "authorization"),
            Some(format!("Bearer {token}").as_str())
        );
        assert_eq!(header(req, "x-api-key"), None);
        let beta = header(req, "anthropic-beta").unwrap();
        for b in [
            "claude-code-20250219",
            "interleaved-thinking-2025-05-14",
            "oauth-2025-04-20",
            "extended-cache-ttl-2025-04-11",
        ] {
            assert_eq!(beta.split(',').filter(|x| *x == b).count(), 1, "{beta}");
        }
        assert_eq!(header(req, "anthropic-version"), Some("2023-06-01"));
        assert!(header(req, "user-agent")
            .unwrap()
            .starts_with("claude-cli/"));
        assert!(req["query"]
            .as_str()
            .unwrap_or_default()
            .contains("beta=true"));
    }
    mesh.assert_pool_key_never_upstream().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_account_gets_x_api_key_and_count_tokens_and_models_are_claudes() {
    let mesh = Mesh::start(&[Acct::ClaudeApiKey("claude-key")]).await;
    let api_key = mesh.created("claude-key")["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = mesh.claude_turn(true, None).await;
    assert_eq!(resp.status(), 200);
    let seen = mesh.seen("/v1/messages").await;
    let req = seen.last().unwrap();
    assert_eq!(header(req, "x-api-key"), Some(api_key.as_str()));
    assert_eq!(header(req, "authorization"), None);
    // The client's betas pass as sent: an API key needs no OAuth beta.
    assert_eq!(
        header(req, "anthropic-beta"),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );

    let count = mesh
        .http
        .post(mesh.envoy.url("/v1/messages/count_tokens?beta=true"))
        .header("x-api-key", &mesh.key)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(count.status(), 200);
    let count: Value = count.json().await.unwrap();
    assert!(count["input_tokens"].as_u64().is_some(), "{count}");

    let models = mesh
        .http
        .get(mesh.envoy.url("/v1/models"))
        .header("x-api-key", &mesh.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let models: Value = models.json().await.unwrap();
    assert_eq!(models["data"][0]["type"], "model", "{models}");
    assert_eq!(mesh.seen("/v1/models").await.len(), 1);
    mesh.assert_pool_key_never_upstream().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_start_up_is_answered_by_the_gateway_and_turns_carry_the_accounts_project() {
    let mesh = Mesh::start(&[Acct::Gemini("gem-a", "proj-gem-a")]).await;
    mesh.sim.clear_requests().await.unwrap();
    let load: Value = mesh
        .gemini(
            "loadCodeAssist",
            &json!({"metadata": {"ideType": "IDE_UNSPECIFIED", "pluginType": "GEMINI"}}),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(load["currentTier"]["id"], "standard-tier");
    assert_eq!(load["cloudaicompanionProject"], "codexmesh-pool");
    for method in ["retrieveUserQuota", "listExperiments", "retrieveUserQuota"] {
        let resp = mesh
            .gemini(method, &json!({"project": "codexmesh-pool"}))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let body: Value = resp.json().await.unwrap();
        assert!(body.is_object(), "{method}: {body}");
    }
    assert!(
        mesh.seen("/v1internal").await.is_empty(),
        "start-up calls reached the upstream"
    );

    let token = mesh.created("gem-a")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = mesh
        .gemini("generateContent", &generate_body("g-sess"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let stream = mesh
        .http
        .post(mesh.envoy.url("/v1internal:streamGenerateContent?alt=sse"))
        .bearer_auth(&mesh.key)
        .json(&generate_body("g-sess"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let text = stream.text().await.unwrap();
    assert!(text.starts_with("data: "), "{text}");
    let count = mesh
        .gemini(
            "countTokens",
            &json!({"request": {"model": "models/gemini-2.5-pro", "contents": []}}),
        )
        .await
        .unwrap();
    assert_eq!(count.status(), 200);

    let seen = mesh.seen("/v1internal:").await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for req in &seen {
        assert_eq!(req["account_id"], "gem-a");
        assert_eq!(
            header(req, "authorization"),
            Some(format!("Bearer {token}").as_str())
        );
    }
    assert_eq!(seen[0]["project"], "proj-gem-a");
    assert_eq!(seen[1]["project"], "proj-gem-a");
    assert_eq!(seen[1]["query"], "alt=sse");
    assert_eq!(seen[1]["session_id"], "g-sess");
    mesh.assert_pool_key_never_upstream().await;

    // A method the gateway does not serve is Google's 404, and nothing goes upstream.
    let unknown = mesh.gemini("deleteProject", &json!({})).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["status"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_on_their_account_and_a_429_fails_over_invisibly() {
    let mesh = Mesh::start(&[
        Acct::ClaudeOauth("claude-a"),
        Acct::ClaudeOauth("claude-b"),
        Acct::Gemini("gem-a", "proj-a"),
        Acct::Gemini("gem-b", "proj-b"),
    ])
    .await;
    // Affinity: one Claude session (header) and one Gemini session (body) each stay put.
    for session in ["s-1", "s-2", "s-3"] {
        mesh.sim.clear_requests().await.unwrap();
        for _ in 0..4 {
            assert_eq!(mesh.claude_turn(false, Some(session)).await.status(), 200);
            let g = mesh
                .gemini("generateContent", &generate_body(session))
                .await
                .unwrap();
            assert_eq!(g.status(), 200);
        }
        for path in ["/v1/messages", ":generateContent"] {
            let served: std::collections::BTreeSet<String> = mesh
                .seen(path)
                .await
                .iter()
                .map(|r| r["account_id"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(served.len(), 1, "{session} {path}: {served:?}");
        }
    }

    // Failover: a spent account's 429 is retried on the other one before the client sees it;
    // the Gemini retry carries the second account's project (the body is rewritten per attempt).
    mesh.spend("claude-a").await;
    mesh.spend("gem-a").await;
    mesh.sim.clear_requests().await.unwrap();
    // Sessions hash onto both accounts: twelve make missing the spent one a 1-in-4096 event.
    for i in 0..12 {
        let session = format!("f-{i}");
        let c = mesh.claude_turn(false, Some(&session)).await;
        assert_eq!(c.status(), 200);
        assert!(c.text().await.unwrap().contains("message_stop"));
        let g = mesh
            .gemini("generateContent", &generate_body(&session))
            .await
            .unwrap();
        assert_eq!(g.status(), 200, "{}", g.text().await.unwrap());
    }
    let claude = mesh.seen("/v1/messages").await;
    assert!(claude
        .iter()
        .all(|r| r["account_id"] == "claude-b" || r["status"] == 429));
    let gemini = mesh.seen(":generateContent").await;
    for r in &gemini {
        match r["account_id"].as_str() {
            Some("gem-b") => {
                assert_eq!(r["project"], "proj-b");
                assert_eq!(r["status"], 200);
            }
            _ => assert_eq!(r["status"], 429, "{r}"),
        }
    }
    assert!(
        gemini.iter().any(|r| r["status"] == 429),
        "no request met the spent account: the failover was not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_pool_answers_in_each_providers_shape() {
    let mesh = Mesh::start(&[
        Acct::ClaudeOauth("claude-a"),
        Acct::Gemini("gem-a", "proj-a"),
    ])
    .await;
    mesh.spend("claude-a").await;
    mesh.spend("gem-a").await;
    let claude = mesh.claude_turn(false, None).await;
    assert_eq!(claude.status(), 429);
    assert!(claude.headers().get("retry-after").is_some());
    let body: Value = claude.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");

    let gemini = mesh
        .gemini("generateContent", &generate_body("x"))
        .await
        .unwrap();
    assert_eq!(gemini.status(), 429);
    let body: Value = gemini.json().await.unwrap();
    assert_eq!(body["error"]["code"], 429, "{body}");
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");

    // A bad key on a Claude route is Anthropic's 401.
    let bad = mesh
        .http
        .post(mesh.envoy.url("/v1/messages"))
        .header("x-api-key", "cmk_wrong")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "m", "max_tokens": 1, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pool_sends_each_request_to_its_provider() {
    let mesh = Mesh::start(&[
        Acct::Codex("codex-a"),
        Acct::ClaudeOauth("claude-a"),
        Acct::Gemini("gem-a", "proj-a"),
    ])
    .await;
    mesh.sim.clear_requests().await.unwrap();
    for _ in 0..3 {
        let codex = mesh
            .http
            .post(mesh.envoy.url("/backend-api/codex/responses"))
            .bearer_auth(&mesh.key)
            .header("accept", "text/event-stream")
            .json(&codexmesh_test_kit::turn_body("ping"))
            .send()
            .await
            .unwrap();
        assert_eq!(codex.status(), 200);
        let text = codex.text().await.unwrap();
        assert!(text.contains("response.completed"), "{text}");
        assert_eq!(mesh.claude_turn(false, None).await.status(), 200);
        let g = mesh
            .gemini("generateContent", &generate_body("m"))
            .await
            .unwrap();
        assert_eq!(g.status(), 200);
    }
    for (path, account) in [
        ("/codex/responses", "codex-a"),
        ("/v1/messages", "claude-a"),
        (":generateContent", "gem-a"),
    ] {
        let seen = mesh.seen(path).await;
        assert_eq!(seen.len(), 3, "{path}: {seen:?}");
        assert!(
            seen.iter().all(|r| r["account_id"] == account),
            "{path}: {seen:?}"
        );
    }
    // Both model lists: Anthropic's with anthropic-version, the Codex one (OpenAI's shape)
    // without.
    let claude_models: Value = mesh
        .http
        .get(mesh.envoy.url("/v1/models"))
        .header("x-api-key", &mesh.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claude_models["data"][0]["type"], "model", "{claude_models}");
    let openai_models: Value = mesh
        .http
        .get(mesh.envoy.url("/v1/models"))
        .bearer_auth(&mesh.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai_models["object"], "list", "{openai_models}");
    mesh.assert_pool_key_never_upstream().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_the_providers_accounts_refuses_in_its_shape_and_sends_nothing() {
    let mesh = Mesh::start(&[Acct::Codex("codex-a")]).await;
    mesh.sim.clear_requests().await.unwrap();
    let claude = mesh.claude_turn(false, None).await;
    assert_eq!(claude.status(), 503);
    let body: Value = claude.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error", "{body}");
    let gemini = mesh
        .gemini("generateContent", &generate_body("x"))
        .await
        .unwrap();
    assert_eq!(gemini.status(), 503);
    let body: Value = gemini.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAVAILABLE", "{body}");
    assert!(mesh.seen("/v1/messages").await.is_empty());
    assert!(mesh.seen("/v1internal").await.is_empty());
}

impl Mesh {
    /// A Gemini CLI streaming turn: `streamGenerateContent?alt=sse`.
    async fn gemini_stream(&self, session: &str) -> reqwest::Response {
        self.http
            .post(self.envoy.url("/v1internal:streamGenerateContent?alt=sse"))
            .bearer_auth(&self.key)
            .json(&generate_body(session))
            .send()
            .await
            .unwrap()
    }

    /// The request log's entries for one account once `want` holds for one of them (waits
    /// up to 15 s for the outcome to be reported), newest first.
    async fn logged(&self, account: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let log = self
                ._cp
                .cli_json(&["requests", "--account", account, "--limit", "100"])
                .unwrap();
            let entries = log.as_array().cloned().unwrap_or_default();
            if entries.iter().any(&want) || std::time::Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `health` of an account as `codexmesh status` shows it.
    fn health(&self, label: &str) -> Value {
        let status = self._cp.cli_json(&["status"]).unwrap();
        status["pools"][0]["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["label"] == label)
            .unwrap_or_else(|| panic!("no {label} in {status}"))["health"]
            .clone()
    }
}

fn error_code(entry: &Value) -> &str {
    entry["error_code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_and_gemini_streams_broken_after_their_200_are_the_accounts_failure() {
    let mesh = Mesh::start(&[
        Acct::ClaudeOauth("claude-a"),
        Acct::Gemini("gem-a", "proj-a"),
    ])
    .await;
    // Whole streams first: logged as successes (their end was seen).
    let c = mesh.claude_turn(false, None).await;
    assert_eq!(c.status(), 200);
    assert!(c.text().await.unwrap().contains("message_stop"));
    let g = mesh.gemini_stream("whole").await;
    assert_eq!(g.status(), 200);
    assert!(g.text().await.unwrap().contains("finishReason"));
    for account in ["claude-a", "gem-a"] {
        let log = mesh.logged(account, |e| e["status"] == 200).await;
        assert_eq!(log.len(), 1, "{account}: {log:#?}");
        assert_eq!(error_code(&log[0]), "", "{account}: {log:#?}");
    }

    // Then each break the simulator can make, on both accounts: the client gets a 200 whose
    // stream never ends properly, and the log blames the account.
    for (mode, claude_code, gemini_code) in [
        ("sse_truncated", "stream_broken", "stream_broken"),
        ("sse_failed", "overloaded_error", "INTERNAL"),
    ] {
        mesh.sim
            .behavior(json!({"fail_next": [
                {"account_id": "claude-a", "mode": mode},
                {"account_id": "gem-a", "mode": mode},
            ]}))
            .await
            .unwrap();
        let c = mesh.claude_turn(false, None).await;
        assert_eq!(c.status(), 200, "{mode}: the break comes after the 200");
        let body = c.text().await.unwrap_or_default();
        assert!(!body.contains("message_stop"), "{mode}: {body}");
        let g = mesh.gemini_stream(mode).await;
        assert_eq!(g.status(), 200, "{mode}");
        let text = g.text().await.unwrap_or_default();
        assert!(!text.contains("finishReason"), "{mode}: {text}");
        for (account, code) in [("claude-a", claude_code), ("gem-a", gemini_code)] {
            let log = mesh.logged(account, |e| error_code(e) == code).await;
            let hit = log
                .iter()
                .find(|e| error_code(e) == code)
                .unwrap_or_else(|| panic!("{mode} {account}: no {code} in {log:#?}"));
            assert_eq!(hit["status"], 200, "{hit}");
            assert_eq!(hit["error_source"], "upstream", "{hit}");
        }
    }
    // Health counts the broken streams (two per account) as failures.
    for account in ["claude-a", "gem-a"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let h = mesh.health(account);
            if h["failures"].as_u64().unwrap_or(0) >= 2 {
                assert!(h["score"].as_u64().unwrap_or(100) < 100, "{account}: {h}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{account}: health never counted the broken streams: {h}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_and_gemini_routes_are_explained_and_logged_like_codex_ones() {
    let mesh = Mesh::start(&[
        Acct::ClaudeOauth("claude-a"),
        Acct::ClaudeOauth("claude-b"),
        Acct::Gemini("gem-a", "proj-a"),
    ])
    .await;
    // Ordinary keys get no explanation until the pool turns it on.
    let quiet = mesh.claude_turn(false, Some("exp-1")).await;
    assert_eq!(quiet.status(), 200);
    assert!(!quiet.headers().contains_key("x-codexmesh-route"));
    mesh._cp
        .cli_json(&["pool", "set-routing", POOL, "--explain", "true"])
        .unwrap();
    let route_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-codexmesh-route")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let explained = wait::until_async(
        Duration::from_secs(15),
        Duration::from_millis(100),
        "the explain setting to reach Envoy",
        || async {
            let resp = mesh.claude_turn(false, Some("exp-1")).await;
            Ok(match route_of(&resp) {
                Some(r) => wait::Probe::Ready(r),
                None => wait::Probe::NotYet(format!("{}", resp.status())),
            })
        },
    )
    .await
    .unwrap();
    assert!(explained.contains("account=claude-"), "{explained}");
    assert!(explained.contains("attempt=1"), "{explained}");
    assert!(explained.contains("reason=affinity"), "{explained}");

    let g = mesh
        .gemini("generateContent", &generate_body("exp-g"))
        .await
        .unwrap();
    assert_eq!(g.status(), 200);
    let route = route_of(&g).expect("a Gemini answer explains its route too");
    assert!(route.contains("account=gem-a"), "{route}");
    assert!(route.contains("reason=affinity"), "{route}");

    // The request log has both, with their paths, strategy and reason (never a body).
    let is_claude_turn = |e: &Value| {
        e["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v1/messages"))
    };
    let mut claude_log = Vec::new();
    for account in ["claude-a", "claude-b"] {
        // Both sessions' turns went to one of the two; each account's log is read until it
        // has one (or its wait ends: an account that served nothing has none).
        claude_log.extend(
            mesh.logged(account, is_claude_turn)
                .await
                .into_iter()
                .filter(is_claude_turn),
        );
    }
    assert!(claude_log.len() >= 2, "{claude_log:?}");
    for e in &claude_log {
        assert_eq!(e["status"], 200, "{e}");
        assert_eq!(e["reason"], "affinity", "{e}");
        assert!(e["strategy"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    }
    let gemini_log = mesh
        .logged("gem-a", |e| e["path"] == "/v1internal:generateContent")
        .await;
    assert!(
        gemini_log
            .iter()
            .any(|e| e["path"] == "/v1internal:generateContent" && e["status"] == 200),
        "{gemini_log:?}"
    );
    let text =
        serde_json::to_string(&gemini_log).unwrap() + &serde_json::to_string(&claude_log).unwrap();
    assert!(
        !text.contains("Reply with pong"),
        "no prompt text in the request log"
    );
}
