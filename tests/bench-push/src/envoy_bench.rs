//! `push --envoy`: one real Envoy with the wasm module (the e2e harness's stack: simulator,
//! control plane, Envoy). For each change made through the CLI, how long until the data path
//! acts on it: a new key's first answer that is not 401, a revoked key's first 401.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use codexmesh_test_kit::{Stack, POOL};
use serde_json::{json, Value};

use crate::gen::Rng;
use crate::stats::{fmt_ms, summarize};

/// A pause of 0–250 ms before each change, so changes land at random points of the control
/// plane's 200 ms revision poll (back to back they would all land just after a poll).
async fn jitter(rng: &mut Rng) {
    tokio::time::sleep(Duration::from_millis(rng.range(0, 250))).await;
}

/// Sends turns with `key` back to back until `done(status)`; returns the time from `since`.
async fn poll_until(
    stack: &Stack,
    key: &str,
    since: Instant,
    timeout: Duration,
    done: impl Fn(u16) -> bool,
) -> Result<(f64, usize)> {
    let mut polls = 0usize;
    loop {
        let (status, _) = stack.turn(key).await?;
        polls += 1;
        if done(status) {
            return Ok((since.elapsed().as_secs_f64() * 1000.0, polls));
        }
        if since.elapsed() > timeout {
            return Err(anyhow!(
                "still answered {status} after {timeout:?} ({polls} requests)"
            ));
        }
    }
}

pub async fn run(accounts: usize, changes: usize, timeout: Duration) -> Result<Value> {
    println!("envoy bench: starting simulator, control plane and Envoy with {accounts} accounts (e2e harness)");
    let t = Instant::now();
    let stack = Stack::start(accounts)
        .await
        .context("start the e2e stack")?;
    println!("stack serving in {:.1} s", t.elapsed().as_secs_f64());
    let mut create_ms = Vec::new();
    let mut revoke_ms = Vec::new();
    let mut cli_ms = Vec::new();
    let mut polls = Vec::new();
    let mut per_request = Vec::new();
    let mut rng = Rng::new(0xE4B0);
    for i in 0..changes {
        jitter(&mut rng).await;
        let t = Instant::now();
        let created = stack
            .cp
            .cli_json(&["key", "create", "--pool", POOL])
            .with_context(|| format!("key create {i}"))?;
        let committed = Instant::now();
        cli_ms.push((committed - t).as_secs_f64() * 1000.0);
        let key = created["key"]
            .as_str()
            .ok_or_else(|| anyhow!("key create printed no key"))?
            .to_owned();
        let id = created["id"]
            .as_str()
            .ok_or_else(|| anyhow!("key create printed no id"))?
            .to_owned();
        let (ms, n) = poll_until(&stack, &key, committed, timeout, |s| s != 401)
            .await
            .with_context(|| format!("new key {i}"))?;
        create_ms.push(ms);
        polls.push(n as f64);
        per_request.push(ms / n.max(1) as f64);
        jitter(&mut rng).await;
        let t = Instant::now();
        stack
            .cp
            .cli_json(&["key", "revoke", &id])
            .with_context(|| format!("key revoke {i}"))?;
        let committed = Instant::now();
        cli_ms.push((committed - t).as_secs_f64() * 1000.0);
        let (ms, n) = poll_until(&stack, &key, committed, timeout, |s| s == 401)
            .await
            .with_context(|| format!("revoked key {i}"))?;
        revoke_ms.push(ms);
        polls.push(n as f64);
        per_request.push(ms / n.max(1) as f64);
    }
    // A served turn's latency (the sim answers at once): the data path's per-request cost,
    // ranking of the pool included.
    let mut served_ms = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let (status, _) = stack.turn(&stack.key).await?;
        if status == 200 {
            served_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let served = summarize(&served_ms);
    let (c, r, cli, p) = (
        summarize(&create_ms),
        summarize(&revoke_ms),
        summarize(&cli_ms),
        summarize(&polls),
    );
    println!(
        "key create → first non-401 through Envoy: p50 {} p99 {} max {} (n={})",
        fmt_ms(c.p50),
        fmt_ms(c.p99),
        fmt_ms(c.max),
        c.n
    );
    println!(
        "key revoke → first 401 through Envoy:     p50 {} p99 {} max {} (n={})",
        fmt_ms(r.p50),
        fmt_ms(r.p99),
        fmt_ms(r.max),
        r.n
    );
    let rq = summarize(&per_request);
    println!(
        "a served turn through Envoy (simulator upstream): p50 {} p99 {} (n={})",
        fmt_ms(served.p50),
        fmt_ms(served.p99),
        served.n
    );
    println!(
        "(timed from the CLI process's exit; the CLI itself took p50 {}; requests per poll: p50 {:.0}, \
         mean time per request while polling: p50 {})",
        fmt_ms(cli.p50),
        p.p50,
        fmt_ms(rq.p50)
    );
    Ok(json!({
        "accounts": accounts,
        "changes": changes,
        "key_create_to_served_ms": c.json(),
        "key_revoke_to_401_ms": r.json(),
        "cli_ms": cli.json(),
        "requests_per_measure": p.json(),
        "served_turn_ms": served.json(),
        "mean_request_ms_while_polling": rq.json(),
    }))
}
