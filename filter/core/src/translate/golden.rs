//! Golden tests of the `/v1` translation, on the fixtures in `fixtures/`.
//!
//! Rules these tests keep:
//! - Every streamed translation gives byte-identical output whether the upstream bytes arrive
//!   whole, split at any one position, byte by byte, or with `\r\n` line endings; these checks
//!   and the key behaviours are plain asserts that run natively and as wasm.
//! - The golden files (insta, `snapshots/`) are native only: wasm has no filesystem. Review a
//!   changed golden with `cargo insta review` (or `INSTA_UPDATE=always` then `git diff`).

use serde_json::{json, Value};

use super::chat::{chat_request, ChatCollector, ChatStream};
use super::models::{model_entry, models_list};
use super::responses::{responses_request, Collector, Outcome, OutcomeScanner};
use super::sse::SseParser;
use super::ApiError;
#[cfg(not(target_arch = "wasm32"))]
use super::UpstreamRequest;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const TEXT: &[u8] = include_bytes!("fixtures/text.sse");
const TOOLS: &[u8] = include_bytes!("fixtures/tools.sse");
const MINIMAL: &[u8] = include_bytes!("fixtures/minimal.sse");
const FAILED: &[u8] = include_bytes!("fixtures/failed.sse");
const INCOMPLETE: &[u8] = include_bytes!("fixtures/incomplete.sse");
const CUT: &[u8] = include_bytes!("fixtures/cut.sse");
const MODELS: &[u8] = include_bytes!("fixtures/codex_models.json");

const STREAMS: &[(&str, &[u8])] = &[
    ("text", TEXT),
    ("tools", TOOLS),
    ("minimal", MINIMAL),
    ("failed", FAILED),
    ("incomplete", INCOMPLETE),
    ("cut", CUT),
];

const CHAT_REQUESTS: &[(&str, &[u8])] = &[
    (
        "system_user",
        include_bytes!("fixtures/chat_system_user.json"),
    ),
    (
        "multipart_image",
        include_bytes!("fixtures/chat_multipart_image.json"),
    ),
    (
        "tools_choice",
        include_bytes!("fixtures/chat_tools_choice.json"),
    ),
    (
        "tool_history",
        include_bytes!("fixtures/chat_tool_history.json"),
    ),
    (
        "json_schema",
        include_bytes!("fixtures/chat_json_schema.json"),
    ),
    (
        "dropped_params",
        include_bytes!("fixtures/chat_dropped_params.json"),
    ),
];

const RESPONSES_REQUESTS: &[(&str, &[u8])] = &[
    (
        "normalize",
        include_bytes!("fixtures/responses_normalize.json"),
    ),
    ("items", include_bytes!("fixtures/responses_items.json")),
];

/// Feeds `input` cut at `splits` (ascending positions) through `feed`.
fn feed_split(input: &[u8], splits: &[usize], mut feed: impl FnMut(&[u8])) {
    let mut at = 0;
    for &s in splits {
        feed(&input[at..s]);
        at = s;
    }
    feed(&input[at..]);
}

fn chat_stream(input: &[u8], include_usage: bool, splits: &[usize]) -> Vec<u8> {
    let mut s = ChatStream::new("requested-model", include_usage);
    let mut out = Vec::new();
    feed_split(input, splits, |c| out.extend(s.feed(c)));
    out.extend(s.finish());
    out
}

fn collect(input: &[u8], splits: &[usize]) -> Result<Vec<u8>, ApiError> {
    let mut c = Collector::new();
    feed_split(input, splits, |chunk| c.feed(chunk));
    c.finish()
}

fn chat_collect(input: &[u8], splits: &[usize]) -> Result<Vec<u8>, ApiError> {
    let mut c = ChatCollector::new("requested-model");
    feed_split(input, splits, |chunk| c.feed(chunk));
    c.finish()
}

fn outcome(input: &[u8], splits: &[usize]) -> Outcome {
    let mut s = OutcomeScanner::new();
    feed_split(input, splits, |chunk| s.feed(chunk));
    s.finish()
}

fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    for &b in input {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The `data` payloads of an SSE answer: JSON values, `[DONE]` as a string.
fn payloads(sse: &[u8]) -> Vec<Value> {
    let mut parser = SseParser::default();
    let mut got = Vec::new();
    parser
        .feed(sse, &mut |e| {
            got.push(
                serde_json::from_slice(e.data)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(e.data).into())),
            )
        })
        .unwrap();
    got
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

#[test]
fn every_split_and_line_ending_gives_the_same_output() {
    for (name, input) in STREAMS {
        let whole_chat = chat_stream(input, true, &[]);
        let whole_collect = collect(input, &[]);
        let whole_chat_collect = chat_collect(input, &[]);
        let whole_outcome = outcome(input, &[]);
        for at in 0..=input.len() {
            assert_eq!(
                chat_stream(input, true, &[at]),
                whole_chat,
                "{name} at {at}"
            );
            assert_eq!(collect(input, &[at]), whole_collect, "{name} at {at}");
            assert_eq!(
                chat_collect(input, &[at]),
                whole_chat_collect,
                "{name} at {at}"
            );
            assert_eq!(outcome(input, &[at]), whole_outcome, "{name} at {at}");
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            chat_stream(input, true, &bytes),
            whole_chat,
            "{name} bytewise"
        );
        assert_eq!(collect(input, &bytes), whole_collect, "{name} bytewise");
        let crlf = crlf(input);
        assert_eq!(chat_stream(&crlf, true, &[]), whole_chat, "{name} crlf");
        assert_eq!(collect(&crlf, &[]), whole_collect, "{name} crlf");
        assert_eq!(outcome(&crlf, &[]), whole_outcome, "{name} crlf");
        // Pseudo-random three-way splits with a fixed seed (xorshift).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = input.len() as u64 + 1;
            let (a, b) = ((x % len) as usize, ((x >> 32) % len) as usize);
            let splits = [a.min(b), a.max(b)];
            assert_eq!(
                chat_stream(input, true, &splits),
                whole_chat,
                "{name} {splits:?}"
            );
        }
    }
}

#[test]
fn outcomes_of_every_fixture() {
    assert_eq!(outcome(TEXT, &[]), Outcome::Completed);
    assert_eq!(outcome(TOOLS, &[]), Outcome::Completed);
    assert_eq!(outcome(MINIMAL, &[]), Outcome::Completed);
    assert_eq!(
        outcome(FAILED, &[]),
        Outcome::Failed {
            code: Some("server_error".into()),
            message: Some("The model produced invalid content.".into())
        }
    );
    assert_eq!(
        outcome(INCOMPLETE, &[]),
        Outcome::Incomplete {
            reason: Some("max_output_tokens".into())
        }
    );
    assert_eq!(outcome(CUT, &[]), Outcome::Cut);
}

#[test]
fn chat_stream_key_behaviours() {
    let text = payloads(&chat_stream(TEXT, false, &[]));
    assert_eq!(text[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text[0]["id"], "chatcmpl-text1");
    assert_eq!(text[0]["created"], 1767225600);
    assert_eq!(text[0]["model"], "gpt-5.1-codex");
    assert_eq!(text_of(&text), "Hello there, world — ça va?");
    let n = text.len();
    assert_eq!(text[n - 2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(text[n - 1], "[DONE]");
    assert!(text.iter().all(|c| c.get("usage").is_none()));

    let usage = payloads(&chat_stream(TEXT, true, &[]));
    let u = &usage[usage.len() - 2];
    assert_eq!(u["choices"], json!([]));
    assert_eq!(u["usage"]["prompt_tokens"], 21);
    assert_eq!(u["usage"]["completion_tokens"], 6);
    assert_eq!(u["usage"]["total_tokens"], 27);
    assert_eq!(u["usage"]["prompt_tokens_details"]["cached_tokens"], 16);

    let tools = payloads(&chat_stream(TOOLS, true, &[]));
    let calls: Vec<&Value> = tools
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
        .collect();
    assert_eq!(calls[0]["id"], "call_A1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args = |i: i64| -> String {
        calls
            .iter()
            .filter(|c| c["index"] == i)
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect()
    };
    assert_eq!(args(0), "{\"city\":\"Paris\"}");
    assert_eq!(args(1), "{\"city\":\"Lyon\"}");
    assert_eq!(text_of(&tools), "", "reasoning is not forwarded");
    let n = tools.len();
    assert_eq!(tools[n - 3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        tools[n - 2]["usage"]["completion_tokens_details"]["reasoning_tokens"],
        64
    );

    let minimal = payloads(&chat_stream(MINIMAL, false, &[]));
    assert_eq!(text_of(&minimal), "{\"answer\":42}");

    let incomplete = payloads(&chat_stream(INCOMPLETE, false, &[]));
    assert_eq!(
        incomplete[incomplete.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );

    for (input, code) in [(FAILED, "server_error"), (CUT, "stream_incomplete")] {
        let got = payloads(&chat_stream(input, true, &[]));
        let last = got.last().unwrap();
        assert_eq!(last["error"]["code"], code);
        assert!(last["error"]["message"].is_string());
        assert!(!got.iter().any(|c| c == "[DONE]"));
    }
}

#[test]
fn collectors_key_behaviours() {
    let r: Value = serde_json::from_slice(&collect(TOOLS, &[]).unwrap()).unwrap();
    let types: Vec<&str> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["reasoning", "function_call", "function_call"]);
    assert_eq!(r["usage"]["total_tokens"], 508);

    let c: Value = serde_json::from_slice(&chat_collect(TEXT, &[]).unwrap()).unwrap();
    assert_eq!(
        c["choices"][0]["message"]["content"],
        "Hello there, world — ça va?"
    );
    assert_eq!(c["usage"]["completion_tokens"], 6);
    let c: Value = serde_json::from_slice(&chat_collect(MINIMAL, &[]).unwrap()).unwrap();
    assert_eq!(c["choices"][0]["message"]["content"], "{\"answer\":42}");
    assert_eq!(c["id"], "chatcmpl-min3");

    let err = collect(FAILED, &[]).unwrap_err();
    assert_eq!(
        (err.status, err.code.as_deref()),
        (500, Some("server_error"))
    );
    let err = chat_collect(CUT, &[]).unwrap_err();
    assert_eq!(err.status, 502);
}

#[test]
fn every_request_fixture_translates() {
    for (name, body) in CHAT_REQUESTS {
        let r = chat_request(body).unwrap_or_else(|e| panic!("{name}: {}", e.body()));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (v["stream"].clone(), v["store"].clone()),
            (json!(true), json!(false))
        );
        assert!(v["instructions"].is_string());
        for key in [
            "temperature",
            "max_output_tokens",
            "top_p",
            "user",
            "metadata",
        ] {
            assert!(v.get(key).is_none(), "{name}: {key}");
        }
    }
    for (name, body) in RESPONSES_REQUESTS {
        let r = responses_request(body).unwrap_or_else(|e| panic!("{name}: {}", e.body()));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (v["stream"].clone(), v["store"].clone()),
            (json!(true), json!(false))
        );
    }
    let models: Value = serde_json::from_slice(&models_list(MODELS).unwrap()).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 4);
    assert!(model_entry(MODELS, "gpt-5.5").is_ok());
}

#[cfg(not(target_arch = "wasm32"))]
mod snapshots {
    use super::*;

    fn error_json(err: &ApiError) -> Value {
        json!({"status": err.status, "body": serde_json::from_str::<Value>(&err.body()).unwrap()})
    }

    fn result_json(r: Result<Vec<u8>, ApiError>) -> Value {
        match r {
            Ok(body) => serde_json::from_slice(&body).unwrap(),
            Err(err) => error_json(&err),
        }
    }

    fn request_json(r: Result<UpstreamRequest, ApiError>) -> Value {
        match r {
            Ok(r) => json!({
                "upstream_body": serde_json::from_slice::<Value>(&r.body).unwrap(),
                "client_stream": r.client_stream,
                "include_usage": r.include_usage,
                "model": r.model,
                "ignored_header": r.ignored_header(),
            }),
            Err(err) => error_json(&err),
        }
    }

    macro_rules! golden {
        ($name:expr, $value:expr) => {
            insta::with_settings!({prepend_module_to_snapshot => false, omit_expression => true}, {
                insta::assert_json_snapshot!($name, $value);
            })
        };
    }

    #[test]
    fn chat_requests() {
        for (name, body) in CHAT_REQUESTS {
            golden!(
                format!("chat_request_{name}"),
                request_json(chat_request(body))
            );
        }
        let refused = json!({"model": "m", "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]},
        ]});
        golden!(
            "chat_request_refused_part",
            request_json(chat_request(refused.to_string().as_bytes()))
        );
        let n2 = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]});
        golden!(
            "chat_request_refused_n",
            request_json(chat_request(n2.to_string().as_bytes()))
        );
        golden!(
            "chat_request_malformed",
            request_json(chat_request(b"{\"model\": \"m\", \"messages\": ["))
        );
    }

    #[test]
    fn responses_requests() {
        for (name, body) in RESPONSES_REQUESTS {
            golden!(
                format!("responses_request_{name}"),
                request_json(responses_request(body))
            );
        }
        let prev = json!({"model": "m", "input": "x", "previous_response_id": "resp_1"});
        golden!(
            "responses_request_refused_previous",
            request_json(responses_request(prev.to_string().as_bytes()))
        );
    }

    #[test]
    fn chat_streams() {
        golden!("chat_stream_text", payloads(&chat_stream(TEXT, false, &[])));
        golden!("chat_stream_usage", payloads(&chat_stream(TEXT, true, &[])));
        golden!(
            "chat_stream_tools",
            payloads(&chat_stream(TOOLS, true, &[]))
        );
        golden!(
            "chat_stream_minimal",
            payloads(&chat_stream(MINIMAL, false, &[]))
        );
        golden!(
            "chat_stream_failed",
            payloads(&chat_stream(FAILED, false, &[]))
        );
        golden!(
            "chat_stream_incomplete",
            payloads(&chat_stream(INCOMPLETE, true, &[]))
        );
        golden!("chat_stream_cut", payloads(&chat_stream(CUT, false, &[])));
    }

    #[test]
    fn collected() {
        golden!("chat_collect_text", result_json(chat_collect(TEXT, &[])));
        golden!("chat_collect_tools", result_json(chat_collect(TOOLS, &[])));
        golden!(
            "chat_collect_incomplete",
            result_json(chat_collect(INCOMPLETE, &[]))
        );
        golden!(
            "chat_collect_failed",
            result_json(chat_collect(FAILED, &[]))
        );
        golden!("responses_collect_text", result_json(collect(TEXT, &[])));
        golden!("responses_collect_tools", result_json(collect(TOOLS, &[])));
        golden!(
            "responses_collect_minimal",
            result_json(collect(MINIMAL, &[]))
        );
        golden!(
            "responses_collect_failed",
            result_json(collect(FAILED, &[]))
        );
        golden!("responses_collect_cut", result_json(collect(CUT, &[])));
    }

    #[test]
    fn models() {
        golden!("models_list", result_json(models_list(MODELS)));
        golden!("models_entry", result_json(model_entry(MODELS, "gpt-5.5")));
        golden!(
            "models_entry_missing",
            result_json(model_entry(MODELS, "gpt-4o"))
        );
    }
}
