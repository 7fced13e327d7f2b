//! Reads an SSE response event by event, stamping each with the time it arrived, so tests can
//! tell an unbuffered stream from one delivered in a single burst.
//!
//! Rules: reading is bounded by a timeout measured from when the request was sent; `[DONE]` is
//! skipped; every other `data:` line must be JSON.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use serde_json::Value;

pub struct TimedEvent {
    pub at: Duration,
    pub data: Value,
}

impl TimedEvent {
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or_default()
    }
}

/// Consumes the body; `start` is when the request was sent. Bounded by `timeout`.
pub async fn read_events(
    resp: reqwest::Response,
    start: Instant,
    timeout: Duration,
) -> Result<Vec<TimedEvent>> {
    let mut events = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout_at((start + timeout).into(), stream.next()).await;
        let chunk = match next {
            Err(_) => bail!("SSE stream still open after {timeout:?}"),
            Ok(None) => break,
            Ok(Some(chunk)) => chunk?,
        };
        let at = start.elapsed();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let data = data.trim();
                    if data == "[DONE]" {
                        continue;
                    }
                    events.push(TimedEvent {
                        at,
                        data: serde_json::from_str(data)?,
                    });
                }
            }
        }
    }
    Ok(events)
}
