//! Ranking a pool for one request with work that does not grow with the pool.
//!
//! Rules this module keeps:
//! - The answer is the straightforward one (`routing::eligibility` on every account, then the
//!   strategy's full order) cut to the candidates a request can use: its attempts plus
//!   `routing::SPARE_CANDIDATES`. A test compares both on random pools.
//! - What depends only on the snapshot is computed once per version ([`PoolIndex`], built with
//!   `SnapshotIndex`): the id order, the priority order, the affinity ring.
//! - What depends on local state and the clock ([`Prepared`]: who is eligible, the quota or round
//!   robin order, the pool-exhausted answer) is computed once per (snapshot, pool, settings, local
//!   table) per worker and reused until the earliest moment any account's eligibility changes by
//!   the clock (a cooldown, circuit or probe ends, a quota window resets), at most
//!   [`QUOTA_SCORE_TTL_MS`] when quota scores order the pool and [`MAX_REUSE_MS`] otherwise.
//! - A newer local table does not force that pass on every write (answers write it often): for
//!   [`LOCAL_GRACE_MS`] the prepared order is reused and every candidate handed out is re-checked
//!   against the newest table, so a new cooldown, open circuit, taken probe or 401 block counts at
//!   once. Only an account that local state let back in waits, at most that long. Under
//!   quota_first the head of the prepared order (its tied group and the candidate budget, plus a
//!   few) is also scored again against the newest table, since answers move quota between
//!   requests.
//! - When no account can serve, the answer (429 with the earliest reset, else 503) comes from a
//!   full pass against the newest state, as before.
//! - Deterministic from the snapshot and the request; no clock of its own; no panics.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use crate::errors::GatewayError;
use crate::local::{effective_quota, LocalAccount, LocalTable};
use crate::pb;
use crate::pool_index::{as_ix, as_usize, PoolIndex};
use crate::routing::{self, Eligibility, Limits, Ranking, Reason, RouteInput, SPARE_CANDIDATES};
use crate::snapshot::SnapshotIndex;

/// How long a prepared order is reused after the local table moved on (candidates re-checked).
pub const LOCAL_GRACE_MS: i64 = 1_000;
/// How long quota scores (which drift as windows run down) are reused.
pub const QUOTA_SCORE_TTL_MS: i64 = 1_000;
/// Longest reuse of a prepared order, whatever else holds.
pub const MAX_REUSE_MS: i64 = 10_000;
/// Prepared orders kept per worker (pools × distinct settings in use).
const MAX_ENTRIES: usize = 16;
/// Re-check rounds for affinity candidates before a full pass is cheaper.
const RECHECK_ROUNDS: usize = 4;

/// Candidates a request carries: its attempts plus the spares.
pub fn candidate_budget(settings: Option<&pb::RoutingSettings>) -> usize {
    usize::try_from(routing::max_attempts(settings))
        .unwrap_or(usize::MAX)
        .saturating_add(SPARE_CANDIDATES)
}

/// What a request's settings change about the prepared order.
#[derive(Debug, Clone, PartialEq)]
struct SettingsKey {
    strategy: pb::Strategy,
    limits: Limits,
    primary: String,
}

impl SettingsKey {
    fn new(settings: Option<&pb::RoutingSettings>) -> Self {
        Self {
            strategy: routing::strategy(settings),
            limits: Limits::from_settings(settings),
            primary: settings.map_or_else(String::new, |s| s.primary_account_id.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Eligible,
    HalfOpen,
    Out,
}

fn class_of(e: Eligibility) -> Class {
    match e {
        Eligibility::Eligible => Class::Eligible,
        Eligibility::HalfOpen => Class::HalfOpen,
        Eligibility::Out(_) => Class::Out,
    }
}

/// Smooth enough, exact round robin over weighted accounts without replaying a state machine.
#[derive(Debug, Clone, Default)]
struct RoundRobin {
    /// Running sums of the eligible accounts' weights (divided by their gcd), in id order.
    prefix: Vec<u64>,
    total: u64,
    /// Stride of the turn through the cycle (coprime with `total`).
    stride: u64,
    /// All weights equal: plain rotation.
    equal: bool,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A stride near `total / φ` and coprime with `total`: turn t leads with the account whose block
/// holds `t × stride mod total`, a golden-ratio sequence that spreads consecutive turns over the
/// whole cycle (low discrepancy) and, being a bijection, gives each account exactly its weight's
/// share of every cycle.
fn weyl_stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let base = ((total as f64) * 0.618_033_988_749_894_9).round() as u64;
    let base = base.clamp(1, total - 1);
    for d in 0..total {
        for candidate in [base.saturating_add(d), base.saturating_sub(d)] {
            if (1..total).contains(&candidate) && gcd(candidate, total) == 1 {
                return candidate;
            }
        }
    }
    1
}

impl RoundRobin {
    fn new(weights: &[u32]) -> Self {
        let clamped: Vec<u64> = weights
            .iter()
            .map(|w| u64::from((*w).clamp(1, 1000)))
            .collect();
        let g = clamped.iter().fold(0, |g, w| gcd(g, *w)).max(1);
        let mut prefix = Vec::with_capacity(clamped.len());
        let mut total = 0u64;
        for w in &clamped {
            total = total.saturating_add(w / g);
            prefix.push(total);
        }
        Self {
            equal: total == u64::try_from(clamped.len()).unwrap_or(0),
            stride: weyl_stride(total),
            prefix,
            total,
        }
    }

    /// Which eligible account (position in id order) leads at `turn`.
    fn leader(&self, turn: u64) -> usize {
        if self.total == 0 {
            return 0;
        }
        let step = turn % self.total;
        if self.equal {
            return usize::try_from(step).unwrap_or(0);
        }
        let spot = u128::from(step) * u128::from(self.stride) % u128::from(self.total);
        let spot = u64::try_from(spot).unwrap_or(0);
        self.prefix.partition_point(|end| *end <= spot)
    }
}

/// The pool-exhausted answer's inputs, from the full pass.
#[derive(Debug, Clone, Copy, Default)]
struct Exhausted {
    /// Some account is out, and every one that is out is out for usage.
    usage_only: bool,
    earliest_reset_ms: Option<i64>,
}

/// Who may serve and in which order, for one pool, settings and local table, at `built_ms`.
#[derive(Debug, Clone)]
struct Prepared {
    key: SettingsKey,
    built_ms: i64,
    valid_until_ms: i64,
    class: Vec<Class>,
    /// Half-open accounts, id order.
    half_open: Vec<u32>,
    /// Eligible accounts in the strategy's order (id order for round robin).
    eligible: Vec<u32>,
    /// Quota first: how many at the head share the traffic in turn.
    tied: usize,
    rr: RoundRobin,
    exhausted: Exhausted,
}

/// The next moment (after `now`) this account's eligibility or quota score can change by the
/// clock alone.
fn next_change(account: &pb::Account, local: &LocalAccount, now: i64) -> i64 {
    let mut times = vec![
        local.cooldown_until_ms,
        local.circuit_open_until_ms,
        local.probe_until_ms,
    ];
    if account.state == pb::AccountState::CoolingDown as i32 {
        times.push(account.cooldown_until_unix.saturating_mul(1000));
    }
    if let Some(q) = effective_quota(account, local) {
        for w in [q.primary, q.secondary].into_iter().flatten() {
            if w.resets_at_unix > 0 {
                times.push(w.resets_at_unix.saturating_mul(1000));
            }
        }
    }
    times
        .into_iter()
        .filter(|t| *t > now)
        .min()
        .unwrap_or(i64::MAX)
}

fn prepare(
    pool: &pb::Pool,
    pix: &PoolIndex,
    key: SettingsKey,
    local: &LocalTable,
    now: i64,
) -> Prepared {
    let n = pix.len();
    let mut class = Vec::with_capacity(n);
    let mut half_open = Vec::new();
    let mut eligible = Vec::new();
    let mut scores: Vec<(f64, u32, u32)> = Vec::new();
    let mut exhausted = Exhausted {
        usage_only: true,
        earliest_reset_ms: None,
    };
    let mut any_out = false;
    let quota_first = key.strategy == pb::Strategy::QuotaFirst;
    let mut valid_until = now.saturating_add(if quota_first {
        QUOTA_SCORE_TTL_MS
    } else {
        MAX_REUSE_MS
    });
    for ix in (0..n).map(as_ix) {
        let Some(account) = pix.account(pool, ix) else {
            class.push(Class::Out);
            continue;
        };
        let state = local.get(&account.id);
        valid_until = valid_until.min(next_change(account, &state, now));
        let e = routing::eligibility(account, &state, &key.limits, now);
        class.push(class_of(e));
        match e {
            Eligibility::Eligible => {
                eligible.push(ix);
                if quota_first {
                    let quota = effective_quota(account, &state);
                    scores.push((
                        routing::steered_score(quota.as_ref(), account.health, now),
                        account.health,
                        ix,
                    ));
                }
            }
            Eligibility::HalfOpen => half_open.push(ix),
            Eligibility::Out(why) => {
                any_out = true;
                match why {
                    routing::Ineligible::UsageLimited { until_ms } if until_ms > now => {
                        exhausted.earliest_reset_ms = Some(
                            exhausted
                                .earliest_reset_ms
                                .map_or(until_ms, |e| e.min(until_ms)),
                        );
                    }
                    _ if why.is_usage() => {}
                    _ => exhausted.usage_only = false,
                }
            }
        }
    }
    exhausted.usage_only &= any_out;
    let mut tied = 0;
    let mut rr = RoundRobin::default();
    let is_eligible = |ix: &u32| class.get(as_usize(*ix)) == Some(&Class::Eligible);
    match key.strategy {
        pb::Strategy::PrimaryFirst => {
            let owner = Some(key.primary.as_str())
                .filter(|id| !id.is_empty())
                .and_then(|id| pix.position(pool, id))
                .filter(is_eligible);
            eligible = owner
                .into_iter()
                .chain(
                    pix.by_priority
                        .iter()
                        .copied()
                        .filter(|ix| is_eligible(ix) && Some(*ix) != owner),
                )
                .collect();
        }
        pb::Strategy::PriorityOrder => {
            eligible = pix
                .by_priority
                .iter()
                .copied()
                .filter(is_eligible)
                .collect();
        }
        pb::Strategy::RoundRobin => {
            let weights: Vec<u32> = eligible
                .iter()
                .map(|ix| pix.account(pool, *ix).map_or(1, |a| a.weight))
                .collect();
            rr = RoundRobin::new(&weights);
        }
        pb::Strategy::QuotaFirst | pb::Strategy::Unspecified => {
            scores.sort_by(|(sa, ha, a), (sb, hb, b)| {
                sb.total_cmp(sa).then(hb.cmp(ha)).then(a.cmp(b))
            });
            let best = scores.first().map_or(0.0, |(s, _, _)| *s);
            tied = scores
                .iter()
                .take_while(|(s, _, _)| *s >= best * (1.0 - routing::QUOTA_TIE_FRACTION))
                .count()
                .max(1);
            eligible = scores.into_iter().map(|(_, _, ix)| ix).collect();
        }
    }
    Prepared {
        key,
        built_ms: now,
        valid_until_ms: valid_until,
        class,
        half_open,
        eligible,
        tied,
        rr,
        exhausted,
    }
}

/// Hands out one request's candidates from a prepared order. `recheck`: the local table when it
/// is newer than the one the order was prepared with (each candidate is checked against it).
/// None when re-checking ran dry: the caller prepares afresh.
/// How many accounts past the tied group and the candidate budget are scored again when the
/// local table moved (see [`serve`]).
const RESCORE_EXTRA: usize = 4;

fn quota_ordered(strategy: pb::Strategy) -> bool {
    matches!(
        strategy,
        pb::Strategy::QuotaFirst | pb::Strategy::Unspecified
    )
}

fn serve<'a>(
    pool: &'a pb::Pool,
    pix: &PoolIndex,
    prep: &Prepared,
    recheck: Option<&LocalTable>,
    input: RouteInput<'_>,
    budget: usize,
    now: i64,
) -> Option<Result<Ranking<'a>, GatewayError>> {
    let limits = &prep.key.limits;
    let strategy = prep.key.strategy;
    let prepared_as = |ix: u32, want: Class| prep.class.get(as_usize(ix)) == Some(&want);
    let still = |ix: u32, want: Class| match recheck {
        None => true,
        Some(local) => pix.account(pool, ix).is_some_and(|a| {
            class_of(routing::eligibility(a, &local.get(&a.id), limits, now)) == want
        }),
    };
    let ok = |ix: u32, want: Class| prepared_as(ix, want) && still(ix, want);
    let budget = budget.max(1);
    let mut out: Vec<u32> = Vec::with_capacity(budget);
    // Only a fully eligible account can be pinned by its turn state; it goes ahead even of probes.
    let pinned = input
        .turn_state_account
        .and_then(|id| pix.position(pool, id))
        .filter(|ix| ok(*ix, Class::Eligible));
    out.extend(pinned);
    // A recovering account is probed first (one request per open period).
    let mut probes = Vec::new();
    for ix in &prep.half_open {
        if out.len() >= budget {
            break;
        }
        if ok(*ix, Class::HalfOpen) {
            out.push(*ix);
            probes.push(*ix);
        }
    }
    let affinity = input.affinity_key.filter(|_| {
        matches!(
            strategy,
            pb::Strategy::RoundRobin | pb::Strategy::QuotaFirst | pb::Strategy::Unspecified
        )
    });
    let want = budget.saturating_sub(out.len());
    if let Some(key) = affinity {
        let mut excluded: Vec<u32> = pinned.into_iter().collect();
        let mut done = false;
        for _ in 0..RECHECK_ROUNDS {
            let top = pix.affinity_top(key, want, &prep.eligible, |ix| {
                prepared_as(ix, Class::Eligible) && !excluded.contains(&ix)
            });
            let failed: Vec<u32> = top
                .iter()
                .map(|(_, ix)| *ix)
                .filter(|ix| !still(*ix, Class::Eligible))
                .collect();
            if failed.is_empty() {
                out.extend(top.into_iter().map(|(_, ix)| ix));
                done = true;
                break;
            }
            excluded.extend(failed);
        }
        if !done {
            return None;
        }
    } else if let (Some(local), true) = (recheck, want > 0 && quota_ordered(strategy)) {
        // The local table moved since the order was prepared, and with it the quota evidence
        // that orders quota_first: answers move headroom between requests. The head of the
        // prepared order (the whole pool when it is small) is scored again against the newest
        // table, so traffic follows headroom request by request, not in one-second steps.
        let window = prep.tied.max(budget).saturating_add(RESCORE_EXTRA);
        let mut scored: Vec<(f64, &pb::Account, u32)> = prep
            .eligible
            .iter()
            .copied()
            .filter(|ix| Some(*ix) != pinned && ok(*ix, Class::Eligible))
            .take(window)
            .filter_map(|ix| {
                let account = pix.account(pool, ix)?;
                let quota = effective_quota(account, &local.get(&account.id));
                let score = routing::steered_score(quota.as_ref(), account.health, now);
                Some((score, account, ix))
            })
            .collect();
        scored.sort_by(|(sa, a, _), (sb, b, _)| {
            sb.total_cmp(sa)
                .then(b.health.cmp(&a.health))
                .then(a.id.cmp(&b.id))
        });
        let best = scored.first().map_or(0.0, |(s, _, _)| *s);
        let tied = scored
            .iter()
            .take_while(|(s, _, _)| *s >= best * (1.0 - routing::QUOTA_TIE_FRACTION))
            .count()
            .max(1);
        let start = usize::try_from(input.turn % u64::try_from(tied).unwrap_or(1)).unwrap_or(0);
        for i in 0..scored.len() {
            if out.len() >= budget {
                break;
            }
            let at = if i < tied { (start + i) % tied } else { i };
            if let Some((_, _, ix)) = scored.get(at) {
                out.push(*ix);
            }
        }
    } else if want > 0 {
        let m = prep.eligible.len();
        let turn = input.turn;
        let (tied, start) = match strategy {
            pb::Strategy::QuotaFirst | pb::Strategy::Unspecified => {
                let tied = prep.tied.clamp(1, m.max(1));
                let start = turn % u64::try_from(tied).unwrap_or(1);
                (tied, usize::try_from(start).unwrap_or(0))
            }
            pb::Strategy::RoundRobin => (m, prep.rr.leader(turn)),
            _ => (0, 0),
        };
        for i in 0..m {
            if out.len() >= budget {
                break;
            }
            let at = if i < tied { (start + i) % tied } else { i };
            let Some(ix) = prep.eligible.get(at).copied() else {
                continue;
            };
            if Some(ix) != pinned && ok(ix, Class::Eligible) {
                out.push(ix);
            }
        }
    }
    if out.is_empty() {
        return match recheck {
            // Everything prepared dropped out since: answer from a full pass.
            Some(_) => None,
            None => Some(Err(routing::exhausted(
                &pool.name,
                prep.exhausted.usage_only,
                prep.exhausted.earliest_reset_ms,
                now,
            ))),
        };
    }
    let reason = if pinned.is_some() {
        Reason::TurnState
    } else if !probes.is_empty() {
        Reason::Probe
    } else if affinity.is_some() {
        Reason::Affinity
    } else {
        Reason::Strategy
    };
    let accounts: Vec<&pb::Account> = out.iter().filter_map(|ix| pix.account(pool, *ix)).collect();
    let probes = probes
        .iter()
        .filter_map(|ix| pix.account(pool, *ix))
        .map(|a| a.id.clone())
        .collect();
    Some(Ok(Ranking {
        accounts,
        reason,
        strategy,
        probes,
    }))
}

/// Orders the pool's eligible accounts for one request, with a full pass over the pool and an
/// index built for it (the filter uses [`rank`], which reuses that pass between requests). The
/// base order is by account id whatever order the pool lists them in.
pub fn rank_pool<'a>(
    pool: &'a pb::Pool,
    settings: Option<&pb::RoutingSettings>,
    local: &LocalTable,
    input: RouteInput<'_>,
    now_ms: i64,
) -> Result<Ranking<'a>, GatewayError> {
    rank_once(pool, &PoolIndex::new(pool), settings, local, input, now_ms)
}

/// Ranks with a fresh full pass and nothing kept (a pool without an index: tests, tools).
pub fn rank_once<'a>(
    pool: &'a pb::Pool,
    pix: &PoolIndex,
    settings: Option<&pb::RoutingSettings>,
    local: &LocalTable,
    input: RouteInput<'_>,
    now: i64,
) -> Result<Ranking<'a>, GatewayError> {
    if pool.accounts.is_empty() {
        return Err(routing::empty_pool(&pool.name));
    }
    let prep = prepare(pool, pix, SettingsKey::new(settings), local, now);
    let budget = candidate_budget(settings);
    match serve(pool, pix, &prep, None, input, budget, now) {
        Some(r) => r,
        None => Err(routing::exhausted(
            &pool.name,
            prep.exhausted.usage_only,
            prep.exhausted.earliest_reset_ms,
            now,
        )),
    }
}

#[derive(Debug)]
struct Entry {
    snapshot: Weak<SnapshotIndex>,
    local: Weak<LocalTable>,
    pool_ix: usize,
    prep: Prepared,
}

/// One worker's prepared orders. Identity is by allocation (`Weak` pointers keep an address from
/// being reused while an entry names it), so two snapshots with one version never mix.
#[derive(Debug, Default)]
pub struct RankCache {
    entries: Vec<Entry>,
    /// Full passes made (for tests and benchmarks).
    pub prepared: u64,
}

impl RankCache {
    /// Orders `snapshot`'s lane `pool_ix` for one request; `Ranking::accounts` holds the first
    /// [`candidate_budget`] candidates. A lane is one provider's accounts of a pool
    /// (`SnapshotIndex::lane`); a pool of one provider is the lane numbered like the pool.
    pub fn rank<'a>(
        &mut self,
        snapshot: &'a Rc<SnapshotIndex>,
        pool_ix: usize,
        settings: Option<&pb::RoutingSettings>,
        local: &Rc<LocalTable>,
        input: RouteInput<'_>,
        now: i64,
    ) -> Result<Ranking<'a>, GatewayError> {
        let snap: &'a SnapshotIndex = snapshot;
        let (Some(pool), Some(pix)) = (snap.lane_pool(pool_ix), snap.lane_index(pool_ix)) else {
            return Err(GatewayError::new(
                crate::errors::ErrorKind::RouteMissing,
                "codexmesh could not find the pool",
            ));
        };
        let key = SettingsKey::new(settings);
        let budget = candidate_budget(settings);
        let this_snapshot = Rc::downgrade(snapshot);
        self.entries.retain(|e| e.snapshot.strong_count() > 0);
        let found = self.entries.iter().position(|e| {
            e.pool_ix == pool_ix && e.snapshot.ptr_eq(&this_snapshot) && e.prep.key == key
        });
        if let Some(entry) = found.and_then(|i| self.entries.get(i)) {
            let prep = &entry.prep;
            if now >= prep.built_ms && now < prep.valid_until_ms {
                let same_local = entry.local.ptr_eq(&Rc::downgrade(local));
                if same_local || now < prep.built_ms.saturating_add(LOCAL_GRACE_MS) {
                    let recheck = (!same_local).then_some(&**local);
                    if let Some(r) = serve(pool, pix, prep, recheck, input, budget, now) {
                        return r;
                    }
                }
            }
        }
        let prep = prepare(pool, pix, key, local, now);
        self.prepared = self.prepared.wrapping_add(1);
        let result = serve(pool, pix, &prep, None, input, budget, now);
        let entry = Entry {
            snapshot: this_snapshot,
            local: Rc::downgrade(local),
            pool_ix,
            prep,
        };
        match found.and_then(|i| self.entries.get_mut(i)) {
            Some(slot) => *slot = entry,
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.entries.remove(0);
                }
                self.entries.push(entry);
            }
        }
        match (result, self.entries.last()) {
            (Some(r), _) => r,
            (None, Some(e)) => Err(routing::exhausted(
                &pool.name,
                e.prep.exhausted.usage_only,
                e.prep.exhausted.earliest_reset_ms,
                now,
            )),
            (None, None) => Err(routing::exhausted(&pool.name, false, None, now)),
        }
    }
}

thread_local! {
    /// Each proxy-wasm VM is one thread: one cache per worker.
    static CACHE: RefCell<RankCache> = RefCell::new(RankCache::default());
}

/// [`RankCache::rank`] with this worker's cache (what the filter calls per request), over lane
/// `pool_ix` (`SnapshotIndex::lane`).
pub fn rank<'a>(
    snapshot: &'a Rc<SnapshotIndex>,
    pool_ix: usize,
    settings: Option<&pb::RoutingSettings>,
    local: &Rc<LocalTable>,
    input: RouteInput<'_>,
    now: i64,
) -> Result<Ranking<'a>, GatewayError> {
    if let Some(pool) = snapshot
        .lane_pool(pool_ix)
        .filter(|p| p.accounts.is_empty())
    {
        return Err(routing::empty_pool(&pool.name));
    }
    CACHE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cache) => cache.rank(snapshot, pool_ix, settings, local, input, now),
        // Not reachable (nothing here calls back), but never a panic: rank without the cache.
        Err(_) => RankCache::default().rank(snapshot, pool_ix, settings, local, input, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity;
    use crate::errors::ErrorKind;
    use crate::local::{token_fingerprint, SeenQuota};
    use crate::provider::Provider;
    use crate::routing::{eligibility, steered_score, Ineligible, QUOTA_TIE_FRACTION};
    use crate::snapshot::tests::account;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// splitmix64: a small deterministic generator for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    type Outcome = Result<(Vec<String>, Reason, Vec<String>), (ErrorKind, u16, Option<i64>)>;

    fn outcome(r: Result<Ranking<'_>, GatewayError>) -> Outcome {
        match r {
            Ok(r) => Ok((
                r.accounts.iter().map(|a| a.id.clone()).collect(),
                r.reason,
                r.probes,
            )),
            Err(e) => Err((e.kind, e.status(), e.resets_at_unix)),
        }
    }

    /// The straightforward ranking: every account's eligibility, then the whole pool sorted
    /// (today's code before the ranker, with the affinity and weighted round robin functions
    /// this module defines), then cut to the budget.
    fn reference(
        pool: &pb::Pool,
        settings: Option<&pb::RoutingSettings>,
        local: &LocalTable,
        input: RouteInput<'_>,
        now: i64,
    ) -> Outcome {
        let limits = Limits::from_settings(settings);
        let strategy = routing::strategy(settings);
        let mut accounts: Vec<&pb::Account> = pool.accounts.iter().collect();
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        let (mut eligible, mut half_open, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for a in &accounts {
            match eligibility(a, &local.get(&a.id), &limits, now) {
                Eligibility::Eligible => eligible.push(*a),
                Eligibility::HalfOpen => half_open.push(*a),
                Eligibility::Out(why) => out.push(why),
            }
        }
        if eligible.is_empty() && half_open.is_empty() {
            let usage = !out.is_empty() && out.iter().all(|w| w.is_usage());
            let earliest = out
                .iter()
                .filter_map(|w| match w {
                    Ineligible::UsageLimited { until_ms } if *until_ms > now => Some(*until_ms),
                    _ => None,
                })
                .min();
            let e = routing::exhausted(&pool.name, usage, earliest, now);
            return Err((e.kind, e.status(), e.resets_at_unix));
        }
        let mut list = eligible.clone();
        let mut reason = Reason::Strategy;
        match strategy {
            pb::Strategy::PrimaryFirst => {
                let owner = settings
                    .map(|s| s.primary_account_id.as_str())
                    .filter(|id| !id.is_empty());
                list.sort_by(|a, b| {
                    (owner != Some(a.id.as_str()))
                        .cmp(&(owner != Some(b.id.as_str())))
                        .then(a.priority.cmp(&b.priority))
                        .then(a.id.cmp(&b.id))
                });
            }
            pb::Strategy::PriorityOrder => {
                list.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.id.cmp(&b.id)));
            }
            _ => {
                if let Some(key) = input.affinity_key {
                    let probes = affinity::sorted_probes(key);
                    let total: u64 = pool
                        .accounts
                        .iter()
                        .map(|a| u64::from(a.weight.clamp(1, affinity::MAX_WEIGHT)))
                        .sum();
                    list.sort_by_key(|a| {
                        let d = affinity::distance(
                            &probes,
                            affinity::account_hash(&a.id),
                            affinity::points_for(a.weight, total),
                        );
                        (d, a.id.clone())
                    });
                    reason = Reason::Affinity;
                } else if strategy == pb::Strategy::RoundRobin {
                    let weights: Vec<u64> = list
                        .iter()
                        .map(|a| u64::from(a.weight.clamp(1, 1000)))
                        .collect();
                    let total: u64 = weights.iter().sum();
                    let leader = if weights.iter().all(|w| Some(w) == weights.first()) {
                        // Equal weights: the smooth WRR state machine, replayed as before.
                        let step = input.turn % total;
                        let mut current = vec![0i64; list.len()];
                        let mut leader = 0usize;
                        for _ in 0..=step {
                            for (c, w) in current.iter_mut().zip(&weights) {
                                *c += *w as i64;
                            }
                            leader = current
                                .iter()
                                .enumerate()
                                .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
                                .map_or(0, |(i, _)| i);
                            current[leader] -= total as i64;
                        }
                        leader
                    } else {
                        let g = weights.iter().fold(0, |g, w| gcd(g, *w));
                        let norm: Vec<u64> = weights.iter().map(|w| w / g).collect();
                        let total: u64 = norm.iter().sum();
                        let spot = (input.turn % total) * weyl_stride(total) % total;
                        let mut acc = 0;
                        norm.iter()
                            .position(|w| {
                                acc += w;
                                acc > spot
                            })
                            .unwrap()
                    };
                    list.rotate_left(leader);
                } else {
                    let mut scored: Vec<(f64, &pb::Account)> = list
                        .iter()
                        .map(|a| {
                            let state = local.get(&a.id);
                            let q = effective_quota(a, &state);
                            (steered_score(q.as_ref(), a.health, now), *a)
                        })
                        .collect();
                    scored.sort_by(|(sa, a), (sb, b)| {
                        sb.total_cmp(sa)
                            .then(b.health.cmp(&a.health))
                            .then(a.id.cmp(&b.id))
                    });
                    let best = scored.first().map_or(0.0, |(s, _)| *s);
                    let tied = scored
                        .iter()
                        .take_while(|(s, _)| *s >= best * (1.0 - QUOTA_TIE_FRACTION))
                        .count()
                        .max(1);
                    list = scored.into_iter().map(|(_, a)| a).collect();
                    list[..tied].rotate_left((input.turn % tied as u64) as usize);
                }
            }
        }
        let pinned = input
            .turn_state_account
            .filter(|id| list.iter().any(|a| a.id == *id));
        let mut all = half_open.clone();
        all.extend(list);
        if let Some(id) = pinned {
            let pos = all.iter().position(|a| a.id == id).unwrap();
            let a = all.remove(pos);
            all.insert(0, a);
            reason = Reason::TurnState;
        } else if !half_open.is_empty() {
            reason = Reason::Probe;
        }
        all.truncate(candidate_budget(settings));
        let ids: Vec<String> = all.iter().map(|a| a.id.clone()).collect();
        let probes = half_open
            .iter()
            .filter(|a| ids.contains(&a.id))
            .map(|a| a.id.clone())
            .collect();
        Ok((ids, reason, probes))
    }

    fn random_quota(rng: &mut Rng, now: i64) -> Option<pb::QuotaSummary> {
        let window = |rng: &mut Rng, minutes| pb::QuotaWindow {
            used_percent: [0.0, 0.0, 10.0, 50.0, 50.5, 94.0, 96.0, 100.0][rng.below(8) as usize],
            window_minutes: minutes,
            resets_at_unix: match rng.below(4) {
                0 => 0,
                1 => now / 1000 - 10,
                _ => now / 1000 + rng.below(20_000) as i64,
            },
        };
        rng.chance(80).then(|| pb::QuotaSummary {
            primary: rng.chance(90).then(|| window(rng, 300)),
            secondary: rng.chance(50).then(|| window(rng, 10_080)),
            observed_at_unix_ms: now - 5_000,
        })
    }

    fn random_case(
        rng: &mut Rng,
        big: bool,
    ) -> (pb::Pool, LocalTable, pb::RoutingSettings, Vec<String>) {
        let n = if big {
            // Large enough that the affinity walk, not direct scoring, finds the candidates.
            1_500 + rng.below(1_000)
        } else {
            rng.below(40)
        } as usize;
        let equal_weights = rng.chance(50);
        let mut pool = pb::Pool {
            id: "p".into(),
            name: "p".into(),
            ..Default::default()
        };
        let mut ids = Vec::new();
        let mut local = LocalTable::default();
        for i in 0..n {
            let id = format!("acc-{:08x}-{i}", rng.next() as u32);
            let state = match rng.below(20) {
                0 => pb::AccountState::Paused,
                1 => pb::AccountState::NeedsReauth,
                2 | 3 => pb::AccountState::CoolingDown,
                _ => pb::AccountState::Active,
            };
            let mut a = account(&id, state);
            a.cooldown_until_unix = NOW / 1000 + rng.below(600) as i64 - 300;
            if rng.chance(3) {
                a.access_token.clear();
            }
            a.weight = if equal_weights {
                2
            } else {
                1 + rng.below(4) as u32
            };
            a.priority = rng.below(4) as u32;
            a.health = 80 + rng.below(3) as u32 * 10;
            a.quota = random_quota(rng, NOW);
            if rng.chance(25) {
                let mut l = LocalAccount::default();
                match rng.below(6) {
                    0 => l.cooldown_until_ms = NOW + rng.below(60_000) as i64 - 20_000,
                    1 => {
                        l.circuit_open_until_ms = NOW + rng.below(60_000) as i64 - 30_000;
                        l.consecutive_failures = 3;
                        if rng.chance(50) {
                            l.probe_until_ms = NOW + rng.below(60_000) as i64 - 30_000;
                        }
                    }
                    2 => l.auth_failed_token = token_fingerprint(&a.access_token),
                    _ => {
                        if let Some(mut q) = random_quota(rng, NOW) {
                            q.observed_at_unix_ms = NOW - 1_000;
                            l.seen_quota = SeenQuota::from_pb(&q);
                        }
                    }
                }
                local.set(&id, l);
            }
            ids.push(id);
            pool.accounts.push(a);
        }
        let strategy = [
            pb::Strategy::QuotaFirst,
            pb::Strategy::RoundRobin,
            pb::Strategy::PriorityOrder,
            pb::Strategy::PrimaryFirst,
            pb::Strategy::Unspecified,
        ][rng.below(5) as usize];
        let settings = pb::RoutingSettings {
            strategy: strategy as i32,
            max_attempts: rng.below(12) as u32,
            primary_account_id: if ids.is_empty() || rng.chance(20) {
                "nobody".into()
            } else {
                ids[rng.below(ids.len() as u64) as usize].clone()
            },
            primary_threshold_percent: if rng.chance(30) { 50.0 } else { 0.0 },
            ..Default::default()
        };
        (pool, local, settings, ids)
    }

    fn random_input<'a>(rng: &mut Rng, ids: &'a [String], keys: &'a [String]) -> RouteInput<'a> {
        RouteInput {
            affinity_key: rng
                .chance(50)
                .then(|| keys[rng.below(keys.len() as u64) as usize].as_str()),
            turn_state_account: (!ids.is_empty() && rng.chance(20))
                .then(|| ids[rng.below(ids.len() as u64) as usize].as_str()),
            turn: if rng.chance(10) {
                u64::MAX - rng.below(5)
            } else {
                rng.below(1_000)
            },
        }
    }

    #[test]
    fn fast_path_equals_the_full_sort_on_random_pools() {
        let mut rng = Rng(42);
        let keys: Vec<String> = (0..50).map(|i| format!("session-{i}")).collect();
        let cases = if cfg!(target_arch = "wasm32") {
            48
        } else {
            160
        };
        for case in 0..cases {
            let big = case % 16 == 15;
            let (pool, local, settings, ids) = random_case(&mut rng, big);
            let snapshot = Rc::new(SnapshotIndex::new(pb::Snapshot {
                version: case,
                pools: vec![pool.clone()],
                ..Default::default()
            }));
            let local = Rc::new(local);
            let mut cache = RankCache::default();
            for _ in 0..6 {
                let input = random_input(&mut rng, &ids, &keys);
                let want = reference(&pool, Some(&settings), &local, input, NOW);
                // Uncached, on the pool as listed (unsorted).
                let got = outcome(rank_pool(&pool, Some(&settings), &local, input, NOW));
                assert_eq!(got, want, "case {case} {input:?} {settings:?}");
                // Cached (the first call prepares, the next ones reuse).
                let got = outcome(cache.rank(&snapshot, 0, Some(&settings), &local, input, NOW));
                assert_eq!(got, want, "cached: case {case} {input:?} {settings:?}");
            }
            assert_eq!(
                cache.prepared, 1,
                "case {case}: the prepared order was reused"
            );
        }
    }

    #[test]
    fn a_newer_local_table_counts_at_once_for_accounts_it_blocks() {
        let mut rng = Rng(7);
        let keys: Vec<String> = (0..50).map(|i| format!("session-{i}")).collect();
        for case in 0..120u64 {
            let (pool, local, settings, ids) = random_case(&mut rng, case % 30 == 29);
            let snapshot = Rc::new(SnapshotIndex::new(pb::Snapshot {
                version: case,
                pools: vec![pool.clone()],
                ..Default::default()
            }));
            let mut cache = RankCache::default();
            let old = Rc::new(local.clone());
            let _ = cache.rank(
                &snapshot,
                0,
                Some(&settings),
                &old,
                RouteInput::default(),
                NOW,
            );
            // Answers since: some accounts cool down, open circuits or lose their token.
            let mut newer = local;
            for id in &ids {
                if rng.chance(30) {
                    let mut l = newer.get(id);
                    match rng.below(3) {
                        0 => l.cooldown_until_ms = NOW + 60_000,
                        1 => l.circuit_open_until_ms = NOW + 60_000,
                        _ => l.probe_until_ms = NOW + 30_000,
                    }
                    newer.set(id, l);
                }
            }
            let newer = Rc::new(newer);
            let limits = Limits::from_settings(Some(&settings));
            for _ in 0..4 {
                let input = random_input(&mut rng, &ids, &keys);
                let now = NOW + 500;
                let want = reference(&pool, Some(&settings), &newer, input, now);
                let got = outcome(cache.rank(&snapshot, 0, Some(&settings), &newer, input, now));
                let strategy = routing::strategy(Some(&settings));
                let order_kept = input.affinity_key.is_some()
                    || matches!(
                        strategy,
                        pb::Strategy::PriorityOrder | pb::Strategy::PrimaryFirst
                    );
                if order_kept || got.is_err() || want.is_err() {
                    assert_eq!(got, want, "case {case} {input:?} {settings:?}");
                    continue;
                }
                // Rotations were prepared over the older set: same candidates' eligibility and
                // count, the order may rotate differently.
                let (got_ids, _, _) = got.unwrap();
                let (want_ids, _, _) = want.unwrap();
                assert_eq!(got_ids.len(), want_ids.len(), "case {case}");
                for id in &got_ids {
                    let a = pool.accounts.iter().find(|a| a.id == *id).unwrap();
                    assert!(
                        !matches!(
                            eligibility(a, &newer.get(id), &limits, now),
                            Eligibility::Out(_)
                        ),
                        "case {case}: {id} is blocked here"
                    );
                }
            }
        }
    }

    fn two_accounts() -> Rc<SnapshotIndex> {
        Rc::new(SnapshotIndex::new(pb::Snapshot {
            version: 1,
            pools: vec![pb::Pool {
                id: "p".into(),
                name: "p".into(),
                accounts: vec![
                    account("a0", pb::AccountState::Active),
                    account("a1", pb::AccountState::Active),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    fn firsts(r: Result<Ranking<'_>, GatewayError>) -> Vec<String> {
        r.unwrap().accounts.iter().map(|a| a.id.clone()).collect()
    }

    #[test]
    fn the_cache_follows_snapshot_local_table_and_clock() {
        let po = pb::RoutingSettings {
            strategy: pb::Strategy::PriorityOrder as i32,
            ..Default::default()
        };
        let s = Some(&po);
        let mut cache = RankCache::default();
        let snap = two_accounts();
        let empty = Rc::new(LocalTable::default());
        let input = RouteInput::default();
        assert_eq!(
            firsts(cache.rank(&snap, 0, s, &empty, input, NOW)),
            ["a0", "a1"]
        );
        assert_eq!(
            firsts(cache.rank(&snap, 0, s, &empty, input, NOW + 5)),
            ["a0", "a1"]
        );
        assert_eq!(cache.prepared, 1);
        // A 429 on a0 lands in the local table: out at once, without a full pass.
        let mut cooled = LocalTable::default();
        cooled.set(
            "a0",
            LocalAccount {
                cooldown_until_ms: NOW + 5_000,
                ..Default::default()
            },
        );
        let cooled = Rc::new(cooled);
        assert_eq!(
            firsts(cache.rank(&snap, 0, s, &cooled, input, NOW + 10)),
            ["a1"]
        );
        assert_eq!(cache.prepared, 1);
        // After the grace period the order is prepared against it.
        assert_eq!(
            firsts(cache.rank(&snap, 0, s, &cooled, input, NOW + 1_010)),
            ["a1"]
        );
        assert_eq!(cache.prepared, 2);
        // Its cooldown ends by the clock: back at once.
        assert_eq!(
            firsts(cache.rank(&snap, 0, s, &cooled, input, NOW + 5_000)),
            ["a0", "a1"]
        );
        assert_eq!(cache.prepared, 3);
        // A new snapshot (even with the same version number) is prepared afresh.
        let mut paused = pb::Snapshot {
            version: 1,
            pools: snap.pools().to_vec(),
            ..Default::default()
        };
        paused.pools[0].accounts[0].state = pb::AccountState::Paused as i32;
        let paused = Rc::new(SnapshotIndex::new(paused));
        assert_eq!(
            firsts(cache.rank(&paused, 0, s, &cooled, input, NOW + 5_001)),
            ["a1"]
        );
        assert_eq!(cache.prepared, 4);
        // Other settings for the same pool: their own entry.
        let rr = pb::RoutingSettings {
            strategy: pb::Strategy::RoundRobin as i32,
            ..Default::default()
        };
        let _ = cache.rank(&snap, 0, Some(&rr), &cooled, input, NOW + 5_002);
        assert_eq!(cache.prepared, 5);
        assert!(cache.rank(&snap, 7, s, &cooled, input, NOW).is_err());
    }

    #[test]
    fn quota_evidence_moves_the_next_request_without_waiting_for_the_next_pass() {
        let mut cache = RankCache::default();
        let snap = two_accounts();
        let seen = |used: f64| {
            let q = pb::QuotaSummary {
                primary: Some(pb::QuotaWindow {
                    used_percent: used,
                    window_minutes: 300,
                    resets_at_unix: NOW / 1000 + 18_000,
                }),
                observed_at_unix_ms: NOW,
                ..Default::default()
            };
            LocalAccount {
                seen_quota: SeenQuota::from_pb(&q),
                ..Default::default()
            }
        };
        let mut table = LocalTable::default();
        table.set("a0", seen(10.0));
        table.set("a1", seen(30.0));
        let first = Rc::new(table.clone());
        let order = firsts(cache.rank(&snap, 0, None, &first, RouteInput::default(), NOW));
        assert_eq!(order[0], "a0");
        // a0 served enough to pass a1 (evidence from its answers), within the same second.
        table.set("a0", seen(40.0));
        let later = Rc::new(table);
        let order = firsts(cache.rank(&snap, 0, None, &later, RouteInput::default(), NOW + 10));
        assert_eq!(order[0], "a1", "the order followed the new evidence");
        assert_eq!(cache.prepared, 1, "without a full pass");
    }

    #[test]
    fn quota_scores_are_prepared_again_every_second() {
        let mut cache = RankCache::default();
        let snap = two_accounts();
        let local = Rc::new(LocalTable::default());
        for t in [0, 10, 999, 1_000, 1_500, 2_000] {
            let _ = cache.rank(&snap, 0, None, &local, RouteInput::default(), NOW + t);
        }
        assert_eq!(cache.prepared, 3);
    }

    #[test]
    fn an_exhausted_pool_answers_from_the_cache_like_a_full_pass() {
        let mut snap = pb::Snapshot {
            version: 1,
            pools: two_accounts().pools().to_vec(),
            ..Default::default()
        };
        snap.pools[0].accounts[0].quota = Some(pb::QuotaSummary {
            primary: Some(pb::QuotaWindow {
                used_percent: 100.0,
                window_minutes: 300,
                resets_at_unix: NOW / 1000 + 600,
            }),
            ..Default::default()
        });
        let mut local = LocalTable::default();
        local.set(
            "a1",
            LocalAccount {
                cooldown_until_ms: NOW + 300_000,
                ..Default::default()
            },
        );
        let pool = snap.pools[0].clone();
        let snap = Rc::new(SnapshotIndex::new(snap));
        let local = Rc::new(local);
        let mut cache = RankCache::default();
        for t in [0, 1, 2_000] {
            let err = cache
                .rank(&snap, 0, None, &local, RouteInput::default(), NOW + t)
                .unwrap_err();
            let full = rank_pool(&pool, None, &local, RouteInput::default(), NOW + t).unwrap_err();
            assert_eq!(
                (err.status(), err.resets_at_unix),
                (429, Some(NOW / 1000 + 300))
            );
            assert_eq!(err.headers(), full.headers());
        }
        // One of them comes back in a newer local table: served at once (a full pass).
        let back = Rc::new(LocalTable::default());
        assert_eq!(
            firsts(cache.rank(&snap, 0, None, &back, RouteInput::default(), NOW + 2_001)),
            ["a1"]
        );
    }

    #[test]
    fn round_robin_without_replay_is_exact_over_a_cycle() {
        for weights in [
            vec![1, 1, 1],
            vec![1, 1, 2],
            vec![3, 1],
            vec![5, 7, 1, 1000],
            vec![4, 6],
        ] {
            let rr = RoundRobin::new(&weights);
            let cycle = rr.total;
            let mut counts = vec![0u64; weights.len()];
            for turn in 0..cycle * 3 {
                counts[rr.leader(turn + 12_345)] += 1;
            }
            let g = weights.iter().fold(0, |g, w| gcd(g, u64::from(*w)));
            let want: Vec<u64> = weights.iter().map(|w| 3 * u64::from(*w) / g).collect();
            assert_eq!(counts, want, "{weights:?}");
        }
        // Equal weights: plain rotation, as the smooth WRR state machine gave.
        let rr = RoundRobin::new(&[2, 2, 2]);
        assert_eq!(
            (0..6).map(|t| rr.leader(t)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert!(rr.leader(u64::MAX) < 3);
    }
    #[test]
    fn a_mixed_pool_ranks_each_provider_over_its_own_accounts() {
        let with = |id: &str, provider: pb::Provider| pb::Account {
            provider: provider as i32,
            ..account(id, pb::AccountState::Active)
        };
        let snapshot = pb::Snapshot {
            version: 1,
            pools: vec![
                pb::Pool {
                    id: "mixed".into(),
                    name: "mixed".into(),
                    accounts: vec![
                        with("c1", pb::Provider::Codex),
                        with("a1", pb::Provider::Claude),
                        with("g1", pb::Provider::Gemini),
                        with("a2", pb::Provider::Claude),
                        pb::Account {
                            provider: 42,
                            ..account("future", pb::AccountState::Active)
                        },
                    ],
                    ..Default::default()
                },
                pb::Pool {
                    id: "codex".into(),
                    name: "codex".into(),
                    accounts: vec![with("c2", pb::Provider::Codex)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let snap = Rc::new(SnapshotIndex::new(snapshot));
        let local = Rc::new(LocalTable::default());
        let ids = |lane: usize| {
            let r = rank(&snap, lane, None, &local, RouteInput::default(), NOW).unwrap();
            let mut ids: Vec<String> = r.accounts.iter().map(|a| a.id.clone()).collect();
            ids.sort();
            ids
        };
        let lane = |pool: usize, p: Provider| snap.lane(pool, p);
        assert_eq!(ids(lane(0, Provider::Codex).unwrap()), ["c1"]);
        assert_eq!(ids(lane(0, Provider::Claude).unwrap()), ["a1", "a2"]);
        assert_eq!(ids(lane(0, Provider::Gemini).unwrap()), ["g1"]);
        // A pool of one provider is its own lane (the Codex path is unchanged) and has no other.
        assert_eq!(lane(1, Provider::Codex), Some(1));
        assert_eq!(lane(1, Provider::Claude), None);
        assert_eq!(lane(1, Provider::Gemini), None);
        assert_eq!(lane(9, Provider::Codex), None);
        // Accounts are still found by id in the snapshot (credentials at attempt time).
        assert!(snap.account("a2").is_some());
        assert!(snap.account("future").is_some());
        // An empty pool stays the Codex lane, with the empty-pool answer.
        let empty = Rc::new(SnapshotIndex::new(pb::Snapshot {
            pools: vec![pb::Pool::default()],
            ..Default::default()
        }));
        assert_eq!(empty.lane(0, Provider::Codex), Some(0));
        assert_eq!(empty.lane(0, Provider::Claude), None);
    }
}
