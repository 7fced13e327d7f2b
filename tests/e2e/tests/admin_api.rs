//! The admin API over real traffic: requests through Envoy (with a failover) show up in the
//! activity report (per account: requests, success rate, health, fallbacks, latency, timeline),
//! the quota windows, the request log and the connected Envoy with the version it runs.

use std::time::{Duration, Instant};

use codexmesh_test_kit::{Stack, StackOptions, POOL};
use serde_json::{json, Value};

async fn get(stack: &Stack, token: &str, path: &str) -> (u16, Value) {
    let admin = stack.cp.admin_addr.expect("admin address");
    let resp = stack
        .http
        .get(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn account<'a>(activity: &'a Value, label: &str) -> &'a Value {
    activity["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"] == label)
        .unwrap_or_else(|| panic!("{label} not in {activity}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_quota_and_envoys_follow_real_traffic() {
    let stack = Stack::start_with(StackOptions::accounts(2).without_quota_polling())
        .await
        .unwrap();
    stack.priority_order(&["acct-0", "acct-1"]).unwrap();
    let token = stack
        .cp
        .cli_json(&[
            "operator", "token", "create", "--label", "dash", "--role", "viewer", "--pools", POOL,
        ])
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Three turns on acct-0; then it is spent: the next turn fails over to acct-1 (a 429 on
    // acct-0, then acct-1), and the one after goes to acct-1 directly (acct-0 cools down).
    for _ in 0..3 {
        assert_eq!(stack.turn(&stack.key).await.unwrap().0, 200);
    }
    stack
        .sim
        .patch_account(&stack.account_id(0), json!({"primary_limit": 0}))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(stack.turn(&stack.key).await.unwrap().0, 200);
    }

    // Outcomes arrive with the filter's next report: wait (bounded) until all are counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let activity = loop {
        let (code, v) = get(
            &stack,
            &token,
            &format!("/api/v1/pools/{POOL}/activity?since=1h"),
        )
        .await;
        assert_eq!(code, 200, "{v}");
        let a1 = account(&v, "acct-1");
        if a1["fallbacks"].as_u64() >= Some(1) && a1["requests"].as_u64() >= Some(2) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "fallbacks never reached the activity: {v}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let a0 = account(&activity, "acct-0");
    let a1 = account(&activity, "acct-1");
    // acct-0 served its three (plus the stack's start-up turn) and refused one with a 429.
    assert!(a0["succeeded"].as_u64() >= Some(3), "{a0}");
    assert_eq!(a0["rate_limited"].as_u64(), Some(1), "{a0}");
    assert_eq!(a0["fallbacks"].as_u64(), Some(0), "{a0}");
    assert_eq!(a1["fallbacks"].as_u64(), Some(1), "{a1}");
    let rate = a0["success_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 1.0, "{a0}");
    assert_eq!(a1["succeeded"].as_u64(), a1["requests"].as_u64(), "{a1}");
    assert_eq!(a1["success_rate"].as_f64(), Some(1.0), "{a1}");
    for a in [a0, a1] {
        let (p50, p99) = (
            a["latency_p50_ms"].as_i64().unwrap(),
            a["latency_p99_ms"].as_i64().unwrap(),
        );
        assert!(p50 >= 0 && p99 >= p50, "{a}");
        assert!(a["health"].as_u64().is_some_and(|h| h <= 100), "{a}");
        // The timeline holds every request, in the last bucket(s) of the hour.
        let buckets = a["buckets"].as_array().unwrap();
        assert_eq!(
            buckets.len(),
            activity["total"]["buckets"].as_array().unwrap().len()
        );
        let sum: u64 = buckets
            .iter()
            .map(|b| b["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(Some(sum), a["requests"].as_u64(), "{a}");
        assert_eq!(
            buckets[..buckets.len() - 2]
                .iter()
                .map(|b| b["requests"].as_u64().unwrap())
                .sum::<u64>(),
            0
        );
    }
    assert_eq!(
        activity["total"]["requests"].as_u64(),
        Some(a0["requests"].as_u64().unwrap() + a1["requests"].as_u64().unwrap())
    );
    // The account view says the same about one account.
    let (code, one) = get(&stack, &token, "/api/v1/accounts/acct-1/activity?since=1h").await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["accounts"][0]["fallbacks"], a1["fallbacks"]);

    // The quota windows carry the 429's evidence: acct-0's 5-hour window is spent, with a reset.
    let (code, quota) = get(&stack, &token, &format!("/api/v1/quota?pool={POOL}")).await;
    assert_eq!(code, 200, "{quota}");
    let q0 = quota
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["label"] == "acct-0")
        .unwrap();
    assert!(
        q0["primary"]["used_percent"].as_f64() >= Some(100.0),
        "{q0}"
    );
    assert!(q0["primary"]["resets_at_unix"].as_i64() > Some(0), "{q0}");

    // The Envoy is listed with the version it was sent and the one its reports ran on.
    let (code, envoys) = get(&stack, &token, "/api/v1/envoys").await;
    assert_eq!(code, 200, "{envoys}");
    let list = envoys.as_array().unwrap();
    assert_eq!(list.len(), 1, "{envoys}");
    let running = list[0]["running_version"].as_u64().unwrap();
    let sent = list[0]["sent_version"].as_u64().unwrap();
    assert!(running >= 1 && sent >= running, "{envoys}");
    let (_, status) = get(&stack, &token, "/api/v1/status").await;
    assert!(status["revision"].as_u64() >= Some(sent), "{status}");

    // The request log pages backwards with `before`.
    let (_, first) = get(&stack, &token, "/api/v1/requests?limit=2").await;
    let last_id = first[1]["id"].as_i64().unwrap();
    let (_, next) = get(
        &stack,
        &token,
        &format!("/api/v1/requests?limit=2&before={last_id}"),
    )
    .await;
    assert!(next[0]["id"].as_i64().unwrap() < last_id, "{next}");
}
