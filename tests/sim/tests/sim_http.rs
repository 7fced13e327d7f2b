//! The simulator over real HTTP on 127.0.0.1 with an OS-chosen port.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use codexmesh_sim::{start, RunningSim};
use futures_util::StreamExt as _;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

struct Sim {
    sim: RunningSim,
    http: Client,
}

impl Sim {
    async fn new() -> Self {
        let sim = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let http = Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self { sim, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.sim.base_url(), path)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn account(&self, body: Value) -> Value {
        self.post("/__sim/accounts", body).await
    }

    /// Freeze the clock at `t`.
    async fn freeze(&self, t: i64) {
        self.post("/__sim/clock", json!({"set_unix": t, "scale": 0.0}))
            .await;
    }

    async fn turn(&self, token: &str, body: Value) -> Response {
        self.http
            .post(self.url("/backend-api/codex/responses"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn refresh_json(&self, refresh_token: &str) -> Response {
        self.http
            .post(self.url("/oauth/token"))
            .json(&json!({
                "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "scope": "openid profile email",
            }))
            .send()
            .await
            .unwrap()
    }
}

fn turn_body() -> Value {
    json!({
        "model": "gpt-5.1-codex",
        "instructions": "be brief",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
    })
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

/// Read an SSE body, returning each event's JSON and when its frame was complete.
async fn read_sse(r: Response) -> Vec<(Value, Instant)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(pos) = buf.find("\n\n") {
            let frame: String = buf.drain(..pos + 2).collect();
            let mut lines = frame.lines();
            let event_line = lines.next().unwrap();
            let data_line = lines.next().unwrap();
            let ev: Value =
                serde_json::from_str(data_line.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                event_line.strip_prefix("event: ").unwrap(),
                ev["type"].as_str().unwrap()
            );
            out.push((ev, Instant::now()));
        }
    }
    assert!(buf.is_empty(), "trailing bytes: {buf:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401() {
    let s = Sim::new().await;
    s.freeze(1_800_000_000).await;
    let acc = s
        .account(json!({"account_id": "acc-a", "access_token_ttl_secs": 600}))
        .await;
    let token = acc["access_token"].as_str().unwrap();

    let r = s
        .http
        .post(s.url("/codex/responses"))
        .json(&turn_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.turn("not-a-token", turn_body()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    // Right account header, wrong account header.
    let ok = s
        .http
        .post(s.url("/backend-api/codex/responses"))
        .bearer_auth(token)
        .header("ChatGPT-Account-ID", "acc-a")
        .json(&turn_body())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let _ = ok.bytes().await.unwrap();
    let bad = s
        .http
        .post(s.url("/backend-api/codex/responses"))
        .bearer_auth(token)
        .header("chatgpt-account-id", "acc-other")
        .json(&turn_body())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    // A 401 for a known account still carries its quota headers.
    assert_eq!(header(&bad, "x-codex-primary-window-minutes"), "300");

    // Expired by the simulated clock.
    s.post("/__sim/clock", json!({"advance_secs": 600})).await;
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));

    let log = s
        .get("/__sim/requests?path_contains=/codex/responses")
        .await;
    let statuses: Vec<u64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![401, 401, 200, 401, 401]);
    assert_eq!(log[0]["account_id"], Value::Null);
    assert_eq!(log[2]["account_id"], "acc-a");
    assert_eq!(log[2]["model"], "gpt-5.1-codex");
    assert_eq!(log[2]["stream"], true);
    assert_eq!(log[2]["headers"]["chatgpt-account-id"], "acc-a");
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_in_order_and_unbuffered() {
    let s = Sim::new().await;
    let acc = s.account(json!({})).await;
    let token = acc["access_token"].as_str().unwrap();
    s.post(
        "/__sim/behavior",
        json!({"event_delay_ms": 150, "delta_count": 3, "reply_text": "one two three four five six"}),
    )
    .await;
    let start = Instant::now();
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let events = read_sse(r).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|(e, _)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    // No event comes before its time, the first comes long before the last is sent, and the
    // rest trickle in: the stream is not buffered.
    for (i, (_, at)) in events.iter().enumerate() {
        let due = Duration::from_millis(150 * i as u64);
        assert!(at.duration_since(start) >= due, "event {i} early");
    }
    let first = events[0].1.duration_since(start);
    assert!(
        first < Duration::from_millis(600),
        "first event after {first:?}"
    );
    let spread = events[9].1.duration_since(events[0].1);
    assert!(
        spread >= Duration::from_millis(450),
        "events bunched: {spread:?}"
    );
    let text: String = events
        .iter()
        .filter(|(e, _)| e["type"] == "response.output_text.delta")
        .map(|(e, _)| e["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "one two three four five six");
    let created_id = events[0].0["response"]["id"].as_str().unwrap();
    let done = &events[8].0["item"];
    assert_eq!(done["type"], "message");
    assert_eq!(done["role"], "assistant");
    assert_eq!(done["content"][0]["text"], "one two three four five six");
    let completed = &events[9].0["response"];
    assert_eq!(completed["id"], created_id);
    assert!(completed["usage"]["total_tokens"].as_i64().unwrap() > 0);

    // stream:false gives a JSON response object.
    let mut body = turn_body();
    body["stream"] = json!(false);
    let r = s
        .http
        .post(s.url("/codex/responses"))
        .bearer_auth(token)
        .header("accept", "application/json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "one two three four five six"
    );
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_headers_429_and_window_reset() {
    let s = Sim::new().await;
    let t0 = 1_800_000_000;
    s.freeze(t0).await;
    let acc = s
        .account(json!({"account_id": "acc-q", "plan": "plus", "primary_limit": 2, "secondary_limit": 100, "access_token_ttl_secs": 100_000}))
        .await;
    let token = acc["access_token"].as_str().unwrap();

    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-codex-primary-used-percent"), "50.0");
    assert_eq!(header(&r, "x-codex-primary-window-minutes"), "300");
    assert_eq!(
        header(&r, "x-codex-primary-reset-at"),
        (t0 + 18_000).to_string()
    );
    assert_eq!(header(&r, "x-codex-secondary-used-percent"), "1.0");
    assert_eq!(header(&r, "x-codex-secondary-window-minutes"), "10080");
    assert_eq!(
        header(&r, "x-codex-secondary-reset-at"),
        (t0 + 604_800).to_string()
    );
    assert_eq!(header(&r, "x-codex-credits-has-credits"), "false");
    assert_eq!(header(&r, "x-codex-credits-unlimited"), "false");
    assert_eq!(header(&r, "x-codex-credits-balance"), "0");
    assert_eq!(header(&r, "x-codex-active-limit"), "codex");
    let _ = r.bytes().await.unwrap();

    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-codex-primary-used-percent"), "100.0");
    let _ = r.bytes().await.unwrap();

    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-codex-primary-used-percent"), "100.0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "usage_limit_reached");
    assert_eq!(body["error"]["plan_type"], "plus");
    assert_eq!(body["error"]["resets_at"], t0 + 18_000);
    assert_eq!(body["error"]["resets_in_seconds"], 18_000);

    let usage = s
        .http
        .get(s.url("/backend-api/wham/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status(), StatusCode::OK);
    let usage: Value = usage.json().await.unwrap();
    assert_eq!(usage["plan_type"], "plus");
    assert_eq!(usage["rate_limit"]["limit_reached"], true);
    assert_eq!(usage["rate_limit"]["allowed"], false);
    assert_eq!(usage["rate_limit"]["primary_window"]["used_percent"], 100);
    assert_eq!(
        usage["rate_limit"]["primary_window"]["limit_window_seconds"],
        18_000
    );
    assert_eq!(
        usage["rate_limit"]["primary_window"]["reset_at"],
        t0 + 18_000
    );
    assert_eq!(
        usage["rate_limit"]["primary_window"]["reset_after_seconds"],
        18_000
    );
    assert_eq!(
        usage["rate_limit"]["secondary_window"]["limit_window_seconds"],
        604_800
    );
    assert_eq!(usage["credits"]["has_credits"], false);

    // One second before the reset: still refused; at the reset: served again.
    s.post("/__sim/clock", json!({"advance_secs": 17_999}))
        .await;
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["resets_in_seconds"], 1);
    s.post("/__sim/clock", json!({"advance_secs": 1})).await;
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-codex-primary-used-percent"), "50.0");
    assert_eq!(
        header(&r, "x-codex-primary-reset-at"),
        (t0 + 36_000).to_string()
    );
    let _ = r.bytes().await.unwrap();

    let state = s.get("/__sim/accounts/acc-q").await;
    assert_eq!(state["primary"]["used"], 1);
    assert_eq!(state["secondary"]["used"], 3);
    assert_eq!(state["turns"], 3);

    // Exhausting the secondary window reports its reset.
    s.post("/__sim/accounts/acc-q", json!({"secondary_used": 100}))
        .await;
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["resets_at"], t0 + 604_800);
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotation_and_reuse_detection() {
    let s = Sim::new().await;
    s.freeze(1_800_000_000).await;
    let acc = s.account(json!({"account_id": "acc-r"})).await;
    let rt1 = acc["refresh_token"].as_str().unwrap().to_string();
    let at1 = acc["access_token"].as_str().unwrap().to_string();
    assert_eq!(acc["auth_json"]["auth_mode"], "chatgpt");
    assert_eq!(acc["auth_json"]["OPENAI_API_KEY"], Value::Null);
    assert_eq!(acc["auth_json"]["tokens"]["account_id"], "acc-r");
    assert_eq!(acc["auth_json"]["tokens"]["refresh_token"], rt1.as_str());

    // JSON refresh rotates.
    let r = s.refresh_json(&rt1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2: Value = r.json().await.unwrap();
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    let at2 = t2["access_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt1);
    assert_ne!(at2, at1);
    assert_eq!(t2["expires_in"], 3600);
    assert!(t2["id_token"].as_str().unwrap().split('.').count() == 3);

    // Form refresh with the new token rotates again.
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .form(&[
            ("client_id", "app_EMoamEEZ73f0CkXaXp7hrann"),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt2.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t3: Value = r.json().await.unwrap();
    let rt3 = t3["refresh_token"].as_str().unwrap().to_string();
    let at3 = t3["access_token"].as_str().unwrap().to_string();
    let r = s.turn(&at3, turn_body()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await.unwrap();

    // Replaying a consumed token: refresh_token_reused, and the lineage dies.
    let r = s.refresh_json(&rt1).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    let r = s.turn(&at3, turn_body()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.refresh_json(&rt3).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_invalidated");

    let state = s.get("/__sim/accounts/acc-r").await;
    assert_eq!(state["revoked"], true);
    assert_eq!(state["revoked_reason"], "refresh_token_reused");
    assert_eq!(state["refresh_calls"], 4);
    assert_eq!(state["refresh_successes"], 2);

    // A new login starts a fresh lineage that works.
    let fresh = s.post("/__sim/accounts/acc-r/login", json!({})).await;
    let r = s
        .turn(fresh["access_token"].as_str().unwrap(), turn_body())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await.unwrap();
    assert_eq!(
        s.refresh_json(fresh["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    let state = s.get("/__sim/accounts/acc-r").await;
    assert_eq!(state["revoked"], false);
    assert_eq!(state["logins"], 2);

    // Scripted failures, and a wrong client id.
    let acc = s.account(json!({"account_id": "acc-s"})).await;
    let rt = acc["refresh_token"].as_str().unwrap().to_string();
    s.post(
        "/__sim/accounts/acc-s",
        json!({"fail_next_refresh": [503, "refresh_token_expired"]}),
    )
    .await;
    assert_eq!(s.refresh_json(&rt).await.status().as_u16(), 503);
    let r = s.refresh_json(&rt).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "refresh_token_expired");
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .json(&json!({"client_id": "nope", "grant_type": "refresh_token", "refresh_token": rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.refresh_json("rt_unknown").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    let log = s
        .get("/__sim/requests?path_contains=/oauth/token&account_id=acc-s")
        .await;
    assert_eq!(log.as_array().unwrap().len(), 3);
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bodies_and_upstream_validation() {
    let s = Sim::new().await;
    let acc = s.account(json!({})).await;
    let token = acc["access_token"].as_str().unwrap();

    let raw = serde_json::to_vec(&turn_body()).unwrap();
    let encoded = codexmesh_sim::body::zstd_encode(&raw);
    let r = s
        .http
        .post(s.url("/backend-api/codex/responses"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("content-encoding", "zstd")
        .body(encoded.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = read_sse(r).await;
    assert_eq!(events.last().unwrap().0["type"], "response.completed");
    let log = s.get("/__sim/requests").await;
    let rec = &log[0];
    assert_eq!(rec["body_len"], encoded.len());
    assert_eq!(rec["decoded_body_len"], raw.len());
    assert_eq!(rec["model"], "gpt-5.1-codex");
    assert_eq!(rec["headers"]["content-encoding"], "zstd");

    let r = s
        .http
        .post(s.url("/codex/responses"))
        .bearer_auth(token)
        .header("content-encoding", "zstd")
        .body("definitely not zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let mut body = turn_body();
    body["store"] = json!(true);
    let r = s.turn(token, body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"detail": "Store must be set to false"}));

    let mut body = turn_body();
    body["temperature"] = json!(0.5);
    let r = s.turn(token, body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"], "Unsupported parameter: temperature");

    // Rejected requests use no quota.
    let state = s
        .get(&format!(
            "/__sim/accounts/{}",
            acc["account_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(state["primary"]["used"], 1);
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_endpoints_and_knobs() {
    let s = Sim::new().await;
    let acc = s
        .account(json!({"account_id": "acc-o", "plan": "pro"}))
        .await;
    let token = acc["access_token"].as_str().unwrap();

    let r = s
        .http
        .get(s.url("/backend-api/codex/models?client_version=0.169.0"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "etag").starts_with('"'));
    let models: Value = r.json().await.unwrap();
    assert_eq!(models["models"][0]["slug"], "gpt-5.1-codex");

    let r = s
        .http
        .get(s.url("/backend-api/wham/accounts/check"))
        .bearer_auth(token)
        .header("chatgpt-account-id", "acc-o")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accounts"][0]["id"], "acc-o");
    assert_eq!(
        v["accounts"][0]["workspace_backend_origin"],
        "NO_CONSTRAINT"
    );
    assert_eq!(
        v["accounts"][0]["account_routing_override"],
        "NO_CONSTRAINT"
    );

    let r = s
        .http
        .get(s.url("/api/codex/usage"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = s
        .http
        .post(s.url("/backend-api/codex/responses/compact"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-5.1-codex", "input": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(!v["output"].as_array().unwrap().is_empty());

    // WebSocket upgrades are accepted by default (tests/sim_websocket.rs); refused with 426,
    // or 404, when told.
    s.post("/__sim/behavior", json!({"websocket": "426"})).await;
    let ws = || {
        s.http
            .get(s.url("/backend-api/codex/responses"))
            .bearer_auth(token)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
    };
    assert_eq!(ws().await.unwrap().status().as_u16(), 426);
    s.post("/__sim/behavior", json!({"websocket": "404"})).await;
    assert_eq!(ws().await.unwrap().status().as_u16(), 404);

    // Injected failures: per account, in order, then normal service.
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [
            {"status": 503, "body": {"error": {"code": "server_is_overloaded", "message": "busy"}}, "account_id": "acc-o"},
            {"status": 500, "account_id": "someone-else"},
            {"mode": "sse_failed"},
        ]}),
    )
    .await;
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("x-codex-primary-used-percent"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_is_overloaded");
    let r = s.turn(token, turn_body()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let events = read_sse(r).await;
    assert_eq!(events.last().unwrap().0["type"], "response.failed");
    let b = s.get("/__sim/behavior").await;
    assert_eq!(b["fail_next"].as_array().unwrap().len(), 1);

    // Per-account reply text with placeholders.
    s.post(
        "/__sim/accounts/acc-o",
        json!({"reply_text": "served by {account_id}"}),
    )
    .await;
    let mut body = turn_body();
    body["stream"] = json!(false);
    let v: Value = s.turn(token, body).await.json().await.unwrap();
    assert_eq!(v["output"][0]["content"][0]["text"], "served by acc-o");

    // The request log, with bodies on request, and clearing it.
    let log = s
        .get("/__sim/requests?include_body=1&path_contains=compact")
        .await;
    assert_eq!(log[0]["body_json"]["model"], "gpt-5.1-codex");
    let cleared = s
        .http
        .delete(s.url("/__sim/requests"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(cleared["cleared"].as_u64().unwrap() >= 8);
    assert_eq!(s.get("/__sim/requests").await, json!([]));
    assert_eq!(s.get("/__sim/healthz").await, json!({"ok": true}));
    let r = s.http.get(s.url("/no/such/path")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate() {
    let sim = codexmesh_sim::start_with("127.0.0.1:0".parse().unwrap(), true)
        .await
        .unwrap();
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let cert = reqwest::Certificate::from_pem(sim.cert_pem.as_ref().unwrap().as_bytes()).unwrap();
    let http = Client::builder()
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let acc: Value = http
        .post(format!("{}/__sim/accounts", sim.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(format!("{}/backend-api/codex/responses", sim.base_url()))
        .bearer_auth(acc["access_token"].as_str().unwrap())
        .json(&turn_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = read_sse(r).await;
    assert_eq!(events.last().unwrap().0["type"], "response.completed");
    // A client that does not trust the certificate is refused.
    let untrusted = Client::builder().build().unwrap();
    assert!(untrusted
        .get(format!("{}/__sim/healthz", sim.base_url()))
        .send()
        .await
        .is_err());
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_streams_too() {
    let s = Sim::new().await;
    let acc = s.account(json!({})).await;
    let h2 = Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    s.post(
        "/__sim/behavior",
        json!({"event_delay_ms": 60, "delta_count": 2}),
    )
    .await;
    let start = Instant::now();
    let r = h2
        .post(s.url("/backend-api/codex/responses"))
        .bearer_auth(acc["access_token"].as_str().unwrap())
        .json(&turn_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    let events = read_sse(r).await;
    assert_eq!(events.len(), 9);
    for (i, (_, at)) in events.iter().enumerate() {
        assert!(at.duration_since(start) >= Duration::from_millis(60 * i as u64));
    }
    s.sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn answers_carry_session_cookies_like_chatgpt_unless_turned_off() {
    let s = Sim::new().await;
    let acc = s.account(json!({"account_id": "acc-cookie"})).await;
    let token = acc["access_token"].as_str().unwrap();
    let cookies = |r: &Response| -> Vec<String> {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };

    let r = s
        .turn(token, json!({"model": "gpt-5.1-codex", "input": []}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let set = cookies(&r);
    assert!(set.iter().any(|c| c.starts_with("__cf_bm=")), "{set:?}");
    assert!(
        set.iter().any(|c| c.starts_with("_puid=user-acc-cookie:")),
        "the account's own cookie: {set:?}"
    );

    // Unauthenticated answers get only the edge cookie.
    let r = s
        .http
        .get(s.url("/backend-api/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let set = cookies(&r);
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(set[0].starts_with("__cf_bm="));

    s.post("/__sim/behavior", json!({"session_cookies": false}))
        .await;
    let r = s
        .turn(token, json!({"model": "gpt-5.1-codex", "input": []}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(cookies(&r).is_empty());
}
