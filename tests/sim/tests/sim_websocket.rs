//! The Responses WebSocket over real TCP on 127.0.0.1, driven by a tokio-tungstenite client.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use codexmesh_sim::{start, RunningSim};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::Client;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Response as HttpResponse};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Handshake = HttpResponse<Option<Vec<u8>>>;

const PATH: &str = "/backend-api/codex/responses";
const WAIT: Duration = Duration::from_secs(10);

struct Sim {
    sim: RunningSim,
    http: Client,
}

impl Sim {
    async fn new() -> Self {
        let sim = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let http = Client::builder().timeout(WAIT).build().unwrap();
        Self { sim, http }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A new account; its access token.
    async fn account(&self, id: &str) -> String {
        let v = self
            .post("/__sim/accounts", json!({"account_id": id}))
            .await;
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Open a WebSocket on `path` with these extra headers.
    async fn connect(
        &self,
        path: &str,
        token: &str,
        extra: &[(&str, &str)],
    ) -> Result<(Ws, Handshake), WsError> {
        let url = format!("ws://{}{path}", self.sim.addr);
        let mut req = url.into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h.insert(
            "openai-beta",
            HeaderValue::from_static("responses_websockets=2026-02-06"),
        );
        for (k, v) in extra {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake timed out")
    }

    async fn open(&self, token: &str) -> (Ws, Handshake) {
        self.connect(PATH, token, &[]).await.unwrap()
    }

    /// The request log entries of WebSocket upgrades.
    async fn ws_records(&self) -> Vec<Value> {
        let v = self
            .get("/__sim/requests?path_contains=/responses&include_body=1")
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["websocket"] == true)
            .cloned()
            .collect()
    }

    /// Wait until the log shows how the WebSocket `seq` ended.
    async fn closed_record(&self, seq: &Value) -> Value {
        let started = Instant::now();
        loop {
            let recs = self.ws_records().await;
            let rec = recs.iter().find(|r| &r["seq"] == seq).unwrap().clone();
            if !rec["ws_close"].is_null() {
                return rec;
            }
            assert!(started.elapsed() < WAIT, "never closed: {rec}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn create(extra: Value) -> Value {
    let mut frame = json!({
        "type": "response.create",
        "model": "gpt-5.1-codex",
        "instructions": "be brief",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": true,
        "include": [],
        "prompt_cache_key": "thread-1",
    });
    for (k, v) in extra.as_object().unwrap() {
        frame[k] = v.clone();
    }
    frame
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

fn is_terminal(ev: &Value) -> bool {
    matches!(
        ev["type"].as_str(),
        Some("response.completed" | "response.failed" | "response.incomplete" | "error")
    )
}

/// Read events up to and including the one that ends the turn.
async fn read_turn(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no event in time")
            .expect("connection ended")
            .expect("websocket error");
        let Message::Text(t) = msg else {
            panic!("unexpected frame {msg:?}");
        };
        let ev: Value = serde_json::from_str(t.as_str()).unwrap();
        let done = is_terminal(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
    panic!("turn never ended: {out:?}");
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn header<'a>(r: &'a Handshake, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

fn refused(err: WsError) -> (u16, Value, Handshake) {
    let WsError::Http(resp) = err else {
        panic!("expected an HTTP refusal, got {err:?}");
    };
    let body = resp.body().clone().unwrap_or_default();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (resp.status().as_u16(), v, *resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_then_two_turns_on_one_connection() {
    let s = Sim::new().await;
    let token = s.account("acc-a").await;
    let (mut ws, hs) = s
        .connect(
            PATH,
            &token,
            &[
                ("chatgpt-account-id", "acc-a"),
                (
                    "sec-websocket-extensions",
                    "permessage-deflate; client_max_window_bits",
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(hs.status().as_u16(), 101);
    assert_eq!(header(&hs, "x-codex-primary-used-percent"), "0.0");
    assert_eq!(header(&hs, "x-codex-primary-window-minutes"), "300");
    assert_eq!(header(&hs, "x-codex-active-limit"), "codex");
    assert!(header(&hs, "x-codex-turn-state").starts_with("ts_acc-a_"));
    assert!(!header(&hs, "x-models-etag").is_empty());
    assert!(
        hs.headers().get("sec-websocket-extensions").is_none(),
        "permessage-deflate must be declined"
    );

    // Warm-up: created + completed, nothing generated, nothing charged.
    send(&mut ws, create(json!({"generate": false}))).await;
    let warm = read_turn(&mut ws).await;
    assert_eq!(
        kinds(&warm),
        [
            "codex.rate_limits",
            "response.created",
            "response.completed"
        ]
    );
    let rl = &warm[0];
    assert_eq!(rl["plan_type"], "plus");
    assert_eq!(rl["rate_limits"]["allowed"], true);
    assert_eq!(rl["rate_limits"]["primary"]["used_percent"], 0.0);
    assert_eq!(rl["rate_limits"]["primary"]["window_minutes"], 300);
    assert_eq!(rl["rate_limits"]["secondary"]["window_minutes"], 10080);
    assert!(rl["rate_limits"]["primary"]["reset_at"].as_i64().unwrap() > 0);
    assert_eq!(warm[2]["response"]["output"], json!([]));
    assert!(warm[2]["response"].get("usage").is_none());
    let warm_id = warm[2]["response"]["id"].as_str().unwrap().to_string();
    let acc = s.get("/__sim/accounts/acc-a").await;
    assert_eq!(acc["turns"], 0);
    assert_eq!(acc["primary"]["used"], 0);

    // Turn 1 continues the warm-up, turn 2 continues turn 1.
    send(
        &mut ws,
        create(json!({"previous_response_id": warm_id, "input": []})),
    )
    .await;
    let t1 = read_turn(&mut ws).await;
    assert_eq!(
        kinds(&t1),
        [
            "codex.rate_limits",
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let text: String = t1
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from the codexmesh simulator.");
    assert!(
        t1[11]["response"]["usage"]["total_tokens"]
            .as_i64()
            .unwrap()
            > 0
    );
    let t1_id = t1[11]["response"]["id"].as_str().unwrap().to_string();
    assert_ne!(t1_id, warm_id);

    send(
        &mut ws,
        create(json!({"previous_response_id": t1_id, "model": "gpt-5.5"})),
    )
    .await;
    let t2 = read_turn(&mut ws).await;
    assert_eq!(t2.last().unwrap()["type"], "response.completed");
    assert_eq!(t2.last().unwrap()["response"]["model"], "gpt-5.5");
    // The rate-limit event counts the turns already charged (this one included).
    assert!(
        t2[0]["rate_limits"]["primary"]["used_percent"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let t2_id = t2.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A ping is answered, and is not a data frame.
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(pong, Message::Pong(_)), "{pong:?}");

    ws.close(None).await.unwrap();
    let acc = s.get("/__sim/accounts/acc-a").await;
    assert_eq!(acc["turns"], 2);
    assert_eq!(acc["primary"]["used"], 2);

    // The request log: one GET with the frames it carried.
    let recs = s.ws_records().await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = s.closed_record(&recs[0]["seq"]).await;
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["path"], PATH);
    assert_eq!(rec["status"], 101);
    assert_eq!(rec["account_id"], "acc-a");
    assert_eq!(rec["headers"]["chatgpt-account-id"], "acc-a");
    assert_eq!(
        rec["headers"]["openai-beta"],
        "responses_websockets=2026-02-06"
    );
    assert!(rec["headers"]["authorization"]
        .as_str()
        .unwrap()
        .ends_with(&token));
    assert_eq!(
        rec["ws_extensions_offered"],
        "permessage-deflate; client_max_window_bits"
    );
    assert_eq!(rec["model"], "gpt-5.1-codex");
    assert_eq!(rec["ws_frames_received"], 3);
    assert_eq!(rec["ws_frames_sent"], 3 + 12 + 12);
    assert_eq!(rec["ws_close"], "client");
    let frames = rec["ws_requests"].as_array().unwrap();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0]["type"], "response.create");
    assert_eq!(frames[0]["generate"], false);
    assert_eq!(frames[0]["previous_response_id"], Value::Null);
    assert_eq!(frames[0]["outcome"], "warmup");
    assert_eq!(frames[0]["response_id"], warm_id.as_str());
    assert_eq!(frames[1]["generate"], Value::Null);
    assert_eq!(frames[1]["previous_response_id"], warm_id.as_str());
    assert_eq!(frames[1]["outcome"], "completed");
    assert_eq!(frames[2]["model"], "gpt-5.5");
    assert_eq!(frames[2]["previous_response_id"], t1_id.as_str());
    assert_eq!(frames[2]["response_id"], t2_id.as_str());
    // Frame bodies are shown like request bodies (with include_body).
    assert_eq!(frames[1]["body_json"]["input"], json!([]));
    assert!(frames[1]["body_json_keys"]
        .as_array()
        .unwrap()
        .contains(&json!("previous_response_id")));
    assert!(frames[1]["len"].as_u64().unwrap() > 10);

    // Without include_body the frames carry no body.
    let plain = s.get("/__sim/requests?path_contains=/responses").await;
    assert!(plain[0]["ws_requests"][1].get("body_json").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_authenticates_like_http_turns() {
    let s = Sim::new().await;
    let token = s.account("acc-a").await;

    let (status, body, _) = refused(s.connect(PATH, "not-a-token", &[]).await.unwrap_err());
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let (status, _, hs) = refused(
        s.connect(PATH, &token, &[("chatgpt-account-id", "someone-else")])
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 401);
    // A known bearer: the refusal carries the quota headers too.
    assert_eq!(header(&hs, "x-codex-primary-used-percent"), "0.0");

    s.post(
        "/__sim/accounts/acc-a",
        json!({"expire_access_token": true}),
    )
    .await;
    let (status, body, _) = refused(s.connect(PATH, &token, &[]).await.unwrap_err());
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));

    // Every path the upstream serves it on.
    let token = s.account("acc-b").await;
    for path in ["/codex/responses", PATH, "/v1/responses"] {
        let (mut ws, hs) = s.connect(path, &token, &[]).await.unwrap();
        assert_eq!(hs.status().as_u16(), 101, "{path}");
        assert_eq!(header(&hs, "x-codex-secondary-window-minutes"), "10080");
        send(&mut ws, create(json!({}))).await;
        let t = read_turn(&mut ws).await;
        assert_eq!(t.last().unwrap()["type"], "response.completed", "{path}");
        ws.close(None).await.unwrap();
    }

    // The knob refuses upgrades again, like before.
    s.post("/__sim/behavior", json!({"websocket": "426"})).await;
    let (status, body, hs) = refused(s.connect(PATH, &token, &[]).await.unwrap_err());
    assert_eq!((status, header(&hs, "upgrade")), (426, "websocket"));
    assert!(body["detail"].is_string());
    s.post("/__sim/behavior", json!({"websocket": "404"})).await;
    let (status, _, _) = refused(s.connect(PATH, &token, &[]).await.unwrap_err());
    assert_eq!(status, 404);
    let b = s
        .post("/__sim/behavior", json!({"websocket": "accept"}))
        .await;
    assert_eq!(b["websocket"], "accept");
    assert!(s.connect(PATH, &token, &[]).await.is_ok());

    // A GET that is no upgrade is told to upgrade.
    let r = s
        .http
        .get(format!("{}{PATH}", s.sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 426);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_429_and_spent_quota_refuse_the_upgrade() {
    let s = Sim::new().await;
    let a = s.account("acc-a").await;
    let b = s.account("acc-b").await;
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [{"status": 429, "account_id": "acc-a", "body": {"error": {
            "type": "usage_limit_reached", "message": "The usage limit has been reached",
            "plan_type": "plus", "resets_in_seconds": 60}}}]}),
    )
    .await;
    // Another account is not affected, and does not use up the failure.
    let (ws_b, _) = s.open(&b).await;
    drop(ws_b);
    let (status, body, hs) = refused(s.connect(PATH, &a, &[]).await.unwrap_err());
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "usage_limit_reached");
    assert_eq!(header(&hs, "x-codex-primary-used-percent"), "0.0");
    // Used once.
    let (mut ws_a, _) = s.open(&a).await;

    // sse_* failures wait for the turn they break.
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [{"mode": "sse_failed", "body": {"code": "server_error", "message": "boom"}}]}),
    )
    .await;
    let (mut ws_b, _) = s.open(&b).await;
    send(&mut ws_b, create(json!({}))).await;
    let t = read_turn(&mut ws_b).await;
    assert_eq!(t.last().unwrap()["type"], "response.failed");
    assert_eq!(t.last().unwrap()["response"]["error"]["message"], "boom");
    // The connection stays usable; the failed turn cost nothing.
    send(&mut ws_b, create(json!({}))).await;
    assert_eq!(
        read_turn(&mut ws_b).await.last().unwrap()["type"],
        "response.completed"
    );
    assert_eq!(s.get("/__sim/accounts/acc-b").await["primary"]["used"], 1);

    // An http failure injected while a connection is open comes as an error event.
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [{"status": 503, "headers": {"retry-after": "1"}}]}),
    )
    .await;
    send(&mut ws_b, create(json!({}))).await;
    let t = read_turn(&mut ws_b).await;
    let ev = t.last().unwrap();
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["status"], 503);
    assert_eq!(ev["error"]["code"], "server_is_overloaded");
    assert_eq!(ev["headers"]["retry-after"], "1");
    assert!(ev["headers"]["x-codex-primary-used-percent"].is_string());

    // Quota spent mid-connection: an error event with the 429; at the handshake: a 429.
    s.post(
        "/__sim/accounts/acc-a",
        json!({"primary_limit": 1, "primary_used": 1}),
    )
    .await;
    send(&mut ws_a, create(json!({}))).await;
    let t = read_turn(&mut ws_a).await;
    let ev = t.last().unwrap();
    assert_eq!(ev["type"], "error");
    assert_eq!(ev["status"], 429);
    assert_eq!(ev["error"]["type"], "usage_limit_reached");
    assert_eq!(ev["headers"]["x-codex-primary-used-percent"], "100.0");
    // A warm-up still works.
    send(&mut ws_a, create(json!({"generate": false}))).await;
    assert_eq!(
        read_turn(&mut ws_a).await.last().unwrap()["type"],
        "response.completed"
    );
    let (status, body, _) = refused(s.connect(PATH, &a, &[]).await.unwrap_err());
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "usage_limit_reached");
    assert!(body["error"]["resets_at"].as_i64().unwrap() > 0);

    let recs = s.ws_records().await;
    let statuses: Vec<&Value> = recs.iter().map(|r| &r["status"]).collect();
    assert_eq!(
        statuses,
        [
            &json!(101),
            &json!(429),
            &json!(101),
            &json!(101),
            &json!(429)
        ]
    );
    assert_eq!(recs[1]["account_id"], "acc-a");
    assert!(recs[1].get("ws_frames_received").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_response_id_must_be_the_same_accounts() {
    let s = Sim::new().await;
    let a = s.account("acc-a").await;
    let b = s.account("acc-b").await;
    let (mut ws_a, _) = s.open(&a).await;
    send(&mut ws_a, create(json!({}))).await;
    let ta = read_turn(&mut ws_a).await;
    let id_a = ta.last().unwrap()["response"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (mut ws_b, _) = s.open(&b).await;
    send(&mut ws_b, create(json!({"previous_response_id": id_a}))).await;
    let t = read_turn(&mut ws_b).await;
    assert_eq!(kinds(&t), ["error"]);
    assert_eq!(t[0]["status"], 400);
    assert_eq!(t[0]["error"]["code"], "previous_response_not_found");
    assert_eq!(t[0]["error"]["param"], "previous_response_id");
    send(
        &mut ws_b,
        create(json!({"previous_response_id": "resp_unknown"})),
    )
    .await;
    assert_eq!(
        read_turn(&mut ws_b).await[0]["error"]["code"],
        "previous_response_not_found"
    );
    // Nothing charged for refused frames; the connection goes on.
    send(&mut ws_b, create(json!({}))).await;
    assert_eq!(
        read_turn(&mut ws_b).await.last().unwrap()["type"],
        "response.completed"
    );
    assert_eq!(s.get("/__sim/accounts/acc-b").await["turns"], 1);

    // Same account, new connection: allowed by default, refused with scope "connection".
    let (mut ws_a2, _) = s.open(&a).await;
    send(&mut ws_a2, create(json!({"previous_response_id": id_a}))).await;
    assert_eq!(
        read_turn(&mut ws_a2).await.last().unwrap()["type"],
        "response.completed"
    );
    s.post(
        "/__sim/behavior",
        json!({"websocket_previous_response_scope": "connection"}),
    )
    .await;
    let (mut ws_a3, _) = s.open(&a).await;
    send(&mut ws_a3, create(json!({"previous_response_id": id_a}))).await;
    assert_eq!(read_turn(&mut ws_a3).await[0]["type"], "error");
    send(&mut ws_a, create(json!({"previous_response_id": id_a}))).await;
    assert_eq!(
        read_turn(&mut ws_a).await.last().unwrap()["type"],
        "response.completed"
    );

    // Bad frames get error events too.
    ws_a.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(
        read_turn(&mut ws_a).await[0]["error"]["code"],
        "invalid_json"
    );
    send(&mut ws_a, create(json!({"store": true}))).await;
    let t = read_turn(&mut ws_a).await;
    assert_eq!(t[0]["error"]["message"], "Store must be set to false");
    // response.processed is taken silently: the next answer is the next turn's.
    send(
        &mut ws_a,
        json!({"type": "response.processed", "response_id": id_a}),
    )
    .await;
    send(&mut ws_a, create(json!({}))).await;
    assert_eq!(read_turn(&mut ws_a).await[0]["type"], "codex.rate_limits");

    let recs = s.ws_records().await;
    let rec_b = recs.iter().find(|r| r["account_id"] == "acc-b").unwrap();
    let outcomes: Vec<&Value> = rec_b["ws_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["outcome"])
        .collect();
    assert_eq!(
        outcomes,
        [
            &json!("error:previous_response_not_found"),
            &json!("error:previous_response_not_found"),
            &json!("completed")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_closes_a_connection_past_its_lifetime() {
    let s = Sim::new().await;
    let token = s.account("acc-a").await;
    let b = s
        .post("/__sim/behavior", json!({"websocket_max_lifetime_secs": 1}))
        .await;
    assert_eq!(b["websocket_max_lifetime_secs"], 1);
    let started = Instant::now();
    let (mut ws, _) = s.open(&token).await;
    send(&mut ws, create(json!({}))).await;
    assert_eq!(
        read_turn(&mut ws).await.last().unwrap()["type"],
        "response.completed"
    );
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no close in time")
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    let Message::Close(Some(frame)) = msg else {
        panic!("expected a close frame, got {msg:?}");
    };
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(frame.reason.as_str(), "websocket_connection_limit_reached");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The client's reply completes the closing handshake.
    while let Some(Ok(_)) = ws.next().await {}
    let recs = s.ws_records().await;
    let rec = s.closed_record(&recs[0]["seq"]).await;
    assert_eq!(rec["ws_close"], "lifetime");
    assert_eq!(rec["ws_frames_received"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_turn_drops_the_connection_without_a_close_frame() {
    let s = Sim::new().await;
    let token = s.account("acc-a").await;
    s.post(
        "/__sim/behavior",
        json!({"fail_next": [{"mode": "sse_truncated"}], "event_delay_ms": 5}),
    )
    .await;
    let (mut ws, _) = s.open(&token).await;
    send(&mut ws, create(json!({}))).await;
    let mut kinds_seen = Vec::new();
    let end = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no end in time")
        {
            Some(Ok(Message::Text(t))) => {
                let ev: Value = serde_json::from_str(t.as_str()).unwrap();
                kinds_seen.push(ev["type"].as_str().unwrap().to_string());
            }
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(
        matches!(
            end,
            Some(WsError::Protocol(_)) | Some(WsError::Io(_)) | None
        ),
        "{end:?}"
    );
    assert_eq!(
        kinds_seen,
        [
            "codex.rate_limits",
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
        ]
    );
    let acc = s.get("/__sim/accounts/acc-a").await;
    assert_eq!(acc["primary"]["used"], 0, "a truncated turn uses no quota");
    let recs = s.ws_records().await;
    let rec = s.closed_record(&recs[0]["seq"]).await;
    assert_eq!(rec["ws_close"], "truncated");
    assert_eq!(rec["ws_requests"][0]["outcome"], "truncated");
    assert_eq!(rec["ws_frames_sent"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_over_the_self_signed_certificate() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let sim = codexmesh_sim::start_with("127.0.0.1:0".parse().unwrap(), true)
        .await
        .unwrap();
    let pem = sim.cert_pem.clone().unwrap();
    let http = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
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

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(sim.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://{}{PATH}", sim.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", acc["access_token"].as_str().unwrap()))
            .unwrap(),
    );
    let (mut ws, hs) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(hs.status().as_u16(), 101);
    ws.send(Message::Text(create(json!({})).to_string().into()))
        .await
        .unwrap();
    let mut last = Value::Null;
    for _ in 0..20 {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("connection ended early");
        };
        last = serde_json::from_str(t.as_str()).unwrap();
        if is_terminal(&last) {
            break;
        }
    }
    assert_eq!(last["type"], "response.completed");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_open_websockets() {
    let s = Sim::new().await;
    let token = s.account("acc-a").await;
    let (mut ws, _) = s.open(&token).await;
    send(&mut ws, create(json!({}))).await;
    read_turn(&mut ws).await;
    tokio::time::timeout(WAIT, s.sim.shutdown())
        .await
        .expect("shutdown waited for the WebSocket")
        .unwrap();
}
