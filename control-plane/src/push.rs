//! The tonic `Mesh` service: Subscribe (snapshots + heartbeats) and Report (outcome metadata).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_server::Mesh;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::Secret;
use crate::store::{OutcomeRecord, QuotaWindowRecord, Store, StoreError};
use crate::util::{self, now_ms};

/// Upper bound on outcomes in one Report call; the filter batches far fewer.
pub const MAX_REPORT_BATCH: usize = 10_000;
/// Free-text fields from the data path are clipped to this many characters.
const MAX_FIELD_CHARS: usize = 256;

/// Where reported outcomes go: `serve` uses [`crate::lifecycle::LifecycleSink`] (store, quota
/// evidence, 401-triggered refresh, health); the bare store is a sink too (tests).
pub trait OutcomeSink: Send + Sync + 'static {
    fn record(
        &self,
        node_id: &str,
        outcomes: Vec<OutcomeRecord>,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
}

impl OutcomeSink for Store {
    fn record(
        &self,
        node_id: &str,
        outcomes: Vec<OutcomeRecord>,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send {
        let node_id = node_id.to_owned();
        async move { self.record_outcomes(&node_id, &outcomes).await }
    }
}

pub struct MeshService<S> {
    snapshots: watch::Receiver<Arc<pb::Snapshot>>,
    token_digest: [u8; 32],
    sink: Arc<S>,
    heartbeat: Duration,
    shutdown: CancellationToken,
}

impl<S: OutcomeSink> MeshService<S> {
    pub fn new(
        snapshots: watch::Receiver<Arc<pb::Snapshot>>,
        push_token: &Secret,
        sink: Arc<S>,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            snapshots,
            token_digest: util::token_digest(push_token.expose()),
            sink,
            heartbeat,
            shutdown,
        }
    }

    /// `authorization: Bearer <push token>`, compared as SHA-256 digests in constant time so
    /// neither the content nor the length of the token leaks through timing.
    fn authorize(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let presented = md.get("authorization").and_then(|v| v.to_str().ok());
        if util::bearer_matches(presented, &self.token_digest) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong push token"))
        }
    }
}

fn peer_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// Makes a client-supplied string safe to log: bounded and without control characters.
fn loggable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(96).collect()
}

fn clip(s: &str) -> Option<String> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD_CHARS)
        .collect();
    (!s.is_empty()).then_some(s)
}

fn quota_window(w: Option<&pb::QuotaWindow>) -> Option<QuotaWindowRecord> {
    w.map(|w| QuotaWindowRecord {
        used_percent: if w.used_percent.is_finite() {
            w.used_percent
        } else {
            0.0
        },
        window_minutes: i64::from(w.window_minutes),
        resets_at_unix: w.resets_at_unix,
    })
}

/// Proto outcome → store record, keeping metadata only: the path loses its query string.
pub fn outcome_record(o: &pb::Outcome) -> OutcomeRecord {
    let path = o.request_path.split('?').next().unwrap_or_default();
    OutcomeRecord {
        pool_id: o.pool_id.chars().take(MAX_FIELD_CHARS).collect(),
        key_id: o.key_id.chars().take(MAX_FIELD_CHARS).collect(),
        account_id: o.account_id.chars().take(MAX_FIELD_CHARS).collect(),
        attempt: i64::from(o.attempt),
        status: i64::from(o.status),
        error_code: clip(&o.error_code),
        started_at_ms: o.started_at_unix_ms,
        latency_ms: i64::from(o.latency_ms),
        request_path: clip(path),
        snapshot_version: i64::try_from(o.snapshot_version).unwrap_or(i64::MAX),
        plan: clip(&o.plan),
        resets_at_unix: (o.resets_at_unix != 0).then_some(o.resets_at_unix),
        primary: quota_window(o.quota.as_ref().and_then(|q| q.primary.as_ref())),
        secondary: quota_window(o.quota.as_ref().and_then(|q| q.secondary.as_ref())),
        quota_observed_at_ms: o.quota.as_ref().map(|q| q.observed_at_unix_ms),
        credits_has_credits: o.credits_has_credits,
        credits_unlimited: o.credits_unlimited,
        credits_balance: clip(&o.credits_balance),
        error_source: clip(&o.error_source),
        fallback: o.fallback,
        retry_after_unix: (o.retry_after_unix != 0).then_some(o.retry_after_unix),
        token_expires_at_unix: (o.token_expires_at_unix != 0).then_some(o.token_expires_at_unix),
        strategy: clip(&o.strategy),
        route_reason: clip(&o.route_reason),
    }
}

fn snapshot_message(s: &pb::Snapshot) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        kind: Some(pb::subscribe_response::Kind::Snapshot(s.clone())),
    }
}

#[tonic::async_trait]
impl<S: OutcomeSink> Mesh for MeshService<S> {
    type SubscribeStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = peer_of(&request);
        if let Err(status) = self.authorize(request.metadata()) {
            tracing::warn!(peer = %peer, "Subscribe refused: missing or wrong push token");
            return Err(status);
        }
        let req = request.into_inner();
        let node = loggable(&req.node_id);
        tracing::info!(peer = %peer, node = %node, known_version = req.known_version,
            client_build = %loggable(&req.client_build), "subscriber connected");

        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = self.snapshots.clone();
        let heartbeat = self.heartbeat;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let first = snapshots.borrow_and_update().clone();
            let mut version = first.version;
            if tx.send(Ok(snapshot_message(&first))).await.is_err() {
                return;
            }
            tracing::debug!(node = %node, version, "sent initial snapshot");
            let mut beat =
                tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            break; // builder stopped: end the stream, the client reconnects
                        }
                        let snap = snapshots.borrow_and_update().clone();
                        if snap.version <= version {
                            continue;
                        }
                        version = snap.version;
                        if tx.send(Ok(snapshot_message(&snap))).await.is_err() {
                            break;
                        }
                        tracing::debug!(node = %node, version, "sent snapshot");
                        beat.reset();
                    }
                    _ = beat.tick() => {
                        let hb = pb::SubscribeResponse {
                            kind: Some(pb::subscribe_response::Kind::Heartbeat(pb::Heartbeat {
                                version,
                                sent_at_unix_ms: now_ms(),
                            })),
                        };
                        if tx.send(Ok(hb)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            tracing::info!(node = %node, "subscriber stream ended");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report(
        &self,
        request: Request<pb::ReportBatch>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        if let Err(status) = self.authorize(request.metadata()) {
            tracing::warn!(peer = %peer_of(&request), "Report refused: missing or wrong push token");
            return Err(status);
        }
        let batch = request.into_inner();
        if batch.outcomes.len() > MAX_REPORT_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORT_BATCH} outcomes per report"
            )));
        }
        let node = loggable(&batch.node_id);
        let records: Vec<OutcomeRecord> = batch.outcomes.iter().map(outcome_record).collect();
        match self.sink.record(&node, records).await {
            Ok(accepted) => {
                tracing::debug!(node = %node, accepted, "report stored");
                Ok(Response::new(pb::ReportAck { accepted }))
            }
            Err(e) => {
                tracing::error!(node = %node, error = %e, "cannot store reported outcomes");
                Err(Status::unavailable("cannot store outcomes right now"))
            }
        }
    }
}
