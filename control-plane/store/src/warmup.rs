//! Warm-up schedules per pool (issue 15, migration 0016).
//!
//! Rules: a schedule is not snapshot input: a change takes the `meta` row without bumping the
//! revision and is audited (`pool.set_warmup`); a slot is claimed by one compare-and-set
//! statement ([`Store::claim_warmup_slot`]), so it runs once whichever replica sees it first.

use serde_json::json;
use sqlx::any::AnyRow;

use crate::audit::audit;
use crate::error::StoreError;
use crate::rows::col;
use crate::tx::pool_by_name_tx;
use crate::{Actor, Store};
use codexmesh_model::util::now_ms;
use codexmesh_model::warmup::{format_time, format_weekdays, WarmupSchedule};

/// A pool's schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolWarmup {
    pub pool_id: String,
    pub pool: String,
    pub schedule: WarmupSchedule,
    /// The slot (unix ms) last run.
    pub last_slot_ms: Option<i64>,
}

const SELECT: &str =
    "SELECT w.pool_id AS pool_id, p.name AS pool, w.minute_of_day AS minute_of_day, \
     w.weekdays AS weekdays, w.enabled AS enabled, w.last_slot_at AS last_slot_at \
     FROM pool_warmups w JOIN pools p ON p.id = w.pool_id";

fn from_row(r: &AnyRow) -> Result<PoolWarmup, StoreError> {
    let minute: i64 = col(r, "minute_of_day")?;
    let days: i64 = col(r, "weekdays")?;
    Ok(PoolWarmup {
        pool_id: col(r, "pool_id")?,
        pool: col(r, "pool")?,
        schedule: WarmupSchedule {
            minute_of_day: u16::try_from(minute)
                .ok()
                .filter(|m| *m < 1440)
                .ok_or_else(|| StoreError::Corrupt(format!("warm-up minute {minute}")))?,
            weekdays: u8::try_from(days)
                .map_err(|_| StoreError::Corrupt(format!("warm-up weekdays {days}")))?,
            enabled: col::<i64>(r, "enabled")? != 0,
        },
        last_slot_ms: col(r, "last_slot_at")?,
    })
}

impl Store {
    /// The pool's schedule, if it ever had one.
    pub async fn warmup(&self, pool: &str) -> Result<Option<PoolWarmup>, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE p.name = $1"))
            .bind(pool.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every enabled schedule of an unarchived pool.
    pub async fn enabled_warmups(&self) -> Result<Vec<PoolWarmup>, StoreError> {
        sqlx::query(&format!(
            "{SELECT} WHERE w.enabled = 1 AND p.archived_at IS NULL ORDER BY p.name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
    }

    /// Sets (or replaces) the pool's schedule; audited.
    pub async fn set_warmup(
        &self,
        actor: &Actor,
        pool: &str,
        schedule: &WarmupSchedule,
    ) -> Result<PoolWarmup, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let p = pool_by_name_tx(&mut tx, pool).await?;
        sqlx::query(
            "INSERT INTO pool_warmups (pool_id, minute_of_day, weekdays, enabled, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pool_id) DO UPDATE SET \
             minute_of_day = excluded.minute_of_day, weekdays = excluded.weekdays, \
             enabled = excluded.enabled, updated_at = excluded.updated_at",
        )
        .bind(p.id.clone())
        .bind(i64::from(schedule.minute_of_day))
        .bind(i64::from(schedule.weekdays))
        .bind(i64::from(schedule.enabled))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "pool.set_warmup",
            Some(&p.id),
            json!({"pool": p.name, "at": format_time(schedule.minute_of_day),
                   "weekdays": format_weekdays(schedule.weekdays), "enabled": schedule.enabled}),
            revision,
        )
        .await?;
        let row = sqlx::query(&format!("{SELECT} WHERE w.pool_id = $1"))
            .bind(p.id.clone())
            .fetch_one(&mut *tx)
            .await?;
        let stored = from_row(&row)?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Claims slot `slot_ms` of the pool's warm-up: true for the one caller that moves
    /// `last_slot_at` to it (nobody claimed it or a later one yet).
    pub async fn claim_warmup_slot(&self, pool_id: &str, slot_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pool_warmups SET last_slot_at = $2 \
             WHERE pool_id = $1 AND enabled = 1 AND (last_slot_at IS NULL OR last_slot_at < $2)",
        )
        .bind(pool_id.to_owned())
        .bind(slot_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
