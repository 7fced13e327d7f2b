//! Live events (`GET /api/v1/events`): a Server-Sent Events stream that tells a signed-in page
//! when to refetch, so a dashboard needs no polling.
//!
//! Rules this module keeps:
//! - the stream carries no tenant data: only store revisions (`change`) and the time of the
//!   latest outcome report (`activity`); what changed is fetched through the routes that keep
//!   tenants apart. It still needs a caller, like every protected route;
//! - it reads what the server already tracks: the snapshot hub's watch channel (one revision
//!   check for every subscriber, no second poller) and the Envoy registry's report watch;
//! - `change` is sent on connect (the revision the page starts from) and whenever the revision
//!   moves; `activity` at most once per [`ACTIVITY_SPACING`]; a comment every [`KEEP_ALIVE`];
//! - the stream ends when the server shuts down or the client goes away (its task notices
//!   either at once), and after [`STREAM_LIFETIME`] in any case: the browser's `EventSource`
//!   reconnects by itself, and so the caller is authenticated again (a signed-out session or a
//!   revoked token does not keep a stream for long);
//! - at most [`MAX_STREAMS`] streams are open at once per replica; beyond that a caller gets
//!   503 with `Retry-After` (each stream holds a task and two watch subscriptions).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiState, Caller};
use codexmesh_proto::v1 as pb;

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The smallest gap between two `activity` events.
pub const ACTIVITY_SPACING: Duration = Duration::from_secs(1);
/// How long one stream lasts at most.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// Streams open at once on one replica.
pub const MAX_STREAMS: usize = 256;
/// Events buffered for a slow client before the stream waits for it.
const BUFFER: usize = 16;

/// What the events are made from: the server's live state (see [`super::router`]).
#[derive(Clone)]
pub(crate) struct Live {
    /// The snapshot hub's published snapshots (their version is the store revision).
    pub snapshots: watch::Receiver<Arc<pb::Snapshot>>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// One permit per open stream ([`MAX_STREAMS`]).
    pub streams: Arc<tokio::sync::Semaphore>,
}

impl Live {
    pub fn new(snapshots: watch::Receiver<Arc<pb::Snapshot>>, shutdown: CancellationToken) -> Self {
        Self {
            snapshots,
            shutdown,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// Event `change`: the store revision moved (or, first, the revision the stream starts at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct ChangeEvent {
    pub revision: u64,
}

/// Event `activity`: outcome reports arrived; `at_ms` is when the latest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct ActivityEvent {
    pub at_ms: i64,
}

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Live events (Server-Sent Events): `change` (`{"revision": N}`) on connect and whenever the
/// store revision moves, `activity` (`{"at_ms": T}`) at most once a second while outcome
/// reports arrive, and a keep-alive comment every 15 s. No tenant data: refetch what changed.
/// A stream lasts at most 5 minutes (reconnect: `EventSource` does).
#[utoipa::path(get, path = "/api/v1/events", tag = "reports",
    responses((status = 200, content_type = "text/event-stream", body = String,
               description = "`event: change` with a ChangeEvent, `event: activity` with an \
                              ActivityEvent"),
              (status = 401, body = super::ErrorBody),
              (status = 503, body = super::ErrorBody, description = "too many open streams")))]
async fn events(State(state): State<ApiState>, _caller: Caller) -> axum::response::Response {
    let Ok(permit) = Arc::clone(&state.live.streams).try_acquire_owned() else {
        let mut refused = super::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            crate::ops::ErrorKind::Unavailable,
            format!("{MAX_STREAMS} live streams are open on this control plane; retry shortly"),
        )
        .into_response();
        refused.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return refused;
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let (snapshots, activity, shutdown) = (
        state.live.snapshots.clone(),
        state.envoys.activity(),
        state.live.shutdown.clone(),
    );
    tokio::spawn(async move {
        pump(snapshots, activity, shutdown, tx).await;
        drop(permit);
    });
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn event<T: Serialize>(name: &str, data: &T) -> Option<Event> {
    match Event::default().event(name).json_data(data) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a live event");
            None
        }
    }
}

/// Turns the watches into events until shutdown, a closed source or a gone client.
async fn pump(
    mut snapshots: watch::Receiver<Arc<pb::Snapshot>>,
    mut activity: watch::Receiver<i64>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let send = |e: Option<Event>| {
        let tx = tx.clone();
        async move {
            match e {
                Some(e) => tx.send(Ok(e)).await.is_ok(),
                None => true,
            }
        }
    };
    let revision = snapshots.borrow_and_update().version;
    // Reports before this stream started are not news.
    activity.borrow_and_update();
    if shutdown.is_cancelled() || !send(event("change", &ChangeEvent { revision })).await {
        return;
    }
    // When the next `activity` event may go (None: nothing pending).
    let mut pending: Option<tokio::time::Instant> = None;
    let mut last_activity = tokio::time::Instant::now() - ACTIVITY_SPACING;
    let mut activity_open = true;
    let ends = tokio::time::sleep(STREAM_LIFETIME);
    tokio::pin!(ends);
    loop {
        let due = pending;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut ends => break,
            _ = tx.closed() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break; // the hub stopped: the server is going away
                }
                let revision = snapshots.borrow_and_update().version;
                if !send(event("change", &ChangeEvent { revision })).await {
                    break;
                }
            }
            changed = activity.changed(), if activity_open && pending.is_none() => {
                if changed.is_err() {
                    activity_open = false;
                    continue;
                }
                pending = Some(tokio::time::Instant::now().max(last_activity + ACTIVITY_SPACING));
            }
            _ = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if due.is_some() => {
                pending = None;
                last_activity = tokio::time::Instant::now();
                let at_ms = *activity.borrow_and_update();
                if !send(event("activity", &ActivityEvent { at_ms })).await {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64) -> Arc<pb::Snapshot> {
        Arc::new(pb::Snapshot {
            version,
            ..pb::Snapshot::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn revisions_and_spaced_activity_become_events_until_shutdown() {
        let (snap_tx, snap_rx) = watch::channel(snapshot(3));
        let (act_tx, act_rx) = watch::channel(0i64);
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(pump(snap_rx, act_rx, shutdown.clone(), tx));
        let first = rx.recv().await;
        assert!(first.is_some(), "the starting revision");
        snap_tx.send_replace(snapshot(4));
        assert!(rx.recv().await.is_some(), "a change");
        // A burst of reports: one event now, the next no sooner than a second later.
        act_tx.send_replace(10);
        assert!(rx.recv().await.is_some());
        let t = tokio::time::Instant::now();
        act_tx.send_replace(11);
        act_tx.send_replace(12);
        assert!(rx.recv().await.is_some());
        assert!(t.elapsed() >= ACTIVITY_SPACING - Duration::from_millis(1));
        assert!(rx.try_recv().is_err(), "the burst was one event");
        shutdown.cancel();
        assert!(rx.recv().await.is_none(), "the stream ends at shutdown");
        assert!(task.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_after_its_lifetime() {
        let (_snap_tx, snap_rx) = watch::channel(snapshot(1));
        let (_act_tx, act_rx) = watch::channel(0i64);
        let (tx, mut rx) = mpsc::channel(BUFFER);
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(pump(snap_rx, act_rx, CancellationToken::new(), tx));
        assert!(rx.recv().await.is_some(), "the starting revision");
        assert!(rx.recv().await.is_none(), "then nothing until it ends");
        assert!(start.elapsed() >= STREAM_LIFETIME);
        assert!(task.await.is_ok());
    }

    #[tokio::test]
    async fn a_gone_client_ends_the_pump() {
        let (_snap_tx, snap_rx) = watch::channel(snapshot(1));
        let (_act_tx, act_rx) = watch::channel(0i64);
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(pump(snap_rx, act_rx, CancellationToken::new(), tx));
        drop(rx);
        assert!(tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_ok());
    }
}
