//! How much of a quota window is left across a pool: the one formula the overview (dashboard,
//! `codexmesh pool overview`) and `/metrics` (`codexmesh_pool_headroom_percent`) both show.
//!
//! Rules: pure; only **active** members with evidence for the window count, each weighted by
//! its weight in the pool; used % is taken as routing sees it (the caller passes 0 once a
//! window's reset time passed); no evidence at all is "unknown", never 100 %.

use serde::Serialize;

use crate::records::AccountState;

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

/// One member's evidence for one window, as the mean needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberWindow {
    /// Used % as routing sees it (0 once the reset time passed).
    pub used_percent: f64,
    /// Unix seconds; 0 = unknown.
    pub resets_at_unix: i64,
}

/// [`WindowHeadroom`] of one window over `(state, weight in the pool, window)` of each member.
pub fn headroom(
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

    fn window(used: f64, resets_at_unix: i64) -> Option<MemberWindow> {
        Some(MemberWindow {
            used_percent: used,
            resets_at_unix,
        })
    }

    #[test]
    fn headroom_is_the_weighted_mean_over_active_accounts_with_evidence() {
        let pool = [
            (AccountState::Active, 1, window(20.0, 500)),
            (AccountState::Active, 3, window(60.0, 300)),
            // Not active, or no evidence: left out.
            (AccountState::Paused, 5, window(100.0, 200)),
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
    }
}
