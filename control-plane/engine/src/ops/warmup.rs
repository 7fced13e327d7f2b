//! Warm-up schedule use cases: read and set a pool's schedule (`codexmesh pool warmup`,
//! `GET/PUT /api/v1/pools/{pool}/warmup`, the pool page).
//!
//! Rules: who sees the pool reads it, who may change the pool sets it (guard); the time and
//! weekdays are parsed by `codexmesh_model::warmup` before the store is touched (errors name
//! `at` or `weekdays`); turning it off keeps the time and weekdays; changes are audited by the
//! store (`pool.set_warmup`), refusals by [`Ops::audited`].

use serde::Serialize;

use super::{Ops, OpsError, Outcome};
use codexmesh_model::warmup::{
    format_time, format_weekdays, parse_time, parse_weekdays, ScheduleError, WarmupSchedule,
    EVERY_DAY,
};

/// A pool's warm-up schedule as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WarmupView {
    pub pool: String,
    pub enabled: bool,
    /// `HH:MM`, UTC (None: never set).
    pub at: Option<String>,
    /// `all`, or days such as `mon,tue,wed,thu,fri`.
    pub weekdays: Option<String>,
    /// The slot last run (unix ms).
    pub last_run_ms: Option<i64>,
}

/// A change: on at a time (on some weekdays), or off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarmupChange {
    On {
        at: String,
        weekdays: Option<String>,
    },
    Off,
}

fn invalid(e: ScheduleError) -> OpsError {
    OpsError::Invalid {
        field: e.field,
        message: e.to_string(),
    }
}

fn view(pool: &str, w: Option<&codexmesh_store::PoolWarmup>) -> WarmupView {
    WarmupView {
        pool: pool.to_owned(),
        enabled: w.is_some_and(|w| w.schedule.enabled),
        at: w.map(|w| format_time(w.schedule.minute_of_day)),
        weekdays: w.map(|w| format_weekdays(w.schedule.weekdays)),
        last_run_ms: w.and_then(|w| w.last_slot_ms),
    }
}

/// The pool's schedule.
pub async fn get(ops: &Ops, pool: &str) -> Result<Outcome<WarmupView>, OpsError> {
    ops.see_pool(pool)?;
    let store = ops.store().await?;
    store.pool_by_name(pool).await?;
    Ok(Outcome::new(view(pool, store.warmup(pool).await?.as_ref())))
}

/// Sets the pool's schedule (or turns it off).
pub async fn set(
    ops: &Ops,
    pool: &str,
    change: &WarmupChange,
) -> Result<Outcome<WarmupView>, OpsError> {
    let result = async {
        let schedule = match change {
            WarmupChange::On { at, weekdays } => Some(WarmupSchedule {
                minute_of_day: parse_time(at).map_err(invalid)?,
                weekdays: match weekdays {
                    Some(w) => parse_weekdays(w).map_err(invalid)?,
                    None => EVERY_DAY,
                },
                enabled: true,
            }),
            WarmupChange::Off => None,
        };
        ops.change_pool(pool)?;
        let store = ops.store().await?;
        let schedule = match schedule {
            Some(s) => s,
            None => match store.warmup(pool).await? {
                Some(w) => WarmupSchedule {
                    enabled: false,
                    ..w.schedule
                },
                // Never set: nothing to turn off.
                None => {
                    store.pool_by_name(pool).await?;
                    return Ok(Outcome::new(view(pool, None)));
                }
            },
        };
        let stored = store.set_warmup(ops.actor(), pool, &schedule).await?;
        Ok(Outcome::new(view(pool, Some(&stored))))
    }
    .await;
    ops.audited("pool.set_warmup", Some(pool), &[pool], result)
        .await
}
