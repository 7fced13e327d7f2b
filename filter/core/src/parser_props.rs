//! Property tests of every filter-core parser that reads outside input (issue 16: fuzzing in
//! the suite): the snapshot decode, the SSE parser and the stream watchers built on it, the `/v1`
//! translations (requests, streams, collectors, model lists, upstream errors), and the small
//! readers of upstream answers (Gemini rpc errors, Claude rate-limit headers, `Retry-After`,
//! token usage). The coverage-guided fuzzers in `fuzz/` drive the same entry points.
//!
//! Rules kept here:
//! - Every case is seeded (`tests/seeded`): arbitrary bytes and mutations of the valid documents
//!   the unit tests use; a few thousand cases per parser, each parser well under a second or two
//!   in a debug build and under Node (these tests also run as wasm: no clock, no threads, no
//!   filesystem; fixtures come in with `include_bytes!`).
//! - Asserted beyond "no panic": a stream read in any chunking gives what it gives read whole; a
//!   decoded snapshot encodes and decodes to itself; a translated request is JSON that streams
//!   and stores nothing; every refusal is a 4xx in OpenAI's shape; bounded buffers stay bounded.
//! - The fuzz targets' own checks (`fuzz/checks/filter_core.rs`) run here too, on seeded inputs
//!   and (natively: wasm has no filesystem) on every input kept in `fuzz/regressions/<target>/`.

use prost::Message;
use serde_json::Value;

use crate::pb;
use crate::provider::Provider;
use crate::snapshot::SnapshotIndex;
use crate::stream_end::StreamWatch;
use crate::translate::chat::{chat_request, ChatCollector, ChatStream};
use crate::translate::models::{model_entry, models_list};
use crate::translate::responses::{responses_request, Collector, OutcomeScanner};
use crate::translate::sse::{SseParser, DEFAULT_MAX_EVENT};
use crate::translate::{error::from_upstream_answer, ApiError};

#[path = "../../../fuzz/checks/filter_core.rs"]
mod checks;
#[path = "../../../tests/seeded/mod.rs"]
mod seeded;
use seeded::{chunks, input, split_points, Rng};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SSE_SEEDS: &[&[u8]] = &[
    include_bytes!("translate/fixtures/text.sse"),
    include_bytes!("translate/fixtures/tools.sse"),
    include_bytes!("translate/fixtures/failed.sse"),
    include_bytes!("translate/fixtures/incomplete.sse"),
    include_bytes!("translate/fixtures/minimal.sse"),
    include_bytes!("translate/fixtures/cut.sse"),
    b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n",
    b"data: {\"response\":{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":4}}}\r\n\r\n",
    b"data: {\"error\":{\"code\":429,\"status\":\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"12.5s\"}]}}\n\n",
];

const MIXED_SNAPSHOT: &[u8] = include_bytes!("../../../fuzz/seeds/snapshot_decode/mixed_pools.bin");

const REQUEST_SEEDS: &[&[u8]] = &[
    include_bytes!("translate/fixtures/chat_dropped_params.json"),
    include_bytes!("translate/fixtures/chat_json_schema.json"),
    include_bytes!("translate/fixtures/chat_multipart_image.json"),
    include_bytes!("translate/fixtures/chat_system_user.json"),
    include_bytes!("translate/fixtures/chat_tool_history.json"),
    include_bytes!("translate/fixtures/chat_tools_choice.json"),
    include_bytes!("translate/fixtures/responses_items.json"),
    include_bytes!("translate/fixtures/responses_normalize.json"),
];

const ANSWER_SEEDS: &[&[u8]] = &[
    include_bytes!("translate/fixtures/codex_models.json"),
    br#"{"detail":"Instructions are required"}"#,
    br#"{"detail":[{"loc":["body","model"],"msg":"bad","type":"value_error"}]}"#,
    br#"{"error":{"message":"x","type":"invalid_request_error"}}"#,
    br#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"QUOTA_EXHAUSTED","metadata":{"quotaResetTimeStamp":"2026-01-01T00:00:00Z"}},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"3600s"}]}}"#,
    br#"{"type":"message","usage":{"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":5}}"#,
    br#"{"response":{"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":2}}}"#,
    br#"{"metadata":{"user_id":"{\"device_id\":\"d\",\"session_id\":\"s-1\"}"},"messages":[]}"#,
];

/// Every event `parser` gives for `parts`, then its end; `None` once it failed.
/// Events as (name, data), and whether the parser failed.
type ReadEvents = (Vec<(Option<String>, Vec<u8>)>, bool);

fn sse_events(max_event: usize, parts: &[&[u8]]) -> ReadEvents {
    let mut parser = SseParser::new(max_event);
    let mut events = Vec::new();
    let mut failed = false;
    for part in parts {
        let result = parser.feed(part, &mut |e| {
            events.push((e.name.map(str::to_owned), e.data.to_vec()))
        });
        failed |= result.is_err();
        assert!(parser.pending_len() <= max_event.saturating_add(1) || failed);
    }
    let end = parser.finish(&mut |e| events.push((e.name.map(str::to_owned), e.data.to_vec())));
    (events, failed || end.is_err())
}

#[test]
fn sse_parser_reads_any_chunking_like_the_whole() {
    let mut rng = Rng::new(1);
    for case in 0..seeded::cases(3000) {
        let bytes = input(&mut rng, SSE_SEEDS, 2048);
        let cuts = split_points(&mut rng, bytes.len());
        let max_event = if rng.one_in(3) {
            1 + rng.below(128)
        } else {
            DEFAULT_MAX_EVENT
        };
        let whole = sse_events(max_event, &[&bytes]);
        let split = sse_events(max_event, &chunks(&bytes, &cuts));
        if max_event == DEFAULT_MAX_EVENT {
            assert_eq!(whole, split, "case {case}: {bytes:?} cut at {cuts:?}");
        } else if !whole.1 && !split.1 {
            // A small bound may trip in one chunking and not the other (a line held whole
            // versus split); when neither trips, the events agree.
            assert_eq!(whole.0, split.0, "case {case}: {bytes:?} cut at {cuts:?}");
        }
    }
}

#[test]
fn stream_watch_outcome_does_not_depend_on_chunking() {
    let mut rng = Rng::new(2);
    for case in 0..seeded::cases(3000) {
        let bytes = input(&mut rng, SSE_SEEDS, 2048);
        let cuts = split_points(&mut rng, bytes.len());
        let provider = *rng.pick(&Provider::ALL);
        let mut whole = StreamWatch::new(provider);
        whole.feed(&bytes);
        let whole_outcome = whole.finish();
        let mut split = StreamWatch::new(provider);
        for part in chunks(&bytes, &cuts) {
            split.feed(part);
            let _ = split.outcome();
        }
        assert!(whole_outcome.is_final());
        assert_eq!(
            (whole_outcome, whole.usage(), whole.error_frame()),
            (split.finish(), split.usage(), split.error_frame()),
            "case {case} {provider:?}: {bytes:?} cut at {cuts:?}"
        );
    }
}

#[test]
fn codex_stream_readers_do_not_depend_on_chunking() {
    let mut rng = Rng::new(3);
    for case in 0..seeded::cases(2000) {
        let bytes = input(&mut rng, SSE_SEEDS, 2048);
        let cuts = split_points(&mut rng, bytes.len());
        let parts = chunks(&bytes, &cuts);
        let ctx = || format!("case {case}: {bytes:?} cut at {cuts:?}");

        let mut scanner = OutcomeScanner::new();
        parts.iter().for_each(|p| scanner.feed(p));
        let mut scanner_whole = OutcomeScanner::new();
        scanner_whole.feed(&bytes);
        assert_eq!(scanner.finish(), scanner_whole.finish(), "{}", ctx());

        let mut collector = Collector::new();
        parts.iter().for_each(|p| collector.feed(p));
        let mut collector_whole = Collector::new();
        collector_whole.feed(&bytes);
        let collected = collector.finish();
        assert_eq!(collected, collector_whole.finish(), "{}", ctx());
        check_answer(&collected, &ctx);

        let include_usage = rng.one_in(2);
        let mut stream = ChatStream::new("gpt-5", include_usage);
        let mut streamed: Vec<u8> = parts.iter().flat_map(|p| stream.feed(p)).collect();
        streamed.extend(stream.finish());
        assert!(stream.is_done(), "{}", ctx());
        let mut stream_whole = ChatStream::new("gpt-5", include_usage);
        let mut whole = stream_whole.feed(&bytes);
        whole.extend(stream_whole.finish());
        assert_eq!(
            String::from_utf8_lossy(&streamed),
            String::from_utf8_lossy(&whole),
            "{}",
            ctx()
        );
        // What the client gets is itself well-formed SSE whose every data is JSON or [DONE].
        let (events, failed) = sse_events(DEFAULT_MAX_EVENT, &[&streamed]);
        assert!(!failed, "{}", ctx());
        for (_, data) in events {
            assert!(
                data == b"[DONE]" || serde_json::from_slice::<Value>(&data).is_ok(),
                "{}: {:?}",
                ctx(),
                String::from_utf8_lossy(&data)
            );
        }

        let mut chat = ChatCollector::new("gpt-5");
        parts.iter().for_each(|p| chat.feed(p));
        check_answer(&chat.finish(), &ctx);
    }
}

/// A collected answer is a JSON object, or an error in OpenAI's shape.
fn check_answer(answer: &Result<Vec<u8>, ApiError>, ctx: &dyn Fn() -> String) {
    match answer {
        Ok(body) => assert!(
            serde_json::from_slice::<Value>(body).is_ok_and(|v| v.is_object()),
            "{}",
            ctx()
        ),
        Err(e) => check_error(e, ctx),
    }
}

fn check_error(e: &ApiError, ctx: &dyn Fn() -> String) {
    assert!((400..600).contains(&e.status()), "{}: {e:?}", ctx());
    let body: Value = serde_json::from_str(&e.body()).unwrap_or_default();
    assert!(body["error"]["message"].is_string(), "{}: {e:?}", ctx());
}

#[test]
fn v1_requests_translate_or_refuse_with_a_4xx() {
    let mut rng = Rng::new(4);
    for case in 0..seeded::cases(3000) {
        let bytes = input(&mut rng, REQUEST_SEEDS, 2048);
        let ctx = || format!("case {case}: {:?}", String::from_utf8_lossy(&bytes));
        for result in [chat_request(&bytes), responses_request(&bytes)] {
            match result {
                Ok(req) => {
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                    assert_eq!(body["stream"], Value::Bool(true), "{}", ctx());
                    assert_eq!(body["store"], Value::Bool(false), "{}", ctx());
                    assert!(body["instructions"].is_string(), "{}", ctx());
                    let _ = req.ignored_header();
                }
                Err(e) => {
                    assert!((400..500).contains(&e.status()), "{}: {e:?}", ctx());
                    check_error(&e, &ctx);
                }
            }
        }
    }
}

#[test]
fn upstream_answers_are_read_without_panics() {
    let mut rng = Rng::new(5);
    for case in 0..seeded::cases(3000) {
        let bytes = input(&mut rng, ANSWER_SEEDS, 1024);
        let ctx = || format!("case {case}: {:?}", String::from_utf8_lossy(&bytes));
        match models_list(&bytes) {
            Ok(body) => assert!(serde_json::from_slice::<Value>(&body).is_ok(), "{}", ctx()),
            Err(e) => check_error(&e, &ctx),
        }
        if let Err(e) = model_entry(&bytes, "gpt-5") {
            check_error(&e, &ctx);
        }
        let status = *rng.pick(&[400u16, 401, 403, 404, 413, 422, 429, 500, 502, 503, 599]);
        if let Some(e) = from_upstream_answer(status, &bytes) {
            check_error(&e, &ctx);
        }
        let now = *rng.pick(&[0i64, 1_767_225_600_000, i64::MAX, i64::MIN, -1]);
        let _ = crate::gemini::parse_rpc_error(&bytes, now);
        let _ = crate::gemini::with_project(&bytes, "p");
        let _ = crate::claude::body_session_id(&bytes);
        for provider in Provider::ALL {
            let _ = crate::tokens::json_answer_usage(provider, &bytes);
        }
        let _ = crate::config::parse(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let header = |name: &str| name.ends_with('n').then_some(text.as_ref());
        let _ = crate::claude::quota_from_headers(header, now);
        let _ = crate::claude::quota_from_headers(|_| Some(text.as_ref()), now);
        let _ = crate::claude::rejected_until_ms(|_| Some(text.as_ref()));
        let _ = crate::verdict::parse_retry_after(Some(&text), now);
    }
}

#[test]
fn snapshot_decode_accepts_or_refuses_any_bytes() {
    let valid = crate::snapshot::tests::sample().encode_to_vec();
    let seeds: &[&[u8]] = &[&valid, MIXED_SNAPSHOT];
    // The fuzzers' seed (written by hand: two pools, one with accounts of every provider).
    let Ok(mixed) = SnapshotIndex::decode(MIXED_SNAPSHOT) else {
        panic!("the snapshot seed decodes");
    };
    assert_eq!((mixed.version(), mixed.pools().len()), (7, 2));
    assert!(Provider::ALL.iter().all(|p| mixed.lane(0, *p).is_some()));
    let mut rng = Rng::new(6);
    for case in 0..seeded::cases(3000) {
        let bytes = input(&mut rng, seeds, 1024);
        let Ok(decoded) = pb::Snapshot::decode(bytes.as_slice()) else {
            assert!(SnapshotIndex::decode(&bytes).is_err(), "case {case}");
            continue;
        };
        // prost keeps known fields only: what decoded encodes and decodes to itself.
        let again = pb::Snapshot::decode(decoded.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&decoded), "case {case}: {bytes:?}");
        let Ok(index) = SnapshotIndex::decode(&bytes) else {
            panic!("case {case}: decodes as a message but not as an index");
        };
        checks::walk_index(&index);
    }
}

/// The fuzz targets' checks, each with its seeds (a control byte first where the target reads one).
/// A fuzz target: its name, its check, its seeds.
type FuzzCheck = (&'static str, fn(&[u8]), Vec<Vec<u8>>);

fn fuzz_checks() -> Vec<FuzzCheck> {
    let with_control = |seeds: &[&[u8]]| -> Vec<Vec<u8>> {
        seeds.iter().map(|s| [&[7u8][..], s].concat()).collect()
    };
    let plain = |seeds: &[&[u8]]| seeds.iter().map(|s| s.to_vec()).collect::<Vec<_>>();
    vec![
        (
            "snapshot_decode",
            checks::snapshot_decode as fn(&[u8]),
            vec![
                crate::snapshot::tests::sample().encode_to_vec(),
                MIXED_SNAPSHOT.to_vec(),
            ],
        ),
        ("sse_parser", checks::sse_parser, with_control(SSE_SEEDS)),
        (
            "stream_watch",
            checks::stream_watch,
            with_control(SSE_SEEDS),
        ),
        ("v1_requests", checks::v1_requests, plain(REQUEST_SEEDS)),
        ("v1_streams", checks::v1_streams, with_control(SSE_SEEDS)),
        (
            "upstream_answers",
            checks::upstream_answers,
            plain(ANSWER_SEEDS),
        ),
    ]
}

#[test]
fn fuzz_target_checks_hold_on_seeded_inputs() {
    let mut rng = Rng::new(7);
    for (_, check, seeds) in fuzz_checks() {
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        for seed in &seeds {
            check(seed);
        }
        for _ in 0..seeded::cases(1000) {
            let mut data = input(&mut rng, &seeds, 2048);
            if rng.one_in(2) && !data.is_empty() {
                data[0] = rng.next_u64() as u8; // another chunking, provider or bound
            }
            check(&data);
        }
    }
}

/// Every input a coverage-guided run kept (`fuzz/regressions/<target>/`), replayed.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn fuzz_regressions_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut replayed = 0;
    for (target, check, _) in fuzz_checks() {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Ok(data) = std::fs::read(&file) else {
                continue;
            };
            println!("replaying {}", file.display());
            check(&data);
            replayed += 1;
        }
    }
    println!("{replayed} regression inputs replayed");
}
