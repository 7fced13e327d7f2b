//! `POST /v1/chat/completions` and `POST /v1/responses` request bodies: each translates to a
//! JSON body that streams and stores nothing, or is refused with a 4xx in OpenAI's shape.
#![no_main]

use codexmesh_filter_core::translate::chat::chat_request;
use codexmesh_filter_core::translate::responses::responses_request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
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
});
