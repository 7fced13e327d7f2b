//! Sustained load for the failure drills: N concurrent clients stream Codex SSE turns through
//! one or more gateways continuously, each starting its next turn when the last one ended, until
//! told to stop; the figures say how many were served, which failed and why, latency
//! percentiles and requests per second.
//!
//! Rules this module keeps:
//! - **A request is ok only when it is whole**: answer 200 and its SSE stream carried the
//!   terminal `response.completed` event. Anything else is a failure kept with its reason: a
//!   non-200 answer (status and the start of its body), a `response.failed` event, a stream that
//!   ended or broke before the terminal event, a connection error, or no end within the request
//!   timeout.
//! - **Nothing secret in a reason**: the pool key is sent, never recorded; a reason carries at
//!   most [`REASON_BODY_CHARS`] characters of what the gateway answered.
//! - **Bounded**: every request has a timeout; [`Load::stop`] lets the turns in flight finish
//!   (each bounded by that timeout) and then returns, so a drill never hangs on its load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::stack::turn_body;

/// How much of a failed answer's body a failure reason keeps.
pub const REASON_BODY_CHARS: usize = 200;

/// What to load and how hard.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Responses endpoints (`http://HOST:PORT/backend-api/codex/responses`); the clients are
    /// spread over them in turn.
    pub urls: Vec<String>,
    /// The pool key every client presents.
    pub key: String,
    /// Concurrent clients (each one turn at a time).
    pub clients: usize,
    /// One turn must have ended within this.
    pub request_timeout: Duration,
}

impl LoadSpec {
    /// `clients` clients on one gateway's responses endpoint (`base` = `http://HOST:PORT`).
    pub fn new(bases: &[String], key: &str, clients: usize) -> Self {
        Self {
            urls: bases
                .iter()
                .map(|b| format!("{b}/backend-api/codex/responses"))
                .collect(),
            key: key.to_owned(),
            clients,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// One failed request.
#[derive(Clone, Debug)]
pub struct Failure {
    /// When it ended, from the load's start.
    pub at: Duration,
    pub client: usize,
    pub reason: String,
}

/// What a load run (or the part of it so far) came to.
#[derive(Clone, Debug, Default)]
pub struct LoadFigures {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: Vec<Failure>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Whole requests served per second over the run.
    pub rps: f64,
    pub seconds: f64,
}

impl LoadFigures {
    /// `requests=… ok=… failed=… p50_ms=… p90_ms=… p99_ms=… max_ms=… rps=… seconds=…`
    pub fn summary(&self) -> String {
        format!(
            "requests={} ok={} failed={} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} \
             rps={:.1} seconds={:.1}",
            self.requests,
            self.ok,
            self.failed,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.rps,
            self.seconds
        )
    }

    /// The first `n` failures, one per line (for an assertion message).
    pub fn failure_report(&self, n: usize) -> String {
        let mut out: Vec<String> = self
            .failures
            .iter()
            .take(n)
            .map(|f| {
                format!(
                    "  at {:.2}s client {}: {}",
                    f.at.as_secs_f64(),
                    f.client,
                    f.reason
                )
            })
            .collect();
        if self.failures.len() > n {
            out.push(format!("  ... and {} more", self.failures.len() - n));
        }
        out.join("\n")
    }
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    failures: Vec<Failure>,
}

/// A running load; [`Load::stop`] ends it and returns the figures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    request_timeout: Duration,
}

impl Load {
    /// Starts the clients at once (on the current tokio runtime).
    pub fn start(spec: LoadSpec) -> anyhow::Result<Self> {
        if spec.urls.is_empty() || spec.clients == 0 {
            anyhow::bail!("a load needs at least one URL and one client");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(spec.clients)
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let body = Arc::new(turn_body("drill load"));
        let tasks = (0..spec.clients)
            .map(|client| {
                let url = spec.urls[client % spec.urls.len()].clone();
                let (http, stop, ok, tally, body) = (
                    http.clone(),
                    stop.clone(),
                    ok.clone(),
                    tally.clone(),
                    body.clone(),
                );
                let (key, timeout) = (spec.key.clone(), spec.request_timeout);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let session = format!("drill-{client}-{n}");
                        let sent = Instant::now();
                        let outcome = tokio::time::timeout(
                            timeout,
                            one_turn(&http, &url, &key, &session, &body),
                        )
                        .await
                        .unwrap_or_else(|_| Err(format!("no end within {timeout:?}")));
                        let took = sent.elapsed();
                        let failed = {
                            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                            match outcome {
                                Ok(()) => {
                                    t.latencies_ms.push(took.as_secs_f64() * 1000.0);
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    false
                                }
                                Err(reason) => {
                                    t.failures.push(Failure {
                                        at: started.elapsed(),
                                        client,
                                        reason,
                                    });
                                    true
                                }
                            }
                        };
                        if failed {
                            // A failing gateway is not hammered in a tight loop.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Ok(Self {
            stop,
            ok,
            tally,
            tasks,
            started,
            request_timeout: spec.request_timeout,
        })
    }

    /// Whole requests served so far.
    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed_count(&self) -> u64 {
        self.tally
            .lock()
            .map(|t| t.failures.len() as u64)
            .unwrap_or(0)
    }

    /// The figures so far (the load keeps running).
    pub fn figures(&self) -> LoadFigures {
        let t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        figures_of(&t, self.started.elapsed())
    }

    /// Waits (bounded by `within`) until `more` further requests were served; an error says how
    /// many were.
    pub async fn served_more(&self, more: u64, within: Duration) -> anyhow::Result<Duration> {
        let from = self.ok_count();
        let start = Instant::now();
        while self.ok_count() < from + more {
            if start.elapsed() > within {
                anyhow::bail!(
                    "the load served {} of {more} requests within {within:?} ({} failed so far)",
                    self.ok_count() - from,
                    self.failed_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(start.elapsed())
    }

    /// Stops starting turns, lets the ones in flight end (bounded) and returns the figures.
    pub async fn stop(self) -> LoadFigures {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + self.request_timeout + Duration::from_secs(5);
        for task in self.tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            let abort = task.abort_handle();
            if tokio::time::timeout(left, task).await.is_err() {
                abort.abort();
            }
        }
        let t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        figures_of(&t, elapsed)
    }
}

fn figures_of(t: &Tally, elapsed: Duration) -> LoadFigures {
    let mut sorted = t.latencies_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    };
    let ok = sorted.len() as u64;
    let failed = t.failures.len() as u64;
    let seconds = elapsed.as_secs_f64();
    LoadFigures {
        requests: ok + failed,
        ok,
        failed,
        failures: t.failures.clone(),
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        rps: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        seconds,
    }
}

/// One streamed turn: Ok when it answered 200 and its stream carried `response.completed`.
async fn one_turn(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    session: &str,
    body: &Value,
) -> Result<(), String> {
    let resp = http
        .post(url)
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .header("session-id", session)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("connection error: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let start: String = text.chars().take(REASON_BODY_CHARS).collect();
        return Err(format!("answer {status}: {start}"));
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut last_kind = String::from("(none)");
    let mut completed = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("stream broke after {last_kind}: {e}"))?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                let kind = event["type"].as_str().unwrap_or_default().to_owned();
                match kind.as_str() {
                    // Read on to the stream's end, so the gateway sees a whole answer.
                    "response.completed" => completed = true,
                    "response.failed" | "error" => {
                        let detail: String =
                            event.to_string().chars().take(REASON_BODY_CHARS).collect();
                        return Err(format!("stream reported {kind}: {detail}"));
                    }
                    _ => last_kind = kind,
                }
            }
        }
    }
    if completed {
        return Ok(());
    }
    Err(format!(
        "stream ended without response.completed (last event {last_kind})"
    ))
}
