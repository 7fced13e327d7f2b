//! Builds the proto `Snapshot` from the store and publishes each new one on a `watch` channel.
//!
//! The builder polls `meta.revision` (another process, e.g. the CLI, may have written the store)
//! and rebuilds when it moved, after a short debounce so a burst of writes becomes one snapshot.

use std::sync::Arc;
use std::time::Duration;

use codexmesh_proto::v1 as pb;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::crypto::MasterKey;
use crate::store::{
    AccountState, KeyStatus, Routing, RoutingMode, SnapshotData, Store, StoreError, Strategy,
};
use crate::util::{self, now_ms};

/// Wait after noticing a change before reading, so writes landing together are coalesced.
const DEBOUNCE: Duration = Duration::from_millis(15);

/// Builds a snapshot from rows read in one transaction. Access tokens are opened here; an
/// account whose token cannot be opened is sent as NEEDS_REAUTH without a token, rather than
/// failing the whole snapshot. Quota windows whose reset time has passed are sent as 0 % used.
pub fn build(data: &SnapshotData, key: &MasterKey, control_plane_id: &str) -> pb::Snapshot {
    let now_unix = now_ms() / 1000;
    let pools = data
        .pools
        .iter()
        .map(|pool| {
            let keys = data
                .keys
                .iter()
                .filter(|k| k.pool_id == pool.id)
                .filter_map(|k| {
                    let Some(hash) = util::hex_decode(&k.key_hash_hex).filter(|h| h.len() == 32)
                    else {
                        tracing::error!(key_id = %k.id, "stored key hash is not 32 bytes of hex; key left out");
                        return None;
                    };
                    Some(pb::PoolKey {
                        id: k.id.clone(),
                        key_hash: hash,
                        status: match k.status {
                            KeyStatus::Active => pb::KeyStatus::Active,
                            KeyStatus::Revoked => pb::KeyStatus::Revoked,
                        } as i32,
                        label: k.label.clone(),
                        // Absent = inherit the pool's routing; the filter uses an override
                        // instead of the pool's settings, so custom keys carry a full copy.
                        routing_override: match k.routing_mode {
                            RoutingMode::Custom => k.routing_override.as_ref().map(proto_routing),
                            RoutingMode::Inherit => None,
                        },
                        operator: k.operator,
                    })
                })
                .collect();
            let accounts = data
                .accounts
                .iter()
                .filter(|a| a.account.pool_id == pool.id)
                .map(|a| {
                    let acc = &a.account;
                    let (token, state, reason) =
                        match key.open_string(&acc.id, "access_token", &a.sealed_access_token) {
                            Ok(t) => (t, acc.state, acc.state_reason.clone().unwrap_or_default()),
                            Err(e) => {
                                tracing::error!(account_id = %acc.id, error = %e,
                                    "cannot open the sealed access token; sending the account as needs_reauth");
                                (String::new(), AccountState::NeedsReauth, "sealed_token_unreadable".to_owned())
                            }
                        };
                    pb::Account {
                        id: acc.id.clone(),
                        label: acc.label.clone(),
                        chatgpt_account_id: acc.chatgpt_account_id.clone(),
                        access_token: token,
                        state: proto_state(state) as i32,
                        cooldown_until_unix: match state {
                            AccountState::CoolingDown => acc.cooldown_until_ms.unwrap_or(0) / 1000,
                            _ => 0,
                        },
                        priority: acc.priority,
                        // A share of 0 means nothing (the filter clamps to 1 as well): send
                        // what routing will actually use.
                        weight: acc.weight.max(1),
                        quota: a.quota.as_ref().map(|q| crate::quota::summary(q, now_unix)),
                        health: acc.health.min(100),
                        plan: acc.plan.clone().unwrap_or_default(),
                        access_token_expires_at_unix: acc
                            .access_token_expires_at_ms
                            .map_or(0, |ms| ms.div_euclid(1000)),
                        state_reason: reason,
                        token_revision: u64::try_from(acc.token_revision).unwrap_or(0),
                    }
                })
                .collect();
            pb::Pool {
                id: pool.id.clone(),
                name: pool.name.clone(),
                routing: Some(proto_routing(&pool.routing)),
                keys,
                accounts,
            }
        })
        .collect();
    pb::Snapshot {
        version: u64::try_from(data.revision).unwrap_or(0),
        generated_at_unix_ms: now_ms(),
        pools,
        control_plane_id: control_plane_id.to_owned(),
    }
}

fn proto_state(s: AccountState) -> pb::AccountState {
    match s {
        AccountState::Active => pb::AccountState::Active,
        AccountState::Paused => pb::AccountState::Paused,
        AccountState::CoolingDown => pb::AccountState::CoolingDown,
        AccountState::NeedsReauth => pb::AccountState::NeedsReauth,
    }
}

/// Stored routing → proto. Settings left at their default are sent as 0 / empty, which the
/// filter reads as its own default (so a filter with newer defaults applies them).
pub fn proto_routing(r: &Routing) -> pb::RoutingSettings {
    pb::RoutingSettings {
        strategy: proto_strategy(r.strategy) as i32,
        max_attempts: r.max_attempts,
        explain_routes: r.explain_routes,
        primary_threshold_percent: r.primary_threshold_percent.unwrap_or(0.0),
        secondary_threshold_percent: r.secondary_threshold_percent.unwrap_or(0.0),
        circuit_failures: r.circuit_failures.unwrap_or(0),
        circuit_open_ms: r.circuit_open_ms.unwrap_or(0),
        cooldown_max_ms: r.cooldown_max_ms.unwrap_or(0),
        primary_account_id: r.primary_account_id.clone().unwrap_or_default(),
        websockets_disabled: !r.websockets,
    }
}

fn proto_strategy(s: Strategy) -> pb::Strategy {
    match s {
        Strategy::RoundRobin => pb::Strategy::RoundRobin,
        Strategy::QuotaFirst => pb::Strategy::QuotaFirst,
        Strategy::PrimaryFirst => pb::Strategy::PrimaryFirst,
        Strategy::PriorityOrder => pb::Strategy::PriorityOrder,
    }
}

/// Identifies this control-plane process in snapshots and logs.
pub fn new_control_plane_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let suffix = util::random_alnum(6).unwrap_or_else(|_| std::process::id().to_string());
    format!("{host}/{suffix}")
}

/// A running snapshot builder.
pub struct SnapshotHub {
    rx: watch::Receiver<Arc<pb::Snapshot>>,
    nudge: Arc<Notify>,
    task: JoinHandle<()>,
}

impl SnapshotHub {
    /// Builds the first snapshot (failing fast if the store cannot be read), then keeps
    /// rebuilding on revision changes until `cancel` fires.
    pub async fn start(
        store: Store,
        key: MasterKey,
        control_plane_id: String,
        poll: Duration,
        cancel: CancellationToken,
    ) -> Result<Self, StoreError> {
        let first = build(&store.snapshot_data().await?, &key, &control_plane_id);
        tracing::info!(
            version = first.version,
            pools = first.pools.len(),
            "initial snapshot built"
        );
        let (tx, rx) = watch::channel(Arc::new(first));
        let nudge = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            store,
            key,
            control_plane_id,
            poll,
            cancel,
            tx,
            nudge.clone(),
        ));
        Ok(Self { rx, nudge, task })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<pb::Snapshot>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Arc<pb::Snapshot> {
        self.rx.borrow().clone()
    }

    /// Asks for an immediate revision check (in-process writers call this after a commit).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub fn nudger(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
}

async fn run(
    store: Store,
    key: MasterKey,
    cp_id: String,
    poll: Duration,
    cancel: CancellationToken,
    tx: watch::Sender<Arc<pb::Snapshot>>,
    nudge: Arc<Notify>,
) {
    let mut current = tx.borrow().version;
    // Log store trouble once per outage, not once per poll.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
            _ = nudge.notified() => {}
        }
        let revision = match store.revision().await {
            Ok(r) => u64::try_from(r).unwrap_or(0),
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the store revision; keeping the last snapshot");
                    failing = true;
                }
                continue;
            }
        };
        if revision == current {
            if failing {
                tracing::info!("store readable again");
                failing = false;
            }
            continue;
        }
        if revision < current {
            if !failing {
                tracing::warn!(
                    revision,
                    current,
                    "store revision went backwards (restored backup?); keeping the newer snapshot"
                );
                failing = true;
            }
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        match store.snapshot_data().await {
            Ok(data) => {
                let snap = build(&data, &key, &cp_id);
                failing = false;
                if snap.version > current {
                    current = snap.version;
                    tracing::info!(version = current, pools = snap.pools.len(), "new snapshot");
                    tx.send_replace(Arc::new(snap));
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot build a snapshot; keeping the last one");
                    failing = true;
                }
            }
        }
    }
}
