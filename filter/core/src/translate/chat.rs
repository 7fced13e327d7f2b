//! `POST /v1/chat/completions` onto the Codex backend's Responses API, and its answer back into
//! `chat.completion` / `chat.completion.chunk`.
//!
//! Request rules ([`chat_request`]):
//! - `model` and a non-empty `messages` array are required; every refusal is a 400 naming the
//!   field path (`messages[2].content[1].type`).
//! - `system` and `developer` messages before the first other message become `instructions`
//!   (joined by a blank line; the backend requires instructions and refuses a system prompt
//!   given only as input; [`super::DEFAULT_INSTRUCTIONS`] when there is none). A later one becomes
//!   a `developer` message item, which the backend accepts in `input` (the Codex CLI sends them).
//! - `user` content: a string, or parts `text` → `input_text`, `image_url` → `input_image`
//!   (`image_url`, `detail`), `file` with `file_data` → `input_file`. `input_audio`, a `file`
//!   by `file_id` and unknown part types are refused.
//! - `assistant` text (string or `text`/`refusal` parts) → an assistant message item with
//!   `output_text`/`refusal`; `tool_calls` → `function_call` items (`call_id`, `name`,
//!   `arguments`). `tool` messages → `function_call_output` items (`call_id`, text `output`).
//!   `function` messages, legacy `functions`/`function_call` are refused (use tools).
//! - `tools` (function tools only) → Responses function tools; `strict` defaults to `false`
//!   as in Chat (the Responses default is `true`), `parameters` to an empty object schema.
//!   `tool_choice` (`none`/`auto`/`required`/a named function), `parallel_tool_calls`,
//!   `prompt_cache_key` carry over; `response_format` (`json_schema`, `json_object`, `text`) →
//!   `text.format`; `verbosity` → `text.verbosity`; `reasoning_effort` → `reasoning.effort`.
//! - `stream` and `stream_options.include_usage` are remembered; upstream always streams and
//!   never stores (`store: true` is dropped and reported).
//! - Refused because the answer would not be what was asked: `n` > 1, `logprobs: true`,
//!   audio output (`audio`, `modalities` with `audio`).
//! - Every other parameter with a non-null value (`max_tokens`, `max_completion_tokens`,
//!   `temperature`, `top_p`, `frequency_penalty`, `presence_penalty`, `seed`, `stop`,
//!   `logit_bias`, `top_logprobs`, `user`, `metadata`, `service_tier`, `prediction`,
//!   `web_search_options`, unknown ones, …) is dropped and listed in
//!   [`UpstreamRequest::ignored`].
//!
//! Answer rules:
//! - [`ChatStream`] emits `chat.completion.chunk` events as upstream events arrive and keeps
//!   only ids, one slot per tool call and which items already streamed text: the first chunk
//!   carries `delta.role`, text deltas become `delta.content`, function calls `delta.tool_calls`
//!   (index, id, name, then argument deltas); an item delivered whole in
//!   `response.output_item.done` without deltas is emitted then. The last chunk carries
//!   `finish_reason` (`tool_calls` when a tool was called, `length` for `max_output_tokens`,
//!   `content_filter`, else `stop`), a usage chunk follows when `include_usage`, then
//!   `data: [DONE]`. `response.failed`/`error` or a cut stream end it with OpenAI's in-stream
//!   error event `data: {"error":{...}}` and no `[DONE]`. Reasoning events are not forwarded.
//! - [`ChatCollector`] builds the one `chat.completion` from the final Response object.
//! - `id` is `chatcmpl-` plus the response id (without `resp_`), `created` the response's
//!   `created_at`, `model` the response's model (the requested one when absent).

use serde_json::{json, Map, Value};

use super::error::echo;
use super::responses::Collector;
use super::sse::{self, Event, SseParser};
use super::{
    opt_bool, parse_object, required_model, top_level_type, ApiError, UpstreamRequest,
    DEFAULT_INSTRUCTIONS,
};

/// Top-level fields this translation reads (all others are dropped and reported).
const HANDLED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "verbosity",
    "prompt_cache_key",
    "n",
    "logprobs",
    "modalities",
    "audio",
    "functions",
    "function_call",
    "store",
];

/// Translates a chat-completions body into a Codex Responses request.
pub fn chat_request(body: &[u8]) -> Result<UpstreamRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = required_model(&obj)?;
    let client_stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        Some(Value::Object(o)) => o.get("include_usage") == Some(&Value::Bool(true)),
        _ => false,
    };
    refuse_semantics(&obj)?;

    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ApiError::invalid(
                "invalid_value",
                Some("messages"),
                "'messages' must contain at least one message.",
            ))
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::invalid_type("messages", "an array")),
    };
    let (instructions, input) = convert_messages(messages)?;

    let mut out = Map::new();
    out.insert("model".into(), model.clone().into());
    out.insert(
        "instructions".into(),
        instructions
            .unwrap_or_else(|| DEFAULT_INSTRUCTIONS.to_string())
            .into(),
    );
    out.insert("input".into(), Value::Array(input));
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        out.insert("tools".into(), convert_tools(tools)?);
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert("tool_choice".into(), convert_tool_choice(choice)?);
    }
    if let Some(parallel) = opt_bool(&obj, "parallel_tool_calls")? {
        out.insert("parallel_tool_calls".into(), parallel.into());
    }
    let mut text = Map::new();
    if let Some(format) = obj.get("response_format").filter(|v| !v.is_null()) {
        if let Some(format) = convert_response_format(format)? {
            text.insert("format".into(), format);
        }
    }
    match obj.get("verbosity") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) => {
            text.insert("verbosity".into(), v.clone().into());
        }
        Some(_) => return Err(ApiError::invalid_type("verbosity", "a string")),
    }
    if !text.is_empty() {
        out.insert("text".into(), Value::Object(text));
    }
    match obj.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) => {
            out.insert("reasoning".into(), json!({ "effort": e }));
        }
        Some(_) => return Err(ApiError::invalid_type("reasoning_effort", "a string")),
    }
    match obj.get("prompt_cache_key") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) => {
            out.insert("prompt_cache_key".into(), k.clone().into());
        }
        Some(_) => return Err(ApiError::invalid_type("prompt_cache_key", "a string")),
    }
    out.insert("stream".into(), true.into());
    out.insert("store".into(), false.into());

    let mut ignored = Vec::new();
    if opt_bool(&obj, "store")? == Some(true) {
        ignored.push("store".to_string());
    }
    for (key, value) in &obj {
        if !value.is_null() && !HANDLED.contains(&key.as_str()) {
            ignored.push(echo(key));
        }
    }
    Ok(UpstreamRequest {
        body: Value::Object(out).to_string().into_bytes(),
        client_stream,
        include_usage,
        model,
        ignored,
    })
}

/// The parameters whose loss would change what the client gets back.
fn refuse_semantics(obj: &Map<String, Value>) -> Result<(), ApiError> {
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(n) => match n.as_u64() {
            Some(1) => {}
            Some(_) => {
                return Err(ApiError::unsupported_value(
                    "n",
                    "codexmesh returns one choice per request; send n=1 or omit it.",
                ))
            }
            None => return Err(ApiError::invalid_type("n", "a positive integer")),
        },
    }
    if opt_bool(obj, "logprobs")? == Some(true) {
        return Err(ApiError::unsupported_value(
            "logprobs",
            "the Codex backend returns no log probabilities.",
        ));
    }
    let audio_modality = obj
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|x| x.as_str() == Some("audio")));
    if audio_modality || obj.get("audio").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::unsupported_value(
            if audio_modality {
                "modalities"
            } else {
                "audio"
            },
            "audio output is not available through codexmesh.",
        ));
    }
    for key in ["functions", "function_call"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::unsupported_parameter(
                key,
                "Use 'tools' and 'tool_choice' instead.",
            ));
        }
    }
    Ok(())
}

/// `(instructions, input items)` of the messages.
fn convert_messages(messages: &[Value]) -> Result<(Option<String>, Vec<Value>), ApiError> {
    let mut instructions: Vec<String> = Vec::new();
    let mut input = Vec::new();
    let mut leading = true;
    for (i, msg) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let Some(msg) = msg.as_object() else {
            return Err(ApiError::invalid_type(&path, "an object"));
        };
        let role = match msg.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{path}.role"))),
            Some(_) => return Err(ApiError::invalid_type(&format!("{path}.role"), "a string")),
        };
        match role {
            "system" | "developer" => {
                let text = text_content(msg.get("content"), &path, false)?;
                if leading {
                    instructions.push(text);
                } else {
                    input.push(json!({
                        "type": "message",
                        "role": "developer",
                        "content": [{"type": "input_text", "text": text}],
                    }));
                }
            }
            "user" => {
                leading = false;
                input.push(json!({
                    "type": "message",
                    "role": "user",
                    "content": user_content(msg.get("content"), &path)?,
                }));
            }
            "assistant" => {
                leading = false;
                assistant_items(msg, &path, &mut input)?;
            }
            "tool" => {
                leading = false;
                let call_id = match msg.get("tool_call_id") {
                    Some(Value::String(id)) => id.clone(),
                    None | Some(Value::Null) => {
                        return Err(ApiError::missing(&format!("{path}.tool_call_id")))
                    }
                    Some(_) => {
                        return Err(ApiError::invalid_type(
                            &format!("{path}.tool_call_id"),
                            "a string",
                        ))
                    }
                };
                let output = text_content(msg.get("content"), &path, false)?;
                input.push(json!({
                    "type": "function_call_output",
                    "call_id": call_id,
                    "output": output,
                }));
            }
            _ => {
                return Err(ApiError::unsupported_value(
                    &format!("{path}.role"),
                    "expected one of system, developer, user, assistant, tool.",
                ))
            }
        }
    }
    let instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));
    Ok((instructions, input))
}

/// Text of a string or a list of `text` parts (and `refusal` parts when `refusals`).
fn text_content(content: Option<&Value>, path: &str, refusals: bool) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let ppath = format!("{path}.content[{j}]");
                match part_type(part, &ppath)? {
                    "text" => text.push_str(part_str(part, "text", &ppath)?),
                    "refusal" if refusals => text.push_str(part_str(part, "refusal", &ppath)?),
                    _ => return Err(unsupported_part(&ppath, "text")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid_type(
            &format!("{path}.content"),
            "a string or an array of content parts",
        )),
    }
}

fn part_type<'a>(part: &'a Value, path: &str) -> Result<&'a str, ApiError> {
    match part.get("type") {
        Some(Value::String(t)) => Ok(t),
        None | Some(Value::Null) => Err(ApiError::missing(&format!("{path}.type"))),
        Some(_) => Err(ApiError::invalid_type(&format!("{path}.type"), "a string")),
    }
}

fn part_str<'a>(part: &'a Value, key: &str, path: &str) -> Result<&'a str, ApiError> {
    match part.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::missing(&format!("{path}.{key}"))),
        Some(_) => Err(ApiError::invalid_type(&format!("{path}.{key}"), "a string")),
    }
}

fn unsupported_part(path: &str, allowed: &str) -> ApiError {
    ApiError::unsupported_value(
        &format!("{path}.type"),
        &format!("content parts here may be: {allowed}."),
    )
}

/// A user message's content as Responses input parts.
fn user_content(content: Option<&Value>, path: &str) -> Result<Value, ApiError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(json!([{"type": "input_text", "text": s}])),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Err(ApiError::missing(&format!("{path}.content"))),
        Some(_) => {
            return Err(ApiError::invalid_type(
                &format!("{path}.content"),
                "a string or an array of content parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let ppath = format!("{path}.content[{j}]");
        match part_type(part, &ppath)? {
            "text" => {
                out.push(json!({"type": "input_text", "text": part_str(part, "text", &ppath)?}))
            }
            "image_url" => {
                let (url, detail) = match part.get("image_url") {
                    Some(Value::String(url)) => (url.as_str(), None),
                    Some(obj @ Value::Object(_)) => (
                        part_str(obj, "url", &format!("{ppath}.image_url"))?,
                        obj.get("detail").and_then(Value::as_str),
                    ),
                    _ => return Err(ApiError::missing(&format!("{ppath}.image_url.url"))),
                };
                let mut image = json!({"type": "input_image", "image_url": url});
                if let (Some(detail), Some(o)) = (detail, image.as_object_mut()) {
                    o.insert("detail".into(), detail.into());
                }
                out.push(image);
            }
            "file" => {
                let fpath = format!("{ppath}.file");
                let file = part.get("file").filter(|f| f.is_object());
                let Some(data) = file
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                else {
                    return Err(ApiError::unsupported_value(
                        &format!("{fpath}.file_data"),
                        "files must be sent inline as file_data (codexmesh has no file store).",
                    ));
                };
                let mut input = json!({"type": "input_file", "file_data": data});
                if let (Some(name), Some(o)) = (
                    file.and_then(|f| f.get("filename")).and_then(Value::as_str),
                    input.as_object_mut(),
                ) {
                    o.insert("filename".into(), name.into());
                }
                out.push(input);
            }
            _ => return Err(unsupported_part(&ppath, "text, image_url, file")),
        }
    }
    Ok(Value::Array(out))
}

/// An assistant message: its text as an output message, its tool calls as `function_call`s.
fn assistant_items(
    msg: &Map<String, Value>,
    path: &str,
    input: &mut Vec<Value>,
) -> Result<(), ApiError> {
    if msg.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::unsupported_parameter(
            &format!("{path}.function_call"),
            "Use 'tool_calls' instead.",
        ));
    }
    let mut content = Vec::new();
    match msg.get("content") {
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let ppath = format!("{path}.content[{j}]");
                match part_type(part, &ppath)? {
                    "text" => content.push(json!({
                        "type": "output_text",
                        "text": part_str(part, "text", &ppath)?,
                    })),
                    "refusal" => content.push(json!({
                        "type": "refusal",
                        "refusal": part_str(part, "refusal", &ppath)?,
                    })),
                    _ => return Err(unsupported_part(&ppath, "text, refusal")),
                }
            }
        }
        other => {
            let text = text_content(other, path, true)?;
            if !text.is_empty() {
                content.push(json!({"type": "output_text", "text": text}));
            }
        }
    }
    if !content.is_empty() {
        input.push(json!({"type": "message", "role": "assistant", "content": content}));
    }
    let calls = match msg.get("tool_calls") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(ApiError::invalid_type(
                &format!("{path}.tool_calls"),
                "an array",
            ))
        }
    };
    for (k, call) in calls.iter().enumerate() {
        let cpath = format!("{path}.tool_calls[{k}]");
        if let Some(t) = call.get("type").and_then(Value::as_str) {
            if t != "function" {
                return Err(unsupported_part(&cpath, "function"));
            }
        }
        let id = part_str(call, "id", &cpath)?;
        let Some(function) = call.get("function").filter(|f| f.is_object()) else {
            return Err(ApiError::missing(&format!("{cpath}.function")));
        };
        let fpath = format!("{cpath}.function");
        let name = part_str(function, "name", &fpath)?;
        let arguments = match function.get("arguments") {
            Some(Value::String(a)) => a.clone(),
            None | Some(Value::Null) => "{}".to_string(),
            Some(other) => other.to_string(),
        };
        input.push(json!({
            "type": "function_call",
            "call_id": id,
            "name": name,
            "arguments": arguments,
        }));
    }
    Ok(())
}

/// Chat function tools as Responses function tools.
fn convert_tools(tools: &Value) -> Result<Value, ApiError> {
    let Some(tools) = tools.as_array() else {
        return Err(ApiError::invalid_type("tools", "an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if part_type(tool, &path)? != "function" {
            return Err(unsupported_part(&path, "function"));
        }
        let Some(function) = tool.get("function").and_then(Value::as_object) else {
            return Err(ApiError::missing(&format!("{path}.function")));
        };
        let fpath = format!("{path}.function");
        let name = part_str(tool.get("function").unwrap_or(&Value::Null), "name", &fpath)?;
        let mut t = Map::new();
        t.insert("type".into(), "function".into());
        t.insert("name".into(), name.into());
        if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
            t.insert("description".into(), d.clone());
        }
        t.insert(
            "parameters".into(),
            function
                .get("parameters")
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        t.insert(
            "strict".into(),
            function
                .get("strict")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .into(),
        );
        out.push(Value::Object(t));
    }
    Ok(Value::Array(out))
}

fn convert_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let function = o.get("function").unwrap_or(&Value::Null);
            let name = part_str(function, "name", "tool_choice.function")?;
            Ok(json!({"type": "function", "name": name}))
        }
        _ => Err(ApiError::unsupported_value(
            "tool_choice",
            "expected none, auto, required or {\"type\":\"function\",\"function\":{\"name\":...}}.",
        )),
    }
}

/// `response_format` as `text.format` (`None` for plain text).
fn convert_response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match part_type(format, "response_format")? {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let Some(schema) = format.get("json_schema").and_then(Value::as_object) else {
                return Err(ApiError::missing("response_format.json_schema"));
            };
            let name = part_str(
                format.get("json_schema").unwrap_or(&Value::Null),
                "name",
                "response_format.json_schema",
            )?;
            let mut out = Map::new();
            out.insert("type".into(), "json_schema".into());
            out.insert("name".into(), name.into());
            for key in ["description", "schema", "strict"] {
                if let Some(v) = schema.get(key).filter(|v| !v.is_null()) {
                    out.insert(key.into(), v.clone());
                }
            }
            Ok(Some(Value::Object(out)))
        }
        _ => Err(unsupported_part(
            "response_format",
            "text, json_object, json_schema",
        )),
    }
}

/// `chatcmpl-` plus the response id without its `resp_` prefix.
pub fn chat_id(response_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        response_id.strip_prefix("resp_").unwrap_or(response_id)
    )
}

/// Responses `usage` as chat-completions `usage`.
pub fn chat_usage(usage: &Value) -> Value {
    let n = |p: &str| usage.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let prompt = n("/input_tokens");
    let completion = n("/output_tokens");
    let total = usage
        .get("total_tokens")
        .and_then(Value::as_i64)
        .unwrap_or(prompt + completion);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": n("/input_tokens_details/cached_tokens")},
        "completion_tokens_details": {
            "reasoning_tokens": n("/output_tokens_details/reasoning_tokens"),
        },
    })
}

/// `finish_reason` of an incomplete response.
fn incomplete_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("content_filter") => "content_filter",
        _ => "length",
    }
}

/// One tool call of the streamed answer.
#[derive(Debug)]
struct ToolSlot {
    item_id: Option<String>,
    output_index: Option<u64>,
    /// Argument text already sent.
    had_args: bool,
}

/// What [`ChatStream`] keeps between events.
#[derive(Debug)]
struct StreamState {
    include_usage: bool,
    id: String,
    created: i64,
    model: String,
    started: bool,
    tools: Vec<ToolSlot>,
    /// Message items that streamed text (their `output_item.done` is not repeated).
    text_items: Vec<String>,
    done: bool,
}

/// Translates the upstream Responses stream into chat-completion chunks as it arrives.
#[derive(Debug)]
pub struct ChatStream {
    parser: SseParser,
    state: StreamState,
}

impl ChatStream {
    /// `model` is the requested one (used until the response names its own).
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            parser: SseParser::default(),
            state: StreamState {
                include_usage,
                id: chat_id("codexmesh"),
                created: 0,
                model: model.to_string(),
                started: false,
                tools: Vec::new(),
                text_items: Vec::new(),
                done: false,
            },
        }
    }

    /// Translates one upstream chunk; returns the SSE bytes to send to the client.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.state.done {
            return out;
        }
        let state = &mut self.state;
        let result = self
            .parser
            .feed(chunk, &mut |e| state.on_event(e, &mut out));
        if let Err(err) = result {
            self.state
                .fail(&ApiError::stream_incomplete(&err.to_string()), &mut out);
        }
        out
    }

    /// The end of the upstream stream: an answer without a final event ends in an error event.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.state.done {
            return out;
        }
        let state = &mut self.state;
        let _ = self.parser.finish(&mut |e| state.on_event(e, &mut out));
        if !self.state.done {
            self.state.fail(
                &ApiError::stream_incomplete("the stream closed before response.completed"),
                &mut out,
            );
        }
        out
    }

    /// Whether the stream reached its end (`[DONE]` or an error event was emitted).
    pub fn is_done(&self) -> bool {
        self.state.done
    }
}

impl StreamState {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        sse::write_data(out, chunk.to_string().as_bytes());
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
    }

    fn fail(&mut self, err: &ApiError, out: &mut Vec<u8>) {
        out.extend_from_slice(&err.sse_event());
        self.done = true;
    }

    fn on_event(&mut self, e: Event<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(kind) = top_level_type(e.data) else {
            return;
        };
        if !matches!(
            kind,
            "response.created"
                | "response.output_item.added"
                | "response.output_text.delta"
                | "response.refusal.delta"
                | "response.function_call_arguments.delta"
                | "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "error"
        ) {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(e.data) else {
            return;
        };
        match kind {
            "response.created" => {
                self.read_response(v.get("response"));
                self.start(out);
            }
            "response.output_item.added" => {
                let item = v.get("item").unwrap_or(&Value::Null);
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    let index = self.new_slot(item, &v);
                    let args = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                    self.announce(index, item, args, out);
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                let field = if kind == "response.output_text.delta" {
                    "content"
                } else {
                    "refusal"
                };
                if let Some(id) = v.get("item_id").and_then(Value::as_str) {
                    if self.text_items.last().map(String::as_str) != Some(id) {
                        self.text_items.push(id.to_string());
                    }
                }
                if let Some(delta) = v.get("delta").and_then(Value::as_str) {
                    self.start(out);
                    self.chunk(json!({ field: delta }), None, out);
                }
            }
            "response.function_call_arguments.delta" => {
                let slot = self.find_slot(
                    v.get("item_id").and_then(Value::as_str),
                    v.get("output_index").and_then(Value::as_u64),
                );
                if let (Some(index), Some(delta)) = (slot, v.get("delta").and_then(Value::as_str)) {
                    if let Some(s) = self.tools.get_mut(index) {
                        s.had_args = true;
                    }
                    self.args(index, delta, out);
                }
            }
            "response.output_item.done" => self.item_done(&v, out),
            "response.completed" | "response.incomplete" => {
                let response = v.get("response").unwrap_or(&Value::Null);
                self.read_response(Some(response));
                self.start(out);
                let reason = if kind == "response.incomplete" {
                    incomplete_reason(
                        response
                            .pointer("/incomplete_details/reason")
                            .and_then(Value::as_str),
                    )
                } else if self.tools.is_empty() {
                    "stop"
                } else {
                    "tool_calls"
                };
                self.chunk(json!({}), Some(reason), out);
                if self.include_usage {
                    if let Some(usage) = response.get("usage").filter(|u| u.is_object()) {
                        let chunk = json!({
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.model,
                            "choices": [],
                            "usage": chat_usage(usage),
                        });
                        sse::write_data(out, chunk.to_string().as_bytes());
                    }
                }
                sse::write_done(out);
                self.done = true;
            }
            _ => {
                // response.failed / error
                let err = if kind == "error" {
                    v.get("error").filter(|e| e.is_object()).unwrap_or(&v)
                } else {
                    v.pointer("/response/error").unwrap_or(&Value::Null)
                };
                let err = ApiError::from_upstream(
                    err.get("code").and_then(Value::as_str),
                    err.get("message").and_then(Value::as_str),
                );
                self.fail(&err, out);
            }
        }
    }

    fn read_response(&mut self, response: Option<&Value>) {
        let Some(r) = response else { return };
        if let Some(id) = r.get("id").and_then(Value::as_str) {
            self.id = chat_id(id);
        }
        if let Some(created) = r.get("created_at").and_then(Value::as_i64) {
            self.created = created;
        }
        if let Some(model) = r.get("model").and_then(Value::as_str) {
            self.model = model.to_string();
        }
    }

    fn new_slot(&mut self, item: &Value, event: &Value) -> usize {
        self.tools.push(ToolSlot {
            item_id: item.get("id").and_then(Value::as_str).map(str::to_string),
            output_index: event.get("output_index").and_then(Value::as_u64),
            had_args: false,
        });
        self.tools.len() - 1
    }

    fn find_slot(&self, item_id: Option<&str>, output_index: Option<u64>) -> Option<usize> {
        self.tools.iter().position(|s| match (item_id, &s.item_id) {
            (Some(a), Some(b)) => a == b,
            _ => output_index.is_some() && s.output_index == output_index,
        })
    }

    fn announce(&mut self, index: usize, item: &Value, args: &str, out: &mut Vec<u8>) {
        self.start(out);
        if !args.is_empty() {
            if let Some(s) = self.tools.get_mut(index) {
                s.had_args = true;
            }
        }
        self.chunk(
            json!({"tool_calls": [{
                "index": index,
                "id": item.get("call_id").and_then(Value::as_str).unwrap_or(""),
                "type": "function",
                "function": {
                    "name": item.get("name").and_then(Value::as_str).unwrap_or(""),
                    "arguments": args,
                },
            }]}),
            None,
            out,
        );
    }

    fn args(&mut self, index: usize, delta: &str, out: &mut Vec<u8>) {
        self.start(out);
        self.chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": delta}}]}),
            None,
            out,
        );
    }

    fn item_done(&mut self, v: &Value, out: &mut Vec<u8>) {
        let item = v.get("item").unwrap_or(&Value::Null);
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") => {
                let args = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                let found = self.find_slot(
                    item.get("id").and_then(Value::as_str),
                    v.get("output_index").and_then(Value::as_u64),
                );
                match found {
                    Some(index) => {
                        let had = self.tools.get(index).is_some_and(|s| s.had_args);
                        if !had && !args.is_empty() {
                            if let Some(s) = self.tools.get_mut(index) {
                                s.had_args = true;
                            }
                            self.args(index, args, out);
                        }
                    }
                    None => {
                        let index = self.new_slot(item, v);
                        self.announce(index, item, args, out);
                    }
                }
            }
            Some("message") => {
                let id = item.get("id").and_then(Value::as_str);
                if id.is_some_and(|id| self.text_items.iter().any(|t| t == id)) {
                    return;
                }
                let (text, refusal) = message_text(item);
                if !text.is_empty() {
                    self.start(out);
                    self.chunk(json!({ "content": text }), None, out);
                }
                if let Some(refusal) = refusal {
                    self.start(out);
                    self.chunk(json!({ "refusal": refusal }), None, out);
                }
            }
            _ => {}
        }
    }
}

/// The `output_text` of a message item, and its refusal if any.
fn message_text(item: &Value) -> (String, Option<String>) {
    let mut text = String::new();
    let mut refusal: Option<String> = None;
    for part in item
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match part.get("type").and_then(Value::as_str) {
            Some("output_text") => {
                text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
            }
            Some("refusal") => refusal
                .get_or_insert_with(String::new)
                .push_str(part.get("refusal").and_then(Value::as_str).unwrap_or("")),
            _ => {}
        }
    }
    (text, refusal)
}

/// Collects the upstream stream into one `chat.completion` (for `stream: false`).
#[derive(Debug)]
pub struct ChatCollector {
    inner: Collector,
    model: String,
}

impl ChatCollector {
    /// `model` is the requested one (used when the response names none).
    pub fn new(model: &str) -> Self {
        Self {
            inner: Collector::new(),
            model: model.to_string(),
        }
    }

    /// Reads one upstream chunk; nothing is sent to the client until [`ChatCollector::finish`].
    pub fn feed(&mut self, chunk: &[u8]) {
        self.inner.feed(chunk);
    }

    /// The `chat.completion` JSON, or the error to answer with.
    pub fn finish(&mut self) -> Result<Vec<u8>, ApiError> {
        let response = self.inner.finish_value()?;
        Ok(completion_of(&response, &self.model)
            .to_string()
            .into_bytes())
    }
}

/// A final Response object as a `chat.completion`.
pub fn completion_of(response: &Value, requested_model: &str) -> Value {
    let mut text = String::new();
    let mut refusal: Option<String> = None;
    let mut tool_calls = Vec::new();
    for item in response
        .get("output")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let (t, r) = message_text(item);
                text.push_str(&t);
                if let Some(r) = r {
                    refusal.get_or_insert_with(String::new).push_str(&r);
                }
            }
            Some("function_call") => tool_calls.push(json!({
                "id": item.get("call_id").and_then(Value::as_str).unwrap_or(""),
                "type": "function",
                "function": {
                    "name": item.get("name").and_then(Value::as_str).unwrap_or(""),
                    "arguments": item.get("arguments").and_then(Value::as_str).unwrap_or(""),
                },
            })),
            _ => {}
        }
    }
    let finish_reason = if response.get("status").and_then(Value::as_str) == Some("incomplete") {
        incomplete_reason(
            response
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str),
        )
    } else if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { text.into() },
        "refusal": refusal,
    });
    if let (false, Some(m)) = (tool_calls.is_empty(), message.as_object_mut()) {
        m.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut completion = json!({
        "id": chat_id(response.get("id").and_then(Value::as_str).unwrap_or("codexmesh")),
        "object": "chat.completion",
        "created": response.get("created_at").and_then(Value::as_i64).unwrap_or(0),
        "model": response.get("model").and_then(Value::as_str).unwrap_or(requested_model),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    });
    if let (Some(usage), Some(c)) = (
        response.get("usage").filter(|u| u.is_object()),
        completion.as_object_mut(),
    ) {
        c.insert("usage".into(), chat_usage(usage));
    }
    completion
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(v: Value) -> Result<UpstreamRequest, ApiError> {
        chat_request(v.to_string().as_bytes())
    }

    fn body(r: &UpstreamRequest) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn system_to_instructions_and_later_developer_to_input() {
        let r = req(json!({"model": "m", "messages": [
            {"role": "system", "content": "a"},
            {"role": "developer", "content": [{"type": "text", "text": "b"}]},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "c"},
        ]}))
        .unwrap();
        let b = body(&r);
        assert_eq!(b["instructions"], "a\n\nb");
        assert_eq!(b["input"][0]["role"], "user");
        assert_eq!(b["input"][1]["role"], "developer");
        assert_eq!(b["input"][1]["content"][0]["text"], "c");
        assert_eq!(
            (b["stream"].clone(), b["store"].clone()),
            (json!(true), json!(false))
        );
        let r = req(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})).unwrap();
        assert_eq!(body(&r)["instructions"], DEFAULT_INSTRUCTIONS);
    }

    #[test]
    fn refusals_carry_the_field_path() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
                "n",
            ),
            (
                json!({"model": "m", "logprobs": true, "messages": [{"role": "user", "content": "x"}]}),
                "logprobs",
            ),
            (
                json!({"model": "m", "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "x"},
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]},
                ]}),
                "messages[2].content[1].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "any"}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "functions": []}),
                "functions",
            ),
        ];
        for (v, param) in cases {
            let err = req(v).unwrap_err();
            assert_eq!(err.status, 400);
            assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
        }
        assert_eq!(
            chat_request(b"{\"model\":").unwrap_err().code.as_deref(),
            Some("invalid_json")
        );
    }

    #[test]
    fn dropped_parameters_reported_n1_and_logprobs_false_silent() {
        let r = req(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "n": 1, "logprobs": false, "temperature": 1, "max_tokens": 5, "user": null,
            "store": true, "stream": true, "stream_options": {"include_usage": true}}),
        )
        .unwrap();
        assert_eq!(r.ignored, vec!["store", "max_tokens", "temperature"]);
        assert!(r.client_stream && r.include_usage);
    }

    const TOOL_STREAM: &str = concat!(
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_9\",\"created_at\":7,\"model\":\"gpt-5.5\"}}\n\n",
        "data: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"f\",\"arguments\":\"\"}}\n\n",
        "data: {\"type\":\"response.function_call_arguments.delta\",\"item_id\":\"fc_1\",\"output_index\":0,\"delta\":\"{\\\"a\\\"\"}\n\n",
        "data: {\"type\":\"response.function_call_arguments.delta\",\"item_id\":\"fc_1\",\"output_index\":0,\"delta\":\":1}\"}\n\n",
        "data: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"type\":\"function_call\",\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}\n\n",
        "data: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":{\"type\":\"function_call\",\"id\":\"fc_2\",\"call_id\":\"call_2\",\"name\":\"g\",\"arguments\":\"{}\"}}\n\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_9\",\"created_at\":7,\"model\":\"gpt-5.5\",\"output\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":2,\"total_tokens\":5}}}\n\n",
    );

    fn chunks(out: &[u8]) -> Vec<Value> {
        let mut parser = SseParser::default();
        let mut got = Vec::new();
        parser
            .feed(out, &mut |e| {
                got.push(
                    serde_json::from_slice(e.data)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(e.data).into())),
                )
            })
            .unwrap();
        got
    }

    #[test]
    fn streamed_tool_calls_with_and_without_deltas() {
        let mut s = ChatStream::new("m", true);
        let mut out = s.feed(TOOL_STREAM.as_bytes());
        out.extend(s.finish());
        let got = chunks(&out);
        assert_eq!(got[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(got[0]["id"], "chatcmpl-9");
        assert_eq!(got[0]["created"], 7);
        let calls: Vec<&Value> = got
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
            .collect();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["function"]["name"], "f");
        let args0: String = calls
            .iter()
            .filter(|c| c["index"] == 0)
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args0, "{\"a\":1}");
        assert_eq!(calls[3]["index"], 1);
        assert_eq!(calls[3]["function"]["arguments"], "{}");
        let n = got.len();
        assert_eq!(got[n - 3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(got[n - 2]["usage"]["total_tokens"], 5);
        assert_eq!(got[n - 1], "[DONE]");
    }

    #[test]
    fn same_output_at_every_split() {
        let whole = {
            let mut s = ChatStream::new("m", true);
            let mut out = s.feed(TOOL_STREAM.as_bytes());
            out.extend(s.finish());
            out
        };
        for at in 0..=TOOL_STREAM.len() {
            let mut s = ChatStream::new("m", true);
            let mut out = s.feed(&TOOL_STREAM.as_bytes()[..at]);
            out.extend(s.feed(&TOOL_STREAM.as_bytes()[at..]));
            out.extend(s.finish());
            assert_eq!(out, whole, "split at {at}");
        }
    }

    #[test]
    fn cut_stream_ends_with_an_error_event() {
        let mut s = ChatStream::new("m", false);
        let mut out =
            s.feed(b"data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\n");
        out.extend(s.finish());
        let got = chunks(&out);
        assert_eq!(got[1]["error"]["code"], "stream_incomplete");
        assert!(s.is_done());
        assert!(s.feed(b"data: x\n\n").is_empty());
    }

    #[test]
    fn collector_builds_a_completion() {
        let mut c = ChatCollector::new("m");
        c.feed(TOOL_STREAM.as_bytes());
        let v: Value = serde_json::from_slice(&c.finish().unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert!(v["choices"][0]["message"]["content"].is_null());
        assert_eq!(v["choices"][0]["message"]["tool_calls"][1]["id"], "call_2");
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }
}
