//! One login in two pools: one account, one refresh-token lineage, one refresher. Traffic is
//! served from both pools, refreshes are forced from both sides (the CLI, a 401 through each
//! pool, the scheduler), and every refresh is exactly one token call: the simulator never sees
//! a consumed refresh token again (it would answer `refresh_token_reused` and revoke the login).

use std::time::{Duration, Instant};

use codexmesh_test_kit::{Stack, StackOptions, POOL};
use serde_json::{json, Value};

const SECOND: &str = "second";

fn setting(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// The simulator's refresh counters for the login: (token calls, successful ones, revoked).
async fn refreshes(stack: &Stack, id: &str) -> (u64, u64, bool) {
    let a = stack.sim.account(id).await.unwrap();
    (
        a["refresh_calls"].as_u64().unwrap(),
        a["refresh_successes"].as_u64().unwrap(),
        a["revoked"].as_bool().unwrap(),
    )
}

/// Waits until the simulator has seen `calls` token calls, all successful, and the lineage is
/// alive; then a moment longer, to catch a duplicate call.
async fn expect_refreshes(stack: &Stack, id: &str, calls: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (n, ok, revoked) = refreshes(stack, id).await;
        assert!(
            !revoked,
            "{what}: the login was revoked (a refresh token was replayed)"
        );
        assert_eq!(n, ok, "{what}: a token call failed (refresh_token_reused?)");
        assert!(n <= calls, "{what}: {n} token calls, expected {calls}");
        if n == calls {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} token calls, expected {calls}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(refreshes(stack, id).await, (calls, calls, false), "{what}");
}

/// Turns through both pools' keys all answer 200.
async fn serve_both(stack: &Stack, second_key: &str, n: usize) {
    for i in 0..n {
        for (pool, key) in [(POOL, stack.key.as_str()), (SECOND, second_key)] {
            let (status, body) = stack.turn(key).await.unwrap();
            assert_eq!(status, 200, "turn {i} through pool {pool}: {body}");
        }
    }
}

/// The control plane's view of the account: one account, both pools, no reauth.
fn account_view(stack: &Stack) -> Value {
    let list = stack.cp.cli_json(&["account", "list"]).unwrap();
    let accounts = list.as_array().unwrap();
    assert_eq!(accounts.len(), 1, "one account for one login: {list}");
    let a = accounts[0].clone();
    let pools: Vec<&str> = a["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["pool"].as_str().unwrap())
        .collect();
    assert_eq!(pools, [SECOND, POOL], "{a}");
    assert_eq!(a["state"], "active", "{a}");
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_in_two_pools_refreshes_once_per_refresh() {
    let stack = Stack::start_with(
        StackOptions {
            accounts: vec![json!({})],
            // A 12 s lead: a token with a 16 s life is refreshed 4 s after it was issued.
            cp_env: vec![setting("CODEXMESH_REFRESH_LEAD_SECS", "12")],
            sim_behavior: None,
            ..StackOptions::default()
        }
        .without_quota_polling(),
    )
    .await
    .unwrap();
    let sim_id = stack.account_id(0);

    // The same auth.json into a second pool: the login joins it, no second lineage.
    stack.cp.cli_json(&["pool", "create", SECOND]).unwrap();
    let path = stack.dir.path().join("acct-0.auth.json");
    let imported = stack
        .cp
        .cli_json(&[
            "account",
            "import",
            path.to_str().unwrap(),
            "--pool",
            SECOND,
        ])
        .unwrap();
    assert_eq!(imported["action"], "updated", "{imported}");
    assert_eq!(imported["joined_pool"], true, "{imported}");
    let id = imported["account"]["id"].as_str().unwrap().to_string();
    let second_key = stack
        .cp
        .cli_json(&["key", "create", "--pool", SECOND])
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    stack
        .wait_until_serving(&second_key, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(account_view(&stack)["id"], id.as_str());
    serve_both(&stack, &second_key, 5).await;
    assert_eq!(refreshes(&stack, &sim_id).await, (0, 0, false));

    // 1. The CLI, by label and by id: one token call each.
    stack
        .cp
        .cli_json(&["account", "refresh", "acct-0"])
        .unwrap();
    expect_refreshes(&stack, &sim_id, 1, "account refresh by label").await;
    stack.cp.cli_json(&["account", "refresh", &id]).unwrap();
    expect_refreshes(&stack, &sim_id, 2, "account refresh by id").await;
    stack
        .wait_until_serving(&stack.key, Duration::from_secs(20))
        .await
        .unwrap();
    serve_both(&stack, &second_key, 3).await;

    // 2. A 401 through each pool: the token the upstream refuses is refreshed once.
    for (pool, key, calls) in [
        (POOL, stack.key.clone(), 3),
        (SECOND, second_key.clone(), 4),
    ] {
        stack
            .sim
            .patch_account(&sim_id, json!({"expire_access_token": true}))
            .await
            .unwrap();
        // The 401 (the only account of the pool, so the client may see it) reaches the
        // control plane, which refreshes; the other pool's key meets the same account.
        let _ = stack.turn(&key).await.unwrap();
        let _ = stack
            .turn(if pool == POOL {
                &second_key
            } else {
                &stack.key
            })
            .await
            .unwrap();
        expect_refreshes(
            &stack,
            &sim_id,
            calls,
            &format!("a 401 through pool {pool}"),
        )
        .await;
        stack
            .wait_until_serving(&key, Duration::from_secs(20))
            .await
            .unwrap();
        stack
            .wait_until_serving(&second_key, Duration::from_secs(20))
            .await
            .unwrap();
        serve_both(&stack, &second_key, 3).await;
    }

    // 3. The scheduler: tokens from now on live 16 s, so each is refreshed ~4 s after issue.
    stack
        .sim
        .patch_account(&sim_id, json!({"access_token_ttl_secs": 16}))
        .await
        .unwrap();
    stack
        .cp
        .cli_json(&["account", "refresh", "acct-0"])
        .unwrap();
    expect_refreshes(&stack, &sim_id, 5, "refresh to a short-lived token").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(11) {
        serve_both(&stack, &second_key, 1).await;
        let (calls, ok, revoked) = refreshes(&stack, &sim_id).await;
        assert!(
            !revoked && calls == ok,
            "scheduled refresh: {calls} calls, {ok} ok"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (calls, ok, revoked) = refreshes(&stack, &sim_id).await;
    assert!(!revoked && calls == ok, "{calls} calls, {ok} ok");
    // ~2 scheduled refreshes in 11 s (one per 4 s token generation), never two per generation.
    assert!(
        (6..=9).contains(&calls),
        "scheduled refreshes: {calls} token calls in total"
    );

    // The control plane agrees: one active account in both pools, never needing reauth.
    let a = account_view(&stack);
    assert!(a["state_reason"].is_null(), "{a}");
    let log = stack.cp.proc().unwrap().log_text();
    assert!(
        !log.contains("refresh_token_reused"),
        "control plane log mentions a replay"
    );
}
