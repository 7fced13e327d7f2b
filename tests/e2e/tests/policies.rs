//! Per-key policies through real Envoy and the simulator, set through the admin API
//! (`PUT /api/v1/keys/{key}/policy`): a model outside a key's list gets an OpenAI-shaped 403
//! naming it, a key over its requests per minute a 429 with Retry-After, a second stream of a
//! key allowed one at a time a 429, and a key whose answers used its token budget a 429 until
//! the next UTC day. Nothing refused reaches the upstream, every refusal reaches the request
//! log, and a key without a policy is unaffected throughout.

use std::time::{Duration, Instant};

use codexmesh_test_kit::wait::{self, Probe};
use codexmesh_test_kit::{openai_error_code, turn_body, Stack, StackOptions, POOL};
use serde_json::{json, Value};

/// Every policy below also lists models, so a request for another model tells (without using
/// up anything the test counts) that Envoy has the policy.
const MODELS: &[&str] = &["gpt-5*"];

fn owner_token(stack: &Stack) -> String {
    stack
        .cp
        .cli_json(&[
            "operator", "token", "create", "--label", "policies", "--role", "owner",
        ])
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new key of the test pool with `label`; its raw secret.
async fn new_key(stack: &Stack, label: &str) -> String {
    let key = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL, "--name", label])
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    stack
        .wait_until_serving(&key, Duration::from_secs(20))
        .await
        .unwrap();
    key
}

/// Sets `label`'s policy through the admin API, then waits until Envoy enforces it (a request
/// for a model off the list is refused).
async fn set_policy(stack: &Stack, token: &str, label: &str, key: &str, policy: Value) {
    let admin = stack.cp.admin_addr.expect("admin address");
    let resp = stack
        .http
        .put(format!("http://{admin}/api/v1/keys/{label}/policy"))
        .bearer_auth(token)
        .json(&policy)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "PUT policy: {body}");
    wait::until_async(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the policy to reach Envoy",
        || async {
            let (status, body) = turn_with(stack, key, "o3").await;
            Ok(if status == 403 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{status} {body}"))
            })
        },
    )
    .await
    .unwrap();
}

/// One Codex turn asking for `model`: status and body.
async fn turn_with(stack: &Stack, key: &str, model: &str) -> (u16, String) {
    let mut body = turn_body("ping");
    body["model"] = json!(model);
    let resp = stack.post_turn(key, None, &body).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// One allowed turn: status, Retry-After, body.
async fn turn(stack: &Stack, key: &str) -> (u16, Option<u64>, String) {
    let resp = stack
        .post_turn(key, None, &turn_body("ping"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry_after, resp.text().await.unwrap())
}

/// Model turns the upstream received since the last clear.
async fn upstream_turns(stack: &Stack) -> usize {
    stack.sim.turn_requests().await.unwrap().len()
}

/// The request log's entries refused with `code` for key `label`, waiting (bounded) for at
/// least `want`.
async fn refusals_logged(stack: &Stack, code: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = stack.cp.cli_json(&["requests", "--limit", "500"]).unwrap();
        let hits: Vec<Value> = log
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["policy_refusal"] == code || e["error_code"] == code)
            .collect();
        if hits.len() >= want || Instant::now() > deadline {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_refused(status: u16, body: &str, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(openai_error_code(body), code, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_rate_and_concurrency_are_enforced_before_the_upstream() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    let token = owner_token(&stack);
    let models = new_key(&stack, "models").await;
    let rate = new_key(&stack, "rate").await;
    let streams = new_key(&stack, "streams").await;
    set_policy(
        &stack,
        &token,
        "models",
        &models,
        json!({"allowed_models": ["gpt-5*", "o4-mini"]}),
    )
    .await;
    set_policy(
        &stack,
        &token,
        "rate",
        &rate,
        json!({"allowed_models": MODELS, "requests_per_minute": 2}),
    )
    .await;
    set_policy(
        &stack,
        &token,
        "streams",
        &streams,
        json!({"allowed_models": MODELS, "max_concurrent_requests": 1}),
    )
    .await;

    // Models: another model is a 403 naming it, on the Codex route and on /v1 alike.
    stack.sim.clear_requests().await.unwrap();
    let (status, body) = turn_with(&stack, &models, "o3").await;
    assert_refused(status, &body, 403, "model_not_allowed");
    assert!(body.contains("'o3'"), "the refusal names the model: {body}");
    let chat = stack
        .http
        .post(stack.envoy.url("/v1/chat/completions"))
        .bearer_auth(&models)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status().as_u16(), 403);
    let body = chat.text().await.unwrap();
    assert_eq!(openai_error_code(&body), "model_not_allowed");
    assert!(body.contains("gpt-4o"), "{body}");
    // A body that is not JSON cannot name an allowed model.
    let junk = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&models)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status().as_u16(), 400);
    // A WebSocket names its model per frame: a key with a model list is told to use HTTP SSE
    // (426, which makes the Codex CLI fall back at once) and nothing reaches the upstream.
    {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
        let mut req = stack
            .envoy
            .url("/backend-api/codex/responses")
            .replacen("http://", "ws://", 1)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {models}").parse().unwrap());
        req.headers_mut().insert(
            "openai-beta",
            "responses_websockets=2026-02-06".parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 426),
            Ok(_) => panic!("a key with a model list opened a WebSocket"),
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }
    assert_eq!(
        upstream_turns(&stack).await,
        0,
        "a refusal reached the upstream"
    );
    // A zstd body (the Codex CLI's) is read too: refused or served by its model.
    for (model, want) in [("o3", 403), ("gpt-5.1-codex", 200)] {
        let mut body = turn_body("compressed");
        body["model"] = json!(model);
        let zstd = ruzstd::encoding::compress_to_vec(
            serde_json::to_vec(&body).unwrap().as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let resp = stack
            .http
            .post(stack.envoy.url("/backend-api/codex/responses"))
            .bearer_auth(&models)
            .header("content-type", "application/json")
            .header("content-encoding", "zstd")
            .body(zstd)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "zstd {model}: {text}");
        if want == 403 {
            assert_eq!(openai_error_code(&text), "model_not_allowed");
        }
    }
    assert_eq!(
        upstream_turns(&stack).await,
        1,
        "only the allowed zstd turn went upstream"
    );
    stack.sim.clear_requests().await.unwrap();
    for model in ["gpt-5.1-codex", "o4-mini"] {
        let (status, body) = turn_with(&stack, &models, model).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert!(body.contains("response.completed"), "{body}");
    }
    assert_eq!(upstream_turns(&stack).await, 2);

    // Rate: two at once (a minute's worth), then 429 with Retry-After; the key without a
    // policy goes on.
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..2 {
        let (status, _, body) = turn(&stack, &rate).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = turn(&stack, &rate).await;
    assert_refused(status, &body, 429, "rate_limited");
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(upstream_turns(&stack).await, 2);
    for _ in 0..4 {
        let (status, _, body) = turn(&stack, &stack.key).await;
        assert_eq!(status, 200, "the key without a policy: {body}");
    }

    // Concurrency: a second stream while the first is open is refused; once the first ends the
    // slot is free again.
    stack
        .sim
        .behavior(json!({"event_delay_ms": 300, "delta_count": 6}))
        .await
        .unwrap();
    let first = stack
        .post_turn(&streams, None, &turn_body("slow"))
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let (status, retry_after, body) = turn(&stack, &streams).await;
    assert_refused(status, &body, 429, "too_many_concurrent_requests");
    assert_eq!(retry_after, Some(1));
    // Meanwhile the key without a policy streams alongside.
    let (status, _, body) = turn(&stack, &stack.key).await;
    assert_eq!(status, 200, "{body}");
    let text = first.text().await.unwrap();
    assert!(text.contains("response.completed"), "{text}");
    stack
        .sim
        .behavior(json!({"event_delay_ms": 0}))
        .await
        .unwrap();
    wait::until_async(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "the first stream's slot to be given back",
        || async {
            let (status, _, body) = turn(&stack, &streams).await;
            Ok(if status == 200 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{status} {body}"))
            })
        },
    )
    .await
    .unwrap();
    // A client that hangs up mid-stream gives its slot back too.
    stack
        .sim
        .behavior(json!({"event_delay_ms": 300, "delta_count": 6}))
        .await
        .unwrap();
    let abandoned = stack
        .post_turn(&streams, None, &turn_body("abandoned"))
        .await
        .unwrap();
    assert_eq!(abandoned.status().as_u16(), 200);
    drop(abandoned);
    stack
        .sim
        .behavior(json!({"event_delay_ms": 0}))
        .await
        .unwrap();
    wait::until_async(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "the abandoned stream's slot to be given back",
        || async {
            let (status, _, body) = turn(&stack, &streams).await;
            Ok(if status == 200 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{status} {body}"))
            })
        },
    )
    .await
    .unwrap();

    // Every refusal reached the request log, without an account.
    for (code, want) in [
        ("model_not_allowed", 2),
        ("rate_limited", 1),
        ("too_many_concurrent_requests", 1),
    ] {
        let hits = refusals_logged(&stack, code, want).await;
        assert!(hits.len() >= want, "{code}: {hits:#?}");
        for hit in &hits {
            assert_eq!(hit["account_id"], "", "a refusal names no account: {hit}");
            assert!(hit["account"].is_null(), "{hit}");
            assert_eq!(hit["error_source"], "client", "{hit}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_counts_the_answers_usage_then_refuses_until_the_next_day() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    let token = owner_token(&stack);
    let budget = new_key(&stack, "budget").await;
    // The simulator's answers state a few dozen tokens: one answer uses a 40-token day.
    set_policy(
        &stack,
        &token,
        "budget",
        &budget,
        json!({"allowed_models": MODELS, "tokens_per_day": 40}),
    )
    .await;
    stack.sim.clear_requests().await.unwrap();
    let mut served = 0;
    let refused = loop {
        let (status, retry_after, body) = turn(&stack, &budget).await;
        if status != 200 {
            break (status, retry_after, body);
        }
        served += 1;
        assert!(served < 40, "the budget never ran out");
    };
    let (status, retry_after, body) = refused;
    assert!(served >= 1);
    assert_refused(status, &body, 429, "token_budget_exhausted");
    // Until the next UTC midnight.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry_after = retry_after.expect("Retry-After");
    assert!(
        retry_after.abs_diff(to_midnight) <= 5,
        "Retry-After {retry_after}, midnight in {to_midnight}"
    );
    assert_eq!(upstream_turns(&stack).await, served);
    // Still refused on the next try; the key without a policy is unaffected.
    let (status, _, body) = turn(&stack, &budget).await;
    assert_refused(status, &body, 429, "token_budget_exhausted");
    let (status, _, body) = turn(&stack, &stack.key).await;
    assert_eq!(status, 200, "{body}");
    let hits = refusals_logged(&stack, "token_budget_exhausted", 2).await;
    assert!(hits.len() >= 2, "{hits:#?}");
    for hit in &hits {
        assert_eq!(hit["status"], 429, "{hit}");
        assert_eq!(hit["key"], "budget", "{hit}");
        assert_eq!(hit["account_id"], "", "{hit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_quota_share_is_refused_until_the_share_frees_up() {
    // One account whose 5-hour window moves one point per turn (the simulator's quota clock).
    let opts = StackOptions {
        accounts: vec![json!({"primary_limit": 100, "secondary_limit": 10_000})],
        ..StackOptions::default()
    }
    .without_quota_polling();
    let stack = Stack::start_with(opts).await.unwrap();
    let token = owner_token(&stack);
    let shared = new_key(&stack, "shared").await;
    // 3 % of a one-account pool: three points of its 5-hour window (one point of slack: a
    // reading that reaches the control plane out of turn may count a point early, and a CI run
    // once saw the block after a single turn at 2 %).
    set_policy(
        &stack,
        &token,
        "shared",
        &shared,
        json!({"allowed_models": MODELS, "primary_share_percent": 3.0}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = 0;
    let (status, retry_after, body) = loop {
        let (status, retry_after, body) = turn(&stack, &shared).await;
        if status != 200 {
            break (status, retry_after, body);
        }
        served += 1;
        assert!(
            Instant::now() < deadline && served < 40,
            "the share never ran out ({served} turns)"
        );
        // Reports reach the control plane, which pushes the block.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(served >= 2, "a first reading only sets the base: {served}");
    assert_refused(status, &body, 429, "quota_share_exhausted");
    assert!(
        body.contains("5-hour"),
        "the refusal names the window: {body}"
    );
    let retry_after = retry_after.expect("Retry-After");
    // Until the control plane's block ends (when the key's oldest points leave the 5-hour
    // window, by its clock): the filter's Retry-After is that moment, rounded up.
    let keys = stack.cp.cli_json(&["key", "list"]).unwrap();
    let row = keys
        .as_array()
        .and_then(|a| a.iter().find(|k| k["label"] == "shared"))
        .cloned()
        .expect("shared in the key list");
    assert_eq!(row["usage"]["share_blocked_window"], "primary", "{row}");
    let until = row["usage"]["share_blocked_until_unix"]
        .as_u64()
        .expect("a block");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        retry_after.abs_diff(until.saturating_sub(now)) <= 3,
        "Retry-After {retry_after}, blocked until {until} (now {now})"
    );
    assert!(retry_after <= 5 * 3600 + 60, "Retry-After {retry_after}");
    // The key without a policy still serves from the same account.
    let (status, _, body) = turn(&stack, &stack.key).await;
    assert_eq!(status, 200, "{body}");
    let hits = refusals_logged(&stack, "quota_share_exhausted", 1).await;
    assert!(!hits.is_empty());
    assert_eq!(hits[0]["account_id"], "", "{}", hits[0]);
}

/// Imports a Claude OAuth or Gemini account of the simulator into the test pool.
async fn add_provider_account(stack: &Stack, id: &str, gemini_project: Option<&str>) {
    match gemini_project {
        Some(project) => stack
            .sim
            .create_gemini_account(json!({"account_id": id, "project_id": project}))
            .await
            .unwrap(),
        None => stack
            .sim
            .create_claude_account(json!({"account_id": id}))
            .await
            .unwrap(),
    };
    let path = stack.dir.path().join(format!("{id}.credentials.json"));
    stack.sim.write_credentials_file(id, &path).await.unwrap();
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["account", "import", &path, "--pool", POOL, "--label", id];
    if let Some(project) = gemini_project {
        args.extend(["--project", project]);
    }
    stack.cp.cli_json(&args).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_and_gemini_refusals_take_their_shape_and_their_answers_tokens_are_logged() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    add_provider_account(&stack, "claude-a", None).await;
    add_provider_account(&stack, "gemini-a", Some("proj-a")).await;
    let token = owner_token(&stack);
    let key = new_key(&stack, "mixed").await;
    set_policy(
        &stack,
        &token,
        "mixed",
        &key,
        json!({"allowed_models": ["gpt-5*", "claude-sonnet*", "gemini-2.5-pro"]}),
    )
    .await;
    let claude = |model: &str, stream: bool| {
        stack
            .http
            .post(stack.envoy.url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", &key)
            .json(&json!({
                "model": model,
                "max_tokens": 64,
                "stream": stream,
                "messages": [{"role": "user", "content": "Reply with pong"}],
            }))
            .send()
    };
    let gemini = |model: &str, method: &str| {
        stack
            .http
            .post(stack.envoy.url(&format!("/v1internal:{method}")))
            .bearer_auth(&key)
            .json(&json!({
                "model": model,
                "project": "codexmesh-pool",
                "request": {"contents": [{"role": "user", "parts": [{"text": "Reply with pong"}]}]},
            }))
            .send()
    };
    // Refusals in each provider's shape, naming the model.
    let resp = claude("claude-opus-4-1", false).await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("claude-opus-4-1"));
    let resp = gemini("gemini-1.5-flash", "generateContent").await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gemini-1.5-flash"));

    // Allowed models are served: streamed and whole, and each answer's tokens reach the log.
    wait::until_async(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "the Claude and Gemini accounts to serve",
        || async {
            let c = claude("claude-sonnet-4-5", true).await?.status().as_u16();
            let g = gemini("gemini-2.5-pro", "generateContent")
                .await?
                .status()
                .as_u16();
            Ok(if c == 200 && g == 200 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("claude {c}, gemini {g}"))
            })
        },
    )
    .await
    .unwrap();
    let whole = claude("claude-sonnet-4-5", false).await.unwrap();
    assert_eq!(whole.status().as_u16(), 200);
    let stated: Value = whole.json().await.unwrap();
    let stream = stack
        .http
        .post(stack.envoy.url("/v1internal:streamGenerateContent?alt=sse"))
        .bearer_auth(&key)
        .json(&json!({
            "model": "gemini-2.5-pro",
            "project": "codexmesh-pool",
            "request": {"contents": [{"role": "user", "parts": [{"text": "Reply with pong"}]}]},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let _ = stream.text().await.unwrap();

    let want_input = stated["usage"]["input_tokens"].as_i64().unwrap();
    let want_output = stated["usage"]["output_tokens"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = stack.cp.cli_json(&["requests", "--limit", "500"]).unwrap();
        let served: Vec<&Value> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["key"] == "mixed" && e["status"] == 200)
            .collect();
        let with_tokens = |path: &str| {
            served.iter().any(|e| {
                e["path"].as_str().unwrap_or_default().contains(path)
                    && e["input_tokens"].as_i64() > Some(0)
                    && e["output_tokens"].as_i64() > Some(0)
            })
        };
        // The whole Claude answer's own usage, as its body stated it.
        let claude_whole = served.iter().any(|e| {
            e["path"]
                .as_str()
                .unwrap_or_default()
                .contains("/v1/messages")
                && e["input_tokens"] == want_input
                && e["output_tokens"] == want_output
        });
        if claude_whole
            && with_tokens(":generateContent")
            && with_tokens(":streamGenerateContent")
            && with_tokens("/v1/messages")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "token usage missing from the log: {served:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
