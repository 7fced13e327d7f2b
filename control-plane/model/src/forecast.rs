//! When a pool's quota windows run out at the current burn rate: the one projection the API,
//! the dashboard, the CLI and the `forecast_runs_out` alert all show.
//!
//! Rules: pure (the caller passes the samples, the current value and the clock). Per window:
//! - `used_percent` is the pool's current used % (the mean over its active accounts with
//!   evidence, as [`crate::headroom`] computes it: `100 - headroom`);
//! - the burn rate is the rise of used % per hour between the oldest and the newest point of
//!   the recent span ([`BURN_SPAN_MS`] for the 5-hour window, [`WEEKLY_BURN_SPAN_MS`] for the
//!   weekly one), counting only points after the last reset seen in that span (a drop of more
//!   than [`RESET_DROP_POINTS`]): a reset in between must not read as negative burn;
//! - fewer than two points, or points less than [`MIN_SPAN_MS`] apart: no burn rate (unknown);
//!   a flat or falling series: burn 0 (idle), which never runs out;
//! - run-out = now + (100 - used) / burn hours (now when already at 100 %);
//! - "runs out before reset" only when both are known and run-out < the next reset.

use serde::Serialize;

/// The span the 5-hour window's burn rate is measured over.
pub const BURN_SPAN_MS: i64 = 60 * 60 * 1000;
/// The span the weekly window's burn rate is measured over.
pub const WEEKLY_BURN_SPAN_MS: i64 = 6 * 60 * 60 * 1000;
/// Points closer together than this give no burn rate.
pub const MIN_SPAN_MS: i64 = 60 * 1000;
/// A fall of more than this many points between two samples is a reset.
pub const RESET_DROP_POINTS: f64 = 1.0;

/// One observation of a pool's used % of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsageSample {
    pub at_ms: i64,
    pub used_percent: f64,
}

/// The projection of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowForecast {
    /// The pool's used % now (None: no active account has evidence).
    pub used_percent: Option<f64>,
    /// Percentage points per hour over the recent span (None: too little history).
    pub burn_percent_per_hour: Option<f64>,
    /// When the window is spent at that rate (Unix seconds; None: idle or unknown).
    pub runs_out_at_unix: Option<i64>,
    /// The next reset among the pool's active accounts (Unix seconds).
    pub next_reset_unix: Option<i64>,
    /// The window runs out before its next reset.
    pub runs_out_before_reset: bool,
}

/// Projects one window from its `samples` (any order; older than `span_ms` before `now_ms`
/// ignored), the `current` used % (appended as the newest point when known) and the next reset.
pub fn forecast_window(
    samples: &[UsageSample],
    current: Option<f64>,
    next_reset_unix: Option<i64>,
    span_ms: i64,
    now_ms: i64,
) -> WindowForecast {
    let mut points: Vec<UsageSample> = samples
        .iter()
        .copied()
        .filter(|s| s.at_ms >= now_ms - span_ms && s.at_ms <= now_ms && s.used_percent.is_finite())
        .collect();
    points.sort_by_key(|s| s.at_ms);
    if let Some(used) = current.filter(|u| u.is_finite()) {
        points.retain(|s| s.at_ms < now_ms);
        points.push(UsageSample {
            at_ms: now_ms,
            used_percent: used,
        });
    }
    // Only the points after the last reset in the span.
    let start = points
        .windows(2)
        .rposition(|w| w[1].used_percent < w[0].used_percent - RESET_DROP_POINTS)
        .map_or(0, |i| i + 1);
    let points = &points[start..];
    let used = current
        .or_else(|| points.last().map(|p| p.used_percent))
        .map(|u| u.clamp(0.0, 100.0));
    let burn = match (points.first(), points.last()) {
        (Some(first), Some(last)) if last.at_ms - first.at_ms >= MIN_SPAN_MS => {
            let hours = (last.at_ms - first.at_ms) as f64 / 3_600_000.0;
            Some(((last.used_percent - first.used_percent) / hours).max(0.0))
        }
        _ => None,
    };
    let runs_out_at_unix = match (used, burn) {
        (Some(u), _) if u >= 100.0 => Some(now_ms / 1000),
        (Some(u), Some(b)) if b > 0.0 => {
            let secs = (100.0 - u) / b * 3600.0;
            Some(now_ms / 1000 + secs.min(1e12) as i64)
        }
        _ => None,
    };
    WindowForecast {
        used_percent: used,
        burn_percent_per_hour: burn,
        runs_out_at_unix,
        next_reset_unix,
        runs_out_before_reset: matches!(
            (runs_out_at_unix, next_reset_unix),
            (Some(out), Some(reset)) if out < reset
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    fn at(minutes_ago: i64, used: f64) -> UsageSample {
        UsageSample {
            at_ms: NOW - minutes_ago * MIN,
            used_percent: used,
        }
    }

    #[test]
    fn a_steady_burn_runs_out_before_a_late_reset() {
        // 10 points an hour: 30 → 40 over the last hour, 60 points left = 6 hours.
        let samples = [at(60, 30.0), at(30, 35.0)];
        let reset = NOW / 1000 + 8 * 3600;
        let f = forecast_window(&samples, Some(40.0), Some(reset), BURN_SPAN_MS, NOW);
        assert_eq!(f.used_percent, Some(40.0));
        let burn = f.burn_percent_per_hour.unwrap_or_default();
        assert!((burn - 10.0).abs() < 1e-9, "{burn}");
        assert_eq!(f.runs_out_at_unix, Some(NOW / 1000 + 6 * 3600));
        assert!(f.runs_out_before_reset);
        // A reset sooner than the run-out: fine.
        let early = forecast_window(
            &samples,
            Some(40.0),
            Some(NOW / 1000 + 3600),
            BURN_SPAN_MS,
            NOW,
        );
        assert!(!early.runs_out_before_reset);
    }

    #[test]
    fn idle_never_runs_out() {
        let samples = [at(50, 42.0), at(20, 42.0)];
        let f = forecast_window(
            &samples,
            Some(42.0),
            Some(NOW / 1000 + 60),
            BURN_SPAN_MS,
            NOW,
        );
        assert_eq!(f.burn_percent_per_hour, Some(0.0));
        assert_eq!(f.runs_out_at_unix, None);
        assert!(!f.runs_out_before_reset);
    }

    #[test]
    fn a_reset_in_between_counts_only_the_points_after_it() {
        // 80 → 90, reset to 0, then 0 → 5 over the last 30 minutes: 10 points an hour.
        let samples = [at(59, 80.0), at(45, 90.0), at(30, 0.0), at(15, 2.5)];
        let f = forecast_window(&samples, Some(5.0), None, BURN_SPAN_MS, NOW);
        let burn = f.burn_percent_per_hour.unwrap_or_default();
        assert!((burn - 10.0).abs() < 1e-9, "{burn}");
        assert_eq!(f.runs_out_at_unix, Some(NOW / 1000 + (95 * 360)));
        // No known reset: never "before reset".
        assert!(!f.runs_out_before_reset);
    }

    #[test]
    fn no_evidence_or_too_little_history_is_unknown() {
        let f = forecast_window(&[], None, None, BURN_SPAN_MS, NOW);
        assert_eq!(f, WindowForecast::default());
        // One point only, or points under a minute apart: no rate.
        let one = forecast_window(&[], Some(50.0), Some(1), BURN_SPAN_MS, NOW);
        assert_eq!(
            (one.used_percent, one.burn_percent_per_hour),
            (Some(50.0), None)
        );
        let close = forecast_window(
            &[UsageSample {
                at_ms: NOW - 10_000,
                used_percent: 10.0,
            }],
            Some(50.0),
            None,
            BURN_SPAN_MS,
            NOW,
        );
        assert_eq!(close.burn_percent_per_hour, None);
        // Samples older than the span are ignored.
        let old = forecast_window(&[at(120, 0.0)], Some(50.0), None, BURN_SPAN_MS, NOW);
        assert_eq!(old.burn_percent_per_hour, None);
    }

    #[test]
    fn a_spent_window_has_run_out_now() {
        let f = forecast_window(
            &[at(30, 100.0)],
            Some(100.0),
            Some(NOW / 1000 + 60),
            BURN_SPAN_MS,
            NOW,
        );
        assert_eq!(f.runs_out_at_unix, Some(NOW / 1000));
        assert!(f.runs_out_before_reset);
    }
}
