//! Target `declarative_yaml`: the check lives in `fuzz/checks/` so the test suite runs the same one.
#![no_main]

#[path = "../checks/model.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::declarative_yaml(data));
