//! The usage push worker: keeps the snapshot's `PoolKey.usage` close to what the store counted
//! without rebuilding the snapshot per report.
//!
//! Rules: only keys whose policy has a token budget or a quota share matter (for the others
//! the filter has nothing to enforce). Every `usage_push_interval_ms` it compares each such
//! key's counted use with what the current snapshot carries and, when any moved, bumps the
//! store revision once (the snapshot builder then rebuilds, reading the counts). Reports with
//! usage wake it early: if a key crossed one of its limits (a budget reached, a share newly
//! blocking) it publishes at once instead of at the next tick; wakes closer together than
//! [`WAKE_SPACING`] are taken as one, so a stream of reports costs a few checks a second. It
//! also prunes attributed share points older than 7 days. Failures are logged once per outage
//! and retried at the next tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use codexmesh_model::usage::{push_need, PushNeed, ShareWindow};
use codexmesh_model::util::now_ms;
use codexmesh_proto::v1 as pb;
use codexmesh_store::{Store, StoreError};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The least time between two checks a report woke.
pub const WAKE_SPACING: Duration = Duration::from_millis(250);

/// Whether the key's policy has anything the counts decide (a token budget or a share).
fn counted(p: &codexmesh_model::policy::KeyPolicy) -> bool {
    p.tokens_per_day.is_some()
        || p.tokens_per_week.is_some()
        || p.primary_share_percent.is_some()
        || p.secondary_share_percent.is_some()
}

/// The most urgent push any key needs, comparing the store's counts with `snapshot`.
pub async fn need(store: &Store, snapshot: &pb::Snapshot) -> Result<PushNeed, StoreError> {
    let keys: Vec<_> = store
        .list_keys(None)
        .await?
        .into_iter()
        .filter(|k| k.policy.as_ref().is_some_and(counted))
        .collect();
    if keys.is_empty() {
        return Ok(PushNeed::None);
    }
    let published: HashMap<&str, Option<&pb::KeyUsage>> = snapshot
        .pools
        .iter()
        .flat_map(|p| &p.keys)
        .map(|k| (k.id.as_str(), k.usage.as_ref()))
        .collect();
    let now_unix = now_ms().div_euclid(1000);
    let keys = store.with_usage(keys).await?;
    Ok(keys
        .iter()
        .map(|k| {
            push_need(
                k.policy.as_ref(),
                published.get(k.id.as_str()).copied().flatten(),
                &k.usage.unwrap_or_default(),
                now_unix,
            )
        })
        .max()
        .unwrap_or(PushNeed::None))
}

/// Starts the worker. `wake` is told after reports with usage; `changed` nudges the snapshot
/// builder; `snapshots` is the builder's current snapshot.
pub fn start(
    store: Store,
    interval: Duration,
    wake: Arc<Notify>,
    changed: Arc<Notify>,
    snapshots: watch::Receiver<Arc<pb::Snapshot>>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_tick = tokio::time::Instant::now() + interval;
        let mut last_woken_check = tokio::time::Instant::now()
            .checked_sub(WAKE_SPACING)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut failing = false;
        loop {
            let ticked = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next_tick) => true,
                _ = wake.notified() => false,
            };
            if !ticked {
                // Reports arriving together make one check.
                let since = last_woken_check.elapsed();
                if since < WAKE_SPACING {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(WAKE_SPACING - since) => {}
                    }
                }
                last_woken_check = tokio::time::Instant::now();
            }
            if ticked {
                next_tick = tokio::time::Instant::now() + interval;
                let horizon = now_ms() - ShareWindow::Secondary.trailing_ms();
                if let Err(e) = store.prune_share_points(horizon).await {
                    tracing::debug!(error = %e, "cannot prune share points");
                }
            }
            let snapshot = snapshots.borrow().clone();
            let result = async {
                let need = need(&store, &snapshot).await?;
                let publish = need == PushNeed::Now || (ticked && need == PushNeed::Later);
                if publish {
                    let revision = store.publish_usage().await?;
                    tracing::debug!(revision, ?need, "key usage published");
                    changed.notify_one();
                }
                Ok::<_, StoreError>(())
            }
            .await;
            match result {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "usage push worker cannot read or publish key usage");
                    }
                    failing = true;
                }
            }
        }
    })
}
