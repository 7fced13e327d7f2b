//! Account health: a 0–100 score per account from the outcomes the data path reports, and the
//! activity counters shown by `status`.
//!
//! Each reported attempt is classified ([`classify`]):
//! - **success**: status 2xx/3xx and no `error_source` of `upstream`/`transport` (a stream the
//!   filter saw fail after a 200 carries one);
//! - **quota**: 429: quota evidence, never a health penalty (the quota view handles it);
//! - **neutral**: the client's doing: `error_source = "client"` (a client error, or an attempt
//!   cut short because the client hung up: `error_code = "client_cancelled"`), or a 4xx other
//!   than 401/403/408/429 (400 `Unsupported parameter`, 404, 413 ...);
//! - **failure**: everything that says the account or its upstream path is unwell: 5xx, 401,
//!   403, 408, status 0 (reset / connect failure), or any `upstream`/`transport` error source.
//!   The gateway's router retries all of these on another account, so every failure also forced
//!   a fallback.
//!
//! Score ([`score`]) over the last `health_window_secs`, with S successes, F failures, R failures
//! in the most recent quarter of the window, and L the mean latency to the first byte of the
//! answer over the successes (ms):
//!
//! ```text
//! rate    = (S + 2) / (S + F + 2)                 two virtual successes: no data scores 1
//! latency = 1 - clamp((L - 2000) / 18000, 0, 1)   1 up to 2 s, 0 from 20 s; 1 without successes
//! recent  = 1 - min(R, 5) / 5                     recent failures that forced a fallback
//! score   = round(100 × (0.70 × rate + 0.15 × latency + 0.15 × recent))
//! ```
//!
//! So an account with no data, or only successes at normal latency, scores 100; one whose
//! every recent attempt failed drops under 30 and climbs back as successes arrive and the
//! failures age out of the window. The published score (the snapshot's `Account.health`) only
//! moves when it changed by at least [`PUBLISH_STEP`] points or reached/left 100, so a busy
//! gateway does not push a snapshot per report.

use std::collections::HashMap;

use serde::Serialize;

use crate::records::OutcomeGroup;

/// The published score moves when the live one differs by at least this much.
pub const PUBLISH_STEP: u32 = 5;

/// The recent part of the window that counts towards `recent` (a quarter of it).
pub const RECENT_FRACTION: i64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    Failure,
    Quota,
    Neutral,
}

/// See the module documentation.
pub fn classify(status: i64, error_source: Option<&str>) -> Class {
    let source = error_source.unwrap_or("");
    if source.eq_ignore_ascii_case("client") {
        return Class::Neutral;
    }
    let upstream_error =
        source.eq_ignore_ascii_case("upstream") || source.eq_ignore_ascii_case("transport");
    match status {
        429 => Class::Quota,
        200..=399 if !upstream_error => Class::Success,
        200..=399 => Class::Failure,
        401 | 403 | 408 => Class::Failure,
        400..=499 if upstream_error => Class::Failure,
        400..=499 => Class::Neutral,
        _ => Class::Failure, // 5xx, 0 (no answer), anything odd
    }
}

/// One account's outcomes in the window, classified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WindowStats {
    /// Every attempt (all classes).
    pub requests: i64,
    pub successes: i64,
    pub failures: i64,
    /// Failures in the recent quarter of the window.
    pub recent_failures: i64,
    /// 429s.
    pub quota_limited: i64,
    /// Successes that served a request another account had failed first.
    pub fallbacks_served: i64,
    /// Mean latency of the successes (ms), 0 without successes.
    pub avg_latency_ms: i64,
    #[serde(skip)]
    latency_sum_ms: i64,
}

impl WindowStats {
    fn add(&mut self, g: &OutcomeGroup) {
        self.requests += g.count;
        match classify(g.status, g.error_source.as_deref()) {
            Class::Success => {
                self.successes += g.count;
                self.latency_sum_ms += g.latency_sum_ms;
                if g.fallback {
                    self.fallbacks_served += g.count;
                }
            }
            Class::Failure => {
                self.failures += g.count;
                if g.recent {
                    self.recent_failures += g.count;
                }
            }
            Class::Quota => self.quota_limited += g.count,
            Class::Neutral => {}
        }
        self.avg_latency_ms = if self.successes > 0 {
            self.latency_sum_ms / self.successes
        } else {
            0
        };
    }
}

/// Folds grouped outcome rows into per-account window statistics.
pub fn window_stats(groups: &[OutcomeGroup]) -> HashMap<String, WindowStats> {
    let mut out: HashMap<String, WindowStats> = HashMap::new();
    for g in groups {
        out.entry(g.account_id.clone()).or_default().add(g);
    }
    out
}

/// The health score (see the module documentation).
pub fn score(w: &WindowStats) -> u32 {
    let s = w.successes.max(0) as f64;
    let f = w.failures.max(0) as f64;
    let rate = (s + 2.0) / (s + f + 2.0);
    let latency = if w.successes > 0 {
        1.0 - ((w.avg_latency_ms as f64 - 2000.0) / 18_000.0).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let recent = 1.0 - (w.recent_failures.clamp(0, 5) as f64) / 5.0;
    let v = 100.0 * (0.70 * rate + 0.15 * latency + 0.15 * recent);
    // In 0..=100 by construction; the clamp guards the cast.
    v.round().clamp(0.0, 100.0) as u32
}

/// Whether a live score is different enough from the published one to publish it.
pub fn should_publish(published: u32, live: u32) -> bool {
    published.abs_diff(live) >= PUBLISH_STEP || ((published == 100) != (live == 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(status: i64, source: Option<&str>, count: i64, recent: bool) -> OutcomeGroup {
        OutcomeGroup {
            account_id: "a".into(),
            status,
            error_source: source.map(str::to_owned),
            fallback: false,
            recent,
            count,
            latency_sum_ms: 300 * count,
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify(200, None), Class::Success);
        assert_eq!(classify(200, Some("upstream")), Class::Failure);
        assert_eq!(classify(429, None), Class::Quota);
        assert_eq!(classify(400, None), Class::Neutral);
        assert_eq!(classify(404, None), Class::Neutral);
        assert_eq!(classify(500, Some("client")), Class::Neutral);
        assert_eq!(classify(401, None), Class::Failure);
        assert_eq!(classify(503, Some("upstream")), Class::Failure);
        assert_eq!(classify(0, Some("transport")), Class::Failure);
        assert_eq!(classify(0, None), Class::Failure);
        // An attempt the client hung up on (the filter's client_cancelled): nobody's failure.
        assert_eq!(classify(0, Some("client")), Class::Neutral);
    }

    #[test]
    fn no_data_and_clean_traffic_score_100() {
        assert_eq!(score(&WindowStats::default()), 100);
        let w = window_stats(&[group(200, None, 50, true)]);
        assert_eq!(score(&w["a"]), 100);
        // Client errors and 429s do not count against the account.
        let w = window_stats(&[
            group(200, None, 5, true),
            group(400, None, 20, true),
            group(429, None, 20, true),
        ]);
        assert_eq!(score(&w["a"]), 100);
        assert_eq!(w["a"].requests, 45);
        assert_eq!(w["a"].quota_limited, 20);
    }

    #[test]
    fn failures_drop_the_score_and_it_recovers() {
        let failing = window_stats(&[group(503, Some("upstream"), 10, true)]);
        let bad = score(&failing["a"]);
        assert!(bad < 30, "{bad}");
        // The same failures, no longer recent, with successes since: better.
        let later = window_stats(&[
            group(503, Some("upstream"), 10, false),
            group(200, None, 20, true),
        ]);
        let mid = score(&later["a"]);
        assert!(mid > bad && mid < 100, "{mid}");
        // Once they left the window entirely: 100 again.
        let clean = window_stats(&[group(200, None, 20, true)]);
        assert_eq!(score(&clean["a"]), 100);
    }

    #[test]
    fn latency_counts_moderately() {
        let mut slow = group(200, None, 10, true);
        slow.latency_sum_ms = 30_000 * 10;
        let w = window_stats(&[slow]);
        assert_eq!(w["a"].avg_latency_ms, 30_000);
        assert_eq!(score(&w["a"]), 85);
        let mut mid = group(200, None, 10, true);
        mid.latency_sum_ms = 6_500 * 10;
        assert_eq!(score(&window_stats(&[mid])["a"]), 96);
    }

    #[test]
    fn fallbacks_served_are_counted() {
        let mut g = group(200, None, 3, true);
        g.fallback = true;
        let w = window_stats(&[g, group(200, None, 2, false)]);
        assert_eq!(w["a"].fallbacks_served, 3);
        assert_eq!(w["a"].successes, 5);
    }

    #[test]
    fn publish_threshold() {
        assert!(!should_publish(100, 100));
        assert!(should_publish(100, 99));
        assert!(should_publish(99, 100));
        assert!(!should_publish(80, 83));
        assert!(should_publish(80, 85));
        assert!(should_publish(80, 75));
    }
}
