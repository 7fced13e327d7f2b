//! Activity: what a pool and each of its accounts did over a time window, computed from the
//! request log (one row per upstream attempt): counts, success rate, fallbacks, latency
//! percentiles and a timeline of equal buckets.
//!
//! Rules this module keeps: pure (no clock, no I/O: the caller passes "now"); the meanings are
//! the ones the rest of codexmesh already uses, never a second one:
//! - an attempt is one request-log row; `requests` counts attempts;
//! - `succeeded` / `rate_limited` / `client_errors` are [`health::classify`]'s `Success`,
//!   `Quota` (429) and `Neutral` classes (the same as the health score and the all-time
//!   counters); `errors` is every attempt that did not succeed (`requests - succeeded`);
//! - `fallbacks` counts attempts whose `fallback` flag is set: the attempt served a request
//!   another account had failed first (the request log's `fallback`, `reason = failover`),
//!   whatever its own result;
//! - latency percentiles are nearest-rank ([`nearest_rank`]) over every attempt's
//!   `latency_ms` as the filter reports it (to the answer's headers; to the failure when there
//!   was no answer);
//! - buckets are `[start, start + bucket)` from the window's start, every one present (empty
//!   ones too) so a timeline can be drawn; [`Window::ending_at`] aligns them to multiples of
//!   the bucket size since the Unix epoch, the last one holding "now".
//!
//! Not derivable, so not here: how often an account's failed attempt was retried elsewhere
//! ("failovers away"). Outcomes carry no request id, so a failed attempt cannot be linked to
//! the attempt that followed it; the pool's `fallbacks` is the number of such hand-overs.
//!
//! [`health::classify`]: crate::health::classify

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::health::{classify, Class};

/// A timeline has at most this many buckets.
pub const MAX_BUCKETS: i64 = 1000;
/// The default bucket size splits the window into about this many buckets.
pub const DEFAULT_BUCKETS: i64 = 48;
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// One bucket of a timeline: attempts received in `[start_ms, start_ms + bucket_ms)`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct ActivityBucket {
    pub start_ms: i64,
    pub requests: u64,
    /// Attempts that did not succeed.
    pub errors: u64,
    /// Attempts that served a request another account had failed first.
    pub fallbacks: u64,
}

/// Counts, rates, latency and timeline of a set of attempts (one account's, or a pool's).
#[derive(Serialize, Debug, Clone, PartialEq, utoipa::ToSchema)]
pub struct ActivityStats {
    /// Attempts (request-log rows).
    pub requests: u64,
    /// Attempts that succeeded (2xx/3xx without an upstream or transport error).
    pub succeeded: u64,
    /// Attempts that did not succeed: `requests - succeeded` (includes the two below).
    pub errors: u64,
    /// 429s (quota or rate limit).
    pub rate_limited: u64,
    /// Failures that are the request's fault, not the account's (client gone, plain 4xx).
    pub client_errors: u64,
    /// Attempts that served a request another account had failed first.
    pub fallbacks: u64,
    /// `succeeded / requests` in 0..=1; None without requests.
    pub success_rate: Option<f64>,
    /// Nearest-rank latency percentiles over all attempts (ms); None without requests.
    pub latency_p50_ms: Option<i64>,
    pub latency_p90_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
    /// The window's buckets, oldest first, empty ones included.
    pub buckets: Vec<ActivityBucket>,
}

/// One account's activity.
#[derive(Serialize, Debug, Clone, PartialEq, utoipa::ToSchema)]
pub struct AccountActivity {
    pub account_id: String,
    /// None when the account was deleted since.
    pub label: Option<String>,
    /// Names of the pools in scope that the account is a member of now or served attempts in
    /// during the window (deleted pools are not named), sorted.
    pub pools: Vec<String>,
    /// The published health score (0..=100); None when the account was deleted since.
    pub health: Option<u32>,
    #[serde(flatten)]
    pub stats: ActivityStats,
}

/// A pool's (or everything visible's) activity and each account's.
#[derive(Serialize, Debug, Clone, PartialEq, utoipa::ToSchema)]
pub struct Activity {
    /// The pool asked for; None: every pool the caller sees.
    pub pool: Option<String>,
    /// The window `[from_ms, to_ms)`, a whole number of buckets.
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    /// Every attempt in scope (all accounts together, deleted ones included).
    pub total: ActivityStats,
    /// One entry per account in scope, by label (deleted accounts last), then id.
    pub accounts: Vec<AccountActivity>,
    /// The window held more attempts than are read at once: only the newest were counted, so
    /// the oldest buckets are short.
    pub truncated: bool,
}

/// Why a window cannot be used; `field` names the input at fault (`since`, `bucket`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidWindow {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidWindow {
    InvalidWindow {
        field,
        message: message.into(),
    }
}

/// A time window cut into equal buckets: `[from_ms, to_ms)`, `to_ms - from_ms` a whole number
/// of buckets, at most [`MAX_BUCKETS`] of them. Only made through its checked constructors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from_ms: i64,
    to_ms: i64,
    bucket_ms: i64,
}

impl Window {
    /// `[from_ms, from_ms + n * bucket_ms)` with `n` the fewest buckets reaching `to_ms`.
    pub fn new(from_ms: i64, to_ms: i64, bucket_ms: i64) -> Result<Self, InvalidWindow> {
        if bucket_ms < 1 {
            return Err(invalid("bucket", "the bucket size must be positive"));
        }
        if to_ms <= from_ms {
            return Err(invalid("since", "the window must not be empty"));
        }
        let n = ceil_div(to_ms - from_ms, bucket_ms);
        if n > MAX_BUCKETS {
            return Err(invalid(
                "bucket",
                format!("{n} buckets is more than {MAX_BUCKETS}: use larger buckets"),
            ));
        }
        Ok(Self {
            from_ms,
            to_ms: from_ms + n * bucket_ms,
            bucket_ms,
        })
    }

    /// The last `ceil(span / bucket)` buckets at `now_ms`, aligned to multiples of `bucket_ms`
    /// since the Unix epoch; the last one holds `now_ms` (and is still filling). Covers at least
    /// `span_ms - bucket_ms` of the past and never more than `span_ms + bucket_ms`. The bucket
    /// may not be longer than the span.
    pub fn ending_at(now_ms: i64, span_ms: i64, bucket_ms: i64) -> Result<Self, InvalidWindow> {
        if bucket_ms < 1 {
            return Err(invalid("bucket", "the bucket size must be positive"));
        }
        if span_ms < 1 {
            return Err(invalid("since", "the window must not be empty"));
        }
        if bucket_ms > span_ms {
            return Err(invalid(
                "bucket",
                "the bucket size is longer than the window",
            ));
        }
        let n = ceil_div(span_ms, bucket_ms);
        if n > MAX_BUCKETS {
            return Err(invalid(
                "bucket",
                format!("{n} buckets is more than {MAX_BUCKETS}: use larger buckets"),
            ));
        }
        let to_ms = now_ms.div_euclid(bucket_ms) * bucket_ms + bucket_ms;
        Self::new(to_ms - n * bucket_ms, to_ms, bucket_ms)
    }

    pub fn from_ms(&self) -> i64 {
        self.from_ms
    }

    pub fn to_ms(&self) -> i64 {
        self.to_ms
    }

    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    pub fn bucket_count(&self) -> usize {
        usize::try_from((self.to_ms - self.from_ms) / self.bucket_ms).unwrap_or(0)
    }

    /// The bucket holding `at_ms`, None outside the window.
    pub fn bucket_of(&self, at_ms: i64) -> Option<usize> {
        if at_ms < self.from_ms || at_ms >= self.to_ms {
            return None;
        }
        usize::try_from((at_ms - self.from_ms) / self.bucket_ms).ok()
    }

    /// Every bucket, empty, oldest first.
    pub fn empty_buckets(&self) -> Vec<ActivityBucket> {
        (0..self.bucket_count())
            .map(|i| ActivityBucket {
                start_ms: self.from_ms + i64::try_from(i).unwrap_or(0) * self.bucket_ms,
                requests: 0,
                errors: 0,
                fallbacks: 0,
            })
            .collect()
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// The default bucket for a window of `span_ms`: `span / 48` rounded to the nearest whole
/// minute (halves up), at least one minute.
pub fn default_bucket_ms(span_ms: i64) -> i64 {
    let minutes = (span_ms / DEFAULT_BUCKETS + MINUTE_MS / 2) / MINUTE_MS;
    minutes.max(1) * MINUTE_MS
}

/// A duration as people write it (`90s`, `15m`, `1h`, `24h`, `7d`, `1h30m`) in ms.
pub fn parse_span(text: &str) -> Result<i64, String> {
    let d: Duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 1h, 24h or 7d ({e})"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

/// The nearest-rank `percent`-th percentile of ascending `sorted`: the smallest value with at
/// least `percent`% of the values at or below it, i.e. `sorted[ceil(percent/100 * n) - 1]`
/// (rank at least 1). None when empty; `percent` is clamped to 1..=100.
pub fn nearest_rank(sorted: &[i64], percent: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let p = u64::from(percent.clamp(1, 100));
    let n = u64::try_from(sorted.len()).ok()?;
    let rank = (p * n).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// One request-log row as activity reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivitySample {
    pub account_id: String,
    pub pool_id: String,
    /// When the attempt was recorded (the store's `received_at`).
    pub at_ms: i64,
    /// 0: no answer.
    pub status: i64,
    pub error_source: Option<String>,
    pub fallback: bool,
    pub latency_ms: i64,
}

/// Sums attempts into [`ActivityStats`] over a [`Window`].
#[derive(Debug, Clone)]
pub struct StatsBuilder {
    window: Window,
    requests: u64,
    succeeded: u64,
    rate_limited: u64,
    client_errors: u64,
    fallbacks: u64,
    latencies: Vec<i64>,
    buckets: Vec<ActivityBucket>,
}

impl StatsBuilder {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            requests: 0,
            succeeded: 0,
            rate_limited: 0,
            client_errors: 0,
            fallbacks: 0,
            latencies: Vec::new(),
            buckets: window.empty_buckets(),
        }
    }

    /// Counts `s`; an attempt outside the window is ignored (false).
    pub fn add(&mut self, s: &ActivitySample) -> bool {
        let Some(bucket) = self
            .window
            .bucket_of(s.at_ms)
            .and_then(|i| self.buckets.get_mut(i))
        else {
            return false;
        };
        let class = classify(s.status, s.error_source.as_deref());
        let ok = class == Class::Success;
        bucket.requests += 1;
        bucket.errors += u64::from(!ok);
        bucket.fallbacks += u64::from(s.fallback);
        self.requests += 1;
        self.succeeded += u64::from(ok);
        self.rate_limited += u64::from(class == Class::Quota);
        self.client_errors += u64::from(class == Class::Neutral);
        self.fallbacks += u64::from(s.fallback);
        self.latencies.push(s.latency_ms);
        true
    }

    pub fn finish(mut self) -> ActivityStats {
        self.latencies.sort_unstable();
        let rate = (self.requests > 0).then(|| ratio(self.succeeded, self.requests));
        ActivityStats {
            requests: self.requests,
            succeeded: self.succeeded,
            errors: self.requests - self.succeeded,
            rate_limited: self.rate_limited,
            client_errors: self.client_errors,
            fallbacks: self.fallbacks,
            success_rate: rate,
            latency_p50_ms: nearest_rank(&self.latencies, 50),
            latency_p90_ms: nearest_rank(&self.latencies, 90),
            latency_p99_ms: nearest_rank(&self.latencies, 99),
            buckets: self.buckets,
        }
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn ratio(part: u64, whole: u64) -> f64 {
    part as f64 / whole as f64
}

/// One account's sums, before names are put on them.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSums {
    pub account_id: String,
    /// The pool ids its attempts were in.
    pub pool_ids: BTreeSet<String>,
    pub stats: ActivityStats,
}

/// Sums attempts per account and in total over a [`Window`].
#[derive(Debug, Clone)]
pub struct Aggregator {
    window: Window,
    total: StatsBuilder,
    accounts: BTreeMap<String, (BTreeSet<String>, StatsBuilder)>,
}

impl Aggregator {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            total: StatsBuilder::new(window),
            accounts: BTreeMap::new(),
        }
    }

    /// Makes sure `account_id` has an entry (all zero if it has no attempts).
    pub fn include_account(&mut self, account_id: &str) {
        if !self.accounts.contains_key(account_id) {
            self.accounts.insert(
                account_id.to_owned(),
                (BTreeSet::new(), StatsBuilder::new(self.window)),
            );
        }
    }

    /// Counts `s` for its account and the total; an attempt outside the window is ignored.
    pub fn add(&mut self, s: &ActivitySample) {
        if !self.total.add(s) {
            return;
        }
        self.include_account(&s.account_id);
        if let Some((pools, stats)) = self.accounts.get_mut(&s.account_id) {
            stats.add(s);
            if !pools.contains(&s.pool_id) {
                pools.insert(s.pool_id.clone());
            }
        }
    }

    /// The total and each account's sums, by account id.
    pub fn finish(self) -> (ActivityStats, Vec<AccountSums>) {
        let accounts = self
            .accounts
            .into_iter()
            .map(|(account_id, (pool_ids, stats))| AccountSums {
                account_id,
                pool_ids,
                stats: stats.finish(),
            })
            .collect();
        (self.total.finish(), accounts)
    }
}

/// Puts accounts in their display order: by label (deleted ones, without, last), then id.
pub fn sort_accounts(accounts: &mut [AccountActivity]) {
    accounts.sort_by(|a, b| {
        (a.label.is_none(), &a.label, &a.account_id).cmp(&(
            b.label.is_none(),
            &b.label,
            &b.account_id,
        ))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        account: &str,
        at_ms: i64,
        status: i64,
        fallback: bool,
        latency: i64,
    ) -> ActivitySample {
        ActivitySample {
            account_id: account.to_owned(),
            pool_id: "p1".to_owned(),
            at_ms,
            status,
            error_source: (status != 200).then(|| "upstream".to_owned()),
            fallback,
            latency_ms: latency,
        }
    }

    #[test]
    fn nearest_rank_picks_the_smallest_value_covering_the_percent() {
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[7], 50), Some(7));
        assert_eq!(nearest_rank(&[7], 99), Some(7));
        let v: Vec<i64> = (1..=10).map(|i| i * 10).collect();
        assert_eq!(nearest_rank(&v, 50), Some(50)); // rank 5
        assert_eq!(nearest_rank(&v, 90), Some(90)); // rank 9
        assert_eq!(nearest_rank(&v, 99), Some(100)); // rank ceil(9.9) = 10
        assert_eq!(nearest_rank(&v, 100), Some(100));
        assert_eq!(
            nearest_rank(&v, 0),
            Some(10),
            "clamped to the 1st percentile"
        );
        let v: Vec<i64> = (1..=200).collect();
        assert_eq!(nearest_rank(&v, 99), Some(198));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3], 50), Some(2)); // ceil(1.5) = 2
    }

    #[test]
    fn windows_are_whole_buckets_and_bounded() -> Result<(), InvalidWindow> {
        let w = Window::new(1_000, 1_250, 100)?;
        assert_eq!(
            (w.from_ms(), w.to_ms(), w.bucket_count()),
            (1_000, 1_300, 3)
        );
        assert_eq!(w.bucket_of(999), None);
        assert_eq!(w.bucket_of(1_000), Some(0));
        assert_eq!(w.bucket_of(1_099), Some(0));
        assert_eq!(w.bucket_of(1_100), Some(1));
        assert_eq!(w.bucket_of(1_299), Some(2));
        assert_eq!(w.bucket_of(1_300), None);
        let starts: Vec<i64> = w.empty_buckets().iter().map(|b| b.start_ms).collect();
        assert_eq!(starts, vec![1_000, 1_100, 1_200]);

        assert_eq!(Window::new(0, 1_000, 1)?.bucket_count(), 1_000);
        assert_eq!(Window::new(0, 1_001, 1).map_err(|e| e.field), Err("bucket"));
        assert_eq!(Window::new(0, 10, 0).map_err(|e| e.field), Err("bucket"));
        assert_eq!(Window::new(10, 10, 1).map_err(|e| e.field), Err("since"));
        Ok(())
    }

    #[test]
    fn a_window_ending_now_is_aligned_to_its_buckets() -> Result<(), InvalidWindow> {
        // 14:23:17.5 on some day; 24 h in 30 min buckets.
        let day = 20_000 * DAY_MS;
        let now = day + 14 * 60 * MINUTE_MS + 23 * MINUTE_MS + 17_500;
        let w = Window::ending_at(now, DAY_MS, 30 * MINUTE_MS)?;
        assert_eq!(w.bucket_count(), 48);
        assert_eq!(w.to_ms(), day + 14 * 60 * MINUTE_MS + 30 * MINUTE_MS);
        assert_eq!(w.from_ms(), w.to_ms() - DAY_MS);
        assert_eq!(w.bucket_of(now), Some(47), "the last bucket holds now");
        assert_eq!(w.from_ms() % (30 * MINUTE_MS), 0);
        // A span that is not a whole number of buckets rounds up.
        let w = Window::ending_at(now, 70 * MINUTE_MS, 30 * MINUTE_MS)?;
        assert_eq!(w.bucket_count(), 3);
        // Exactly on a boundary, now starts the last bucket.
        let w = Window::ending_at(day, 60 * MINUTE_MS, 30 * MINUTE_MS)?;
        assert_eq!(w.to_ms(), day + 30 * MINUTE_MS);
        assert_eq!(w.bucket_of(day), Some(1));
        assert_eq!(
            Window::ending_at(now, 30 * DAY_MS, MINUTE_MS).map_err(|e| e.field),
            Err("bucket")
        );
        assert_eq!(
            Window::ending_at(now, 0, MINUTE_MS).map_err(|e| e.field),
            Err("since")
        );
        assert_eq!(
            Window::ending_at(now, MINUTE_MS, MINUTE_MS + 1).map_err(|e| e.field),
            Err("bucket")
        );
        assert_eq!(
            Window::ending_at(now, MINUTE_MS, i64::MAX).map_err(|e| e.field),
            Err("bucket")
        );
        Ok(())
    }

    #[test]
    fn default_buckets_are_about_a_48th_in_whole_minutes() {
        assert_eq!(default_bucket_ms(DAY_MS), 30 * MINUTE_MS);
        assert_eq!(default_bucket_ms(7 * DAY_MS), 210 * MINUTE_MS);
        assert_eq!(default_bucket_ms(30 * DAY_MS), 900 * MINUTE_MS);
        assert_eq!(default_bucket_ms(60 * MINUTE_MS), MINUTE_MS); // 75 s
        assert_eq!(default_bucket_ms(120 * MINUTE_MS), 3 * MINUTE_MS); // 2.5 min, half up
        assert_eq!(default_bucket_ms(MINUTE_MS), MINUTE_MS, "at least a minute");
    }

    #[test]
    fn spans_parse_as_people_write_them() {
        assert_eq!(parse_span("1h"), Ok(60 * MINUTE_MS));
        assert_eq!(parse_span("24h"), Ok(DAY_MS));
        assert_eq!(parse_span(" 7d "), Ok(7 * DAY_MS));
        assert_eq!(parse_span("1h30m"), Ok(90 * MINUTE_MS));
        assert_eq!(parse_span("90s"), Ok(90_000));
        assert!(parse_span("yesterday").is_err());
        assert!(parse_span("").is_err());
        assert!(parse_span("-1h").is_err());
    }

    #[test]
    fn stats_count_classes_fallbacks_latency_and_buckets() -> Result<(), InvalidWindow> {
        let w = Window::new(0, 300, 100)?;
        let mut b = StatsBuilder::new(w);
        assert!(b.add(&sample("a", 0, 200, false, 10)));
        assert!(b.add(&sample("a", 50, 429, false, 20)));
        assert!(b.add(&sample("a", 150, 200, true, 30)));
        assert!(b.add(&sample("a", 299, 502, true, 40)));
        let mut client = sample("a", 299, 499, false, 50);
        client.error_source = Some("client".into());
        assert!(b.add(&client));
        assert!(
            !b.add(&sample("a", 300, 200, false, 1)),
            "outside the window"
        );
        assert!(
            !b.add(&sample("a", -1, 200, false, 1)),
            "outside the window"
        );
        let s = b.finish();
        assert_eq!(
            (
                s.requests,
                s.succeeded,
                s.errors,
                s.rate_limited,
                s.client_errors,
                s.fallbacks
            ),
            (5, 2, 3, 1, 1, 2)
        );
        assert_eq!(s.success_rate, Some(0.4));
        assert_eq!(
            (s.latency_p50_ms, s.latency_p90_ms, s.latency_p99_ms),
            (Some(30), Some(50), Some(50))
        );
        let buckets: Vec<(i64, u64, u64, u64)> = s
            .buckets
            .iter()
            .map(|b| (b.start_ms, b.requests, b.errors, b.fallbacks))
            .collect();
        assert_eq!(buckets, vec![(0, 2, 1, 0), (100, 1, 0, 1), (200, 2, 2, 1)]);

        let empty = StatsBuilder::new(w).finish();
        assert_eq!(empty.requests, 0);
        assert_eq!(empty.success_rate, None);
        assert_eq!(empty.latency_p50_ms, None);
        assert_eq!(empty.buckets.len(), 3, "empty buckets are kept");
        Ok(())
    }

    #[test]
    fn the_aggregator_splits_by_account_and_keeps_idle_ones() -> Result<(), InvalidWindow> {
        let mut agg = Aggregator::new(Window::new(0, 100, 50)?);
        agg.include_account("idle");
        agg.add(&sample("a", 10, 200, false, 5));
        let mut other_pool = sample("a", 60, 500, false, 7);
        other_pool.pool_id = "p2".into();
        agg.add(&other_pool);
        agg.add(&sample("b", 70, 200, true, 9));
        agg.add(&sample("c", 100, 200, false, 9)); // outside: no entry for c
        let (total, accounts) = agg.finish();
        assert_eq!((total.requests, total.errors, total.fallbacks), (3, 1, 1));
        let ids: Vec<&str> = accounts.iter().map(|a| a.account_id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "idle"]);
        assert_eq!(
            accounts[0].pool_ids.iter().collect::<Vec<_>>(),
            vec!["p1", "p2"]
        );
        assert_eq!(accounts[0].stats.requests, 2);
        assert_eq!(accounts[0].stats.success_rate, Some(0.5));
        assert_eq!(accounts[1].stats.fallbacks, 1);
        assert_eq!(accounts[2].stats.requests, 0);
        assert_eq!(accounts[2].stats.buckets.len(), 2);
        Ok(())
    }

    #[test]
    fn accounts_sort_by_label_with_deleted_ones_last() -> Result<(), InvalidWindow> {
        let stats = StatsBuilder::new(Window::new(0, 1, 1)?).finish();
        let acc = |id: &str, label: Option<&str>| AccountActivity {
            account_id: id.to_owned(),
            label: label.map(str::to_owned),
            pools: Vec::new(),
            health: None,
            stats: stats.clone(),
        };
        let mut v = vec![
            acc("3", None),
            acc("2", Some("beta")),
            acc("9", Some("alpha")),
            acc("1", Some("beta")),
            acc("0", None),
        ];
        sort_accounts(&mut v);
        let ids: Vec<&str> = v.iter().map(|a| a.account_id.as_str()).collect();
        assert_eq!(ids, vec!["9", "1", "2", "0", "3"]);
        Ok(())
    }

    #[test]
    fn serialises_flat_with_stable_names() -> Result<(), Box<dyn std::error::Error>> {
        let mut agg = Aggregator::new(Window::new(0, 10, 10)?);
        agg.add(&sample("a", 1, 200, false, 5));
        let (_, accounts) = agg.finish();
        let one = AccountActivity {
            account_id: "a".into(),
            label: Some("alpha".into()),
            pools: vec!["p1".into()],
            health: Some(90),
            stats: accounts[0].stats.clone(),
        };
        let v = serde_json::to_value(&one)?;
        assert_eq!(v["account_id"], "a");
        assert_eq!(v["requests"], 1);
        assert_eq!(v["success_rate"], 1.0);
        assert_eq!(v["latency_p99_ms"], 5);
        assert_eq!(v["buckets"][0]["start_ms"], 0);
        assert!(v.get("stats").is_none(), "flattened");
        Ok(())
    }
}
