//! The `/v1` translation layer: OpenAI API requests and answers onto the Codex backend's
//! Responses API, and back. Pure code: bytes in, bytes out, no host types, no I/O, no clock.
//!
//! Rules every translator here keeps:
//! - Requests are parsed whole (they are bounded by the adapter's body limit); answers are
//!   translated as they stream: each translator is a small struct fed upstream chunks split
//!   anywhere (`feed(&mut self, chunk) -> Vec<u8>`, then `finish()`), holding at most one
//!   pending SSE event plus the few facts the final answer needs (ids, tool-call slots, usage).
//! - The upstream request is always `stream: true, store: false`; whether the client asked for
//!   a stream travels beside it in [`UpstreamRequest::client_stream`].
//! - A parameter the backend would refuse and that does not change the answer's shape is
//!   dropped and named in [`UpstreamRequest::ignored`] (the adapter sends them in
//!   [`IGNORED_PARAMS_HEADER`]); one whose loss would change what the client gets back (`n>1`,
//!   `logprobs`, stored state) is refused with a 400 naming the parameter.
//! - Every error is an [`ApiError`] in OpenAI's shape, convertible into a
//!   [`crate::errors::GatewayError`]; nothing panics on any input.
//!
//! Modules: [`sse`] (parser, writer), [`responses`] (`POST /v1/responses` and the
//! [`responses::OutcomeScanner`] for any Codex stream), [`chat`] (`POST /v1/chat/completions`),
//! [`models`] (`GET /v1/models`, `GET /v1/models/{id}`).

pub mod chat;
pub mod error;
pub mod models;
pub mod responses;
pub mod sse;

#[cfg(test)]
mod golden;

pub use error::ApiError;

use serde_json::{Map, Value};

/// Response header naming the request parameters the gateway dropped (comma-separated).
pub const IGNORED_PARAMS_HEADER: &str = "x-codexmesh-ignored-params";

/// Instructions sent when a request has none: the Codex backend refuses a request without
/// `instructions` (`400 {"detail":"Instructions are required"}`).
pub const DEFAULT_INSTRUCTIONS: &str = "You are a helpful assistant.";

/// A request translated for `POST /backend-api/codex/responses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// The JSON body to send upstream.
    pub body: Vec<u8>,
    /// Whether the client asked for a stream (`stream: true`); upstream always streams.
    pub client_stream: bool,
    /// Chat only: `stream_options.include_usage`.
    pub include_usage: bool,
    /// The model asked for.
    pub model: String,
    /// Top-level parameters dropped, in the order met (dotted for nested ones).
    pub ignored: Vec<String>,
}

impl UpstreamRequest {
    /// The value for [`IGNORED_PARAMS_HEADER`], when something was dropped.
    pub fn ignored_header(&self) -> Option<String> {
        (!self.ignored.is_empty()).then(|| self.ignored.join(","))
    }
}

/// Parses a request body into a JSON object or answers the documented 400.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_json("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid_json(&e.to_string())),
    }
}

/// The `model` field: a non-empty string.
fn required_model(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("model") {
        None | Some(Value::Null) => Err(ApiError::missing("model")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::missing("model")),
        Some(_) => Err(ApiError::invalid_type("model", "a string")),
    }
}

/// An optional boolean field (`null` counts as absent).
fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid_type(key, "a boolean")),
    }
}

/// The top-level `"type"` string of a JSON object, found without parsing it: nested values are
/// skipped by counting brackets outside strings. `None` when the text is not an object with a
/// plain (escape-free) string `type`.
pub(crate) fn top_level_type(data: &[u8]) -> Option<&str> {
    // Fast path: servers put `type` first.
    if let Some(rest) = data.strip_prefix(b"{\"type\":\"") {
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest.get(end) == Some(&b'"') {
            return std::str::from_utf8(rest.get(..end)?).ok();
        }
        return None;
    }
    top_level_str(data, b"type")
}

/// The top-level string value of `key` in a JSON object, found without parsing it (nested
/// values skipped by counting brackets outside strings); it reads only as far as the key, so a
/// body's head is enough when the key comes early. `None` when the text is not an object with a
/// plain (escape-free) string under `key` at its top level.
pub(crate) fn top_level_str<'a>(data: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut expect_key = false;
    while let Some(&b) = data.get(i) {
        match b {
            b'{' | b'[' => {
                depth += 1;
                expect_key = b == b'{' && depth == 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let len = string_len(data.get(start..)?)?;
                let end = start + len;
                if depth == 1 && expect_key {
                    expect_key = false;
                    if data.get(start..end) == Some(key) {
                        let mut j = end + 1;
                        while matches!(data.get(j), Some(b' ' | b'\t' | b'\r' | b'\n' | b':')) {
                            j += 1;
                        }
                        if data.get(j) != Some(&b'"') {
                            return None;
                        }
                        let value = data.get(j + 1..)?;
                        let n = memchr::memchr2(b'"', b'\\', value)?;
                        if value.get(n) != Some(&b'"') {
                            return None;
                        }
                        return std::str::from_utf8(value.get(..n)?).ok();
                    }
                }
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Length of a JSON string's body (up to its closing quote), escapes skipped.
fn string_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let n = memchr::memchr2(b'"', b'\\', s.get(i..)?)?;
        i += n;
        if s.get(i) == Some(&b'\\') {
            i += 2;
        } else {
            return Some(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn top_level_type_skips_nested_types() {
        assert_eq!(
            top_level_type(br#"{"type":"response.completed","x":1}"#),
            Some("response.completed")
        );
        assert_eq!(
            top_level_type(
                br#"{"response":{"output":[{"type":"message","t":"a\"}"}]},"type" : "response.done"}"#
            ),
            Some("response.done")
        );
        assert_eq!(top_level_type(br#"{"a":"type","b":{"type":"x"}}"#), None);
        assert_eq!(top_level_type(br#"{"a":["type"],"type":"y"}"#), Some("y"));
        assert_eq!(top_level_type(b"[DONE]"), None);
        assert_eq!(top_level_type(b"{\"type\":\"unterminated"), None);
        assert_eq!(top_level_type(b"}}}"), None);
        assert_eq!(top_level_type(b""), None);
    }

    #[test]
    fn ignored_header_joins() {
        let mut r = UpstreamRequest {
            body: Vec::new(),
            client_stream: false,
            include_usage: false,
            model: "m".into(),
            ignored: vec![],
        };
        assert_eq!(r.ignored_header(), None);
        r.ignored = vec!["temperature".into(), "top_p".into()];
        assert_eq!(r.ignored_header().as_deref(), Some("temperature,top_p"));
    }
}
