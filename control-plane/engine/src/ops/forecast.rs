//! The forecast use case: when each of a pool's quota windows runs out at the current burn
//! rate (API `GET /api/v1/pools/{pool}/forecast`, `codexmesh pool forecast`, the dashboard's
//! pool page, the overview, the `forecast_runs_out` alert, and the MCP tool).
//!
//! Rules: read only; the principal must see the pool (else "no pool named …"). The pool's used
//! % per window is `100 - headroom` ([`codexmesh_model::headroom`]: the weighted mean over its
//! active accounts with evidence), the next reset the earliest future one among them; the burn
//! rate comes from the usage samples the alert evaluator stores (`pool_usage_samples`) plus the
//! value now; the projection itself is [`codexmesh_model::forecast::forecast_window`].

use serde::Serialize;

use super::{Ops, OpsError, Outcome};
use crate::status::{PoolStatus, WindowView};
use codexmesh_model::forecast::{
    forecast_window, UsageSample, WindowForecast, BURN_SPAN_MS, WEEKLY_BURN_SPAN_MS,
};
use codexmesh_model::headroom::{headroom, MemberWindow, WindowHeadroom};
use codexmesh_model::util::now_ms;
use codexmesh_store::{PoolSample, Store};

/// A pool's forecast: its 5-hour (`primary`) and weekly (`secondary`) windows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolForecast {
    pub pool: String,
    pub generated_at_ms: i64,
    /// The 5-hour window (burn rate over the last hour).
    pub primary: WindowForecast,
    /// The weekly window (burn rate over the last 6 hours).
    pub secondary: WindowForecast,
}

/// A pool's headroom per window now, as the forecast and the samples read it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolUsageNow {
    pub primary: WindowHeadroom,
    pub secondary: WindowHeadroom,
}

impl PoolUsageNow {
    pub(crate) fn of(p: &PoolStatus, now_unix: i64) -> Self {
        let members = |secondary: bool| {
            p.accounts.iter().map(move |a| {
                let w: Option<&WindowView> = a.quota.as_ref().and_then(|q| {
                    if secondary {
                        q.secondary.as_ref()
                    } else {
                        q.primary.as_ref()
                    }
                });
                (
                    a.account.state,
                    a.account.weight,
                    w.map(|w| MemberWindow {
                        used_percent: w.used_percent,
                        resets_at_unix: w.resets_at_unix,
                    }),
                )
            })
        };
        Self {
            primary: headroom(members(false), now_unix),
            secondary: headroom(members(true), now_unix),
        }
    }

    /// The sample to store: used % per window (None: no evidence).
    pub(crate) fn sample(&self, at_ms: i64) -> PoolSample {
        PoolSample {
            at_ms,
            primary_used: used(&self.primary),
            secondary_used: used(&self.secondary),
        }
    }
}

fn used(h: &WindowHeadroom) -> Option<f64> {
    h.headroom_percent
        .map(|left| (100.0 - left).clamp(0.0, 100.0))
}

/// The forecast of a pool from its status and stored samples (the evaluator and the overview
/// call this with what they read already).
pub(crate) async fn forecast_of(
    store: &Store,
    p: &PoolStatus,
    now: i64,
) -> Result<PoolForecast, OpsError> {
    let usage = PoolUsageNow::of(p, now / 1000);
    let samples = store
        .pool_samples(&p.pool.id, now - WEEKLY_BURN_SPAN_MS)
        .await?;
    let series = |pick: fn(&PoolSample) -> Option<f64>| -> Vec<UsageSample> {
        samples
            .iter()
            .filter_map(|s| {
                pick(s).map(|u| UsageSample {
                    at_ms: s.at_ms,
                    used_percent: u,
                })
            })
            .collect()
    };
    Ok(PoolForecast {
        pool: p.pool.name.clone(),
        generated_at_ms: now,
        primary: forecast_window(
            &series(|s| s.primary_used),
            used(&usage.primary),
            usage.primary.earliest_reset_unix,
            BURN_SPAN_MS,
            now,
        ),
        secondary: forecast_window(
            &series(|s| s.secondary_used),
            used(&usage.secondary),
            usage.secondary.earliest_reset_unix,
            WEEKLY_BURN_SPAN_MS,
            now,
        ),
    })
}

/// The forecast of one pool the principal sees.
pub async fn forecast(ops: &Ops, pool: &str) -> Result<Outcome<PoolForecast>, OpsError> {
    ops.see_pool(pool)?;
    let report = super::reports::status(ops).await?.value;
    let store = ops.store().await?;
    let Some(p) = report.pools.iter().find(|p| p.pool.name == pool) else {
        // Seen but absent: the store has no such pool.
        return Err(codexmesh_store::StoreError::NotFound {
            what: codexmesh_store::Entity::Pool,
            ident: pool.to_owned(),
            lookup: codexmesh_store::Lookup::Name,
        }
        .into());
    };
    Ok(Outcome::new(forecast_of(store, p, now_ms()).await?))
}
