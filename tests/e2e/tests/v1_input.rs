//! Bad input on the data path's `/v1` surface: each gets a clear OpenAI-shaped 4xx from the
//! gateway (never a 5xx, a hang or a dropped connection), and nothing bad reaches the upstream.

use std::time::Duration;

use codexmesh_test_kit::{openai_error_code, raw_http, Stack, StackOptions};
use serde_json::{json, Value};

const BODY_LIMIT: usize = 64 * 1024;

async fn stack() -> Stack {
    let mut opts = StackOptions::accounts(1).without_quota_polling();
    opts.cp_env.push((
        "CODEXMESH_MAX_REQUEST_BODY_BYTES".into(),
        BODY_LIMIT.to_string(),
    ));
    opts.sim_behavior = Some(json!({"reject_unknown_models": true}));
    Stack::start_with(opts).await.unwrap()
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Status, parsed body, and whether the answer is OpenAI's error shape.
async fn post(stack: &Stack, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        stack
            .http
            .post(stack.envoy.url(path))
            .bearer_auth(&stack.key)
            .header("content-type", content_type)
            .body(body)
            .send(),
    )
    .await
    .expect("the gateway hung")
    .expect("the gateway dropped the connection");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert!(
        value["error"]["message"].is_string(),
        "not OpenAI-shaped: {value}"
    );
    assert!(
        value["error"]["type"].is_string(),
        "not OpenAI-shaped: {value}"
    );
    (status, value)
}

async fn upstream_turns(stack: &Stack) -> usize {
    stack.sim.turn_requests().await.unwrap().len()
}

#[tokio::test]
async fn malformed_wrong_and_oversized_bodies_are_refused_before_the_upstream() {
    let stack = stack().await;
    stack.sim.clear_requests().await.unwrap();

    let (status, body) = post(
        &stack,
        "/v1/chat/completions",
        "application/json",
        b"{\"model\":".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = post(
        &stack,
        "/v1/responses",
        "application/json",
        b"[1,2]".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = post(
        &stack,
        "/v1/chat/completions",
        "application/x-www-form-urlencoded",
        b"model=x".to_vec(),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    // A required field missing, and a content part the pool cannot pass on: the field path.
    let (status, body) = post(
        &stack,
        "/v1/chat/completions",
        "application/json",
        json!({"messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "model");
    let (status, body) = post(
        &stack,
        "/v1/chat/completions",
        "application/json",
        json!({"model": "gpt-5.1-codex", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages[0].content[0].type");

    // Over the body limit, with a declared length and without one (chunked).
    let big = json!({"model": "gpt-5.1-codex", "messages": [{"role": "user", "content": "x".repeat(BODY_LIMIT * 2)}]})
        .to_string()
        .into_bytes();
    let (status, body) = post(
        &stack,
        "/v1/chat/completions",
        "application/json",
        big.clone(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    let chunked = stack
        .http
        .post(stack.envoy.url("/v1/chat/completions"))
        .bearer_auth(&stack.key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            big.chunks(16 * 1024)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status().as_u16(), 413);
    assert_eq!(
        openai_error_code(&chunked.text().await.unwrap()),
        "request_too_large"
    );
    // The same limit holds on the Codex path.
    let codex_big = json!({"model": "gpt-5.1-codex", "input": "x".repeat(BODY_LIMIT * 2)})
        .to_string()
        .into_bytes();
    let (status, _) = post(
        &stack,
        "/backend-api/codex/responses",
        "application/json",
        codex_big,
    )
    .await;
    assert_eq!(status, 413);

    assert_eq!(
        upstream_turns(&stack).await,
        0,
        "bad input reached the upstream"
    );
}

#[tokio::test]
async fn an_unknown_model_is_a_404_and_oversized_headers_a_json_4xx() {
    let stack = stack().await;
    let (status, body) = post(
        &stack,
        "/v1/chat/completions",
        "application/json",
        chat_body("no-such-model").to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    let (status, body) = post(
        &stack,
        "/v1/responses",
        "application/json",
        json!({"model": "no-such-model", "input": "hi", "stream": true})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // The model list answers one model, and 404 for another.
    let one = stack
        .http
        .get(stack.envoy.url("/v1/models/no-such-model"))
        .bearer_auth(&stack.key)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status().as_u16(), 404);
    assert_eq!(
        openai_error_code(&one.text().await.unwrap()),
        "model_not_found"
    );

    // A model the pool serves still works after all that.
    let (status, _) = post_ok(&stack).await;
    assert_eq!(status, 200);

    // 100 KB of headers: Envoy refuses them before any filter, as JSON.
    let huge = "h".repeat(100 * 1024);
    let resp = raw_http(
        stack.envoy.listen,
        "GET",
        "/v1/models",
        &[
            format!("authorization: Bearer {}", stack.key),
            format!("x-big: {huge}"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert!((400..500).contains(&resp.status), "{}", resp.status);
    assert!(
        serde_json::from_str::<Value>(resp.body.trim())
            .ok()
            .is_some_and(|v| v["error"]["message"].is_string()),
        "{:?}",
        resp.body
    );
}

async fn post_ok(stack: &Stack) -> (u16, Value) {
    let resp = stack
        .http
        .post(stack.envoy.url("/v1/chat/completions"))
        .bearer_auth(&stack.key)
        .json(&chat_body("gpt-5.1-codex"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}
