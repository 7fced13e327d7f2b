//! Pools' client allowlists through real Envoy: a pool allowlisted to the test's own address
//! (127.0.0.1) serves, one allowlisted to 10.0.0.0/8 answers `403 client_address_not_allowed`
//! before anything reaches the upstream (the simulator's request log is the witness), a
//! forged `X-Forwarded-For` from an untrusted peer changes nothing, and with the gateway
//! trusting 127.0.0.1 as a proxy (`gateway_trusted_proxies`) the forwarded address decides,
//! walked from the right.

use std::time::Duration;

use codexmesh_test_kit::stack::POOL;
use codexmesh_test_kit::wait::{self, Probe};
use codexmesh_test_kit::{openai_error_code, turn_body, Stack, StackOptions};

/// One turn with `key` and these `X-Forwarded-For` values: status and body.
async fn turn(stack: &Stack, key: &str, forwarded_for: &[&str]) -> (u16, String) {
    let mut req = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .json(&turn_body("ping"));
    for value in forwarded_for {
        req = req.header("x-forwarded-for", *value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Sets the pool's allowlist with the CLI and waits until Envoy applies it (a turn from
/// `probe_xff` answers `want`).
async fn allow(
    stack: &Stack,
    pool: &str,
    key: &str,
    cidrs: &[&str],
    probe_xff: &[&str],
    want: u16,
) {
    let mut args = vec!["pool", "set-network", pool];
    for c in cidrs {
        args.extend(["--allow-cidr", c]);
    }
    stack.cp.cli_json(&args).unwrap();
    wait::until_async(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the allowlist to reach Envoy",
        || async {
            let (status, body) = turn(stack, key, probe_xff).await;
            Ok(if status == want {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{status} {body}"))
            })
        },
    )
    .await
    .unwrap();
}

fn assert_refused(status: u16, body: &str, client: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(openai_error_code(body), "client_address_not_allowed");
    assert!(body.contains(client), "the refusal names {client}: {body}");
}

/// Paths the upstream stand-in received since the last clear.
async fn upstream_paths(stack: &Stack) -> Vec<String> {
    stack
        .sim
        .requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_allowlist_admits_its_clients_and_refuses_others_before_the_upstream() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    // A second pool with the same account and its own key.
    stack.cp.cli_json(&["pool", "create", "lan"]).unwrap();
    stack
        .cp
        .cli_json(&["account", "join", "acct-0", "--pool", "lan"])
        .unwrap();
    let lan_key = stack
        .cp
        .cli_json(&["key", "create", "--pool", "lan"])
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    stack
        .wait_until_serving(&lan_key, Duration::from_secs(20))
        .await
        .unwrap();

    allow(&stack, POOL, &stack.key, &["127.0.0.1/32"], &[], 200).await;
    allow(&stack, "lan", &lan_key, &["10.0.0.0/8"], &[], 403).await;

    stack.sim.clear_requests().await.unwrap();
    let (status, body) = turn(&stack, &lan_key, &[]).await;
    assert_refused(status, &body, "127.0.0.1");
    // A forged X-Forwarded-For from an untrusted peer is not read.
    for forged in [
        &["10.1.2.3"][..],
        &["10.1.2.3, 10.4.5.6"],
        &["10.1.2.3", "10.9.9.9"],
    ] {
        let (status, body) = turn(&stack, &lan_key, forged).await;
        assert_refused(status, &body, "127.0.0.1");
    }
    // The gateway's own answers are the pool's too: refused alike.
    let usage = stack
        .http
        .get(stack.envoy.url("/backend-api/wham/usage"))
        .bearer_auth(&lan_key)
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status().as_u16(), 403);
    assert!(
        upstream_paths(&stack).await.is_empty(),
        "a refused client reached the upstream"
    );

    // The allowlisted pool serves from the same address, with or without a forged header.
    let (status, body) = turn(&stack, &stack.key, &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = turn(&stack, &stack.key, &["203.0.113.9"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream_paths(&stack).await.len(), 2);

    // Cleared: any address again.
    stack
        .cp
        .cli_json(&["pool", "set-network", "lan", "--clear-allowed-cidrs"])
        .unwrap();
    stack
        .wait_until_serving(&lan_key, Duration::from_secs(20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_address_decides() {
    let mut opts = StackOptions::accounts(1).without_quota_polling();
    opts.cp_env.push((
        "CODEXMESH_GATEWAY_TRUSTED_PROXIES".into(),
        "127.0.0.1/32".into(),
    ));
    let stack = Stack::start_with(opts).await.unwrap();
    let key = stack.key.clone();
    allow(
        &stack,
        POOL,
        &key,
        &["10.0.0.0/8", "2001:db8::/32"],
        &[],
        403,
    )
    .await;

    stack.sim.clear_requests().await.unwrap();
    // The proxy without a header is the client itself: not allowed.
    let (status, body) = turn(&stack, &key, &[]).await;
    assert_refused(status, &body, "127.0.0.1");
    let (status, body) = turn(&stack, &key, &["203.0.113.5"]).await;
    assert_refused(status, &body, "203.0.113.5");
    // Walked from the right: the first untrusted entry is the client, not the leftmost.
    let (status, body) = turn(&stack, &key, &["10.1.2.3, 203.0.113.5"]).await;
    assert_refused(status, &body, "203.0.113.5");
    let (status, body) = turn(&stack, &key, &["10.1.2.3", "203.0.113.5"]).await;
    assert_refused(status, &body, "203.0.113.5");
    // A malformed hop stops at the last trusted one (the proxy).
    let (status, body) = turn(&stack, &key, &["10.1.2.3, bogus"]).await;
    assert_refused(status, &body, "127.0.0.1");
    assert!(upstream_paths(&stack).await.is_empty());

    for admitted in [
        &["10.1.2.3"][..],
        &["203.0.113.5, 10.1.2.3"],
        &["10.7.7.7, 127.0.0.1"],
        &["[2001:db8::7]:443"],
    ] {
        let (status, body) = turn(&stack, &key, admitted).await;
        assert_eq!(status, 200, "{admitted:?}: {body}");
    }
    assert_eq!(upstream_paths(&stack).await.len(), 4);
}
