//! `failover`: what one failover adds to a request through the real gateway. The e2e harness's
//! pieces (simulator, control plane, Envoy with the wasm module) with the release control plane
//! and simulator; N accounts in one pool. Interleaved, one request at a time on keep-alive
//! connections:
//!
//! - `served at once`: a turn through Envoy that the first account serves;
//! - `failover`: the same turn, but the simulator answers the first attempt `429
//!   usage_limit_reached` (`fail_next`, resets in 1 s) and the next account serves it;
//! - the upstream's own time, straight to the simulator with an account's token: a turn (200)
//!   and the injected 429.
//!
//! Each failover cools its first account down for a second (the 429's `resets_in_seconds`), so
//! failovers are paced (`--gap-ms`) to leave most of the pool ready.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use codexmesh_test_kit::{
    import_account, turn_body, Artifacts, ControlPlane, CpEnv, Envoy, Sim, POOL,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::procstat;
use crate::stats::{fmt_ms, summarize, Summary};

pub struct Options {
    pub accounts: usize,
    pub requests: usize,
    pub gap_ms: u64,
    /// A second Envoy whose route retries after this back-off instead of the product's
    /// (`base_interval: 0.02s`): separates Envoy's back-off from the rest of a failover.
    pub short_backoff_ms: u64,
}

/// The product's retry back-off as the rendered bootstrap spells it.
const PRODUCT_BACKOFF: &str = "retry_back_off: { base_interval: 0.02s, max_interval: 0.2s }";

/// Like `Envoy::start`, with the rendered bootstrap's retry back-off replaced.
async fn start_envoy_with_backoff(
    art: &Artifacts,
    cp: &ControlPlane,
    grpc: SocketAddr,
    dir: &Path,
    name: &str,
    base_ms: u64,
) -> Result<Envoy> {
    let bootstrap = Envoy::render_bootstrap(cp, grpc, None, dir, name)?;
    let yaml = std::fs::read_to_string(&bootstrap)?;
    if !yaml.contains(PRODUCT_BACKOFF) {
        bail!("the rendered bootstrap has no `{PRODUCT_BACKOFF}` to replace");
    }
    let secs = base_ms as f64 / 1000.0;
    std::fs::write(
        &bootstrap,
        yaml.replace(
            PRODUCT_BACKOFF,
            &format!("retry_back_off: {{ base_interval: {secs}s, max_interval: {secs}s }}"),
        ),
    )?;
    Envoy::run(art, &bootstrap, &cp.env.push_token, dir, name).await
}

/// A minimal HTTP/1.1 keep-alive client (one connection, one request at a time): the timing
/// includes nothing but the exchange itself.
pub struct Http1 {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// Request written → status line read, and → last body byte read.
    pub head_ms: f64,
    pub total_ms: f64,
}

impl Http1 {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        // A connection the server closed is reopened once.
        match self.try_request(method, path, headers, body).await {
            Ok(a) => Ok(a),
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, headers, body).await
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        if self.conn.is_none() {
            let tcp = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            tcp.set_nodelay(true)?;
            self.conn = Some(BufReader::new(tcp));
        }
        let conn = self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let t = Instant::now();
        conn.get_mut().write_all(&bytes).await?;
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let head_ms = t.elapsed().as_secs_f64() * 1000.0;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("connection closed in the head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0u8; size + 2];
                conn.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            conn.read_exact(&mut out).await?;
        } else {
            conn.read_to_end(&mut out).await?;
            close = true;
        }
        let total_ms = t.elapsed().as_secs_f64() * 1000.0;
        if close {
            self.conn = None;
        }
        Ok(Answer {
            status,
            body: out,
            head_ms,
            total_ms,
        })
    }
}

/// Queues one `429 usage_limit_reached` (resets in 1 s) for the simulator's next model turn.
async fn inject(control: &mut Http1, body: &[u8]) -> Result<()> {
    let a = control
        .request(
            "POST",
            "/__sim/behavior",
            &[("content-type", "application/json")],
            body,
        )
        .await?;
    if a.status != 200 {
        bail!("sim behavior answered {}", a.status);
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn row(name: &str, s: &Summary) {
    println!(
        "{name:<42} p50 {:>9}  p90 {:>9}  p99 {:>9}  mean {:>9}  (n={})",
        fmt_ms(s.p50),
        fmt_ms(s.p90),
        fmt_ms(s.p99),
        fmt_ms(s.mean),
        s.n
    );
}

pub async fn run(opts: &Options) -> Result<Value> {
    let art = Artifacts::locate_profile("release")?;
    let dir = tempfile::Builder::new()
        .prefix("codexmesh-bench-failover-")
        .tempdir()?;
    let sim = Sim::spawn(&art, dir.path())?;
    let extra = vec![
        // Nothing but the measured traffic reaches the simulator.
        ("CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(), "0".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let mut cp = ControlPlane::new(&art, CpEnv::new(dir.path(), &sim, &art, extra), dir.path());
    cp.cli_json(&["pool", "create", POOL])?;
    let mut accounts = Vec::new();
    for i in 0..opts.accounts.max(2) {
        let label = format!("acct-{i}");
        accounts.push(import_account(&sim, &cp, dir.path(), POOL, &label, json!({})).await?);
    }
    let key = cp.cli_json(&["key", "create", "--pool", POOL])?["key"]
        .as_str()
        .ok_or_else(|| anyhow!("key create printed no key"))?
        .to_owned();
    let grpc = cp.start()?;
    let push = cp.env.push_token.clone();
    let envoy = Envoy::start(&art, &cp, grpc, &push, dir.path(), "envoy").await?;
    let envoy_pid = envoy.proc.pid().unwrap_or(0);
    let short = start_envoy_with_backoff(
        &art,
        &cp,
        grpc,
        dir.path(),
        "envoy-short-backoff",
        opts.short_backoff_ms.max(1),
    )
    .await?;
    println!(
        "failover bench: {} accounts, Envoy {} (pid {envoy_pid}), simulator {}",
        accounts.len(),
        envoy.listen,
        sim.addr
    );

    let body = serde_json::to_vec(&turn_body("Say ok and nothing else."))?;
    let bearer = format!("Bearer {key}");
    let gw_headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
    ];
    let token = accounts[0]["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no access token"))?
        .to_owned();
    let account_id = accounts[0]["account_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let direct_bearer = format!("Bearer {token}");
    let direct_headers = [
        ("authorization", direct_bearer.as_str()),
        ("chatgpt-account-id", account_id.as_str()),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
    ];
    let mut gw = Http1::new(envoy.listen);
    let mut gw_short = Http1::new(short.listen);
    let mut direct = Http1::new(sim.addr);
    let mut control = Http1::new(sim.addr);
    let limit_body = serde_json::to_vec(&json!({"fail_next_append": [{
        "status": 429,
        "body": {"error": {"type": "usage_limit_reached",
                           "message": "The usage limit has been reached",
                           "plan_type": "plus", "resets_in_seconds": 1}},
    }]}))?;
    // Until the gateway serves, then a warm-up of both kinds.
    let t = Instant::now();
    loop {
        let a = gw
            .request("POST", "/backend-api/codex/responses", &gw_headers, &body)
            .await?;
        if a.status == 200 {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the gateway did not serve within 30 s (last {})", a.status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let a = gw_short
            .request("POST", "/backend-api/codex/responses", &gw_headers, &body)
            .await?;
        if a.status == 200 {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "the second Envoy did not serve within 30 s (last {})",
                a.status
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        for g in [&mut gw, &mut gw_short] {
            g.request("POST", "/backend-api/codex/responses", &gw_headers, &body)
                .await?;
            inject(&mut control, &limit_body).await?;
            g.request("POST", "/backend-api/codex/responses", &gw_headers, &body)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(opts.gap_ms)).await;
    }
    let cleared = control
        .request("DELETE", "/__sim/requests", &[], b"")
        .await?;
    if cleared.status != 200 {
        bail!(
            "clearing the simulator's request log answered {}",
            cleared.status
        );
    }

    let load_start = loadavg();
    let cpu0 = procstat::sample(u32::try_from(envoy_pid).unwrap_or(0)).ok();
    let (mut ok_total, mut ok_head) = (Vec::new(), Vec::new());
    let (mut fo_total, mut fo_head) = (Vec::new(), Vec::new());
    let (mut up_ok, mut up_429) = (Vec::new(), Vec::new());
    let (mut short_ok, mut short_fo) = (Vec::new(), Vec::new());
    let mut bad = 0usize;
    let mut bad_answers: std::collections::BTreeMap<String, usize> = Default::default();
    let mut note_bad = |a: &Answer| {
        let head: String = String::from_utf8_lossy(&a.body).chars().take(160).collect();
        *bad_answers
            .entry(format!("{} {head}", a.status))
            .or_default() += 1;
    };
    let t_run = Instant::now();
    for i in 0..opts.requests {
        // Alternate which kind goes first.
        for step in 0..6 {
            let which = if i % 2 == 0 { step } else { 5 - step };
            match which {
                0 => {
                    let a = gw
                        .request("POST", "/backend-api/codex/responses", &gw_headers, &body)
                        .await?;
                    if a.status == 200 && a.body.windows(18).any(|w| w == b"response.completed") {
                        ok_total.push(a.total_ms);
                        ok_head.push(a.head_ms);
                    } else {
                        bad += 1;
                        note_bad(&a);
                    }
                }
                1 => {
                    inject(&mut control, &limit_body).await?;
                    let a = gw
                        .request("POST", "/backend-api/codex/responses", &gw_headers, &body)
                        .await?;
                    if a.status == 200 && a.body.windows(18).any(|w| w == b"response.completed") {
                        fo_total.push(a.total_ms);
                        fo_head.push(a.head_ms);
                    } else {
                        bad += 1;
                        note_bad(&a);
                    }
                }
                4 | 5 => {
                    if which == 5 {
                        inject(&mut control, &limit_body).await?;
                    }
                    let a = gw_short
                        .request("POST", "/backend-api/codex/responses", &gw_headers, &body)
                        .await?;
                    if a.status == 200 && a.body.windows(18).any(|w| w == b"response.completed") {
                        if which == 5 {
                            short_fo.push(a.total_ms);
                        } else {
                            short_ok.push(a.total_ms);
                        }
                    } else {
                        bad += 1;
                        note_bad(&a);
                    }
                }
                2 => {
                    let a = direct
                        .request(
                            "POST",
                            "/backend-api/codex/responses",
                            &direct_headers,
                            &body,
                        )
                        .await?;
                    if a.status == 200 {
                        up_ok.push(a.total_ms);
                    }
                }
                _ => {
                    inject(&mut control, &limit_body).await?;
                    let a = direct
                        .request(
                            "POST",
                            "/backend-api/codex/responses",
                            &direct_headers,
                            &body,
                        )
                        .await?;
                    if a.status == 429 {
                        up_429.push(a.total_ms);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(opts.gap_ms)).await;
    }
    let run_secs = t_run.elapsed().as_secs_f64();
    let cpu1 = procstat::sample(u32::try_from(envoy_pid).unwrap_or(0)).ok();
    let load_end = loadavg();

    // What reached the simulator: every failover request should be one 429 and one 200.
    let log = control
        .request(
            "GET",
            "/__sim/requests?path_contains=/codex/responses",
            &[],
            b"",
        )
        .await?;
    let records: Vec<Value> = serde_json::from_slice(&log.body).unwrap_or_default();
    let count = |status: u64| {
        records
            .iter()
            .filter(|r| r["status"].as_u64() == Some(status))
            .count()
    };
    let (n429, n200) = (count(429), count(200));

    let (sa, sb) = (summarize(&short_ok), summarize(&short_fo));
    let (a, b, ah, bh, u, u4) = (
        summarize(&ok_total),
        summarize(&fo_total),
        summarize(&ok_head),
        summarize(&fo_head),
        summarize(&up_ok),
        summarize(&up_429),
    );
    println!("\nload average: start {load_start} / end {load_end}; {run_secs:.0} s");
    row("through Envoy, served at once (total)", &a);
    row("through Envoy, 429 then next account (total)", &b);
    row("through Envoy, served at once (headers)", &ah);
    row("through Envoy, 429 then next account (headers)", &bh);
    let sname = format!("{} ms back-off", opts.short_backoff_ms.max(1));
    row(&format!("through Envoy ({sname}), served at once"), &sa);
    row(&format!("through Envoy ({sname}), 429 then next"), &sb);
    row("simulator direct: a turn (200)", &u);
    row("simulator direct: the injected 429", &u4);
    let added = b.p50 - a.p50;
    println!(
        "added by one failover (difference of medians): {} (p90 {}, p99 {}); the upstream's own \
         429 takes {} and a turn {}",
        fmt_ms(added),
        fmt_ms(b.p90 - a.p90),
        fmt_ms(b.p99 - a.p99),
        fmt_ms(u4.p50),
        fmt_ms(u.p50)
    );
    println!(
        "with a {sname}: added {} (p90 {}, p99 {}); mean added {} with the product's back-off, {} with {sname}",
        fmt_ms(sb.p50 - sa.p50),
        fmt_ms(sb.p90 - sa.p90),
        fmt_ms(sb.p99 - sa.p99),
        fmt_ms(b.mean - a.mean),
        fmt_ms(sb.mean - sa.mean)
    );
    println!(
        "simulator saw {n429} × 429 (expected {}) and {n200} × 200 (expected {}) on \
         /codex/responses, gateway and direct; {bad} gateway requests did not end in a completed \
         stream",
        3 * opts.requests,
        5 * opts.requests
    );
    for (answer, n) in &bad_answers {
        println!("  {n} × {answer}");
    }
    let envoy_cpu = match (cpu0, cpu1) {
        (Some(x), Some(y)) => y.cpu_secs - x.cpu_secs,
        _ => f64::NAN,
    };
    Ok(json!({
        "accounts": accounts.len(),
        "requests_per_kind": opts.requests,
        "gap_ms": opts.gap_ms,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "run_seconds": run_secs,
        "served_at_once_ms": a.json(),
        "failover_ms": b.json(),
        "served_at_once_headers_ms": ah.json(),
        "failover_headers_ms": bh.json(),
        "upstream_turn_ms": u.json(),
        "upstream_429_ms": u4.json(),
        "added_by_failover_ms": {"p50": added, "p90": b.p90 - a.p90, "p99": b.p99 - a.p99,
                                 "mean": b.mean - a.mean},
        "short_backoff_ms": opts.short_backoff_ms.max(1),
        "short_backoff_served_at_once_ms": sa.json(),
        "short_backoff_failover_ms": sb.json(),
        "short_backoff_added_ms": {"p50": sb.p50 - sa.p50, "p90": sb.p90 - sa.p90,
                                   "p99": sb.p99 - sa.p99, "mean": sb.mean - sa.mean},
        "sim_saw": {"status_429": n429, "status_200": n200},
        "gateway_not_completed": bad,
        "gateway_not_completed_answers": bad_answers,
        "envoy_cpu_seconds_during_run": envoy_cpu,
        "envoy_retry_back_off": "base_interval 20 ms, max 200 ms (envoy/bootstrap.template.yaml)",
    }))
}
