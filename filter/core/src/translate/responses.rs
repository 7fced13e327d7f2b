//! `POST /v1/responses` onto the Codex backend's `POST /codex/responses`, and reading what the
//! backend streams back.
//!
//! Request rules ([`responses_request`]):
//! - The body must be a JSON object with a non-empty string `model` and an `input`; otherwise
//!   400 `invalid_request_error` naming the field.
//! - `input` as a string becomes one user message item; message items given in the short form
//!   (`{"role","content":"text"}`) get `"type":"message"` and a content list (`input_text`, or
//!   `output_text` for the assistant). Other items pass unchanged.
//! - `instructions` missing or `null` becomes [`super::DEFAULT_INSTRUCTIONS`] (the backend
//!   requires it); a non-string is a 400.
//! - Upstream always gets `stream: true` and `store: false`. The client's `stream` is kept in
//!   [`UpstreamRequest::client_stream`]. `store: true` is served as `store: false` and `store`
//!   is reported as ignored: the pool keeps no responses, so nothing can be fetched later.
//! - Dropped and reported (the backend refuses them; none changes the answer's shape):
//!   [`DROPPED`]. Refused with a 400 (they need state the pool does not keep):
//!   `previous_response_id`, `conversation`, `prompt`, `background: true`.
//! - Every other field (tools, tool_choice, reasoning, text, include, prompt_cache_key,
//!   parallel_tool_calls, service_tier, …) passes unchanged.
//!
//! Answer rules:
//! - Streaming is a passthrough; [`OutcomeScanner`] tells from the same bytes how the stream
//!   ended, reading only each event's top-level `type` (no JSON parsing but of the final event).
//! - [`Collector`] turns the stream into the one Response object of `stream: false`: the
//!   `response.completed` (or `response.incomplete`) event's `response`, its empty `output`
//!   filled from the `response.output_item.done` items; a `response.failed` or `error` event, or
//!   a stream ending without a final event, becomes an [`ApiError`]. Deltas are never kept.

use serde_json::{json, Map, Value};

use super::error::echo;
use super::sse::{Event, SseParser};
use super::{
    opt_bool, parse_object, required_model, top_level_type, ApiError, UpstreamRequest,
    DEFAULT_INSTRUCTIONS,
};

/// Parameters the Codex backend refuses: dropped and reported.
pub const DROPPED: &[&str] = &[
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_logprobs",
    "safety_identifier",
    "prompt_cache_retention",
    "truncation",
    "user",
    "metadata",
    "max_tool_calls",
    "stream_options",
];

/// Normalizes a `/v1/responses` body for the Codex backend.
pub fn responses_request(body: &[u8]) -> Result<UpstreamRequest, ApiError> {
    let mut obj = parse_object(body)?;
    let model = required_model(&obj)?;
    let client_stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let mut ignored = Vec::new();

    for key in ["previous_response_id", "conversation", "prompt"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::unsupported_parameter(
                key,
                "codexmesh does not store responses or conversations: send the whole input \
                 with every request.",
            ));
        }
    }
    if opt_bool(&obj, "background")? == Some(true) {
        return Err(ApiError::unsupported_value(
            "background",
            "background responses need stored state, which codexmesh does not keep.",
        ));
    }
    obj.remove("background");
    if opt_bool(&obj, "store")? == Some(true) {
        ignored.push("store".to_string());
    }
    for key in DROPPED {
        if let Some(v) = obj.remove(*key) {
            if !v.is_null() {
                ignored.push((*key).to_string());
            }
        }
    }

    let input = match obj.remove("input") {
        None | Some(Value::Null) => return Err(ApiError::missing("input")),
        Some(Value::String(text)) => json!([{
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }]),
        Some(Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| normalize_item(item, i))
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(ApiError::invalid_type("input", "a string or an array")),
    };
    obj.insert("input".into(), input);
    match obj.get("instructions") {
        None | Some(Value::Null) => {
            obj.insert("instructions".into(), DEFAULT_INSTRUCTIONS.into());
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(ApiError::invalid_type("instructions", "a string")),
    }
    obj.insert("stream".into(), Value::Bool(true));
    obj.insert("store".into(), Value::Bool(false));
    Ok(UpstreamRequest {
        body: Value::Object(obj).to_string().into_bytes(),
        client_stream,
        include_usage: false,
        model,
        ignored,
    })
}

/// One `input` item: the short message form made explicit.
fn normalize_item(item: Value, index: usize) -> Result<Value, ApiError> {
    let Value::Object(mut obj) = item else {
        return Err(ApiError::invalid_type(
            &format!("input[{index}]"),
            "an object",
        ));
    };
    let is_message = match obj.get("type") {
        None => obj.contains_key("role"),
        Some(Value::String(t)) => t == "message",
        Some(_) => {
            return Err(ApiError::invalid_type(
                &format!("input[{index}].type"),
                "a string",
            ))
        }
    };
    if !is_message {
        return Ok(Value::Object(obj));
    }
    obj.insert("type".into(), "message".into());
    let part_type = match obj.get("role").and_then(Value::as_str) {
        Some("assistant") => "output_text",
        Some("user" | "system" | "developer") => "input_text",
        Some(_) | None => {
            return Err(ApiError::unsupported_value(
                &format!("input[{index}].role"),
                "expected one of user, assistant, system, developer.",
            ))
        }
    };
    match obj.get_mut("content") {
        Some(Value::String(text)) => {
            let text = std::mem::take(text);
            obj.insert("content".into(), json!([{"type": part_type, "text": text}]));
        }
        Some(Value::Array(_)) => {}
        None | Some(Value::Null) => {
            return Err(ApiError::missing(&format!("input[{index}].content")))
        }
        Some(_) => {
            return Err(ApiError::invalid_type(
                &format!("input[{index}].content"),
                "a string or an array",
            ))
        }
    }
    Ok(Value::Object(obj))
}

/// How a Codex response stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No final event yet.
    Pending,
    /// `response.completed`.
    Completed,
    /// `response.incomplete`, with `incomplete_details.reason` when given.
    Incomplete { reason: Option<String> },
    /// `response.failed` or an `error` event.
    Failed {
        code: Option<String>,
        message: Option<String>,
    },
    /// The stream ended (or could not be read) before a final event.
    Cut,
}

impl Outcome {
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// What a final event means, parsing only that event's JSON.
pub(crate) fn final_outcome(kind: &str, data: &[u8]) -> Option<Outcome> {
    match kind {
        "response.completed" => Some(Outcome::Completed),
        "response.incomplete" => {
            let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
            let reason = v
                .pointer("/response/incomplete_details/reason")
                .and_then(Value::as_str)
                .map(echo);
            Some(Outcome::Incomplete { reason })
        }
        "response.failed" | "error" => {
            let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
            let err = if kind == "error" {
                v.get("error").filter(|e| e.is_object()).unwrap_or(&v)
            } else {
                v.pointer("/response/error").unwrap_or(&Value::Null)
            };
            Some(Outcome::Failed {
                code: err.get("code").and_then(Value::as_str).map(echo),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        }
        _ => None,
    }
}

/// Watches a Codex SSE stream (any endpoint that answers the Responses events) for its end.
#[derive(Debug, Default)]
pub struct OutcomeScanner {
    parser: SseParser,
    outcome: Option<Outcome>,
}

impl OutcomeScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one chunk of the stream (the adapter forwards the same bytes unchanged).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        let mut found = None;
        let result = self.parser.feed(chunk, &mut |e: Event<'_>| {
            if found.is_none() {
                found = top_level_type(e.data).and_then(|kind| final_outcome(kind, e.data));
            }
        });
        self.outcome = found.or_else(|| result.err().map(|_| Outcome::Cut));
    }

    /// The outcome so far ([`Outcome::Pending`] until a final event).
    pub fn outcome(&self) -> Outcome {
        self.outcome.clone().unwrap_or(Outcome::Pending)
    }

    /// The end of the stream: a stream without a final event was cut.
    pub fn finish(&mut self) -> Outcome {
        if self.outcome.is_none() {
            let mut found = None;
            let _ = self.parser.finish(&mut |e: Event<'_>| {
                if found.is_none() {
                    found = top_level_type(e.data).and_then(|kind| final_outcome(kind, e.data));
                }
            });
            self.outcome = Some(found.unwrap_or(Outcome::Cut));
        }
        self.outcome()
    }
}

/// What [`Collector`] keeps between events.
#[derive(Debug, Default)]
struct CollectState {
    /// `(output_index, item)` of every `response.output_item.done`.
    items: Vec<(u64, Value)>,
    result: Option<Result<Value, ApiError>>,
}

impl CollectState {
    fn on_event(&mut self, e: Event<'_>) {
        if self.result.is_some() {
            return;
        }
        let Some(kind) = top_level_type(e.data) else {
            return;
        };
        match kind {
            "response.output_item.done" => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(e.data) {
                    let index = v
                        .get("output_index")
                        .and_then(Value::as_u64)
                        .unwrap_or(self.items.len() as u64);
                    if let Some(item) = v.get_mut("item").map(Value::take) {
                        self.items.push((index, item));
                    }
                }
            }
            "response.completed" | "response.incomplete" => {
                self.result = Some(match serde_json::from_slice::<Value>(e.data) {
                    Ok(mut v) => match v.get_mut("response").map(Value::take) {
                        Some(Value::Object(response)) => Ok(self.fill(response)),
                        _ => Err(ApiError::bad_upstream("the final event has no response")),
                    },
                    Err(err) => Err(ApiError::bad_upstream(&err.to_string())),
                });
            }
            "response.failed" | "error" => {
                if let Some(Outcome::Failed { code, message }) = final_outcome(kind, e.data) {
                    self.result = Some(Err(ApiError::from_upstream(
                        code.as_deref(),
                        message.as_deref(),
                    )));
                }
            }
            _ => {}
        }
    }

    /// The final response with `output` filled from the items when it came empty.
    fn fill(&mut self, mut response: Map<String, Value>) -> Value {
        let empty = match response.get("output") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if empty && !self.items.is_empty() {
            let mut items = std::mem::take(&mut self.items);
            items.sort_by_key(|(i, _)| *i);
            response.insert(
                "output".into(),
                Value::Array(items.into_iter().map(|(_, v)| v).collect()),
            );
        }
        Value::Object(response)
    }
}

/// Collects a Codex SSE stream into the Response object of `stream: false`.
#[derive(Debug, Default)]
pub struct Collector {
    parser: SseParser,
    state: CollectState,
    broken: Option<String>,
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one chunk; nothing is sent to the client until [`Collector::finish`].
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.broken.is_some() || self.state.result.is_some() {
            return;
        }
        let state = &mut self.state;
        if let Err(e) = self.parser.feed(chunk, &mut |e| state.on_event(e)) {
            self.broken = Some(e.to_string());
        }
    }

    /// The Response object (JSON), or the error to answer with.
    pub fn finish(&mut self) -> Result<Vec<u8>, ApiError> {
        self.finish_value().map(|v| v.to_string().into_bytes())
    }

    /// [`Collector::finish`] before serialization (the chat collector reads it).
    pub(crate) fn finish_value(&mut self) -> Result<Value, ApiError> {
        if self.state.result.is_none() && self.broken.is_none() {
            let state = &mut self.state;
            let _ = self.parser.finish(&mut |e| state.on_event(e));
        }
        match self.state.result.take() {
            Some(result) => result,
            None => Err(ApiError::stream_incomplete(
                self.broken
                    .as_deref()
                    .unwrap_or("the stream closed before response.completed"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(v: Value) -> Result<UpstreamRequest, ApiError> {
        responses_request(v.to_string().as_bytes())
    }

    fn body(r: &UpstreamRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn string_input_and_forced_stream_store() {
        let r = req(json!({"model": "gpt-5.5", "input": "hi", "store": true})).unwrap();
        let b = body(&r);
        assert_eq!(b["input"][0]["role"], "user");
        assert_eq!(b["input"][0]["content"][0]["type"], "input_text");
        assert_eq!(b["stream"], true);
        assert_eq!(b["store"], false);
        assert_eq!(b["instructions"], DEFAULT_INSTRUCTIONS);
        assert!(!r.client_stream);
        assert_eq!(r.ignored, vec!["store"]);
    }

    #[test]
    fn dropped_parameters_are_listed() {
        let r = req(json!({
            "model": "m", "input": [], "stream": true, "temperature": 0.2,
            "max_output_tokens": 10, "metadata": null, "instructions": "be brief"
        }))
        .unwrap();
        assert!(r.client_stream);
        assert_eq!(r.ignored, vec!["max_output_tokens", "temperature"]);
        let b = body(&r);
        assert!(b.get("temperature").is_none() && b.get("metadata").is_none());
        assert_eq!(b["instructions"], "be brief");
    }

    #[test]
    fn refusals_name_the_field() {
        for (v, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": 5, "input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 3}), "input"),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "r"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": "x", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
            (json!({"model": "m", "input": [1]}), "input[0]"),
        ] {
            let err = req(v).unwrap_err();
            assert_eq!(err.status, 400);
            assert_eq!(err.param.as_deref(), Some(param));
        }
        for bad in [&b"{"[..], b"[]", b"", b"\xff"] {
            let err = responses_request(bad).unwrap_err();
            assert_eq!(err.code.as_deref(), Some("invalid_json"));
        }
    }

    const DONE_EMPTY: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"output\":[]}}\n\n\
data: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n\
data: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":{\"id\":\"b\"}}\n\n\
data: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"id\":\"a\"}}\n\n\
data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[]}}\n\n";

    #[test]
    fn collector_fills_empty_output_at_any_split() {
        for at in 0..=DONE_EMPTY.len() {
            let mut c = Collector::new();
            c.feed(&DONE_EMPTY.as_bytes()[..at]);
            c.feed(&DONE_EMPTY.as_bytes()[at..]);
            let v: Value = serde_json::from_slice(&c.finish().unwrap()).unwrap();
            assert_eq!(v["output"], json!([{"id": "a"}, {"id": "b"}]), "split {at}");
            assert_eq!(v["status"], "completed");
        }
    }

    #[test]
    fn collector_errors() {
        let mut c = Collector::new();
        c.feed(b"data: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"invalid_prompt\",\"message\":\"no\"}}}\n\n");
        let err = c.finish().unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (400, "no"));
        let mut c = Collector::new();
        c.feed(b"data: {\"type\":\"response.created\"}\n\n");
        assert_eq!(c.finish().unwrap_err().status, 502);
    }

    #[test]
    fn outcome_scanner() {
        let mut s = OutcomeScanner::new();
        for b in DONE_EMPTY.as_bytes() {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.finish(), Outcome::Completed);

        let mut s = OutcomeScanner::new();
        s.feed(b"data: {\"type\":\"response.created\"}\n\n");
        assert_eq!(s.outcome(), Outcome::Pending);
        assert_eq!(s.finish(), Outcome::Cut);

        let mut s = OutcomeScanner::new();
        s.feed(b"data: {\"type\":\"error\",\"code\":\"x\",\"message\":\"m\"}\n\n");
        assert_eq!(
            s.outcome(),
            Outcome::Failed {
                code: Some("x".into()),
                message: Some("m".into())
            }
        );

        let mut s = OutcomeScanner::new();
        s.feed(b"data: {\"type\":\"response.incomplete\",\"response\":{\"incomplete_details\":{\"reason\":\"max_output_tokens\"}}}");
        assert_eq!(
            s.finish(),
            Outcome::Cut,
            "an unfinished last line is not an event"
        );
        let mut s = OutcomeScanner::new();
        s.feed(b"data: {\"type\":\"response.incomplete\",\"response\":{\"incomplete_details\":{\"reason\":\"max_output_tokens\"}}}\n");
        assert_eq!(
            s.finish(),
            Outcome::Incomplete {
                reason: Some("max_output_tokens".into())
            }
        );
    }
}
