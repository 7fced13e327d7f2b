//! A pool key's policy on the data path: what the listener filter checks after the key is
//! authenticated and before anything is routed (`PoolKey.policy`, `PoolKey.usage`).
//!
//! Rules kept here:
//! - A key without a policy (absent, or every field 0 / empty) costs nothing: [`active`] is one
//!   field check, and no shared data is read or written for it.
//! - Models: the request's top-level `"model"` (or the one its path names) must match a pattern:
//!   exact, or a prefix ending in `*`, case-sensitive ([`model_allowed`], the same rule as
//!   `model::policy::model_allowed` in the control plane). Not listed: 403 `model_not_allowed`
//!   naming the model; a body that is not a JSON object, or names no model: 400.
//! - Requests per minute: GCRA ([`gcra_admit`]) per key per Envoy, its theoretical arrival time
//!   in shared data (`codexmesh.policy.rate.<key id>`, compare-and-swap): a full minute's
//!   requests may come at once, then one per `60 s / rpm`. Over: 429 `rate_limited` with
//!   Retry-After (seconds, rounded up).
//! - Concurrent requests: the start times of the key's requests in flight on this Envoy
//!   ([`Inflight`], `codexmesh.policy.inflight.<key id>`), one taken at admission and released
//!   exactly once when the stream ends; a slot older than [`INFLIGHT_HORIZON_MS`] (left by a
//!   VM that died) no longer counts. Over: 429 `too_many_concurrent_requests`, Retry-After 1.
//! - Token budgets: the snapshot's count (`KeyUsage.tokens_today` / `tokens_this_week`, read as
//!   0 once its day / week is over) plus what this Envoy counted since that snapshot was built
//!   ([`TokenLog`], `codexmesh.policy.tokens.<key id>`, entries newer than the snapshot's
//!   `generated_at` minus [`REPORT_GRACE_MS`]) at or over the budget: 429
//!   `token_budget_exhausted` with Retry-After to the next UTC midnight / Monday 00:00 UTC.
//! - Quota shares: `KeyUsage.share_blocked_until_unix` in the future: 429
//!   `quota_share_exhausted` until then, naming the window (primary = 5-hour, secondary =
//!   weekly).
//! - The shared-data keys grow with the number of keys that have a policy (three per key at
//!   most, each a few bytes to ~1 KiB); they are never removed while the Envoy runs.

use crate::errors::{ErrorKind, GatewayError};
use crate::pb;
use crate::translate::top_level_str;

/// Shared-data key prefixes, one value per pool key (`<prefix><key id>`).
pub const RATE_PREFIX: &str = "codexmesh.policy.rate.";
pub const INFLIGHT_PREFIX: &str = "codexmesh.policy.inflight.";
pub const TOKENS_PREFIX: &str = "codexmesh.policy.tokens.";

/// A slot in flight longer than this no longer counts (its VM died without releasing it).
pub const INFLIGHT_HORIZON_MS: i64 = 6 * 3600 * 1000;
/// How long after a snapshot was built this Envoy's reports may still be missing from its
/// counts: local entries this much older than the snapshot are taken as counted there.
pub const REPORT_GRACE_MS: i64 = 2_000;
/// Entries kept in a [`TokenLog`] (older ones are merged): bounds its size.
pub const TOKEN_LOG_ENTRIES: usize = 64;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;

/// The key's policy when it limits anything.
pub fn active(key: &pb::PoolKey) -> Option<&pb::KeyPolicy> {
    key.policy.as_ref().filter(|p| {
        !p.allowed_models.is_empty()
            || p.requests_per_minute > 0
            || p.max_concurrent_requests > 0
            || p.tokens_per_day > 0
            || p.tokens_per_week > 0
            || p.primary_share_percent > 0.0
            || p.secondary_share_percent > 0.0
    })
}

/// Whether the key's answers' tokens must be counted on this Envoy.
pub fn counts_tokens(policy: &pb::KeyPolicy) -> bool {
    policy.tokens_per_day > 0 || policy.tokens_per_week > 0
}

/// Whether `model` is allowed by `patterns` (empty: every model): exact, or a prefix ending in
/// `*`; case-sensitive.
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        })
}

/// The model a request body names: its top-level `"model"` string (found without parsing the
/// rest of the body), else Gemini countTokens' `request.model` (`models/<model>`).
pub fn body_model(body: &[u8]) -> Result<String, GatewayError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .and_then(|i| body.get(i..))
        .unwrap_or_default();
    if !start.starts_with(b"{") {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "This key may use only some models, and the request body is not a JSON object naming one.",
        ));
    }
    if let Some(model) = top_level_str(start, b"model").filter(|m| !m.is_empty()) {
        return Ok(model.to_string());
    }
    let nested = serde_json::from_slice::<serde_json::Value>(start)
        .ok()
        .and_then(|v| {
            v.pointer("/request/model")
                .and_then(serde_json::Value::as_str)
                .map(|m| m.strip_prefix("models/").unwrap_or(m).to_string())
        })
        .filter(|m| !m.is_empty());
    nested.ok_or_else(|| {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            "This key may use only some models, and the request names no model (a top-level \"model\" string).",
        )
    })
}

/// Bytes decoded at a time from a compressed body while looking for its model.
const DECODE_STEP: usize = 16 * 1024;

/// The model of a request body sent with `content_encoding`: identity as is, `zstd` decoded only
/// as far as its top-level `"model"` (the Codex CLI writes it first) and never past `cap` bytes.
/// Any other encoding cannot be read: 400.
pub fn encoded_body_model(
    body: &[u8],
    content_encoding: Option<&str>,
    cap: usize,
) -> Result<String, GatewayError> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => body_model(body),
        Some(e) if e.is_empty() || e == "identity" => body_model(body),
        Some(e) if e == "zstd" => zstd_body_model(body, cap),
        Some(e) => Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "This key may use only some models, and a request body in '{}' cannot be read: send it uncompressed or in zstd.",
                e.chars().take(32).collect::<String>()
            ),
        )),
    }
}

fn zstd_body_model(body: &[u8], cap: usize) -> Result<String, GatewayError> {
    use std::io::Read;
    let unreadable = || {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            "This key may use only some models, and the zstd request body cannot be decoded.",
        )
    };
    let mut input = body;
    let mut decoded: Vec<u8> = Vec::new();
    // Frame after frame, step by step, until the model shows or the body (or the cap) ends.
    while !input.is_empty() && decoded.len() < cap {
        let mut frame =
            ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|_| unreadable())?;
        loop {
            let room = cap.saturating_sub(decoded.len()).min(DECODE_STEP);
            if room == 0 {
                break;
            }
            let start = decoded.len();
            decoded.resize(start + room, 0);
            let n = frame
                .read(decoded.get_mut(start..).unwrap_or_default())
                .map_err(|_| unreadable())?;
            decoded.truncate(start + n);
            if n == 0 {
                break;
            }
            if let Some(model) = top_level_str(&decoded, b"model").filter(|m| !m.is_empty()) {
                return Ok(model.to_string());
            }
        }
    }
    body_model(&decoded)
}

/// The 403 for a model outside the key's list.
pub fn check_model(policy: &pb::KeyPolicy, model: &str) -> Result<(), GatewayError> {
    if model_allowed(&policy.allowed_models, model) {
        return Ok(());
    }
    let shown: String = model.chars().take(128).collect();
    Err(GatewayError::new(
        ErrorKind::ModelNotAllowed,
        format!(
            "The model '{shown}' is not allowed for this key (allowed: {}).",
            policy.allowed_models.join(", ")
        ),
    ))
}

/// Seconds from `now_ms` to `until_ms`, rounded up, at least 1.
pub fn seconds_until(until_ms: i64, now_ms: i64) -> i64 {
    (until_ms.saturating_sub(now_ms).max(0).saturating_add(999) / 1000).max(1)
}

fn limited(kind: ErrorKind, message: String, retry_after_secs: i64) -> GatewayError {
    let mut err = GatewayError::new(kind, message);
    err.retry_after_secs = Some(retry_after_secs.max(1));
    err
}

/// GCRA for `rpm` requests per minute. `tat_ms` is the stored theoretical arrival time (None:
/// none yet). Admitted: the new value to store. Refused: the 429 with its Retry-After.
pub fn gcra_admit(tat_ms: Option<i64>, rpm: u32, now_ms: i64) -> Result<i64, GatewayError> {
    let rpm = i64::from(rpm.max(1));
    let interval = 60_000 / rpm;
    // A whole minute's requests may arrive at once.
    let tolerance = interval.saturating_mul(rpm - 1);
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let allowed_at = tat.saturating_sub(tolerance);
    if allowed_at > now_ms {
        return Err(limited(
            ErrorKind::RateLimited,
            format!("This key may send {rpm} requests per minute; try again shortly."),
            seconds_until(allowed_at, now_ms),
        ));
    }
    Ok(tat.saturating_add(interval))
}

/// The 429 for a key at its concurrency limit.
pub fn too_many_concurrent(max: u32) -> GatewayError {
    limited(
        ErrorKind::TooManyConcurrentRequests,
        format!("This key may have {max} requests in flight at once; wait for one to finish."),
        1,
    )
}

/// The start times (unix ms) of a key's requests in flight on this Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inflight(pub Vec<i64>);

impl Inflight {
    /// Reads the shared-data value (8 bytes per slot, little endian); junk reads as empty.
    pub fn decode(bytes: &[u8]) -> Self {
        Self(
            bytes
                .chunks_exact(8)
                .filter_map(|c| <[u8; 8]>::try_from(c).ok().map(i64::from_le_bytes))
                .collect(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Takes a slot started at `now_ms` if fewer than `max` live ones are held; expired ones
    /// are dropped on the way.
    pub fn try_take(&mut self, max: u32, now_ms: i64) -> bool {
        self.0
            .retain(|&started| now_ms.saturating_sub(started) < INFLIGHT_HORIZON_MS);
        if self.0.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
            return false;
        }
        self.0.push(now_ms);
        true
    }

    /// Releases one slot started at `started_ms` (any of equal ones: they are interchangeable).
    pub fn release(&mut self, started_ms: i64) {
        if let Some(i) = self.0.iter().position(|&s| s == started_ms) {
            self.0.swap_remove(i);
        }
    }
}

/// Tokens this Envoy counted for a key: `(unix ms, tokens)` entries, oldest first, at most
/// [`TOKEN_LOG_ENTRIES`] (the two oldest are merged into the later one's time when full).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenLog(pub Vec<(i64, u64)>);

impl TokenLog {
    /// Reads the shared-data value (16 bytes per entry, little endian); junk reads as empty.
    pub fn decode(bytes: &[u8]) -> Self {
        Self(
            bytes
                .chunks_exact(16)
                .filter_map(|c| {
                    let at = <[u8; 8]>::try_from(c.get(..8)?).ok()?;
                    let n = <[u8; 8]>::try_from(c.get(8..)?).ok()?;
                    Some((i64::from_le_bytes(at), u64::from_le_bytes(n)))
                })
                .collect(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|(at, n)| at.to_le_bytes().into_iter().chain(n.to_le_bytes()))
            .collect()
    }

    /// Adds one answer's tokens at `now_ms`; entries at or before `forget_before_ms` (already
    /// in the snapshot's count) are dropped.
    pub fn add(&mut self, tokens: u64, now_ms: i64, forget_before_ms: i64) {
        self.0.retain(|(at, _)| *at > forget_before_ms);
        match self.0.last_mut() {
            // Same millisecond: one entry.
            Some((at, n)) if *at == now_ms => *n = n.saturating_add(tokens),
            _ => self.0.push((now_ms, tokens)),
        }
        while self.0.len() > TOKEN_LOG_ENTRIES {
            let (_, oldest) = self.0.remove(0);
            if let Some((_, n)) = self.0.first_mut() {
                *n = n.saturating_add(oldest);
            }
        }
    }

    /// Tokens counted after `since_ms`.
    pub fn since(&self, since_ms: i64) -> u64 {
        self.0
            .iter()
            .filter(|(at, _)| *at > since_ms)
            .fold(0u64, |sum, (_, n)| sum.saturating_add(*n))
    }
}

/// The UTC day containing `ms` starts at (unix ms).
pub fn day_start_ms(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The week (from Monday 00:00 UTC) containing `ms` starts at (unix ms). 1970-01-01 was a
/// Thursday, three days after a Monday.
pub fn week_start_ms(ms: i64) -> i64 {
    let day = ms.div_euclid(DAY_MS);
    (day - (day + 3).rem_euclid(7)) * DAY_MS
}

/// What a key's budgets and shares read at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Standing<'a> {
    pub usage: Option<&'a pb::KeyUsage>,
    /// When the snapshot carrying `usage` was built (unix ms).
    pub snapshot_generated_ms: i64,
    /// This Envoy's own count (empty when the key has no token budget).
    pub local: &'a TokenLog,
    pub now_ms: i64,
}

impl Standing<'_> {
    /// Local entries newer than this are not yet in the snapshot's count.
    pub fn local_cutoff_ms(&self) -> i64 {
        self.snapshot_generated_ms.saturating_sub(REPORT_GRACE_MS)
    }

    /// Tokens used in the UTC day of `now_ms`.
    pub fn tokens_today(&self) -> u64 {
        let start = day_start_ms(self.now_ms);
        let counted = self
            .usage
            .filter(|u| u.day_start_unix.saturating_mul(1000) == start)
            .map_or(0, |u| u.tokens_today);
        counted.saturating_add(self.local.since(self.local_cutoff_ms().max(start - 1)))
    }

    /// Tokens used in the week (from Monday 00:00 UTC) of `now_ms`.
    pub fn tokens_this_week(&self) -> u64 {
        let start = week_start_ms(self.now_ms);
        let counted = self
            .usage
            .filter(|u| u.week_start_unix.saturating_mul(1000) == start)
            .map_or(0, |u| u.tokens_this_week);
        counted.saturating_add(self.local.since(self.local_cutoff_ms().max(start - 1)))
    }
}

/// The budget and share checks (no side effects): the first limit the key is past.
pub fn check_standing(policy: &pb::KeyPolicy, standing: &Standing<'_>) -> Result<(), GatewayError> {
    let now_ms = standing.now_ms;
    if let Some(usage) = standing.usage {
        let until_ms = usage.share_blocked_until_unix.saturating_mul(1000);
        if until_ms > now_ms {
            let window = match usage.share_blocked_window.as_str() {
                "secondary" => "weekly (secondary)",
                _ => "5-hour (primary)",
            };
            let share = if usage.share_blocked_window == "secondary" {
                policy.secondary_share_percent
            } else {
                policy.primary_share_percent
            };
            let share = if share > 0.0 {
                format!(" ({share}% of the pool)")
            } else {
                String::new()
            };
            return Err(limited(
                ErrorKind::QuotaShareExhausted,
                format!(
                    "This key has used its share{share} of the pool's {window} window; it frees up at unix time {}.",
                    usage.share_blocked_until_unix
                ),
                seconds_until(until_ms, now_ms),
            ));
        }
    }
    if policy.tokens_per_day > 0 {
        let used = standing.tokens_today();
        if used >= policy.tokens_per_day {
            return Err(limited(
                ErrorKind::TokenBudgetExhausted,
                format!(
                    "This key has used {used} of its {} tokens for today (UTC); the budget resets at midnight UTC.",
                    policy.tokens_per_day
                ),
                seconds_until(day_start_ms(now_ms) + DAY_MS, now_ms),
            ));
        }
    }
    if policy.tokens_per_week > 0 {
        let used = standing.tokens_this_week();
        if used >= policy.tokens_per_week {
            return Err(limited(
                ErrorKind::TokenBudgetExhausted,
                format!(
                    "This key has used {used} of its {} tokens for this week; the budget resets on Monday 00:00 UTC.",
                    policy.tokens_per_week
                ),
                seconds_until(week_start_ms(now_ms) + WEEK_MS, now_ms),
            ));
        }
    }
    Ok(())
}

/// The outcome record of a refusal: no account, the answer's status, the refusal's code.
pub fn refusal_outcome(
    pool_id: &str,
    key_id: &str,
    err: &GatewayError,
    request_path: &str,
    snapshot_version: u64,
    now_ms: i64,
) -> pb::Outcome {
    pb::Outcome {
        pool_id: pool_id.to_string(),
        key_id: key_id.to_string(),
        status: u32::from(err.status()),
        error_code: err.kind.code().to_string(),
        started_at_unix_ms: now_ms,
        request_path: request_path.to_string(),
        snapshot_version,
        error_source: "client".to_string(),
        retry_after_unix: err.retry_after_secs.map_or(0, |s| now_ms / 1000 + s),
        policy_refusal: err.kind.code().to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// 2025-01-01 was a Wednesday.
    const WED_2025_01_01: i64 = 1_735_689_600_000;

    fn policy() -> pb::KeyPolicy {
        pb::KeyPolicy::default()
    }

    #[test]
    fn only_a_policy_that_limits_something_is_active() {
        let mut key = pb::PoolKey::default();
        assert!(active(&key).is_none());
        key.policy = Some(policy());
        assert!(active(&key).is_none(), "all zero limits nothing");
        key.policy = Some(pb::KeyPolicy {
            secondary_share_percent: 20.0,
            ..policy()
        });
        assert!(active(&key).is_some());
        assert!(!counts_tokens(active(&key).unwrap()));
        key.policy = Some(pb::KeyPolicy {
            tokens_per_week: 5,
            ..policy()
        });
        assert!(counts_tokens(active(&key).unwrap()));
    }

    /// The same cases as `model::policy::tests::models_match_exactly_or_by_prefix`.
    #[test]
    fn models_match_exactly_or_by_prefix() {
        let pats = vec!["gpt-5*".to_owned(), "claude-sonnet-4-5".to_owned()];
        assert!(model_allowed(&pats, "gpt-5.1-codex"));
        assert!(model_allowed(&pats, "claude-sonnet-4-5"));
        assert!(!model_allowed(&pats, "claude-sonnet-4-5-20250929"));
        assert!(!model_allowed(&pats, "GPT-5"));
        assert!(!model_allowed(&pats, "o3"));
        assert!(model_allowed(&[], "anything"));
        assert!(model_allowed(&["*".to_owned()], "anything"));
    }

    #[test]
    fn the_body_model_is_the_top_level_one() {
        let body = br#"{"input":[{"model":"nested","type":"message"}],"model":"gpt-5.1","x":{"model":"y"}}"#;
        assert_eq!(body_model(body).unwrap(), "gpt-5.1");
        assert_eq!(
            body_model(b"  \n{\"model\": \"claude-sonnet-4-5\"}").unwrap(),
            "claude-sonnet-4-5"
        );
        // Code Assist names it at the top too, beside `request`; countTokens inside it.
        let gemini = br#"{"model":"gemini-2.5-pro","project":"p","request":{"contents":[]}}"#;
        assert_eq!(body_model(gemini).unwrap(), "gemini-2.5-pro");
        let count = br#"{"request":{"model":"models/gemini-2.5-flash","contents":[]}}"#;
        assert_eq!(body_model(count).unwrap(), "gemini-2.5-flash");
        for bad in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            br#"{"input":"x"}"#,
            br#"{"model":""}"#,
            br#"{"model":42}"#,
            br#"{"input":{"model":"only nested"}}"#,
        ] {
            let err = body_model(bad).unwrap_err();
            assert_eq!(err.status(), 400, "{}", String::from_utf8_lossy(bad));
            assert_eq!(err.kind, ErrorKind::InvalidRequest);
        }
    }

    #[test]
    fn a_zstd_body_is_decoded_only_as_far_as_its_model() {
        use ruzstd::encoding::{compress_to_vec, CompressionLevel};
        let mut body = br#"{"model":"gpt-5.1-codex","input":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 200_000));
        body.extend(br#""}"#);
        let zstd = compress_to_vec(body.as_slice(), CompressionLevel::Fastest);
        assert_eq!(
            encoded_body_model(&zstd, Some("zstd"), 1 << 20).unwrap(),
            "gpt-5.1-codex"
        );
        // Found in the first step even under a cap far below the body's size.
        assert_eq!(
            encoded_body_model(&zstd, Some(" ZSTD "), DECODE_STEP).unwrap(),
            "gpt-5.1-codex"
        );
        // Written last: decoded to the end (within the cap), then read whole.
        let last = compress_to_vec(
            br#"{"input":"hello","model":"o3"}"#.as_slice(),
            CompressionLevel::Fastest,
        );
        assert_eq!(
            encoded_body_model(&last, Some("zstd"), 1 << 20).unwrap(),
            "o3"
        );
        assert_eq!(
            encoded_body_model(br#"{"model":"m"}"#, Some("identity"), 10).unwrap(),
            "m"
        );
        for (bytes, encoding) in [(&b"not zstd"[..], "zstd"), (br#"{"model":"m"}"#, "gzip")] {
            let err = encoded_body_model(bytes, Some(encoding), 1 << 20).unwrap_err();
            assert_eq!(err.status(), 400, "{encoding}: {err}");
        }
    }

    #[test]
    fn a_model_outside_the_list_is_a_403_naming_it() {
        let p = pb::KeyPolicy {
            allowed_models: vec!["gpt-5*".into()],
            ..policy()
        };
        assert!(check_model(&p, "gpt-5.1-codex").is_ok());
        let err = check_model(&p, "o3").unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(err.kind.code(), "model_not_allowed");
        assert!(err.message.contains("'o3'"), "{}", err.message);
        assert!(err.message.contains("gpt-5*"), "{}", err.message);
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["code"], "model_not_allowed");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let claude = err.clone().shaped(crate::provider::Provider::Claude);
        let body: serde_json::Value = serde_json::from_str(&claude.body()).unwrap();
        assert_eq!(body["error"]["type"], "permission_error");
        let gemini = err.shaped(crate::provider::Provider::Gemini);
        let body: serde_json::Value = serde_json::from_str(&gemini.body()).unwrap();
        assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
        assert!(body["error"]["message"].as_str().unwrap().contains("'o3'"));
    }

    fn retry_after(err: &GatewayError) -> String {
        err.headers()
            .into_iter()
            .find(|(k, _)| *k == "retry-after")
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    #[test]
    fn gcra_admits_a_minutes_worth_then_one_per_interval() {
        let t0 = 1_000_000;
        let mut tat = None;
        // rpm 3: interval 20 s, three at once.
        for i in 0..3 {
            tat = Some(gcra_admit(tat, 3, t0).unwrap_or_else(|e| panic!("request {i}: {e}")));
        }
        let err = gcra_admit(tat, 3, t0).unwrap_err();
        assert_eq!(err.status(), 429);
        assert_eq!(err.kind.code(), "rate_limited");
        assert_eq!(retry_after(&err), "20");
        // 12.5 s later: 7.5 s to go, rounded up.
        let err = gcra_admit(tat, 3, t0 + 12_500).unwrap_err();
        assert_eq!(err.retry_after_secs, Some(8));
        // At the interval one more is admitted, then refused again.
        let next = gcra_admit(tat, 3, t0 + 20_000).unwrap();
        assert!(gcra_admit(Some(next), 3, t0 + 20_000).is_err());
        // After a quiet minute the full burst is back.
        let mut tat = Some(next);
        for _ in 0..3 {
            tat = Some(gcra_admit(tat, 3, t0 + 200_000).unwrap());
        }
        assert!(gcra_admit(tat, 3, t0 + 200_000).is_err());
        // rpm 1: one, then 60 s.
        let one = gcra_admit(None, 1, t0).unwrap();
        assert_eq!(
            gcra_admit(Some(one), 1, t0 + 1)
                .unwrap_err()
                .retry_after_secs,
            Some(60)
        );
        assert!(gcra_admit(Some(one), 1, t0 + 60_000).is_ok());
    }

    #[test]
    fn inflight_slots_are_taken_released_once_and_expire() {
        let mut f = Inflight::default();
        assert!(f.try_take(2, 100));
        assert!(f.try_take(2, 100), "equal start times are separate slots");
        assert!(!f.try_take(2, 101));
        f.release(100);
        assert_eq!(f.0, vec![100]);
        assert!(f.try_take(2, 102));
        assert!(!f.try_take(2, 103));
        f.release(999);
        assert_eq!(f.0.len(), 2, "releasing a slot not held changes nothing");
        let round = Inflight::decode(&f.encode());
        assert_eq!(round, f);
        // A slot older than the horizon (a VM that died) no longer counts.
        assert!(f.try_take(2, 100 + INFLIGHT_HORIZON_MS));
        assert_eq!(f.0, vec![102, 100 + INFLIGHT_HORIZON_MS]);
        assert_eq!(Inflight::decode(b"junk"), Inflight::default());
        let err = too_many_concurrent(1);
        assert_eq!(err.status(), 429);
        assert_eq!(retry_after(&err), "1");
        assert_eq!(err.kind.code(), "too_many_concurrent_requests");
    }

    #[test]
    fn the_token_log_is_bounded_and_forgets_what_the_snapshot_counted() {
        let mut log = TokenLog::default();
        log.add(10, 1_000, 0);
        log.add(5, 1_000, 0);
        log.add(7, 2_000, 0);
        assert_eq!(log.0, vec![(1_000, 15), (2_000, 7)]);
        assert_eq!(log.since(999), 22);
        assert_eq!(log.since(1_000), 7);
        assert_eq!(TokenLog::decode(&log.encode()), log);
        log.add(1, 3_000, 1_500);
        assert_eq!(log.0, vec![(2_000, 7), (3_000, 1)]);
        let mut big = TokenLog::default();
        for i in 0..200 {
            big.add(1, i, -1);
        }
        assert_eq!(big.0.len(), TOKEN_LOG_ENTRIES);
        assert_eq!(big.since(-1), 200, "merging keeps every token");
    }

    #[test]
    fn days_and_weeks_start_at_utc_midnight_and_monday() {
        assert_eq!(day_start_ms(WED_2025_01_01 + 5_000), WED_2025_01_01);
        // Monday 2024-12-30.
        let monday = WED_2025_01_01 - 2 * DAY_MS;
        assert_eq!(week_start_ms(WED_2025_01_01 + 5_000), monday);
        assert_eq!(week_start_ms(monday), monday);
        assert_eq!(week_start_ms(monday - 1), monday - WEEK_MS);
        assert_eq!(week_start_ms(0), -3 * DAY_MS);
    }

    fn budget(day: u64, week: u64) -> pb::KeyPolicy {
        pb::KeyPolicy {
            tokens_per_day: day,
            tokens_per_week: week,
            ..policy()
        }
    }

    #[test]
    fn budgets_add_the_snapshot_count_and_this_envoys_since_and_roll_over() {
        let now = WED_2025_01_01 + 3_600_000;
        let usage = pb::KeyUsage {
            tokens_today: 90,
            day_start_unix: WED_2025_01_01 / 1000,
            tokens_this_week: 900,
            week_start_unix: week_start_ms(now) / 1000,
            ..Default::default()
        };
        let generated = now - 60_000;
        let mut local = TokenLog::default();
        // Counted long before the snapshot (already in it) and after it.
        local.add(1_000, generated - 10_000, i64::MIN);
        local.add(4, generated + 1, i64::MIN);
        let standing = Standing {
            usage: Some(&usage),
            snapshot_generated_ms: generated,
            local: &local,
            now_ms: now,
        };
        assert_eq!(standing.tokens_today(), 94);
        assert_eq!(standing.tokens_this_week(), 904);
        assert!(check_standing(&budget(95, 0), &standing).is_ok());
        let err = check_standing(&budget(94, 0), &standing).unwrap_err();
        assert_eq!(err.status(), 429);
        assert_eq!(err.kind.code(), "token_budget_exhausted");
        // To the next UTC midnight: 23 h.
        assert_eq!(err.retry_after_secs, Some(23 * 3600));
        let err = check_standing(&budget(0, 904), &standing).unwrap_err();
        // To Monday 2025-01-06 00:00 UTC: 4 days 23 h.
        assert_eq!(err.retry_after_secs, Some(4 * 86_400 + 23 * 3600));
        assert!(err.message.contains("week"));

        // The next day the snapshot's day count reads 0, and so does local use before midnight.
        let tomorrow = Standing {
            now_ms: WED_2025_01_01 + DAY_MS + 1,
            ..standing
        };
        assert_eq!(tomorrow.tokens_today(), 0);
        assert_eq!(tomorrow.tokens_this_week(), 904, "same week");
        assert!(check_standing(&budget(1, 0), &tomorrow).is_ok());
        // Next week the week count reads 0 too.
        let next_week = Standing {
            now_ms: week_start_ms(now) + WEEK_MS,
            ..standing
        };
        assert_eq!(next_week.tokens_this_week(), 0);
        // No usage in the snapshot: only what this Envoy counted.
        let fresh = Standing {
            usage: None,
            ..standing
        };
        assert_eq!(fresh.tokens_today(), 4);
    }

    #[test]
    fn a_share_block_refuses_until_it_frees_naming_the_window() {
        let now = WED_2025_01_01;
        let p = pb::KeyPolicy {
            primary_share_percent: 20.0,
            secondary_share_percent: 10.0,
            ..policy()
        };
        let mut usage = pb::KeyUsage {
            share_blocked_until_unix: now / 1000 + 90,
            share_blocked_window: "primary".into(),
            ..Default::default()
        };
        let local = TokenLog::default();
        fn at<'a>(usage: &'a pb::KeyUsage, local: &'a TokenLog, now_ms: i64) -> Standing<'a> {
            Standing {
                usage: Some(usage),
                snapshot_generated_ms: now_ms,
                local,
                now_ms,
            }
        }
        let err = check_standing(&p, &at(&usage, &local, now)).unwrap_err();
        assert_eq!(err.kind.code(), "quota_share_exhausted");
        assert_eq!(err.status(), 429);
        assert_eq!(retry_after(&err), "90");
        assert!(err.message.contains("5-hour"), "{}", err.message);
        assert!(err.message.contains("20%"), "{}", err.message);
        usage.share_blocked_window = "secondary".into();
        let err = check_standing(&p, &at(&usage, &local, now)).unwrap_err();
        assert!(err.message.contains("weekly"), "{}", err.message);
        assert!(err.message.contains("10%"), "{}", err.message);
        // Past its end the block means nothing.
        usage.share_blocked_until_unix = now / 1000;
        assert!(check_standing(&p, &at(&usage, &local, now)).is_ok());
    }

    #[test]
    fn a_refusal_is_reported_without_an_account() {
        let err = gcra_admit(Some(i64::MAX / 2), 1, 1_000_000).unwrap_err();
        let o = refusal_outcome(
            "pool",
            "key",
            &err,
            "/backend-api/codex/responses",
            7,
            1_000_000,
        );
        assert_eq!(o.policy_refusal, "rate_limited");
        assert_eq!(o.error_code, "rate_limited");
        assert_eq!(o.status, 429);
        assert!(o.account_id.is_empty());
        assert_eq!(o.error_source, "client");
        assert_eq!((o.pool_id.as_str(), o.key_id.as_str()), ("pool", "key"));
        assert_eq!(o.snapshot_version, 7);
    }
}
