//! The pools overview (read only): per pool the caller sees, how much quota is left, how its
//! accounts stand, and what it served in the last hour — the dashboard's first page, in one
//! answer.
//!
//! Rules: built from the status report and the activity use case (no query of its own), so it
//! shows exactly what those show the same principal: its pools only (archived ones left out),
//! each account with the pool's weight. Headroom is defined once, in [`WindowHeadroom`].
//! Nothing is written.

use serde::Serialize;

use super::activity::ActivityRequest;
use super::{Ops, OpsError, Outcome};
use crate::status::{PoolStatus, QuotaView, WindowView};
use codexmesh_model::records::AccountState;
use codexmesh_model::util::now_ms;

/// The activity window of the overview.
pub const OVERVIEW_SINCE: &str = "1h";

/// Every visible pool's overview.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// The store revision the overview is at least as new as.
    pub revision: i64,
    pub generated_at_ms: i64,
    /// Pools by name (archived pools are left out).
    pub pools: Vec<PoolOverview>,
}

/// One pool at a glance.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolOverview {
    pub pool: String,
    pub accounts: StateCounts,
    /// The 5-hour window.
    pub primary: WindowHeadroom,
    /// The weekly window.
    pub secondary: WindowHeadroom,
    /// The request log over the last hour.
    pub last_hour: HourActivity,
    /// The client addresses (CIDRs) the pool's keys work from; empty: any.
    pub allowed_cidrs: codexmesh_store::AllowedCidrs,
}

/// Members of the pool by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StateCounts {
    pub total: u32,
    pub active: u32,
    pub paused: u32,
    pub cooling_down: u32,
    pub needs_reauth: u32,
}

/// What is left of one quota window across a pool.
///
/// `headroom_percent` is the mean of `100 - used_percent` (clamped to 0..=100; `used_percent`
/// as routing sees it, 0 once the window's reset time passed) over the pool's **active**
/// accounts that have evidence for the window, each weighted by its weight in this pool; None
/// when no active account has evidence. So 100 is "every active account fresh", 0 "all spent",
/// and a heavy account counts as much as routing sends it. `earliest_reset_unix` is the first
/// future reset time (Unix seconds) among those accounts: when headroom next comes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowHeadroom {
    pub headroom_percent: Option<f64>,
    /// Active accounts with evidence for this window (those the mean is over).
    pub accounts: u32,
    pub earliest_reset_unix: Option<i64>,
}

/// Requests served in the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HourActivity {
    /// Attempts (request-log rows).
    pub requests: u64,
    /// Attempts that did not succeed.
    pub errors: u64,
    /// Attempts that served a request another account had failed first.
    pub failovers: u64,
}

/// The overview of every pool the principal sees.
pub async fn overview(ops: &Ops) -> Result<Outcome<Overview>, OpsError> {
    let now = now_ms();
    let report = super::reports::status(ops).await?.value;
    let mut pools = Vec::new();
    let mut notices = Vec::new();
    let mut live: Vec<&PoolStatus> = report
        .pools
        .iter()
        .filter(|p| p.pool.archived_at_ms.is_none())
        .collect();
    live.sort_by(|a, b| a.pool.name.cmp(&b.pool.name));
    for p in live {
        let activity = super::activity::activity_at(
            ops,
            &ActivityRequest {
                pool: Some(p.pool.name.clone()),
                since: Some(OVERVIEW_SINCE.to_owned()),
                ..ActivityRequest::default()
            },
            now,
        )
        .await?;
        for n in activity.notices {
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
        let total = &activity.value.total;
        pools.push(PoolOverview {
            pool: p.pool.name.clone(),
            accounts: state_counts(p.accounts.iter().map(|a| a.account.state)),
            primary: headroom(members(p, |q| q.primary.as_ref()), now / 1000),
            secondary: headroom(members(p, |q| q.secondary.as_ref()), now / 1000),
            last_hour: HourActivity {
                requests: total.requests,
                errors: total.errors,
                failovers: total.fallbacks,
            },
            allowed_cidrs: p.pool.allowed_cidrs.clone(),
        });
    }
    Ok(Outcome::with_notices(
        Overview {
            revision: report.revision,
            generated_at_ms: report.generated_at_ms,
            pools,
        },
        notices,
    ))
}

fn state_counts(states: impl Iterator<Item = AccountState>) -> StateCounts {
    let mut c = StateCounts::default();
    for state in states {
        c.total += 1;
        match state {
            AccountState::Active => c.active += 1,
            AccountState::Paused => c.paused += 1,
            AccountState::CoolingDown => c.cooling_down += 1,
            AccountState::NeedsReauth => c.needs_reauth += 1,
        }
    }
    c
}

/// One member's evidence for one window, as the headroom mean needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemberWindow {
    /// Used % as routing sees it (0 once the reset time passed).
    pub used_percent: f64,
    /// Unix seconds; 0 = unknown.
    pub resets_at_unix: i64,
}

impl From<&WindowView> for MemberWindow {
    fn from(w: &WindowView) -> Self {
        Self {
            used_percent: w.used_percent,
            resets_at_unix: w.resets_at_unix,
        }
    }
}

/// Each member's state, weight in the pool and one window (`window` picks it).
fn members<'a>(
    p: &'a PoolStatus,
    window: impl Fn(&'a QuotaView) -> Option<&'a WindowView> + 'a,
) -> impl Iterator<Item = (AccountState, u32, Option<MemberWindow>)> + 'a {
    p.accounts.iter().map(move |a| {
        (
            a.account.state,
            a.account.weight,
            a.quota.as_ref().and_then(&window).map(MemberWindow::from),
        )
    })
}

/// [`WindowHeadroom`] of one window over `(state, weight, window)` of each member (also what
/// `/metrics` reports per pool, from the snapshot).
pub(crate) fn headroom(
    members: impl Iterator<Item = (AccountState, u32, Option<MemberWindow>)>,
    now_unix: i64,
) -> WindowHeadroom {
    let (mut sum, mut weights, mut accounts) = (0.0f64, 0u64, 0u32);
    let mut earliest: Option<i64> = None;
    for (state, weight, w) in members {
        let Some(w) = w.filter(|_| state == AccountState::Active) else {
            continue;
        };
        let left = (100.0 - w.used_percent).clamp(0.0, 100.0);
        sum += left * f64::from(weight);
        weights += u64::from(weight);
        accounts += 1;
        if w.resets_at_unix > now_unix {
            earliest = Some(earliest.map_or(w.resets_at_unix, |e| e.min(w.resets_at_unix)));
        }
    }
    WindowHeadroom {
        // Weights are at least 1; the guard keeps a zero weight from dividing by zero.
        headroom_percent: (accounts > 0).then(|| {
            if weights == 0 {
                0.0
            } else {
                sum / weights as f64
            }
        }),
        accounts,
        earliest_reset_unix: earliest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(used: f64, resets_at_unix: i64) -> WindowView {
        WindowView {
            used_percent: used,
            observed_used_percent: used,
            window_minutes: 300,
            resets_at_unix,
            resets_in_secs: 0,
            observed_at_ms: 0,
            source: "poll".into(),
        }
    }

    #[test]
    fn headroom_is_the_weighted_mean_over_active_accounts_with_evidence() {
        let (w20, w60, w100) = (window(20.0, 500), window(60.0, 300), window(100.0, 200));
        let (w20, w60, w100) = (
            MemberWindow::from(&w20),
            MemberWindow::from(&w60),
            MemberWindow::from(&w100),
        );
        let pool = [
            (AccountState::Active, 1, Some(w20)),
            (AccountState::Active, 3, Some(w60)),
            // Not active, or no evidence: left out.
            (AccountState::Paused, 5, Some(w100)),
            (AccountState::Active, 2, None),
            (AccountState::NeedsReauth, 1, None),
        ];
        let h = headroom(pool.iter().copied(), 100);
        // (80 * 1 + 40 * 3) / 4 = 50.
        assert_eq!(h.headroom_percent, Some(50.0));
        assert_eq!(h.accounts, 2);
        assert_eq!(h.earliest_reset_unix, Some(300));
        // A reset in the past is not the next one.
        assert_eq!(
            headroom(pool.iter().copied(), 400).earliest_reset_unix,
            Some(500)
        );
        // No evidence at all: unknown, not 100 %.
        let none = headroom(pool.iter().map(|(s, w, _)| (*s, *w, None)), 100);
        assert_eq!(none, WindowHeadroom::default());
        let c = state_counts(pool.iter().map(|(s, _, _)| *s));
        assert_eq!(
            (c.total, c.active, c.paused, c.needs_reauth, c.cooling_down),
            (5, 3, 1, 1, 0)
        );
    }
}
