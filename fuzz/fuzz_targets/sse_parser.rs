//! The SSE parser every upstream stream goes through: the first byte picks a chunk size and a
//! bound; the rest read in those chunks gives the same events as read whole.
#![no_main]

use codexmesh_filter_core::translate::sse::{SseParser, DEFAULT_MAX_EVENT};
use libfuzzer_sys::fuzz_target;

type Events = Vec<(Option<String>, Vec<u8>)>;

fn read(max_event: usize, parts: &mut dyn Iterator<Item = &[u8]>) -> (Events, bool) {
    let mut parser = SseParser::new(max_event);
    let mut events = Vec::new();
    let mut failed = false;
    for part in parts {
        failed |= parser
            .feed(part, &mut |e| events.push((e.name.map(str::to_owned), e.data.to_vec())))
            .is_err();
        assert!(failed || parser.pending_len() <= max_event);
    }
    failed |= parser
        .finish(&mut |e| events.push((e.name.map(str::to_owned), e.data.to_vec())))
        .is_err();
    (events, failed)
}

fuzz_target!(|data: &[u8]| {
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
});
