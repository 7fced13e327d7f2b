//! Account evidence through the data path: passive quota from the answers' headers, a spent
//! window coming back by itself, and a 401 leading to a forced refresh and the account's return.

use std::time::{Duration, Instant};

use codexmesh_test_kit::{turn_body, Stack, StackOptions};
use serde_json::{json, Value};

fn account_status(status: &Value, label: &str) -> Value {
    status["pools"][0]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"] == label)
        .cloned()
        .unwrap_or_else(|| panic!("{label} not in status: {status}"))
}

/// Polls `check` on `codexmesh status --json` until it holds (bounded).
async fn wait_for_status(stack: &Stack, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = stack.cp.cli_json(&["status"]).unwrap();
        if check(&status) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_headers_on_answers_reach_the_control_plane() {
    // Polling off: whatever the control plane knows comes from the filter's reports.
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({"primary_limit": 10, "secondary_limit": 100})],
        cp_env: vec![("CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(), "0".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    for _ in 0..3 {
        let (status, _) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200);
    }
    // Stack::start's warm-up turn plus these three: 4 of 10 → 40 %.
    let status = wait_for_status(&stack, "passive quota never arrived", |s| {
        let a = account_status(s, "acct-0");
        a["quota"]["primary"]["observed_used_percent"].as_f64() == Some(40.0)
    })
    .await;
    let acct = account_status(&status, "acct-0");
    let primary = &acct["quota"]["primary"];
    assert_eq!(primary["source"], "headers", "{primary}");
    assert_eq!(primary["window_minutes"], 300);
    assert!(primary["resets_at_unix"].as_i64().unwrap() > 0);
    let secondary = &acct["quota"]["secondary"];
    assert_eq!(
        secondary["observed_used_percent"].as_f64(),
        Some(4.0),
        "{secondary}"
    );
    assert!(
        acct["counters"]["requests"].as_u64().unwrap() >= 4,
        "{acct}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_window_comes_back_by_itself_when_it_resets() {
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({"primary_limit": 2, "primary_window_secs": 6})],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    // The warm-up spent 1 of 2; one more and the window is gone.
    let (status, _) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200);
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "usage_limit_reached");
    // Nobody does anything: after the reset the account serves again.
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the window never came back"
        );
    }
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "came back before its reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_forces_one_refresh_and_the_account_comes_back_with_its_new_token() {
    let stack = Stack::start(2).await.unwrap();
    let dead = stack.account_id(0);
    let old_token = stack.access_token(0);
    stack
        .sim
        .patch_account(&dead, json!({"expire_access_token": true}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    // Sessions spread over both accounts; the dead one's 401s fail over invisibly.
    for i in 0..10 {
        let session = format!("s401-{i}");
        let resp = stack
            .post_turn(&stack.key, Some(&session), &turn_body("x"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    // The control plane refreshes that account once and pushes the new token.
    let start = Instant::now();
    let new_token = loop {
        let acct = stack.sim.account(&dead).await.unwrap();
        if acct["refresh_successes"].as_u64() == Some(1) {
            break acct["access_token"].as_str().unwrap().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refresh after the 401: {acct}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new_token, old_token);
    // The account serves again, with the new token.
    let start = Instant::now();
    loop {
        stack.sim.clear_requests().await.unwrap();
        for i in 0..10 {
            let session = format!("s401-{i}");
            let resp = stack
                .post_turn(&stack.key, Some(&session), &turn_body("x"))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap();
        }
        let turns = stack.sim.turn_requests().await.unwrap();
        let back = turns
            .iter()
            .any(|t| t["account_id"] == dead.as_str() && t["status"] == 200);
        if back {
            let used_new = turns
                .iter()
                .filter(|t| t["account_id"] == dead.as_str())
                .all(|t| {
                    t["headers"]["authorization"].as_str()
                        == Some(format!("Bearer {new_token}").as_str())
                });
            assert!(used_new, "the old token is still in use");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the refreshed account never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acct = stack.sim.account(&dead).await.unwrap();
    assert_eq!(
        acct["refresh_calls"].as_u64(),
        Some(1),
        "one forced refresh per token generation"
    );
}
