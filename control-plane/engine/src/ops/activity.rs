//! Activity use case (read only): what a pool and each account did over a recent window, from
//! the request log: requests, successes, errors, fallbacks, latency percentiles, a timeline.
//! The counts are defined once, in `codexmesh_model::activity`.
//!
//! Rules: the window, the bucket size and the names are checked before the store is opened;
//! what the acting principal may not see does not exist for it: a pool outside its pools is the
//! same "not found" as a missing pool, an account in none of its pools the same "not found" as a
//! missing account, and without a pool it gets only its pools' rows. Nothing is written.

use serde::Deserialize;

use super::{Notice, Ops, OpsError, Outcome};
use codexmesh_model::activity::{self as model, Activity, Window, DAY_MS, MINUTE_MS};
use codexmesh_model::util::now_ms;
use codexmesh_store::{ActivityQuery, ACTIVITY_MAX_ROWS};

/// The window when none is given.
pub const DEFAULT_SINCE: &str = "24h";
/// The longest window (the request log is not kept much longer by default anyway).
pub const MAX_SINCE_MS: i64 = 30 * DAY_MS;
/// The shortest window and the smallest bucket.
pub const MIN_SINCE_MS: i64 = MINUTE_MS;
pub const MIN_BUCKET_MS: i64 = 1_000;

/// What to show: as people type it (query parameters, flags); checked by [`activity`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActivityRequest {
    /// Only this pool (by name).
    pub pool: Option<String>,
    /// Only this account (id or label).
    pub account: Option<String>,
    /// How far back: a duration like `1h`, `24h`, `7d` (default 24h, at most 30 days).
    pub since: Option<String>,
    /// The timeline's bucket size, a duration like `5m` (default: the window / 48 in whole
    /// minutes, at least 1 minute; at most 1000 buckets).
    pub bucket: Option<String>,
}

/// The request's window at `now_ms`, checked.
pub fn window_for(q: &ActivityRequest, now_ms: i64) -> Result<Window, OpsError> {
    let since_text = q.since.as_deref().unwrap_or(DEFAULT_SINCE);
    let since = model::parse_span(since_text).map_err(|m| OpsError::invalid("since", m))?;
    if !(MIN_SINCE_MS..=MAX_SINCE_MS).contains(&since) {
        return Err(OpsError::invalid(
            "since",
            format!("{since_text:?} is outside 1 minute..=30 days"),
        ));
    }
    let bucket = match q.bucket.as_deref() {
        None => model::default_bucket_ms(since),
        Some(text) => {
            let b = model::parse_span(text).map_err(|m| OpsError::invalid("bucket", m))?;
            if b < MIN_BUCKET_MS {
                return Err(OpsError::invalid(
                    "bucket",
                    format!("{text:?} is shorter than 1 second"),
                ));
            }
            b
        }
    };
    Window::ending_at(now_ms, since, bucket).map_err(|e| OpsError::invalid(e.field, e.message))
}

pub async fn activity(ops: &Ops, q: &ActivityRequest) -> Result<Outcome<Activity>, OpsError> {
    activity_at(ops, q, now_ms()).await
}

/// [`activity`] with the window ending at `now_ms` (tests, and surfaces that pin the time).
pub async fn activity_at(
    ops: &Ops,
    q: &ActivityRequest,
    now_ms: i64,
) -> Result<Outcome<Activity>, OpsError> {
    let window = window_for(q, now_ms)?;
    if let Some(pool) = &q.pool {
        codexmesh_model::ids::validate_pool_name(pool)
            .map_err(|e| OpsError::invalid("pool", e.message))?;
    }
    if let Some(account) = &q.account {
        if account.trim().is_empty() {
            return Err(OpsError::invalid(
                "account",
                "an account id or label is needed",
            ));
        }
    }
    if let Some(pool) = &q.pool {
        ops.see_pool(pool)?;
    }
    // Resolved among the accounts the principal sees (`guard`).
    let account_id = match &q.account {
        Some(ident) => Some(ops.account_to_see(ident).await?.id),
        None => None,
    };
    let store = ops.store().await?;
    let value = store
        .activity(&ActivityQuery {
            pool: q.pool.clone(),
            account_id,
            visible_pools: ops.visible_pools(),
            window,
            max_rows: ACTIVITY_MAX_ROWS,
        })
        .await?;
    let mut notices = Vec::new();
    if value.truncated {
        notices.push(Notice::warning(
            "activity_truncated",
            format!(
                "the window holds more than {ACTIVITY_MAX_ROWS} attempts: only the newest were \
                 counted, so the oldest buckets are short; ask for a shorter window"
            ),
        ));
    }
    Ok(Outcome::with_notices(value, notices))
}
