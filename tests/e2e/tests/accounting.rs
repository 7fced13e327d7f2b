//! Honest accounting and routing through real Envoy: a stream the upstream breaks after its 200
//! is the account's failure, one the client abandons is nobody's; accounts without quota
//! evidence still get traffic under quota_first; an empty pool says how to fill it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use codexmesh_test_kit::{openai_error_code, turn_body, Stack, StackOptions, POOL};
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn log_where(stack: &Stack, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = stack.cp.cli_json(&["requests", "--limit", "500"]).unwrap();
        let hits: Vec<Value> = log
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(&want)
            .collect();
        if !hits.is_empty() || Instant::now() > deadline {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The account's health as `status` shows it, by simulator account id.
async fn health(stack: &Stack, label: &str) -> Value {
    let status = stack.cp.cli_json(&["status"]).unwrap();
    status["pools"][0]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"] == label)
        .unwrap_or_else(|| panic!("no {label} in {status}"))["health"]
        .clone()
}

#[tokio::test]
async fn a_stream_broken_after_its_200_is_the_account_s_failure() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    let account = stack.account_id(0);
    for mode in ["sse_truncated", "sse_failed"] {
        stack
            .sim
            .behavior(json!({"fail_next": [{"account_id": account, "mode": mode}]}))
            .await
            .unwrap();
        let resp = stack
            .post_turn(&stack.key, None, &turn_body("break"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{mode}: the break comes after the 200");
        let body = resp.text().await.unwrap_or_default();
        assert!(!body.contains("response.completed"), "{mode}: {body}");
    }
    let broken = log_where(&stack, |e| {
        e["status"] == 200 && e["error_source"] == "upstream"
    })
    .await;
    let codes: Vec<&str> = broken
        .iter()
        .filter_map(|e| e["error_code"].as_str())
        .collect();
    assert!(
        codes.contains(&"stream_broken"),
        "truncated stream: {broken:#?}"
    );
    assert!(
        codes.contains(&"server_error"),
        "response.failed: {broken:#?}"
    );
    // Health counts both as failures.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(&stack, "acct-0").await;
        if h["failures"].as_u64().unwrap_or(0) >= 2 {
            assert!(h["score"].as_u64().unwrap() < 100, "{h}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never counted the broken streams: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_stream_the_client_abandons_is_nobody_s_failure() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    // Events trickle: the client reads the first and leaves mid-stream.
    stack
        .sim
        .behavior(json!({"event_delay_ms": 300, "delta_count": 10}))
        .await
        .unwrap();
    let resp = stack
        .post_turn(&stack.key, Some("abandon-1"), &turn_body("leave"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap();
    assert!(first.is_some());
    drop(stream);
    let cancelled = log_where(&stack, |e| e["error_code"] == "client_cancelled").await;
    assert_eq!(cancelled.len(), 1, "{cancelled:#?}");
    assert_eq!(cancelled[0]["error_source"], "client");
    let h = health(&stack, "acct-0").await;
    assert_eq!(h["failures"], 0, "{h}");
    assert_eq!(h["score"], 100, "{h}");
}

#[tokio::test]
async fn accounts_without_quota_evidence_still_get_traffic_under_quota_first() {
    // The control plane never polls usage and the usage endpoint would not answer anyway:
    // the only evidence is what traffic brings back.
    let stack = Stack::start_with(StackOptions::accounts(3).without_quota_polling())
        .await
        .unwrap();
    stack
        .sim
        .behavior(json!({"fail_next": (0..50).map(|_| json!({"status": 503, "path_contains": "/wham/usage"})).collect::<Vec<_>>()}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    for i in 0..30 {
        let resp = stack
            .http
            .post(stack.envoy.url("/backend-api/codex/responses"))
            .bearer_auth(&stack.key)
            .json(&turn_body(&format!("spread {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for turn in stack.sim.turn_requests().await.unwrap() {
        if turn["method"] == "POST" {
            *served
                .entry(turn["account_id"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(served.len(), 3, "every account got traffic: {served:?}");
    assert!(served.values().all(|n| *n >= 5), "{served:?}");
}

#[tokio::test]
async fn an_empty_pool_says_how_to_add_an_account() {
    let stack = Stack::start(1).await.unwrap();
    stack.cp.cli_json(&["pool", "create", "empty"]).unwrap();
    let key = stack
        .cp
        .cli_json(&["key", "create", "--pool", "empty"])
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = stack.turn(&key).await.unwrap();
        if status == 503 {
            assert_eq!(openai_error_code(&body), "no_account_available");
            assert!(body.contains("no accounts yet"), "{body}");
            assert!(
                body.contains("codexmesh account import --pool empty"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other pool is not affected.
    assert_eq!(stack.turn(&stack.key).await.unwrap().0, 200);
    let _ = POOL;
}
