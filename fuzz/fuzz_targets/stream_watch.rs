//! How a 200 stream ended, per provider: the first byte picks the provider and a chunk size;
//! the outcome, usage and error frame do not depend on the chunking.
#![no_main]

use codexmesh_filter_core::provider::Provider;
use codexmesh_filter_core::stream_end::StreamWatch;
use codexmesh_filter_core::translate::responses::OutcomeScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
