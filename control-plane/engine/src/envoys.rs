//! The Envoys subscribed to this control plane right now, and the snapshot version each runs:
//! what the admin API shows (`GET /api/v1/envoys`).
//!
//! Rules: in memory, per process (each replica knows its own subscribers); a subscription
//! registers when its stream starts and leaves when it ends ([`Registration`] drops); the
//! version an Envoy *runs* is the newest snapshot version its own outcome reports carried, the
//! version it was *sent* the newest frame written to its stream. Node ids and builds are
//! client-supplied text: stored already made loggable (printable, bounded) by the caller;
//! every report also moves a `watch` of the last report's time ([`Envoys::activity`]), which
//! the admin API's live events read (no tenant data: only a time).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use codexmesh_model::util::now_ms;

/// One subscribed Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnvoyView {
    /// The Envoy's node id (its `--service-node` / bootstrap node id).
    pub node_id: String,
    /// The peer address of its gRPC connection.
    pub peer: String,
    /// The filter build it announced.
    pub client_build: String,
    pub connected_at_ms: i64,
    /// The version it said it had when it subscribed (0: none).
    pub known_version: u64,
    /// The newest snapshot version sent on this stream.
    pub sent_version: Option<u64>,
    pub sent_at_ms: Option<i64>,
    /// The newest snapshot version its outcome reports say it served with.
    pub running_version: Option<u64>,
    pub reported_at_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    connected: BTreeMap<u64, EnvoyView>,
    /// node id → (version, when) from reports, kept while any of its streams is connected.
    reported: HashMap<String, (u64, i64)>,
}

/// The registry, shared by the gRPC service and the admin API.
#[derive(Debug, Clone)]
pub struct Envoys {
    inner: Arc<Mutex<Inner>>,
    /// When the last outcome report arrived (ms since the epoch; 0: none yet).
    activity: Arc<watch::Sender<i64>>,
}

impl Default for Envoys {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            activity: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Envoys {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent (plain inserts).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves whenever an outcome report arrives: its value is the time (ms) of the last one.
    pub fn activity(&self) -> watch::Receiver<i64> {
        self.activity.subscribe()
    }

    /// Registers a new subscription; it leaves when the returned guard drops.
    pub fn register(
        &self,
        node_id: String,
        peer: String,
        client_build: String,
        known_version: u64,
    ) -> Registration {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.connected.insert(
            id,
            EnvoyView {
                node_id,
                peer,
                client_build,
                connected_at_ms: now_ms(),
                known_version,
                sent_version: None,
                sent_at_ms: None,
                running_version: None,
                reported_at_ms: None,
            },
        );
        Registration {
            envoys: self.clone(),
            id,
        }
    }

    /// An outcome report from `node_id` served with snapshot `version`.
    pub fn reported(&self, node_id: &str, version: u64) {
        let mut inner = self.lock();
        let entry = inner
            .reported
            .entry(node_id.to_owned())
            .or_insert((version, 0));
        let at = now_ms();
        entry.0 = entry.0.max(version);
        entry.1 = at;
        drop(inner);
        self.activity.send_replace(at);
    }

    /// Every subscribed Envoy, oldest connection first.
    pub fn list(&self) -> Vec<EnvoyView> {
        let inner = self.lock();
        inner
            .connected
            .values()
            .map(|v| {
                let mut v = v.clone();
                if let Some((version, at)) = inner.reported.get(&v.node_id) {
                    v.running_version = Some(*version);
                    v.reported_at_ms = Some(*at);
                }
                v
            })
            .collect()
    }
}

/// A live subscription: records what was sent, and leaves the registry when dropped.
#[derive(Debug)]
pub struct Registration {
    envoys: Envoys,
    id: u64,
}

impl Registration {
    pub fn sent(&self, version: u64) {
        let mut inner = self.envoys.lock();
        if let Some(v) = inner.connected.get_mut(&self.id) {
            v.sent_version = Some(version);
            v.sent_at_ms = Some(now_ms());
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.envoys.lock();
        if let Some(gone) = inner.connected.remove(&self.id) {
            let still = inner.connected.values().any(|v| v.node_id == gone.node_id);
            if !still {
                inner.reported.remove(&gone.node_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_come_and_go_with_their_versions() {
        let envoys = Envoys::default();
        let a = envoys.register("node-a".into(), "127.0.0.1:1".into(), "b1".into(), 0);
        let b = envoys.register("node-b".into(), "127.0.0.1:2".into(), "b1".into(), 3);
        a.sent(7);
        let mut activity = envoys.activity();
        assert_eq!(*activity.borrow_and_update(), 0, "no report yet");
        envoys.reported("node-a", 6);
        assert!(
            activity.has_changed().unwrap_or(false),
            "a report moves activity"
        );
        assert!(*activity.borrow_and_update() > 0);
        envoys.reported("node-a", 5);
        let list = envoys.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].node_id, "node-a");
        assert_eq!(list[0].sent_version, Some(7));
        assert_eq!(
            list[0].running_version,
            Some(6),
            "the newest reported version"
        );
        assert_eq!(list[1].known_version, 3);
        assert_eq!(list[1].running_version, None);
        drop(a);
        assert_eq!(envoys.list().len(), 1);
        drop(b);
        assert!(envoys.list().is_empty());
        assert!(
            envoys.lock().reported.is_empty(),
            "reports of gone nodes are dropped"
        );
    }
}
