//! What is particular to Anthropic's Messages API on the data path: the betas an OAuth token
//! needs, the quota evidence in its answers and its session key.
//!
//! Rules kept here:
//! - `anthropic-beta` is a comma list: betas are added at its end, each once, and the client's
//!   own betas keep their order and spelling.
//! - Quota evidence: `anthropic-ratelimit-unified-5h-*` is the primary window (300 min),
//!   `-7d-*` the secondary (10080 min). Utilization is a 0..1 fraction (×100 for
//!   `used_percent`), resets are unix seconds. A window whose status is `rejected` is spent
//!   (100 %), so a 429 cools the account down until the latest rejected window's reset
//!   (`verdict::classify`).
//! - The session key is `x-claude-code-session-id`, else the `session_id` inside the JSON string
//!   `metadata.user_id` of the body (a bounded search, like `affinity::prompt_cache_key`). These
//!   protocols have no turn-state pinning: affinity is the only stickiness.

use crate::affinity::{json_string_after, MAX_KEY_LEN};
use crate::pb;

/// Betas Anthropic requires of an OAuth token, as real Claude Code in OAuth mode sends them.
pub const OAUTH_BETAS: &[&str] = &["oauth-2025-04-20", "extended-cache-ttl-2025-04-11"];

/// The header Claude Code names its session with.
pub const SESSION_HEADER: &str = "x-claude-code-session-id";

pub const PRIMARY_WINDOW_MINUTES: u32 = 300;
pub const SECONDARY_WINDOW_MINUTES: u32 = 10080;

/// The client's beta list with `required` appended where missing.
pub fn merge_beta(client: Option<&str>, required: &[&str]) -> String {
    let mut out: Vec<&str> = client
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    for beta in required {
        if !out.contains(beta) {
            out.push(beta);
        }
    }
    out.join(",")
}

/// Reads the unified rate-limit headers. `header` looks a lower-case name up.
pub fn quota_from_headers<'a, F>(header: F, now_unix_ms: i64) -> Option<pb::QuotaSummary>
where
    F: Fn(&str) -> Option<&'a str>,
{
    let window = |family: &str, minutes: u32| -> Option<pb::QuotaWindow> {
        let prefix = format!("anthropic-ratelimit-unified-{family}");
        let used: Option<f64> = header(&format!("{prefix}-utilization"))
            .and_then(|v| v.trim().parse().ok())
            .filter(|v: &f64| v.is_finite());
        let rejected = header(&format!("{prefix}-status"))
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("rejected"));
        if used.is_none() && !rejected {
            return None;
        }
        let resets_at_unix = header(&format!("{prefix}-reset"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let used_percent = if rejected {
            100.0
        } else {
            (used.unwrap_or(0.0) * 100.0).clamp(0.0, 100.0)
        };
        Some(pb::QuotaWindow {
            used_percent,
            window_minutes: minutes,
            resets_at_unix,
        })
    };
    let primary = window("5h", PRIMARY_WINDOW_MINUTES);
    let secondary = window("7d", SECONDARY_WINDOW_MINUTES);
    if primary.is_none() && secondary.is_none() {
        return None;
    }
    Some(pb::QuotaSummary {
        primary,
        secondary,
        observed_at_unix_ms: now_unix_ms,
    })
}

/// When the overall unified status is `rejected`, its reset (unix ms): a cooldown end for a 429
/// whose windows name none.
pub fn rejected_until_ms<'a, F>(header: F) -> Option<i64>
where
    F: Fn(&str) -> Option<&'a str>,
{
    let rejected = header("anthropic-ratelimit-unified-status")
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("rejected"));
    if !rejected {
        return None;
    }
    header("anthropic-ratelimit-unified-reset")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
        .map(|s| s.saturating_mul(1000))
}

/// The `session_id` in the JSON string `metadata.user_id` (`{"device_id":..,"session_id":..}`),
/// searched for in a window of the body.
pub fn body_session_id(body: &[u8]) -> Option<String> {
    let user_id = json_string_after(body, b"\"user_id\"")?;
    let inner: serde_json::Value = serde_json::from_str(&user_id).ok()?;
    let session = inner.get("session_id")?.as_str()?.trim();
    (!session.is_empty()).then(|| session.chars().take(MAX_KEY_LEN).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn headers(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<&'static str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn betas_are_appended_once_keeping_the_clients_order() {
        assert_eq!(
            merge_beta(Some("b, oauth-2025-04-20 ,a"), OAUTH_BETAS),
            "b,oauth-2025-04-20,a,extended-cache-ttl-2025-04-11"
        );
        assert_eq!(
            merge_beta(None, OAUTH_BETAS),
            "oauth-2025-04-20,extended-cache-ttl-2025-04-11"
        );
        assert_eq!(merge_beta(Some(",,"), &["x"]), "x");
        let full = merge_beta(
            Some("oauth-2025-04-20,extended-cache-ttl-2025-04-11"),
            OAUTH_BETAS,
        );
        assert_eq!(full, "oauth-2025-04-20,extended-cache-ttl-2025-04-11");
    }

    #[test]
    fn unified_headers_are_both_windows() {
        let q = quota_from_headers(
            headers(&[
                ("anthropic-ratelimit-unified-5h-utilization", "0.425"),
                ("anthropic-ratelimit-unified-5h-reset", "1700000000"),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
                ("anthropic-ratelimit-unified-7d-utilization", "0.07"),
                ("anthropic-ratelimit-unified-7d-reset", "1700500000"),
            ]),
            5_000,
        )
        .unwrap();
        let p = q.primary.unwrap();
        assert!((p.used_percent - 42.5).abs() < 1e-9);
        assert_eq!((p.window_minutes, p.resets_at_unix), (300, 1_700_000_000));
        let s = q.secondary.unwrap();
        assert!((s.used_percent - 7.0).abs() < 1e-9);
        assert_eq!((s.window_minutes, s.resets_at_unix), (10080, 1_700_500_000));
        assert_eq!(q.observed_at_unix_ms, 5_000);
    }

    #[test]
    fn a_rejected_window_is_spent_and_junk_is_ignored() {
        let q = quota_from_headers(
            headers(&[
                ("anthropic-ratelimit-unified-7d-status", "rejected"),
                ("anthropic-ratelimit-unified-7d-utilization", "0.2"),
                ("anthropic-ratelimit-unified-7d-reset", "1700500000"),
            ]),
            0,
        )
        .unwrap();
        assert!(q.primary.is_none());
        assert_eq!(q.secondary.unwrap().used_percent, 100.0);
        assert!(quota_from_headers(headers(&[]), 0).is_none());
        assert!(quota_from_headers(
            headers(&[("anthropic-ratelimit-unified-5h-utilization", "NaN")]),
            0
        )
        .is_none());
        let over = quota_from_headers(
            headers(&[("anthropic-ratelimit-unified-5h-utilization", "3")]),
            0,
        )
        .unwrap();
        assert_eq!(over.primary.unwrap().used_percent, 100.0);
    }

    #[test]
    fn the_overall_rejection_names_its_reset() {
        assert_eq!(
            rejected_until_ms(headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", "1700000100"),
            ])),
            Some(1_700_000_100_000)
        );
        assert_eq!(
            rejected_until_ms(headers(&[
                ("anthropic-ratelimit-unified-status", "allowed"),
                ("anthropic-ratelimit-unified-reset", "1700000100"),
            ])),
            None
        );
    }

    #[test]
    fn the_body_session_is_inside_the_user_id_string() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"\"user_id\": no"}],"metadata":{"user_id":"{\"device_id\":\"d\",\"account_uuid\":\"\",\"session_id\":\"5e55-1\"}"},"stream":true}"#;
        assert_eq!(body_session_id(body).as_deref(), Some("5e55-1"));
        assert_eq!(
            body_session_id(br#"{"metadata":{"user_id":"plain"}}"#),
            None
        );
        assert_eq!(body_session_id(br#"{"metadata":{}}"#), None);
        assert_eq!(
            body_session_id(br#"{"metadata":{"user_id":"{\"session_id\":\"\"}"}}"#),
            None
        );
    }
    #[test]
    fn a_429_with_rejected_windows_cools_down_until_the_latest_reset() {
        use crate::local::LocalAccount;
        use crate::routing::Limits;
        use crate::verdict::{classify, Verdict};
        let now_ms = 1_700_000_000_000;
        let q = quota_from_headers(
            headers(&[
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", "1700000600"),
                ("anthropic-ratelimit-unified-7d-status", "rejected"),
                ("anthropic-ratelimit-unified-7d-reset", "1700090000"),
            ]),
            now_ms,
        );
        let limits = Limits::from_settings(None);
        let body = crate::evidence::parse_error_body(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"limit"}}"#,
            now_ms,
        )
        .unwrap();
        assert_eq!(body.error_type, "rate_limit_error");
        let v = classify(
            429,
            q.as_ref(),
            Some(&body),
            Some(now_ms + 5_000),
            &LocalAccount::default(),
            &limits,
            now_ms,
        );
        assert_eq!(
            v,
            Verdict::UsageLimited {
                until_ms: 1_700_090_000_000,
                guessed: false
            }
        );
        // An overloaded 529 is the upstream's failure, not quota.
        assert_eq!(
            classify(
                529,
                None,
                None,
                None,
                &LocalAccount::default(),
                &limits,
                now_ms
            ),
            Verdict::UpstreamFailure
        );
    }
}
