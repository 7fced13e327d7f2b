//! A lean `Mesh/Subscribe` client on raw HTTP/2 (the `h2` crate, which tonic runs on).
//!
//! Why not a tonic client per subscriber: tonic buffers each whole message before decoding it,
//! and a 10,000-account snapshot is ~17 MB, so 1,000 subscribers would hold ~17 GB at once in
//! this process. This client parses gRPC frames as bytes arrive, reads only the message kind
//! and version from the first bytes, and counts the rest: memory stays O(window) per stream.
//! (One tonic client still checks the full snapshot once: see `push::verify_with_tonic`.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use bytes::{Buf, Bytes};
use codexmesh_proto::v1 as pb;
use prost::Message;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Heartbeat,
    Other,
}

/// One message as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub kind: Kind,
    pub version: u64,
    /// gRPC message length (the encoded `SubscribeResponse`).
    pub bytes: u64,
    /// When its 5-byte gRPC prefix began to arrive, and when its last byte arrived.
    pub first_byte: Instant,
    pub done: Instant,
}

/// What the benchmark reads of one subscriber while it runs.
#[derive(Default)]
pub struct Shared {
    /// Highest snapshot version fully received.
    pub version: AtomicU64,
    pub received: Mutex<Vec<Received>>,
    pub ended: AtomicBool,
    pub error: Mutex<Option<String>>,
}

impl Shared {
    pub fn log(&self) -> Vec<Received> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Incremental gRPC length-prefixed message parser.
struct Parser {
    prefix: Vec<u8>,
    /// Bytes of the current message still expected (None: reading a prefix).
    remaining: Option<u64>,
    len: u64,
    head: Vec<u8>,
    first_byte: Option<Instant>,
}

/// Enough of a message to read its kind and the version (tag, length, tag, varint).
const HEAD: usize = 24;

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Kind and version of an encoded `SubscribeResponse` from its first bytes. Both `Snapshot` and
/// `Heartbeat` have `version` as field 1, and prost writes fields in number order, so it comes
/// right after the oneof's tag and length (absent when 0).
fn kind_and_version(head: &[u8]) -> (Kind, u64) {
    let kind = match head.first() {
        Some(0x0a) => Kind::Snapshot,
        Some(0x12) => Kind::Heartbeat,
        _ => return (Kind::Other, 0),
    };
    let Some((_, n)) = varint(&head[1..]) else {
        return (kind, 0);
    };
    let inner = &head[1 + n..];
    if inner.first() == Some(&0x08) {
        if let Some((v, _)) = varint(&inner[1..]) {
            return (kind, v);
        }
    }
    (kind, 0)
}

impl Parser {
    fn new() -> Self {
        Self {
            prefix: Vec::with_capacity(5),
            remaining: None,
            len: 0,
            head: Vec::with_capacity(HEAD),
            first_byte: None,
        }
    }

    /// Feeds a chunk; calls `done` for every message completed in it.
    fn feed(
        &mut self,
        mut chunk: Bytes,
        now: Instant,
        mut done: impl FnMut(Received),
    ) -> Result<()> {
        while chunk.has_remaining() {
            match self.remaining {
                None => {
                    if self.prefix.is_empty() {
                        self.first_byte = Some(now);
                    }
                    let take = (5 - self.prefix.len()).min(chunk.len());
                    self.prefix.extend_from_slice(&chunk[..take]);
                    chunk.advance(take);
                    if self.prefix.len() == 5 {
                        if self.prefix[0] != 0 {
                            return Err(anyhow!("compressed gRPC message: not expected"));
                        }
                        let len = u32::from_be_bytes([
                            self.prefix[1],
                            self.prefix[2],
                            self.prefix[3],
                            self.prefix[4],
                        ]);
                        self.len = u64::from(len);
                        self.remaining = Some(self.len);
                        self.head.clear();
                        if len == 0 {
                            self.finish(now, &mut done);
                        }
                    }
                }
                Some(rem) => {
                    let take = usize::try_from(rem).unwrap_or(usize::MAX).min(chunk.len());
                    if self.head.len() < HEAD {
                        let h = (HEAD - self.head.len()).min(take);
                        self.head.extend_from_slice(&chunk[..h]);
                    }
                    chunk.advance(take);
                    let rem = rem - take as u64;
                    self.remaining = Some(rem);
                    if rem == 0 {
                        self.finish(now, &mut done);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, now: Instant, done: &mut impl FnMut(Received)) {
        let (kind, version) = kind_and_version(&self.head);
        done(Received {
            kind,
            version,
            bytes: self.len,
            first_byte: self.first_byte.unwrap_or(now),
            done: now,
        });
        self.prefix.clear();
        self.remaining = None;
        self.first_byte = None;
    }
}

/// Connects, subscribes and records every message until the stream ends or `stop` fires.
/// Returns once the stream is open (response headers read); the reading runs in a task.
pub async fn subscribe(
    addr: SocketAddr,
    token: &str,
    node_id: String,
    shared: Arc<Shared>,
) -> Result<tokio::task::JoinHandle<()>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (client, conn) = h2::client::Builder::new()
        // Like Envoy's gRPC client: large windows, so flow control is not what we measure.
        .initial_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .context("HTTP/2 handshake")?;
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.context("HTTP/2 not ready")?;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/codexmesh.v1.Mesh/Subscribe"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .context("request")?;
    let (response, mut send) = client.send_request(req, false).context("send Subscribe")?;
    let msg = pb::SubscribeRequest {
        node_id,
        known_version: 0,
        client_build: "codexmesh-bench-push".to_owned(),
        egress_proxies: Vec::new(),
    }
    .encode_to_vec();
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len())?.to_be_bytes());
    frame.extend_from_slice(&msg);
    send.send_data(Bytes::from(frame), true)
        .context("send SubscribeRequest")?;
    let response = response.await.context("Subscribe response")?;
    if response.status() != http::StatusCode::OK {
        return Err(anyhow!("Subscribe answered HTTP {}", response.status()));
    }
    if let Some(status) = response.headers().get("grpc-status") {
        // A trailers-only answer: an error before any message (e.g. UNAUTHENTICATED).
        let message = response
            .headers()
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(anyhow!(
            "Subscribe refused: grpc-status {status:?} {message}"
        ));
    }
    let mut body = response.into_body();
    Ok(tokio::spawn(async move {
        let mut parser = Parser::new();
        let result: Result<()> = async {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.context("stream data")?;
                let now = Instant::now();
                let n = chunk.len();
                parser.feed(chunk, now, |r| {
                    if r.kind == Kind::Snapshot {
                        shared.version.fetch_max(r.version, Ordering::AcqRel);
                    }
                    if let Ok(mut v) = shared.received.lock() {
                        v.push(r);
                    }
                })?;
                body.flow_control()
                    .release_capacity(n)
                    .context("release flow control")?;
            }
            let trailers = body.trailers().await.context("trailers")?;
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            Err(anyhow!("stream ended (grpc-status {status})"))
        }
        .await;
        if let Err(e) = result {
            if let Ok(mut slot) = shared.error.lock() {
                *slot = Some(format!("{e:#}"));
            }
        }
        shared.ended.store(true, Ordering::Release);
        conn_task.abort();
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_reads_kind_version_and_size_across_chunks() {
        let snap = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Snapshot(pb::Snapshot {
                version: 300_001,
                control_plane_id: "x".repeat(1000),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let hb = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Heartbeat(pb::Heartbeat {
                version: 7,
                sent_at_unix_ms: 1,
            })),
        }
        .encode_to_vec();
        let mut wire = Vec::new();
        for m in [&snap, &hb] {
            wire.push(0);
            wire.extend_from_slice(&(m.len() as u32).to_be_bytes());
            wire.extend_from_slice(m);
        }
        let mut p = Parser::new();
        let mut got = Vec::new();
        for piece in wire.chunks(3) {
            p.feed(Bytes::copy_from_slice(piece), Instant::now(), |r| {
                got.push(r)
            })
            .unwrap();
        }
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].kind, got[0].version, got[0].bytes),
            (Kind::Snapshot, 300_001, snap.len() as u64)
        );
        assert_eq!((got[1].kind, got[1].version), (Kind::Heartbeat, 7));
    }
}
