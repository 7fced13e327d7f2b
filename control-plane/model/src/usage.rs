//! A key's counted use: tokens per UTC day and week, and its share of the pool's quota windows.
//!
//! Rules kept here (docs/design.md, "Token budgets" and "Quota shares"):
//! - Days start at 00:00 UTC, weeks on Monday 00:00 UTC ([`day_start`], [`week_start`]). A count
//!   read after its day (week) ended is 0 ([`TokenCount::as_of`]).
//! - Attribution: for one account, two consecutive answers with evidence of a window give a
//!   delta: `used_now − used_before`, or `used_now` when the window reset in between (its
//!   `resets_at` moved forward by more than [`RESET_JITTER_SECS`]); never negative. The answer
//!   carrying the newer evidence counts as one of the requests before it (upstreams count a
//!   request before they answer it). The first evidence of an account only sets the base.
//! - The delta is split across the keys whose requests the account served since the previous
//!   evidence, in proportion to their tokens, or to their request counts when none stated tokens
//!   ([`split`]).
//! - A key's share used = its attributed points within the trailing window (5 h for primary,
//!   7 days for secondary) ÷ the pool's capacity (its accounts × 100 %), in percent
//!   ([`share_state`]). At or past its share the key is blocked until enough of its oldest
//!   points leave the window to bring it under the share again. Points are stored at the end
//!   of their bucket ([`ShareWindow::bucket_end`]: a minute for primary, an hour for secondary).

use codexmesh_proto::v1 as pb;
use serde::Serialize;

pub const DAY_SECS: i64 = 86_400;
pub const WEEK_SECS: i64 = 7 * DAY_SECS;
/// 1970-01-01 was a Thursday: the first Monday 00:00 UTC is 4 days later.
const FIRST_MONDAY: i64 = 4 * DAY_SECS;
/// A reset time that moved forward by at most this much is the same window (the upstreams
/// state it as "seconds from now", so it wobbles by a second or two between answers).
pub const RESET_JITTER_SECS: i64 = 120;

/// Unix seconds of the start of the UTC day holding `unix`.
pub fn day_start(unix: i64) -> i64 {
    unix.div_euclid(DAY_SECS) * DAY_SECS
}

/// Unix seconds of the Monday 00:00 UTC starting the week holding `unix`.
pub fn week_start(unix: i64) -> i64 {
    (unix - FIRST_MONDAY).div_euclid(WEEK_SECS) * WEEK_SECS + FIRST_MONDAY
}

/// Tokens counted for one key in its latest day and week.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenCount {
    pub day_start_unix: i64,
    pub tokens_today: u64,
    pub week_start_unix: i64,
    pub tokens_this_week: u64,
}

impl TokenCount {
    /// The count as of `now_unix`: a day (week) that has ended reads 0, starting now's.
    pub fn as_of(&self, now_unix: i64) -> TokenCount {
        let (day, week) = (day_start(now_unix), week_start(now_unix));
        TokenCount {
            day_start_unix: day,
            tokens_today: if self.day_start_unix == day {
                self.tokens_today
            } else {
                0
            },
            week_start_unix: week,
            tokens_this_week: if self.week_start_unix == week {
                self.tokens_this_week
            } else {
                0
            },
        }
    }
}

/// Which quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ShareWindow {
    /// The 5-hour window.
    Primary,
    /// The weekly window.
    Secondary,
}

impl ShareWindow {
    pub const ALL: [ShareWindow; 2] = [ShareWindow::Primary, ShareWindow::Secondary];

    pub fn as_str(self) -> &'static str {
        match self {
            ShareWindow::Primary => "primary",
            ShareWindow::Secondary => "secondary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "primary" => Some(ShareWindow::Primary),
            "secondary" => Some(ShareWindow::Secondary),
            _ => None,
        }
    }

    /// Points are kept per key, account and bucket of this length (a minute of the 5-hour
    /// window, an hour of the weekly one), so their number is bounded by the window, not by
    /// the traffic.
    pub fn bucket_ms(self) -> i64 {
        match self {
            ShareWindow::Primary => 60_000,
            ShareWindow::Secondary => 3_600_000,
        }
    }

    /// The end of the bucket holding `at_ms`: the time a point is stored at (so it leaves the
    /// trailing window at most one bucket late, never early).
    pub fn bucket_end(self, at_ms: i64) -> i64 {
        let b = self.bucket_ms();
        (at_ms.div_euclid(b) + 1) * b
    }

    /// How long attributed points count: 5 hours, 7 days.
    pub fn trailing_ms(self) -> i64 {
        match self {
            ShareWindow::Primary => 5 * 3_600_000,
            ShareWindow::Secondary => 7 * 86_400_000,
        }
    }
}

/// One window's evidence in one answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowMark {
    pub used_percent: f64,
    /// Unix seconds (0 = unknown).
    pub resets_at_unix: i64,
}

/// The window's movement between two pieces of evidence, in percent points of one account.
pub fn window_delta(before: Option<WindowMark>, now: WindowMark) -> f64 {
    let Some(before) = before else { return 0.0 };
    let used = now.used_percent.clamp(0.0, 100.0);
    let reset = now.resets_at_unix != 0
        && before.resets_at_unix != 0
        && now.resets_at_unix > before.resets_at_unix + RESET_JITTER_SECS;
    if reset {
        used
    } else {
        (used - before.used_percent.clamp(0.0, 100.0)).max(0.0)
    }
}

/// What one key used of one account since its last evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUse {
    pub key_id: String,
    pub tokens: u64,
    pub requests: u64,
}

/// `delta` split across `pending` by tokens (by requests when no key stated tokens). Keys that
/// get nothing are left out.
pub fn split(delta: f64, pending: &[PendingUse]) -> Vec<(String, f64)> {
    if delta.is_nan() || delta <= 0.0 {
        return Vec::new();
    }
    let tokens: u64 = pending.iter().map(|p| p.tokens).sum();
    let weight = |p: &PendingUse| if tokens > 0 { p.tokens } else { p.requests };
    let total: u64 = pending.iter().map(weight).sum();
    if total == 0 {
        return Vec::new();
    }
    pending
        .iter()
        .filter(|p| weight(p) > 0)
        .map(|p| (p.key_id.clone(), delta * weight(p) as f64 / total as f64))
        .collect()
}

/// A key's standing in one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ShareState {
    /// Percent of the pool's capacity used in the trailing window.
    pub used_percent: f64,
    /// Set when used ≥ the share: unix seconds when it drops under the share again.
    pub blocked_until_unix: Option<i64>,
}

/// The key's share used from its attributed `points` (`(at_ms, percent points)`), as of
/// `now_ms`, in a pool of `accounts` accounts; blocked when `share` is given and reached.
pub fn share_state(
    points: &[(i64, f64)],
    window: ShareWindow,
    now_ms: i64,
    accounts: usize,
    share: Option<f64>,
) -> ShareState {
    let since = now_ms - window.trailing_ms();
    let mut live: Vec<(i64, f64)> = points
        .iter()
        .copied()
        .filter(|(at, _)| *at > since)
        .collect();
    live.sort_by_key(|(at, _)| *at);
    let capacity = accounts.max(1) as f64;
    let mut sum: f64 = live.iter().map(|(_, p)| p).sum();
    let used_percent = sum / capacity;
    let blocked_until_unix = share.filter(|s| used_percent >= *s).map(|s| {
        let mut until = now_ms;
        for (at, p) in &live {
            sum -= p;
            until = at + window.trailing_ms();
            if sum / capacity < s {
                break;
            }
        }
        // Rounded up: the key is under its share from this second on.
        (until + 999).div_euclid(1000)
    });
    ShareState {
        used_percent,
        blocked_until_unix,
    }
}

/// A key's counted use as listings and the snapshot show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyUsageView {
    #[serde(flatten)]
    pub tokens: TokenCount,
    /// Percent of the pool's 5-hour capacity used in the trailing 5 hours.
    pub primary_share_used_percent: f64,
    /// Percent of the pool's weekly capacity used in the trailing 7 days.
    pub secondary_share_used_percent: f64,
    /// Set while the key is past one of its shares: when it frees up (unix seconds).
    pub share_blocked_until_unix: Option<i64>,
    /// Which window blocks it (`primary` or `secondary`).
    pub share_blocked_window: Option<ShareWindow>,
}

impl KeyUsageView {
    /// From the key's stored count, its attributed points (`(window, at_ms, points)`), its
    /// pool's account count and its policy's shares, as of `now_ms`.
    pub fn compute(
        count: Option<TokenCount>,
        points: &[(ShareWindow, i64, f64)],
        accounts: usize,
        shares: (Option<f64>, Option<f64>),
        now_ms: i64,
    ) -> Self {
        let of = |w: ShareWindow| -> Vec<(i64, f64)> {
            points
                .iter()
                .filter(|(pw, _, _)| *pw == w)
                .map(|(_, at, p)| (*at, *p))
                .collect()
        };
        let primary = share_state(
            &of(ShareWindow::Primary),
            ShareWindow::Primary,
            now_ms,
            accounts,
            shares.0,
        );
        let secondary = share_state(
            &of(ShareWindow::Secondary),
            ShareWindow::Secondary,
            now_ms,
            accounts,
            shares.1,
        );
        // Blocked by both: the later release is when it serves again.
        let blocked = [
            (ShareWindow::Primary, primary.blocked_until_unix),
            (ShareWindow::Secondary, secondary.blocked_until_unix),
        ]
        .into_iter()
        .filter_map(|(w, t)| t.map(|t| (t, w)))
        .max_by_key(|(t, _)| *t);
        KeyUsageView {
            tokens: count.unwrap_or_default().as_of(now_ms.div_euclid(1000)),
            primary_share_used_percent: primary.used_percent,
            secondary_share_used_percent: secondary.used_percent,
            share_blocked_until_unix: blocked.map(|(t, _)| t),
            share_blocked_window: blocked.map(|(_, w)| w),
        }
    }

    /// Whether nothing is counted (no tokens in the current day or week, no share used).
    pub fn is_empty(&self) -> bool {
        self.tokens.tokens_today == 0
            && self.tokens.tokens_this_week == 0
            && self.primary_share_used_percent == 0.0
            && self.secondary_share_used_percent == 0.0
    }

    /// The snapshot's form.
    pub fn to_proto(&self) -> pb::KeyUsage {
        pb::KeyUsage {
            tokens_today: self.tokens.tokens_today,
            day_start_unix: self.tokens.day_start_unix,
            tokens_this_week: self.tokens.tokens_this_week,
            week_start_unix: self.tokens.week_start_unix,
            primary_share_used_percent: self.primary_share_used_percent,
            secondary_share_used_percent: self.secondary_share_used_percent,
            share_blocked_until_unix: self.share_blocked_until_unix.unwrap_or(0),
            share_blocked_window: self
                .share_blocked_window
                .map(|w| w.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// Whether a key's counted use must be pushed (ordered: more urgent is greater).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PushNeed {
    /// The key has no budget or share, or the snapshot already carries its use.
    None,
    /// It moved: push with the next usage tick.
    Later,
    /// It crossed one of its limits since the pushed count: push at once.
    Now,
}

/// What pushing `now` (the key's use) needs, given what the current snapshot carries.
pub fn push_need(
    policy: Option<&crate::policy::KeyPolicy>,
    published: Option<&pb::KeyUsage>,
    now: &KeyUsageView,
    now_unix: i64,
) -> PushNeed {
    let Some(policy) = policy else {
        return PushNeed::None;
    };
    let limited = policy.tokens_per_day.is_some()
        || policy.tokens_per_week.is_some()
        || policy.primary_share_percent.is_some()
        || policy.secondary_share_percent.is_some();
    let wanted = (!now.is_empty()).then(|| now.to_proto());
    if !limited || wanted.as_ref() == published {
        return PushNeed::None;
    }
    let (day, week) = (day_start(now_unix), week_start(now_unix));
    let pub_today = published
        .filter(|p| p.day_start_unix == day)
        .map_or(0, |p| p.tokens_today);
    let pub_week = published
        .filter(|p| p.week_start_unix == week)
        .map_or(0, |p| p.tokens_this_week);
    let crossed = |budget: Option<u64>, before: u64, after: u64| {
        budget.is_some_and(|b| after >= b && before < b)
    };
    let newly_blocked = now.share_blocked_until_unix.is_some()
        && published.is_none_or(|p| p.share_blocked_until_unix == 0);
    if crossed(policy.tokens_per_day, pub_today, now.tokens.tokens_today)
        || crossed(
            policy.tokens_per_week,
            pub_week,
            now.tokens.tokens_this_week,
        )
        || newly_blocked
    {
        PushNeed::Now
    } else {
        PushNeed::Later
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MON_2026_11_30: i64 = 1_795_996_800; // Monday 2026-11-30 00:00 UTC

    #[test]
    fn days_and_weeks_start_at_utc_midnight_and_monday() {
        assert_eq!(week_start(MON_2026_11_30), MON_2026_11_30);
        assert_eq!(
            week_start(MON_2026_11_30 + 6 * DAY_SECS + 86_399),
            MON_2026_11_30
        );
        assert_eq!(week_start(MON_2026_11_30 - 1), MON_2026_11_30 - WEEK_SECS);
        assert_eq!(day_start(MON_2026_11_30 + 3_600), MON_2026_11_30);
        assert_eq!(week_start(0), -3 * DAY_SECS); // Monday 1969-12-29
    }

    #[test]
    fn a_count_of_a_past_day_or_week_reads_zero() {
        let c = TokenCount {
            day_start_unix: MON_2026_11_30,
            tokens_today: 10,
            week_start_unix: MON_2026_11_30,
            tokens_this_week: 50,
        };
        assert_eq!(c.as_of(MON_2026_11_30 + 5), c);
        let tue = c.as_of(MON_2026_11_30 + DAY_SECS);
        assert_eq!((tue.tokens_today, tue.tokens_this_week), (0, 50));
        let next = c.as_of(MON_2026_11_30 + WEEK_SECS);
        assert_eq!((next.tokens_today, next.tokens_this_week), (0, 0));
        assert_eq!(next.week_start_unix, MON_2026_11_30 + WEEK_SECS);
    }

    #[test]
    fn delta_is_the_movement_or_the_new_value_after_a_reset() {
        let m = |u: f64, r: i64| WindowMark {
            used_percent: u,
            resets_at_unix: r,
        };
        assert_eq!(window_delta(None, m(30.0, 1000)), 0.0);
        assert_eq!(window_delta(Some(m(30.0, 1000)), m(34.5, 1001)), 4.5);
        // Reset in between: the whole new value.
        assert_eq!(
            window_delta(Some(m(90.0, 1000)), m(3.0, 1000 + 18_000)),
            3.0
        );
        // Noise downwards without a reset counts nothing.
        assert_eq!(window_delta(Some(m(30.0, 1000)), m(29.0, 1000)), 0.0);
    }

    #[test]
    fn split_by_tokens_or_by_requests() {
        let p = |k: &str, tokens, requests| PendingUse {
            key_id: k.into(),
            tokens,
            requests,
        };
        let by_tokens = split(10.0, &[p("a", 300, 1), p("b", 100, 5), p("c", 0, 1)]);
        assert_eq!(by_tokens, vec![("a".into(), 7.5), ("b".into(), 2.5)]);
        let by_requests = split(6.0, &[p("a", 0, 1), p("b", 0, 2)]);
        assert_eq!(by_requests, vec![("a".into(), 2.0), ("b".into(), 4.0)]);
        assert!(split(0.0, &[p("a", 1, 1)]).is_empty());
        assert!(split(5.0, &[]).is_empty());
    }

    #[test]
    fn share_used_and_blocked_until() {
        let now = 100 * 3_600_000;
        let w = ShareWindow::Primary;
        // Two accounts (capacity 200 points); 50 points in the window = 25 %.
        let points = [
            (now - 6 * 3_600_000, 80.0), // outside the 5 h window
            (now - 4 * 3_600_000, 20.0),
            (now - 3_600_000, 30.0),
        ];
        let s = share_state(&points, w, now, 2, Some(30.0));
        assert_eq!(s.used_percent, 25.0);
        assert_eq!(s.blocked_until_unix, None);
        let s = share_state(&points, w, now, 2, Some(20.0));
        // Under 20 % once the 20 points of 4 h ago leave: 1 h from now.
        assert_eq!(s.blocked_until_unix, Some((now + 3_600_000) / 1000));
        let s = share_state(&points, w, now, 2, Some(10.0));
        // Both must leave: 4 h from now.
        assert_eq!(s.blocked_until_unix, Some((now + 4 * 3_600_000) / 1000));
        let s = share_state(&points, w, now, 2, None);
        assert_eq!(s.blocked_until_unix, None);
    }

    #[test]
    fn usage_is_pushed_later_when_it_moved_and_at_once_past_a_limit() {
        let now_unix = MON_2026_11_30 + 3_600;
        let view = |tokens: u64| KeyUsageView {
            tokens: TokenCount {
                day_start_unix: MON_2026_11_30,
                tokens_today: tokens,
                week_start_unix: MON_2026_11_30,
                tokens_this_week: tokens,
            },
            ..KeyUsageView::default()
        };
        let budget = crate::policy::KeyPolicy {
            tokens_per_day: Some(1000),
            ..Default::default()
        };
        let rpm_only = crate::policy::KeyPolicy {
            requests_per_minute: Some(5),
            ..Default::default()
        };
        let pushed = view(400).to_proto();
        assert_eq!(push_need(None, None, &view(5), now_unix), PushNeed::None);
        assert_eq!(
            push_need(Some(&rpm_only), None, &view(5), now_unix),
            PushNeed::None
        );
        assert_eq!(
            push_need(Some(&budget), Some(&pushed), &view(400), now_unix),
            PushNeed::None
        );
        assert_eq!(
            push_need(Some(&budget), Some(&pushed), &view(600), now_unix),
            PushNeed::Later
        );
        assert_eq!(
            push_need(Some(&budget), Some(&pushed), &view(1000), now_unix),
            PushNeed::Now
        );
        assert_eq!(
            push_need(Some(&budget), None, &view(1200), now_unix),
            PushNeed::Now
        );
        let blocked = KeyUsageView {
            primary_share_used_percent: 21.0,
            share_blocked_until_unix: Some(now_unix + 60),
            share_blocked_window: Some(ShareWindow::Primary),
            ..view(400)
        };
        let share = crate::policy::KeyPolicy {
            primary_share_percent: Some(20.0),
            ..Default::default()
        };
        assert_eq!(
            push_need(Some(&share), Some(&pushed), &blocked, now_unix),
            PushNeed::Now
        );
    }

    #[test]
    fn a_key_blocked_in_both_windows_waits_for_the_later_release() {
        let now = 400 * 3_600_000;
        let points = [
            (ShareWindow::Primary, now - 3_600_000, 30.0),
            (ShareWindow::Secondary, now - 3 * 86_400_000, 40.0),
            (ShareWindow::Secondary, now - 3_600_000, 30.0),
        ];
        // One account: 30 % of the 5-hour and 70 % of the weekly capacity used.
        let v = KeyUsageView::compute(None, &points, 1, (Some(25.0), Some(50.0)), now);
        assert_eq!(v.primary_share_used_percent, 30.0);
        assert_eq!(v.secondary_share_used_percent, 70.0);
        // Primary frees in 4 h, secondary when the 40 points of 3 days ago leave: in 4 days.
        assert_eq!(
            v.share_blocked_until_unix,
            Some((now + 4 * 86_400_000) / 1000)
        );
        assert_eq!(v.share_blocked_window, Some(ShareWindow::Secondary));
        let p = v.to_proto();
        assert_eq!(p.share_blocked_window, "secondary");
        // Without shares nothing blocks; without anything counted the view is empty.
        let free = KeyUsageView::compute(None, &points, 1, (None, None), now);
        assert_eq!(free.share_blocked_until_unix, None);
        assert!(KeyUsageView::compute(None, &[], 1, (Some(1.0), None), now).is_empty());
        // Capacity grows with the pool: two accounts halve the share used.
        let two = KeyUsageView::compute(None, &points, 2, (Some(25.0), None), now);
        assert_eq!(two.primary_share_used_percent, 15.0);
        assert_eq!(two.share_blocked_until_unix, None);
    }
}
