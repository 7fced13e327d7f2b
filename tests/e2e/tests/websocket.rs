//! Pooled WebSockets through real Envoy: the upgrade of the Responses endpoint is routed like any
//! request (pool key, strategy, failover before the 101), the account's credentials are
//! injected, frames pass both ways, one connection stays on one account, its life is bounded,
//! and each connection's outcome reaches the request log.

use std::time::{Duration, Instant};

use codexmesh_test_kit::{openai_error_code, Stack, StackOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(stack: &Stack, path: &str) -> String {
    stack.envoy.url(path).replacen("http://", "ws://", 1)
}

/// Opens a WebSocket through the gateway; `Err` carries the refusal's status and body.
async fn connect(
    stack: &Stack,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), (u16, String)> {
    let mut req = ws_url(stack, path).into_client_request().unwrap();
    let headers = req.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {}", stack.key).parse().unwrap(),
    );
    headers.insert(
        "openai-beta",
        "responses_websockets=2026-02-06".parse().unwrap(),
    );
    for (k, v) in extra {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        headers.insert(name, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => Ok(ok),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let raw = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            // The handshake client does not undo chunked framing: keep the JSON document.
            let body = match (raw.find('{'), raw.rfind('}')) {
                (Some(a), Some(b)) if a < b => raw[a..=b].to_string(),
                _ => raw,
            };
            Err((status, body))
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

fn create(previous: Option<&str>, generate: bool) -> Message {
    let mut frame = json!({
        "type": "response.create",
        "model": "gpt-5.1-codex",
        "instructions": "You are a test.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [],
        "store": false,
        "stream": true,
    });
    if let Some(p) = previous {
        frame["previous_response_id"] = json!(p);
    }
    if !generate {
        frame["generate"] = json!(false);
    }
    Message::Text(frame.to_string().into())
}

/// Reads events until the turn ends; returns (event types, final response id, error event).
async fn read_turn(ws: &mut Ws) -> (Vec<String>, Option<String>, Option<Value>) {
    let mut types = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("turn did not end in time")
            .expect("connection ended mid-turn")
            .expect("websocket error mid-turn");
        let Message::Text(text) = msg else { continue };
        let event: Value = serde_json::from_str(&text).unwrap();
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        types.push(kind.clone());
        match kind.as_str() {
            "response.completed" => {
                let id = event["response"]["id"].as_str().map(str::to_string);
                return (types, id, None);
            }
            "response.failed" | "error" => return (types, None, Some(event)),
            _ => {}
        }
    }
}

/// The simulator's record of the WebSocket connections it accepted.
async fn ws_records(stack: &Stack) -> Vec<Value> {
    stack
        .sim
        .requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r["websocket"].as_bool() == Some(true))
        .collect()
}

async fn wait_for_log(stack: &Stack, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = stack.cp.cli_json(&["requests", "--limit", "200"]).unwrap();
        let entries = log.as_array().cloned().unwrap_or_default();
        if entries.iter().any(&want) || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pooled_websocket_carries_turns_on_one_account_with_its_credentials() {
    let stack = Stack::start_with(StackOptions::accounts(3).without_quota_polling())
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let (mut ws, resp) = connect(
        &stack,
        "/backend-api/codex/responses",
        &[
            ("session-id", "ws-session-1"),
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    // Quota evidence rides on the handshake, and the account's cookies never reach the client.
    assert!(resp.headers().get("x-codex-primary-used-percent").is_some());
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(resp.headers().get("x-codex-turn-state").is_some());

    // Warm-up, a turn, and a follow-up that only the same account can continue.
    ws.send(create(None, false)).await.unwrap();
    let (_, warm_id, err) = read_turn(&mut ws).await;
    assert!(err.is_none(), "{err:?}");
    ws.send(create(warm_id.as_deref(), true)).await.unwrap();
    let (types, first_id, err) = read_turn(&mut ws).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        types.contains(&"response.output_text.delta".to_string()),
        "{types:?}"
    );
    assert_eq!(types.first().map(String::as_str), Some("codex.rate_limits"));
    ws.send(create(first_id.as_deref(), true)).await.unwrap();
    let (_, second_id, err) = read_turn(&mut ws).await;
    assert!(
        err.is_none(),
        "second turn on the connection failed: {err:?}"
    );
    assert!(second_id.is_some());
    ws.close(None).await.unwrap();

    let records = ws_records(&stack).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let rec = &records[0];
    assert_eq!(rec["status"], 101);
    let account = rec["account_id"].as_str().unwrap();
    let i = (0..3).find(|i| stack.account_id(*i) == account).unwrap();
    let auth = rec["headers"]["authorization"].as_str().unwrap_or_default();
    assert_eq!(auth, format!("Bearer {}", stack.access_token(i)));
    assert!(
        !rec.to_string().contains(&stack.key),
        "the pool key reached the upstream"
    );
    assert_eq!(rec["headers"]["chatgpt-account-id"].as_str(), Some(account));
    let frames = rec["ws_requests"].as_array().unwrap();
    assert_eq!(frames.len(), 3, "{frames:#?}");
    assert_eq!(
        frames[2]["previous_response_id"].as_str(),
        first_id.as_deref()
    );
    assert_eq!(frames[2]["outcome"], "completed");
    // The client's extension offer passed unchanged (the simulator declines it).
    assert!(rec["ws_extensions_offered"]
        .to_string()
        .contains("permessage-deflate"));

    // The connection's outcome reaches the request log as the account's success.
    let log = wait_for_log(&stack, |e| {
        e["request_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/codex/responses"))
            && e["status"] == 101
    })
    .await;
    assert!(
        log.iter()
            .any(|e| e["status"] == 101 && e["error_source"].as_str().unwrap_or("").is_empty()),
        "{log:#?}"
    );
}

#[tokio::test]
async fn an_upgrade_refused_with_429_fails_over_before_the_101_and_a_spent_pool_is_an_honest_429() {
    let stack = Stack::start_with(StackOptions::accounts(2).without_quota_polling())
        .await
        .unwrap();
    stack.priority_order(&["acct-0", "acct-1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = stack.account_id(0);
    let second = stack.account_id(1);
    stack
        .sim
        .behavior(json!({"fail_next": [{"status": 429, "account_id": first, "mode": "http"}]}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let (mut ws, resp) = connect(&stack, "/backend-api/codex/responses", &[])
        .await
        .expect("the upgrade should fail over to the second account");
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(create(None, true)).await.unwrap();
    let (_, id, err) = read_turn(&mut ws).await;
    assert!(err.is_none() && id.is_some(), "{err:?}");
    let records = ws_records(&stack).await;
    let statuses: Vec<(String, u64)> = records
        .iter()
        .map(|r| {
            (
                r["account_id"].as_str().unwrap_or_default().to_string(),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(statuses, vec![(first.clone(), 429), (second.clone(), 101)]);
    drop(ws);

    // Both spent: the client gets the pool's 429 with its reset, as over HTTP.
    let resets = chrono_like_now() + 3600;
    let spent =
        json!({"error": {"type": "usage_limit_reached", "message": "limit", "resets_at": resets}});
    stack
        .sim
        .behavior(json!({"fail_next": [
            {"status": 429, "account_id": first, "mode": "http", "body": spent},
            {"status": 429, "account_id": second, "mode": "http", "body": spent},
        ]}))
        .await
        .unwrap();
    let (status, body) = connect(&stack, "/backend-api/codex/responses", &[])
        .await
        .map(|_| (101, String::new()))
        .unwrap_or_else(|e| e);
    assert_eq!(status, 429, "{body}");
    assert_eq!(openai_error_code(&body), "usage_limit_reached", "{body}");
}

fn chrono_like_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_v1_responses_websocket_is_pooled_and_a_connection_s_life_is_bounded() {
    let mut opts = StackOptions::accounts(1).without_quota_polling();
    opts.cp_env
        .push(("CODEXMESH_WEBSOCKET_MAX_LIFETIME_SECS".into(), "2".into()));
    let stack = Stack::start_with(opts).await.unwrap();
    let (mut ws, _) = connect(&stack, "/v1/responses", &[]).await.unwrap();
    ws.send(create(None, true)).await.unwrap();
    let (_, id, err) = read_turn(&mut ws).await;
    assert!(err.is_none() && id.is_some(), "{err:?}");
    let rec = ws_records(&stack).await.pop().unwrap();
    assert!(
        rec["path"].as_str().unwrap().ends_with("/codex/responses"),
        "{rec}"
    );
    // Envoy ends the connection at its lifetime (2 s here; 60 minutes upstream).
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            if msg.is_err() || matches!(msg, Ok(Message::Close(_))) {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection outlived its lifetime");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_websocket_without_a_valid_key_is_refused_before_any_upstream() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let mut req = ws_url(&stack, "/backend-api/codex/responses")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer cmk_wrong".parse().unwrap());
    let Err(tungstenite::Error::Http(resp)) = tokio_tungstenite::connect_async(req).await else {
        panic!("a wrong key was upgraded");
    };
    assert_eq!(resp.status().as_u16(), 401);
    assert!(ws_records(&stack).await.is_empty());
}
