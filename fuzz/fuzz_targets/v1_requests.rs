//! Target `v1_requests`: the check lives in `fuzz/checks/` so the test suite runs the same one.
#![no_main]

#[path = "../checks/filter_core.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::v1_requests(data));
