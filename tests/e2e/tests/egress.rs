//! Egress proxies on the data path (issue 16): an account with an `egress_proxy` is served by
//! Envoy only through that proxy (a CONNECT tunnel from the proxy's own clusters, rendered by
//! `envoy-bootstrap --egress-proxy`), never directly; other accounts leave directly; failover
//! stays behind the proxy; a client cannot steer the egress; an account whose proxy this Envoy
//! does not know is not tried.
//!
//! The simulator speaks plain HTTP here, so the kit's CONNECT proxy sees each request it carries
//! and tells whose (`chatgpt-account-id`) it was; the TLS test checks the same path with TLS to
//! the upstream inside the tunnel.

use std::time::{Duration, Instant};

use codexmesh_test_kit::connect_proxy::ConnectProxy;
use codexmesh_test_kit::stack::{openai_error_code, turn_body, StackOptions};
use codexmesh_test_kit::wait::{self, Probe};
use codexmesh_test_kit::Stack;
use serde_json::json;

/// What carries account `id`'s requests through a tunnel (the upstream filter sets it).
fn marker(id: &str) -> String {
    format!("chatgpt-account-id: {id}\r\n")
}

async fn gateway_turns_of(stack: &Stack, id: &str) -> usize {
    stack
        .sim
        .gateway_requests_to("/codex/responses")
        .await
        .unwrap()
        .iter()
        .filter(|r| r["account_id"] == id)
        .count()
}

/// Turns until one is served through the proxy for account `id` (the snapshot naming the
/// proxy has arrived).
async fn wait_until_tunnelled(stack: &Stack, proxy: &ConnectProxy, id: &str) {
    let needle = marker(id);
    wait::until_async(
        Duration::from_secs(15),
        Duration::from_millis(100),
        "a turn through the egress proxy",
        || async {
            // Until the snapshot arrives a turn may go elsewhere or be refused.
            let (status, body) = stack.turn(&stack.key).await?;
            Ok(if status == 200 && proxy.count_sent(&needle) > 0 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{status}: {body}; {} tunnel(s)", proxy.tunnels()))
            })
        },
    )
    .await
    .unwrap();
}

/// One turn with a client-sent `x-codexmesh-egress` (trying to steer into the tunnel).
async fn steered_turn(stack: &Stack) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .header("x-codexmesh-egress", "e1")
        .json(&turn_body("steer"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_turns_tunnel_through_its_egress_proxy_and_never_leave_directly() {
    let started = Instant::now();
    let mut proxy = ConnectProxy::start().await.unwrap();
    let unknown = ConnectProxy::start().await.unwrap();
    let mut opts = StackOptions {
        envoy_bootstrap_args: vec!["--egress-proxy".into(), proxy.url()],
        ..StackOptions::accounts(3).without_quota_polling()
    };
    opts.cp_env
        .push(("CODEXMESH_ALERT_INTERVAL_MS".into(), "200".into()));
    let stack = Stack::start_with(opts).await.unwrap();
    let open_missing = || {
        let open = stack.cp.cli_json(&["alert", "episodes", "--open"]).unwrap();
        open.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["kind"] == "egress_proxy_missing")
            .collect::<Vec<_>>()
    };
    let (a0, a1, a2) = (
        stack.account_id(0),
        stack.account_id(1),
        stack.account_id(2),
    );
    let cli = |args: &[&str]| {
        stack.cp.cli_json(args).unwrap();
    };

    // 1. acct-0 behind the proxy, the others paused: every acct-0 turn the simulator sees came
    // through the tunnel, which names the upstream.
    cli(&["account", "pause", "acct-1"]);
    cli(&["account", "pause", "acct-2"]);
    cli(&["account", "set", "acct-0", "--egress-proxy", &proxy.url()]);
    wait_until_tunnelled(&stack, &proxy, &a0).await;
    stack.sim.clear_requests().await.unwrap();
    let before = proxy.count_sent(&marker(&a0));
    for _ in 0..8 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        gateway_turns_of(&stack, &a0).await,
        8,
        "the simulator saw acct-0's turns"
    );
    assert_eq!(
        proxy.count_sent(&marker(&a0)) - before,
        8,
        "each of acct-0's turns went through its proxy"
    );
    let targets = proxy.targets();
    let sim_base = stack.sim.base_url();
    assert!(
        !targets.is_empty()
            && targets
                .iter()
                .all(|t| sim_base.contains(&format!("//{t}/"))),
        "CONNECT names the upstream ({sim_base}): {targets:?}"
    );
    // The filter's mark steers Envoy only: the upstream never sees it.
    let requests = stack.sim.gateway_requests().await.unwrap();
    assert!(
        requests
            .iter()
            .all(|r| r["headers"].get("x-codexmesh-egress").is_none()),
        "x-codexmesh-egress reached the upstream"
    );

    // 2. A direct account leaves directly, and a client's own x-codexmesh-egress changes
    // nothing.
    cli(&["account", "pause", "acct-0"]);
    cli(&["account", "resume", "acct-1"]);
    wait::until_async(
        Duration::from_secs(15),
        Duration::from_millis(100),
        "acct-1 serving",
        || async {
            stack.sim.clear_requests().await?;
            let (status, body) = stack.turn(&stack.key).await?;
            Ok(
                if status == 200 && gateway_turns_of(&stack, &a1).await == 1 {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!("{status}: {body}"))
                },
            )
        },
    )
    .await
    .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let tunnels = proxy.tunnels();
    for _ in 0..4 {
        let (status, body) = steered_turn(&stack).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(gateway_turns_of(&stack, &a1).await, 4);
    assert_eq!(
        proxy.count_sent(&marker(&a1)),
        0,
        "acct-1 (direct) went through the proxy"
    );
    assert_eq!(proxy.tunnels(), tunnels);

    // 3. An account whose proxy this Envoy was not rendered with is never tried.
    cli(&["account", "pause", "acct-1"]);
    cli(&["account", "set", "acct-2", "--egress-proxy", &unknown.url()]);
    cli(&["account", "resume", "acct-2"]);
    stack.sim.clear_requests().await.unwrap();
    let body = wait::until_async(
        Duration::from_secs(15),
        Duration::from_millis(100),
        "the unknown-proxy answer",
        || async {
            let (status, body) = stack.turn(&stack.key).await?;
            Ok(
                if status == 503 && body.contains("egress_proxy_not_configured") {
                    Probe::Ready(body)
                } else {
                    Probe::NotYet(format!("{status}: {body}"))
                },
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(openai_error_code(&body), "egress_proxy_not_configured");
    assert!(body.contains(&unknown.url()), "{body}");
    assert_eq!(
        gateway_turns_of(&stack, &a2).await,
        0,
        "acct-2 sent directly"
    );
    assert_eq!(unknown.tunnels(), 0);
    // The Envoy told the control plane its proxies: the account it cannot serve is an alert
    // naming the proxy and the Envoy.
    let missing = wait::until(
        Duration::from_secs(15),
        Duration::from_millis(200),
        "egress_proxy_missing",
        || {
            let open = open_missing();
            Ok(if open.is_empty() {
                Probe::NotYet("no open egress_proxy_missing".into())
            } else {
                Probe::Ready(open)
            })
        },
    )
    .unwrap();
    let text = serde_json::to_string(&missing).unwrap();
    assert_eq!(missing.len(), 1, "{text}");
    assert!(
        text.contains(&unknown.url()) && text.contains("Envoy envoy "),
        "{text}"
    );

    // 4. Failover stays behind the proxy: acct-0's usage spent (429), acct-2 on the same proxy
    // serves every turn, through it.
    cli(&["account", "set", "acct-2", "--egress-proxy", &proxy.url()]);
    cli(&["account", "resume", "acct-0"]);
    stack
        .sim
        .patch_account(&a0, json!({"primary_limit": 0}))
        .await
        .unwrap();
    wait_until_tunnelled(&stack, &proxy, &a2).await;
    // Its proxy is one the Envoy has: the alert clears.
    wait::until(
        Duration::from_secs(15),
        Duration::from_millis(200),
        "egress_proxy_missing to clear",
        || {
            let open = open_missing();
            Ok(if open.is_empty() {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{open:?}"))
            })
        },
    )
    .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let before2 = proxy.count_sent(&marker(&a2));
    for _ in 0..4 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(gateway_turns_of(&stack, &a2).await, 4);
    assert_eq!(proxy.count_sent(&marker(&a2)) - before2, 4);

    // 5. The proxy down: the turns fail, nothing leaves directly.
    proxy.stop().await;
    stack.sim.clear_requests().await.unwrap();
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_ne!(status, 200, "served with its proxy down: {body}");
    let code = openai_error_code(&body);
    let requests = stack.sim.gateway_requests().await.unwrap();
    assert!(requests.is_empty(), "sent directly: {requests:?}");
    eprintln!(
        "EGRESS: {} tunnels; every proxied turn through its proxy; {status} {code} with the proxy down; in {:?}",
        proxy.tunnels(),
        started.elapsed()
    );
}

/// The same path with TLS to the upstream inside the tunnel: Envoy's certificate check (SNI, SAN)
/// runs end to end through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_upstream_runs_inside_the_tunnel() {
    let proxy = ConnectProxy::start().await.unwrap();
    let stack = Stack::start_with(StackOptions {
        sim_tls: true,
        envoy_bootstrap_args: vec!["--egress-proxy".into(), proxy.url()],
        ..StackOptions::accounts(1).without_quota_polling()
    })
    .await
    .unwrap();
    stack
        .cp
        .cli_json(&["account", "set", "acct-0", "--egress-proxy", &proxy.url()])
        .unwrap();
    let a0 = stack.account_id(0);
    wait::until_async(
        Duration::from_secs(15),
        Duration::from_millis(100),
        "a turn through the egress proxy over TLS",
        || async {
            let (status, body) = stack.turn(&stack.key).await?;
            anyhow::ensure!(status == 200, "{status}: {body}");
            Ok(if proxy.tunnels() > 0 {
                Probe::Ready(())
            } else {
                Probe::NotYet("no tunnel yet".into())
            })
        },
    )
    .await
    .unwrap();
    // The tunnel carried TLS: the account's header is not readable in it.
    assert_eq!(proxy.count_sent(&marker(&a0)), 0);
    assert!(gateway_turns_of(&stack, &a0).await >= 1);
}

/// The other pooled clusters have their tunnels too: a Codex WebSocket (the upgrade and its
/// turns) and a Claude Code turn, each for an account behind the proxy, go through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_claude_turns_tunnel_through_the_proxy_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let proxy = ConnectProxy::start().await.unwrap();
    let stack = Stack::start_with(StackOptions {
        envoy_bootstrap_args: vec!["--egress-proxy".into(), proxy.url()],
        ..StackOptions::accounts(1).without_quota_polling()
    })
    .await
    .unwrap();
    // A Claude account in the same pool, imported from the file Claude Code writes.
    let claude = stack
        .sim
        .create_claude_account(json!({"account_id": "claude-e"}))
        .await
        .unwrap();
    let file = stack.dir.path().join("claude-e.credentials.json");
    stack
        .sim
        .write_credentials_file("claude-e", &file)
        .await
        .unwrap();
    let file = file.to_string_lossy().into_owned();
    let cli = |args: &[&str]| {
        stack.cp.cli_json(args).unwrap();
    };
    cli(&[
        "account", "import", &file, "--pool", "team", "--label", "claude-e",
    ]);
    cli(&["account", "set", "acct-0", "--egress-proxy", &proxy.url()]);
    cli(&["account", "set", "claude-e", "--egress-proxy", &proxy.url()]);
    let a0 = stack.account_id(0);
    wait_until_tunnelled(&stack, &proxy, &a0).await;

    // The WebSocket: upgrade and one turn, through the tunnel.
    let before = proxy.count_sent(&marker(&a0));
    let mut req = stack
        .envoy
        .url("/backend-api/codex/responses")
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    let headers = req.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {}", stack.key).parse().unwrap(),
    );
    headers.insert(
        "openai-beta",
        "responses_websockets=2026-02-06".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    let create = json!({
        "type": "response.create",
        "model": "gpt-5.1-codex",
        "instructions": "You are a test.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [],
        "store": false,
        "stream": true,
    });
    ws.send(Message::Text(create.to_string().into()))
        .await
        .unwrap();
    let completed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(text) = msg {
                if text.contains("\"response.completed\"") {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(completed, "the WebSocket turn did not complete");
    let _ = ws.close(None).await;
    assert_eq!(
        proxy.count_sent(&marker(&a0)) - before,
        1,
        "the upgrade went through the proxy"
    );
    assert!(proxy.count_sent("GET /backend-api/codex/responses") >= 1);

    // A Claude Code turn: its account's token is in the tunnel, and the simulator served it.
    let token = claude["access_token"].as_str().unwrap().to_string();
    let resp = reqwest::Client::new()
        .post(stack.envoy.url("/v1/messages?beta=true"))
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", &stack.key)
        .json(&json!({
            "model": "claude-sonnet-5-5",
            "max_tokens": 64,
            "stream": true,
            "messages": [{"role": "user", "content": "Reply with pong"}],
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        proxy.count_sent(&format!("authorization: Bearer {token}")) >= 1,
        "the Claude turn did not go through the proxy"
    );
    let claude_seen = stack
        .sim
        .requests_of("claude-e", "/v1/messages")
        .await
        .unwrap();
    assert_eq!(claude_seen.len(), 1, "{claude_seen:?}");
    let targets = proxy.targets();
    assert!(
        targets.iter().all(|t| t.starts_with("127.0.0.1:")),
        "{targets:?}"
    );
}
