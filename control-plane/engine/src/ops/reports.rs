//! The reports operators read: the status report and the request log. Both the CLI and the
//! admin API call these.
//!
//! Rules: read-only; a request-log filter's numbers are checked before the store is opened.

use super::{Ops, OpsError, Outcome};
use crate::requests;

pub use crate::requests::{Filter, RequestLogEntry, DEFAULT_LIMIT, MAX_LIMIT};
pub use crate::status::{
    AccountStatus, HealthView, KeyCounts, PoolStatus, QuotaView, StatusReport, WindowView,
};

/// Pools, their accounts with quota, health and counters, and key counts.
pub async fn status(ops: &Ops) -> Result<Outcome<StatusReport>, OpsError> {
    let store = ops.store().await?;
    Ok(Outcome::new(
        crate::status::build(store, ops.settings().health_window.as_secs()).await?,
    ))
}

/// The request log, newest first, filtered.
pub async fn requests(
    ops: &Ops,
    filter: &Filter,
) -> Result<Outcome<Vec<RequestLogEntry>>, OpsError> {
    // Checked before the store is opened: a bad number touches nothing.
    requests::check_limit(filter.limit)?;
    let store = ops.store().await?;
    Ok(Outcome::new(requests::query(store, filter).await?))
}
