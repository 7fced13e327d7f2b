//! Quota evidence: what we know about each account's usage windows, from two sources.
//!
//! - **Active**: the engine's poller asks each provider's usage endpoint with the account's
//!   credential (the poller in `lifecycle` spreads these over `quota_poll_interval_secs` with
//!   jitter) and parses the answer here: Codex `/wham/usage` ([`parse_usage`]), Claude
//!   `/api/oauth/usage` ([`parse_claude_usage`]: `five_hour` is the primary window, 300
//!   minutes, `seven_day` the secondary, 10080), Gemini `retrieveUserQuota`
//!   ([`parse_gemini_quota`]: the most used bucket is the primary window, 1440 minutes).
//! - **Passive**: every outcome the data path reports may carry header windows (Codex's
//!   `x-codex-*`, Anthropic's unified rate-limit headers), and a 429 that names a reset says one
//!   window is spent until then ([`observation_from_outcome`], per provider:
//!   [`is_usage_limit`]). A Gemini account has one (daily) window, so its limit is always the
//!   primary one.
//!
//! [`merge`] keeps the freshest evidence per window (by observation time) and says whether the
//! change matters to routing: a window's used % moved to another 5 % step, it became exhausted
//! or stopped being so, its length changed, or its reset time moved by more than 5 minutes. Only
//! such changes bump the store revision (and so push a snapshot). A window whose reset time has
//! passed counts as 0 % used ([`effective_used`]) here, in the snapshot and in the filter.

use codexmesh_proto::v1 as pb;
use serde_json::Value;

use crate::records::{
    CreditsEvidence, OutcomeRecord, Provider, QuotaRecord, WindowEvidence, WindowKind,
};

/// Used % is compared in steps of this size.
pub const PERCENT_STEP: f64 = 5.0;
/// A reset time that moved by more than this is news.
pub const RESET_MOVE_SECS: i64 = 300;
/// Default window lengths when a 429 names a window we never saw.
pub const PRIMARY_MINUTES: i64 = 300;
pub const SECONDARY_MINUTES: i64 = 10_080;
/// Gemini's (Code Assist) daily quota, its only window.
pub const GEMINI_DAILY_MINUTES: i64 = 1_440;
/// Gemini 429 reasons (google.rpc ErrorInfo `reason`, else the status) that mean the
/// account's quota is spent until the reset the answer names.
pub const GEMINI_LIMIT_CODES: &[&str] = &[
    "quota_exhausted",
    "rate_limit_exceeded",
    "resource_exhausted",
];

/// One observation of an account's quota, from a poll or a reported outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub primary: Option<WindowEvidence>,
    pub secondary: Option<WindowEvidence>,
    pub credits: Option<CreditsEvidence>,
    pub plan: Option<String>,
    /// A `429 usage_limit_reached`: some window is spent until this time (0 = unknown).
    pub limit_reached_resets_at: Option<i64>,
    /// Whose account it is, when that changes how a limit is read (None: Codex's rules).
    pub provider: Option<Provider>,
    pub observed_at_ms: i64,
}

impl Observation {
    fn window(&self, kind: WindowKind) -> Option<&WindowEvidence> {
        match kind {
            WindowKind::Primary => self.primary.as_ref(),
            WindowKind::Secondary => self.secondary.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.primary.is_none()
            && self.secondary.is_none()
            && self.credits.is_none()
            && self.plan.is_none()
            && self.limit_reached_resets_at.is_none()
    }
}

/// Used % as routing should see it: 0 once the reset time has passed.
pub fn effective_used(w: &WindowEvidence, now_unix: i64) -> f64 {
    if w.resets_at_unix > 0 && w.resets_at_unix <= now_unix {
        0.0
    } else {
        w.used_percent.clamp(0.0, 100.0)
    }
}

fn step(used: f64) -> i64 {
    (used / PERCENT_STEP).floor() as i64
}

/// Whether replacing `old` by `new` changes what routing sees.
pub fn window_change_matters(old: Option<&WindowEvidence>, new: &WindowEvidence, now: i64) -> bool {
    let Some(old) = old else {
        return true;
    };
    let (a, b) = (effective_used(old, now), effective_used(new, now));
    step(a) != step(b)
        || (a >= 100.0) != (b >= 100.0)
        || old.window_minutes != new.window_minutes
        || (old.resets_at_unix - new.resets_at_unix).abs() > RESET_MOVE_SECS
}

/// Which window a `usage_limit_reached` is about: one the same answer reports spent (the one
/// resetting last when both are), else one whose known reset time matches, else by distance:
/// more than a primary window away means the weekly one.
fn limit_window(
    current: Option<&QuotaRecord>,
    obs: &Observation,
    resets_at: i64,
    now: i64,
) -> WindowKind {
    if obs.provider == Some(Provider::Gemini) {
        return WindowKind::Primary;
    }
    let spent: Vec<(WindowKind, i64)> = [WindowKind::Primary, WindowKind::Secondary]
        .into_iter()
        .filter_map(|k| {
            obs.window(k)
                .filter(|w| w.used_percent >= 100.0)
                .map(|w| (k, w.resets_at_unix))
        })
        .collect();
    if let Some((k, _)) = spent.iter().max_by_key(|(_, r)| *r) {
        return *k;
    }
    if resets_at > 0 {
        for k in [WindowKind::Secondary, WindowKind::Primary] {
            let known = obs
                .window(k)
                .or_else(|| current.and_then(|c| c.window(k)))
                .map(|w| w.resets_at_unix);
            if known.is_some_and(|r| r > 0 && (r - resets_at).abs() <= 120) {
                return k;
            }
        }
        if resets_at - now > PRIMARY_MINUTES * 60 {
            return WindowKind::Secondary;
        }
    }
    WindowKind::Primary
}

/// The merged record, whether anything changed at all, and whether it matters to routing.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub record: QuotaRecord,
    pub changed: bool,
    pub matters: bool,
}

/// Merges an observation into the current evidence: per window the fresher one wins.
pub fn merge(current: Option<&QuotaRecord>, obs: &Observation, now_unix: i64) -> Merged {
    let mut record = current.cloned().unwrap_or_default();
    let mut changed = false;
    let mut matters = false;
    let mut apply = |record: &mut QuotaRecord, kind: WindowKind, new: WindowEvidence| {
        let slot = record.window_mut(kind);
        if slot
            .as_ref()
            .is_some_and(|old| old.observed_at_ms > new.observed_at_ms)
        {
            return; // stale
        }
        if slot.as_ref() == Some(&new) {
            return;
        }
        matters |= window_change_matters(slot.as_ref(), &new, now_unix);
        changed = true;
        *slot = Some(new);
    };
    for kind in [WindowKind::Primary, WindowKind::Secondary] {
        if let Some(w) = obs.window(kind) {
            apply(&mut record, kind, w.clone());
        }
    }
    if let Some(resets_at) = obs.limit_reached_resets_at {
        let kind = limit_window(current, obs, resets_at, now_unix);
        let known = record.window(kind).cloned();
        let already = obs.window(kind).is_some_and(|w| w.used_percent >= 100.0);
        if !already {
            let default_minutes = match (kind, obs.provider) {
                (_, Some(Provider::Gemini)) => GEMINI_DAILY_MINUTES,
                (WindowKind::Primary, _) => PRIMARY_MINUTES,
                (WindowKind::Secondary, _) => SECONDARY_MINUTES,
            };
            apply(
                &mut record,
                kind,
                WindowEvidence {
                    used_percent: 100.0,
                    window_minutes: known.as_ref().map_or(default_minutes, |w| w.window_minutes),
                    resets_at_unix: if resets_at > 0 {
                        resets_at
                    } else {
                        known.as_ref().map_or(0, |w| w.resets_at_unix)
                    },
                    observed_at_ms: obs.observed_at_ms,
                    source: "limit".to_owned(),
                },
            );
        }
    }
    if let Some(c) = &obs.credits {
        let fresher = record
            .credits
            .as_ref()
            .is_none_or(|old| old.observed_at_ms <= c.observed_at_ms);
        if fresher && record.credits.as_ref() != Some(c) {
            record.credits = Some(c.clone());
            changed = true;
        }
    }
    if let Some(plan) = &obs.plan {
        if record.plan_observed_at_ms <= obs.observed_at_ms && record.plan.as_ref() != Some(plan) {
            record.plan = Some(plan.clone());
            record.plan_observed_at_ms = obs.observed_at_ms;
            changed = true;
        }
    }
    Merged {
        record,
        changed,
        matters,
    }
}

/// Whether a reported attempt says the account's quota is spent (until `resets_at_unix`, when
/// the answer named it):
/// - every provider: a 429 `usage_limit_reached` (Codex's, and what the data path reports for
///   a limit it recognised);
/// - Claude: any other 429 that names a reset (Anthropic's unified headers or `retry-after`);
///   a 429 without one is request-scoped (fast-mode credits, say) and no evidence;
/// - Gemini: a 429 whose google.rpc reason is [`GEMINI_LIMIT_CODES`] (not
///   `MODEL_CAPACITY_EXHAUSTED`: Google's capacity, not the account's quota).
pub fn is_usage_limit(o: &OutcomeRecord, provider: Provider) -> bool {
    if o.status != 429 {
        return false;
    }
    let code = o.error_code.as_deref().unwrap_or_default();
    if code.eq_ignore_ascii_case("usage_limit_reached") {
        return true;
    }
    match provider {
        Provider::Codex => false,
        Provider::Claude => o.resets_at_unix.is_some_and(|r| r > 0),
        Provider::Gemini => GEMINI_LIMIT_CODES
            .iter()
            .any(|c| c.eq_ignore_ascii_case(code)),
    }
}

/// Passive evidence from one reported outcome of a Codex account, if it carries any.
pub fn observation_from_outcome(o: &OutcomeRecord, received_ms: i64) -> Option<Observation> {
    observation_from_outcome_of(o, received_ms, Provider::Codex)
}

/// Passive evidence from one reported outcome of an account of `provider`, if it carries any.
pub fn observation_from_outcome_of(
    o: &OutcomeRecord,
    received_ms: i64,
    provider: Provider,
) -> Option<Observation> {
    let observed_at_ms = o
        .quota_observed_at_ms
        .filter(|t| *t > 0)
        .or_else(|| {
            (o.started_at_ms > 0).then(|| o.started_at_ms.saturating_add(o.latency_ms.max(0)))
        })
        .unwrap_or(received_ms)
        // A clock far ahead must not make its evidence win forever.
        .min(received_ms);
    let window = |w: Option<crate::records::QuotaWindowRecord>| {
        w.map(|w| WindowEvidence {
            used_percent: if w.used_percent.is_finite() {
                w.used_percent.clamp(0.0, 100.0)
            } else {
                0.0
            },
            window_minutes: w.window_minutes,
            resets_at_unix: w.resets_at_unix,
            observed_at_ms,
            source: "headers".to_owned(),
        })
    };
    let primary = window(o.primary);
    let secondary = window(o.secondary);
    let headers_seen = primary.is_some() || secondary.is_some();
    let limit = is_usage_limit(o, provider);
    let obs = Observation {
        credits: (headers_seen || o.credits_balance.is_some()).then(|| CreditsEvidence {
            has_credits: o.credits_has_credits,
            unlimited: o.credits_unlimited,
            balance: o.credits_balance.clone(),
            observed_at_ms,
        }),
        primary,
        secondary,
        plan: o.plan.clone().filter(|p| !p.is_empty()),
        limit_reached_resets_at: limit.then(|| o.resets_at_unix.unwrap_or(0)),
        provider: (provider != Provider::Codex).then_some(provider),
        observed_at_ms,
    };
    (!obs.is_empty()).then_some(obs)
}

/// Parses a `/wham/usage` answer:
/// `{plan_type, rate_limit:{primary_window:{used_percent, limit_window_seconds,
/// reset_after_seconds, reset_at}, secondary_window}, credits:{has_credits, unlimited, balance}}`.
pub fn parse_usage(body: &Value, observed_at_ms: i64) -> Option<Observation> {
    let now_unix = observed_at_ms / 1000;
    let num = |v: &Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let window = |w: &Value| -> Option<WindowEvidence> {
        let used = num(w.get("used_percent")?)?;
        let secs = w.get("limit_window_seconds").and_then(num).unwrap_or(0.0);
        let resets_at = w
            .get("reset_at")
            .and_then(num)
            .map(|r| r as i64)
            .filter(|r| *r > 0)
            .or_else(|| {
                w.get("reset_after_seconds")
                    .and_then(num)
                    .map(|s| now_unix.saturating_add(s as i64))
            })
            .unwrap_or(0);
        Some(WindowEvidence {
            used_percent: if used.is_finite() {
                used.clamp(0.0, 100.0)
            } else {
                0.0
            },
            window_minutes: (secs / 60.0).round() as i64,
            resets_at_unix: resets_at,
            observed_at_ms,
            source: "poll".to_owned(),
        })
    };
    let body = body.as_object()?;
    let rl = body.get("rate_limit");
    let credits = body.get("credits").and_then(Value::as_object).map(|c| {
        let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
        CreditsEvidence {
            has_credits: flag("has_credits"),
            unlimited: flag("unlimited"),
            balance: c.get("balance").and_then(|b| match b {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
            observed_at_ms,
        }
    });
    let obs = Observation {
        primary: rl.and_then(|r| r.get("primary_window")).and_then(window),
        secondary: rl.and_then(|r| r.get("secondary_window")).and_then(window),
        credits,
        plan: body
            .get("plan_type")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
        limit_reached_resets_at: None,
        provider: None,
        observed_at_ms,
    };
    (!obs.is_empty()).then_some(obs)
}

fn percent(used: f64) -> f64 {
    if used.is_finite() {
        used.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Parses a Claude `/api/oauth/usage` answer: `{five_hour:{utilization, resets_at},
/// seven_day:{utilization, resets_at}, ...}` with `utilization` in percent (0-100) and
/// `resets_at` RFC 3339 (or null). `five_hour` is the primary window (300 minutes),
/// `seven_day` the secondary (10080); the per-model and extra-usage entries are not windows
/// routing weighs.
pub fn parse_claude_usage(body: &Value, observed_at_ms: i64) -> Option<Observation> {
    let window = |w: &Value, minutes: i64| -> Option<WindowEvidence> {
        let used = number(w.get("utilization")?)?;
        let resets_at = w
            .get("resets_at")
            .and_then(Value::as_str)
            .and_then(crate::util::parse_rfc3339_ms)
            .map_or(0, |ms| ms.div_euclid(1000));
        Some(WindowEvidence {
            used_percent: percent(used),
            window_minutes: minutes,
            resets_at_unix: resets_at,
            observed_at_ms,
            source: "poll".to_owned(),
        })
    };
    let body = body.as_object()?;
    let obs = Observation {
        primary: body
            .get("five_hour")
            .and_then(|w| window(w, PRIMARY_MINUTES)),
        secondary: body
            .get("seven_day")
            .and_then(|w| window(w, SECONDARY_MINUTES)),
        observed_at_ms,
        ..Observation::default()
    };
    (!obs.is_empty()).then_some(obs)
}

/// Parses a Gemini Code Assist `retrieveUserQuota` answer: `{buckets:[{modelId, tokenType,
/// remainingAmount, remainingFraction, resetTime}]}`. The account's primary window (1440
/// minutes, the daily quota) is its most used bucket: used % = (1 - remainingFraction) × 100,
/// reset from that bucket's `resetTime` (RFC 3339).
pub fn parse_gemini_quota(body: &Value, observed_at_ms: i64) -> Option<Observation> {
    let buckets = body.get("buckets")?.as_array()?;
    let most_used = buckets
        .iter()
        .filter_map(|b| {
            let remaining = number(b.get("remainingFraction")?)?;
            let resets_at = b
                .get("resetTime")
                .and_then(Value::as_str)
                .and_then(crate::util::parse_rfc3339_ms)
                .map_or(0, |ms| ms.div_euclid(1000));
            Some((percent((1.0 - remaining) * 100.0), resets_at))
        })
        // The most used; among equals the one resetting last (it stays spent longest).
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))?;
    Some(Observation {
        primary: Some(WindowEvidence {
            used_percent: most_used.0,
            window_minutes: GEMINI_DAILY_MINUTES,
            resets_at_unix: most_used.1,
            observed_at_ms,
            source: "poll".to_owned(),
        }),
        provider: Some(Provider::Gemini),
        observed_at_ms,
        ..Observation::default()
    })
}

/// The snapshot's view: passed resets are sent as 0 %.
pub fn summary(q: &QuotaRecord, now_unix: i64) -> pb::QuotaSummary {
    let window = |w: &WindowEvidence| pb::QuotaWindow {
        used_percent: effective_used(w, now_unix),
        window_minutes: u32::try_from(w.window_minutes.max(0)).unwrap_or(u32::MAX),
        resets_at_unix: w.resets_at_unix,
    };
    let observed = [q.primary.as_ref(), q.secondary.as_ref()]
        .into_iter()
        .flatten()
        .map(|w| w.observed_at_ms)
        .max()
        .unwrap_or(0);
    pb::QuotaSummary {
        primary: q.primary.as_ref().map(window),
        secondary: q.secondary.as_ref().map(window),
        observed_at_unix_ms: observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(used: f64, resets_at: i64, observed: i64) -> WindowEvidence {
        WindowEvidence {
            used_percent: used,
            window_minutes: 300,
            resets_at_unix: resets_at,
            observed_at_ms: observed,
            source: "headers".into(),
        }
    }

    fn obs_primary(used: f64, resets_at: i64, observed: i64) -> Observation {
        Observation {
            primary: Some(w(used, resets_at, observed)),
            observed_at_ms: observed,
            ..Observation::default()
        }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn freshest_evidence_wins_per_window() {
        let first = merge(None, &obs_primary(10.0, NOW + 100, 2000), NOW);
        assert!(first.changed && first.matters);
        // Older evidence is ignored.
        let stale = merge(
            Some(&first.record),
            &obs_primary(50.0, NOW + 100, 1000),
            NOW,
        );
        assert!(!stale.changed);
        assert_eq!(
            stale.record.primary.as_ref().map(|w| w.used_percent),
            Some(10.0)
        );
        // Newer evidence in the same 5 % step: stored, but does not matter to routing.
        let small = merge(
            Some(&first.record),
            &obs_primary(13.0, NOW + 100, 3000),
            NOW,
        );
        assert!(small.changed && !small.matters);
        // Crossing a step matters.
        let big = merge(
            Some(&small.record),
            &obs_primary(15.5, NOW + 100, 4000),
            NOW,
        );
        assert!(big.changed && big.matters);
        // The secondary window is untouched by primary evidence.
        assert!(big.record.secondary.is_none());
    }

    #[test]
    fn exhaustion_and_reset_matter() {
        let base = merge(None, &obs_primary(97.0, NOW + 100, 1), NOW).record;
        let full = merge(Some(&base), &obs_primary(100.0, NOW + 100, 2), NOW);
        assert!(full.matters);
        // The reset time passed: effectively 0 %.
        assert_eq!(effective_used(&w(100.0, NOW - 1, 0), NOW), 0.0);
        assert_eq!(effective_used(&w(100.0, 0, 0), NOW), 100.0);
        let moved = merge(Some(&base), &obs_primary(97.0, NOW + 100 + 3600, 3), NOW);
        assert!(
            moved.matters,
            "a new window (reset moved by an hour) matters"
        );
    }

    #[test]
    fn usage_limit_marks_the_right_window() {
        // Known secondary reset matches: the weekly window is spent.
        let mut current = QuotaRecord {
            primary: Some(w(40.0, NOW + 3600, 1)),
            secondary: Some(WindowEvidence {
                window_minutes: 10_080,
                ..w(90.0, NOW + 86_400, 1)
            }),
            ..QuotaRecord::default()
        };
        let hit = Observation {
            limit_reached_resets_at: Some(NOW + 86_400),
            observed_at_ms: 5,
            ..Observation::default()
        };
        let m = merge(Some(&current), &hit, NOW);
        assert!(m.matters);
        let s = m.record.secondary.clone().unwrap_or_default();
        assert_eq!((s.used_percent, s.window_minutes), (100.0, 10_080));
        assert_eq!(s.source, "limit");
        assert_eq!(
            m.record.primary.as_ref().map(|p| p.used_percent),
            Some(40.0)
        );
        // Nothing known: a near reset means the 5-hour window.
        current.primary = None;
        current.secondary = None;
        let near = Observation {
            limit_reached_resets_at: Some(NOW + 600),
            observed_at_ms: 5,
            ..Observation::default()
        };
        let m = merge(Some(&current), &near, NOW);
        let p = m.record.primary.unwrap_or_default();
        assert_eq!(
            (p.used_percent, p.resets_at_unix, p.window_minutes),
            (100.0, NOW + 600, 300)
        );
        let far = Observation {
            limit_reached_resets_at: Some(NOW + 3 * 86_400),
            observed_at_ms: 5,
            ..Observation::default()
        };
        assert!(merge(None, &far, NOW).record.secondary.is_some());
        // Headers on the same 429 already say which one is spent.
        let with_headers = Observation {
            secondary: Some(w(100.0, NOW + 999, 5)),
            primary: Some(w(20.0, NOW + 100, 5)),
            limit_reached_resets_at: Some(NOW + 999),
            observed_at_ms: 5,
            ..Observation::default()
        };
        let m = merge(None, &with_headers, NOW);
        assert_eq!(m.record.primary.map(|p| p.used_percent), Some(20.0));
        assert_eq!(m.record.secondary.map(|p| p.used_percent), Some(100.0));
    }

    #[test]
    fn outcome_evidence() {
        let o = OutcomeRecord {
            status: 429,
            error_code: Some("usage_limit_reached".into()),
            resets_at_unix: Some(NOW + 60),
            started_at_ms: 1000,
            latency_ms: 20,
            plan: Some("plus".into()),
            ..OutcomeRecord::default()
        };
        let obs = observation_from_outcome(&o, 5000).unwrap_or_default();
        assert_eq!(obs.limit_reached_resets_at, Some(NOW + 60));
        assert_eq!(obs.observed_at_ms, 1020);
        assert_eq!(obs.plan.as_deref(), Some("plus"));
        assert!(obs.credits.is_none());
        let plain = OutcomeRecord {
            status: 200,
            ..OutcomeRecord::default()
        };
        assert!(observation_from_outcome(&plain, 1).is_none());
        let headers = OutcomeRecord {
            status: 200,
            primary: Some(crate::records::QuotaWindowRecord {
                used_percent: 42.0,
                window_minutes: 300,
                resets_at_unix: NOW,
            }),
            quota_observed_at_ms: Some(7_000),
            credits_has_credits: true,
            ..OutcomeRecord::default()
        };
        let obs = observation_from_outcome(&headers, 9_000).unwrap_or_default();
        assert_eq!(obs.primary.as_ref().map(|p| p.used_percent), Some(42.0));
        assert_eq!(obs.observed_at_ms, 7_000);
        assert!(obs.credits.as_ref().is_some_and(|c| c.has_credits));
        // A clock ahead of ours is capped at the receive time.
        let ahead = OutcomeRecord {
            quota_observed_at_ms: Some(99_000),
            ..headers
        };
        assert_eq!(
            observation_from_outcome(&ahead, 9_000).map(|o| o.observed_at_ms),
            Some(9_000)
        );
    }

    #[test]
    fn parses_the_usage_payload() {
        let body = json!({
            "plan_type": "plus",
            "rate_limit": {
                "allowed": true, "limit_reached": false,
                "primary_window": {"used_percent": 42, "limit_window_seconds": 18000,
                                   "reset_after_seconds": 100, "reset_at": NOW + 100},
                "secondary_window": {"used_percent": 7.5, "limit_window_seconds": 604800,
                                     "reset_after_seconds": 50}
            },
            "credits": {"has_credits": true, "unlimited": false, "balance": "12.5"},
            "additional_rate_limits": null
        });
        let o = parse_usage(&body, NOW * 1000).unwrap_or_default();
        let p = o.primary.unwrap_or_default();
        assert_eq!(
            (p.used_percent, p.window_minutes, p.resets_at_unix),
            (42.0, 300, NOW + 100)
        );
        assert_eq!(p.source, "poll");
        let s = o.secondary.unwrap_or_default();
        assert_eq!(
            (s.used_percent, s.window_minutes, s.resets_at_unix),
            (7.5, 10_080, NOW + 50)
        );
        assert_eq!(o.plan.as_deref(), Some("plus"));
        assert_eq!(o.credits.and_then(|c| c.balance).as_deref(), Some("12.5"));
        assert!(parse_usage(&json!({"detail": "x"}), 0).is_none());
        assert!(parse_usage(&json!([1]), 0).is_none());
    }

    #[test]
    fn snapshot_summary_zeroes_passed_resets() {
        let q = QuotaRecord {
            primary: Some(w(100.0, NOW - 5, 10)),
            secondary: Some(w(60.0, NOW + 5, 20)),
            ..QuotaRecord::default()
        };
        let s = summary(&q, NOW);
        assert_eq!(s.primary.map(|p| p.used_percent), Some(0.0));
        assert_eq!(s.secondary.map(|p| p.used_percent), Some(60.0));
        assert_eq!(s.observed_at_unix_ms, 20);
    }

    #[test]
    fn parses_claude_usage() {
        let body = json!({
            "five_hour": {"utilization": 42.5, "resets_at": "2027-01-15T08:15:00.123456+00:00"},
            "seven_day": {"utilization": 7, "resets_at": null},
            "seven_day_opus": null,
            "extra_usage": {"is_enabled": false, "utilization": null}
        });
        let o = parse_claude_usage(&body, NOW * 1000).unwrap_or_default();
        let p = o.primary.unwrap_or_default();
        assert_eq!(
            (p.used_percent, p.window_minutes, p.resets_at_unix),
            (42.5, 300, 1_800_000_900)
        );
        assert_eq!(p.source, "poll");
        let s = o.secondary.unwrap_or_default();
        assert_eq!(
            (s.used_percent, s.window_minutes, s.resets_at_unix),
            (7.0, 10_080, 0)
        );
        // Out-of-range numbers are clamped; nothing usable is no observation.
        let o = parse_claude_usage(&json!({"five_hour": {"utilization": 250}}), 0);
        assert_eq!(
            o.and_then(|o| o.primary).map(|p| p.used_percent),
            Some(100.0)
        );
        assert!(parse_claude_usage(&json!({"five_hour": null}), 0).is_none());
        assert!(parse_claude_usage(&json!({"error": {"type": "x"}}), 0).is_none());
        assert!(parse_claude_usage(&json!([1]), 0).is_none());
    }

    #[test]
    fn parses_gemini_quota_as_the_most_used_bucket() {
        let body = json!({"buckets": [
            {"modelId": "gemini-2.5-pro", "tokenType": "REQUESTS", "remainingAmount": "60",
             "remainingFraction": 0.6, "resetTime": "2027-01-15T08:15:00Z"},
            {"modelId": "gemini-2.5-flash", "tokenType": "REQUESTS",
             "remainingFraction": 0.25, "resetTime": "2027-01-15T09:00:00Z"},
            {"modelId": "broken"}
        ]});
        let o = parse_gemini_quota(&body, NOW * 1000).unwrap_or_default();
        let p = o.primary.unwrap_or_default();
        assert_eq!(
            (p.used_percent, p.window_minutes, p.resets_at_unix),
            (75.0, 1_440, 1_800_003_600)
        );
        assert!(o.secondary.is_none());
        assert_eq!(o.provider, Some(Provider::Gemini));
        assert!(parse_gemini_quota(&json!({"buckets": []}), 0).is_none());
        assert!(parse_gemini_quota(&json!({}), 0).is_none());
    }

    #[test]
    fn provider_limits_cool_the_account_down_until_the_reset() {
        let outcome = |code: &str, resets: Option<i64>| OutcomeRecord {
            status: 429,
            error_code: (!code.is_empty()).then(|| code.to_owned()),
            resets_at_unix: resets,
            started_at_ms: 1000,
            ..OutcomeRecord::default()
        };
        // Gemini: a QUOTA_EXHAUSTED names the daily window, whatever the distance.
        let o = outcome("QUOTA_EXHAUSTED", Some(NOW + 9 * 3600));
        assert!(is_usage_limit(&o, Provider::Gemini));
        assert!(!is_usage_limit(&o, Provider::Codex));
        let obs = observation_from_outcome_of(&o, 5000, Provider::Gemini).unwrap_or_default();
        let m = merge(None, &obs, NOW);
        let p = m.record.primary.clone().unwrap_or_default();
        assert_eq!(
            (p.used_percent, p.window_minutes, p.resets_at_unix),
            (100.0, 1_440, NOW + 9 * 3600)
        );
        assert!(m.record.secondary.is_none() && m.matters);
        assert!(!is_usage_limit(
            &outcome("MODEL_CAPACITY_EXHAUSTED", Some(NOW + 60)),
            Provider::Gemini
        ));
        // Claude: a 429 with a reset is the account's limit; far away means the 7-day window.
        let o = outcome("rate_limit_error", Some(NOW + 3 * 86_400));
        assert!(is_usage_limit(&o, Provider::Claude));
        let obs = observation_from_outcome_of(&o, 5000, Provider::Claude).unwrap_or_default();
        let s = merge(None, &obs, NOW).record.secondary.unwrap_or_default();
        assert_eq!((s.used_percent, s.window_minutes), (100.0, 10_080));
        let o = outcome("rate_limit_error", Some(NOW + 600));
        let obs = observation_from_outcome_of(&o, 5000, Provider::Claude).unwrap_or_default();
        let p = merge(None, &obs, NOW).record.primary.unwrap_or_default();
        assert_eq!(
            (p.used_percent, p.window_minutes, p.resets_at_unix),
            (100.0, 300, NOW + 600)
        );
        // ... and one without a reset is request-scoped: no evidence.
        assert!(!is_usage_limit(
            &outcome("rate_limit_error", None),
            Provider::Claude
        ));
        assert!(observation_from_outcome_of(
            &outcome("rate_limit_error", None),
            5000,
            Provider::Claude
        )
        .is_none());
        // Codex keeps its rule.
        assert!(is_usage_limit(
            &outcome("usage_limit_reached", None),
            Provider::Codex
        ));
        assert!(!is_usage_limit(
            &outcome("rate_limit_exceeded", Some(NOW + 60)),
            Provider::Codex
        ));
    }
}
