//! The token usage an answer states, per provider, for `Outcome.input_tokens/output_tokens` and
//! the keys' token budgets (`policy`).
//!
//! Rules kept here:
//! - Model streams are read by the scan that already watches them for their end
//!   (`stream_end::StreamWatch`): Codex `response.completed` / `response.incomplete` →
//!   `response.usage.input_tokens/output_tokens` (the `/v1` routes' answers are the same Codex
//!   stream upstream of their translation); Claude `message_start.message.usage.input_tokens`
//!   and `message_delta.usage.output_tokens` (cumulative: the last one counts); Gemini's final
//!   frame's `usageMetadata.promptTokenCount/candidatesTokenCount` (Code Assist wraps it in
//!   `response`).
//! - A Codex final event carries the whole response: only the object after its last `"usage"`
//!   key is parsed ([`value_after_last_key`]), not the output before it. A key inside a string
//!   is escaped (`\"usage\"`), so text never matches.
//! - A JSON (non-stream) answer is read through a bounded tail window ([`TailWindow`]): its
//!   usage comes after the content (Claude `usage`, Gemini `usageMetadata`).
//! - Missing or odd numbers read as 0: usage is a report, never a reason to fail a request.

use serde_json::Value;

use crate::provider::Provider;

/// Tokens one answer stated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

fn number(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// The JSON value after the last `"key":` in `data` (whitespace allowed around the colon).
pub fn value_after_last_key(data: &[u8], key: &str) -> Option<Value> {
    let needle = format!("\"{key}\"");
    let finder = memchr::memmem::FinderRev::new(needle.as_bytes());
    let mut end = data.len();
    while let Some(at) = finder.rfind(data.get(..end)?) {
        let rest = data.get(at + needle.len()..)?;
        let skip = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        if rest.get(skip) == Some(&b':') {
            let value = rest.get(skip + 1..)?;
            return serde_json::Deserializer::from_slice(value)
                .into_iter::<Value>()
                .next()
                .and_then(Result::ok);
        }
        end = at;
    }
    None
}

/// OpenAI Responses `usage` object (`input_tokens`, `output_tokens`).
fn responses_usage(usage: &Value) -> TokenUsage {
    TokenUsage {
        input: number(usage.get("input_tokens")),
        output: number(usage.get("output_tokens")),
    }
}

/// A Codex final event's usage (`response.usage`).
pub fn codex_final_usage(event: &[u8]) -> Option<TokenUsage> {
    value_after_last_key(event, "usage")
        .filter(Value::is_object)
        .map(|u| responses_usage(&u))
}

/// Folds a Claude stream event's usage into `usage`: `message_start` states the input (and a
/// first output count), `message_delta` the output so far.
pub fn claude_event_usage(name: &str, data: &[u8], usage: &mut TokenUsage) {
    let pointer = match name {
        "message_start" => "/message/usage",
        "message_delta" => "/usage",
        _ => return,
    };
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(u) = v.pointer(pointer) else {
        return;
    };
    if let Some(input) = u.get("input_tokens").and_then(Value::as_u64) {
        usage.input = input;
    }
    if let Some(output) = u.get("output_tokens").and_then(Value::as_u64) {
        usage.output = output;
    }
}

/// A Gemini answer's `usageMetadata` (Code Assist's `response.usageMetadata`, or the plain API's
/// top-level one).
pub fn gemini_usage(frame: &Value) -> Option<TokenUsage> {
    let meta = frame
        .pointer("/response/usageMetadata")
        .or_else(|| frame.get("usageMetadata"))?;
    Some(gemini_metadata(meta))
}

fn gemini_metadata(meta: &Value) -> TokenUsage {
    TokenUsage {
        input: number(meta.get("promptTokenCount")),
        output: number(meta.get("candidatesTokenCount")),
    }
}

/// The usage of a whole JSON answer (or its tail): Claude's `usage`, Gemini's `usageMetadata`.
/// Codex answers are streams (read by `StreamWatch`).
pub fn json_answer_usage(provider: Provider, tail: &[u8]) -> Option<TokenUsage> {
    match provider {
        Provider::Claude => value_after_last_key(tail, "usage")
            .filter(Value::is_object)
            .map(|u| responses_usage(&u)),
        Provider::Gemini => value_after_last_key(tail, "usageMetadata")
            .filter(Value::is_object)
            .map(|m| gemini_metadata(&m)),
        Provider::Codex => None,
    }
}

/// The last `cap` bytes of a body, kept as it streams past.
#[derive(Debug, Clone)]
pub struct TailWindow {
    buf: Vec<u8>,
    cap: usize,
}

/// The tail kept of a JSON answer: its usage is within its last few hundred bytes.
pub const ANSWER_TAIL_BYTES: usize = 16 * 1024;

impl Default for TailWindow {
    fn default() -> Self {
        Self::new(ANSWER_TAIL_BYTES)
    }
}

impl TailWindow {
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let keep = chunk
            .get(chunk.len().saturating_sub(self.cap)..)
            .unwrap_or(chunk);
        self.buf.extend_from_slice(keep);
        let excess = self.buf.len().saturating_sub(self.cap);
        if excess > 0 {
            self.buf.drain(..excess);
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_codex_usage_is_the_last_usage_object_of_the_final_event() {
        let event = br#"{"type":"response.completed","response":{"id":"r","output":[{"type":"message","content":[{"type":"output_text","text":"say \"usage\": {\"input_tokens\": 999}"}]},{"type":"function_call","arguments":"{\"usage\":1}"}],"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":0},"output_tokens":7,"total_tokens":19}}}"#;
        assert_eq!(
            codex_final_usage(event),
            Some(TokenUsage {
                input: 12,
                output: 7
            })
        );
        assert_eq!(
            codex_final_usage(br#"{"type":"response.completed","response":{}}"#),
            None
        );
        assert_eq!(
            codex_final_usage(br#"{"response":{"usage" : null}}"#),
            None,
            "a null usage states nothing"
        );
        assert_eq!(
            value_after_last_key(br#"{"usage" :  {"a":1}, "x":"usage"}"#, "usage"),
            Some(serde_json::json!({"a":1}))
        );
    }

    #[test]
    fn claude_events_state_input_then_output() {
        let mut u = TokenUsage::default();
        claude_event_usage(
            "message_start",
            br#"{"type":"message_start","message":{"id":"m","content":[],"usage":{"input_tokens":12,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
            &mut u,
        );
        assert_eq!(
            u,
            TokenUsage {
                input: 12,
                output: 1
            }
        );
        claude_event_usage(
            "ping",
            br#"{"type":"ping","usage":{"output_tokens":99}}"#,
            &mut u,
        );
        claude_event_usage(
            "message_delta",
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#,
            &mut u,
        );
        assert_eq!(
            u,
            TokenUsage {
                input: 12,
                output: 5
            }
        );
        claude_event_usage("message_delta", b"not json", &mut u);
        assert_eq!(u.total(), 17);
    }

    #[test]
    fn gemini_usage_is_read_wrapped_or_plain() {
        let wrapped = serde_json::json!({"response": {"candidates": [], "usageMetadata": {
            "promptTokenCount": 8, "candidatesTokenCount": 6, "totalTokenCount": 14}}});
        assert_eq!(
            gemini_usage(&wrapped),
            Some(TokenUsage {
                input: 8,
                output: 6
            })
        );
        let plain = serde_json::json!({"usageMetadata": {"promptTokenCount": 3}});
        assert_eq!(
            gemini_usage(&plain),
            Some(TokenUsage {
                input: 3,
                output: 0
            })
        );
        assert_eq!(gemini_usage(&serde_json::json!({"response": {}})), None);
    }

    #[test]
    fn json_answers_are_read_from_their_tail() {
        let claude = br#"{"id":"msg","type":"message","content":[{"type":"tool_use","input":{"usage":{"input_tokens":1}}}],"stop_reason":"end_turn","usage":{"input_tokens":20,"cache_creation_input_tokens":0,"output_tokens":4}}"#;
        let mut tail = TailWindow::new(96);
        for chunk in claude.chunks(7) {
            tail.push(chunk);
        }
        assert_eq!(tail.bytes().len(), 96);
        assert!(claude.ends_with(tail.bytes()));
        assert_eq!(
            json_answer_usage(Provider::Claude, tail.bytes()),
            Some(TokenUsage {
                input: 20,
                output: 4
            })
        );
        let gemini = br#"{"response":{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7}},"traceId":"t"}"#;
        assert_eq!(
            json_answer_usage(Provider::Gemini, gemini),
            Some(TokenUsage {
                input: 5,
                output: 2
            })
        );
        assert_eq!(json_answer_usage(Provider::Codex, gemini), None);
        // A window that cut the usage object reads as nothing, never a panic.
        assert_eq!(
            json_answer_usage(Provider::Claude, br#""usage":{"input_tok"#),
            None
        );
        let mut big = TailWindow::new(4);
        big.push(b"0123456789");
        assert_eq!(big.bytes(), b"6789");
    }
}
