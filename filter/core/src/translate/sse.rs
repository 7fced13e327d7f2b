//! Server-sent events: an incremental parser and the writer helpers.
//!
//! Rules this module keeps:
//! - Input arrives in arbitrary chunks: an event, a line, even a `\r\n` pair may be split
//!   anywhere. The parser holds at most one pending event (its unfinished line plus its `data`
//!   so far) and nothing else; a complete event is handed to the caller and forgotten.
//! - Lines end with `\n`, `\r\n` or a lone `\r` (the WHATWG rules); lines starting with `:` are
//!   comments; several `data:` lines join with `\n`; one space after the colon is dropped;
//!   `id` and `retry` are accepted and ignored; an event without `data` is not dispatched.
//! - A pending event larger than the parser's limit is an error ([`SseError::TooLarge`]), never
//!   unbounded growth; after an error the parser stays failed.
//! - At the end of input, a pending event whose lines were all complete is dispatched (servers
//!   that omit the final blank line); an unfinished last line is dropped.

use std::fmt;

/// Default bound on one pending event (line plus data): 8 MiB. A whole Codex response object
/// (`response.completed` with every output item) must fit.
pub const DEFAULT_MAX_EVENT: usize = 8 * 1024 * 1024;

/// One dispatched event, borrowed from the parser until the callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, when the event had one.
    pub name: Option<&'a str>,
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// One event grew past the limit (in bytes).
    TooLarge { limit: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => {
                write!(f, "an upstream event is larger than {limit} bytes")
            }
        }
    }
}

/// The incremental parser.
#[derive(Debug)]
pub struct SseParser {
    /// The unfinished line (only when a chunk ended inside it).
    line: Vec<u8>,
    /// `data` of the pending event, each line followed by `\n`.
    data: Vec<u8>,
    has_data: bool,
    name: String,
    has_name: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next one belongs to it.
    skip_lf: bool,
    max_event: usize,
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT)
    }
}

impl SseParser {
    pub fn new(max_event: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            name: String::new(),
            has_name: false,
            skip_lf: false,
            max_event,
            failed: None,
        }
    }

    /// Feeds one chunk; `on_event` sees every event the chunk completes, in order.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if self.skip_lf {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
                self.skip_lf = false;
            } else if !chunk.is_empty() {
                self.skip_lf = false;
            }
        }
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                self.line.extend_from_slice(chunk);
                return self.check_size();
            };
            let (head, tail) = chunk.split_at(end);
            let rest = match tail {
                [b'\r', b'\n', rest @ ..] => rest,
                [b'\r'] => {
                    self.skip_lf = true;
                    &[]
                }
                [_, rest @ ..] => rest,
                [] => &[],
            };
            if self.line.is_empty() {
                self.line_done(head, on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.line_done(&line, on_event);
                line.clear();
                self.line = line;
            }
            self.check_size()?;
            chunk = rest;
        }
        Ok(())
    }

    /// The end of input: dispatches a pending event whose lines were complete.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(Event<'_>)) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        self.line.clear();
        self.dispatch(on_event);
        Ok(())
    }

    /// Bytes held for the pending event.
    pub fn pending_len(&self) -> usize {
        self.line.len() + self.data.len() + self.name.len()
    }

    fn check_size(&mut self) -> Result<(), SseError> {
        if self.pending_len() > self.max_event {
            let err = SseError::TooLarge {
                limit: self.max_event,
            };
            self.failed = Some(err);
            self.line = Vec::new();
            self.data = Vec::new();
            return Err(err);
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let (field, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                (field, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.push_str(&String::from_utf8_lossy(value));
                self.has_name = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.has_data {
            let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
            on_event(Event {
                name: self.has_name.then_some(self.name.as_str()),
                data,
            });
        }
        self.data.clear();
        self.has_data = false;
        self.name.clear();
        self.has_name = false;
    }
}

/// Appends one event: `event: NAME` (when given), one `data:` line per line of `data`, a blank
/// line.
pub fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &[u8]) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends `data: <data>\n\n` (the chat-completions framing: no `event:` line).
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    write_event(out, None, data);
}

/// Appends the chat-completions terminator `data: [DONE]\n\n`.
pub fn write_done(out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: [DONE]\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    type Owned = (Option<String>, String);

    fn parse_split(input: &[u8], splits: &[usize]) -> Vec<Owned> {
        let mut parser = SseParser::default();
        let mut got = Vec::new();
        let mut on = |e: Event<'_>| {
            got.push((
                e.name.map(str::to_string),
                String::from_utf8(e.data.to_vec()).unwrap(),
            ))
        };
        let mut at = 0;
        for &s in splits {
            parser.feed(&input[at..s], &mut on).unwrap();
            at = s;
        }
        parser.feed(&input[at..], &mut on).unwrap();
        parser.finish(&mut on).unwrap();
        got
    }

    const SAMPLE: &[u8] = b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\n\
id: 7\nretry: 5\ndata: {\"x\":1}\n\nevent: empty\n\n\rdata: cr\r\rdata:  spaced\n\n";

    fn expected() -> Vec<Owned> {
        vec![
            (Some("a".into()), "one\ntwo".into()),
            (None, "{\"x\":1}".into()),
            (None, "cr".into()),
            (None, " spaced".into()),
        ]
    }

    #[test]
    fn parses_every_line_ending_and_field() {
        assert_eq!(parse_split(SAMPLE, &[]), expected());
    }

    #[test]
    fn any_split_gives_the_same_events() {
        for i in 0..=SAMPLE.len() {
            assert_eq!(parse_split(SAMPLE, &[i]), expected(), "split at {i}");
            for j in i..=SAMPLE.len() {
                assert_eq!(parse_split(SAMPLE, &[i, j]), expected(), "split {i},{j}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let splits: Vec<usize> = (1..SAMPLE.len()).collect();
        assert_eq!(parse_split(SAMPLE, &splits), expected());
    }

    #[test]
    fn unterminated_last_event_is_dispatched_but_a_partial_line_is_not() {
        assert_eq!(parse_split(b"data: a\n", &[]), vec![(None, "a".into())]);
        assert!(parse_split(b"data: a", &[]).is_empty());
    }

    #[test]
    fn an_oversized_event_is_an_error_and_the_parser_stays_failed() {
        let mut parser = SseParser::new(16);
        let mut n = 0;
        let mut on = |_: Event<'_>| n += 1;
        parser.feed(b"data: 0123456789\n\n", &mut on).unwrap();
        let err = parser.feed(b"data: 0123456789X", &mut on).unwrap_err();
        assert_eq!(err, SseError::TooLarge { limit: 16 });
        assert!(parser.feed(b"\n\n", &mut on).is_err());
        assert!(parser.finish(&mut on).is_err());
        assert_eq!(n, 1);
        // Many data lines also count.
        let mut parser = SseParser::new(16);
        let mut on = |_: Event<'_>| {};
        parser.feed(b"data: 01234\ndata: 01234\n", &mut on).unwrap();
        assert!(parser.feed(b"data: 01234\n", &mut on).is_err());
    }

    #[test]
    fn writer_round_trips() {
        let mut out = Vec::new();
        write_event(&mut out, Some("x"), b"a\nb");
        write_data(&mut out, b"{}");
        write_done(&mut out);
        assert_eq!(
            out,
            b"event: x\ndata: a\ndata: b\n\ndata: {}\n\ndata: [DONE]\n\n".to_vec()
        );
        let got = parse_split(&out, &[]);
        assert_eq!(
            got,
            vec![
                (Some("x".into()), "a\nb".into()),
                (None, "{}".into()),
                (None, "[DONE]".into())
            ]
        );
    }
}
