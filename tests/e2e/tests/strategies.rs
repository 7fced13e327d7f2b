//! Each routing strategy's behaviour over many requests, through real Envoy, set with the CLI.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use codexmesh_test_kit::{turn_body, Stack, StackOptions, POOL};
use serde_json::{json, Value};

/// Sends `n` turns without session headers or cache keys (pure strategy), `concurrency` at a
/// time; returns how many each account served (by simulator account id).
async fn distribution(stack: &Stack, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
    stack.sim.clear_requests().await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let body = turn_body("x");
    let mut sent = 0;
    while sent < n {
        let batch = concurrency.min(n - sent);
        let mut tasks = Vec::new();
        for _ in 0..batch {
            let req = stack.http.post(&url).bearer_auth(&stack.key).json(&body);
            tasks.push(tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                resp.text().await.unwrap();
                status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        sent += batch;
    }
    let mut counts = BTreeMap::new();
    for r in stack.sim.turn_requests().await.unwrap() {
        if r["status"] == 200 {
            *counts
                .entry(r["account_id"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Applies routing settings with the CLI and waits until the data path has them (a snapshot
/// with a newer version reaches Envoy within a second; give it two).
async fn set_routing(stack: &Stack, args: &[&str]) -> Value {
    let mut all = vec!["pool", "set-routing", POOL];
    all.extend_from_slice(args);
    let out = stack.cp.cli_json(&all).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even_within_one_percent_over_1000_requests() {
    let stack = Stack::start(4).await.unwrap();
    set_routing(&stack, &["--strategy", "round_robin"]).await;
    let counts = distribution(&stack, 1000, 4).await;
    assert_eq!(counts.values().sum::<usize>(), 1000);
    assert_eq!(counts.len(), 4, "{counts:?}");
    for (account, n) in &counts {
        // 250 each, ±1 % of the 1000 requests.
        assert!((240..=260).contains(n), "{account}: {n} ({counts:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_scale_round_robin() {
    let stack = Stack::start(2).await.unwrap();
    set_routing(&stack, &["--strategy", "round_robin"]).await;
    stack
        .cp
        .cli_json(&["account", "set", "acct-1", "--weight", "3"])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts = distribution(&stack, 400, 4).await;
    let heavy = counts.get(&stack.account_id(1)).copied().unwrap_or(0);
    assert!((290..=310).contains(&heavy), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_first_prefers_headroom() {
    // Account 0 is already 80 % used, account 1 30 %, account 2 fresh.
    let stack = Stack::start_with(StackOptions {
        accounts: vec![
            json!({"primary_limit": 1000}),
            json!({"primary_limit": 1000}),
            json!({"primary_limit": 1000}),
        ],
        cp_env: vec![("CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(), "1".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    for i in 0..3 {
        let used = [800, 300, 0][i];
        stack
            .sim
            .patch_account(&stack.account_id(i), json!({"primary_used": used}))
            .await
            .unwrap();
    }
    set_routing(&stack, &["--strategy", "quota_first"]).await;
    // Let the quota evidence (poll and headers) reach the snapshot.
    let start = Instant::now();
    loop {
        let status = stack.cp.cli_json(&["status"]).unwrap();
        let known = status["pools"][0]["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| !a["quota"].is_null())
            .count();
        if known == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "quota never known: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let counts = distribution(&stack, 1000, 4).await;
    let fresh = counts.get(&stack.account_id(2)).copied().unwrap_or(0);
    let busy = counts.get(&stack.account_id(0)).copied().unwrap_or(0);
    // Each turn costs 0.1 % of a window. The fresh account serves alone until it is as used as
    // the 30 % one (300 turns), then the two share the rest: 650 / 350. Each Envoy sees its own
    // answers' quota headers at once, so this holds however late the control plane is.
    assert!(
        (620..=680).contains(&fresh),
        "most traffic goes to the most headroom: {counts:?}"
    );
    assert!(busy < 20, "the 80 %-used account is spared: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_first_stays_on_the_owner_until_it_fails() {
    let stack = Stack::start(3).await.unwrap();
    set_routing(
        &stack,
        &["--strategy", "primary_first", "--primary", "acct-2"],
    )
    .await;
    let counts = distribution(&stack, 200, 4).await;
    assert_eq!(counts.get(&stack.account_id(2)), Some(&200), "{counts:?}");
    // The owner starts failing: traffic moves, and nobody sees an error.
    let fail = json!({"status": 503, "account_id": stack.account_id(2), "body": {"error": {"code": "server_is_overloaded", "message": "busy"}}});
    stack
        .sim
        .behavior(json!({"fail_next": vec![fail; 5]}))
        .await
        .unwrap();
    let counts = distribution(&stack, 100, 1).await;
    assert_eq!(counts.values().sum::<usize>(), 100);
    let owner = counts.get(&stack.account_id(2)).copied().unwrap_or(0);
    assert!(owner < 100, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_switches_on_error() {
    let stack = Stack::start(3).await.unwrap();
    set_routing(&stack, &["--strategy", "priority_order"]).await;
    for (label, prio) in [("acct-0", "3"), ("acct-1", "1"), ("acct-2", "2")] {
        stack
            .cp
            .cli_json(&["account", "set", label, "--priority", prio])
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts = distribution(&stack, 100, 2).await;
    assert_eq!(counts.get(&stack.account_id(1)), Some(&100), "{counts:?}");
    // The first in order is spent: the next in order takes over at once, invisibly.
    stack
        .sim
        .patch_account(&stack.account_id(1), json!({"primary_used": 1_000_000}))
        .await
        .unwrap();
    let counts = distribution(&stack, 50, 1).await;
    assert_eq!(counts.get(&stack.account_id(2)), Some(&50), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_can_override_its_pools_routing() {
    let stack = Stack::start(3).await.unwrap();
    set_routing(&stack, &["--strategy", "round_robin"]).await;
    let created = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL])
        .unwrap();
    let id = created["id"].as_str().unwrap();
    stack
        .cp
        .cli_json(&[
            "key",
            "set-routing",
            id,
            "--strategy",
            "primary_first",
            "--primary",
            "acct-0",
        ])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..20 {
        let resp = stack
            .post_turn(created["key"].as_str().unwrap(), None, &turn_body("x"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    let served: Vec<Value> = stack.sim.turn_requests().await.unwrap();
    assert!(served
        .iter()
        .all(|r| r["account_id"] == stack.account_id(0).as_str()));
    // Back to inherit: round robin again.
    stack
        .cp
        .cli_json(&["key", "set-routing", id, "--inherit"])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..9 {
        let resp = stack
            .post_turn(created["key"].as_str().unwrap(), None, &turn_body("x"))
            .await
            .unwrap();
        resp.text().await.unwrap();
    }
    let accounts: std::collections::BTreeSet<String> = stack
        .sim
        .turn_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r["account_id"].to_string())
        .collect();
    assert_eq!(accounts.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_can_explain_routes_to_every_key() {
    let stack = Stack::start(2).await.unwrap();
    let resp = stack
        .post_turn(&stack.key, Some("e-1"), &turn_body("x"))
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("x-codexmesh-route"));
    resp.text().await.unwrap();
    let routing = set_routing(&stack, &["--explain", "true"]).await;
    assert_eq!(routing["explain_routes"], true, "{routing}");
    let resp = stack
        .post_turn(&stack.key, Some("e-1"), &turn_body("x"))
        .await
        .unwrap();
    let route = resp.headers()["x-codexmesh-route"]
        .to_str()
        .unwrap()
        .to_string();
    resp.text().await.unwrap();
    assert!(
        route.contains("strategy=") && route.contains("reason=affinity"),
        "{route}"
    );
}
