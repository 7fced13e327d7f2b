//! Which accounts may serve a request, and in which order they are tried.
//!
//! Rules kept here:
//! - Eligibility ([`eligibility`]) and the strategies' orders are defined once, here; `ranker`
//!   computes the same answer without walking the whole pool per request.
//! - Every replica agrees on the order for the same snapshot and request (the base order is by
//!   account id; only the per-process round-robin turn differs).
//! - The downstream filter ranks once per request and carries the first candidates (attempts plus
//!   spares); the upstream filter takes the k-th candidate on attempt k, re-checking eligibility
//!   against the newest snapshot and local state.
//! - Nobody can serve: 429 with the pool's earliest reset when every account is out for usage,
//!   503 otherwise.

use crate::errors::{ErrorKind, GatewayError};
use crate::local::{effective_quota, token_fingerprint, LocalAccount, LocalTable};
use crate::pb;

use codexmesh_proto::defaults;
/// The routing defaults live in the contract crate ([`codexmesh_proto::defaults`]), shared with
/// the control plane; these names stay for the filter's callers.
pub use codexmesh_proto::defaults::{MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_CAP};
/// How long a half-open probe is reserved for the request that took it.
pub const PROBE_RESERVATION_MS: i64 = 30_000;
/// Accounts whose quota score is within this fraction of the best share the traffic.
pub(crate) const QUOTA_TIE_FRACTION: f64 = 0.02;

/// Thresholds and timings, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub primary_threshold_percent: f64,
    pub secondary_threshold_percent: f64,
    pub circuit_failures: u32,
    pub circuit_open_ms: u32,
    pub cooldown_max_ms: u32,
}

impl Limits {
    pub fn from_settings(s: Option<&pb::RoutingSettings>) -> Self {
        let pct = |v: f64, d: f64| {
            if v > 0.0 && v.is_finite() {
                v.min(100.0)
            } else {
                d
            }
        };
        let num = |v: u32, d: u32| if v > 0 { v } else { d };
        Self {
            primary_threshold_percent: pct(
                s.map_or(0.0, |s| s.primary_threshold_percent),
                defaults::PRIMARY_THRESHOLD_PERCENT,
            ),
            secondary_threshold_percent: pct(
                s.map_or(0.0, |s| s.secondary_threshold_percent),
                defaults::SECONDARY_THRESHOLD_PERCENT,
            ),
            circuit_failures: num(
                s.map_or(0, |s| s.circuit_failures),
                defaults::CIRCUIT_FAILURES,
            ),
            circuit_open_ms: num(
                s.map_or(0, |s| s.circuit_open_ms),
                defaults::CIRCUIT_OPEN_MS,
            ),
            cooldown_max_ms: num(
                s.map_or(0, |s| s.cooldown_max_ms),
                defaults::COOLDOWN_MAX_MS,
            ),
        }
    }
}

pub fn strategy(settings: Option<&pb::RoutingSettings>) -> pb::Strategy {
    match settings.map(|s| pb::Strategy::try_from(s.strategy)) {
        Some(Ok(pb::Strategy::Unspecified)) | Some(Err(_)) | None => defaults::STRATEGY,
        Some(Ok(s)) => s,
    }
}

pub fn strategy_name(s: pb::Strategy) -> &'static str {
    match s {
        pb::Strategy::RoundRobin => "round_robin",
        pb::Strategy::PrimaryFirst => "primary_first",
        pb::Strategy::PriorityOrder => "priority_order",
        pb::Strategy::QuotaFirst | pb::Strategy::Unspecified => "quota_first",
    }
}

/// Why an account cannot take this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    Paused,
    NeedsReauth,
    NoToken,
    /// Its current token answered 401 here; waits for the control plane's refresh.
    AuthRejected,
    /// Usage spent (429 cooldown, or a window over its threshold) until then (unix ms; 0 =
    /// unknown).
    UsageLimited {
        until_ms: i64,
    },
    CircuitOpen {
        until_ms: i64,
    },
}

impl Ineligible {
    /// Whether the account is out only for quota reasons (so the pool-exhausted answer is 429).
    pub fn is_usage(self) -> bool {
        matches!(self, Self::UsageLimited { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    /// The circuit's open period ended: one probe request may try it.
    HalfOpen,
    Out(Ineligible),
}

/// A quota window counts as used up to its `used_percent` until its reset time passes; after
/// that it is fresh, without anyone's help.
fn window_used(w: Option<&pb::QuotaWindow>, now_ms: i64) -> Option<(f64, i64)> {
    let w = w?;
    let resets_ms = w.resets_at_unix.saturating_mul(1000);
    if w.resets_at_unix > 0 && resets_ms <= now_ms {
        return Some((0.0, 0));
    }
    Some((w.used_percent, resets_ms))
}

pub fn eligibility(
    account: &pb::Account,
    local: &LocalAccount,
    limits: &Limits,
    now_ms: i64,
) -> Eligibility {
    match pb::AccountState::try_from(account.state) {
        Ok(pb::AccountState::Active) => {}
        Ok(pb::AccountState::CoolingDown) => {
            let until_ms = account.cooldown_until_unix.saturating_mul(1000);
            if until_ms > now_ms {
                return Eligibility::Out(Ineligible::UsageLimited { until_ms });
            }
        }
        Ok(pb::AccountState::NeedsReauth) => return Eligibility::Out(Ineligible::NeedsReauth),
        _ => return Eligibility::Out(Ineligible::Paused),
    }
    if account.access_token.is_empty() {
        return Eligibility::Out(Ineligible::NoToken);
    }
    if local.auth_failed_token != 0
        && local.auth_failed_token == token_fingerprint(&account.access_token)
    {
        return Eligibility::Out(Ineligible::AuthRejected);
    }
    if local.cooldown_until_ms > now_ms {
        return Eligibility::Out(Ineligible::UsageLimited {
            until_ms: local.cooldown_until_ms,
        });
    }
    if let Some(q) = effective_quota(account, local).as_ref() {
        for (w, threshold) in [
            (q.primary.as_ref(), limits.primary_threshold_percent),
            (q.secondary.as_ref(), limits.secondary_threshold_percent),
        ] {
            if let Some((used, resets_ms)) = window_used(w, now_ms) {
                if used >= threshold {
                    return Eligibility::Out(Ineligible::UsageLimited {
                        until_ms: resets_ms,
                    });
                }
            }
        }
    }
    if local.circuit_open_until_ms > now_ms {
        return Eligibility::Out(Ineligible::CircuitOpen {
            until_ms: local.circuit_open_until_ms,
        });
    }
    if local.circuit_open_until_ms > 0 {
        // Open period over: one probe at a time.
        return if local.probe_until_ms > now_ms {
            Eligibility::Out(Ineligible::CircuitOpen {
                until_ms: local.probe_until_ms,
            })
        } else {
            Eligibility::HalfOpen
        };
    }
    Eligibility::Eligible
}

/// The effective routing for a key: its override when it has one, else its pool's.
pub fn effective_routing<'a>(
    pool: &'a pb::Pool,
    key: &'a pb::PoolKey,
) -> Option<&'a pb::RoutingSettings> {
    key.routing_override.as_ref().or(pool.routing.as_ref())
}

pub fn max_attempts(routing: Option<&pb::RoutingSettings>) -> u32 {
    match routing.map(|r| r.max_attempts) {
        None | Some(0) => DEFAULT_MAX_ATTEMPTS,
        Some(n) => n.min(MAX_ATTEMPTS_CAP),
    }
}

/// Candidates that travel beyond the attempts: they cover accounts that drop out between the
/// ranking and their attempt. The rest of a large pool never travels.
pub const SPARE_CANDIDATES: usize = 2;

/// Headroom that would otherwise be lost: remaining percent divided by the fraction of the
/// window still to run, so an account about to reset is spent first. Unknown quota counts as a
/// fresh window.
pub fn quota_score(quota: Option<&pb::QuotaSummary>, now_ms: i64) -> f64 {
    let window = |w: Option<&pb::QuotaWindow>| -> f64 {
        let Some((used, resets_ms)) = window_used(w, now_ms) else {
            return 100.0;
        };
        let remaining = (100.0 - used).max(0.0);
        let window_ms = w.map_or(0, |w| i64::from(w.window_minutes)) * 60_000;
        if resets_ms <= 0 || window_ms <= 0 {
            return remaining;
        }
        let left = ((resets_ms - now_ms) as f64 / window_ms as f64).clamp(0.1, 1.0);
        remaining / left
    };
    window(quota.and_then(|q| q.primary.as_ref()))
        .min(window(quota.and_then(|q| q.secondary.as_ref())))
}

/// Health below this still keeps a sliver of traffic (so recovery is noticed).
const MIN_HEALTH_WEIGHT: u32 = 10;

/// `quota_first`'s score: headroom ([`quota_score`]) scaled by the account's health score
/// (0–100, computed by the control plane from every Envoy's outcomes over a sliding window and
/// pushed with the snapshot), so a failing account loses its share before its circuit opens and
/// wins it back as its failures age out of the window. Local consecutive failures are left to
/// the circuit: they never decay, and would sideline an account after one transient error.
pub fn steered_score(quota: Option<&pb::QuotaSummary>, health: u32, now_ms: i64) -> f64 {
    let health = f64::from(health.clamp(MIN_HEALTH_WEIGHT, 100)) / 100.0;
    quota_score(quota, now_ms) * health
}

/// Why the first account was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `x-codex-turn-state` was issued by this account.
    TurnState,
    /// The session's own account (`affinity`: multi-probe consistent hashing).
    Affinity,
    /// The pool's strategy.
    Strategy,
    /// A half-open circuit probe goes first so the account can recover.
    Probe,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TurnState => "turn_state",
            Self::Affinity => "affinity",
            Self::Strategy => "strategy",
            Self::Probe => "probe",
        }
    }
}

/// What the request carries that steers the choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    pub affinity_key: Option<&'a str>,
    /// The account that issued the replayed `x-codex-turn-state`, if known here.
    pub turn_state_account: Option<&'a str>,
    /// Per-process counter that makes round robin rotate.
    pub turn: u64,
}

#[derive(Debug, Clone)]
pub struct Ranking<'a> {
    /// The first candidates, in the order the attempts take them: as many as a request can use
    /// (`ranker::candidate_budget`: its attempts plus [`SPARE_CANDIDATES`]).
    pub accounts: Vec<&'a pb::Account>,
    pub reason: Reason,
    pub strategy: pb::Strategy,
    /// Half-open accounts among `accounts`: this request takes their probe (the caller records
    /// it). One that does not travel with the request is left for another.
    pub probes: Vec<String>,
}

/// The answer when nobody can serve: 429 with the pool's earliest reset (unix ms, still ahead)
/// when every account is out for usage reasons, 503 otherwise.
pub(crate) fn exhausted(
    pool_name: &str,
    usage_only: bool,
    earliest_ms: Option<i64>,
    now_ms: i64,
) -> GatewayError {
    if usage_only {
        return GatewayError::pool_exhausted(pool_name, earliest_ms, now_ms);
    }
    GatewayError::new(
        ErrorKind::NoAccountAvailable,
        format!(
            "No account in pool '{pool_name}' can serve requests right now (paused, needing re-login, or failing)."
        ),
    )
}

/// The answer of a pool that has no accounts at all: what to do about it, not a guess at why.
pub(crate) fn empty_pool(pool_name: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NoAccountAvailable,
        format!(
            "Pool '{pool_name}' has no accounts yet: add one with `codexmesh account import --pool {pool_name} <auth.json>` (or `codexmesh account login --pool {pool_name}`)."
        ),
    )
}

/// Picks the account for attempt `attempt` (1-based) from the ranked ids, re-checking each against
/// the newest snapshot and local state: a candidate that became ineligible since is skipped.
pub fn account_for_attempt<'a, F>(
    ranked: &[String],
    attempt: u32,
    lookup: F,
    local: &LocalTable,
    limits: &Limits,
    now_ms: i64,
) -> Option<&'a pb::Account>
where
    F: Fn(&str) -> Option<&'a pb::Account>,
{
    let first = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    ranked
        .iter()
        .skip(first)
        .filter_map(|id| lookup(id))
        .find(|a| {
            // A probe reserved by this very request counts as eligible.
            let l = local.get(&a.id);
            match eligibility(a, &l, limits, now_ms) {
                Eligibility::Eligible | Eligibility::HalfOpen => true,
                Eligibility::Out(Ineligible::CircuitOpen { .. }) => {
                    l.probe_until_ms > now_ms && l.circuit_open_until_ms <= now_ms
                }
                Eligibility::Out(_) => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranker::rank_pool;
    use crate::snapshot::tests::{account, sample};
    use crate::snapshot::SnapshotIndex;
    use std::collections::BTreeMap;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ids(v: &[&pb::Account]) -> Vec<String> {
        v.iter().map(|a| a.id.clone()).collect()
    }

    #[test]
    fn a_snapshot_sorted_once_ranks_exactly_like_an_unsorted_pool() {
        // Ids deliberately out of order; the index sorts them once, rank_pool() must not care.
        let mut p = pool(0);
        p.accounts = (0..300)
            .rev()
            .map(|i| {
                account(
                    &format!("acc-{:04}", (i * 7919) % 300),
                    pb::AccountState::Active,
                )
            })
            .collect();
        let unsorted = p.clone();
        let index = SnapshotIndex::new(pb::Snapshot {
            version: 1,
            pools: vec![p],
            ..Default::default()
        });
        let sorted = index.pool(0).unwrap();
        assert!(sorted.accounts.is_sorted_by(|a, b| a.id <= b.id));
        let local = LocalTable::default();
        for (i, strategy) in [pb::Strategy::QuotaFirst, pb::Strategy::RoundRobin]
            .into_iter()
            .enumerate()
        {
            let s = settings(strategy);
            for key in [None, Some("session-1"), Some("session-2")] {
                let input = RouteInput {
                    affinity_key: key,
                    turn: i as u64,
                    ..Default::default()
                };
                assert_eq!(
                    ids(&rank_pool(sorted, Some(&s), &local, input, 0)
                        .unwrap()
                        .accounts),
                    ids(&rank_pool(&unsorted, Some(&s), &local, input, 0)
                        .unwrap()
                        .accounts),
                    "{strategy:?} {key:?}"
                );
            }
        }
    }

    fn settings(strategy: pb::Strategy) -> pb::RoutingSettings {
        pb::RoutingSettings {
            strategy: strategy as i32,
            ..Default::default()
        }
    }

    fn pool(n: usize) -> pb::Pool {
        pb::Pool {
            id: "p".into(),
            name: "p".into(),
            accounts: (0..n)
                .map(|i| account(&format!("a{i}"), pb::AccountState::Active))
                .collect(),
            ..Default::default()
        }
    }

    fn quota(used: f64, resets_unix: i64, minutes: u32) -> Option<pb::QuotaSummary> {
        Some(pb::QuotaSummary {
            primary: Some(pb::QuotaWindow {
                used_percent: used,
                window_minutes: minutes,
                resets_at_unix: resets_unix,
            }),
            secondary: None,
            observed_at_unix_ms: 0,
        })
    }

    fn first(
        p: &pb::Pool,
        s: &pb::RoutingSettings,
        local: &LocalTable,
        input: RouteInput<'_>,
        now: i64,
    ) -> String {
        rank_pool(p, Some(s), local, input, now).unwrap().accounts[0]
            .id
            .clone()
    }

    #[test]
    fn round_robin_rotates_over_active_accounts_only() {
        let snap = sample();
        let rr = settings(pb::Strategy::RoundRobin);
        let l = LocalTable::default();
        let r = |turn| {
            ids(&rank_pool(
                &snap.pools[0],
                Some(&rr),
                &l,
                RouteInput {
                    turn,
                    ..Default::default()
                },
                0,
            )
            .unwrap()
            .accounts)
        };
        assert_eq!(r(0), ["a1", "a2"]);
        assert_eq!(r(1), ["a2", "a1"]);
        assert_eq!(r(2), ["a1", "a2"]);
    }

    #[test]
    fn round_robin_is_exact_and_weights_are_honoured() {
        let mut p = pool(3);
        let rr = settings(pb::Strategy::RoundRobin);
        let l = LocalTable::default();
        let count = |p: &pb::Pool, n: u64| {
            let mut c = BTreeMap::new();
            for turn in 0..n {
                *c.entry(first(
                    p,
                    &rr,
                    &l,
                    RouteInput {
                        turn,
                        ..Default::default()
                    },
                    0,
                ))
                .or_insert(0) += 1;
            }
            c
        };
        assert_eq!(
            count(&p, 300).values().copied().collect::<Vec<_>>(),
            [100, 100, 100]
        );
        p.accounts[2].weight = 2;
        let c = count(&p, 400);
        assert_eq!(c.values().copied().collect::<Vec<_>>(), [100, 100, 200]);
        // Interleaved, not in runs: a2 never leads twice in a row more than once per cycle.
        let seq: Vec<String> = (0..4)
            .map(|turn| {
                first(
                    &p,
                    &rr,
                    &l,
                    RouteInput {
                        turn,
                        ..Default::default()
                    },
                    0,
                )
            })
            .collect();
        assert_eq!(seq.iter().filter(|s| *s == "a2").count(), 2);
    }

    #[test]
    fn quota_first_prefers_headroom_and_spends_soon_resetting_accounts_first() {
        let mut p = pool(3);
        let now = 1_000_000_000;
        p.accounts[0].quota = quota(80.0, now / 1000 + 4 * 3600, 300);
        p.accounts[1].quota = quota(30.0, now / 1000 + 4 * 3600, 300);
        p.accounts[2].quota = quota(60.0, now / 1000 + 4 * 3600, 300);
        let qf = settings(pb::Strategy::QuotaFirst);
        let l = LocalTable::default();
        assert_eq!(first(&p, &qf, &l, RouteInput::default(), now), "a1");
        // a0 resets in 10 minutes with 20 % left: use it before it's lost.
        p.accounts[0].quota = quota(80.0, now / 1000 + 600, 300);
        assert_eq!(first(&p, &qf, &l, RouteInput::default(), now), "a0");
    }

    #[test]
    fn quota_seen_here_counts_before_the_next_snapshot() {
        use crate::local::SeenQuota;
        let mut p = pool(2);
        let now = 1_000_000_000;
        let resets = now / 1000 + 4 * 3600;
        p.accounts[0].quota = quota(10.0, resets, 300);
        p.accounts[1].quota = quota(30.0, resets, 300);
        for a in &mut p.accounts {
            if let Some(q) = a.quota.as_mut() {
                q.observed_at_unix_ms = now - 5_000;
            }
        }
        let qf = settings(pb::Strategy::QuotaFirst);
        let mut l = LocalTable::default();
        assert_eq!(first(&p, &qf, &l, RouteInput::default(), now), "a0");
        // Answers since the snapshot show a0 at 50 %: a1 has more headroom now.
        let seen = |used: f64, at: i64| LocalAccount {
            seen_quota: SeenQuota::from_pb(
                &quota(used, resets, 300)
                    .map(|mut q| {
                        q.observed_at_unix_ms = at;
                        q
                    })
                    .unwrap(),
            ),
            ..Default::default()
        };
        l.set("a0", seen(50.0, now - 1_000));
        assert_eq!(first(&p, &qf, &l, RouteInput::default(), now), "a1");
        // Over the threshold as seen here: out, with its reset as the pool's earliest.
        l.set("a0", seen(96.0, now - 1_000));
        l.set("a1", seen(99.0, now - 1_000));
        let err = rank_pool(&p, Some(&qf), &l, RouteInput::default(), now).unwrap_err();
        assert_eq!(err.status(), 429, "{err:?}");
        // A snapshot newer than what was seen here wins again.
        for a in &mut p.accounts {
            if let Some(q) = a.quota.as_mut() {
                q.observed_at_unix_ms = now;
            }
        }
        assert_eq!(first(&p, &qf, &l, RouteInput::default(), now), "a0");
    }

    #[test]
    fn quota_first_spreads_over_equal_accounts() {
        let p = pool(3);
        let qf = settings(pb::Strategy::QuotaFirst);
        let l = LocalTable::default();
        let mut c = BTreeMap::new();
        for turn in 0..300 {
            *c.entry(first(
                &p,
                &qf,
                &l,
                RouteInput {
                    turn,
                    ..Default::default()
                },
                0,
            ))
            .or_insert(0) += 1;
        }
        assert_eq!(c.values().copied().collect::<Vec<_>>(), [100, 100, 100]);
    }

    #[test]
    fn a_failing_account_loses_its_share_before_its_circuit_opens() {
        let mut p = pool(3);
        let qf = settings(pb::Strategy::QuotaFirst);
        let l = LocalTable::default();
        // The control plane's health score fell (its circuit here is still closed).
        p.accounts[1].health = 60;
        let sick = p.accounts[1].id.clone();
        let mut c = BTreeMap::new();
        for turn in 0..300 {
            let input = RouteInput {
                turn,
                ..Default::default()
            };
            *c.entry(first(&p, &qf, &l, input, 0)).or_insert(0) += 1;
        }
        assert_eq!(c.get(&sick), None, "{c:?}");
        assert_eq!(c.values().copied().collect::<Vec<_>>(), [150, 150]);
        // Recovered: it shares again.
        p.accounts[1].health = 100;
        let back = (0..3)
            .map(|turn| {
                let input = RouteInput {
                    turn,
                    ..Default::default()
                };
                first(&p, &qf, &l, input, 0)
            })
            .any(|id| id == sick);
        assert!(back);
        // It still serves when it is the only one left with headroom.
        assert!(steered_score(None, 60, 0) > steered_score(None, 100, 0) * 0.5);
    }

    #[test]
    fn an_empty_pool_says_how_to_fill_it() {
        let p = pool(0);
        let err = rank_pool(
            &p,
            Some(&settings(pb::Strategy::QuotaFirst)),
            &LocalTable::default(),
            RouteInput::default(),
            0,
        )
        .unwrap_err();
        assert_eq!(err.status(), 503);
        assert!(err.message.contains("no accounts yet"), "{}", err.message);
        assert!(err.message.contains("codexmesh account import"));
    }

    #[test]
    fn default_strategy_is_quota_first() {
        assert_eq!(strategy(None), pb::Strategy::QuotaFirst);
        assert_eq!(
            strategy(Some(&settings(pb::Strategy::Unspecified))),
            pb::Strategy::QuotaFirst
        );
    }

    #[test]
    fn primary_first_and_priority_order() {
        let mut p = pool(3);
        p.accounts[0].priority = 5;
        p.accounts[1].priority = 1;
        p.accounts[2].priority = 3;
        let l = LocalTable::default();
        let mut pf = settings(pb::Strategy::PrimaryFirst);
        pf.primary_account_id = "a2".into();
        assert_eq!(
            ids(&rank_pool(&p, Some(&pf), &l, RouteInput::default(), 0)
                .unwrap()
                .accounts),
            ["a2", "a1", "a0"]
        );
        let po = settings(pb::Strategy::PriorityOrder);
        assert_eq!(
            ids(&rank_pool(&p, Some(&po), &l, RouteInput::default(), 0)
                .unwrap()
                .accounts),
            ["a1", "a2", "a0"]
        );
        // The owner cools down: the rest take over, in priority order.
        let mut local = LocalTable::default();
        local.set(
            "a2",
            LocalAccount {
                cooldown_until_ms: 10,
                ..Default::default()
            },
        );
        assert_eq!(first(&p, &pf, &local, RouteInput::default(), 0), "a1");
        assert_eq!(first(&p, &pf, &local, RouteInput::default(), 10), "a2");
    }

    #[test]
    fn thresholds_exclude_and_a_reset_window_comes_back_by_itself() {
        let mut p = pool(2);
        let now = 1_000_000;
        p.accounts[0].quota = quota(95.0, now / 1000 + 60, 300);
        let qf = settings(pb::Strategy::QuotaFirst);
        let l = LocalTable::default();
        let r = rank_pool(&p, Some(&qf), &l, RouteInput::default(), now).unwrap();
        assert_eq!(ids(&r.accounts), ["a1"]);
        // After the reset time the same (stale) evidence no longer counts.
        let later = now + 61_000;
        let r = rank_pool(&p, Some(&qf), &l, RouteInput::default(), later).unwrap();
        assert_eq!(r.accounts.len(), 2);
        // Secondary threshold is 99 by default.
        p.accounts[1].quota = Some(pb::QuotaSummary {
            secondary: Some(pb::QuotaWindow {
                used_percent: 98.9,
                window_minutes: 10080,
                resets_at_unix: 0,
            }),
            ..Default::default()
        });
        assert_eq!(
            rank_pool(&p, Some(&qf), &l, RouteInput::default(), now)
                .unwrap()
                .accounts
                .len(),
            1
        );
    }

    #[test]
    fn pool_exhausted_is_429_with_the_earliest_reset() {
        let mut p = pool(2);
        let now = 1_000_000;
        p.accounts[0].quota = quota(100.0, 5_000, 300);
        let mut local = LocalTable::default();
        local.set(
            "a1",
            LocalAccount {
                cooldown_until_ms: 3_000_000,
                ..Default::default()
            },
        );
        let err = rank_pool(&p, None, &local, RouteInput::default(), now).unwrap_err();
        assert_eq!((err.kind, err.status()), (ErrorKind::PoolExhausted, 429));
        assert_eq!(err.resets_at_unix, Some(3_000));
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["type"], "usage_limit_reached");
        assert_eq!(body["error"]["resets_at"], 3_000);
        assert!(err
            .headers()
            .iter()
            .any(|(k, v)| *k == "retry-after" && v == "2000"));
        // One paused account among them: not a quota problem any more → 503.
        p.accounts[0].state = pb::AccountState::Paused as i32;
        let err = rank_pool(&p, None, &local, RouteInput::default(), now).unwrap_err();
        assert_eq!(err.status(), 503);
    }

    #[test]
    fn local_state_excludes_and_circuit_half_opens_for_one_probe() {
        let p = pool(2);
        let qf = settings(pb::Strategy::QuotaFirst);
        let mut local = LocalTable::default();
        local.set(
            "a0",
            LocalAccount {
                circuit_open_until_ms: 100,
                consecutive_failures: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            ids(&rank_pool(&p, Some(&qf), &local, RouteInput::default(), 50)
                .unwrap()
                .accounts),
            ["a1"]
        );
        let r = rank_pool(&p, Some(&qf), &local, RouteInput::default(), 100).unwrap();
        assert_eq!(
            (ids(&r.accounts), r.reason, r.probes.clone()),
            (
                vec!["a0".to_string(), "a1".to_string()],
                Reason::Probe,
                vec!["a0".to_string()]
            )
        );
        // While a probe is out, nobody else probes.
        local.set(
            "a0",
            LocalAccount {
                circuit_open_until_ms: 100,
                probe_until_ms: 5_000,
                consecutive_failures: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            ids(
                &rank_pool(&p, Some(&qf), &local, RouteInput::default(), 200)
                    .unwrap()
                    .accounts
            ),
            ["a1"]
        );
        // 401 on the current token blocks only that token.
        let mut p2 = pool(1);
        let mut local = LocalTable::default();
        local.set(
            "a0",
            LocalAccount {
                auth_failed_token: token_fingerprint("token-a0"),
                ..Default::default()
            },
        );
        assert!(rank_pool(&p2, None, &local, RouteInput::default(), 0).is_err());
        p2.accounts[0].access_token = "refreshed".into();
        assert!(rank_pool(&p2, None, &local, RouteInput::default(), 0).is_ok());
    }

    #[test]
    fn affinity_is_stable_and_moves_only_when_its_account_drops_out() {
        let mut p = pool(4);
        let qf = settings(pb::Strategy::QuotaFirst);
        let l = LocalTable::default();
        let owner = |p: &pb::Pool, key: &str, turn| {
            first(
                p,
                &qf,
                &l,
                RouteInput {
                    affinity_key: Some(key),
                    turn,
                    ..Default::default()
                },
                0,
            )
        };
        let before: Vec<String> = (0..400).map(|i| owner(&p, &format!("s{i}"), i)).collect();
        // Stable across turns (and so across replicas: no per-process input is used).
        for (i, o) in before.iter().enumerate().take(50) {
            assert_eq!(&owner(&p, &format!("s{i}"), 999), o);
        }
        // Adding a fifth account moves about 1/5 of sessions, all of them to the newcomer.
        p.accounts.push(account("a4", pb::AccountState::Active));
        let after: Vec<String> = (0..400)
            .map(|i| owner(&p, &format!("s{i}"), i as u64))
            .collect();
        let moved: Vec<usize> = (0..400).filter(|i| before[*i] != after[*i]).collect();
        assert!((50..110).contains(&moved.len()), "moved {}", moved.len());
        assert!(moved.iter().all(|i| after[*i] == "a4"));
        // The owner of s0 pauses: only its sessions move.
        let gone = after[0].clone();
        let ix = p.accounts.iter().position(|a| a.id == gone).unwrap();
        p.accounts[ix].state = pb::AccountState::Paused as i32;
        for (i, before_pause) in after.iter().enumerate() {
            let now = owner(&p, &format!("s{i}"), 0);
            if *before_pause != gone {
                assert_eq!(&now, before_pause);
            } else {
                assert_ne!(now, gone);
            }
        }
    }

    #[test]
    fn turn_state_pins_the_issuing_account() {
        let p = pool(3);
        let l = LocalTable::default();
        let r = rank_pool(
            &p,
            None,
            &l,
            RouteInput {
                turn_state_account: Some("a2"),
                affinity_key: Some("x"),
                turn: 0,
            },
            0,
        )
        .unwrap();
        assert_eq!(
            (r.accounts[0].id.as_str(), r.reason),
            ("a2", Reason::TurnState)
        );
    }

    #[test]
    fn attempts_walk_the_ranking_and_skip_newly_ineligible() {
        let mut snap = sample();
        let ranked: Vec<String> = vec!["a2".into(), "a1".into(), "gone".into()];
        let limits = Limits::from_settings(None);
        let l = LocalTable::default();
        let index = SnapshotIndex::new(snap.clone());
        let look = |id: &str| index.account(id).map(|(_, a)| a);
        assert_eq!(
            account_for_attempt(&ranked, 1, look, &l, &limits, 0)
                .unwrap()
                .id,
            "a2"
        );
        assert_eq!(
            account_for_attempt(&ranked, 2, look, &l, &limits, 0)
                .unwrap()
                .id,
            "a1"
        );
        assert!(account_for_attempt(&ranked, 3, look, &l, &limits, 0).is_none());
        assert!(account_for_attempt(&ranked, u32::MAX, look, &l, &limits, 0).is_none());
        // a2 paused after ranking: attempt 1 moves on to a1.
        snap.pools[0].accounts[1].state = pb::AccountState::Paused as i32;
        let index = SnapshotIndex::new(snap);
        let look = |id: &str| index.account(id).map(|(_, a)| a);
        assert_eq!(
            account_for_attempt(&ranked, 1, look, &l, &limits, 0)
                .unwrap()
                .id,
            "a1"
        );
    }

    #[test]
    fn huge_turn_counter_does_not_overflow_on_32_bit() {
        let p = pool(3);
        let rr = settings(pb::Strategy::RoundRobin);
        let l = LocalTable::default();
        assert_eq!(
            rank_pool(
                &p,
                Some(&rr),
                &l,
                RouteInput {
                    turn: u64::MAX,
                    ..Default::default()
                },
                0
            )
            .unwrap()
            .accounts
            .len(),
            3
        );
        assert_eq!(
            rank_pool(
                &p,
                None,
                &l,
                RouteInput {
                    turn: u64::MAX,
                    ..Default::default()
                },
                0
            )
            .unwrap()
            .accounts
            .len(),
            3
        );
    }

    #[test]
    fn attempts_are_bounded() {
        assert_eq!(max_attempts(None), DEFAULT_MAX_ATTEMPTS);
        let r = pb::RoutingSettings {
            max_attempts: 99,
            ..Default::default()
        };
        assert_eq!(max_attempts(Some(&r)), MAX_ATTEMPTS_CAP);
        // Unset settings (zeros) read as the contract's defaults.
        let expected = Limits {
            primary_threshold_percent: defaults::PRIMARY_THRESHOLD_PERCENT,
            secondary_threshold_percent: defaults::SECONDARY_THRESHOLD_PERCENT,
            circuit_failures: defaults::CIRCUIT_FAILURES,
            circuit_open_ms: defaults::CIRCUIT_OPEN_MS,
            cooldown_max_ms: defaults::COOLDOWN_MAX_MS,
        };
        assert_eq!(Limits::from_settings(None), expected);
        assert_eq!(
            Limits::from_settings(Some(&pb::RoutingSettings::default())),
            expected
        );
    }
}
