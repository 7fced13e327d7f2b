//! `surface`: what the client surfaces of issue 9 cost on the data path, through one real Envoy
//! with the wasm module (the e2e harness's stack: simulator, control plane, Envoy).
//!
//! - **Translation**: Envoy CPU per request for a streamed `/v1/chat/completions` request (body
//!   translated whole, answer translated chunk by chunk), a streamed `/v1/responses` request
//!   (normalized, answer passed through) and the passthrough Codex request
//!   (`/backend-api/codex/responses`), interleaved in rounds; the difference to the passthrough
//!   is the translation's cost.
//! - **WebSocket frames**: turns over one connection through the gateway vs straight to the
//!   simulator, as turns/s, frames/s and per-turn latency.
//!
//! Numbers only: nothing here is asserted. The simulator is the upstream, so req/s is bounded by
//! it; Envoy's CPU per request is the figure to read.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use codexmesh_test_kit::{turn_body, Stack, StackOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::procstat;
use crate::stats::{fmt_ms, summarize};

/// One request kind of the translation comparison.
struct Kind {
    name: &'static str,
    path: &'static str,
    body: Value,
}

fn kinds() -> Vec<Kind> {
    let chat = json!({
        "model": "gpt-5.1-codex",
        "messages": [
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": "Say hello."}
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let responses = json!({
        "model": "gpt-5.1-codex",
        "instructions": "You are a test.",
        "input": "Say hello.",
        "stream": true,
    });
    vec![
        Kind {
            name: "codex_passthrough",
            path: "/backend-api/codex/responses",
            body: turn_body("Say hello."),
        },
        Kind {
            name: "v1_responses_stream",
            path: "/v1/responses",
            body: responses,
        },
        Kind {
            name: "v1_chat_stream",
            path: "/v1/chat/completions",
            body: chat,
        },
    ]
}

fn envoy_cpu(stack: &Stack) -> Result<f64> {
    let pid = stack
        .envoy
        .proc
        .pid()
        .ok_or_else(|| anyhow!("Envoy has no pid"))?;
    Ok(procstat::sample(u32::try_from(pid)?)?.cpu_secs)
}

/// `n` requests of one kind, `conc` at a time; returns (Envoy CPU µs per request, req/s).
async fn run_kind(stack: &Stack, kind: &Kind, n: usize, conc: usize) -> Result<(f64, f64)> {
    let url = stack.envoy.url(kind.path);
    let cpu0 = envoy_cpu(stack)?;
    let start = Instant::now();
    let mut done = 0usize;
    while done < n {
        let batch = conc.min(n - done);
        let results = futures_util::future::join_all((0..batch).map(|i| {
            let req = stack
                .http
                .post(&url)
                .bearer_auth(&stack.key)
                .header("session-id", format!("bench-{}", (done + i) % 64))
                .json(&kind.body);
            async move {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let _ = resp.bytes().await?;
                Ok::<u16, reqwest::Error>(status)
            }
        }))
        .await;
        for r in results {
            let status = r?;
            if status != 200 {
                return Err(anyhow!("{} answered {status}", kind.name));
            }
        }
        done += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = envoy_cpu(stack)? - cpu0;
    Ok((cpu * 1e6 / n as f64, n as f64 / secs))
}

async fn translation(stack: &Stack, n: usize, rounds: usize) -> Result<Value> {
    let kinds = kinds();
    let mut per_kind: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); kinds.len()];
    // Warm-up: every path once, so the VM has compiled and the connections exist.
    for k in &kinds {
        run_kind(stack, k, 20, 4).await?;
    }
    for round in 0..rounds {
        // Interleaved, the order alternating between rounds.
        let mut order: Vec<usize> = (0..kinds.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (cpu, rps) = run_kind(stack, &kinds[i], n, 4).await?;
            per_kind[i].0.push(cpu);
            per_kind[i].1.push(rps);
        }
    }
    let median = |v: &[f64]| summarize(v).p50;
    let base = median(&per_kind[0].0);
    println!("translation ({n} streamed requests per kind and round, {rounds} rounds, 4 at a time; Envoy CPU per request, medians):");
    let mut out = serde_json::Map::new();
    for (k, (cpu, rps)) in kinds.iter().zip(&per_kind) {
        let c = median(cpu);
        println!(
            "  {:<22} {:>8.1} µs/req  (+{:>6.1} µs vs passthrough)  {:>7.0} req/s",
            k.name,
            c,
            c - base,
            median(rps)
        );
        out.insert(
            k.name.to_string(),
            json!({"envoy_cpu_us_per_req": c, "added_us_vs_passthrough": c - base,
                   "req_per_s": median(rps), "rounds_cpu_us": cpu, "rounds_req_per_s": rps}),
        );
    }
    Ok(Value::Object(out))
}

fn create_frame(previous: Option<&str>) -> Message {
    let mut frame = json!({
        "type": "response.create",
        "model": "gpt-5.1-codex",
        "instructions": "You are a test.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "store": false,
        "stream": true,
    });
    if let Some(p) = previous {
        frame["previous_response_id"] = json!(p);
    }
    Message::Text(frame.to_string().into())
}

/// `turns` turns over one WebSocket at `url` with `bearer`; (turn latencies ms, frames read).
async fn ws_turns(url: &str, bearer: &str, turns: usize) -> Result<(Vec<f64>, usize, f64)> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("connect {url}"))?;
    let mut latencies = Vec::with_capacity(turns);
    let mut frames = 0usize;
    let mut previous: Option<String> = None;
    let start = Instant::now();
    for _ in 0..turns {
        let t0 = Instant::now();
        ws.send(create_frame(previous.as_deref())).await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .map_err(|_| anyhow!("a turn took over 20 s"))?
                .ok_or_else(|| anyhow!("connection closed"))??;
            let Message::Text(text) = msg else { continue };
            frames += 1;
            let event: Value = serde_json::from_str(&text)?;
            match event["type"].as_str() {
                Some("response.completed") => {
                    previous = event["response"]["id"].as_str().map(str::to_string);
                    break;
                }
                Some("response.failed" | "error") => return Err(anyhow!("turn failed: {event}")),
                _ => {}
            }
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    Ok((latencies, frames, secs))
}

async fn websocket(stack: &Stack, turns: usize) -> Result<Value> {
    let gateway = stack
        .envoy
        .url("/backend-api/codex/responses")
        .replacen("http://", "ws://", 1);
    // The simulator's base URL is the upstream base (it already ends in /backend-api).
    let direct = format!(
        "{}/codex/responses",
        stack.sim.base_url().replacen("http://", "ws://", 1)
    );
    let token = stack.access_token(0);
    // Warm-up of both paths.
    ws_turns(&gateway, &stack.key, 5).await?;
    ws_turns(&direct, &token, 5).await?;
    println!("websocket ({turns} turns over one connection, sequential):");
    let mut out = serde_json::Map::new();
    for (name, url, bearer) in [
        ("direct", direct.as_str(), token.as_str()),
        ("gateway", gateway.as_str(), stack.key.as_str()),
    ] {
        let cpu0 = envoy_cpu(stack)?;
        let (lat, frames, secs) = ws_turns(url, bearer, turns).await?;
        let cpu = envoy_cpu(stack)? - cpu0;
        let s = summarize(&lat);
        println!(
            "  {name:<8} {:>7.0} turns/s  {:>8.0} frames/s  turn p50 {} p99 {}  Envoy CPU {:.1} µs/frame",
            turns as f64 / secs,
            frames as f64 / secs,
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            cpu * 1e6 / frames.max(1) as f64
        );
        out.insert(
            name.to_string(),
            json!({"turns_per_s": turns as f64 / secs, "frames_per_s": frames as f64 / secs,
                   "frames": frames, "turn_ms": s.json(),
                   "envoy_cpu_us_per_frame": cpu * 1e6 / frames.max(1) as f64}),
        );
    }
    Ok(Value::Object(out))
}

pub async fn run(requests: usize, rounds: usize, ws_turn_count: usize) -> Result<Value> {
    let stack = Stack::start_with(StackOptions::accounts(2).without_quota_polling()).await?;
    let translation = translation(&stack, requests, rounds).await?;
    let websocket = websocket(&stack, ws_turn_count).await?;
    Ok(json!({
        "requests_per_kind_and_round": requests,
        "rounds": rounds,
        "translation": translation,
        "websocket": websocket,
    }))
}
