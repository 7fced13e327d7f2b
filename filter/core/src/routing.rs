//! Which accounts may serve a request, and in which order they are tried.
//!
//! The downstream filter ranks once per request; the upstream filter takes the k-th candidate on
//! attempt k, re-checking eligibility against the newest snapshot.

use crate::errors::{ErrorKind, GatewayError};
use crate::pb;

/// Attempts per request when the pool does not say (first try included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Never more than this, whatever the settings say: Envoy buffers the body for every retry.
pub const MAX_ATTEMPTS_CAP: u32 = 10;

/// Whether an account may take traffic at `now_unix_ms`, from the snapshot's view.
pub fn is_eligible(account: &pb::Account, now_unix_ms: i64) -> bool {
    match pb::AccountState::try_from(account.state) {
        Ok(pb::AccountState::Active) => !account.access_token.is_empty(),
        // A cooldown that has run out needs nobody's help to end.
        Ok(pb::AccountState::CoolingDown) => {
            !account.access_token.is_empty()
                && account.cooldown_until_unix.saturating_mul(1000) <= now_unix_ms
        }
        _ => false,
    }
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

/// Orders the pool's eligible accounts for one request. `turn` is a per-process counter that makes
/// round robin rotate.
pub fn rank<'a>(
    pool: &'a pb::Pool,
    _routing: Option<&pb::RoutingSettings>,
    turn: u64,
    now_unix_ms: i64,
) -> Result<Vec<&'a pb::Account>, GatewayError> {
    let mut eligible: Vec<&pb::Account> = pool
        .accounts
        .iter()
        .filter(|a| is_eligible(a, now_unix_ms))
        .collect();
    if eligible.is_empty() {
        return Err(GatewayError::new(
            ErrorKind::NoAccountAvailable,
            format!(
                "No account in pool '{}' can serve requests right now.",
                pool.name
            ),
        ));
    }
    // Stable base order, so every Envoy replica agrees on what "next" means.
    eligible.sort_by(|a, b| a.id.cmp(&b.id));
    let len = eligible.len() as u64;
    // `turn % len` fits in usize because it is below `len`, itself a usize.
    let start = usize::try_from(turn % len).unwrap_or(0);
    eligible.rotate_left(start);
    Ok(eligible)
}

/// Picks the account for attempt `attempt` (1-based) from the ranked ids, re-checking each against
/// the newest snapshot: a candidate that became ineligible since ranking is skipped.
pub fn account_for_attempt<'a, F>(
    ranked: &[String],
    attempt: u32,
    lookup: F,
    now_unix_ms: i64,
) -> Option<&'a pb::Account>
where
    F: Fn(&str) -> Option<&'a pb::Account>,
{
    let first = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    ranked
        .iter()
        .skip(first)
        .filter_map(|id| lookup(id))
        .find(|a| is_eligible(a, now_unix_ms))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::snapshot::tests::{account, sample};
    use crate::snapshot::SnapshotIndex;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ids(v: &[&pb::Account]) -> Vec<String> {
        v.iter().map(|a| a.id.clone()).collect()
    }

    #[test]
    fn round_robin_rotates_over_active_accounts_only() {
        let snap = sample();
        let pool = &snap.pools[0];
        assert_eq!(ids(&rank(pool, None, 0, 0).unwrap()), ["a1", "a2"]);
        assert_eq!(ids(&rank(pool, None, 1, 0).unwrap()), ["a2", "a1"]);
        assert_eq!(ids(&rank(pool, None, 2, 0).unwrap()), ["a1", "a2"]);
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let mut pool = sample().pools[0].clone();
        pool.accounts.push(account("a4", pb::AccountState::Active));
        let mut counts = std::collections::BTreeMap::new();
        for turn in 0..300u64 {
            *counts
                .entry(rank(&pool, None, turn, 0).unwrap()[0].id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [100, 100, 100]
        );
    }

    #[test]
    fn huge_turn_counter_does_not_overflow_on_32_bit() {
        let snap = sample();
        let ranked = rank(&snap.pools[0], None, u64::MAX, 0).unwrap();
        assert_eq!(ranked.len(), 2);
    }

    #[test]
    fn cooldown_ends_on_its_own() {
        let mut a = account("c", pb::AccountState::CoolingDown);
        a.cooldown_until_unix = 100;
        assert!(!is_eligible(&a, 99_999));
        assert!(is_eligible(&a, 100_000));
        let mut reauth = account("r", pb::AccountState::NeedsReauth);
        assert!(!is_eligible(&reauth, 0));
        reauth.state = pb::AccountState::Active as i32;
        reauth.access_token.clear();
        assert!(!is_eligible(&reauth, 0), "no token, no traffic");
    }

    #[test]
    fn empty_pool_is_a_retryable_503() {
        let mut pool = sample().pools[0].clone();
        for a in &mut pool.accounts {
            a.state = pb::AccountState::Paused as i32;
        }
        let err = rank(&pool, None, 0, 0).unwrap_err();
        assert_eq!(
            (err.kind, err.status()),
            (ErrorKind::NoAccountAvailable, 503)
        );
    }

    #[test]
    fn attempts_walk_the_ranking_and_skip_newly_ineligible() {
        let mut snap = sample();
        let ranked: Vec<String> = vec!["a2".into(), "a1".into(), "gone".into()];
        let index = SnapshotIndex::new(snap.clone());
        let look = |id: &str| index.account(id).map(|(_, a)| a);
        assert_eq!(account_for_attempt(&ranked, 1, look, 0).unwrap().id, "a2");
        assert_eq!(account_for_attempt(&ranked, 2, look, 0).unwrap().id, "a1");
        assert!(account_for_attempt(&ranked, 3, look, 0).is_none());
        assert!(account_for_attempt(&ranked, u32::MAX, look, 0).is_none());
        // a2 paused after ranking: attempt 1 moves on to a1.
        snap.pools[0].accounts[1].state = pb::AccountState::Paused as i32;
        let index = SnapshotIndex::new(snap);
        let look = |id: &str| index.account(id).map(|(_, a)| a);
        assert_eq!(account_for_attempt(&ranked, 1, look, 0).unwrap().id, "a1");
    }

    #[test]
    fn attempts_are_bounded() {
        assert_eq!(max_attempts(None), DEFAULT_MAX_ATTEMPTS);
        let r = pb::RoutingSettings {
            max_attempts: 99,
            ..Default::default()
        };
        assert_eq!(max_attempts(Some(&r)), MAX_ATTEMPTS_CAP);
    }
}
