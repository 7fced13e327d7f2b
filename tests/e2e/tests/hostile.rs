//! Slow and hostile clients through real Envoy (issue 16 point 4): the limits the bootstrap sets
//! (per-connection buffer limits with watermarks, the overload manager's connection cap, header
//! limits and timeouts, the body limit) hold, and memory stays bounded while they do.
//!
//! Rules these tests keep:
//! - Figures are printed as `HOSTILE <name> key=value ...` lines (the README quotes them).
//! - Memory is read from `/proc/<pid>/status` (`VmRSS`) of the Envoy and the control plane the
//!   test started, and Envoy's own allocator (`/memory`); bounds are stated next to each figure.
//! - Every wait is bounded; every socket is the test's own and closed when the test ends.
//! - The tests run one at a time (they measure memory and latency on two shared cores).
//! - Sizes: 5,000 slow SSE readers and 500 WebSockets by default; `HOSTILE_SSE_STREAMS`,
//!   `HOSTILE_WEBSOCKETS` and `HOSTILE_STORM_CONNECTIONS` change them (a larger run is opt-in).
//!   When the open-files limit cannot hold the streams, the count is lowered and said so.
//!   `HOSTILE_BUFFER_LIMIT_BYTES` runs the slow readers with another buffer limit, for a
//!   comparison (bounds then printed, not asserted).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use codexmesh_test_kit::{openai_error_code, raw_http, turn_body, Stack, StackOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The tests measure memory and latency: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Raises this process's open-files soft limit to its hard limit (children inherit it: Envoy
/// and the simulator are started after); returns the limit now in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim = wanted;
            }
        }
    }
    lim.rlim_cur
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn envoy_pid(stack: &Stack) -> i32 {
    stack.envoy.proc.pid().expect("envoy pid")
}

fn cp_pid(stack: &Stack) -> i32 {
    stack
        .cp
        .proc()
        .ok()
        .and_then(|p| p.pid())
        .expect("control plane pid")
}

/// Envoy's allocator: bytes allocated (`/memory`).
async fn envoy_allocated(stack: &Stack) -> u64 {
    let url = format!("http://{}/memory", stack.envoy.admin);
    let v: Value = match reqwest::get(url).await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    v["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sum of Envoy's counters and gauges named `suffix` or ending with `.suffix` (the per-listener
/// copies of HTTP stats, `listener.<addr>.http.…`, left out so nothing counts twice).
async fn envoy_stat(stack: &Stack, suffix: &str) -> u64 {
    let dotted = format!(".{suffix}");
    let url = format!("http://{}/stats?format=json", stack.envoy.admin);
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["name"].as_str().is_some_and(|n| {
                n == suffix
                    || (n.ends_with(&dotted)
                        && !(n.starts_with("listener.") && n.contains(".http.")))
            })
        })
        .filter_map(|s| s["value"].as_u64())
        .sum()
}

/// One normal turn through the gateway: its status and how long the whole answer took.
async fn timed_turn(stack: &Stack) -> (u16, Duration) {
    let started = Instant::now();
    let status = match tokio::time::timeout(Duration::from_secs(30), stack.turn(&stack.key)).await {
        Ok(Ok((status, _))) => status,
        _ => 0,
    };
    (status, started.elapsed())
}

/// `n` normal turns one after another; panics unless every one is 200. Returns (p50, max).
async fn normal_client(stack: &Stack, n: usize, what: &str) -> (Duration, Duration) {
    let mut took = Vec::new();
    for _ in 0..n {
        let (status, t) = timed_turn(stack).await;
        assert_eq!(status, 200, "a normal client was refused ({what})");
        took.push(t);
    }
    took.sort();
    (took[took.len() / 2], took[took.len() - 1])
}

/// A stack whose two accounts never run out of simulated quota.
fn roomy(accounts: usize) -> StackOptions {
    let mut opts = StackOptions::accounts(accounts).without_quota_polling();
    opts.accounts = vec![
        json!({"primary_limit": 1_000_000_000u64, "secondary_limit": 1_000_000_000u64});
        accounts
    ];
    opts
}

/// A slow SSE reader: a turn whose stream is long and large (simulator filler), read until
/// `read_first` bytes arrived, then never read again. The socket's receive buffer is small,
/// so what the upstream keeps sending piles up in Envoy unless Envoy stops reading it.
async fn open_slow_reader(
    addr: SocketAddr,
    key: &str,
    body: &[u8],
    filler_events: u64,
    read_first: usize,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let head = format!(
        "POST /backend-api/codex/responses HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nAccept: text/event-stream\r\n\
         x-sim-filler-events: {filler_events}\r\nx-sim-filler-bytes: 1024\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < read_first {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await??;
        anyhow::ensure!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    anyhow::ensure!(
        text.starts_with("HTTP/1.1 200") && text.contains("response.created"),
        "not a streaming turn: {}",
        &text[..text.len().min(400)]
    );
    Ok(stream)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A pooled WebSocket with one completed turn, left open.
async fn open_websocket(stack: &Stack) -> anyhow::Result<Ws> {
    let url = stack
        .envoy
        .url("/backend-api/codex/responses")
        .replacen("http://", "ws://", 1);
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", stack.key).parse()?);
    req.headers_mut()
        .insert("openai-beta", "responses_websockets=2026-02-06".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut create = turn_body("hi");
    create["type"] = json!("response.create");
    ws.send(Message::Text(create.to_string().into())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("websocket closed mid-turn"))??;
        if let Message::Text(text) = msg {
            let event: Value = serde_json::from_str(&text)?;
            match event["type"].as_str() {
                Some("response.completed") => return Ok(ws),
                Some("response.failed" | "error") => anyhow::bail!("turn failed: {event}"),
                _ => {}
            }
        }
    }
}

/// Runs `make(i)` for `0..n`, at most `parallel` at a time; returns the results in order.
async fn in_batches<T, F, Fut>(n: usize, parallel: usize, make: F) -> Vec<anyhow::Result<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    futures_util::stream::iter(0..n)
        .map(make)
        .buffered(parallel)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sse_readers_and_open_websockets_keep_memory_bounded_and_others_are_served() {
    let _one = SERIAL.lock().await;
    let fd_limit = raise_fd_limit();
    let wanted_streams = env_count("HOSTILE_SSE_STREAMS", 5000);
    let wanted_ws = env_count("HOSTILE_WEBSOCKETS", 500);
    // Envoy holds two sockets per stream; the test one per stream and the simulator one.
    let room = usize::try_from(fd_limit.saturating_sub(500) / 2).unwrap_or(usize::MAX);
    let streams = wanted_streams.min(room.saturating_sub(wanted_ws));
    if streams < wanted_streams {
        println!(
            "HOSTILE note: open-files limit {fd_limit} holds {streams} slow streams, not {wanted_streams}"
        );
    }
    let websockets = wanted_ws;
    // Opt-in comparison: another buffer limit (e.g. Envoy's default, 1048576) prints what the
    // limit buys; the per-connection bounds are then reported, not asserted.
    let compare_limit = std::env::var("HOSTILE_BUFFER_LIMIT_BYTES").ok();
    let mut opts = roomy(2);
    if let Some(limit) = &compare_limit {
        opts.cp_env
            .push(("CODEXMESH_ENVOY_BUFFER_LIMIT_BYTES".into(), limit.clone()));
        println!("HOSTILE note: buffer limit {limit} bytes (comparison run: bounds not asserted)");
    }
    let stack = Stack::start_with(opts).await.unwrap();
    let envoy = envoy_pid(&stack);
    let cp = cp_pid(&stack);
    // Warm: Envoy's wasm VMs and connection pools exist before the baseline.
    let (p50_idle, _) = normal_client(&stack, 5, "idle").await;
    let envoy_rss_before = rss_bytes(envoy);
    let envoy_alloc_before = envoy_allocated(&stack).await;
    let cp_rss_before = rss_bytes(cp);

    // Each stream could carry 1 MiB past what its reader takes; a stalled reader reads 6 KiB.
    let filler_events = 1024;
    let body = serde_json::to_vec(&turn_body("slow reader")).unwrap();
    let addr = stack.envoy.listen;
    let key = stack.key.clone();
    let started = Instant::now();
    // Envoy's allocations per stream may not pass this: an abort, not a machine out of memory.
    let per_stream_bound: u64 = 256 * 1024;
    let mut readers = Vec::with_capacity(streams);
    let mut failures = Vec::new();
    for chunk_start in (0..streams).step_by(500) {
        let n = (streams - chunk_start).min(500);
        let opened = in_batches(n, 100, |_| {
            let key = key.clone();
            let body = body.clone();
            async move { open_slow_reader(addr, &key, &body, filler_events, 6 * 1024).await }
        })
        .await;
        for r in opened {
            match r {
                Ok(s) => readers.push(s),
                Err(e) => failures.push(e.to_string()),
            }
        }
        let grown = rss_bytes(envoy).saturating_sub(envoy_rss_before);
        assert!(
            compare_limit.is_some() || grown < per_stream_bound * (readers.len() as u64 + 100),
            "Envoy grew {} MiB for {} stalled streams",
            mib(grown),
            readers.len()
        );
    }
    let open_took = started.elapsed();
    assert!(
        failures.len() <= streams / 100,
        "{} of {streams} slow readers failed to open: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let ws_started = Instant::now();
    let opened = in_batches(websockets, 50, |_| open_websocket(&stack)).await;
    let mut sockets = Vec::new();
    let mut ws_failures = Vec::new();
    for r in opened {
        match r {
            Ok(ws) => sockets.push(ws),
            Err(e) => ws_failures.push(e.to_string()),
        }
    }
    let ws_took = ws_started.elapsed();
    assert!(
        ws_failures.len() <= websockets / 100,
        "{} of {websockets} websockets failed: {:?}",
        ws_failures.len(),
        &ws_failures[..ws_failures.len().min(5)]
    );
    // Let the upstreams fill every buffer they can reach.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Watermarks: Envoy stopped reading the upstreams of stalled readers.
    let paused = envoy_stat(&stack, "upstream_flow_control_paused_reading_total").await;
    let envoy_rss = rss_bytes(envoy);
    let envoy_alloc = envoy_allocated(&stack).await;
    let cp_rss = rss_bytes(cp);
    // A normal client meanwhile.
    let (p50, max) = normal_client(&stack, 20, "while slow readers and websockets hold").await;
    let held = readers.len() + sockets.len();
    let per_held = envoy_rss.saturating_sub(envoy_rss_before) / held.max(1) as u64;
    let alloc_per_held = envoy_alloc.saturating_sub(envoy_alloc_before) / held.max(1) as u64;
    println!(
        "HOSTILE slow_readers buffer_limit={} streams={} websockets={} open_s={:.1} ws_open_s={:.1} paused_upstream_reads={paused} \
         envoy_rss_before_mib={} envoy_rss_mib={} envoy_rss_per_conn_kib={} envoy_alloc_per_conn_kib={} \
         cp_rss_before_mib={} cp_rss_mib={} normal_p50_ms={} normal_max_ms={} idle_p50_ms={}",
        compare_limit.as_deref().unwrap_or("32768"),
        readers.len(),
        sockets.len(),
        open_took.as_secs_f64(),
        ws_took.as_secs_f64(),
        mib(envoy_rss_before),
        mib(envoy_rss),
        per_held / 1024,
        alloc_per_held / 1024,
        mib(cp_rss_before),
        mib(cp_rss),
        p50.as_millis(),
        max.as_millis(),
        p50_idle.as_millis(),
    );
    assert!(
        compare_limit.is_some() || paused as usize >= readers.len() * 9 / 10,
        "Envoy paused reading only {paused} upstreams for {} stalled readers",
        readers.len()
    );
    // Bounds: Envoy's own cost per open stream is ~65 KB (BENCHMARKS.md); a stalled one may add
    // its buffer limit (32 KiB) on each side: 160 KiB per held connection at most, where an
    // Envoy that buffered what its upstream sends would hold up to the stream's 1 MiB.
    assert!(
        compare_limit.is_some() || per_held < 160 * 1024,
        "Envoy RSS per held connection {} KiB",
        per_held / 1024
    );
    assert!(
        cp_rss < 256 << 20,
        "control plane RSS {} MiB with streams held",
        mib(cp_rss)
    );
    assert!(
        max < Duration::from_secs(3),
        "a normal turn took {max:?} while slow readers held"
    );

    // Release everything: the gateway serves as before.
    drop(readers);
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    let (p50_after, _) = normal_client(&stack, 5, "after the slow readers left").await;
    println!(
        "HOSTILE slow_readers_released normal_p50_ms={}",
        p50_after.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_get_431_slow_headers_408_and_oversized_bodies_413_without_memory_growth() {
    let _one = SERIAL.lock().await;
    let mut opts = roomy(1);
    opts.cp_env.extend([
        (
            "CODEXMESH_ENVOY_REQUEST_HEADERS_TIMEOUT_SECS".to_string(),
            "2".to_string(),
        ),
        (
            "CODEXMESH_MAX_REQUEST_BODY_BYTES".to_string(),
            (1u64 << 20).to_string(),
        ),
    ]);
    let stack = Stack::start_with(opts).await.unwrap();
    let envoy = envoy_pid(&stack);
    normal_client(&stack, 3, "warm-up").await;
    let rss_before = rss_bytes(envoy);
    let addr = stack.envoy.listen;
    let key = stack.key.clone();
    let auth = format!("Authorization: Bearer {key}");
    let body = serde_json::to_vec(&turn_body("flood")).unwrap();

    // One header of 100 KiB (the limit is 60 KiB), and 150 small headers (the limit is 100).
    let huge = format!("x-flood: {}", "a".repeat(100 * 1024));
    let many: Vec<String> = (0..150).map(|i| format!("x-flood-{i}: {i}")).collect();
    // Envoy answers 431 and closes after its delayed-close wait (1 s): many at a time.
    let rounds = 200;
    let started = Instant::now();
    let answers = in_batches(rounds, 100, |i| {
        let mut lines = vec![auth.clone(), "Content-Type: application/json".to_string()];
        if i % 2 == 0 {
            lines.push(huge.clone());
        } else {
            lines.extend(many.iter().cloned());
        }
        let body = body.clone();
        async move {
            let r = raw_http(addr, "POST", "/backend-api/codex/responses", &lines, &body).await?;
            Ok((r.status, r.body))
        }
    })
    .await;
    let flood_took = started.elapsed();
    for (i, a) in answers.iter().enumerate() {
        let (status, body) = a.as_ref().expect("an answer to a header flood");
        assert_eq!(*status, 431, "flood {i}: {body}");
    }
    let details = envoy_stat(&stack, "http.codexmesh.downstream_rq_4xx").await;

    // The same floods over HTTP/2 (h2c): refused (431 or a reset stream), never served, and
    // the connection's other streams carry on.
    stack.sim.clear_requests().await.unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut h2_answers = Vec::new();
    for flood in 0..2 {
        let mut req = h2
            .post(format!("http://{addr}/backend-api/codex/responses"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone());
        if flood == 0 {
            req = req.header("x-flood", "a".repeat(100 * 1024));
        } else {
            for i in 0..150 {
                req = req.header(format!("x-flood-{i}"), i.to_string());
            }
        }
        match req.send().await {
            Ok(resp) => {
                assert_eq!(resp.status().as_u16(), 431, "h2 flood {flood}");
                h2_answers.push("431");
            }
            Err(e) => {
                assert!(!e.is_timeout(), "h2 flood {flood}: {e:#}");
                h2_answers.push("reset");
            }
        }
    }
    assert!(stack.sim.turn_requests().await.unwrap().is_empty());
    let served = h2
        .post(format!("http://{addr}/backend-api/codex/responses"))
        .bearer_auth(&key)
        .json(&turn_body("h2 after the flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    assert_eq!(served.version(), reqwest::Version::HTTP_2);

    // Slowloris: half a header block, then silence; Envoy answers 408 within its timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: x\r\nx-slow: 1\r\n")
        .await
        .unwrap();
    let slow_started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut got)).await;
    let slow_took = slow_started.elapsed();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "slow headers got: {got}");
    assert!(
        slow_took < Duration::from_secs(5),
        "408 after {slow_took:?}"
    );

    // Bodies over the limit (1 MiB here): with a length (the filter refuses it before reading)
    // and chunked (Envoy refuses it while buffering); neither reaches the upstream.
    stack.sim.clear_requests().await.unwrap();
    let big = {
        let mut v = turn_body("big");
        v["instructions"] = json!("b".repeat(3 << 20));
        serde_json::to_vec(&v).unwrap()
    };
    let with_length = in_batches(10, 5, |_| {
        let lines = vec![auth.clone(), "Content-Type: application/json".to_string()];
        let big = big.clone();
        async move {
            let r = raw_http(addr, "POST", "/backend-api/codex/responses", &lines, &big).await?;
            Ok((r.status, r.body))
        }
    })
    .await;
    for a in &with_length {
        let (status, body) = a.as_ref().expect("an answer to a large body");
        assert_eq!(*status, 413, "{body}");
        assert_eq!(openai_error_code(body), "request_too_large", "{body}");
    }
    let chunked = in_batches(10, 5, |_| {
        let key = key.clone();
        let big = big.clone();
        async move {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            let resp = reqwest::Client::new()
                .post(format!("http://{addr}/backend-api/codex/responses"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
                .send()
                .await?;
            let status = resp.status().as_u16();
            Ok((status, resp.text().await.unwrap_or_default()))
        }
    })
    .await;
    for a in &chunked {
        match a {
            Ok((status, body)) => {
                assert_eq!(*status, 413, "{body}");
                assert_eq!(openai_error_code(body), "request_too_large", "{body}");
            }
            // Envoy may answer and close before the whole body is sent: a reset mid-upload.
            Err(e) => assert!(
                e.to_string().to_lowercase().contains("reset")
                    || e.to_string().to_lowercase().contains("closed")
                    || e.to_string().contains("error sending"),
                "{e:#}"
            ),
        }
    }
    let reached = stack.sim.turn_requests().await.unwrap().len();
    assert_eq!(reached, 0, "an oversized body reached the upstream");

    // The 32 KiB buffer limit bounds what waits for a connection, not what a request or answer
    // may carry: a body just under the body limit is served, and so is a collected (non-stream)
    // /v1 answer of 256 KiB.
    let under = {
        let mut v = turn_body("just under");
        v["instructions"] = json!("u".repeat((1 << 20) - 4096));
        serde_json::to_vec(&v).unwrap()
    };
    let lines = vec![auth.clone(), "Content-Type: application/json".to_string()];
    let r = raw_http(addr, "POST", "/backend-api/codex/responses", &lines, &under)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(300)]);
    stack
        .sim
        .behavior(json!({"reply_text": "r".repeat(256 * 1024), "delta_count": 64}))
        .await
        .unwrap();
    let chat = json!({"model": "gpt-5.1-codex", "stream": false,
        "messages": [{"role": "user", "content": "a long answer"}]});
    let resp = stack
        .http
        .post(stack.envoy.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer: Value = resp.json().await.unwrap();
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(content.len(), 256 * 1024, "{}", &answer.to_string()[..300]);
    stack.sim.behavior(json!({"reset": true})).await.unwrap();

    let rss_after = rss_bytes(envoy);
    let grown = rss_after.saturating_sub(rss_before);
    let (p50, _) = normal_client(&stack, 5, "after the floods").await;
    println!(
        "HOSTILE header_flood requests={rounds} status=431 h2={} took_s={:.1} envoy_4xx={details} \
         slowloris_408_after_s={:.1} oversized_413={} envoy_rss_before_mib={} envoy_rss_after_mib={} \
         grown_mib={} normal_p50_ms={}",
        h2_answers.join(","),
        flood_took.as_secs_f64(),
        slow_took.as_secs_f64(),
        with_length.len() + chunked.len(),
        mib(rss_before),
        mib(rss_after),
        mib(grown),
        p50.as_millis()
    );
    // 200 refused 100 KiB headers and 20 refused 3 MiB bodies: 80 MiB if any were kept.
    assert!(grown < 32 << 20, "Envoy grew {} MiB", mib(grown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_hits_the_connection_limit_and_the_gateway_serves_afterwards() {
    let _one = SERIAL.lock().await;
    raise_fd_limit();
    let limit = 500usize;
    let storm = env_count("HOSTILE_STORM_CONNECTIONS", 2000).max(limit * 2);
    let mut opts = roomy(1);
    opts.cp_env.push((
        "CODEXMESH_ENVOY_MAX_CONNECTIONS".to_string(),
        limit.to_string(),
    ));
    let stack = Stack::start_with(opts).await.unwrap();
    let envoy = envoy_pid(&stack);
    normal_client(&stack, 3, "warm-up").await;
    let rss_before = rss_bytes(envoy);
    let addr = stack.envoy.listen;
    let started = Instant::now();

    // Three waves: `storm` connections opened and held, then all closed at once.
    let mut refused_total = 0usize;
    let mut served_total = 0usize;
    for _wave in 0..3 {
        let opened = in_batches(storm, 200, |_| async move {
            Ok(TcpStream::connect(addr).await?)
        })
        .await;
        let mut held: Vec<TcpStream> = opened.into_iter().filter_map(Result::ok).collect();
        // Envoy closes what it accepts over the limit: such a socket reads EOF (or a reset).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut open = 0usize;
        for s in &mut held {
            let mut buf = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                Err(_) => open += 1,
                Ok(_) => refused_total += 1,
            }
        }
        served_total += open;
        assert!(
            open <= limit + 10,
            "{open} connections held open, over the limit {limit}"
        );
        drop(held);
    }
    let storm_took = started.elapsed();
    let overflow = envoy_stat(&stack, "downstream_global_cx_overflow").await;
    assert!(
        refused_total >= storm,
        "only {refused_total} of {} connections refused",
        storm * 3
    );
    assert!(overflow > 0, "no downstream_global_cx_overflow counted");

    // Afterwards the gateway serves normally (connections closed by the client drain at once).
    let recovered = Instant::now();
    let (status, _) = loop {
        let r = timed_turn(&stack).await;
        if r.0 == 200 || recovered.elapsed() > Duration::from_secs(10) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "the gateway did not serve after the storm");
    let recovery = recovered.elapsed();
    let (p50, max) = normal_client(&stack, 10, "after the storm").await;
    let rss_after = rss_bytes(envoy);
    println!(
        "HOSTILE connection_storm limit={limit} waves=3 connections_per_wave={storm} held_open={served_total} \
         refused={refused_total} overflow_stat={overflow} took_s={:.1} recovery_ms={} normal_p50_ms={} \
         normal_max_ms={} envoy_rss_before_mib={} envoy_rss_after_mib={}",
        storm_took.as_secs_f64(),
        recovery.as_millis(),
        p50.as_millis(),
        max.as_millis(),
        mib(rss_before),
        mib(rss_after)
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 64 << 20,
        "Envoy grew {} MiB over the storm",
        mib(rss_after.saturating_sub(rss_before))
    );
}
