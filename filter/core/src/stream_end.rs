//! How a 200 model stream ended, for each provider: the upstream filter feeds it the bytes it
//! forwards unchanged, and a stream the upstream cut or failed counts against the account
//! (`verdict::stream_verdict`) instead of as a success.
//!
//! Rules kept here:
//! - Only the end is looked for: an event's JSON is parsed only when it is (or may be) final;
//!   every other event costs the SSE parser's scan and nothing more. The parser holds at most one
//!   pending event (bounded, [`crate::translate::sse`]); a frame past its bound reads as a cut.
//! - Codex (Responses events): `response.completed` / `response.incomplete` end it, a
//!   `response.failed` or `error` event fails it (`translate::responses`).
//! - Claude (`event: <name>` + `data: <json>`): `message_stop` completes it, whatever stop reason
//!   the `message_delta` before it gave (`max_tokens`, `refusal` are deliberate ends); an `error`
//!   event fails it with its `error.type` as the code (`overloaded_error`, `api_error`,
//!   `rate_limit_error`, `invalid_request_error`, …). The event's name is read from `event:`,
//!   else from the data's top-level `type`.
//! - Gemini Code Assist (`data: <json>` only, no names, no `[DONE]`): a frame with a
//!   `finishReason` on any of `response.candidates[*]` (any value: `SAFETY`, `MAX_TOKENS` are
//!   deliberate ends) completes it; a frame with a top-level `error` object fails it with the
//!   error's `status` as the code (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`, …), and that frame is
//!   kept (it alone) so its reset time can be read like a 429's body. A frame is parsed only when
//!   its raw bytes hold the key `"finishReason"` or `"error"` (a quote inside a string value is
//!   escaped, so ordinary text never matches).
//! - Any stream that ends without its final event is [`Outcome::Cut`]; whether that is the
//!   account's failure or the client's leaving is the caller's call.
//! - The same scan reads the answer's token usage ([`StreamWatch::usage`], `tokens`): from the
//!   Codex final event and the Gemini final frame it already parses, and from Claude's
//!   `message_start` / `message_delta` events (one each per stream, small).

use serde_json::Value;

use crate::provider::Provider;
use crate::tokens::{self, TokenUsage};
use crate::translate::error::echo;
use crate::translate::responses::{final_outcome, Outcome};
use crate::translate::sse::{Event, SseParser};
use crate::translate::top_level_type;

/// Watches one 200 stream of `provider` for its end.
#[derive(Debug)]
pub struct StreamWatch {
    provider: Provider,
    parser: SseParser,
    outcome: Option<Outcome>,
    /// A Gemini error frame (the only frame ever kept): the caller reads its reset time.
    error_frame: Option<Vec<u8>>,
    /// The tokens the stream stated so far.
    usage: TokenUsage,
}

impl StreamWatch {
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            parser: SseParser::default(),
            outcome: None,
            error_frame: None,
            usage: TokenUsage::default(),
        }
    }

    /// Reads one chunk of the stream; nothing after the final event is looked at.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        let provider = self.provider;
        let mut found = None;
        let mut frame = None;
        let usage = &mut self.usage;
        let result = self.parser.feed(chunk, &mut |e: Event<'_>| {
            if found.is_none() {
                found = event_outcome(provider, e, &mut frame, usage);
            }
        });
        self.error_frame = frame;
        self.outcome = found.or_else(|| result.err().map(|_| Outcome::Cut));
    }

    /// The outcome so far ([`Outcome::Pending`] until a final event).
    pub fn outcome(&self) -> Outcome {
        self.outcome.clone().unwrap_or(Outcome::Pending)
    }

    /// The end of the stream: one without its final event was cut.
    pub fn finish(&mut self) -> Outcome {
        if self.outcome.is_none() {
            let provider = self.provider;
            let mut found = None;
            let mut frame = None;
            let usage = &mut self.usage;
            let _ = self.parser.finish(&mut |e: Event<'_>| {
                if found.is_none() {
                    found = event_outcome(provider, e, &mut frame, usage);
                }
            });
            self.error_frame = frame;
            self.outcome = Some(found.unwrap_or(Outcome::Cut));
        }
        self.outcome()
    }

    /// The tokens the stream stated (zero when it stated none).
    pub fn usage(&self) -> TokenUsage {
        self.usage
    }

    /// The Gemini error frame that failed the stream, if one did.
    pub fn error_frame(&self) -> Option<&[u8]> {
        self.error_frame.as_deref()
    }
}

/// What one event means for the stream's end (`None`: not final).
fn event_outcome(
    provider: Provider,
    e: Event<'_>,
    error_frame: &mut Option<Vec<u8>>,
    usage: &mut TokenUsage,
) -> Option<Outcome> {
    match provider {
        Provider::Codex => top_level_type(e.data).and_then(|kind| {
            let outcome = final_outcome(kind, e.data)?;
            if matches!(outcome, Outcome::Completed | Outcome::Incomplete { .. }) {
                if let Some(stated) = tokens::codex_final_usage(e.data) {
                    *usage = stated;
                }
            }
            Some(outcome)
        }),
        Provider::Claude => {
            let name = e.name.or_else(|| top_level_type(e.data))?;
            tokens::claude_event_usage(name, e.data, usage);
            claude_outcome(name, e.data)
        }
        Provider::Gemini => {
            let outcome = gemini_outcome(e.data, usage)?;
            if matches!(outcome, Outcome::Failed { .. }) {
                *error_frame = Some(e.data.to_vec());
            }
            Some(outcome)
        }
    }
}

fn claude_outcome(name: &str, data: &[u8]) -> Option<Outcome> {
    match name {
        "message_stop" => Some(Outcome::Completed),
        "error" => {
            let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
            let err = v.get("error").unwrap_or(&Value::Null);
            Some(Outcome::Failed {
                code: Some(
                    err.get("type")
                        .and_then(Value::as_str)
                        .map_or_else(|| "api_error".to_string(), echo),
                ),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        }
        _ => None,
    }
}

fn gemini_outcome(data: &[u8], usage: &mut TokenUsage) -> Option<Outcome> {
    let finishing = memchr::memmem::find(data, b"\"finishReason\"").is_some();
    let erring = memchr::memmem::find(data, b"\"error\"").is_some();
    if !finishing && !erring {
        return None;
    }
    let v: Value = serde_json::from_slice(data).ok()?;
    if let Some(err) = v.get("error").filter(|e| e.is_object()) {
        return Some(Outcome::Failed {
            code: Some(
                err.get("status")
                    .and_then(Value::as_str)
                    .map_or_else(|| "INTERNAL".to_string(), echo),
            ),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    if let Some(stated) = tokens::gemini_usage(&v) {
        *usage = stated;
    }
    // Code Assist wraps the Gemini answer in `response`; the plain API does not.
    let candidates = v
        .pointer("/response/candidates")
        .or_else(|| v.get("candidates"))
        .and_then(Value::as_array)?;
    candidates
        .iter()
        .any(|c| {
            c.get("finishReason")
                .is_some_and(|r| r.as_str().is_some_and(|s| !s.is_empty()))
        })
        .then_some(Outcome::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const CLAUDE_OK: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"content\":[]}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"event: message_stop\\n\\\"error\\\"\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n",
    );
    const CLAUDE_STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    /// Feeds `text` one byte at a time (every frame split across chunks), then ends it.
    fn bytewise(provider: Provider, text: &str) -> Outcome {
        let mut w = StreamWatch::new(provider);
        for b in text.as_bytes() {
            w.feed(std::slice::from_ref(b));
        }
        w.finish()
    }

    fn whole(provider: Provider, text: &str) -> StreamWatch {
        let mut w = StreamWatch::new(provider);
        w.feed(text.as_bytes());
        w
    }

    fn failed(code: &str) -> Outcome {
        Outcome::Failed {
            code: Some(code.into()),
            message: Some("m".into()),
        }
    }

    #[test]
    fn claude_message_stop_completes_and_its_absence_is_a_cut() {
        let full = format!("{CLAUDE_OK}{CLAUDE_STOP}");
        assert_eq!(bytewise(Provider::Claude, &full), Outcome::Completed);
        let w = whole(Provider::Claude, CLAUDE_OK);
        assert_eq!(
            w.outcome(),
            Outcome::Pending,
            "text that reads like an end is no end"
        );
        assert_eq!(bytewise(Provider::Claude, CLAUDE_OK), Outcome::Cut);
        // The last frame's blank line may be missing; an unfinished line is not an event.
        let no_blank =
            format!("{CLAUDE_OK}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n");
        assert_eq!(bytewise(Provider::Claude, &no_blank), Outcome::Completed);
        let unfinished = format!("{CLAUDE_OK}event: message_stop\ndata: {{\"type\":\"mess");
        assert_eq!(bytewise(Provider::Claude, &unfinished), Outcome::Cut);
        // Without `event:` lines the data's type names the event.
        assert_eq!(
            bytewise(
                Provider::Claude,
                "data: {\"type\":\"message_stop\"}\r\n\r\n"
            ),
            Outcome::Completed
        );
    }

    #[test]
    fn claude_deliberate_stops_are_completed() {
        for reason in ["max_tokens", "refusal", "stop_sequence", "tool_use"] {
            let text = CLAUDE_OK.replace("end_turn", reason) + CLAUDE_STOP;
            assert_eq!(
                bytewise(Provider::Claude, &text),
                Outcome::Completed,
                "{reason}"
            );
        }
    }

    #[test]
    fn claude_error_events_fail_with_their_type() {
        for kind in [
            "overloaded_error",
            "api_error",
            "rate_limit_error",
            "invalid_request_error",
        ] {
            let text = format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{}}}}\n\n\
                 event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"m\"}}}}\n\n"
            );
            assert_eq!(bytewise(Provider::Claude, &text), failed(kind), "{kind}");
            // Nothing after the error changes it.
            let mut w = whole(Provider::Claude, &text);
            w.feed(CLAUDE_STOP.as_bytes());
            assert_eq!(w.finish(), failed(kind));
            assert_eq!(w.error_frame(), None, "Claude errors carry no reset");
        }
        let odd = "event: error\ndata: not json\n\n";
        assert_eq!(
            bytewise(Provider::Claude, odd),
            Outcome::Failed {
                code: Some("api_error".into()),
                message: None
            }
        );
    }

    fn gemini_chunk(text: &str, finish: Option<&str>) -> String {
        let finish = finish.map_or(String::new(), |r| format!(",\"finishReason\":\"{r}\""));
        format!(
            "data: {{\"response\":{{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{text}\"}}]}}{finish}}}],\"modelVersion\":\"gemini-2.5-pro\"}},\"traceId\":\"t\"}}\r\n\r\n"
        )
    }

    #[test]
    fn gemini_a_finish_reason_completes_and_its_absence_is_a_cut() {
        let head = gemini_chunk("say \\\"finishReason\\\" and \\\"error\\\"", None)
            + &gemini_chunk("more", None);
        let w = whole(Provider::Gemini, &head);
        assert_eq!(
            w.outcome(),
            Outcome::Pending,
            "quoted words in text are text"
        );
        assert_eq!(bytewise(Provider::Gemini, &head), Outcome::Cut);
        for reason in ["STOP", "MAX_TOKENS", "SAFETY", "OTHER"] {
            let text = head.clone() + &gemini_chunk("", Some(reason));
            assert_eq!(
                bytewise(Provider::Gemini, &text),
                Outcome::Completed,
                "{reason}"
            );
        }
        // An empty or null reason is no reason; the plain API's unwrapped shape counts too.
        let null = "data: {\"response\":{\"candidates\":[{\"finishReason\":null}]}}\n\n";
        assert_eq!(bytewise(Provider::Gemini, null), Outcome::Cut);
        let empty = gemini_chunk("x", Some(""));
        assert_eq!(bytewise(Provider::Gemini, &empty), Outcome::Cut);
        let plain = "data: {\"candidates\":[{\"index\":0},{\"finishReason\":\"STOP\"}]}\n\n";
        assert_eq!(bytewise(Provider::Gemini, plain), Outcome::Completed);
    }

    #[test]
    fn gemini_error_frames_fail_with_their_status_and_are_kept() {
        let error = "data: {\"error\":{\"code\":429,\"message\":\"m\",\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"30s\"}]}}\n\n";
        let text = gemini_chunk("hi", None) + error;
        let mut w = StreamWatch::new(Provider::Gemini);
        let (a, b) = text.split_at(text.len() - 40);
        w.feed(a.as_bytes());
        assert_eq!(w.outcome(), Outcome::Pending);
        w.feed(b.as_bytes());
        assert_eq!(w.finish(), failed("RESOURCE_EXHAUSTED"));
        let frame = w.error_frame().expect("the error frame is kept");
        let usage = crate::gemini::parse_rpc_error(frame, 1_000_000).expect("a google.rpc error");
        assert_eq!(usage.resets_at_unix, Some(1_030));
        let unavailable =
            "data: {\"error\":{\"code\":503,\"message\":\"m\",\"status\":\"UNAVAILABLE\"}}\n\n";
        assert_eq!(
            bytewise(Provider::Gemini, unavailable),
            failed("UNAVAILABLE")
        );
        // A function call's argument named "error" is not an error frame.
        let call = "data: {\"response\":{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"args\":{\"error\":\"x\"}}}]}}]}}\n\n";
        assert_eq!(whole(Provider::Gemini, call).outcome(), Outcome::Pending);
    }

    #[test]
    fn codex_streams_end_as_before() {
        let done = "data: {\"type\":\"response.created\"}\n\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n";
        assert_eq!(bytewise(Provider::Codex, done), Outcome::Completed);
        assert_eq!(
            bytewise(Provider::Codex, "data: {\"type\":\"response.created\"}\n\n"),
            Outcome::Cut
        );
        // A Claude end means nothing to a Codex stream, and the other way round.
        assert_eq!(bytewise(Provider::Codex, CLAUDE_STOP), Outcome::Cut);
        assert_eq!(bytewise(Provider::Claude, done), Outcome::Cut);
    }

    #[test]
    fn the_scan_reads_each_providers_token_usage() {
        // Claude: input from message_start, output from the last message_delta.
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
        let text = format!("{start}{CLAUDE_OK}{CLAUDE_STOP}");
        let mut w = StreamWatch::new(Provider::Claude);
        for b in text.as_bytes() {
            w.feed(std::slice::from_ref(b));
        }
        assert_eq!(w.finish(), Outcome::Completed);
        assert_eq!(
            w.usage(),
            TokenUsage {
                input: 12,
                output: 5
            }
        );
        // Codex: the final event's response.usage.
        let done = "data: {\"type\":\"response.created\"}\n\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[],\"usage\":{\"input_tokens\":30,\"output_tokens\":9}}}\n\n";
        let w = whole(Provider::Codex, done);
        assert_eq!(w.outcome(), Outcome::Completed);
        assert_eq!(
            w.usage(),
            TokenUsage {
                input: 30,
                output: 9
            }
        );
        let incomplete = "data: {\"type\":\"response.incomplete\",\"response\":{\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}}\n\n";
        assert_eq!(whole(Provider::Codex, incomplete).usage().total(), 6);
        // A stream without usage states none.
        let bare = "data: {\"type\":\"response.completed\",\"response\":{}}\n\n";
        assert!(whole(Provider::Codex, bare).usage().is_empty());
        // Gemini: the final frame's usageMetadata (Code Assist's envelope).
        let last = "data: {\"response\":{\"candidates\":[{\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":6}}}\n\n";
        let text = gemini_chunk("hi", None) + last;
        let w = whole(Provider::Gemini, &text);
        assert_eq!(w.outcome(), Outcome::Completed);
        assert_eq!(
            w.usage(),
            TokenUsage {
                input: 8,
                output: 6
            }
        );
    }

    #[test]
    fn an_oversized_frame_reads_as_a_cut() {
        let mut w = StreamWatch::new(Provider::Gemini);
        w.parser = SseParser::new(64);
        w.feed(gemini_chunk(&"x".repeat(100), None).as_bytes());
        assert_eq!(w.outcome(), Outcome::Cut);
    }
}
