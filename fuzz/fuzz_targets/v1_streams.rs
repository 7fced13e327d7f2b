//! The `/v1` answer translators fed a Codex stream: the chat stream gives the same bytes in any
//! chunking and is well-formed SSE of JSON chunks; the collectors answer JSON or an error.
#![no_main]

use codexmesh_filter_core::translate::chat::{ChatCollector, ChatStream};
use codexmesh_filter_core::translate::responses::Collector;
use codexmesh_filter_core::translate::sse::SseParser;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
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
});
