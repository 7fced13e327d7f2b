//! The Claude (Anthropic) and Gemini (Code Assist) sides of the simulator over real HTTP on
//! 127.0.0.1, next to the Codex backend on the same port.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use codexmesh_sim::{start, RunningSim};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

const CLAUDE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
const T0: i64 = 1_800_000_000;
const PROMPT: &str = "secret prompt text: the launch codes are 0000";

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
        let s = Self { sim, http };
        s.post("/__sim/clock", json!({"set_unix": T0, "scale": 0.0}))
            .await;
        s
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
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn advance(&self, secs: i64) {
        self.post("/__sim/clock", json!({"advance_secs": secs}))
            .await;
    }

    /// A request carrying an OAuth token the way Claude Code in subscription mode sends it.
    fn claude_oauth(&self, method: reqwest::Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("anthropic-version", "2023-06-01")
            .header(
                "anthropic-beta",
                "claude-code-20250219,oauth-2025-04-20,extended-cache-ttl-2025-04-11",
            )
            .header(
                "x-claude-code-session-id",
                "5b0c1a8e-0000-4000-8000-000000000001",
            )
            .header("user-agent", "claude-cli/2.1.332 (external, sdk-cli)")
    }

    fn messages(&self, token: &str, stream: bool) -> RequestBuilder {
        self.claude_oauth(reqwest::Method::POST, "/v1/messages?beta=true", token)
            .json(&messages_body(stream))
    }

    fn gemini(&self, method: &str, token: &str, body: Value) -> RequestBuilder {
        self.http
            .post(self.url(&format!("/v1internal:{method}")))
            .bearer_auth(token)
            .json(&body)
    }
}

fn messages_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-5-5",
        "max_tokens": 1024,
        "stream": stream,
        "system": [{"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."}],
        "messages": [{"role": "user", "content": PROMPT}],
        "metadata": {"user_id": "{\"device_id\":\"ab\",\"account_uuid\":\"\",\"session_id\":\"5b0c1a8e-0000-4000-8000-000000000001\"}"},
    })
}

fn generate_body(project: &str) -> Value {
    json!({
        "model": "gemini-2.5-pro",
        "project": project,
        "user_prompt_id": "p-1",
        "request": {
            "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
            "session_id": "gem-session-1",
        },
    })
}

async fn error_of(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// `event:`/`data:` frames of an SSE body.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut event = String::new();
            let mut data = String::new();
            for line in f.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (event, serde_json::from_str(&data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn claude_oauth_account_streams_a_message_with_unified_headers() {
    let s = Sim::new().await;
    let acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "c1", "provider": "claude", "primary_limit": 4, "secondary_limit": 40}),
        )
        .await;
    assert_eq!(acc["provider"], "claude");
    assert_eq!(acc["credential"], "oauth");
    let token = acc["access_token"].as_str().unwrap();
    assert!(token.starts_with("sk-ant-oat01-"), "{token}");
    assert!(acc["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("sk-ant-ort01-"));
    assert_eq!(acc["expires"], T0 + 8 * 3600);

    let r = s.messages(token, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(h["request-id"].to_str().unwrap().starts_with("req_"));
    assert_eq!(h["anthropic-ratelimit-unified-5h-utilization"], "0.25");
    assert_eq!(h["anthropic-ratelimit-unified-5h-status"], "allowed");
    assert_eq!(
        h["anthropic-ratelimit-unified-5h-reset"],
        (T0 + 5 * 3600).to_string().as_str()
    );
    assert_eq!(h["anthropic-ratelimit-unified-7d-utilization"], "0.025");
    assert_eq!(h["anthropic-ratelimit-unified-status"], "allowed");
    assert_eq!(
        h["anthropic-ratelimit-unified-representative-claim"],
        "five_hour"
    );
    assert!(h.get("set-cookie").is_none(), "no chatgpt.com cookies");
    let events = sse_events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"ping"));
    let idx = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(idx("content_block_start") < idx("content_block_delta"));
    assert!(idx("content_block_stop") < idx("message_delta"));
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "event name = data.type");
    }
    assert!(
        events[0].1["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from the codexmesh simulator.");
    let delta = &events[idx("message_delta")].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);

    // Non-streaming: one JSON message.
    let r = s.messages(token, false).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["anthropic-ratelimit-unified-5h-utilization"],
        "0.5"
    );
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["type"], "message");
    assert_eq!(
        m["content"][0]["text"],
        "Hello from the codexmesh simulator."
    );
    assert_eq!(m["stop_reason"], "end_turn");

    // count_tokens and models take no quota.
    let r = s
        .claude_oauth(
            reqwest::Method::POST,
            "/v1/messages/count_tokens?beta=true",
            token,
        )
        .json(
            &json!({"model": "claude-sonnet-5-5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: Value = r.json().await.unwrap();
    assert!(n["input_tokens"].as_u64().unwrap() >= 1);
    let r = s
        .claude_oauth(reqwest::Method::GET, "/v1/models", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["anthropic-ratelimit-unified-5h-utilization"],
        "0.5"
    );
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["data"][0]["type"], "model");
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], list["data"][0]["id"]);

    // The usage endpoint shows the same windows (0-100).
    let r = s
        .claude_oauth(reqwest::Method::GET, "/api/oauth/usage", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().await.unwrap();
    assert_eq!(u["five_hour"]["utilization"], 50.0);
    assert_eq!(u["seven_day"]["utilization"], 5.0);
    assert!(u["five_hour"]["resets_at"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));
    assert!(u["seven_day_opus"].is_null());
    assert_eq!(u["extra_usage"]["is_enabled"], false);

    // The profile names the plan.
    let r = s
        .claude_oauth(reqwest::Method::GET, "/api/oauth/profile", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["organization"]["organization_type"], "claude_max");
    assert!(p["account"]["uuid"].is_string());

    let view = s.get("/__sim/accounts/c1").await;
    assert_eq!(view["turns"], 2);
    assert_eq!(view["provider"], "claude");
}

#[tokio::test]
async fn claude_auth_rules() {
    let s = Sim::new().await;
    let oauth = s
        .post("/__sim/accounts", json!({"provider": "claude"}))
        .await;
    let oauth_token = oauth["access_token"].as_str().unwrap().to_string();
    let key_acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "k", "provider": "claude", "credential": "api_key"}),
        )
        .await;
    let key = key_acc["api_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-ant-api03-"));
    assert_eq!(key_acc["access_token"], key.as_str());
    assert!(key_acc["expires"].is_null());
    let codex = s.post("/__sim/accounts", json!({})).await;
    let codex_token = codex["access_token"].as_str().unwrap();

    let unauthorized = |(status, body): (u16, Value), msg: &str| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["message"], msg, "{body}");
        assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    };
    let url = s.url("/v1/messages?beta=true");
    let base = || {
        s.http
            .post(&url)
            .header("anthropic-version", "2023-06-01")
            .json(&messages_body(false))
    };
    // A bearer OAuth token without the oauth beta.
    let r = base()
        .bearer_auth(&oauth_token)
        .header("anthropic-beta", "claude-code-20250219")
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("request-id"));
    unauthorized(
        error_of(r).await,
        "OAuth authentication is currently not supported.",
    );
    // An OAuth token as x-api-key.
    let r = base()
        .header("x-api-key", &oauth_token)
        .header("anthropic-beta", "oauth-2025-04-20")
        .send()
        .await
        .unwrap();
    unauthorized(error_of(r).await, "invalid x-api-key");
    // An API key as a bearer (with the beta).
    let r = base()
        .bearer_auth(&key)
        .header("anthropic-beta", "oauth-2025-04-20")
        .send()
        .await
        .unwrap();
    unauthorized(error_of(r).await, "Invalid bearer token");
    // A Codex token is nobody here.
    let r = s.messages(codex_token, false).send().await.unwrap();
    unauthorized(error_of(r).await, "Invalid bearer token");
    // Nothing at all.
    let r = base().send().await.unwrap();
    unauthorized(error_of(r).await, "x-api-key header is required");
    // The API key as x-api-key works, with request/token headers and no unified ones.
    let r = base().header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["anthropic-ratelimit-requests-remaining"],
        "999999"
    );
    assert!(r.headers().contains_key("anthropic-ratelimit-tokens-limit"));
    assert!(!r
        .headers()
        .contains_key("anthropic-ratelimit-unified-status"));
    // The API key cannot read the OAuth usage endpoint.
    let r = s
        .http
        .get(s.url("/api/oauth/usage"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // anthropic-version is required.
    let r = s
        .http
        .post(&url)
        .header("x-api-key", &key)
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic-version"));
    // A body without max_tokens.
    let r = s
        .claude_oauth(reqwest::Method::POST, "/v1/messages", &oauth_token)
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "max_tokens: Field required");
    // An expired OAuth token.
    let id = oauth["account_id"].as_str().unwrap();
    s.post(
        &format!("/__sim/accounts/{id}"),
        json!({"expire_access_token": true}),
    )
    .await;
    let r = s.messages(&oauth_token, false).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The account is still known: its headers come along.
    assert!(r
        .headers()
        .contains_key("anthropic-ratelimit-unified-5h-status"));
    let (_, body) = error_of(r).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    // Claude tokens are refused on the Codex backend.
    let r = s
        .http
        .post(s.url("/backend-api/codex/responses"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-5.1-codex", "input": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn claude_quota_429_then_reset_on_the_clock() {
    let s = Sim::new().await;
    let acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "q", "provider": "claude", "primary_limit": 2}),
        )
        .await;
    let token = acc["access_token"].as_str().unwrap();
    for _ in 0..2 {
        assert_eq!(s.messages(token, true).send().await.unwrap().status(), 200);
    }
    s.advance(600).await;
    let r = s.messages(token, true).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    let reset = T0 + 5 * 3600;
    assert_eq!(
        h["retry-after"].to_str().unwrap(),
        (reset - T0 - 600).to_string()
    );
    assert_eq!(h["anthropic-ratelimit-unified-5h-status"], "rejected");
    assert_eq!(h["anthropic-ratelimit-unified-5h-utilization"], "1.0");
    assert_eq!(h["anthropic-ratelimit-unified-status"], "rejected");
    assert_eq!(
        h["anthropic-ratelimit-unified-reset"],
        reset.to_string().as_str()
    );
    assert_eq!(h["anthropic-ratelimit-unified-7d-status"], "allowed");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        body["request_id"].as_str().unwrap(),
        h["request-id"].to_str().unwrap()
    );
    // The clock passes the window: allowed again, the reset moved by one window.
    s.advance(5 * 3600).await;
    let r = s.messages(token, false).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["anthropic-ratelimit-unified-5h-status"],
        "allowed"
    );
    assert_eq!(
        r.headers()["anthropic-ratelimit-unified-5h-utilization"],
        "0.5"
    );
    assert_eq!(
        r.headers()["anthropic-ratelimit-unified-5h-reset"],
        (reset + 5 * 3600).to_string().as_str()
    );
}

#[tokio::test]
async fn claude_injected_failures_have_anthropics_shape() {
    let s = Sim::new().await;
    let acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "f", "provider": "claude"}),
        )
        .await;
    let token = acc["access_token"].as_str().unwrap();
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [
            {"status": 529, "account_id": "f"},
            {"status": 200, "mode": "sse_failed"},
            {"status": 200, "mode": "sse_truncated"},
            {"status": 500, "path_contains": "/v1/models"}
        ]}),
    )
    .await;
    let (status, body) = error_of(s.messages(token, true).send().await.unwrap()).await;
    assert_eq!(status, 529);
    assert_eq!(body["error"]["type"], "overloaded_error");
    let r = s.messages(token, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ev = sse_events(&r.text().await.unwrap());
    assert_eq!(ev.last().unwrap().0, "error");
    assert_eq!(ev.last().unwrap().1["error"]["type"], "overloaded_error");
    let r = s.messages(token, true).send().await.unwrap();
    let ev = sse_events(&r.text().await.unwrap());
    assert!(ev.iter().any(|(e, _)| e == "content_block_delta"));
    assert!(!ev.iter().any(|(e, _)| e == "message_stop"));
    let r = s
        .claude_oauth(reqwest::Method::GET, "/v1/models", token)
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "api_error");
    // Failed turns took no quota.
    assert_eq!(s.get("/__sim/accounts/f").await["primary"]["used"], 0);
}

async fn claude_refresh(s: &Sim, rt: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url("/v1/oauth/token"))
        .json(&json!({
            "grant_type": "refresh_token",
            "refresh_token": rt,
            "client_id": CLAUDE_CLIENT_ID,
            "scope": "user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload",
        }))
        .send()
        .await
        .unwrap();
    error_of(r).await
}

#[tokio::test]
async fn claude_refresh_rotates_and_reuse_revokes_the_lineage() {
    let s = Sim::new().await;
    let acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "r", "provider": "claude", "email": "r@x.test"}),
        )
        .await;
    let rt0 = acc["refresh_token"].as_str().unwrap().to_string();
    let (status, first) = claude_refresh(&s, &rt0).await;
    assert_eq!(status, 200, "{first}");
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt0);
    assert!(rt1.starts_with("sk-ant-ort01-"));
    assert!(first["access_token"]
        .as_str()
        .unwrap()
        .starts_with("sk-ant-oat01-"));
    assert_eq!(first["expires_in"], 8 * 3600);
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["account"]["email_address"], "r@x.test");
    assert!(first["account"]["uuid"].is_string());
    assert!(first["organization"]["uuid"].is_string());
    let new_access = first["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.messages(&new_access, false)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A wrong client id, a form body.
    let r = s
        .http
        .post(s.url("/v1/oauth/token"))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": rt1, "client_id": "app_EMoamEEZ73f0CkXaXp7hrann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1["error"], "invalid_client");
    // A Claude refresh token at the Codex endpoint is nobody's.
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": rt1, "client_id": "app_EMoamEEZ73f0CkXaXp7hrann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Replay the used token: invalid_grant, and the whole lineage is dead.
    let (status, body) = claude_refresh(&s, &rt0).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = claude_refresh(&s, &rt1).await;
    assert_eq!(
        status, 400,
        "the newest refresh token died with the lineage"
    );
    assert_eq!(
        s.messages(&new_access, false)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let view = s.get("/__sim/accounts/r").await;
    assert_eq!(view["revoked"], true);
    assert_eq!(view["revoked_reason"], "refresh_token_reused");
    assert_eq!(view["refresh_calls"], 3);
    assert_eq!(view["refresh_successes"], 1);
    // Unknown tokens.
    let (status, body) = claude_refresh(&s, "sk-ant-ort01-nope").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn credentials_files_are_what_the_clis_write() {
    let s = Sim::new().await;
    let c = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "cf", "provider": "claude", "plan": "pro"}),
        )
        .await;
    let f = s.get("/__sim/accounts/cf/credentials_file").await;
    let o = &f["claudeAiOauth"];
    assert_eq!(o["accessToken"], c["access_token"]);
    assert_eq!(o["refreshToken"], c["refresh_token"]);
    assert_eq!(o["expiresAt"], (T0 + 8 * 3600) * 1000);
    assert!(o["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "user:inference"));
    assert_eq!(o["subscriptionType"], "pro");
    assert!(o["rateLimitTier"].is_string());
    assert_eq!(c["credentials_file"], f);

    let k = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "kf", "provider": "claude", "credential": "api_key"}),
        )
        .await;
    let f = s.get("/__sim/accounts/kf/credentials_file").await;
    assert_eq!(f, json!({"api_key": k["api_key"]}));

    let g = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "gf", "provider": "gemini", "project_id": "proj-x"}),
        )
        .await;
    assert_eq!(g["project_id"], "proj-x");
    let f = s.get("/__sim/accounts/gf/credentials_file").await;
    assert!(f["access_token"].as_str().unwrap().starts_with("ya29."));
    assert!(f["refresh_token"].as_str().unwrap().starts_with("1//"));
    assert_eq!(f["token_type"], "Bearer");
    assert_eq!(f["expiry_date"], (T0 + 3599) * 1000);
    assert!(f["scope"].as_str().unwrap().contains("cloud-platform"));
    assert_eq!(f["id_token"].as_str().unwrap().split('.').count(), 3);
    let view = s.get("/__sim/accounts/gf").await;
    assert_eq!(view["provider"], "gemini");
    assert_eq!(view["project_id"], "proj-x");
    assert_eq!(view["primary"]["window_minutes"], 1440);
    // A default project is derived from the id.
    let d = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "Gem-2", "provider": "gemini"}),
        )
        .await;
    assert_eq!(d["project_id"], "sim-project-gem2");
    // Bad combinations are refused.
    let r = s
        .http
        .post(s.url("/__sim/accounts"))
        .json(&json!({"provider": "codex", "project_id": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .post(s.url("/__sim/accounts"))
        .json(&json!({"provider": "mistral"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .get(s.url("/__sim/accounts/none/credentials_file"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Codex accounts: auth.json.
    s.post("/__sim/accounts", json!({"account_id": "x"})).await;
    let f = s.get("/__sim/accounts/x/credentials_file").await;
    assert_eq!(f["auth_mode"], "chatgpt");
}

#[tokio::test]
async fn gemini_code_assist_flow_with_project_enforcement() {
    let s = Sim::new().await;
    let acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "g", "provider": "gemini", "project_id": "proj-g", "primary_limit": 2, "access_token_ttl_secs": 200_000}),
        )
        .await;
    let token = acc["access_token"].as_str().unwrap().to_string();
    let other = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "h", "provider": "gemini", "project_id": "proj-h"}),
        )
        .await;

    // Start-up calls.
    let r = s
        .gemini("loadCodeAssist", &token, json!({"metadata": {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["currentTier"]["id"], "standard-tier");
    assert_eq!(l["cloudaicompanionProject"], "proj-g");
    assert!(l["allowedTiers"].is_array());
    for m in [
        "listExperiments",
        "fetchAdminControls",
        "recordCodeAssistMetrics",
        "setCodeAssistGlobalUserSetting",
    ] {
        let r = s
            .gemini(m, &token, json!({"project": "proj-g"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m}");
    }
    let r = s
        .http
        .get(s.url("/v1internal:getCodeAssistGlobalUserSetting"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .gemini("onboardUser", &token, json!({"tierId": "standard-tier"}))
        .send()
        .await
        .unwrap();
    let op: Value = r.json().await.unwrap();
    assert_eq!(op["done"], true);
    assert_eq!(op["response"]["cloudaicompanionProject"]["id"], "proj-g");
    let r = s
        .gemini(
            "countTokens",
            &token,
            json!({"request": {"model": "models/gemini-2.5-pro", "contents": []}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.json::<Value>().await.unwrap()["totalTokens"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let r = s
        .gemini("noSuchMethod", &token, json!({}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );

    // Wrong or missing project: 403 PERMISSION_DENIED.
    for body in [
        generate_body("proj-h"),
        json!({"model": "gemini-2.5-pro", "request": {"contents": []}}),
    ] {
        let (status, e) = error_of(
            s.gemini("generateContent", &token, body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403);
        assert_eq!(e["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(e["error"]["code"], 403);
    }
    // Another account's token with this project is refused too.
    let other_token = other["access_token"].as_str().unwrap();
    let r = s
        .gemini("generateContent", other_token, generate_body("proj-g"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Bad bearer.
    let (status, e) = error_of(
        s.gemini("generateContent", "ya29.nope", generate_body("proj-g"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(e["error"]["status"], "UNAUTHENTICATED");

    // generateContent with the right project.
    let r = s
        .gemini("generateContent", &token, generate_body("proj-g"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["response"]["candidates"][0]["content"]["parts"][0]["text"],
        "Hello from the codexmesh simulator."
    );
    assert!(
        v["response"]["usageMetadata"]["totalTokenCount"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(v["traceId"].is_string());

    // The router's classifier call gets JSON text.
    let mut classifier = generate_body("proj-g");
    classifier["model"] = json!("gemini-3.1-flash-lite");
    classifier["request"]["generationConfig"] = json!({"responseJsonSchema": {
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "model_choice": {"type": "string", "enum": ["flash", "pro"]}},
        "required": ["reasoning", "model_choice"]}});
    let v: Value = s
        .gemini("generateContent", &token, classifier)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = v["response"]["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    let doc: Value = serde_json::from_str(text).unwrap();
    assert_eq!(doc["model_choice"], "flash");

    // The daily window is spent (2 turns): 429 RESOURCE_EXHAUSTED with the reset.
    let r = s
        .http
        .post(s.url("/v1internal:streamGenerateContent?alt=sse"))
        .bearer_auth(&token)
        .json(&generate_body("proj-g"))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(r).await;
    assert_eq!(status, 429);
    let e = &e["error"];
    assert_eq!(e["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(e["details"][0]["reason"], "QUOTA_EXHAUSTED");
    assert_eq!(e["details"][0]["metadata"]["quotaResetDelay"], "86400s");
    assert_eq!(
        e["details"][1]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    assert_eq!(
        e["details"][2]["@type"],
        "type.googleapis.com/google.rpc.QuotaFailure"
    );
    let q: Value = s
        .gemini("retrieveUserQuota", &token, json!({"project": "proj-g"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["buckets"][0]["remainingFraction"], 0.0);
    assert_eq!(q["buckets"][0]["remainingAmount"], "0");

    // A day later the window is fresh; the stream is data-only SSE.
    s.advance(86_400).await;
    let q: Value = s
        .gemini("retrieveUserQuota", &token, json!({"project": "proj-g"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["buckets"][0]["remainingFraction"], 1.0);
    let r = s
        .http
        .post(s.url("/v1internal:streamGenerateContent?alt=sse"))
        .bearer_auth(&token)
        .json(&generate_body("proj-g"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    assert!(!text.contains("event:"));
    assert!(!text.contains("[DONE]"));
    let frames: Vec<Value> = text
        .split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(frames.len() >= 2);
    let joined: String = frames
        .iter()
        .map(|f| {
            f["response"]["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(joined, "Hello from the codexmesh simulator.");
    assert_eq!(
        frames.last().unwrap()["response"]["candidates"][0]["finishReason"],
        "STOP"
    );

    // Injected failures answer google.rpc.
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [{"status": 503, "account_id": "g"}]}),
    )
    .await;
    let (status, e) = error_of(
        s.gemini("generateContent", &token, generate_body("proj-g"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(e["error"]["status"], "UNAVAILABLE");
}

async fn google_refresh(s: &Sim, rt: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url("/google/oauth2/token"))
        .form(&[
            ("client_id", "sim-client.apps.googleusercontent.com"),
            ("client_secret", "sim-secret"),
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
        ])
        .send()
        .await
        .unwrap();
    error_of(r).await
}

#[tokio::test]
async fn google_refresh_keeps_the_refresh_token_unless_asked() {
    let s = Sim::new().await;
    let acc = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "gr", "provider": "gemini"}),
        )
        .await;
    let rt = acc["refresh_token"].as_str().unwrap().to_string();
    let old_access = acc["access_token"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let (status, v) = google_refresh(&s, &rt).await;
        assert_eq!(status, 200, "{v}");
        assert!(v["access_token"].as_str().unwrap().starts_with("ya29."));
        assert_ne!(v["access_token"], old_access.as_str());
        assert_eq!(v["expires_in"], 3599);
        assert_eq!(v["token_type"], "Bearer");
        assert!(v["id_token"].is_string());
        assert!(
            v.get("refresh_token").is_none(),
            "Google keeps the refresh token"
        );
    }
    let view = s.get("/__sim/accounts/gr").await;
    assert_eq!(view["refresh_token"], rt.as_str());
    assert_eq!(view["refresh_successes"], 2);
    assert_eq!(
        view["last_client_id"],
        "sim-client.apps.googleusercontent.com"
    );
    assert_eq!(view["last_client_secret"], "sim-secret");
    assert_eq!(view["revoked"], false);
    // The new access token works on Code Assist.
    let token = view["access_token"].as_str().unwrap();
    let project = view["project_id"].as_str().unwrap();
    assert_eq!(
        s.gemini("generateContent", token, generate_body(project))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Missing client credentials, unknown token.
    let r = s
        .http
        .post(s.url("/google/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1["error"], "invalid_client");
    let (status, v) = google_refresh(&s, "1//nope").await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));

    // With rotation on, a new refresh token each time, and the old one is single-use.
    s.post(
        "/__sim/behavior",
        json!({"google_rotates_refresh_tokens": true}),
    )
    .await;
    let (status, v) = google_refresh(&s, &rt).await;
    assert_eq!(status, 200);
    let rt2 = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt2, rt);
    let (status, _) = google_refresh(&s, &rt).await;
    assert_eq!(status, 400);
    assert_eq!(s.get("/__sim/accounts/gr").await["revoked"], true);

    // Revoked by the operator: invalid_grant.
    let fresh = s
        .post("/__sim/accounts", json!({"provider": "gemini"}))
        .await;
    let id = fresh["account_id"].as_str().unwrap();
    s.post(&format!("/__sim/accounts/{id}"), json!({"revoke": true}))
        .await;
    let (status, v) = google_refresh(&s, fresh["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn recording_keeps_credentials_and_facts_but_no_prompt() {
    let s = Sim::new().await;
    let c = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "rc", "provider": "claude"}),
        )
        .await;
    let g = s
        .post(
            "/__sim/accounts",
            json!({"account_id": "rg", "provider": "gemini", "project_id": "proj-rg"}),
        )
        .await;
    let ctoken = c["access_token"].as_str().unwrap();
    assert_eq!(s.messages(ctoken, true).send().await.unwrap().status(), 200);
    let gtoken = g["access_token"].as_str().unwrap();
    assert_eq!(
        s.gemini("generateContent", gtoken, generate_body("proj-rg"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let log = s.get("/__sim/requests?include_body=1").await;
    let log = log.as_array().unwrap();
    assert!(
        !log.to_vec()
            .iter()
            .any(|r| r.to_string().contains("launch codes")),
        "no prompt text anywhere in the log"
    );
    let claude = log.iter().find(|r| r["path"] == "/v1/messages").unwrap();
    assert_eq!(claude["query"], "beta=true");
    assert_eq!(claude["account_id"], "rc");
    assert_eq!(claude["provider"], "claude");
    assert_eq!(claude["model"], "claude-sonnet-5-5");
    assert_eq!(claude["stream"], true);
    assert_eq!(claude["session_id"], "5b0c1a8e-0000-4000-8000-000000000001");
    assert_eq!(
        claude["headers"]["authorization"],
        format!("Bearer {ctoken}")
    );
    assert!(claude["headers"]["anthropic-beta"]
        .as_str()
        .unwrap()
        .contains("oauth-2025-04-20"));
    assert_eq!(claude["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(
        claude["headers"]["x-claude-code-session-id"],
        "5b0c1a8e-0000-4000-8000-000000000001"
    );
    assert!(claude["body_json"].is_null());
    assert_eq!(claude["status"], 200);
    let gem = log
        .iter()
        .find(|r| r["path"] == "/v1internal:generateContent")
        .unwrap();
    assert_eq!(gem["account_id"], "rg");
    assert_eq!(gem["provider"], "gemini");
    assert_eq!(gem["project"], "proj-rg");
    assert_eq!(gem["session_id"], "gem-session-1");
    assert_eq!(gem["user_prompt_id"], "p-1");
    assert_eq!(gem["model"], "gemini-2.5-pro");
    assert!(gem["body_json"].is_null());
    // Filtering by account works for the new providers too.
    let only = s.get("/__sim/requests?account_id=rg").await;
    assert_eq!(only.as_array().unwrap().len(), 1);
}
