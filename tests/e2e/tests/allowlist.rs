//! A pool key reaches the Codex endpoints and nothing else: the allowlist, path normalization,
//! gateway-owned headers and account cookies, each trick tried through real Envoy, with the
//! simulator's request log as the witness of what reached the upstream.

use codexmesh_test_kit::{
    openai_error_code, raw_http, turn_body, RawResponse, Stack, StackOptions,
};
use serde_json::{json, Value};

/// A stack whose control plane does not poll `/wham/usage` itself, so every upstream request the
/// simulator logs came through the gateway.
async fn stack(accounts: usize) -> Stack {
    Stack::start_with(StackOptions::accounts(accounts).without_quota_polling())
        .await
        .unwrap()
}

fn bearer(stack: &Stack) -> String {
    format!("Authorization: Bearer {}", stack.key)
}

async fn raw(
    stack: &Stack,
    method: &str,
    path: &str,
    extra: &[String],
    body: &[u8],
) -> RawResponse {
    raw_http(stack.envoy.listen, method, path, extra, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

fn turn_bytes() -> Vec<u8> {
    serde_json::to_vec(&turn_body("ping")).unwrap()
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

fn assert_no_cookie(resp: &RawResponse, what: &str) {
    assert!(
        resp.header("set-cookie").is_none(),
        "{what}: an account's cookie reached the client: {:?}",
        resp.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_paths_and_methods_get_a_404_and_never_reach_the_upstream() {
    let stack = stack(1).await;
    stack.sim.clear_requests().await.unwrap();
    let auth = bearer(&stack);
    for (method, path) in [
        ("GET", "/backend-api/conversations"),
        ("GET", "/backend-api/me"),
        ("GET", "/backend-api/settings/user"),
        ("PATCH", "/backend-api/settings/user"),
        ("POST", "/backend-api/conversation"),
        ("GET", "/backend-api/accounts/check/v4-2023-04-27"),
        ("GET", "/backend-api/codex/tasks"),
        ("GET", "/backend-api/codex/responses"),
        ("DELETE", "/backend-api/codex/responses"),
        ("PUT", "/backend-api/codex/responses/compact"),
        ("POST", "/backend-api/codex/models"),
        ("POST", "/backend-api/wham/usage"),
        ("GET", "/backend-api/wham/tasks/list"),
        ("GET", "/backend-api/"),
        ("GET", "/v2/models"),
        ("GET", "/v1/models/a/b"),
        ("POST", "/codex/responses"),
        ("GET", "/"),
    ] {
        for with_key in [true, false] {
            let extra = if with_key { vec![auth.clone()] } else { vec![] };
            let body = if method == "GET" {
                vec![]
            } else {
                turn_bytes()
            };
            let resp = raw(&stack, method, path, &extra, &body).await;
            assert_eq!(
                resp.status, 404,
                "{method} {path} (key: {with_key}): {}",
                resp.body
            );
            assert_eq!(
                openai_error_code(&resp.body),
                "unknown_endpoint",
                "{method} {path}"
            );
            assert_eq!(resp.header("content-type"), Some("application/json"));
        }
    }
    let reached = upstream_paths(&stack).await;
    assert!(reached.is_empty(), "reached the upstream: {reached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_encoded_dots_are_resolved_before_the_allowlist() {
    let stack = stack(1).await;
    stack.sim.clear_requests().await.unwrap();
    let auth = vec![bearer(&stack)];
    for path in [
        "/backend-api/codex/../conversations",
        "/backend-api/codex/%2e%2e/conversations",
        "/backend-api/codex/%2E%2E/me",
        "/backend-api/codex/.%2e/settings/user",
        "/backend-api/codex/./../../backend-api/me",
        "/backend-api/codex/responses/../../conversations",
    ] {
        let resp = raw(&stack, "GET", path, &auth, &[]).await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.body);
        assert_eq!(openai_error_code(&resp.body), "unknown_endpoint", "{path}");
    }
    assert!(upstream_paths(&stack).await.is_empty());

    // A spelling that resolves to an allowed endpoint is served as that endpoint, which shows the
    // path was normalized before the filter's exact match (it would be a 404 otherwise).
    let resp = raw(
        &stack,
        "POST",
        "/backend-api/wham/%2e%2e/codex/./responses",
        &[auth[0].clone(), "Content-Type: application/json".into()],
        &turn_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.body.contains("response.completed"), "{}", resp.body);
    assert_eq!(
        upstream_paths(&stack).await,
        vec!["/backend-api/codex/responses"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_are_resolved_and_double_slashes_merged() {
    let stack = stack(1).await;
    stack.sim.clear_requests().await.unwrap();
    let auth = vec![bearer(&stack)];
    for path in [
        "/backend-api/codex%2F..%2Fconversations",
        "/backend-api/codex/responses%2f..%2f..%2fme",
        "/backend-api/codex/%2e%2e%2Fconversations",
        "/backend-api/codex%5C..%5Cme",
        "/backend-api%2Fcodex%2Fresponses%2F..%2F..%2Fsettings%2Fuser",
    ] {
        let resp = raw(&stack, "GET", path, &auth, &[]).await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.body);
        assert_eq!(openai_error_code(&resp.body), "unknown_endpoint", "{path}");
    }
    // A path Envoy cannot normalize is refused before any filter runs, still as JSON.
    let resp = raw(
        &stack,
        "POST",
        "/backend-api/codex/responses%00",
        &auth,
        &turn_bytes(),
    )
    .await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(openai_error_code(&resp.body), "invalid_request");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    for path in ["/backend-api//conversations", "//backend-api///me"] {
        let resp = raw(&stack, "GET", path, &auth, &[]).await;
        assert_eq!(resp.status, 404, "{path}: {}", resp.body);
    }
    assert!(upstream_paths(&stack).await.is_empty());

    let resp = raw(
        &stack,
        "POST",
        "//backend-api//codex///responses",
        &[auth[0].clone(), "Content-Type: application/json".into()],
        &turn_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        upstream_paths(&stack).await,
        vec!["/backend-api/codex/responses"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_the_account_or_steer_the_router() {
    let stack = stack(2).await;
    stack.sim.clear_requests().await.unwrap();
    // The first attempt answers 429 slowly: honouring the client's x-envoy-max-retries: 0 would
    // hand that 429 to the client, honouring its 1 ms timeouts would give a 504.
    stack
        .sim
        .behavior(json!({
            "response_delay_ms": 150,
            "fail_next": [{"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "x", "resets_in_seconds": 30}}}],
        }))
        .await
        .unwrap();
    let other_account = stack.account_id(1);
    let resp = stack
        .http
        .post(stack.envoy.url("/backend-api/codex/responses"))
        .bearer_auth(&stack.key)
        .header("chatgpt-account-id", &other_account)
        .header(
            "cookie",
            "_puid=client-cookie; __Secure-next-auth.session-token=stolen",
        )
        .header("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .header("x-envoy-max-retries", "0")
        .header("x-envoy-retry-on", "")
        .header("x-envoy-upstream-rq-timeout-ms", "1")
        .header("x-envoy-upstream-rq-per-try-timeout-ms", "1")
        .header("x-envoy-internal", "true")
        .header("x-envoy-original-path", "/backend-api/me")
        .header("x-codexmesh-route", "account=client-choice")
        .json(&turn_body("steer"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("response.completed"), "{body}");

    let reqs = stack.sim.turn_requests().await.unwrap();
    assert_eq!(reqs.len(), 2, "a 429 then the failover: {reqs:?}");
    for req in &reqs {
        let headers = req["headers"].as_object().unwrap();
        // The account id sent is the one whose token was sent, never the client's choice.
        assert_eq!(
            headers["chatgpt-account-id"].as_str(),
            req["account_id"].as_str(),
            "{req}"
        );
        for name in ["cookie", "proxy-authorization", "x-codexmesh-route"] {
            assert!(
                !headers.contains_key(name),
                "{name} reached the upstream: {req}"
            );
        }
        let envoy_headers: Vec<&String> = headers
            .keys()
            .filter(|k| k.starts_with("x-envoy-") && *k != "x-envoy-attempt-count")
            .collect();
        assert!(
            envoy_headers.is_empty(),
            "client steering reached the upstream: {envoy_headers:?}"
        );
        let all = serde_json::to_string(headers).unwrap();
        for sentinel in [
            "client-cookie",
            "stolen",
            "Y2xpZW50",
            "client-choice",
            &stack.key,
        ] {
            assert!(
                !all.contains(sentinel),
                "{sentinel} reached the upstream: {all}"
            );
        }
    }
    // One was the 429, the next a different account: the router's own bound, not the client's.
    assert_ne!(reqs[0]["account_id"], reqs[1]["account_id"]);

    // Two Authorization headers are refused, not resolved one way or the other.
    stack.sim.clear_requests().await.unwrap();
    let resp = raw(
        &stack,
        "POST",
        "/backend-api/codex/responses",
        &[bearer(&stack), "Authorization: Bearer cmk_other".into()],
        &turn_bytes(),
    )
    .await;
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(openai_error_code(&resp.body), "invalid_api_key");
    assert!(upstream_paths(&stack).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_cookie_reaches_the_client_and_queries_pass_only_where_needed() {
    let stack = stack(1).await;
    stack.sim.clear_requests().await.unwrap();
    let auth = bearer(&stack);
    let json_ct = "Content-Type: application/json".to_string();

    // A streamed turn, with a query string the endpoint does not take.
    let turn = raw(
        &stack,
        "POST",
        "/backend-api/codex/responses?account=other&x=../../me",
        &[auth.clone(), json_ct.clone()],
        &turn_bytes(),
    )
    .await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    assert_no_cookie(&turn, "turn");
    // The model list keeps its client_version.
    let models = raw(
        &stack,
        "GET",
        "/backend-api/codex/models?client_version=0.169.0",
        std::slice::from_ref(&auth),
        &[],
    )
    .await;
    assert_eq!(models.status, 200, "{}", models.body);
    assert_no_cookie(&models, "models");
    // Remote compaction (JSON, not streamed).
    let compact = raw(
        &stack,
        "POST",
        "/backend-api/codex/responses/compact",
        &[auth.clone(), json_ct.clone()],
        br#"{"model":"gpt-5.1-codex","input":[]}"#,
    )
    .await;
    assert_eq!(compact.status, 200, "{}", compact.body);
    assert_no_cookie(&compact, "compact");
    // An upstream error passed through to the client (its own fault: store must be false).
    let refused = raw(
        &stack,
        "POST",
        "/backend-api/codex/responses",
        &[auth.clone(), json_ct],
        br#"{"model":"gpt-5.1-codex","input":[],"store":true,"stream":true}"#,
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_no_cookie(&refused, "upstream 400");

    let reqs = stack.sim.requests().await.unwrap();
    let seen: Vec<(&str, Option<&str>)> = reqs
        .iter()
        .map(|r| (r["path"].as_str().unwrap_or_default(), r["query"].as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("/backend-api/codex/responses", None),
            ("/backend-api/codex/models", Some("client_version=0.169.0")),
            ("/backend-api/codex/responses/compact", None),
            ("/backend-api/codex/responses", None),
        ]
    );
    // The account's identity cookie was on the wire upstream and nowhere in what the client got.
    for resp in [&turn, &models, &compact, &refused] {
        assert!(!resp.body.contains("_puid"), "{}", resp.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_usage_and_the_account_check_itself() {
    let stack = stack(2).await;
    stack.sim.clear_requests().await.unwrap();
    let auth = bearer(&stack);

    let usage = raw(
        &stack,
        "GET",
        "/backend-api/wham/usage",
        std::slice::from_ref(&auth),
        &[],
    )
    .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let v: Value = serde_json::from_str(&usage.body).unwrap();
    assert_eq!(v["rate_limit"]["allowed"], true, "{v}");
    assert_eq!(v["rate_limit"]["limit_reached"], false, "{v}");
    assert!(
        v["rate_limit"]["primary_window"]["used_percent"].is_i64(),
        "{v}"
    );
    assert!(v["plan_type"].is_string(), "{v}");

    let check = raw(
        &stack,
        "GET",
        "/backend-api/wham/accounts/check",
        &[auth],
        &[],
    )
    .await;
    assert_eq!(check.status, 200, "{}", check.body);
    let v: Value = serde_json::from_str(&check.body).unwrap();
    assert_eq!(
        v["accounts"][0]["workspace_backend_origin"],
        "NO_CONSTRAINT"
    );

    // Nothing of an account appears, and nothing was fetched upstream.
    for body in [&usage.body, &check.body] {
        for i in 0..2 {
            assert!(!body.contains(&stack.account_id(i)), "{body}");
            assert!(!body.contains(&stack.access_token(i)), "{body}");
        }
        assert!(!body.contains('@'), "no email: {body}");
    }
    let no_key = raw(&stack, "GET", "/backend-api/wham/usage", &[], &[]).await;
    assert_eq!(no_key.status, 401, "{}", no_key.body);
    assert!(upstream_paths(&stack).await.is_empty());
}
