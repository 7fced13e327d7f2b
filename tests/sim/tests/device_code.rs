//! Device-code login over real HTTP, spoken the way the Codex CLI speaks it
//! (`codex login --device-auth`): usercode → poll → `authorization_code` exchange.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use codexmesh_sim::{start, RunningSim};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
const T0: i64 = 1_800_000_000;

struct Sim {
    sim: RunningSim,
    http: Client,
}

/// What the usercode endpoint handed out.
struct Code {
    device_auth_id: String,
    user_code: String,
}

/// What an approved poll handed out.
struct Grant {
    authorization_code: String,
    code_challenge: String,
    code_verifier: String,
}

impl Sim {
    async fn new() -> Self {
        let sim = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let http = Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let s = Self { sim, http };
        s.control("/__sim/clock", json!({"set_unix": T0, "scale": 0.0}))
            .await;
        s
    }

    /// The issuer as a client would configure it.
    fn issuer(&self) -> String {
        self.sim.base_url()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer(), path)
    }

    async fn post_json(&self, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let r = self.post_json(path, body).await;
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

    /// Step 1: the answer as JSON, and the code it carries.
    async fn request_code(&self) -> (Value, Code) {
        let r = self
            .post_json(
                "/api/accounts/deviceauth/usercode",
                json!({"client_id": CLIENT_ID}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let code = Code {
            device_auth_id: v["device_auth_id"].as_str().unwrap().to_string(),
            user_code: v["user_code"].as_str().unwrap().to_string(),
        };
        (v, code)
    }

    /// Step 1 with the default behaviour, checking the answer's shape.
    async fn usercode(&self) -> Code {
        let (v, code) = self.request_code().await;
        // The CLI parses `interval` from a string (as the real server sends it).
        assert_eq!(v["interval"], "5");
        assert_eq!(v["expires_at"], "2027-01-15T08:15:00.000000Z");
        code
    }

    async fn poll(&self, code: &Code) -> Response {
        self.post_json(
            "/api/accounts/deviceauth/token",
            json!({"device_auth_id": code.device_auth_id, "user_code": code.user_code}),
        )
        .await
    }

    /// A poll that must be answered "pending".
    async fn poll_pending(&self, code: &Code) {
        let r = self.poll(code).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "deviceauth_authorization_pending");
    }

    /// A poll that must hand out the code.
    async fn poll_granted(&self, code: &Code) -> Grant {
        let r = self.poll(code).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        Grant {
            authorization_code: v["authorization_code"].as_str().unwrap().to_string(),
            code_challenge: v["code_challenge"].as_str().unwrap().to_string(),
            code_verifier: v["code_verifier"].as_str().unwrap().to_string(),
        }
    }

    /// Step 4, form-encoded as the CLI sends it.
    async fn exchange(&self, code: &str, verifier: &str, redirect_uri: &str) -> Response {
        self.http
            .post(self.url("/oauth/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("client_id", CLIENT_ID),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap()
    }

    fn callback(&self) -> String {
        format!("{}/deviceauth/callback", self.issuer())
    }

    async fn turn(&self, access_token: &str, account_id: &str) -> Response {
        self.http
            .post(self.url("/backend-api/codex/responses"))
            .bearer_auth(access_token)
            .header("chatgpt-account-id", account_id)
            .json(&json!({
                "model": "gpt-5.1-codex",
                "instructions": "be brief",
                "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                "tools": [],
                "tool_choice": "auto",
                "parallel_tool_calls": false,
                "store": false,
                "stream": true,
                "include": [],
            }))
            .send()
            .await
            .unwrap()
    }

    async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/oauth/token",
            json!({"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": refresh_token}),
        )
        .await
    }
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn s256(verifier: &str) -> String {
    use sha2::{Digest, Sha256};
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approved_exchanged_and_the_tokens_work() {
    let s = Sim::new().await;
    let code = s.usercode().await;
    assert_eq!(code.user_code.len(), 10);
    assert!(code.device_auth_id.starts_with("deviceauth_"));

    s.poll_pending(&code).await;
    s.poll_pending(&code).await;
    let listed = s.get("/__sim/device").await;
    assert_eq!(listed["logins"][0]["status"], "pending");
    assert_eq!(listed["logins"][0]["polls"], 2);
    assert_eq!(listed["logins"][0]["user_code"], code.user_code.as_str());

    // The user approves as a new account (user code typed in lower case).
    let approved = s
        .control(
            "/__sim/device/approve",
            json!({
                "user_code": code.user_code.to_lowercase(),
                "account_id": "acc-dev",
                "plan": "pro",
                "email": "dev@example.test",
            }),
        )
        .await;
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["account_id"], "acc-dev");
    assert_eq!(approved["new_account"], true);
    // The account appears at the exchange, not before.
    let r = s
        .http
        .get(s.url("/__sim/accounts/acc-dev"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let grant = s.poll_granted(&code).await;
    assert_eq!(s256(&grant.code_verifier), grant.code_challenge);

    // A wrong verifier, and a wrong redirect_uri, are refused; the code stays good.
    let r = s
        .exchange(&grant.authorization_code, "not-the-verifier", &s.callback())
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");
    let r = s
        .exchange(
            &grant.authorization_code,
            &grant.code_verifier,
            &format!("{}/api/accounts/deviceauth/callback", s.issuer()),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = s
        .exchange(
            &grant.authorization_code,
            &grant.code_verifier,
            &s.callback(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    let access = tokens["access_token"].as_str().unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let idc = claims(id_token);
    assert_eq!(idc["email"], "dev@example.test");
    assert_eq!(
        idc["https://api.openai.com/auth"]["chatgpt_account_id"],
        "acc-dev"
    );
    assert_eq!(
        claims(access)["https://api.openai.com/auth"]["chatgpt_plan_type"],
        "pro"
    );

    // The code is single-use.
    let r = s
        .exchange(
            &grant.authorization_code,
            &grant.code_verifier,
            &s.callback(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The tokens work upstream, and the refresh token rotates.
    let r = s.turn(access, "acc-dev").await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await.unwrap();
    let r = s.refresh(refresh).await;
    assert_eq!(r.status(), StatusCode::OK);

    let state = s.get("/__sim/accounts/acc-dev").await;
    assert_eq!(state["plan"], "pro");
    assert_eq!(state["logins"], 1);
    assert_eq!(state["turns"], 1);
    let listed = s.get("/__sim/device").await;
    assert_eq!(listed["logins"][0]["status"], "exchanged");
    assert_eq!(listed["logins"][0]["exchanged_at"], T0);
    assert_eq!(listed["logins"][0]["new_account"], false);

    // Every step is in the request log, attributed once the account is known.
    let log = s.get("/__sim/requests?include_body=1").await;
    let rows: Vec<(String, u64, Value)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
                r["account_id"].clone(),
            )
        })
        .collect();
    let expect = [
        ("/api/accounts/deviceauth/usercode", 200, Value::Null),
        ("/api/accounts/deviceauth/token", 403, Value::Null),
        ("/api/accounts/deviceauth/token", 403, Value::Null),
        ("/api/accounts/deviceauth/token", 200, json!("acc-dev")),
        ("/oauth/token", 400, json!("acc-dev")),
        ("/oauth/token", 400, json!("acc-dev")),
        ("/oauth/token", 200, json!("acc-dev")),
        ("/oauth/token", 400, json!("acc-dev")),
        ("/backend-api/codex/responses", 200, json!("acc-dev")),
        ("/oauth/token", 200, json!("acc-dev")),
    ];
    let expect: Vec<(String, u64, Value)> = expect
        .into_iter()
        .map(|(p, st, a)| (p.to_string(), st, a))
        .collect();
    assert_eq!(rows, expect);
    assert_eq!(log[0]["body_json"]["client_id"], CLIENT_ID);
    assert_eq!(
        log[6]["headers"]["content-type"],
        "application/x-www-form-urlencoded"
    );
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_into_an_existing_account_starts_a_new_lineage() {
    let s = Sim::new().await;
    let acc = s
        .control("/__sim/accounts", json!({"account_id": "acc-old"}))
        .await;
    let old_refresh = acc["refresh_token"].as_str().unwrap().to_string();

    let code = s.usercode().await;
    // Without user_code: the only pending login.
    let approved = s
        .control(
            "/__sim/device/approve",
            json!({"account_id": "acc-old", "plan": "team"}),
        )
        .await;
    assert_eq!(approved["new_account"], false);
    let grant = s.poll_granted(&code).await;
    let r = s
        .exchange(
            &grant.authorization_code,
            &grant.code_verifier,
            &s.callback(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    assert_ne!(tokens["refresh_token"], old_refresh.as_str());
    let r = s
        .turn(tokens["access_token"].as_str().unwrap(), "acc-old")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await.unwrap();

    let state = s.get("/__sim/accounts/acc-old").await;
    assert_eq!(state["logins"], 2);
    assert_eq!(state["lineage"], 1);
    assert_eq!(state["plan"], "team");
    assert_eq!(state["refresh_token"], tokens["refresh_token"]);
    // The earlier login keeps its own lineage (as with POST /__sim/accounts/{id}/login).
    assert_eq!(s.refresh(&old_refresh).await.status(), StatusCode::OK);
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_login_never_yields_a_code() {
    let s = Sim::new().await;
    let code = s.usercode().await;
    s.poll_pending(&code).await;
    let denied = s
        .control(
            "/__sim/device/deny",
            json!({"user_code": code.user_code.replace('-', "")}),
        )
        .await;
    assert_eq!(denied["status"], "denied");
    assert_eq!(denied["denied_at"], T0);

    let r = s.poll(&code).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deviceauth_authorization_denied");

    // A client that stops on status alone (as the CLI does) can be given one.
    s.control("/__sim/behavior", json!({"device_denied_status": 400}))
        .await;
    assert_eq!(s.poll(&code).await.status(), StatusCode::BAD_REQUEST);

    // Neither approving nor denying again is possible.
    let r = s
        .post_json(
            "/__sim/device/approve",
            json!({"user_code": code.user_code}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = s.post_json("/__sim/device/deny", json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(s.get("/__sim/accounts").await["accounts"], json!([]));
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_expire_on_the_simulated_clock() {
    let s = Sim::new().await;
    s.control("/__sim/behavior", json!({"device_code_ttl_secs": 60}))
        .await;
    let (answer, code) = s.request_code().await;
    assert_eq!(answer["expires_at"], "2027-01-15T08:01:00.000000Z");
    s.control("/__sim/clock", json!({"advance_secs": 59})).await;
    s.poll_pending(&code).await;
    s.control("/__sim/clock", json!({"advance_secs": 1})).await;
    let r = s.poll(&code).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deviceauth_user_code_expired");
    let r = s
        .post_json(
            "/__sim/device/approve",
            json!({"user_code": code.user_code}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        s.get("/__sim/device").await["logins"][0]["status"],
        "expired"
    );

    // An approved but unexchanged code expires too (10 minutes after approval).
    let (_, code) = s.request_code().await;
    s.control("/__sim/device/approve", json!({})).await;
    let grant = s.poll_granted(&code).await;
    s.control("/__sim/clock", json!({"advance_secs": 600}))
        .await;
    let r = s
        .exchange(
            &grant.authorization_code,
            &grant.code_verifier,
            &s.callback(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");
    s.control("/__sim/behavior", json!({"device_expired_status": 410}))
        .await;
    assert_eq!(s.poll(&code).await.status(), StatusCode::GONE);
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_approval_lets_a_cli_test_run_unattended() {
    let s = Sim::new().await;
    let b = s
        .control(
            "/__sim/behavior",
            json!({"device_auto_approve_after_polls": 2, "device_poll_interval_secs": 0}),
        )
        .await;
    assert_eq!(b["device_auto_approve_after_polls"], 2);
    assert_eq!(b["device_auto_approve_as"], Value::Null);

    // What a client does: poll at the interval until 200 (bounded here).
    let (answer, code) = s.request_code().await;
    assert_eq!(answer["interval"], "0");
    let mut statuses = Vec::new();
    let mut grant = None;
    for _ in 0..10 {
        let r = s.poll(&code).await;
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::OK {
            grant = Some(r.json::<Value>().await.unwrap());
            break;
        }
    }
    assert_eq!(statuses, vec![403, 403, 200]);
    let grant = grant.unwrap();
    let r = s
        .exchange(
            grant["authorization_code"].as_str().unwrap(),
            grant["code_verifier"].as_str().unwrap(),
            &s.callback(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    let account = claims(tokens["id_token"].as_str().unwrap())["https://api.openai.com/auth"]
        ["chatgpt_account_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .turn(tokens["access_token"].as_str().unwrap(), &account)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.bytes().await.unwrap();
    assert_eq!(
        s.get(&format!("/__sim/accounts/{account}")).await["plan"],
        "plus"
    );

    // Auto-approval into a named account.
    s.control(
        "/__sim/behavior",
        json!({"device_auto_approve_after_polls": 0, "device_auto_approve_as": {"account_id": "acc-auto", "email": "auto@example.test"}}),
    )
    .await;
    let (_, code) = s.request_code().await;
    let grant = s.poll_granted(&code).await;
    let r = s
        .exchange(
            &grant.authorization_code,
            &grant.code_verifier,
            &s.callback(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let state = s.get("/__sim/accounts/acc-auto").await;
    assert_eq!(state["email"], "auto@example.test");
    s.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_like_upstream() {
    let s = Sim::new().await;
    // The deviceauth endpoints take JSON only.
    let r = s
        .http
        .post(s.url("/api/accounts/deviceauth/usercode"))
        .form(&[("client_id", CLIENT_ID)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"][0]["type"], "model_attributes_type");
    let r = s
        .post_json("/api/accounts/deviceauth/usercode", json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .post_json(
            "/api/accounts/deviceauth/usercode",
            json!({"client_id": "someone-else"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let code = s.usercode().await;
    // The poll needs both fields.
    let r = s
        .post_json(
            "/api/accounts/deviceauth/token",
            json!({"device_auth_id": code.device_auth_id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["detail"][0]["loc"], json!(["body", "user_code"]));
    assert_eq!(v["detail"][0]["msg"], "Field required");
    // Unknown id, or a user code of another login: 404 (which the CLI treats as pending).
    let r = s
        .poll(&Code {
            device_auth_id: "deviceauth_nope".into(),
            user_code: code.user_code.clone(),
        })
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deviceauth_not_found");

    // The token endpoint: missing fields, unknown code, other grants.
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "ac_x"),
            ("client_id", CLIENT_ID),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    let r = s.exchange("ac_unknown", "v", &s.callback()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_grant");
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("client_id", CLIENT_ID),
            ("requested_token", "openai-api-key"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unsupported_grant_type");

    // The verification page exists; bad control calls are refused.
    let r = s.http.get(s.url("/codex/device")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .post_json("/__sim/device/approve", json!({"user_code": "NOPE-NOPE1"}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s
        .post_json("/__sim/device/approve", json!({"account_id": ""}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .post_json("/__sim/device/approve", json!({"bogus": 1}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.usercode().await;
    let r = s.post_json("/__sim/device/approve", json!({})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "two pending logins");

    // Device login switched off: the usercode endpoint is a 404.
    s.control("/__sim/behavior", json!({"device_login_enabled": false}))
        .await;
    let r = s
        .post_json(
            "/api/accounts/deviceauth/usercode",
            json!({"client_id": CLIENT_ID}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.sim.shutdown().await.unwrap();
}
