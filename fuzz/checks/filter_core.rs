//! The checks of filter-core's parsers, one per fuzz target: `fuzz/fuzz_targets/<target>.rs`
//! runs it under libFuzzer, and filter-core's test suite (`parser_props`) runs it on seeded
//! inputs and on every input kept in `fuzz/regressions/<target>/`.
//!
//! Rules kept here: a check panics only when the code under test breaks a rule (a panic inside
//! it, an invariant assert below); inputs starting with a control byte use it to choose the
//! chunking (and provider or bound), so one input is one case everywhere it runs.
#![allow(dead_code)]

use codexmesh_filter_core::provider::Provider;
use codexmesh_filter_core::snapshot::SnapshotIndex;
use codexmesh_filter_core::stream_end::StreamWatch;
use codexmesh_filter_core::translate::chat::{chat_request, ChatCollector, ChatStream};
use codexmesh_filter_core::translate::error::from_upstream_answer;
use codexmesh_filter_core::translate::models::{model_entry, models_list};
use codexmesh_filter_core::translate::responses::{responses_request, Collector, OutcomeScanner};
use codexmesh_filter_core::translate::sse::{SseParser, DEFAULT_MAX_EVENT};
use codexmesh_filter_core::{claude, config, gemini, pb, tokens, verdict};
use prost::Message;
use serde_json::Value;

/// The filter's snapshot decode (bytes the control plane pushes, read from Envoy's shared data):
/// any bytes decode or are refused; what decodes re-encodes to itself, and every lookup a
/// request makes on it answers without panicking.
pub fn snapshot_decode(data: &[u8]) {
    let Ok(decoded) = pb::Snapshot::decode(data) else {
        assert!(SnapshotIndex::decode(data).is_err());
        return;
    };
    let again = pb::Snapshot::decode(decoded.encode_to_vec().as_slice());
    assert_eq!(again.as_ref(), Ok(&decoded));
    let Ok(index) = SnapshotIndex::decode(data) else {
        panic!("decodes as a message but not as an index");
    };
    walk_index(&index);
}

/// Everything a request reads from a snapshot, on whatever it holds (also run by filter-core's
/// property tests on the snapshots they build).
pub fn walk_index(index: &SnapshotIndex) {
    let _ = (
        index.version(),
        index.generated_at_ms(),
        index.trusted_proxies(),
    );
    for pool_ix in 0..=index.pools().len() {
        let _ = (index.pool(pool_ix), index.pool_index(pool_ix));
        for provider in Provider::ALL {
            if let Some(lane) = index.lane(pool_ix, provider) {
                assert!(index.lane_pool(lane).is_some());
                let _ = index.lane_index(lane);
            }
        }
    }
    for pool in index.pools() {
        let _ = index.pool_by_id(&pool.id);
        for account in &pool.accounts {
            assert!(index.account(&account.id).is_some());
        }
    }
    let _ = codexmesh_filter_core::auth::authenticate(index, Some("Bearer cmk_live"));
    let _ = index.key_by_hash(&[0; 32]);
}

type Events = Vec<(Option<String>, Vec<u8>)>;

fn read(max_event: usize, parts: &mut dyn Iterator<Item = &[u8]>) -> (Events, bool) {
    let mut parser = SseParser::new(max_event);
    let mut events = Vec::new();
    let mut failed = false;
    for part in parts {
        failed |= parser
            .feed(part, &mut |e| {
                events.push((e.name.map(str::to_owned), e.data.to_vec()))
            })
            .is_err();
        assert!(failed || parser.pending_len() <= max_event);
    }
    failed |= parser
        .finish(&mut |e| events.push((e.name.map(str::to_owned), e.data.to_vec())))
        .is_err();
    (events, failed)
}

/// The SSE parser every upstream stream goes through: the first byte picks a chunk size and a
/// bound; the rest read in those chunks gives the same events as read whole.
pub fn sse_parser(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(control & 0x1f);
    let small_bound = control & 0x80 != 0;
    let max_event = if small_bound { 64 } else { DEFAULT_MAX_EVENT };
    let whole = read(max_event, &mut std::iter::once(bytes));
    let split = read(max_event, &mut bytes.chunks(chunk));
    if !small_bound {
        assert_eq!(whole, split);
    } else if !whole.1 && !split.1 {
        assert_eq!(whole.0, split.0);
    }
}

/// How a 200 stream ended, per provider: the first byte picks the provider and a chunk size;
/// the outcome, usage and error frame do not depend on the chunking.
pub fn stream_watch(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let provider = Provider::ALL[usize::from(control % 3)];
    let chunk = 1 + usize::from(control >> 2);
    let mut whole = StreamWatch::new(provider);
    whole.feed(bytes);
    let whole_outcome = whole.finish();
    assert!(whole_outcome.is_final());
    let mut split = StreamWatch::new(provider);
    for part in bytes.chunks(chunk) {
        split.feed(part);
    }
    assert_eq!(
        (whole_outcome, whole.usage(), whole.error_frame()),
        (split.finish(), split.usage(), split.error_frame())
    );
    let mut scanner = OutcomeScanner::new();
    bytes.chunks(chunk).for_each(|p| scanner.feed(p));
    assert!(scanner.finish().is_final());
}

/// `POST /v1/chat/completions` and `POST /v1/responses` request bodies: each translates to a
/// JSON body that streams and stores nothing, or is refused with a 4xx in OpenAI's shape.
pub fn v1_requests(data: &[u8]) {
    for result in [chat_request(data), responses_request(data)] {
        match result {
            Ok(req) => {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                assert_eq!(body["stream"], Value::Bool(true));
                assert_eq!(body["store"], Value::Bool(false));
                assert!(body["instructions"].is_string());
            }
            Err(e) => {
                assert!((400..500).contains(&e.status()), "{e:?}");
                let body: Value = serde_json::from_str(&e.body()).unwrap_or_default();
                assert!(body["error"]["message"].is_string());
            }
        }
    }
}

/// The `/v1` answer translators fed a Codex stream: the chat stream gives the same bytes in any
/// chunking and is well-formed SSE of JSON chunks; the collectors answer JSON or an error.
pub fn v1_streams(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(control >> 1);
    let include_usage = control & 1 == 1;
    let mut whole = ChatStream::new("gpt-5", include_usage);
    let mut out_whole = whole.feed(bytes);
    out_whole.extend(whole.finish());
    let mut split = ChatStream::new("gpt-5", include_usage);
    let mut out_split: Vec<u8> = bytes.chunks(chunk).flat_map(|p| split.feed(p)).collect();
    out_split.extend(split.finish());
    assert!(split.is_done());
    assert_eq!(out_whole, out_split);
    let mut parser = SseParser::default();
    let mut bad = Vec::new();
    let read = parser.feed(&out_split, &mut |e| {
        if e.data != b"[DONE]" && serde_json::from_slice::<Value>(e.data).is_err() {
            bad.push(e.data.to_vec());
        }
    });
    assert!(read.is_ok() && bad.is_empty(), "{bad:?}");

    let mut collector = Collector::new();
    bytes.chunks(chunk).for_each(|p| collector.feed(p));
    if let Ok(body) = collector.finish() {
        assert!(serde_json::from_slice::<Value>(&body).is_ok());
    }
    let mut chat = ChatCollector::new("gpt-5");
    bytes.chunks(chunk).for_each(|p| chat.feed(p));
    match chat.finish() {
        Ok(body) => assert!(serde_json::from_slice::<Value>(&body).is_ok()),
        Err(e) => assert!((400..600).contains(&e.status())),
    }
}

/// Upstream answers the filter reads: the models list, FastAPI and google.rpc error bodies,
/// JSON answers' token usage, Claude's body session id and rate-limit headers, `Retry-After`.
pub fn upstream_answers(data: &[u8]) {
    if let Ok(body) = models_list(data) {
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    }
    let _ = model_entry(data, "gpt-5");
    for status in [400u16, 404, 429, 500] {
        if let Some(e) = from_upstream_answer(status, data) {
            assert!((400..600).contains(&e.status()));
        }
    }
    for now in [0i64, 1_767_225_600_000, i64::MAX, i64::MIN] {
        let _ = gemini::parse_rpc_error(data, now);
    }
    let _ = gemini::with_project(data, "p");
    let _ = claude::body_session_id(data);
    for provider in Provider::ALL {
        let _ = tokens::json_answer_usage(provider, data);
    }
    let _ = config::parse(data);
    let text = String::from_utf8_lossy(data);
    let _ = claude::quota_from_headers(|_| Some(text.as_ref()), 0);
    let _ = claude::rejected_until_ms(|_| Some(text.as_ref()));
    let _ = verdict::parse_retry_after(Some(&text), i64::MAX);
}
