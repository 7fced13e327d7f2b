//! The gateway's own answers to the Codex usage and account-check endpoints, built from its view of
//! the pool (snapshot plus this Envoy's local evidence). A pool key sees the pool, never an
//! account: no account id, email, user id or credit balance appears in these answers.
//!
//! Rules kept here:
//! - Accounts that cannot serve for reasons other than usage (paused, re-login needed, no token)
//!   do not count: the answer describes the capacity the key can actually use.
//! - A window's `used_percent` is the capacity-weighted mean over those accounts, each weighted
//!   by its routing `weight` (operators give a Pro account a larger weight than a Plus one: it is
//!   both its share of traffic and its share of the pool's capacity); a window past its reset
//!   counts as unused, an unknown window as unused. `reset_at` is the earliest reset among
//!   accounts that have used some of it (when the pool next gets capacity back).
//! - `limit_reached` is true exactly when every counted account is out for usage (the same rule
//!   that turns a turn into the pool-exhausted 429), or when none can serve at all.

use serde_json::{json, Value};

use crate::local::{effective_quota, LocalTable};
use crate::pb;
use crate::routing::{eligibility, Eligibility, Ineligible, Limits};

/// Plan named when no account in the pool carries one.
const FALLBACK_PLAN: &str = "plus";

/// What one window of one counted account contributes.
#[derive(Debug, Clone, Copy)]
struct WindowSeen {
    /// The account's share of the pool's capacity (its routing weight, at least 1).
    capacity: f64,
    used_percent: f64,
    window_minutes: u32,
    /// Unix seconds; 0 = unknown or already passed.
    resets_at_unix: i64,
}

fn window_seen(w: Option<&pb::QuotaWindow>, capacity: f64, now_ms: i64) -> WindowSeen {
    let Some(w) = w else {
        return WindowSeen {
            capacity,
            used_percent: 0.0,
            window_minutes: 0,
            resets_at_unix: 0,
        };
    };
    let passed = w.resets_at_unix > 0 && w.resets_at_unix.saturating_mul(1000) <= now_ms;
    WindowSeen {
        capacity,
        used_percent: if passed {
            0.0
        } else {
            w.used_percent.clamp(0.0, 100.0)
        },
        window_minutes: w.window_minutes,
        resets_at_unix: if passed { 0 } else { w.resets_at_unix },
    }
}

fn window_json(seen: &[WindowSeen], now_ms: i64) -> Value {
    if seen.is_empty() {
        return Value::Null;
    }
    let capacity: f64 = seen.iter().map(|w| w.capacity).sum();
    let mean = seen
        .iter()
        .map(|w| w.used_percent * w.capacity)
        .sum::<f64>()
        / capacity.max(1.0);
    let minutes = seen.iter().map(|w| w.window_minutes).max().unwrap_or(0);
    let reset_at = seen
        .iter()
        .filter(|w| w.used_percent > 0.0 && w.resets_at_unix > 0)
        .map(|w| w.resets_at_unix)
        .min();
    let now_secs = now_ms.div_euclid(1000);
    json!({
        "used_percent": mean.round() as i64,
        "limit_window_seconds": u64::from(minutes) * 60,
        "reset_after_seconds": reset_at.map_or(0, |at| (at - now_secs).max(0)),
        "reset_at": reset_at.unwrap_or(0),
    })
}

/// The most common plan among the pool's accounts.
fn pool_plan(pool: &pb::Pool) -> &str {
    let mut best: Option<(&str, usize)> = None;
    for account in &pool.accounts {
        let plan = account.plan.as_str();
        if plan.is_empty() {
            continue;
        }
        let n = pool.accounts.iter().filter(|a| a.plan == plan).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((plan, n));
        }
    }
    best.map_or(FALLBACK_PLAN, |(plan, _)| plan)
}

/// `GET /wham/usage` for a pool, in the shape the Codex backend answers for one account.
pub fn pool_usage(pool: &pb::Pool, local: &LocalTable, limits: &Limits, now_ms: i64) -> String {
    let mut primary = Vec::new();
    let mut secondary = Vec::new();
    let mut can_serve = 0usize;
    for account in &pool.accounts {
        let state = local.get(&account.id);
        match eligibility(account, &state, limits, now_ms) {
            Eligibility::Eligible | Eligibility::HalfOpen => can_serve += 1,
            // A failing circuit is not spent capacity: it still counts as capacity.
            Eligibility::Out(Ineligible::CircuitOpen { .. }) => can_serve += 1,
            Eligibility::Out(Ineligible::UsageLimited { .. }) => {}
            Eligibility::Out(_) => continue,
        }
        let quota = effective_quota(account, &state);
        let capacity = f64::from(account.weight.max(1));
        primary.push(window_seen(
            quota.as_ref().and_then(|q| q.primary.as_ref()),
            capacity,
            now_ms,
        ));
        secondary.push(window_seen(
            quota.as_ref().and_then(|q| q.secondary.as_ref()),
            capacity,
            now_ms,
        ));
    }
    let reached = can_serve == 0;
    json!({
        "plan_type": pool_plan(pool),
        "rate_limit": {
            "allowed": !reached,
            "limit_reached": reached,
            "primary_window": window_json(&primary, now_ms),
            "secondary_window": window_json(&secondary, now_ms),
        },
        "credits": Value::Null,
        "additional_rate_limits": Value::Null,
    })
    .to_string()
}

/// `GET /wham/accounts/check`: the pool presents itself as one unconstrained workspace.
pub fn account_check(pool: &pb::Pool) -> String {
    json!({
        "accounts": [{
            "id": pool.id,
            "plan_type": pool_plan(pool),
            "workspace_backend_origin": "NO_CONSTRAINT",
            "account_routing_override": "NO_CONSTRAINT",
            "name": pool.name,
            "profile_picture_url": Value::Null,
            "structure": "workspace",
        }],
        "account_ordering": [pool.id],
        "default_account_id": pool.id,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalAccount;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW_MS: i64 = 1_800_000_000_000;
    const NOW: i64 = NOW_MS / 1000;

    fn account(
        id: &str,
        plan: &str,
        state: pb::AccountState,
        used: f64,
        reset_in: i64,
    ) -> pb::Account {
        pb::Account {
            id: id.into(),
            label: format!("label-{id}"),
            chatgpt_account_id: format!("chatgpt-{id}"),
            access_token: format!("token-{id}"),
            state: state as i32,
            plan: plan.into(),
            quota: Some(pb::QuotaSummary {
                primary: Some(pb::QuotaWindow {
                    used_percent: used,
                    window_minutes: 300,
                    resets_at_unix: NOW + reset_in,
                }),
                secondary: Some(pb::QuotaWindow {
                    used_percent: used / 2.0,
                    window_minutes: 10080,
                    resets_at_unix: NOW + reset_in * 10,
                }),
                observed_at_unix_ms: NOW_MS - 1000,
            }),
            ..Default::default()
        }
    }

    fn pool(accounts: Vec<pb::Account>) -> pb::Pool {
        pb::Pool {
            id: "pool-1".into(),
            name: "team".into(),
            accounts,
            ..Default::default()
        }
    }

    fn usage(pool: &pb::Pool, local: &LocalTable) -> Value {
        serde_json::from_str(&pool_usage(
            pool,
            local,
            &Limits::from_settings(None),
            NOW_MS,
        ))
        .unwrap()
    }

    #[test]
    fn the_pool_reports_the_mean_of_its_serving_accounts_and_the_earliest_reset() {
        let p = pool(vec![
            account("a", "pro", pb::AccountState::Active, 20.0, 600),
            account("b", "plus", pb::AccountState::Active, 60.0, 120),
            account("c", "pro", pb::AccountState::Active, 40.0, 3000),
            // Out for a reason other than usage: not the key's capacity.
            account("d", "plus", pb::AccountState::Paused, 99.0, 10),
        ]);
        let v = usage(&p, &LocalTable::default());
        assert_eq!(v["plan_type"], "pro");
        assert_eq!(v["rate_limit"]["allowed"], true);
        assert_eq!(v["rate_limit"]["limit_reached"], false);
        assert_eq!(v["rate_limit"]["primary_window"]["used_percent"], 40);
        assert_eq!(v["rate_limit"]["primary_window"]["reset_at"], NOW + 120);
        assert_eq!(
            v["rate_limit"]["primary_window"]["reset_after_seconds"],
            120
        );
        assert_eq!(
            v["rate_limit"]["primary_window"]["limit_window_seconds"],
            18000
        );
        assert_eq!(v["rate_limit"]["secondary_window"]["used_percent"], 20);
        // Nothing that names an account, a person or a token.
        let text = v.to_string();
        for secret in ["token-", "chatgpt-", "label-", "\"a\"", "email"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn a_spent_pool_says_limit_reached_and_a_passed_window_counts_as_unused() {
        let p = pool(vec![
            account("a", "plus", pb::AccountState::Active, 100.0, 600),
            account("b", "plus", pb::AccountState::Active, 100.0, 300),
        ]);
        let v = usage(&p, &LocalTable::default());
        assert_eq!(v["rate_limit"]["limit_reached"], true);
        assert_eq!(v["rate_limit"]["allowed"], false);
        assert_eq!(v["rate_limit"]["primary_window"]["reset_at"], NOW + 300);

        let reset = pool(vec![account(
            "a",
            "plus",
            pb::AccountState::Active,
            100.0,
            -5,
        )]);
        let v = usage(&reset, &LocalTable::default());
        assert_eq!(v["rate_limit"]["limit_reached"], false);
        assert_eq!(v["rate_limit"]["primary_window"]["used_percent"], 0);
        assert_eq!(v["rate_limit"]["primary_window"]["reset_at"], 0);
    }

    #[test]
    fn usage_is_weighted_by_each_account_s_capacity() {
        let mut big = account("a", "pro", pb::AccountState::Active, 10.0, 600);
        big.weight = 3;
        let small = account("b", "plus", pb::AccountState::Active, 90.0, 600);
        let v = usage(&pool(vec![big, small]), &LocalTable::default());
        // (3 × 10 + 1 × 90) / 4 = 30, not the plain mean of 50.
        assert_eq!(v["rate_limit"]["primary_window"]["used_percent"], 30);
    }

    #[test]
    fn a_local_cooldown_counts_as_spent() {
        let p = pool(vec![account(
            "a",
            "plus",
            pb::AccountState::Active,
            10.0,
            600,
        )]);
        let mut local = LocalTable::default();
        local.set(
            "a",
            LocalAccount {
                cooldown_until_ms: NOW_MS + 60_000,
                updated_ms: NOW_MS,
                ..Default::default()
            },
        );
        assert_eq!(usage(&p, &local)["rate_limit"]["limit_reached"], true);
    }

    #[test]
    fn an_empty_or_paused_pool_has_no_windows_and_cannot_serve() {
        for p in [
            pool(vec![]),
            pool(vec![account("a", "", pb::AccountState::Paused, 0.0, 60)]),
        ] {
            let v = usage(&p, &LocalTable::default());
            assert_eq!(v["plan_type"], FALLBACK_PLAN);
            assert_eq!(v["rate_limit"]["limit_reached"], true);
            assert!(v["rate_limit"]["primary_window"].is_null());
        }
    }

    #[test]
    fn the_account_check_presents_the_pool_as_one_unconstrained_workspace() {
        let p = pool(vec![account(
            "a",
            "team",
            pb::AccountState::Active,
            0.0,
            60,
        )]);
        let v: Value = serde_json::from_str(&account_check(&p)).unwrap();
        assert_eq!(
            v["accounts"][0]["workspace_backend_origin"],
            "NO_CONSTRAINT"
        );
        assert_eq!(v["accounts"][0]["plan_type"], "team");
        assert_eq!(v["default_account_id"], "pool-1");
        assert!(!v.to_string().contains("chatgpt-a"));
    }
}
