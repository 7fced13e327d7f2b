//! Invites through real Envoy (issue 15): a key redeemed from an invite on the control plane's
//! open API serves a Codex turn through the gateway; the invite's second redemption is refused
//! (one use), and a revoked invite mints nothing.

use std::time::Duration;

use codexmesh_test_kit::{Stack, POOL};
use serde_json::{json, Value};

async fn redeem(stack: &Stack, code: &str, name: &str) -> (u16, Value) {
    let admin = stack.cp.admin_addr.expect("serve has an admin address");
    let resp = stack
        .http
        .post(format!("http://{admin}/api/v1/invites/redeem"))
        .json(&json!({"code": code, "name": name}))
        .send()
        .await
        .expect("redeem request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeemed_invite_key_serves_through_envoy() {
    let stack = Stack::start(1).await.expect("stack");
    let created = stack
        .cp
        .cli_json(&[
            "invite", "create", "--pool", POOL, "--uses", "1", "--label", "e2e",
        ])
        .expect("invite create");
    let code = created["code"].as_str().expect("code").to_owned();

    let (status, reply) = redeem(&stack, &code, "friend").await;
    assert_eq!(status, 201, "{reply}");
    let key = reply["secret"].as_str().expect("secret").to_owned();
    assert!(key.starts_with("cmk_"), "{reply}");

    // The next snapshot carries the new key: the gateway serves it.
    stack
        .wait_until_serving(&key, Duration::from_secs(20))
        .await
        .expect("the redeemed key serves");
    let (status, body) = stack.turn(&key).await.expect("turn");
    assert_eq!(status, 200, "{body}");

    // One use: the second redemption is refused and mints nothing.
    let (status, reply) = redeem(&stack, &code, "another").await;
    assert_eq!(status, 409, "{reply}");
    let keys = stack
        .cp
        .cli_json(&["key", "list", "--pool", POOL])
        .expect("key list");
    let labels: Vec<&str> = keys
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["label"].as_str())
        .collect();
    assert_eq!(
        labels.iter().filter(|l| **l == "friend").count(),
        1,
        "{keys}"
    );
    assert!(!labels.contains(&"another"), "{keys}");

    // Revoked: refused.
    let second = stack
        .cp
        .cli_json(&["invite", "create", "--pool", POOL, "--label", "e2e-2"])
        .expect("invite create");
    stack
        .cp
        .cli(&["invite", "revoke", "e2e-2"])
        .expect("invite revoke");
    let (status, reply) = redeem(&stack, second["code"].as_str().expect("code"), "late").await;
    assert_eq!(status, 409, "{reply}");
}
