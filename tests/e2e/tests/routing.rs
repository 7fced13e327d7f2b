//! Routing through real Envoy: affinity, failover, cooldowns, explanation, honest errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use codexmesh_test_kit::{import_account, turn_body, Envoy, Stack, StackOptions, POOL};
use serde_json::{json, Value};

/// Sends one turn with a session header; returns (status, account that served, route header).
async fn session_turn(
    stack: &Stack,
    url: &str,
    key: &str,
    session: Option<&str>,
) -> (u16, Option<String>, Option<String>, String) {
    let mut req = stack
        .http
        .post(url)
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .json(&turn_body("hi"));
    if let Some(s) = session {
        req = req.header("session-id", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let route = resp
        .headers()
        .get("x-codexmesh-route")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    (status, None, route, body)
}

/// Maps each of the simulator's recorded turns (since the last clear) to its account, in order.
async fn served_accounts(stack: &Stack) -> Vec<String> {
    stack
        .sim
        .turn_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["account_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// For each session, which account served it (one turn per session).
async fn owners(stack: &Stack, url: &str, sessions: &[String]) -> Vec<String> {
    stack.sim.clear_requests().await.unwrap();
    for s in sessions {
        let (status, _, _, body) = session_turn(stack, url, &stack.key, Some(s)).await;
        assert_eq!(status, 200, "{body}");
    }
    let served = served_accounts(stack).await;
    assert_eq!(served.len(), sessions.len());
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keys_get_the_route_explained() {
    let stack = Stack::start(2).await.unwrap();
    let op = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL, "--operator"])
        .unwrap();
    let op_key = op["key"].as_str().unwrap();
    stack
        .wait_until_serving(op_key, Duration::from_secs(5))
        .await
        .unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let (status, _, route, _) = session_turn(&stack, &url, op_key, Some("s-1")).await;
    assert_eq!(status, 200);
    let route = route.expect("operator key gets x-codexmesh-route");
    assert!(route.contains("account=acct-"), "{route}");
    assert!(route.contains("attempt=1"), "{route}");
    assert!(route.contains("reason=affinity"), "{route}");
    // Ordinary keys don't, unless the pool turns it on.
    let (_, _, route, _) = session_turn(&stack, &url, &stack.key, Some("s-1")).await;
    assert!(route.is_none());

    // A failover is explained too: the first account answers 429 once.
    stack
        .sim
        .behavior(json!({"fail_next": [{"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "x", "resets_in_seconds": 30}}}]}))
        .await
        .unwrap();
    let (status, _, route, body) = session_turn(&stack, &url, op_key, Some("s-2")).await;
    assert_eq!(status, 200, "{body}");
    let route = route.unwrap();
    assert!(
        route.contains("attempt=2")
            && route.contains("reason=failover")
            && route.contains("from=acct-"),
        "{route}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stick_to_one_account_and_two_envoys_agree() {
    let stack = Stack::start(3).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let sessions: Vec<String> = (0..30).map(|i| format!("session-{i}")).collect();
    let first = owners(&stack, &url, &sessions).await;
    // All three accounts own some sessions (the hash spreads them).
    assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 3, "{first:?}");
    // 100 % stable while eligible: ask again, three times.
    for _ in 0..3 {
        assert_eq!(owners(&stack, &url, &sessions).await, first);
    }
    // A second Envoy, sharing nothing with the first but the control plane, agrees on every one.
    let grpc = stack.cp.grpc_addr.unwrap();
    let envoy2 = Envoy::start(
        &stack.art,
        &stack.cp,
        grpc,
        &stack.cp.env.push_token,
        stack.dir.path(),
        "envoy-2",
    )
    .await
    .unwrap();
    let url2 = envoy2.url("/backend-api/codex/responses");
    let start = Instant::now();
    loop {
        let (status, _, _, _) = session_turn(&stack, &url2, &stack.key, Some("warm-up")).await;
        if status == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(owners(&stack, &url2, &sessions).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_account_moves_about_one_in_n_plus_one_sessions() {
    let mut stack = Stack::start(3).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let sessions: Vec<String> = (0..120).map(|i| format!("join-{i}")).collect();
    let before = owners(&stack, &url, &sessions).await;
    let newcomer = import_account(
        &stack.sim,
        &stack.cp,
        stack.dir.path(),
        POOL,
        "acct-new",
        json!({}),
    )
    .await
    .unwrap();
    let new_id = newcomer["account_id"].as_str().unwrap().to_string();
    stack.accounts.push(newcomer);
    // Wait until the newcomer takes traffic (the snapshot arrived), then measure a full pass.
    let start = Instant::now();
    while !owners(&stack, &url, &sessions[..40])
        .await
        .contains(&new_id)
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "new account never used"
        );
    }
    let after = owners(&stack, &url, &sessions).await;
    let moved: Vec<usize> = (0..sessions.len())
        .filter(|i| before[*i] != after[*i])
        .collect();
    // Expected 120/4 = 30; rendezvous never moves a session between two old accounts.
    assert!(
        (15..=45).contains(&moved.len()),
        "moved {} of 120",
        moved.len()
    );
    assert!(
        moved.iter().all(|i| after[*i] == new_id),
        "a session moved between old accounts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_only_when_its_account_is_exhausted_and_clients_never_see_the_429() {
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({"primary_limit": 5}), json!({}), json!({})],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let limited = stack.account_id(0);
    // Find a session owned by the limited account.
    let sessions: Vec<String> = (0..40).map(|i| format!("ex-{i}")).collect();
    let owned = owners(&stack, &url, &sessions).await;
    let pos = owned
        .iter()
        .position(|a| *a == limited)
        .expect("some session on account 0");
    let session = sessions[pos].clone();
    // The limited account has spent some budget in `owners`; keep going on its session.
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..8 {
        let (status, _, _, body) = session_turn(&stack, &url, &stack.key, Some(&session)).await;
        assert_eq!(status, 200, "the client saw an error: {body}");
    }
    let turns = stack.sim.turn_requests().await.unwrap();
    let served: Vec<&str> = turns
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["account_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(served.len(), 8);
    // It started on its own account (if budget was left) and, once that was spent, stayed on
    // one other account.
    let after_exhaustion: BTreeSet<&str> =
        served.iter().copied().filter(|a| *a != limited).collect();
    assert_eq!(after_exhaustion.len(), 1, "{served:?}");
    let last_four: BTreeSet<&str> = served[4..].iter().copied().collect();
    assert_eq!(last_four.len(), 1, "the session did not settle: {served:?}");
    assert!(!last_four.contains(limited.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_429_with_the_earliest_reset() {
    let stack = Stack::start_with(StackOptions {
        accounts: vec![
            json!({"primary_limit": 1, "primary_window_secs": 600}),
            json!({"primary_limit": 1, "primary_window_secs": 1200}),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    // Stack::start spent one turn on one account already; spend the rest.
    let mut last = (0u16, String::new());
    let mut retry_after = None;
    for _ in 0..4 {
        let resp = stack
            .post_turn(&stack.key, None, &turn_body("x"))
            .await
            .unwrap();
        retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        last = (resp.status().as_u16(), resp.text().await.unwrap());
        if last.0 == 429 {
            break;
        }
    }
    assert_eq!(last.0, 429, "{}", last.1);
    let body: Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(body["error"]["type"], "usage_limit_reached", "{body}");
    let resets_at = body["error"]["resets_at"].as_i64().expect("resets_at");
    // The earliest reset of the two windows is the 10-minute one.
    let sim_acc = stack.sim.account(&stack.account_id(0)).await.unwrap();
    let earliest = sim_acc["primary"]["reset_at"].as_i64().unwrap();
    assert!(
        (resets_at - earliest).abs() <= 2,
        "resets_at {resets_at} vs {earliest}"
    );
    let retry_after: i64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(retry_after > 500 && retry_after <= 601, "{retry_after}");

    // And again at once: answered by the gateway itself, same reset, no upstream call.
    stack.sim.clear_requests().await.unwrap();
    let resp = stack
        .post_turn(&stack.key, None, &turn_body("x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["resets_at"].as_i64(), Some(resets_at));
    assert!(stack.sim.turn_requests().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_takes_the_account_out_of_routing_on_this_envoy_at_once() {
    let stack = Stack::start(2).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    // Revoke account 0's token at the upstream: its next answer is 401.
    stack
        .sim
        .patch_account(&stack.account_id(0), json!({"expire_access_token": true}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    for i in 0..10 {
        let (status, _, _, body) =
            session_turn(&stack, &url, &stack.key, Some(&format!("a401-{i}"))).await;
        assert_eq!(status, 200, "client saw the 401: {body}");
    }
    let turns = stack.sim.turn_requests().await.unwrap();
    let rejected: Vec<&Value> = turns.iter().filter(|r| r["status"] == 401).collect();
    // At most one request per worker tried the dead token before the block spread.
    assert!(
        rejected.len() <= 2,
        "the dead token kept being used: {}",
        rejected.len()
    );
    let by_account: BTreeMap<String, usize> =
        turns
            .iter()
            .filter(|r| r["status"] == 200)
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r["account_id"].as_str().unwrap_or_default().to_string())
                    .or_default() += 1;
                m
            });
    assert_eq!(
        by_account.get(&stack.account_id(1)).copied().unwrap_or(0),
        10,
        "{by_account:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_key_keeps_sdk_requests_together_without_session_headers() {
    let stack = Stack::start(3).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let send = |cache_key: String| {
        let mut body = turn_body("hi");
        body["prompt_cache_key"] = json!(cache_key);
        stack
            .http
            .post(&url)
            .bearer_auth(&stack.key)
            .json(&body)
            .send()
    };
    stack.sim.clear_requests().await.unwrap();
    for round in 0..3 {
        for i in 0..12 {
            let resp = send(format!("cache-{i}")).await.unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            resp.text().await.unwrap();
        }
    }
    let served = served_accounts(&stack).await;
    assert_eq!(served.len(), 36);
    for i in 0..12 {
        let per_key: BTreeSet<&String> = [&served[i], &served[12 + i], &served[24 + i]]
            .into_iter()
            .collect();
        assert_eq!(
            per_key.len(),
            1,
            "prompt_cache_key cache-{i} moved: {per_key:?}"
        );
    }
    // Different keys still spread over the pool.
    assert!(served.iter().collect::<BTreeSet<_>>().len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_cache_key_is_found_at_either_end_of_a_long_transcript() {
    let stack = Stack::start(3).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    // ~300 KB of transcript; the user's text even mentions the key (escaped, so never a match).
    let filler = "y".repeat(1000);
    let input: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{i} {filler} \"prompt_cache_key\": \"decoy\""}}]}}"#))
        .collect();
    let input = input.join(",");
    // The Codex CLI's order: the key after the transcript. An SDK may put it first.
    let codex_order = |key: &str| {
        format!(
            r#"{{"model":"gpt-5.1-codex","instructions":"t","input":[{input}],"tools":[],"tool_choice":"auto","parallel_tool_calls":false,"store":false,"stream":true,"include":[],"prompt_cache_key":"{key}","client_metadata":{{}}}}"#
        )
    };
    let key_first = |key: &str| {
        format!(
            r#"{{"prompt_cache_key":"{key}","model":"gpt-5.1-codex","input":[{input}],"store":false,"stream":true}}"#
        )
    };
    let small = |key: &str| {
        let mut body = turn_body("hi");
        body["prompt_cache_key"] = json!(key);
        body.to_string()
    };
    stack.sim.clear_requests().await.unwrap();
    for i in 0..8 {
        let key = format!("transcript-{i}");
        for body in [small(&key), codex_order(&key), key_first(&key)] {
            let resp = stack
                .http
                .post(&url)
                .bearer_auth(&stack.key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap();
        }
    }
    let served = served_accounts(&stack).await;
    assert_eq!(served.len(), 24);
    for (i, per_key) in served.chunks(3).enumerate() {
        assert!(
            per_key.iter().all(|a| *a == per_key[0]),
            "transcript-{i}: small body, key after the transcript and key first went to {per_key:?}"
        );
    }
    assert!(
        served.iter().collect::<BTreeSet<_>>().len() >= 2,
        "keys still spread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bodies_are_replayed_intact_on_failover() {
    let stack = Stack::start(2).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let plain = serde_json::to_vec(&turn_body(&"a long transcript ".repeat(2000))).unwrap();
    let compressed = ruzstd::encoding::compress_to_vec(
        plain.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    assert!(compressed.len() < plain.len());
    stack.sim.clear_requests().await.unwrap();
    stack
        .sim
        .behavior(json!({"fail_next": [{"status": 503, "body": {"error": {"code": "server_is_overloaded", "message": "busy"}}}]}))
        .await
        .unwrap();
    let resp = stack
        .http
        .post(&url)
        .bearer_auth(&stack.key)
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .header("session-id", "zstd-session")
        .body(compressed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let turns = stack.sim.turn_requests().await.unwrap();
    assert_eq!(turns.len(), 2, "{turns:?}");
    assert_eq!(turns[0]["status"], 503);
    assert_eq!(turns[1]["status"], 200);
    for t in &turns {
        assert_eq!(
            t["body_len"].as_u64(),
            Some(compressed.len() as u64),
            "wire body changed"
        );
        assert_eq!(
            t["decoded_body_len"].as_u64(),
            Some(plain.len() as u64),
            "decoded body differs"
        );
    }
    assert_eq!(turns[0]["body_sha256"], turns[1]["body_sha256"]);
    assert_ne!(turns[0]["account_id"], turns[1]["account_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_do_not_count_against_the_account() {
    let stack = Stack::start(2).await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..6 {
        let mut body = turn_body("x");
        body["store"] = json!(true); // the upstream rejects this with 400
        let resp = stack
            .http
            .post(&url)
            .bearer_auth(&stack.key)
            .header("session-id", "bad-client")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            400,
            "a client error must reach the client, not fail over"
        );
        resp.text().await.unwrap();
    }
    let turns = stack.sim.turn_requests().await.unwrap();
    assert_eq!(turns.len(), 6, "400s were retried: {turns:?}");
    let account = turns[0]["account_id"].clone();
    assert!(
        turns.iter().all(|t| t["account_id"] == account),
        "a 400 moved the session"
    );
    // The same session's good request still goes to the same account: no circuit opened.
    let (status, _, _, _) = session_turn(&stack, &url, &stack.key, Some("bad-client")).await;
    assert_eq!(status, 200);
    let last = stack.sim.turn_requests().await.unwrap().pop().unwrap();
    assert_eq!(last["account_id"], account);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_bounded_and_total_failure_is_a_clear_503() {
    let stack = Stack::start(4).await.unwrap();
    stack.sim.clear_requests().await.unwrap();
    let overloaded = json!({"status": 503, "body": {"error": {"code": "server_is_overloaded", "message": "busy"}}});
    stack
        .sim
        .behavior(json!({"fail_next": [overloaded.clone(), overloaded.clone(), overloaded.clone(), overloaded]}))
        .await
        .unwrap();
    let started = Instant::now();
    let resp = stack
        .post_turn(&stack.key, None, &turn_body("x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // Default bound: 3 attempts, each on a different account.
    let turns = stack.sim.turn_requests().await.unwrap();
    assert_eq!(turns.len(), 3, "{turns:?}");
    assert_eq!(
        turns
            .iter()
            .map(|t| t["account_id"].clone())
            .collect::<Vec<_>>()
            .len(),
        turns
            .iter()
            .map(|t| t["account_id"].to_string())
            .collect::<BTreeSet<_>>()
            .len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_json_503_not_a_hang() {
    let stack = Stack::start(1).await.unwrap();
    // Stop the simulator: every attempt now fails to connect.
    let mut sim_proc = stack.sim.pid();
    assert!(sim_proc.is_some());
    // SAFETY: kill(2) on the simulator we spawned.
    unsafe { libc::kill(sim_proc.take().unwrap(), libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let resp = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .json(&turn_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_turn_state_goes_back_to_the_account_that_issued_it() {
    let stack = Stack::start(3).await.unwrap();
    stack.sim.clear_requests().await.unwrap();
    let resp = stack
        .post_turn(&stack.key, Some("ts-origin"), &turn_body("x"))
        .await
        .unwrap();
    let turn_state = resp
        .headers()
        .get("x-codex-turn-state")
        .expect("the simulator issues x-codex-turn-state")
        .to_str()
        .unwrap()
        .to_string();
    resp.text().await.unwrap();
    let issuer = served_accounts(&stack).await[0].clone();
    // Replays under many different sessions (whose hashes point all over the pool) all return
    // to the issuer.
    stack.sim.clear_requests().await.unwrap();
    for i in 0..12 {
        let resp = stack
            .http
            .post(stack.envoy.url("/backend-api/codex/responses"))
            .bearer_auth(&stack.key)
            .header("session-id", format!("other-{i}"))
            .header("x-codex-turn-state", &turn_state)
            .json(&turn_body("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    let served = served_accounts(&stack).await;
    assert_eq!(served.len(), 12);
    assert!(
        served.iter().all(|a| *a == issuer),
        "{served:?} (issuer {issuer})"
    );
    // Without the turn state, those sessions spread.
    let spread = owners(
        &stack,
        &stack.envoy.url("/backend-api/codex/responses"),
        &(0..12).map(|i| format!("other-{i}")).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        spread.iter().any(|a| *a != issuer),
        "the control case did not spread: {spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_shows_each_attempt_and_why_but_never_the_prompt() {
    // acct-0 goes first (priority order) and is spent once the stack is up: the request fails
    // over to acct-1.
    // No usage polling: the spent account must be tried (and refused) by the request.
    let stack = Stack::start_with(StackOptions::accounts(2).without_quota_polling())
        .await
        .unwrap();
    stack.priority_order(&["acct-0", "acct-1"]).unwrap();
    stack
        .sim
        .patch_account(&stack.account_id(0), json!({"primary_limit": 0}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let marker = "prompt-marker-5f1c9e";
    let resp = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .json(&turn_body(marker))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap();

    // Outcomes reach the control plane in the filter's next report batch. (The stack's own
    // start-up request is in the log too, ranked by the default strategy.)
    let mine = |log: &Value| -> Vec<Value> {
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["strategy"] == "priority_order")
            .cloned()
            .collect()
    };
    let started = Instant::now();
    let log = loop {
        let log = stack.cp.cli_json(&["requests", "--limit", "50"]).unwrap();
        if mine(&log).len() >= 2 {
            break log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no request log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let entries = mine(&log);
    assert_eq!(entries.len(), 2, "{log}");
    assert_eq!(log[0], entries[0], "newest first: {log}");
    let (served, refused) = (&entries[0], &entries[1]);
    assert_eq!(refused["account"], "acct-0", "{log}");
    assert_eq!(refused["attempt"], 1);
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["error_source"], "upstream");
    // (No error_code: Envoy retries a 429 on its headers, so its body never reaches the filter.)
    assert_eq!(refused["reason"], "strategy");
    assert_eq!(served["account"], "acct-1", "{log}");
    assert_eq!(served["attempt"], 2);
    assert_eq!(served["status"], 200);
    assert_eq!(served["reason"], "failover");
    assert_eq!(served["fallback"], true);
    for e in &entries {
        assert_eq!(e["pool"], POOL);
        assert_eq!(e["path"], "/backend-api/codex/responses");
    }

    // Filters and the table view.
    let only = stack
        .cp
        .cli_json(&["requests", "--account", "acct-0"])
        .unwrap();
    let only = only.as_array().unwrap();
    let acct0 = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["account"] == "acct-0");
    assert_eq!(only.len(), acct0.count(), "{only:?}");
    assert!(only.iter().all(|e| e["account"] == "acct-0"), "{only:?}");
    // What failed lately: the refused attempt only.
    let failed = stack
        .cp
        .cli_json(&["requests", "--failed", "--since", "10m"])
        .unwrap();
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], refused["id"]);
    let later = stack.cp.cli_json(&["requests", "--since", "0s"]).unwrap();
    assert!(later.as_array().unwrap().is_empty(), "{later}");
    let table = stack.cp.cli(&["requests"]).unwrap();
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("failover") && table.stdout.contains("acct-1"),
        "{}",
        table.stdout
    );
    let bad = stack.cp.cli(&["requests", "--account", "nobody"]).unwrap();
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("account"), "{}", bad.stderr);

    // The admin API serves the same log (to an API token); bad parameters are named.
    let admin = stack.cp.admin_addr.expect("admin address");
    let created = stack
        .cp
        .cli_json(&[
            "operator",
            "token",
            "create",
            "--label",
            "reader",
            "--role",
            "viewer",
            "--pools",
            codexmesh_test_kit::stack::POOL,
        ])
        .unwrap();
    let token = created["secret"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let get = |url: String| http.get(url).bearer_auth(&token).send();
    let api: Value = get(format!("http://{admin}/api/v1/requests?limit=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api.as_array().unwrap().len(), 1);
    assert_eq!(api[0]["id"], served["id"]);
    for (query, field) in [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("acount=x", "acount"),
    ] {
        let resp = get(format!("http://{admin}/api/v1/requests?{query}"))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }

    // Metadata only: the prompt is in neither the log nor the store.
    assert!(!log.to_string().contains(marker));
    let mut stored = Vec::new();
    for file in ["codexmesh.db", "codexmesh.db-wal"] {
        stored.extend(std::fs::read(stack.cp.env.data_dir.join(file)).unwrap_or_default());
    }
    assert!(!stored.is_empty(), "store file not found");
    assert!(!String::from_utf8_lossy(&stored).contains(marker));
}
