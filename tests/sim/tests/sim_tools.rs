//! Tool-using and JSON-format turns, the model catalogue's ETag and `prefer_websockets`, over
//! real HTTP (SSE and JSON) and the Responses WebSocket on 127.0.0.1.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use codexmesh_sim::{start, RunningSim};
use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

struct Sim {
    sim: RunningSim,
    http: Client,
    token: String,
}

impl Sim {
    async fn new() -> Self {
        let sim = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let http = Client::builder().timeout(WAIT).build().unwrap();
        let mut s = Self {
            sim,
            http,
            token: String::new(),
        };
        let acc = s
            .post("/__sim/accounts", json!({"account_id": "acc-t"}))
            .await;
        s.token = acc["access_token"].as_str().unwrap().to_string();
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self.http.post(self.url(path)).json(&body).send().await;
        let r = r.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        r.json().await.unwrap()
    }

    async fn turn_with(&self, body: Value, originator: Option<&str>) -> Response {
        let mut req = self
            .http
            .post(self.url("/backend-api/codex/responses"))
            .bearer_auth(&self.token)
            .json(&body);
        if let Some(o) = originator {
            req = req.header("originator", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r
    }

    /// A streamed turn's events.
    async fn sse(&self, body: Value) -> Vec<Value> {
        read_sse(self.turn_with(body, None).await).await
    }

    async fn ws(&self) -> Ws {
        let url = format!("ws://{}/backend-api/codex/responses", self.sim.addr);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", self.token)).unwrap(),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap()
            .unwrap();
        ws
    }

    async fn models(&self, if_none_match: Option<&str>) -> Response {
        let mut req = self
            .http
            .get(self.url("/backend-api/codex/models?client_version=0.169.0"))
            .bearer_auth(&self.token);
        if let Some(tag) = if_none_match {
            req = req.header("if-none-match", tag);
        }
        req.send().await.unwrap()
    }
}

async fn read_sse(r: Response) -> Vec<Value> {
    let body = r.text().await.unwrap();
    body.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let data = f.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

/// Send one `response.create` and read its events up to the one that ends the turn.
async fn ws_turn(ws: &mut Ws, body: Value) -> Vec<Value> {
    let mut frame = body;
    frame["type"] = json!("response.create");
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no event in time")
            .expect("connection ended")
            .expect("websocket error");
        let Message::Text(t) = msg else {
            panic!("unexpected frame {msg:?}");
        };
        let ev: Value = serde_json::from_str(t.as_str()).unwrap();
        let done = matches!(
            ev["type"].as_str(),
            Some("response.completed" | "response.failed" | "error")
        );
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "unit"],
            "additionalProperties": false
        },
        "strict": true
    })
}

fn user(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

/// A request as the gateway makes it of a chat completion with tools.
fn tool_request(extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-5.1-codex",
        "instructions": "You are helpful.",
        "input": [user("What is the weather in Paris?")],
        "tools": [weather_tool()],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The events of a one-call turn (after any `codex.rate_limits`), checked in order; the call
/// item of `response.completed`.
fn check_call_turn(events: &[Value], deltas: usize) -> Value {
    let mut want = vec!["response.created", "response.output_item.added"];
    want.extend(std::iter::repeat_n(
        "response.function_call_arguments.delta",
        deltas,
    ));
    want.extend([
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(kinds(events), want);
    let added = &events[1];
    assert_eq!(added["output_index"], 0);
    let item = &added["item"];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["status"], "in_progress");
    assert_eq!(item["arguments"], "");
    assert_eq!(item["name"], "get_weather");
    let item_id = item["id"].as_str().unwrap();
    assert!(item_id.starts_with("fc_"), "{item_id}");
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
    let streamed: String = events[2..2 + deltas]
        .iter()
        .map(|e| {
            assert_eq!(e["item_id"], item_id);
            assert_eq!(e["output_index"], 0);
            e["delta"].as_str().unwrap()
        })
        .collect();
    let args_done = &events[2 + deltas];
    assert_eq!(args_done["item_id"], item_id);
    assert_eq!(args_done["output_index"], 0);
    assert_eq!(args_done["arguments"], streamed.as_str());
    let args: Value = serde_json::from_str(&streamed).unwrap();
    assert_eq!(args, json!({"city": "Paris", "unit": "celsius"}));
    let done = &events[3 + deltas];
    assert_eq!(done["item"]["status"], "completed");
    assert_eq!(done["item"]["arguments"], streamed.as_str());
    assert_eq!(done["item"]["call_id"], item["call_id"]);
    let completed = &events[4 + deltas]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"], json!([done["item"].clone()]));
    assert!(completed["usage"]["output_tokens"].as_i64().unwrap() >= 1);
    assert!(completed["usage"]["total_tokens"].as_i64().unwrap() >= 2);
    done["item"].clone()
}

/// The text of a message turn's deltas, checked against its `response.completed`.
fn reply_text(events: &[Value]) -> String {
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let completed = events.last().unwrap();
    assert_eq!(completed["type"], "response.completed");
    let item = &completed["response"]["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["content"][0]["text"], streamed.as_str());
    streamed
}

/// The second turn of a tool loop: the call and its output appended to the input.
fn follow_up(call: &Value, output: &str) -> Value {
    tool_request(json!({"input": [
        user("What is the weather in Paris?"),
        {"type": "function_call", "call_id": call["call_id"], "name": call["name"],
         "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": output},
    ]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_tool_call_then_tool_output() {
    let s = Sim::new().await;
    s.post("/__sim/behavior", json!({"delta_count": 3})).await;
    let events = s.sse(tool_request(json!({}))).await;
    let call = check_call_turn(&events, 3);

    let events = s.sse(follow_up(&call, "22 C and sunny")).await;
    assert_eq!(
        kinds(&events)[..2],
        ["response.created", "response.output_item.added"]
    );
    assert_eq!(reply_text(&events), "The tool said: 22 C and sunny");

    // Not streamed: the JSON response holds the call.
    let r = s
        .turn_with(tool_request(json!({"stream": false})), None)
        .await;
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["output"][0]["type"], "function_call");
    assert_eq!(resp["output"][0]["name"], "get_weather");

    // tool_choice "none", or no tools: text.
    for extra in [json!({"tool_choice": "none"}), json!({"tools": []})] {
        let events = s.sse(tool_request(extra)).await;
        assert_eq!(reply_text(&events), "Hello from the codexmesh simulator.");
    }

    // A named function, and two calls in parallel.
    let time_tool = json!({"type": "function", "name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}});
    let events = s
        .sse(tool_request(json!({
            "tools": [weather_tool(), time_tool],
            "tool_choice": {"type": "function", "name": "get_time"},
        })))
        .await;
    let output = &events.last().unwrap()["response"]["output"];
    assert_eq!(output.as_array().unwrap().len(), 1);
    assert_eq!(output[0]["name"], "get_time");
    assert_eq!(output[0]["arguments"], r#"{"zone":"example"}"#);
    let events = s
        .sse(tool_request(json!({
            "tools": [weather_tool(), time_tool],
            "parallel_tool_calls": true,
        })))
        .await;
    let output = events.last().unwrap()["response"]["output"].clone();
    let names: Vec<&str> = output
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_ne!(output[0]["call_id"], output[1]["call_id"]);
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .collect();
    assert_eq!(done[1]["output_index"], 1);

    // The request log names the tools and the choice, and nothing of the prompt.
    let log = s.get("/__sim/requests?path_contains=/responses").await;
    let first = &log.as_array().unwrap()[0];
    assert_eq!(first["tools"], json!(["get_weather"]));
    assert_eq!(first["tool_choice"], "auto");
    assert!(first.get("text_format").is_none());
    assert!(first.get("body_json").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_cli_gets_text_unless_asked_and_tool_calls_knob() {
    let s = Sim::new().await;
    // The Codex CLI always offers its tools: it gets the reply text by default.
    let r = s
        .turn_with(tool_request(json!({})), Some("codex_exec"))
        .await;
    let events = read_sse(r).await;
    assert_eq!(reply_text(&events), "Hello from the codexmesh simulator.");
    s.post("/__sim/behavior", json!({"tool_calls_for_codex_cli": true}))
        .await;
    let r = s
        .turn_with(tool_request(json!({})), Some("codex_exec"))
        .await;
    check_call_turn(&read_sse(r).await, 4);
    // tool_calls off: text for everyone.
    let b = s
        .post("/__sim/behavior", json!({"tool_calls": false}))
        .await;
    assert_eq!(b["tool_calls"], false);
    let events = s.sse(tool_request(json!({}))).await;
    assert_eq!(reply_text(&events), "Hello from the codexmesh simulator.");
}

fn answer_schema() -> Value {
    json!({
        "type": "json_schema",
        "name": "weather",
        "strict": true,
        "schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "temperature": {"type": "number"},
                "sunny": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["city", "temperature", "sunny", "tags"],
            "additionalProperties": false
        }
    })
}

fn check_schema_reply(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        v,
        json!({"city": "Paris", "temperature": 1, "sunny": true, "tags": ["example"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_json_formats() {
    let s = Sim::new().await;
    let body = tool_request(json!({"tools": [], "text": {"format": answer_schema()}}));
    let events = s.sse(body).await;
    check_schema_reply(&reply_text(&events));

    let body = tool_request(json!({"tools": [], "text": {"format": {"type": "json_object"}}}));
    let events = s.sse(body).await;
    let v: Value = serde_json::from_str(&reply_text(&events)).unwrap();
    assert_eq!(v, json!({"reply": "Hello from the codexmesh simulator."}));

    let log = s.get("/__sim/requests?path_contains=/responses").await;
    let formats: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["text_format"])
        .collect();
    assert_eq!(formats, [&json!("json_schema"), &json!("json_object")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tool_call_tool_output_and_json_schema() {
    let s = Sim::new().await;
    s.post("/__sim/behavior", json!({"delta_count": 2})).await;
    let mut ws = s.ws().await;

    let events = ws_turn(&mut ws, tool_request(json!({}))).await;
    assert_eq!(events[0]["type"], "codex.rate_limits");
    let call = check_call_turn(&events[1..], 2);
    let first_id = events.last().unwrap()["response"]["id"].clone();

    // Continue with only the new items, as the CLI does on a WebSocket.
    let mut next = follow_up(&call, "{\"temp\":22}");
    next["input"] = json!([next["input"][1], next["input"][2]]);
    next["previous_response_id"] = first_id;
    let events = ws_turn(&mut ws, next).await;
    assert_eq!(reply_text(&events[1..]), "The tool said: {\"temp\":22}");

    let body = tool_request(json!({"tools": [], "text": {"format": answer_schema()}}));
    let events = ws_turn(&mut ws, body).await;
    check_schema_reply(&reply_text(&events[1..]));

    // Warm-up frames carrying tools still produce nothing.
    let events = ws_turn(&mut ws, tool_request(json!({"generate": false}))).await;
    assert_eq!(events.last().unwrap()["response"]["output"], json!([]));

    let log = s.get("/__sim/requests?path_contains=/responses").await;
    let frames = log.as_array().unwrap()[0]["ws_requests"].clone();
    assert_eq!(frames[0]["tools"], json!(["get_weather"]));
    assert_eq!(frames[0]["tool_choice"], "auto");
    assert_eq!(frames[0]["outcome"], "completed");
    assert_eq!(frames[2]["text_format"], "json_schema");
    assert!(frames[0].get("body_json").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_codex_cli_gets_text_by_default() {
    let s = Sim::new().await;
    let url = format!("ws://{}/backend-api/codex/responses", s.sim.addr);
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", s.token)).unwrap(),
    );
    h.insert("originator", HeaderValue::from_static("codex_cli_rs"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let events = ws_turn(&mut ws, tool_request(json!({}))).await;
    assert_eq!(
        reply_text(&events[1..]),
        "Hello from the codexmesh simulator."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_etag_304_and_prefer_websockets() {
    let s = Sim::new().await;
    let r = s.models(None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert!(body["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["prefer_websockets"] == false));

    let r = s.models(Some(&etag)).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.headers().contains_key("x-codex-primary-used-percent"));
    assert!(r.bytes().await.unwrap().is_empty());
    let r = s.models(Some("\"stale\"")).await;
    assert_eq!(r.status(), StatusCode::OK);

    let b = s
        .post("/__sim/behavior", json!({"prefer_websockets": true}))
        .await;
    assert_eq!(b["prefer_websockets"], true);
    // The catalogue changed: the old tag no longer matches.
    let r = s.models(Some(&etag)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let new_etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    let body: Value = r.json().await.unwrap();
    assert!(body["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["prefer_websockets"] == true));
    // Turns advertise the same tag.
    let r = s.turn_with(tool_request(json!({"tools": []})), None).await;
    assert_eq!(r.headers()["x-models-etag"].to_str().unwrap(), new_etag);

    // It applies to a replaced catalogue too.
    s.post(
        "/__sim/behavior",
        json!({"models": [{"slug": "custom", "prefer_websockets": false}]}),
    )
    .await;
    let body: Value = s.models(None).await.json().await.unwrap();
    assert_eq!(body["models"][0]["prefer_websockets"], true);
}
