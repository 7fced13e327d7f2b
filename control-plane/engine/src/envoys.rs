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
//!
//! Snapshot verdicts (ACK/NACK): the store holds the truth for every replica
//! (`Store::record_snapshot_verdict`, shown by `status` and merged into the API's view by
//! `ops::reports::envoys`); the registry remembers, per node connected here, the last verdict
//! it stored, so a report repeating it writes nothing ([`Envoys::verdict_is_new`], then
//! [`Envoys::verdict_recorded`] once the store took it). A node's memory goes with its last
//! stream, so its first verdict on a new stream is written again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::watch;

use codexmesh_model::util::now_ms;
use codexmesh_store::SnapshotVerdict;

/// One Envoy: subscribed here, or known from the snapshot verdicts in the store.
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
    /// Whether it holds a Subscribe stream to this replica now (false: known from the store,
    /// connected elsewhere or gone).
    pub connected: bool,
    /// The newest snapshot version its filter accepted (ACK), and when.
    pub acked_version: Option<u64>,
    pub acked_at_ms: Option<i64>,
    /// The newest snapshot version its filter rejected (NACK; 0: a message that did not
    /// decode), when, and why. The Envoy kept serving the version it had.
    pub nacked_version: Option<u64>,
    pub nacked_at_ms: Option<i64>,
    pub nack_reason: Option<String>,
    /// The pool the rejection concerns: decides who may read the reason (not shown).
    #[serde(skip)]
    pub nack_pool_id: Option<String>,
    /// The egress proxies it has clusters for (told when it subscribed; canonical URLs). An
    /// account whose proxy is not among them is never served by it (`egress_proxy_missing`).
    pub egress_proxies: Vec<String>,
}

impl EnvoyView {
    /// A node known from the store only, without a stream here.
    pub fn offline(node_id: String) -> Self {
        Self {
            node_id,
            peer: String::new(),
            client_build: String::new(),
            connected_at_ms: 0,
            known_version: 0,
            sent_version: None,
            sent_at_ms: None,
            running_version: None,
            reported_at_ms: None,
            connected: false,
            acked_version: None,
            acked_at_ms: None,
            nacked_version: None,
            nacked_at_ms: None,
            nack_reason: None,
            nack_pool_id: None,
            egress_proxies: Vec::new(),
        }
    }

    /// Shows `v` as its last ACK or NACK.
    pub fn show_verdict(&mut self, v: &SnapshotVerdict) {
        let version = u64::try_from(v.version).unwrap_or(0);
        if v.accepted {
            self.acked_version = Some(version);
            self.acked_at_ms = Some(v.at_ms);
        } else {
            self.nacked_version = Some(version);
            self.nacked_at_ms = Some(v.at_ms);
            self.nack_reason = v.detail.clone();
            self.nack_pool_id = v.pool_id.clone();
        }
    }
}

/// The last ACK and NACK stored for a node.
#[derive(Debug, Default, Clone)]
struct NodeVerdicts {
    acked: Option<SnapshotVerdict>,
    nacked: Option<SnapshotVerdict>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    connected: BTreeMap<u64, EnvoyView>,
    /// node id → (version, when) from reports, kept while any of its streams is connected.
    reported: HashMap<String, (u64, i64)>,
    /// node id → its last stored verdicts, kept while any of its streams is connected here.
    verdicts: HashMap<String, NodeVerdicts>,
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
        let mut view = EnvoyView::offline(node_id);
        view.peer = peer;
        view.client_build = client_build;
        view.connected_at_ms = now_ms();
        view.known_version = known_version;
        view.connected = true;
        inner.connected.insert(id, view);
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

    /// Whether `verdict` differs from the last one stored for `node_id` (always, for a node
    /// with no stream here: nothing is remembered for it).
    pub fn verdict_is_new(&self, node_id: &str, verdict: &SnapshotVerdict) -> bool {
        let inner = self.lock();
        let Some(known) = inner.verdicts.get(node_id) else {
            return true;
        };
        let last = if verdict.accepted {
            &known.acked
        } else {
            &known.nacked
        };
        // The time says when the filter decided: the same verdict resent has the same time.
        last.as_ref() != Some(verdict)
    }

    /// `verdict` is stored: remember it while `node_id` has a stream here.
    pub fn verdict_recorded(&self, node_id: &str, verdict: &SnapshotVerdict) {
        let mut inner = self.lock();
        if !inner.connected.values().any(|v| v.node_id == node_id) {
            return;
        }
        let known = inner.verdicts.entry(node_id.to_owned()).or_default();
        if verdict.accepted {
            known.acked = Some(verdict.clone());
        } else {
            known.nacked = Some(verdict.clone());
        }
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
                if let Some(known) = inner.verdicts.get(&v.node_id) {
                    for verdict in [&known.acked, &known.nacked].into_iter().flatten() {
                        v.show_verdict(verdict);
                    }
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

/// Egress proxies one subscriber may announce at most (more are ignored).
pub const MAX_EGRESS_PROXIES: usize = 64;

impl Registration {
    /// Records the egress proxies the subscriber announced: client-supplied, so each is checked
    /// (an entry that is not a canonical proxy URL is dropped) and the list is bounded.
    pub fn with_egress_proxies(self, announced: &[String]) -> Self {
        let proxies: Vec<String> = announced
            .iter()
            .take(MAX_EGRESS_PROXIES)
            .filter_map(|p| codexmesh_model::egress::parse_egress_proxy(p).ok())
            .collect();
        {
            let mut inner = self.envoys.lock();
            if let Some(v) = inner.connected.get_mut(&self.id) {
                v.egress_proxies = proxies;
            }
        }
        self
    }

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
                inner.verdicts.remove(&gone.node_id);
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

    fn verdict(version: i64, accepted: bool, at_ms: i64) -> SnapshotVerdict {
        SnapshotVerdict {
            version,
            accepted,
            detail: (!accepted).then(|| format!("bad v{version}")),
            pool_id: None,
            at_ms,
        }
    }

    #[test]
    fn verdicts_are_written_once_while_connected_and_forgotten_with_the_node() {
        let envoys = Envoys::default();
        let ack = verdict(5, true, 100);
        // Not connected here: nothing remembered, every verdict is written.
        assert!(envoys.verdict_is_new("node-a", &ack));
        envoys.verdict_recorded("node-a", &ack);
        assert!(envoys.verdict_is_new("node-a", &ack));

        let a = envoys.register("node-a".into(), "127.0.0.1:1".into(), "b1".into(), 0);
        assert!(envoys.verdict_is_new("node-a", &ack));
        envoys.verdict_recorded("node-a", &ack);
        assert!(
            !envoys.verdict_is_new("node-a", &ack),
            "the same ACK resent"
        );
        let nack = verdict(6, false, 200);
        assert!(envoys.verdict_is_new("node-a", &nack));
        envoys.verdict_recorded("node-a", &nack);
        assert!(!envoys.verdict_is_new("node-a", &nack));
        assert!(
            !envoys.verdict_is_new("node-a", &ack),
            "a NACK keeps the ACK"
        );
        assert!(envoys.verdict_is_new("node-a", &verdict(7, true, 300)));

        let listed = envoys.list();
        assert!(listed[0].connected);
        assert_eq!(listed[0].acked_version, Some(5));
        assert_eq!(listed[0].acked_at_ms, Some(100));
        assert_eq!(listed[0].nacked_version, Some(6));
        assert_eq!(listed[0].nack_reason.as_deref(), Some("bad v6"));

        drop(a);
        assert!(envoys.lock().verdicts.is_empty());
        assert!(
            envoys.verdict_is_new("node-a", &ack),
            "a new stream writes again"
        );
    }
}
