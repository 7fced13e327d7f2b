//! Account lifecycle through real Envoy: tokens refreshed ahead of expiry reach the data path
//! with no failed client request, and health drops under upstream failures and recovers.

use std::time::{Duration, Instant};

use codexmesh_test_kit::{turn_body, Stack, StackOptions};
use serde_json::{json, Value};

fn setting(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The account labelled `label` in `codexmesh status --json`.
fn status_account(stack: &Stack, label: &str) -> Value {
    let status = stack.cp.cli_json(&["status"]).unwrap();
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["accounts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["label"] == label)
        .unwrap_or_else(|| panic!("no account {label} in {status}"))
}

/// One turn in its own session (so affinity spreads turns over the accounts).
async fn session_turn(stack: &Stack, session: &str) -> (u16, String) {
    let resp = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .header("accept", "text/event-stream")
        .header("session-id", session)
        .json(&turn_body("hi"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn bearer(req: &Value) -> String {
    req["headers"]["authorization"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_expiry_without_a_failed_request() {
    // A 16 s access token and a 12 s lead: refreshed half way through its life (8 s), and
    // every later token likewise, long before it lapses.
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({"access_token_ttl_secs": 16})],
        cp_env: vec![
            setting("CODEXMESH_REFRESH_LEAD_SECS", "12"),
            setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0"),
        ],
        sim_behavior: None,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let id = stack.account_id(0);
    let first_token = stack.access_token(0);
    let first_expiry = stack.accounts[0]["access_token_expires_at"]
        .as_i64()
        .unwrap();
    let before = status_account(&stack, "acct-0");
    stack.sim.clear_requests().await.unwrap();

    // Requests all the way past the first token's expiry, while the refresh happens.
    let started = Instant::now();
    let mut sent = 0;
    let mut past_expiry = false;
    // Bounded: 45 s, at most one request per 200 ms.
    for _ in 0..250 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "request {sent} failed: {body}");
        sent += 1;
        let refreshed = stack.sim.account(&id).await.unwrap()["refresh_successes"]
            .as_u64()
            .unwrap_or(0);
        if refreshed >= 1 && unix_now() > first_expiry + 2 {
            past_expiry = true;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "no refresh before the token lapsed (sent {sent})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(past_expiry, "stopped before the first token lapsed");
    let sim_state = stack.sim.account(&id).await.unwrap();
    assert_eq!(sim_state["revoked"], false);
    let calls = sim_state["refresh_calls"].as_u64().unwrap();
    assert!(
        (1..=3).contains(&calls),
        "refreshed on time, not in a loop: {calls}"
    );
    // The last requests went out with a refreshed token.
    let turns = stack.sim.turn_requests().await.unwrap();
    assert!(turns.iter().all(|t| t["status"] == 200));
    let last = bearer(turns.last().unwrap());
    assert_ne!(
        last, first_token,
        "the data path still used the first token"
    );
    let after = status_account(&stack, "acct-0");
    assert!(after["token_revision"].as_i64() > before["token_revision"].as_i64());
    assert_eq!(after["state"], "active");
    assert!(after["last_refresh_at_ms"].as_i64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_drops_under_upstream_failures_and_recovers() {
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({}), json!({})],
        cp_env: vec![
            setting("CODEXMESH_HEALTH_WINDOW_SECS", "8"),
            setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0"),
        ],
        sim_behavior: None,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let sick = stack.account_id(0);
    let failures: Vec<Value> = (0..6)
        .map(|_| json!({"status": 503, "account_id": sick}))
        .collect();
    stack
        .sim
        .behavior(json!({"fail_next": failures}))
        .await
        .unwrap();

    // The client never sees the failures: the other account serves them.
    for i in 0..16 {
        let (status, body) = session_turn(&stack, &format!("s-{i}")).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let failed_turns = stack
        .sim
        .turn_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t["status"] == 503)
        .count();
    assert!(failed_turns >= 1, "no injected failure was hit");

    // Reports reach the control plane in batches: the score drops.
    let deadline = Instant::now() + Duration::from_secs(15);
    let low = loop {
        let a = status_account(&stack, "acct-0");
        if a["health"]["score"].as_u64().unwrap() < 70 {
            break a;
        }
        assert!(Instant::now() < deadline, "health did not drop: {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(low["health"]["failures"].as_u64().unwrap() >= 1, "{low}");
    assert!(low["health"]["published"].as_u64().unwrap() <= 100);
    let fine = status_account(&stack, "acct-1");
    assert_eq!(fine["health"]["score"], 100, "{fine}");
    assert!(
        fine["counters"]["successes"].as_u64().unwrap() >= 12,
        "{fine}"
    );
    assert!(
        fine["counters"]["fallbacks_served"].as_u64().unwrap() >= 1,
        "the healthy account served the failed-over requests: {fine}"
    );

    // Without further failures the score climbs back as they leave the window.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut recovered = false;
    for i in 0..60 {
        let (status, body) = session_turn(&stack, &format!("r-{i}")).await;
        assert_eq!(status, 200, "{body}");
        let a = status_account(&stack, "acct-0");
        if a["health"]["score"] == 100 && a["health"]["published"] == 100 {
            recovered = true;
            break;
        }
        assert!(Instant::now() < deadline, "health did not recover: {a}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "health did not recover");
}
