//! Session affinity: which continuity header names the session, and weighted rendezvous hashing
//! so every Envoy replica, with no shared state, sends a session to the same account, and adding
//! an account to a pool of N moves only about 1/(N+1) of sessions.

/// Continuity headers, strongest first (codex-protocol.md).
pub const AFFINITY_HEADERS: [&str; 7] = [
    "x-codex-window-id",
    "x-codex-session-id",
    "session-id",
    "x-session-id",
    "x-session-affinity",
    "session_id",
    "x-codex-conversation-id",
];

/// Longest key taken from a header; a longer value is cut (it only feeds a hash).
const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityKey {
    /// The header it came from.
    pub source: &'static str,
    pub value: String,
}

/// The session key from the request headers, by precedence. `x-codex-window-id` is
/// `thread:generation`; only the thread part is used, so a session keeps its account when the
/// generation moves on.
pub fn affinity_key<F>(header: F) -> Option<AffinityKey>
where
    F: Fn(&str) -> Option<String>,
{
    AFFINITY_HEADERS.iter().find_map(|name| {
        let raw = header(name)?;
        let mut value = raw.trim();
        if *name == "x-codex-window-id" {
            value = value.split(':').next().unwrap_or(value);
        }
        if value.is_empty() {
            return None;
        }
        let value: String = value.chars().take(MAX_KEY_LEN).collect();
        Some(AffinityKey {
            source: name,
            value,
        })
    })
}

/// How much of a body's head is searched for `prompt_cache_key` (SDKs that put it first).
pub const LOCALITY_HEAD_BYTES: usize = 16 * 1024;
/// How much of a body's tail is searched. The Codex CLI writes `prompt_cache_key` after the
/// transcript (`input`, then tools, then the key, then small fields) and the OpenAI SDKs write
/// keys in alphabetical order (after `input`, before `tools`): near the end, not the start.
pub const LOCALITY_TAIL_BYTES: usize = 64 * 1024;

/// Where to look for the locality key in a body of `total` bytes: the head window and, when the
/// body is longer than that, the tail window (start, length). The work is bounded by the two
/// windows whatever the body's size; a key sitting only in the middle is not found.
pub fn locality_windows(total: usize) -> ((usize, usize), Option<(usize, usize)>) {
    let head = total.min(LOCALITY_HEAD_BYTES);
    if total <= head {
        return ((0, head), None);
    }
    let tail = (total - head).min(LOCALITY_TAIL_BYTES);
    ((0, head), Some((total - tail, tail)))
}

/// The body's `prompt_cache_key` (a weaker locality key: the Codex CLI sets it to the thread id,
/// SDK users often set it themselves). A search, not a parse, so it works on a window of the
/// body: inside JSON string values quotes are escaped, so `"prompt_cache_key"` followed by a
/// colon can only be an object key, and a window edge can only hide the key, never fake one.
pub fn prompt_cache_key(body: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"\"prompt_cache_key\"";
    let start = memchr::memmem::find(body, NEEDLE)? + NEEDLE.len();
    let rest = body.get(start..)?;
    let mut i = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    i += rest
        .get(i..)?
        .iter()
        .position(|b| !b.is_ascii_whitespace())?;
    if rest.get(i) != Some(&b'"') {
        return None;
    }
    let value = rest.get(i + 1..)?;
    let end = memchr::memchr2(b'"', b'\\', value)?;
    let key = std::str::from_utf8(value.get(..end)?).ok()?.trim();
    (!key.is_empty()).then(|| key.chars().take(MAX_KEY_LEN).collect())
}

/// A well-mixed 64-bit hash of (key, account id): FNV-1a then the splitmix64 finalizer. Fixed,
/// so every replica (and every build) computes the same value.
pub fn pair_hash(key: &str, account_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(account_id.bytes())
    {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Weighted rendezvous score: weight / -ln(u), u uniform in (0, 1) from the hash. The account
/// with the highest score owns the key; weights scale each account's share.
pub fn rendezvous_score(key: &str, account_id: &str, weight: u32) -> f64 {
    // 53 random bits → (0, 1), never 0 or 1.
    let u = ((pair_hash(key, account_id) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn headers(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn precedence_follows_the_protocol_notes() {
        let k = affinity_key(headers(&[
            ("session_id", "old"),
            ("session-id", "new"),
            ("x-codex-window-id", "thread-9:3"),
        ]))
        .unwrap();
        assert_eq!(
            (k.source, k.value.as_str()),
            ("x-codex-window-id", "thread-9")
        );
        let k = affinity_key(headers(&[("session_id", "old"), ("x-session-id", "mid")])).unwrap();
        assert_eq!(k.value, "mid");
        assert!(affinity_key(headers(&[("session-id", "  ")])).is_none());
        assert!(affinity_key(headers(&[])).is_none());
    }

    #[test]
    fn prompt_cache_key_scan() {
        let body = br#"{"model":"m","input":[{"text":"say \"prompt_cache_key\": \"evil\""}],"prompt_cache_key" : "thread-7","stream":true}"#;
        assert_eq!(prompt_cache_key(body).as_deref(), Some("thread-7"));
        assert_eq!(prompt_cache_key(br#"{"prompt_cache_key":""}"#), None);
        assert_eq!(prompt_cache_key(br#"{"prompt_cache_key":5}"#), None);
        assert_eq!(prompt_cache_key(br#"{"model":"m"}"#), None);
        assert_eq!(
            prompt_cache_key(br#"{"prompt_cache_key":"unterminated"#),
            None
        );
        assert_eq!(prompt_cache_key(&[0xff, 0xfe]), None);
    }

    #[test]
    fn locality_windows_are_bounded_whatever_the_body_size() {
        assert_eq!(locality_windows(0), ((0, 0), None));
        assert_eq!(locality_windows(100), ((0, 100), None));
        assert_eq!(
            locality_windows(LOCALITY_HEAD_BYTES),
            ((0, LOCALITY_HEAD_BYTES), None)
        );
        assert_eq!(
            locality_windows(LOCALITY_HEAD_BYTES + 10),
            ((0, LOCALITY_HEAD_BYTES), Some((LOCALITY_HEAD_BYTES, 10)))
        );
        let big = 50 * 1024 * 1024;
        let (head, tail) = locality_windows(big);
        assert_eq!(head, (0, LOCALITY_HEAD_BYTES));
        assert_eq!(tail, Some((big - LOCALITY_TAIL_BYTES, LOCALITY_TAIL_BYTES)));
    }

    #[test]
    fn a_codex_shaped_transcript_finds_its_key_in_the_tail_window() {
        // model, instructions, a long input, tools, then the key (the Codex CLI's order).
        let filler = "x".repeat(1000);
        let input: Vec<String> = (0..300)
            .map(|i| format!(r#"{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{i} {filler} \"prompt_cache_key\": \"fake\""}}]}}"#))
            .collect();
        let body = format!(
            r#"{{"model":"gpt-5.1-codex","instructions":"be brief","input":[{}],"tools":[],"tool_choice":"auto","parallel_tool_calls":false,"store":false,"stream":true,"include":[],"prompt_cache_key":"thread-42","client_metadata":{{}}}}"#,
            input.join(",")
        );
        assert!(body.len() > 250_000);
        let (head, tail) = locality_windows(body.len());
        let bytes = body.as_bytes();
        assert_eq!(prompt_cache_key(&bytes[head.0..head.0 + head.1]), None);
        let (start, len) = tail.unwrap();
        assert_eq!(
            prompt_cache_key(&bytes[start..start + len]).as_deref(),
            Some("thread-42")
        );
    }

    #[test]
    fn window_generation_does_not_move_the_session() {
        let a = affinity_key(headers(&[("x-codex-window-id", "t:0")])).unwrap();
        let b = affinity_key(headers(&[("x-codex-window-id", "t:1")])).unwrap();
        assert_eq!(a.value, b.value);
    }

    #[test]
    fn hash_is_stable_across_builds_and_targets() {
        // Pinned values: a change here would move every session in every deployed pool.
        assert_eq!(pair_hash("session", "acct"), pair_hash("session", "acct"));
        assert_ne!(pair_hash("a", "bc"), pair_hash("ab", "c"));
        let s = rendezvous_score("k", "a", 1);
        assert!(s.is_finite() && s > 0.0);
    }

    #[test]
    fn weights_scale_the_share() {
        let mut wins = [0u32; 2];
        for i in 0..4000 {
            let key = format!("session-{i}");
            let a = rendezvous_score(&key, "a", 1);
            let b = rendezvous_score(&key, "b", 3);
            wins[usize::from(b > a)] += 1;
        }
        // Expected 1000 : 3000.
        assert!((850..1150).contains(&wins[0]), "{wins:?}");
    }
}
