//! A loopback HTTP proxy that only tunnels (CONNECT), standing in for a corporate egress proxy.
//!
//! Rules: it binds 127.0.0.1 on a port chosen at run time; anything but CONNECT gets 405; it
//! counts tunnels and keeps each tunnel's target and what the client side sent through it (up
//! to [`KEPT_BYTES`] in all, in memory only, never written anywhere), so a test over a plain
//! upstream can tell which requests (which credentials) went through it. Dropping it stops
//! accepting; [`ConnectProxy::stop`] also cuts the open tunnels, as a proxy going down would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy keeps of the client side's bytes, over all tunnels.
pub const KEPT_BYTES: usize = 16 << 20;

#[derive(Default)]
struct Seen {
    targets: Vec<String>,
    sent: Vec<u8>,
    /// Every tunnel's tasks, so [`ConnectProxy::stop`] can cut them.
    tasks: Vec<tokio::task::AbortHandle>,
}

pub struct ConnectProxy {
    pub addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ConnectProxy {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tunnels = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (counter, kept) = (tunnels.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let task = tokio::spawn(tunnel(client, counter.clone(), kept.clone()));
                if let Ok(mut s) = kept.lock() {
                    s.tasks.push(task.abort_handle());
                }
            }
        });
        Ok(Self {
            addr,
            tunnels,
            seen,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, as an account's `egress_proxy` names it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }

    /// Each tunnel's CONNECT target, in order.
    pub fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|s| s.targets.clone())
            .unwrap_or_default()
    }

    /// How often `needle` occurs in what clients sent through the tunnels.
    pub fn count_sent(&self, needle: &str) -> usize {
        let Ok(seen) = self.seen.lock() else {
            return 0;
        };
        let needle = needle.as_bytes();
        if needle.is_empty() {
            return 0;
        }
        seen.sent
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    /// Goes away: stops accepting (new tunnels are refused at connect) and cuts every open
    /// tunnel.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let tasks = self
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut s.tasks))
            .unwrap_or_default();
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn tunnel(
    mut client: tokio::net::TcpStream,
    counter: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
) {
    // The request head, bounded.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let target = target.to_owned();
    let Ok(upstream) = tokio::net::TcpStream::connect(target.as_str()).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    counter.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut s) = seen.lock() {
        s.targets.push(target);
    }
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    if let Ok(mut s) = seen.lock() {
        s.tasks.push(down.abort_handle());
    }
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(mut s) = seen.lock() {
            let room = KEPT_BYTES.saturating_sub(s.sent.len());
            let keep = n.min(room);
            s.sent.extend_from_slice(&buf[..keep]);
        }
        if upstream_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = upstream_write.shutdown().await;
    let _ = down.await;
}
