//! The `Mesh` gRPC service: Subscribe (snapshots + heartbeats) and Report (outcome metadata).
//!
//! Subscribe is served by hand instead of through tonic's generated handler: tonic encodes every
//! message per stream into a per-stream buffer that then keeps the capacity of the largest
//! message for as long as the stream lives (a 16 MiB snapshot at 10,000 accounts made that
//! 17.8 MiB per connected Envoy, and a clone plus an encode per stream per change). Here each
//! snapshot version is encoded once by the builder into a complete gRPC message
//! ([`SnapshotFrame`]: the 5-byte prefix and the `SubscribeResponse` bytes) and every stream
//! hands the same reference-counted `Bytes` to hyper/h2, which write it out without copying. A
//! stream holds a `watch` receiver, a heartbeat timer and the version it last sent: it takes the
//! newest frame when its connection can take more, so a slow subscriber skips versions instead of
//! queueing them. The wire format is the one the generated code produces (same message, same
//! framing, `grpc-status` in the trailers): clients, the wasm filter among them, are unchanged.
//! Report stays on tonic's generated handler. A report may carry the filter's snapshot verdicts
//! (ACK/NACK): each new one is stored (`OutcomeSink::record_verdict`) before the report is
//! answered, so a failed write is an error the filter retries.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_server::{Mesh, MeshServer};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower_service::Service;

use crate::config::Secret;
use crate::envoys::{Envoys, Registration};
use crate::metrics::{Metrics, Tally};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::{OutcomeRecord, QuotaWindowRecord, SnapshotVerdict, Store, StoreError};

/// The Subscribe method's HTTP/2 path (as the generated client calls it).
pub const SUBSCRIBE_PATH: &str = codexmesh_proto::names::SUBSCRIBE_PATH;
/// A SubscribeRequest is three short fields; anything near this is not one.
const MAX_SUBSCRIBE_REQUEST_BYTES: usize = 64 * 1024;
/// gRPC length prefix: compression flag + big-endian u32 length.
const GRPC_HEADER_LEN: usize = 5;
/// `SubscribeResponse.snapshot` (proto field number).
const SUBSCRIBE_RESPONSE_SNAPSHOT_FIELD: u32 = 1;

/// Upper bound on outcomes in one Report call; the filter batches far fewer.
pub const MAX_REPORT_BATCH: usize = 10_000;
/// Free-text fields from the data path are clipped to this many characters.
const MAX_FIELD_CHARS: usize = 256;
/// Snapshot verdicts in one Report call at most (the filter sends one ACK and one NACK).
pub const MAX_REPORT_VERDICTS: usize = 8;
/// A rejection's reason is clipped to this many characters (the filter sends at most as many).
const MAX_VERDICT_DETAIL_CHARS: usize = 1024;

/// Where reported outcomes go: `serve` uses [`crate::lifecycle::LifecycleSink`] (store, quota
/// evidence, 401-triggered refresh, health); the bare store is a sink too (tests).
pub trait OutcomeSink: Send + Sync + 'static {
    fn record(
        &self,
        node_id: &str,
        outcomes: Vec<OutcomeRecord>,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Stores node `node_id`'s snapshot verdict (ACK or NACK).
    fn record_verdict(
        &self,
        node_id: &str,
        verdict: SnapshotVerdict,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
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

    fn record_verdict(
        &self,
        node_id: &str,
        verdict: SnapshotVerdict,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let node_id = node_id.to_owned();
        async move { self.record_snapshot_verdict(&node_id, &verdict).await }
    }
}

/// One snapshot version, encoded once: a complete gRPC message carrying
/// `SubscribeResponse { snapshot }`, ready to be written to any Subscribe stream. Cloning it
/// clones a reference, not the bytes.
#[derive(Clone, Debug)]
pub struct SnapshotFrame {
    pub version: u64,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("an encoded snapshot of {0} bytes is over gRPC's 4 GiB message limit")]
pub struct FrameTooLarge(usize);

/// Encodes `SubscribeResponse { snapshot }` behind its gRPC length prefix, byte for byte what
/// tonic's prost codec would write, without cloning the snapshot into a `SubscribeResponse`.
pub fn snapshot_frame(snapshot: &pb::Snapshot) -> Result<SnapshotFrame, FrameTooLarge> {
    let len = prost::encoding::message::encoded_len(SUBSCRIBE_RESPONSE_SNAPSHOT_FIELD, snapshot);
    let prefix = u32::try_from(len).map_err(|_| FrameTooLarge(len))?;
    let mut buf = BytesMut::with_capacity(GRPC_HEADER_LEN + len);
    buf.put_u8(0); // not compressed
    buf.put_u32(prefix);
    prost::encoding::message::encode(SUBSCRIBE_RESPONSE_SNAPSHOT_FIELD, snapshot, &mut buf);
    Ok(SnapshotFrame {
        version: snapshot.version,
        bytes: buf.freeze(),
    })
}

/// A small message (heartbeats) as one gRPC message.
fn message_frame(msg: &pb::SubscribeResponse) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(GRPC_HEADER_LEN + len);
    buf.put_u8(0);
    // A heartbeat is a few dozen bytes.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode_raw(&mut buf);
    buf.freeze()
}

/// The push token check both methods share.
struct PushAuth {
    token_digest: [u8; 32],
}

impl PushAuth {
    /// `authorization: Bearer <push token>`, compared as SHA-256 digests in constant time so
    /// neither the content nor the length of the token leaks through timing.
    fn check(&self, authorization: Option<&str>) -> Result<(), Status> {
        if util::bearer_matches(authorization, &self.token_digest) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong push token"))
        }
    }
}

/// Report (through tonic's generated handler) and the shared state of both methods.
pub struct MeshService<S> {
    frames: watch::Receiver<SnapshotFrame>,
    auth: Arc<PushAuth>,
    sink: Arc<S>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    envoys: Envoys,
    metrics: Option<Metrics>,
}

impl<S: OutcomeSink> MeshService<S> {
    pub fn new(
        frames: watch::Receiver<SnapshotFrame>,
        push_token: &Secret,
        sink: Arc<S>,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            frames,
            auth: Arc::new(PushAuth {
                token_digest: util::token_digest(push_token.expose()),
            }),
            sink,
            heartbeat,
            shutdown,
            envoys: Envoys::default(),
            metrics: None,
        }
    }

    /// Counts pushed frames and reported outcomes in `metrics` (`serve`'s `/metrics`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Records subscriptions and reported versions in `envoys` (the admin API's view).
    pub fn with_envoys(mut self, envoys: Envoys) -> Self {
        self.envoys = envoys;
        self
    }

    /// The service to add to the gRPC server: Subscribe served from the shared frames, Report
    /// by tonic.
    pub fn routes(self) -> MeshRoutes<S> {
        let subscribe = Arc::new(SubscribeRoute {
            frames: self.frames.clone(),
            auth: self.auth.clone(),
            heartbeat: self.heartbeat,
            shutdown: self.shutdown.clone(),
            envoys: self.envoys.clone(),
            metrics: self.metrics.clone(),
        });
        MeshRoutes {
            subscribe,
            generated: MeshServer::new(self),
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

/// Proto verdict → store record: the reason made loggable and bounded, versions in the store's
/// range.
pub fn snapshot_verdict(s: &pb::SnapshotStatus) -> SnapshotVerdict {
    let detail: String = s
        .error_detail
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_VERDICT_DETAIL_CHARS)
        .collect();
    SnapshotVerdict {
        version: i64::try_from(s.version).unwrap_or(i64::MAX),
        accepted: s.accepted,
        detail: (!s.accepted).then(|| {
            if detail.is_empty() {
                "rejected without a reason".to_owned()
            } else {
                detail
            }
        }),
        pool_id: (!s.accepted).then(|| clip(&s.pool_id)).flatten(),
        at_ms: s.at_unix_ms,
    }
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
        // A policy refusal is the client's doing (never an account's or the upstream's).
        error_source: clip(&o.error_source)
            .or_else(|| (!o.policy_refusal.is_empty()).then(|| "client".to_owned())),
        fallback: o.fallback,
        retry_after_unix: (o.retry_after_unix != 0).then_some(o.retry_after_unix),
        token_expires_at_unix: (o.token_expires_at_unix != 0).then_some(o.token_expires_at_unix),
        strategy: clip(&o.strategy),
        route_reason: clip(&o.route_reason),
        input_tokens: i64::try_from(o.input_tokens).unwrap_or(i64::MAX),
        output_tokens: i64::try_from(o.output_tokens).unwrap_or(i64::MAX),
        policy_refusal: clip(&o.policy_refusal),
    }
}

#[tonic::async_trait]
impl<S: OutcomeSink> Mesh for MeshService<S> {
    type SubscribeStream = tokio_stream::Empty<Result<pb::SubscribeResponse, Status>>;

    /// Not reached: [`MeshRoutes`] answers Subscribe before the generated handler sees it.
    async fn subscribe(
        &self,
        _request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented(
            "Subscribe is served by MeshRoutes (MeshService::routes)",
        ))
    }

    async fn report(
        &self,
        request: Request<pb::ReportBatch>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        if let Err(status) = self.auth.check(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        ) {
            tracing::warn!(peer = %peer_of(&request), "Report refused: missing or wrong push token");
            return Err(status);
        }
        let batch = request.into_inner();
        if batch.outcomes.len() > MAX_REPORT_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORT_BATCH} outcomes per report"
            )));
        }
        if batch.snapshot_statuses.len() > MAX_REPORT_VERDICTS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORT_VERDICTS} snapshot statuses per report"
            )));
        }
        let node = loggable(&batch.node_id);
        for status in &batch.snapshot_statuses {
            let verdict = snapshot_verdict(status);
            if !self.envoys.verdict_is_new(&node, &verdict) {
                continue;
            }
            if let Some(reason) = &verdict.detail {
                tracing::warn!(node = %node, version = verdict.version, applied = status.applied_version,
                    reason = %reason, "an Envoy rejected a snapshot (NACK); it keeps serving the version it had");
            } else {
                tracing::info!(node = %node, version = verdict.version, "an Envoy accepted a snapshot (ACK)");
            }
            if let Err(e) = self.sink.record_verdict(&node, verdict.clone()).await {
                tracing::error!(node = %node, error = %e, "cannot store a snapshot verdict");
                return Err(Status::unavailable(
                    "cannot store the snapshot status right now",
                ));
            }
            self.envoys.verdict_recorded(&node, &verdict);
        }
        if batch.outcomes.is_empty() && !batch.snapshot_statuses.is_empty() {
            // Verdicts only: nothing for the outcome sink.
            return Ok(Response::new(pb::ReportAck { accepted: 0 }));
        }
        if let Some(version) = batch.outcomes.iter().map(|o| o.snapshot_version).max() {
            self.envoys.reported(&node, version);
        }
        let records: Vec<OutcomeRecord> = batch.outcomes.iter().map(outcome_record).collect();
        // Counted once the store took them (a refused report is sent again).
        let tally = self.metrics.as_ref().map(|_| Tally::of(&records));
        match self.sink.record(&node, records).await {
            Ok(accepted) => {
                if let (Some(m), Some(tally)) = (&self.metrics, tally) {
                    m.reported(tally);
                }
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

// ---- Subscribe, served from the shared frames ----

type RouteFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

/// The `Mesh` service as the gRPC server sees it: Subscribe by [`SubscribeRoute`], every other
/// path (Report) by the generated server.
pub struct MeshRoutes<S> {
    subscribe: Arc<SubscribeRoute>,
    generated: MeshServer<MeshService<S>>,
}

impl<S> Clone for MeshRoutes<S> {
    fn clone(&self) -> Self {
        Self {
            subscribe: self.subscribe.clone(),
            generated: self.generated.clone(),
        }
    }
}

impl<S> NamedService for MeshRoutes<S> {
    const NAME: &'static str = <MeshServer<MeshService<S>> as NamedService>::NAME;
}

impl<S: OutcomeSink> Service<http::Request<tonic::body::Body>> for MeshRoutes<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() == SUBSCRIBE_PATH {
            let route = self.subscribe.clone();
            Box::pin(async move { Ok(route.serve(req).await) })
        } else {
            self.generated.call(req)
        }
    }
}

struct SubscribeRoute {
    frames: watch::Receiver<SnapshotFrame>,
    auth: Arc<PushAuth>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    envoys: Envoys,
    metrics: Option<Metrics>,
}

impl SubscribeRoute {
    /// Checks the token (before reading the body), reads the one request message, and answers
    /// with a stream that starts with the current snapshot. Errors are gRPC trailers-only
    /// responses, as tonic sends them.
    async fn serve(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        if let Err(status) = self.auth.check(
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        ) {
            tracing::warn!(peer = %peer, "Subscribe refused: missing or wrong push token");
            return status.into_http();
        }
        if let Some(enc) = req.headers().get("grpc-encoding") {
            if enc.as_bytes() != b"identity" {
                let enc = loggable(&String::from_utf8_lossy(enc.as_bytes()));
                return Status::unimplemented(format!(
                    "Content is compressed with `{enc}` which isn't supported"
                ))
                .into_http();
            }
        }
        let request = match read_subscribe_request(req.into_body()).await {
            Ok(r) => r,
            Err(status) => {
                tracing::warn!(peer = %peer, error = %status.message(), "bad Subscribe request");
                return status.into_http();
            }
        };
        let node = loggable(&request.node_id);
        tracing::info!(peer = %peer, node = %node, known_version = request.known_version,
            client_build = %loggable(&request.client_build), "subscriber connected");
        let registration = self
            .envoys
            .register(
                node.clone(),
                peer.clone(),
                loggable(&request.client_build),
                request.known_version,
            )
            .with_egress_proxies(&request.egress_proxies);
        let body = SubscribeBody::new(
            self.frames.clone(),
            self.heartbeat,
            self.shutdown.clone(),
            node,
        )
        .registered(registration)
        .counted(self.metrics.clone());
        let mut response = http::Response::new(tonic::body::Body::new(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// Reads the request body (bounded) and decodes its first gRPC message, as tonic's unary-request
/// handling does (the rest of the body is read and ignored).
async fn read_subscribe_request(body: tonic::body::Body) -> Result<pb::SubscribeRequest, Status> {
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > MAX_SUBSCRIBE_REQUEST_BYTES {
                return Err(Status::resource_exhausted("Subscribe request too large"));
            }
            buf.extend_from_slice(&data);
        }
    }
    let Some(header) = buf.get(..GRPC_HEADER_LEN) else {
        return Err(Status::internal("Missing request message."));
    };
    match header[0] {
        0 => {}
        1 => {
            return Err(Status::unimplemented(
                "compressed Subscribe requests are not supported",
            ))
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: invalid compression flag {f}"
            )))
        }
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let Some(msg) = buf.get(GRPC_HEADER_LEN..GRPC_HEADER_LEN + len) else {
        return Err(Status::internal("incomplete Subscribe request message"));
    };
    pb::SubscribeRequest::decode(msg)
        .map_err(|e| Status::internal(format!("cannot decode the Subscribe request: {e}")))
}

/// One Subscribe stream's response body. hyper polls it for the next chunk only when the
/// connection has room for more (after the previous one is mostly written out), and then it
/// yields the newest snapshot frame it has not sent, a heartbeat when one is due, or the closing
/// trailers. It holds no message bytes of its own.
struct SubscribeBody {
    frames: WatchStream<SnapshotFrame>,
    /// The version last sent; None before the first snapshot.
    sent: Option<u64>,
    heartbeat: Duration,
    beat: Pin<Box<tokio::time::Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    node: String,
    done: bool,
    /// In the Envoys registry while the stream lives.
    registration: Option<Registration>,
    /// Counts the frames written (`codexmesh_snapshot_pushes_total`).
    metrics: Option<Metrics>,
}

impl SubscribeBody {
    fn new(
        frames: watch::Receiver<SnapshotFrame>,
        heartbeat: Duration,
        shutdown: CancellationToken,
        node: String,
    ) -> Self {
        Self {
            // Yields the current frame first, then the latest on each change.
            frames: WatchStream::new(frames),
            sent: None,
            heartbeat,
            beat: Box::pin(tokio::time::sleep(heartbeat)),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            node,
            done: false,
            registration: None,
            metrics: None,
        }
    }

    fn registered(mut self, registration: Registration) -> Self {
        self.registration = Some(registration);
        self
    }

    fn counted(mut self, metrics: Option<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn rearm_heartbeat(&mut self) {
        let at = tokio::time::Instant::now() + self.heartbeat;
        self.beat.as_mut().reset(at);
    }

    /// The end of the stream: `grpc-status: 0` in the trailers (what tonic sends when a server
    /// stream ends), so the client reconnects.
    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl http_body::Body for SubscribeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return this.finish();
        }
        loop {
            match Pin::new(&mut this.frames).poll_next(cx) {
                Poll::Ready(Some(frame)) => {
                    if this.sent.is_some_and(|v| frame.version <= v) {
                        continue;
                    }
                    this.sent = Some(frame.version);
                    if let Some(r) = &this.registration {
                        r.sent(frame.version);
                    }
                    if let Some(m) = &this.metrics {
                        m.pushed();
                    }
                    this.rearm_heartbeat();
                    tracing::debug!(node = %this.node, version = frame.version, "sent snapshot");
                    return Poll::Ready(Some(Ok(Frame::data(frame.bytes))));
                }
                // The builder stopped: end the stream, the client reconnects.
                Poll::Ready(None) => return this.finish(),
                Poll::Pending => break,
            }
        }
        if this.beat.as_mut().poll(cx).is_ready() {
            this.rearm_heartbeat();
            let hb = pb::SubscribeResponse {
                kind: Some(pb::subscribe_response::Kind::Heartbeat(pb::Heartbeat {
                    version: this.sent.unwrap_or(0),
                    sent_at_unix_ms: now_ms(),
                })),
            };
            return Poll::Ready(Some(Ok(Frame::data(message_frame(&hb)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for SubscribeBody {
    fn drop(&mut self) {
        tracing::info!(node = %self.node, "subscriber stream ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn snapshot(version: u64, accounts: usize) -> pb::Snapshot {
        pb::Snapshot {
            version,
            generated_at_unix_ms: 1_700_000_000_000,
            control_plane_id: "cp-test".into(),
            pools: vec![pb::Pool {
                id: "pool_1".into(),
                name: "main".into(),
                routing: Some(pb::RoutingSettings::default()),
                keys: vec![],
                accounts: (0..accounts)
                    .map(|i| pb::Account {
                        id: format!("acc_{i}"),
                        access_token: format!("token-{i}-{}", "x".repeat(200)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn frame(version: u64) -> Result<SnapshotFrame, FrameTooLarge> {
        snapshot_frame(&snapshot(version, 20))
    }

    fn body(
        frames: watch::Receiver<SnapshotFrame>,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) -> SubscribeBody {
        SubscribeBody::new(frames, heartbeat, shutdown.clone(), "node".into())
    }

    /// The next chunk, which must be data.
    async fn next_data(body: &mut SubscribeBody) -> Result<Bytes, Box<dyn std::error::Error>> {
        let frame = body.frame().await.ok_or("stream ended")??;
        frame
            .into_data()
            .map_err(|_| "expected data, got trailers".into())
    }

    /// One gRPC message → SubscribeResponse.
    fn decode(chunk: &[u8]) -> Result<pb::SubscribeResponse, Box<dyn std::error::Error>> {
        let header = chunk.get(..GRPC_HEADER_LEN).ok_or("short frame")?;
        assert_eq!(header[0], 0, "not compressed");
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        assert_eq!(chunk.len(), GRPC_HEADER_LEN + len, "one whole message");
        Ok(pb::SubscribeResponse::decode(&chunk[GRPC_HEADER_LEN..])?)
    }

    fn version_of(chunk: &[u8]) -> Result<u64, Box<dyn std::error::Error>> {
        match decode(chunk)?.kind.ok_or("empty")? {
            pb::subscribe_response::Kind::Snapshot(s) => Ok(s.version),
            pb::subscribe_response::Kind::Heartbeat(_) => Err("heartbeat".into()),
        }
    }

    /// Nothing is ready within `ms` (virtual time).
    async fn idle_for(body: &mut SubscribeBody, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), body.frame())
            .await
            .is_err()
    }

    #[test]
    fn frame_is_the_message_tonic_would_send() -> TestResult {
        let snap = snapshot(42, 50);
        let f = snapshot_frame(&snap)?;
        let expected = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Snapshot(snap.clone())),
        }
        .encode_to_vec();
        assert_eq!(f.version, 42);
        assert_eq!(f.bytes[0], 0);
        assert_eq!(
            &f.bytes[1..5],
            &u32::try_from(expected.len())?.to_be_bytes()
        );
        assert_eq!(&f.bytes[GRPC_HEADER_LEN..], &expected[..]);
        match decode(&f.bytes)?.kind {
            Some(pb::subscribe_response::Kind::Snapshot(s)) => assert_eq!(s, snap),
            other => return Err(format!("{other:?}").into()),
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn streams_send_the_same_bytes_from_one_encode() -> TestResult {
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(frame(1)?);
        let mut a = body(rx.clone(), Duration::from_secs(60), &stop);
        let mut b = body(rx, Duration::from_secs(60), &stop);
        for version in [1, 2] {
            if version > 1 {
                tx.send_replace(frame(version)?);
            }
            let published = tx.borrow().bytes.clone();
            let (fa, fb) = (next_data(&mut a).await?, next_data(&mut b).await?);
            assert_eq!(version_of(&fa)?, version);
            assert_eq!(fa, fb, "byte-identical");
            // Not copies: both streams hand out the very buffer the builder encoded.
            assert_eq!(fa.as_ptr(), published.as_ptr());
            assert_eq!(fb.as_ptr(), published.as_ptr());
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_stream_skips_to_the_newest_version() -> TestResult {
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(frame(1)?);
        let mut slow = body(rx, Duration::from_secs(60), &stop);
        assert_eq!(version_of(&next_data(&mut slow).await?)?, 1);
        // Three versions while the stream was not polled (its connection was busy).
        for v in 2..=4 {
            tx.send_replace(frame(v)?);
        }
        assert_eq!(version_of(&next_data(&mut slow).await?)?, 4);
        assert!(idle_for(&mut slow, 1_000).await, "2 and 3 are never sent");
        // A version that is not newer than what the stream holds is not sent either.
        tx.send_replace(frame(3)?);
        assert!(idle_for(&mut slow, 1_000).await);
        tx.send_replace(frame(5)?);
        assert_eq!(version_of(&next_data(&mut slow).await?)?, 5);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_fill_quiet_periods() -> TestResult {
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(frame(7)?);
        let mut s = body(rx, Duration::from_millis(300), &stop);
        assert_eq!(version_of(&next_data(&mut s).await?)?, 7);
        let start = tokio::time::Instant::now();
        let hb = next_data(&mut s).await?;
        assert!(start.elapsed() >= Duration::from_millis(300));
        match decode(&hb)?.kind {
            Some(pb::subscribe_response::Kind::Heartbeat(h)) => assert_eq!(h.version, 7),
            other => return Err(format!("not a heartbeat: {other:?}").into()),
        }
        // A snapshot resets the heartbeat timer.
        tokio::time::advance(Duration::from_millis(200)).await;
        tx.send_replace(frame(8)?);
        assert_eq!(version_of(&next_data(&mut s).await?)?, 8);
        assert!(idle_for(&mut s, 250).await);
        Ok(())
    }

    async fn ends_with_ok_trailers(s: &mut SubscribeBody) -> TestResult {
        let last = s.frame().await.ok_or("no trailers")??;
        let trailers = last
            .into_trailers()
            .map_err(|_| "data instead of trailers")?;
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        assert!(s.is_end_stream());
        assert!(s.frame().await.is_none());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_or_a_stopped_builder_ends_the_stream() -> TestResult {
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(frame(1)?);
        let mut s = body(rx.clone(), Duration::from_secs(60), &stop);
        next_data(&mut s).await?;
        stop.cancel();
        ends_with_ok_trailers(&mut s).await?;

        let mut s = body(rx, Duration::from_secs(60), &CancellationToken::new());
        next_data(&mut s).await?;
        drop(tx);
        ends_with_ok_trailers(&mut s).await
    }

    fn route(frames: watch::Receiver<SnapshotFrame>) -> SubscribeRoute {
        SubscribeRoute {
            frames,
            auth: Arc::new(PushAuth {
                token_digest: util::token_digest("push-secret"),
            }),
            heartbeat: Duration::from_secs(60),
            shutdown: CancellationToken::new(),
            envoys: Envoys::default(),
            metrics: None,
        }
    }

    fn request(
        authorization: Option<&str>,
        body: Vec<u8>,
    ) -> Result<http::Request<tonic::body::Body>, http::Error> {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(SUBSCRIBE_PATH)
            .header("content-type", "application/grpc");
        if let Some(a) = authorization {
            b = b.header("authorization", a);
        }
        b.body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
    }

    fn framed(msg: &impl Message) -> Vec<u8> {
        let m = msg.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(&m);
        out
    }

    fn grpc_status(r: &http::Response<tonic::body::Body>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_checks_the_token_then_streams_the_current_frame() -> TestResult {
        let (_tx, rx) = watch::channel(frame(3)?);
        let route = route(rx);
        let hello = framed(&pb::SubscribeRequest {
            node_id: "envoy-1".into(),
            known_version: 0,
            client_build: "test".into(),
            egress_proxies: Vec::new(),
        });
        for auth in [None, Some("Bearer wrong"), Some("push-secret")] {
            let r = route.serve(request(auth, hello.clone())?).await;
            assert_eq!(grpc_status(&r), Some("16"), "{auth:?}: UNAUTHENTICATED");
        }
        let r = route
            .serve(request(Some("Bearer push-secret"), vec![])?)
            .await;
        assert_eq!(grpc_status(&r), Some("13"), "no request message");

        let r = route
            .serve(request(Some("Bearer push-secret"), hello)?)
            .await;
        assert_eq!(r.status(), http::StatusCode::OK);
        assert_eq!(grpc_status(&r), None, "not a trailers-only error");
        assert_eq!(
            r.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
        let mut body = r.into_body();
        let first = body
            .frame()
            .await
            .ok_or("no data")??
            .into_data()
            .map_err(|_| "trailers")?;
        assert_eq!(version_of(&first)?, 3);
        // The subscription is listed with what it was sent, and leaves with its stream.
        let listed = route.envoys.list();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].node_id, "envoy-1");
        assert_eq!(listed[0].client_build, "test");
        assert_eq!(listed[0].sent_version, Some(3));
        drop(body);
        assert!(route.envoys.list().is_empty());
        Ok(())
    }
}
