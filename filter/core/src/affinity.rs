//! Session affinity: which continuity header names the session, and the session's order over a
//! pool's accounts.
//!
//! Rules kept here:
//! - Every Envoy replica, with no shared state, puts a session on the same account: the order
//!   depends only on the session key and the snapshot (account ids and weights), through fixed
//!   hashes that are the same on every build and target.
//! - A session moves only when its account drops out, and then to its next account; adding an
//!   account to a pool of N moves about 1/(N+1) of sessions, all of them to the newcomer. Both hold
//!   because an account's distance to a session depends on that pair alone (a rendezvous
//!   property), never on the other accounts.
//! - Weights are honoured approximately: an account has one point on the ring per unit of weight.
//! - The order can be found without scoring every account (multi-probe consistent hashing:
//!   `ranker` walks a per-snapshot ring from each probe), so a request's cost does not grow with
//!   the pool.

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
pub(crate) const MAX_KEY_LEN: usize = 256;

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

/// The JSON string value of the first object key `needle` (quotes included) in a window of a
/// body, unescaped. A search like [`prompt_cache_key`], then one string parsed: a key cut by the
/// window's edge is not found, never misread.
pub(crate) fn json_string_after(body: &[u8], needle: &[u8]) -> Option<String> {
    let mut from = 0;
    // The needle may also occur as a string value ("…": "user_id"): try each occurrence.
    while let Some(found) = memchr::memmem::find(body.get(from..)?, needle) {
        let start = from + found + needle.len();
        from = start;
        let rest = body.get(start..)?;
        let i = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest.get(i) != Some(&b':') {
            continue;
        }
        let value = rest.get(i + 1..)?;
        let mut stream = serde_json::Deserializer::from_slice(value).into_iter::<String>();
        return stream.next()?.ok();
    }
    None
}

/// The Gemini Code Assist session (`request.session_id`), searched for in a window of the body.
/// The envelope has one `session_id` key; one inside a string value is escaped and never matches.
pub fn gemini_session_id(body: &[u8]) -> Option<String> {
    let value = json_string_after(body, b"\"session_id\"")?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.chars().take(MAX_KEY_LEN).collect())
}

/// Probes per session: more probes even out the accounts' shares (a point's share no longer
/// depends on the gap before it once probes land more densely than points are spread), at the
/// price of more ring look-ups per request.
pub const PROBES: usize = 16;
/// Ring points per unit of weight: an account's share is the average of its points' shares, so
/// more points even out a point that sits right behind another one (which takes little).
pub const POINTS_PER_WEIGHT: u32 = 8;
/// Weight counted at most (round robin's clamp as well).
pub const MAX_WEIGHT: u32 = 1000;
/// A pool's ring holds at most about this many points: beyond it, points shrink in proportion
/// (each account keeps at least one), so a pathological weight mix cannot exhaust memory.
pub const RING_POINTS_CAP: u64 = 1 << 18;

const SEED_ACCOUNT: u64 = 0x9E37_79B9_7F4A_7C15;
const SEED_PROBE: u64 = 0xD6E8_FEB8_6659_FD93;

/// The splitmix64 finalizer: a bijective, well-mixed 64-bit step.
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// FNV-1a over the bytes, then [`mix`]. Fixed, so every replica computes the same value.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// A well-mixed 64-bit hash of (key, account id): FNV-1a then the splitmix64 finalizer. Fixed,
/// so every replica (and every build) computes the same value (turn-state slots use it).
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
    mix(h)
}

/// The session key's hash (once per request).
pub fn session_hash(key: &str) -> u64 {
    hash_bytes(key.as_bytes())
}

/// An account id's hash (once per snapshot version).
pub fn account_hash(id: &str) -> u64 {
    hash_bytes(id.as_bytes())
}

/// Where an account's `unit`-th point sits on the 32-bit ring.
pub fn point_position(account_hash: u64, unit: u32) -> u32 {
    let h = mix(account_hash ^ (u64::from(unit) + 1).wrapping_mul(SEED_ACCOUNT));
    // The high half of a mixed 64-bit value.
    (h >> 32) as u32
}

/// Where a session's probes sit on the ring.
pub fn probe_positions(session_hash: u64) -> [u32; PROBES] {
    let mut out = [0u32; PROBES];
    for (p, slot) in (1u64..).zip(out.iter_mut()) {
        *slot = (mix(session_hash.wrapping_add(p.wrapping_mul(SEED_PROBE))) >> 32) as u32;
    }
    out
}

/// How many ring points an account of `weight` gets in a pool whose weights (clamped to
/// `1..=MAX_WEIGHT`) add up to `pool_weight` (see [`RING_POINTS_CAP`]).
pub fn points_for(weight: u32, pool_weight: u64) -> u32 {
    let w = weight.clamp(1, MAX_WEIGHT);
    let points = w * POINTS_PER_WEIGHT;
    let pool_points = pool_weight.saturating_mul(u64::from(POINTS_PER_WEIGHT));
    if pool_points <= RING_POINTS_CAP {
        return points;
    }
    let scaled = u64::from(points).saturating_mul(RING_POINTS_CAP) / pool_points.max(1);
    u32::try_from(scaled).unwrap_or(points).clamp(1, points)
}

/// A session's distance to an account (smaller comes first): the shortest clockwise way from any
/// of the session's probes to any of the account's points. `probes` must be sorted.
pub fn distance(sorted_probes: &[u32; PROBES], account_hash: u64, points: u32) -> u32 {
    let last = sorted_probes.last().copied().unwrap_or(0);
    (0..points.max(1))
        .map(|unit| {
            let q = point_position(account_hash, unit);
            // The nearest probe at or before q; none before it: the last one, around the ring.
            let before = sorted_probes.partition_point(|x| *x <= q);
            let x = before
                .checked_sub(1)
                .and_then(|i| sorted_probes.get(i))
                .copied()
                .unwrap_or(last);
            q.wrapping_sub(x)
        })
        .min()
        .unwrap_or(u32::MAX)
}

/// The probes of a session, sorted (what [`distance`] takes).
pub fn sorted_probes(key: &str) -> [u32; PROBES] {
    let mut probes = probe_positions(session_hash(key));
    probes.sort_unstable();
    probes
}

#[cfg(test)]
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
    fn gemini_session_comes_from_the_envelope_and_string_values_never_match() {
        let body = br#"{"model":"gemini-2.5-pro","project":"p","request":{"contents":[{"parts":[{"text":"say \"session_id\": \"evil\""}]}],"session_id":"s-42"}}"#;
        assert_eq!(gemini_session_id(body).as_deref(), Some("s-42"));
        assert_eq!(gemini_session_id(br#"{"request":{"session_id":""}}"#), None);
        assert_eq!(gemini_session_id(br#"{"request":{"session_id":12}}"#), None);
        // Cut by the window's edge: not found, not misread.
        assert_eq!(gemini_session_id(br#"{"request":{"session_id":"s-4"#), None);
        assert_eq!(
            json_string_after(br#"{"a":"user_id","user_id":"x\"y"}"#, b"\"user_id\""),
            Some("x\"y".to_string())
        );
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
        // Turn-state slots use pair_hash: unchanged since it was introduced.
        assert_eq!(pair_hash("session", "acct"), 0x86b5_3bf2_c447_0110);
        assert_eq!(session_hash("session-1"), 0x8f9d_4a83_e238_4785);
        assert_eq!(point_position(account_hash("acct-1"), 0), 0x8aa3_2174);
        assert_eq!(
            distance(&sorted_probes("session-1"), account_hash("acct-1"), 3),
            0x0d2a_5ff4
        );
    }

    /// Owner of a session among `(id, weight)` accounts: the smallest distance, ties by id.
    fn owner<'a>(key: &str, accounts: &[(&'a str, u32)]) -> &'a str {
        let probes = sorted_probes(key);
        let total: u64 = accounts.iter().map(|(_, w)| u64::from(*w)).sum();
        accounts
            .iter()
            .map(|(id, w)| {
                (
                    distance(&probes, account_hash(id), points_for(*w, total)),
                    *id,
                )
            })
            .min()
            .unwrap()
            .1
    }

    #[test]
    fn weights_scale_the_share() {
        let accounts = [("a", 1), ("b", 3)];
        let mut wins = [0u32; 2];
        for i in 0..4000 {
            let key = format!("session-{i}");
            wins[usize::from(owner(&key, &accounts) == "b")] += 1;
        }
        // Expected 1000 : 3000.
        assert!((850..1150).contains(&wins[0]), "{wins:?}");
    }

    #[test]
    fn shares_follow_weights_in_a_larger_pool() {
        // 40 accounts, weights 1, 2 and 4: each weight class takes its share within 10 %, and no
        // single account strays far from its own.
        let ids: Vec<String> = (0..40).map(|i| format!("acc-{i:03}")).collect();
        let accounts: Vec<(&str, u32)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), [1, 2, 4][i % 3]))
            .collect();
        let total: u32 = accounts.iter().map(|(_, w)| w).sum();
        let sessions = 20_000;
        let mut wins = std::collections::BTreeMap::new();
        for i in 0..sessions {
            *wins
                .entry(owner(&format!("s-{i}"), &accounts))
                .or_insert(0u32) += 1;
        }
        for class in [1, 2, 4] {
            let members: Vec<&str> = accounts
                .iter()
                .filter(|(_, w)| *w == class)
                .map(|(id, _)| *id)
                .collect();
            let got: u32 = members
                .iter()
                .map(|id| wins.get(id).copied().unwrap_or(0))
                .sum();
            let want =
                f64::from(sessions) * f64::from(class) * members.len() as f64 / f64::from(total);
            let ratio = f64::from(got) / want;
            assert!(
                (0.9..1.1).contains(&ratio),
                "weight {class}: {got} vs {want}"
            );
        }
        for (id, w) in &accounts {
            let want = f64::from(sessions) * f64::from(*w) / f64::from(total);
            let got = f64::from(wins.get(id).copied().unwrap_or(0));
            assert!(
                (0.6..1.4).contains(&(got / want)),
                "{id} (weight {w}): {got} vs {want}"
            );
        }
    }

    #[test]
    fn points_are_capped_for_huge_pools() {
        assert_eq!(points_for(0, 10), POINTS_PER_WEIGHT);
        assert_eq!(points_for(5000, 10), MAX_WEIGHT * POINTS_PER_WEIGHT);
        assert_eq!(points_for(1000, RING_POINTS_CAP), 1000);
        assert_eq!(points_for(1, RING_POINTS_CAP), 1);
    }
}
