//! What is particular to Google Code Assist (`/v1internal:<method>`) on the data path: the
//! account's project in the request body, the gateway's own answers to Gemini CLI's start-up and
//! bookkeeping calls, and the quota evidence in google.rpc errors.
//!
//! Rules kept here:
//! - `generateContent` / `streamGenerateContent` carry the serving account's Code Assist project
//!   as the body's top-level `project`, set on every attempt ([`with_project`]): failover changes
//!   the account, so the project changes with it. `countTokens` carries none.
//! - Start-up and bookkeeping calls never reach an account ([`local_answer`]): `loadCodeAssist`
//!   answers a current tier so the CLI skips onboarding, `retrieveUserQuota` answers from the
//!   pool's Gemini accounts' quota as this gateway sees it, the rest answer `{}`.
//! - A 429's google.rpc body gives the cooldown end: `RetryInfo.retryDelay`, else
//!   `ErrorInfo.metadata.quotaResetTimeStamp` / `quotaResetDelay`, else "reset after Ns" in the
//!   message; the ErrorInfo `reason` (QUOTA_EXHAUSTED, RATE_LIMIT_EXCEEDED, …) is the error code.
//! - Gemini answers carry no quota headers: quota evidence comes from errors and the control
//!   plane's pushes only. No turn-state pinning exists in this protocol.

use serde_json::{json, Map, Value};

use crate::evidence::UsageLimit;
use crate::local::{effective_quota, LocalTable};
use crate::pb;
use crate::provider::Provider;

/// The project the gateway names to Gemini CLI (the real one is each account's, set per attempt).
pub const POOL_PROJECT: &str = "codexmesh-pool";

/// The Gemini CLI calls the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCall {
    LoadCodeAssist,
    OnboardUser,
    RetrieveUserQuota,
    /// `listExperiments`, `fetchAdminControls`, `recordCodeAssistMetrics`,
    /// `get`/`setCodeAssistGlobalUserSetting`: `{}`.
    Empty,
}

/// The body with its top-level `project` set to `project`; `None` when the body is not a JSON
/// object (then it is forwarded as sent and the upstream refuses it).
pub fn with_project(body: &[u8], project: &str) -> Option<Vec<u8>> {
    let mut value: Map<String, Value> = serde_json::from_slice(body).ok()?;
    value.insert("project".into(), Value::String(project.to_string()));
    serde_json::to_vec(&value).ok()
}

/// The gateway's answer to one of Gemini CLI's bookkeeping calls, for the key's pool.
pub fn local_answer(call: LocalCall, pool: &pb::Pool, local: &LocalTable, now_ms: i64) -> String {
    match call {
        LocalCall::LoadCodeAssist => json!({
            "currentTier": {"id": "standard-tier", "name": "codexmesh"},
            "allowedTiers": [{"id": "standard-tier", "name": "codexmesh", "isDefault": true}],
            "cloudaicompanionProject": POOL_PROJECT,
        })
        .to_string(),
        LocalCall::OnboardUser => json!({
            "name": "operations/codexmesh-onboarded",
            "done": true,
            "response": {"cloudaicompanionProject": {"id": POOL_PROJECT, "name": POOL_PROJECT}},
        })
        .to_string(),
        LocalCall::RetrieveUserQuota => retrieve_user_quota(pool, local, now_ms),
        LocalCall::Empty => "{}".to_string(),
    }
}

/// `{"buckets":[…]}`: one bucket per Gemini account whose daily quota is known, without naming
/// the account (the pool key sees the pool, never an account).
fn retrieve_user_quota(pool: &pb::Pool, local: &LocalTable, now_ms: i64) -> String {
    let buckets: Vec<Value> = pool
        .accounts
        .iter()
        .filter(|a| Provider::of_account(a) == Some(Provider::Gemini))
        .filter_map(|a| {
            let quota = effective_quota(a, &local.get(&a.id))?;
            let w = quota.primary?;
            let passed = w.resets_at_unix > 0 && w.resets_at_unix.saturating_mul(1000) <= now_ms;
            let used = if passed {
                0.0
            } else {
                w.used_percent.clamp(0.0, 100.0)
            };
            let mut bucket = json!({
                "tokenType": "REQUESTS",
                "remainingFraction": ((100.0 - used) / 100.0),
            });
            if w.resets_at_unix > 0 && !passed {
                if let Some(obj) = bucket.as_object_mut() {
                    obj.insert("resetTime".into(), rfc3339(w.resets_at_unix).into());
                }
            }
            Some(bucket)
        })
        .collect();
    json!({ "buckets": buckets }).to_string()
}

/// A google.rpc error body (`{"error":{"code","message","status","details":[…]}}`), read for
/// its reason and reset; `None` when it is not one.
pub fn parse_rpc_error(body: &[u8], now_unix_ms: i64) -> Option<UsageLimit> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let status = error.get("status").and_then(Value::as_str)?;
    let details = error
        .get("details")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let of_type = |suffix: &str| {
        details.iter().find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(suffix))
        })
    };
    let info = of_type("google.rpc.ErrorInfo");
    let reason = info
        .and_then(|i| i.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or(status);
    let now_secs = now_unix_ms / 1000;
    let after = |delay_secs: f64| now_secs.saturating_add(delay_secs.ceil() as i64);
    let metadata = info.and_then(|i| i.get("metadata"));
    let resets_at_unix = of_type("google.rpc.RetryInfo")
        .and_then(|r| r.get("retryDelay"))
        .and_then(Value::as_str)
        .and_then(parse_duration_secs)
        .map(after)
        .or_else(|| {
            metadata
                .and_then(|m| m.get("quotaResetTimeStamp"))
                .and_then(Value::as_str)
                .and_then(parse_rfc3339)
        })
        .or_else(|| {
            metadata
                .and_then(|m| m.get("quotaResetDelay"))
                .and_then(Value::as_str)
                .and_then(parse_duration_secs)
                .map(after)
        })
        .or_else(|| {
            error
                .get("message")
                .and_then(Value::as_str)
                .and_then(reset_after_in_message)
                .map(after)
        });
    Some(UsageLimit {
        error_type: reason.to_string(),
        resets_at_unix,
        plan: None,
    })
}

/// A protobuf Duration as JSON writes it (`"0.539s"`, `"539.47ms"`, `"60s"`), in seconds.
fn parse_duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = number.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * scale)
}

/// "… reset after 12s." / "… retry in 3.5s" in an error message.
fn reset_after_in_message(message: &str) -> Option<f64> {
    let lower = message.to_ascii_lowercase();
    ["reset after ", "retry in "].iter().find_map(|lead| {
        let rest = &lower[lower.find(lead)? + lead.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'm' || c == 's'))
            .unwrap_or(rest.len());
        parse_duration_secs(rest[..end].trim_end_matches('.'))
    })
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2025-10-20T19:14:08Z` (fractional seconds allowed, UTC only) as unix seconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_project_is_set_on_the_envelope_only() {
        let body = br#"{"model":"gemini-2.5-pro","project":"client-p","request":{"contents":[],"project":"inner","session_id":"s"}}"#;
        let out: Value = serde_json::from_slice(&with_project(body, "acct-p").unwrap()).unwrap();
        assert_eq!(out["project"], "acct-p");
        assert_eq!(out["request"]["project"], "inner");
        assert_eq!(out["request"]["session_id"], "s");
        let added: Value =
            serde_json::from_slice(&with_project(br#"{"model":"m"}"#, "p").unwrap()).unwrap();
        assert_eq!(added["project"], "p");
        assert!(with_project(b"[1]", "p").is_none());
        assert!(with_project(b"not json", "p").is_none());
    }

    #[test]
    fn start_up_calls_are_answered_without_an_account() {
        let pool = pb::Pool::default();
        let local = LocalTable::default();
        let load: Value =
            serde_json::from_str(&local_answer(LocalCall::LoadCodeAssist, &pool, &local, 0))
                .unwrap();
        assert_eq!(load["currentTier"]["id"], "standard-tier");
        assert_eq!(load["cloudaicompanionProject"], POOL_PROJECT);
        assert!(load["allowedTiers"].is_array());
        let onboard: Value =
            serde_json::from_str(&local_answer(LocalCall::OnboardUser, &pool, &local, 0)).unwrap();
        assert_eq!(onboard["done"], true);
        assert_eq!(local_answer(LocalCall::Empty, &pool, &local, 0), "{}");
        assert_eq!(
            local_answer(LocalCall::RetrieveUserQuota, &pool, &local, 0),
            r#"{"buckets":[]}"#
        );
    }

    #[test]
    fn user_quota_buckets_come_from_the_gemini_accounts_only() {
        let quota = |used: f64, reset: i64| pb::QuotaSummary {
            primary: Some(pb::QuotaWindow {
                used_percent: used,
                window_minutes: 1440,
                resets_at_unix: reset,
            }),
            secondary: None,
            observed_at_unix_ms: 1,
        };
        let account = |id: &str, provider: pb::Provider, q: Option<pb::QuotaSummary>| pb::Account {
            id: id.into(),
            provider: provider as i32,
            quota: q,
            ..Default::default()
        };
        let pool = pb::Pool {
            accounts: vec![
                account("g1", pb::Provider::Gemini, Some(quota(25.0, 1_760_987_648))),
                account("g2", pb::Provider::Gemini, None),
                account("c1", pb::Provider::Codex, Some(quota(90.0, 1_760_987_648))),
            ],
            ..Default::default()
        };
        let out: Value = serde_json::from_str(&local_answer(
            LocalCall::RetrieveUserQuota,
            &pool,
            &LocalTable::default(),
            1_000_000,
        ))
        .unwrap();
        let buckets = out["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets[0]["remainingFraction"], 0.75);
        assert_eq!(buckets[0]["resetTime"], "2025-10-20T19:14:08Z");
        assert!(!out.to_string().contains("g1"));
    }

    #[test]
    fn a_429_names_its_reason_and_reset() {
        let now_ms = 1_760_987_000_000;
        let body = br#"{"error":{"code":429,"message":"You have exhausted your capacity on this model. Your quota will reset after 0s.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"QUOTA_EXHAUSTED","domain":"cloudcode-pa.googleapis.com","metadata":{"model":"gemini-2.5-pro","quotaResetDelay":"539.47ms","quotaResetTimeStamp":"2025-10-20T19:14:08Z"}},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30.2s"}]}}"#;
        let u = parse_rpc_error(body, now_ms).unwrap();
        assert_eq!(u.error_type, "QUOTA_EXHAUSTED");
        assert_eq!(u.resets_at_unix, Some(1_760_987_031));
        // Without RetryInfo: the timestamp, then the delay, then the message.
        let stamp = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","metadata":{"quotaResetTimeStamp":"2025-10-20T19:14:08.5Z","quotaResetDelay":"1s"}}]}}"#;
        let u = parse_rpc_error(stamp, now_ms).unwrap();
        assert_eq!(
            (u.error_type.as_str(), u.resets_at_unix),
            ("RATE_LIMIT_EXCEEDED", Some(1_760_987_648))
        );
        let delay = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","metadata":{"quotaResetDelay":"539.47ms"}}]}}"#;
        assert_eq!(
            parse_rpc_error(delay, now_ms).unwrap().resets_at_unix,
            Some(1_760_987_001)
        );
        let message = br#"{"error":{"code":429,"message":"Quota will reset after 12s.","status":"RESOURCE_EXHAUSTED"}}"#;
        let u = parse_rpc_error(message, now_ms).unwrap();
        assert_eq!(
            (u.error_type.as_str(), u.resets_at_unix),
            ("RESOURCE_EXHAUSTED", Some(1_760_987_012))
        );
        assert!(parse_rpc_error(br#"{"error":{"type":"rate_limit_error"}}"#, 0).is_none());
        assert!(parse_rpc_error(b"junk", 0).is_none());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-10-20T19:14:08Z"), Some(1_760_987_648));
        assert_eq!(rfc3339(1_760_987_648), "2025-10-20T19:14:08Z");
        assert_eq!(parse_rfc3339("2025-13-20T19:14:08Z"), None);
        assert_eq!(parse_rfc3339("2025-10-20T19:14:08+02:00"), None);
        assert_eq!(parse_duration_secs("0.539s"), Some(0.539));
        assert_eq!(parse_duration_secs("-1s"), None);
        assert_eq!(parse_duration_secs("5"), None);
    }
    #[test]
    fn a_429_cools_the_account_down_until_googles_reset() {
        use crate::local::LocalAccount;
        use crate::routing::Limits;
        use crate::verdict::{classify, Verdict};
        let now_ms = 1_760_987_000_000;
        let body = parse_rpc_error(
            br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"90s"}]}}"#,
            now_ms,
        )
        .unwrap();
        let v = classify(
            429,
            None,
            Some(&body),
            None,
            &LocalAccount::default(),
            &Limits::from_settings(None),
            now_ms,
        );
        assert_eq!(
            v,
            Verdict::UsageLimited {
                until_ms: 1_760_987_090_000,
                guessed: false
            }
        );
    }
}
