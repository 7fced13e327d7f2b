//! Passive quota evidence: what an upstream answer says about its account's limits.

use crate::pb;

/// Reads the `x-codex-primary-*` / `x-codex-secondary-*` headers. `header` looks a name up
/// (lower-case). Returns None when the answer carried no quota headers at all.
pub fn quota_from_headers<'a, F>(header: F, now_unix_ms: i64) -> Option<pb::QuotaSummary>
where
    F: Fn(&str) -> Option<&'a str>,
{
    let window = |family: &str, now_unix: i64| -> Option<pb::QuotaWindow> {
        let used: f64 = header(&format!("x-codex-{family}-used-percent"))?
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())?;
        let window_minutes = header(&format!("x-codex-{family}-window-minutes"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let resets_at_unix = header(&format!("x-codex-{family}-reset-at"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .or_else(|| {
                header(&format!("x-codex-{family}-reset-after-seconds"))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .map(|after| now_unix.saturating_add(after))
            })
            .unwrap_or(0);
        Some(pb::QuotaWindow {
            used_percent: used.clamp(0.0, 100.0),
            window_minutes,
            resets_at_unix,
        })
    };
    let now_unix = now_unix_ms / 1000;
    let primary = window("primary", now_unix);
    let secondary = window("secondary", now_unix);
    if primary.is_none() && secondary.is_none() {
        return None;
    }
    Some(pb::QuotaSummary {
        primary,
        secondary,
        observed_at_unix_ms: now_unix_ms,
    })
}

/// What a `429 usage_limit_reached` body says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageLimit {
    pub error_type: String,
    pub resets_at_unix: Option<i64>,
    pub plan: Option<String>,
}

/// Parses an upstream error body (`{"error":{"type"|"code",..,"resets_at"|"resets_in_seconds"}}`).
pub fn parse_error_body(body: &[u8], now_unix_ms: i64) -> Option<UsageLimit> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let error_type = error
        .get("type")
        .or_else(|| error.get("code"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let resets_at_unix = error.get("resets_at").and_then(|v| v.as_i64()).or_else(|| {
        error
            .get("resets_in_seconds")
            .and_then(|v| v.as_i64())
            .map(|s| (now_unix_ms / 1000).saturating_add(s))
    });
    let plan = error
        .get("plan_type")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Some(UsageLimit {
        error_type,
        resets_at_unix,
        plan,
    })
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
    fn reads_both_windows() {
        let q = quota_from_headers(
            headers(&[
                ("x-codex-primary-used-percent", "42.5"),
                ("x-codex-primary-window-minutes", "300"),
                ("x-codex-primary-reset-at", "1700000000"),
                ("x-codex-secondary-used-percent", "7"),
                ("x-codex-secondary-window-minutes", "10080"),
                ("x-codex-secondary-reset-after-seconds", "60"),
            ]),
            1_000_000,
        )
        .unwrap();
        let p = q.primary.unwrap();
        assert_eq!(
            (p.used_percent, p.window_minutes, p.resets_at_unix),
            (42.5, 300, 1_700_000_000)
        );
        let s = q.secondary.unwrap();
        assert_eq!(
            (s.used_percent, s.window_minutes, s.resets_at_unix),
            (7.0, 10080, 1060)
        );
        assert_eq!(q.observed_at_unix_ms, 1_000_000);
    }

    #[test]
    fn no_headers_no_evidence_and_junk_is_ignored() {
        assert!(quota_from_headers(headers(&[]), 0).is_none());
        assert!(
            quota_from_headers(headers(&[("x-codex-primary-used-percent", "NaN")]), 0).is_none()
        );
        let q = quota_from_headers(headers(&[("x-codex-primary-used-percent", "250")]), 0).unwrap();
        assert_eq!(q.primary.unwrap().used_percent, 100.0);
    }

    #[test]
    fn usage_limit_body() {
        let body = br#"{"error":{"type":"usage_limit_reached","message":"x","plan_type":"plus","resets_at":1700000123}}"#;
        let u = parse_error_body(body, 0).unwrap();
        assert_eq!(u.error_type, "usage_limit_reached");
        assert_eq!(u.resets_at_unix, Some(1_700_000_123));
        assert_eq!(u.plan.as_deref(), Some("plus"));
        let rel = br#"{"error":{"code":"usage_limit_reached","resets_in_seconds":30}}"#;
        assert_eq!(
            parse_error_body(rel, 10_000).unwrap().resets_at_unix,
            Some(40)
        );
        assert!(parse_error_body(b"not json", 0).is_none());
        assert!(parse_error_body(br#"{"detail":"x"}"#, 0).is_none());
    }
}
