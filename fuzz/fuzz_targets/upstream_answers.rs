//! Upstream answers the filter reads: the models list, FastAPI and google.rpc error bodies,
//! JSON answers' token usage, Claude's body session id and rate-limit headers, `Retry-After`.
#![no_main]

use codexmesh_filter_core::provider::Provider;
use codexmesh_filter_core::translate::error::from_upstream_answer;
use codexmesh_filter_core::translate::models::{model_entry, models_list};
use codexmesh_filter_core::{claude, config, gemini, tokens, verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
