//! Seeded random inputs for the parsers' property tests (issue 16: fuzzing in the suite).
//!
//! Included by path (`#[path = ...] mod seeded;`) from the test code of the crates whose parsers
//! face outside input (filter-core, model, engine); it needs only `std` and `serde_json`.
//!
//! Rules this module keeps:
//! - Deterministic: every case comes from a fixed seed (a failure names its seed and case, and
//!   reruns the same); no clock, no OS randomness, no threads, so it also runs as wasm.
//! - Bounded: inputs stay small (a few KiB) so a few thousand cases per parser take well under a
//!   second or two, in debug builds and under Node.
//! - `CODEXMESH_FUZZ_CASES` scales the case count up for a longer local run (unset or unreadable,
//!   as under wasm: the default).
//! - Two kinds of input: arbitrary bytes (biased toward the punctuation parsers branch on) and
//!   mutations of valid documents (byte-level edits, and JSON-aware edits that keep the text JSON
//!   but change a value's type, drop or add keys, or nest deeper).

#![allow(dead_code)]

use serde_json::{Map, Value};

/// splitmix64: tiny, fast, and good enough to spread test cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True about once in `n` draws.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How many cases to run: `default`, times `CODEXMESH_FUZZ_CASES / 1000` when that is set.
pub fn cases(default: usize) -> usize {
    match std::env::var("CODEXMESH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if n > 0 => default.saturating_mul(n) / 1000,
        _ => default,
    }
}

/// Fragments parsers branch on: JSON, SSE, YAML and protobuf punctuation and keywords.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"null",
    b"true",
    b"false",
    b"-1",
    b"1e309",
    b"0.5",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"event: ",
    b"id: ",
    b": ",
    b"[DONE]",
    b"---\n",
    b"- ",
    b"  ",
    b"&a ",
    b"*a",
    b"!!str ",
    b"? ",
    b"|\n",
    b">\n",
    b"#",
    b"'",
    b"\t",
    b"\0",
    b"\xff",
    b"\xc3\xa9",
    b"\xe2\x80\xa8",
    b"\xf0\x9f\x98\x80",
    b"\x08",
    b"\x80\x01",
    b"\xff\xff\xff\xff\x0f",
    b"\x0a\x05",
    b"\x12\x00",
    b"\x1a\xff\x7f",
];

/// Arbitrary bytes (up to `max_len`): random bytes mixed with parser-relevant fragments.
pub fn random_bytes(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let target = rng.below(max_len + 1);
    let mut out = Vec::with_capacity(target + 16);
    while out.len() < target {
        if rng.one_in(3) {
            out.push(rng.next_u64() as u8);
        } else {
            let token = *rng.pick(TOKENS);
            out.extend_from_slice(token);
        }
    }
    out
}

/// One to four byte-level edits of `seed`: flips, inserts of fragments, deletions, duplications,
/// truncation, and splices of another seed.
pub fn mutate_bytes(rng: &mut Rng, seed: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        let at = rng.below(len + 1);
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = *rng.pick(TOKENS);
                out.splice(at..at, token.iter().copied());
            }
            2 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                out.drain(at.min(end)..end);
            }
            3 if len > 0 => {
                let end = (at + 1 + rng.below(64)).min(len);
                let piece: Vec<u8> = out[at.min(end)..end].to_vec();
                out.splice(at..at, piece);
            }
            4 => out.truncate(at),
            5 if !others.is_empty() => {
                let other = *rng.pick(others);
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(256)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                let i = rng.below(len.max(1));
                if let Some(b) = out.get_mut(i) {
                    *b = rng.next_u64() as u8;
                }
            }
        }
        if out.len() > 64 * 1024 {
            out.truncate(64 * 1024);
        }
    }
    out
}

/// A random JSON value of limited depth.
pub fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => match rng.below(4) {
            0 => Value::from(rng.next_u64()),
            1 => Value::from(-(rng.below(1 << 20) as i64)),
            2 => serde_json::Number::from_f64((rng.below(2000) as f64) / 7.0 - 100.0)
                .map_or(Value::Null, Value::Number),
            _ => Value::from(rng.below(4) as i64),
        },
        3 | 4 => Value::String(random_text(rng)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (random_text(rng), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// Short text: empty, words parsers look for, control and non-ASCII characters.
pub fn random_text(rng: &mut Rng) -> String {
    const WORDS: &[&str] = &[
        "",
        "type",
        "model",
        "role",
        "user",
        "content",
        "text",
        "data",
        "id",
        "name",
        "tokens",
        "access_token",
        "refresh_token",
        "id_token",
        "response.completed",
        "error",
        "message",
        "function",
        "tool_calls",
        "input",
        "spec",
        "kind",
        "Pool",
        "Operator",
        "metadata",
        "gpt-5",
        "claude",
        "gemini",
        "0",
        "-1",
        "1e400",
        "\u{0}",
        "\u{2028}",
        "é",
        "😀",
        "\\",
        "\"",
        "\n",
        "a.b",
        "[0]",
        "eyJhbGciOiJub25lIn0.e30.",
        "x.y.z",
        "sk-ant-api03-x",
    ];
    let mut s = String::new();
    for _ in 0..1 + rng.below(2) {
        let word = *rng.pick(WORDS);
        s.push_str(word);
    }
    s
}

/// One to three structure-aware edits of a JSON value: a node replaced by a random value (often
/// of another type), a key removed, a key added, a node wrapped in an array or object.
pub fn mutate_value(rng: &mut Rng, value: &Value) -> Value {
    let mut out = value.clone();
    for _ in 0..1 + rng.below(3) {
        let target = pick_node(rng, &mut out);
        match rng.below(6) {
            0 | 1 => *target = random_value(rng, 2),
            2 => {
                if let Value::Object(map) = target {
                    let keys: Vec<String> = map.keys().cloned().collect();
                    if !keys.is_empty() {
                        let key = rng.pick(&keys).clone();
                        map.remove(&key);
                    }
                }
            }
            3 => {
                if let Value::Object(map) = target {
                    map.insert(random_text(rng), random_value(rng, 2));
                } else if let Value::Array(items) = target {
                    items.push(random_value(rng, 2));
                }
            }
            4 => {
                let inner = target.take();
                *target = Value::Array(vec![inner]);
            }
            _ => {
                let inner = target.take();
                let mut map = Map::new();
                map.insert(random_text(rng), inner);
                *target = Value::Object(map);
            }
        }
    }
    out
}

/// A node of `value`, chosen by a short random walk from the root.
fn pick_node<'a>(rng: &mut Rng, value: &'a mut Value) -> &'a mut Value {
    let descend = rng.below(8);
    let mut node = value;
    for _ in 0..descend {
        let len = match &*node {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if len == 0 || rng.one_in(4) {
            break;
        }
        let i = rng.below(len);
        node = match node {
            Value::Object(map) => match map.values_mut().nth(i) {
                Some(child) => child,
                None => unreachable_node(),
            },
            Value::Array(items) => &mut items[i],
            other => other,
        };
    }
    node
}

/// Never reached (the index is below the length); a leaked null keeps the walk panic-free.
fn unreachable_node() -> &'static mut Value {
    Box::leak(Box::new(Value::Null))
}

/// A case's input, either kind: arbitrary bytes, a byte mutation of a seed, or (for JSON seeds)
/// a structure-aware mutation serialized back to text.
pub fn input(rng: &mut Rng, seeds: &[&[u8]], max_len: usize) -> Vec<u8> {
    if seeds.is_empty() || rng.one_in(4) {
        return random_bytes(rng, max_len);
    }
    let seed = *rng.pick(seeds);
    if rng.one_in(2) {
        if let Ok(value) = serde_json::from_slice::<Value>(seed) {
            let mutated = mutate_value(rng, &value);
            let text = serde_json::to_vec(&mutated).unwrap_or_default();
            return if rng.one_in(4) {
                mutate_bytes(rng, &text, seeds)
            } else {
                text
            };
        }
    }
    mutate_bytes(rng, seed, seeds)
}

/// Cut points for feeding `len` bytes in chunks (sorted, each within `0..=len`).
pub fn split_points(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(len + 1)).collect();
    if rng.one_in(8) {
        cuts = (0..=len).collect(); // byte by byte
    }
    cuts.sort_unstable();
    cuts
}

/// `bytes` cut at `cuts` (empty chunks included: feeding nothing must be harmless).
pub fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &cut in cuts {
        let cut = cut.clamp(from, bytes.len());
        out.push(&bytes[from..cut]);
        from = cut;
    }
    out.push(&bytes[from..]);
    out
}
