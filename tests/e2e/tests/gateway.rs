//! The spine, end to end: real Envoy + the built wasm module + `codexmesh serve` + the simulator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use codexmesh_test_kit::{openai_error_code, sse, turn_body, Envoy, Stack, POOL};
use serde_json::{json, Value};

fn header<'a>(req: &'a Value, name: &str) -> Option<&'a str> {
    req["headers"][name].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_request_reaches_upstream_with_the_accounts_credentials() {
    let stack = Stack::start(1).await.unwrap();
    stack.sim.clear_requests().await.unwrap();
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("response.completed"), "{body}");

    let reqs = stack.sim.turn_requests().await.unwrap();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let req = &reqs[0];
    assert_eq!(
        header(req, "authorization"),
        Some(format!("Bearer {}", stack.access_token(0)).as_str())
    );
    assert_eq!(
        header(req, "chatgpt-account-id"),
        Some(stack.account_id(0).as_str())
    );
    assert_eq!(
        req["account_id"].as_str(),
        Some(stack.account_id(0).as_str())
    );
    // The pool key never leaves the gateway.
    let all = serde_json::to_string(&reqs).unwrap();
    assert!(!all.contains(&stack.key), "pool key leaked upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_in_the_pool_gets_traffic() {
    let stack = Stack::start(3).await.unwrap();
    stack.sim.clear_requests().await.unwrap();
    for _ in 0..30 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let mut per_account: BTreeMap<String, usize> = BTreeMap::new();
    for req in stack.sim.turn_requests().await.unwrap() {
        *per_account
            .entry(req["account_id"].as_str().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    assert_eq!(per_account.values().sum::<usize>(), 30, "{per_account:?}");
    for i in 0..3 {
        let n = per_account.get(&stack.account_id(i)).copied().unwrap_or(0);
        // Round robin per Envoy worker: each account gets a fair share, not just "some".
        assert!(n >= 5, "account {i} got {n} of 30: {per_account:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_keys_get_401_and_nothing_goes_upstream() {
    let stack = Stack::start(1).await.unwrap();
    let revoked = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL])
        .unwrap();
    let revoked_key = revoked["key"].as_str().unwrap().to_string();
    stack
        .wait_until_serving(&revoked_key, Duration::from_secs(5))
        .await
        .unwrap();
    stack
        .cp
        .cli_json(&["key", "revoke", revoked["id"].as_str().unwrap()])
        .unwrap();

    // Revocation reaches the data path within a second.
    let start = Instant::now();
    loop {
        let (status, body) = stack.turn(&revoked_key).await.unwrap();
        if status == 401 {
            assert_eq!(openai_error_code(&body), "invalid_api_key");
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revocation took over 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // From here on, nothing rejected may reach the upstream.
    stack.sim.clear_requests().await.unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let no_key = stack
        .http
        .post(&url)
        .json(&turn_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(
        no_key.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(
        openai_error_code(&no_key.text().await.unwrap()),
        "invalid_api_key"
    );

    let malformed = stack
        .http
        .post(&url)
        .header("authorization", "Basic Zm9vOmJhcg==")
        .json(&turn_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);

    let (status, body) = stack
        .turn("cmk_notarealkey0000000000000000000000000000")
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(openai_error_code(&body), "invalid_api_key");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let (status, _) = stack.turn(&revoked_key).await.unwrap();
    assert_eq!(status, 401);
    assert!(
        stack.sim.turn_requests().await.unwrap().is_empty(),
        "a rejected request reached the upstream"
    );
    // The pool's good key still works.
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_created_while_running_works_within_one_second() {
    let stack = Stack::start(1).await.unwrap();
    let created = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL])
        .unwrap();
    let key = created["key"].as_str().unwrap();
    let took = stack
        .wait_until_serving(key, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    let stack = Stack::start(1).await.unwrap();
    stack
        .sim
        .behavior(json!({"event_delay_ms": 250, "delta_count": 4}))
        .await
        .unwrap();
    let start = Instant::now();
    let resp = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .header("accept", "text/event-stream")
        .json(&turn_body("stream please"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse::read_events(resp, start, Duration::from_secs(30))
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "response.output_text.delta")
            .count()
            >= 4
    );
    // Buffered delivery would stamp every event with the same arrival time.
    let first = events.first().unwrap().at;
    let last = events.last().unwrap().at;
    assert!(
        last - first >= Duration::from_millis(1000),
        "events arrived in a burst: first {first:?}, last {last:?}"
    );
    let distinct: std::collections::BTreeSet<u128> =
        events.iter().map(|e| e.at.as_millis() / 100).collect();
    assert!(
        distinct.len() >= 4,
        "events were not spread out: {distinct:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted_changes_nothing_for_clients() {
    let mut stack = Stack::start(2).await.unwrap();
    let before = stack.cp.cli_json(&["status"]).unwrap();

    stack.cp.kill();
    for _ in 0..10 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "served from the last snapshot: {body}");
    }

    stack.cp.start().unwrap();
    for _ in 0..5 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // The restarted control plane's changes reach Envoy: versions did not go backwards.
    let created = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL])
        .unwrap();
    let took = stack
        .wait_until_serving(created["key"].as_str().unwrap(), Duration::from_secs(15))
        .await
        .unwrap();
    assert!(took < Duration::from_secs(15));
    let after = stack.cp.cli_json(&["status"]).unwrap();
    assert_eq!(
        before["pools"][0]["accounts"].as_array().map(Vec::len),
        after["pools"][0]["accounts"].as_array().map(Vec::len)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_control_plane_keeps_the_data_path_serving() {
    let stack = Stack::start(1).await.unwrap();
    stack.cp.proc().unwrap().freeze().unwrap();
    for _ in 0..10 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    stack.cp.proc().unwrap().thaw().unwrap();
    let created = stack
        .cp
        .cli_json(&["key", "create", "--pool", POOL])
        .unwrap();
    stack
        .wait_until_serving(created["key"].as_str().unwrap(), Duration::from_secs(20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_can_reach_the_control_plane_by_dns_name() {
    // A container or Kubernetes deployment names the control plane instead of pinning its IP.
    let stack = Stack::start(1).await.unwrap();
    let grpc = stack.cp.grpc_addr.unwrap();
    let by_name = format!("localhost:{}", grpc.port());
    let envoy = Envoy::start_dialing(
        &stack.art,
        &stack.cp,
        grpc,
        Some(&by_name),
        &stack.cp.env.push_token,
        stack.dir.path(),
        "envoy-dns",
    )
    .await
    .unwrap();
    let dump = reqwest::get(format!("http://{}/config_dump", envoy.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        dump.contains("STRICT_DNS"),
        "the control-plane cluster resolves the name"
    );
    stack
        .wait_until_serving_at(&envoy, &stack.key, Duration::from_secs(20))
        .await
        .unwrap();
    // A bad address is refused up front with the flag's meaning, and nothing is written.
    let out = stack
        .cp
        .cli(&[
            "envoy-bootstrap",
            "--out",
            &stack.dir.path().join("bad.yaml").to_string_lossy(),
            "--control-plane",
            "no port",
        ])
        .unwrap();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("HOST:PORT"), "{}", out.stderr);
    assert!(!stack.dir.path().join("bad.yaml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_snapshot_requests_get_503_then_serve_once_it_arrives() {
    let stack = Stack::start(1).await.unwrap();
    // A second Envoy pointed at a control plane that is not there yet.
    let mut cp2 =
        codexmesh_test_kit::ControlPlane::new(&stack.art, stack.cp.env.clone(), stack.dir.path());
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc = spare.local_addr().unwrap();
    drop(spare);
    let envoy = Envoy::start(
        &stack.art,
        &cp2,
        grpc,
        &stack.cp.env.push_token,
        stack.dir.path(),
        "envoy-early",
    )
    .await
    .unwrap();
    let url = envoy.url("/backend-api/codex/responses");
    let resp = stack
        .http
        .post(&url)
        .bearer_auth(&stack.key)
        .json(&turn_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        openai_error_code(&resp.text().await.unwrap()),
        "gateway_not_ready"
    );

    // Now the control plane appears on that port: the Envoy reconnects by itself.
    cp2.grpc_addr = Some(grpc);
    cp2.start().unwrap();
    // It reconnects by itself (bounded wait).
    stack
        .wait_until_serving_at(&envoy, &stack.key, Duration::from_secs(20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_push_token_gets_nothing() {
    let stack = Stack::start(1).await.unwrap();
    let grpc = stack.cp.grpc_addr.unwrap();
    let envoy = Envoy::start(
        &stack.art,
        &stack.cp,
        grpc,
        "not-the-token",
        stack.dir.path(),
        "envoy-wrong",
    )
    .await
    .unwrap();
    // Give it several reconnect rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resp = stack
        .http
        .post(envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .json(&turn_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        openai_error_code(&resp.text().await.unwrap()),
        "gateway_not_ready"
    );
    let log = envoy.proc.log_text();
    assert!(
        log.contains("rejected the push token"),
        "{}",
        codexmesh_test_kit::tail(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_envoy_config_and_logs() {
    let stack = Stack::start(2).await.unwrap();
    let (status, _) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200);
    let dump = stack.envoy.config_dump().await.unwrap();
    assert!(
        dump.contains("codexmesh_upstream"),
        "config dump looks empty"
    );
    let mut secrets = vec![stack.cp.env.push_token.clone(), stack.key.clone()];
    for i in 0..2 {
        secrets.push(stack.access_token(i));
        secrets.push(
            stack.accounts[i]["refresh_token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let cp_log = stack.cp.proc().unwrap().log_text();
    let envoy_log = stack.envoy.proc.log_text();
    for secret in &secrets {
        assert!(!dump.contains(secret.as_str()), "secret in /config_dump");
        assert!(
            !envoy_log.contains(secret.as_str()),
            "secret in the Envoy log"
        );
        assert!(
            !cp_log.contains(secret.as_str()),
            "secret in the control-plane log"
        );
    }
    // Tokens are sealed at rest: neither the SQLite file nor its write-ahead log holds one.
    let mut stored = Vec::new();
    for file in ["codexmesh.db", "codexmesh.db-wal"] {
        stored.extend(std::fs::read(stack.cp.env.data_dir.join(file)).unwrap_or_default());
    }
    assert!(!stored.is_empty(), "store file not found");
    let stored = String::from_utf8_lossy(&stored);
    for secret in &secrets {
        assert!(!stored.contains(secret.as_str()), "secret stored in clear");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_one_account_is_retried_on_another() {
    let stack = Stack::start(2).await.unwrap();
    stack.sim.clear_requests().await.unwrap();
    stack
        .sim
        .behavior(json!({"fail_next": [{"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "limit", "resets_in_seconds": 60}}}]}))
        .await
        .unwrap();
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let reqs = stack.sim.turn_requests().await.unwrap();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_ne!(
        reqs[0]["account_id"], reqs[1]["account_id"],
        "retry went to the same account"
    );
    assert_eq!(reqs[0]["status"], 429);
    assert_eq!(reqs[1]["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_websockets_off_refuses_upgrades_with_426_json() {
    let stack = Stack::start(1).await.unwrap();
    let set = stack
        .cp
        .cli_json(&["pool", "set-routing", POOL, "--websockets", "off"])
        .unwrap();
    assert_eq!(set["websockets"], false, "{set}");
    // The change reaches the filter with the next snapshot.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = upgrade(&stack).await;
        if resp.status() == 426 {
            assert_eq!(
                openai_error_code(&resp.text().await.unwrap()),
                "websocket_not_supported"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still upgraded: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Refused at the gateway: another upgrade never reaches the upstream.
    let upstream_upgrades = |records: Vec<Value>| {
        records
            .iter()
            .filter(|r| r["websocket"].as_bool() == Some(true))
            .count()
    };
    let before = upstream_upgrades(stack.sim.requests().await.unwrap());
    assert_eq!(upgrade(&stack).await.status(), 426);
    assert_eq!(
        upstream_upgrades(stack.sim.requests().await.unwrap()),
        before
    );
}

async fn upgrade(stack: &Stack) -> reqwest::Response {
    stack
        .http
        .get(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("openai-beta", "responses_websockets=2026-02-06")
        .send()
        .await
        .unwrap()
}
