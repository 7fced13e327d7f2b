//! `cp-load`: the control plane's own cost of keeping N accounts alive. A real `codexmesh serve`
//! (release) against the simulator's token and usage endpoints; N accounts whose access tokens
//! live `--ttl-min`..`--ttl-max` seconds (spread, so refreshes come due at different times; the
//! scheduler refreshes at half a short token's life), quota polled every `--poll-secs`; one
//! subscriber (a lean Subscribe stream, like one Envoy) so every change is pushed as it would be.
//! Samples the process's CPU (utime+stime) and RSS every `--sample-secs` for `--minutes`, and
//! counts the refreshes and polls the simulator answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::{Actor, Store};
use codexmesh_test_kit::{Artifacts, ControlPlane, CpEnv, Sim};
use serde_json::{json, Value};

use crate::failover::Http1;
use crate::gen::Rng;
use crate::procstat;
use crate::stats::{fmt_bytes, summarize};
use crate::subscriber::{self, Kind, Shared};

pub struct Options {
    pub accounts: usize,
    pub minutes: f64,
    pub ttl_min: u64,
    pub ttl_max: u64,
    pub poll_secs: u64,
    pub sample_secs: u64,
    pub rust_log: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Refresh calls (and successes) the simulator answered, summed over its accounts.
async fn sim_refreshes(control: &mut Http1) -> Result<(u64, u64)> {
    let a = control.request("GET", "/__sim/accounts", &[], b"").await?;
    let v: Value = serde_json::from_slice(&a.body).context("sim accounts")?;
    let accounts = v["accounts"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| accounts.iter().filter_map(|a| a[k].as_u64()).sum::<u64>();
    Ok((sum("refresh_calls"), sum("refresh_successes")))
}

/// Arrival times (real unix ms) and statuses of the simulator's requests whose path contains `p`.
async fn sim_requests(control: &mut Http1, p: &str) -> Result<Vec<(i64, u64)>> {
    let a = control
        .request(
            "GET",
            &format!("/__sim/requests?path_contains={p}"),
            &[],
            b"",
        )
        .await?;
    let v: Vec<Value> = serde_json::from_slice(&a.body).context("sim requests")?;
    Ok(v.iter()
        .map(|r| {
            (
                r["real_unix_ms"].as_i64().unwrap_or(0),
                r["status"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

pub async fn run(opts: &Options) -> Result<Value> {
    let art = Artifacts::locate_profile("release")?;
    let dir = tempfile::Builder::new()
        .prefix("codexmesh-bench-cp-load-")
        .tempdir()?;
    let sim = Sim::spawn(&art, dir.path())?;
    let mut control = Http1::new(sim.addr);

    // Accounts in the simulator, imported in-process (one store transaction each).
    let t = Instant::now();
    let master_key = MasterKey::generate()?;
    std::fs::create_dir_all(dir.path().join("data"))?;
    let store_url = format!(
        "sqlite://{}",
        dir.path().join("data/codexmesh.db").display()
    );
    {
        let store = Store::open(&store_url).await.context("open store")?;
        let actor = Actor::new("bench-cp-load".to_owned());
        store.create_pool(&actor, "load").await?;
        let mut rng = Rng::new(0xC0AD);
        for i in 0..opts.accounts {
            let ttl = rng.range(opts.ttl_min, opts.ttl_max.max(opts.ttl_min));
            let body = serde_json::to_vec(&json!({"access_token_ttl_secs": ttl}))?;
            let a = control
                .request(
                    "POST",
                    "/__sim/accounts",
                    &[("content-type", "application/json")],
                    &body,
                )
                .await?;
            if a.status != 201 {
                return Err(anyhow!("sim refused account {i}: {}", a.status));
            }
            let v: Value = serde_json::from_slice(&a.body)?;
            let creds = codexmesh_model::credentials::parse(v["auth_json"].to_string().as_bytes())
                .map_err(|e| anyhow!("auth.json of account {i}: {e}"))?;
            store
                .import_account(
                    &actor,
                    "load",
                    Some(&format!("load-{i}")),
                    &creds,
                    &master_key,
                )
                .await
                .with_context(|| format!("import account {i}"))?;
        }
    }
    println!(
        "cp-load: {} simulator accounts imported in {:.1} s (token life {}–{} s, quota poll every {} s)",
        opts.accounts,
        t.elapsed().as_secs_f64(),
        opts.ttl_min,
        opts.ttl_max,
        opts.poll_secs
    );

    let extra = vec![
        ("CODEXMESH_MASTER_KEY".into(), master_key.to_base64()),
        (
            "CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(),
            opts.poll_secs.to_string(),
        ),
        ("RUST_LOG".into(), opts.rust_log.clone()),
    ];
    let mut env = CpEnv::new(dir.path(), &sim, &art, extra);
    env.store = store_url;
    let mut cp = ControlPlane::new(&art, env, dir.path());
    let t_start = Instant::now();
    let start_ms = unix_ms();
    let grpc = cp.start()?;
    let pid = u32::try_from(cp.proc()?.pid().unwrap_or(0)).unwrap_or(0);
    let shared = Arc::new(Shared::default());
    let reader = subscriber::subscribe(
        grpc,
        &cp.env.push_token,
        "bench-cp-load".to_owned(),
        shared.clone(),
    )
    .await?;
    let load_start = loadavg();
    println!(
        "control plane pid {pid} on {grpc}; sampling every {} s",
        opts.sample_secs
    );

    let mut samples = Vec::new();
    let deadline = Duration::from_secs_f64(opts.minutes * 60.0);
    let first = procstat::sample(pid)?;
    samples.push(json!({"t_s": 0.0, "cpu_s": first.cpu_secs, "rss_bytes": first.rss_bytes}));
    while t_start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_secs(opts.sample_secs)).await;
        let s = procstat::sample(pid)?;
        let (calls, _) = sim_refreshes(&mut control).await.unwrap_or((0, 0));
        let snaps = shared
            .log()
            .iter()
            .filter(|r| r.kind == Kind::Snapshot)
            .count();
        println!(
            "  t={:>4.0} s  cpu {:>7.2} s  rss {:>10}  refreshes {:>5}  snapshots pushed {:>4}",
            t_start.elapsed().as_secs_f64(),
            s.cpu_secs,
            fmt_bytes(s.rss_bytes as f64),
            calls,
            snaps
        );
        samples.push(
            json!({"t_s": t_start.elapsed().as_secs_f64(), "cpu_s": s.cpu_secs,
                            "rss_bytes": s.rss_bytes, "refresh_calls": calls,
                            "snapshots": snaps}),
        );
    }
    let elapsed = t_start.elapsed().as_secs_f64();
    let end = procstat::sample(pid)?;
    let load_end = loadavg();
    let (calls, successes) = sim_refreshes(&mut control).await?;
    let polls = sim_requests(&mut control, "/wham/usage").await?;
    let tokens = sim_requests(&mut control, "/oauth/token").await?;
    let log = shared.log();
    let snaps: Vec<_> = log.iter().filter(|r| r.kind == Kind::Snapshot).collect();
    let snap_bytes: u64 = snaps.iter().map(|r| r.bytes).sum();
    let log_text = cp.proc()?.log_text();
    let warn_lines = log_text.lines().filter(|l| l.contains(" WARN ")).count();
    let error_lines = log_text.lines().filter(|l| l.contains(" ERROR ")).count();
    cp.kill();
    reader.abort();

    // Per whole minute: CPU (from the samples), polls and refreshes (from the simulator's log).
    let mut minutes = Vec::new();
    let n_min = (elapsed / 60.0).floor() as usize;
    let cpu_at = |t: f64| -> f64 {
        // Linear between the samples around t.
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| {
                (
                    s["t_s"].as_f64().unwrap_or(0.0),
                    s["cpu_s"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        for w in pts.windows(2) {
            if t >= w[0].0 && t <= w[1].0 {
                let f = if w[1].0 > w[0].0 {
                    (t - w[0].0) / (w[1].0 - w[0].0)
                } else {
                    0.0
                };
                return w[0].1 + f * (w[1].1 - w[0].1);
            }
        }
        pts.last().map_or(0.0, |p| p.1)
    };
    let rss_at = |t: f64| -> u64 {
        samples
            .iter()
            .filter(|s| s["t_s"].as_f64().unwrap_or(0.0) <= t + 0.5)
            .filter_map(|s| s["rss_bytes"].as_u64())
            .next_back()
            .unwrap_or(0)
    };
    println!("\nminute  CPU s  % of a core  refreshes  polls  snapshots pushed  RSS at end");
    let mut steady_cpu = Vec::new();
    for m in 0..n_min {
        let (a, b) = (m as f64 * 60.0, (m + 1) as f64 * 60.0);
        let cpu = cpu_at(b) - cpu_at(a);
        let in_min = |v: &[(i64, u64)]| {
            v.iter()
                .filter(|(t, _)| {
                    let s = (*t - start_ms) as f64 / 1000.0;
                    s >= a && s < b
                })
                .count()
        };
        let (refr, pol) = (in_min(&tokens), in_min(&polls));
        let sn = snaps
            .iter()
            .filter(|r| {
                let s = r.done.duration_since(t_start).as_secs_f64();
                s >= a && s < b
            })
            .count();
        let rss = rss_at(b);
        println!(
            "{:>6}  {cpu:>5.2}  {:>10.1} %  {refr:>9}  {pol:>5}  {sn:>16}  {}",
            m + 1,
            cpu / 60.0 * 100.0,
            fmt_bytes(rss as f64)
        );
        if m > 0 {
            steady_cpu.push(cpu);
        }
        minutes.push(
            json!({"minute": m + 1, "cpu_s": cpu, "refreshes": refr, "polls": pol,
                            "snapshots": sn, "rss_bytes_at_end": rss}),
        );
    }
    let total_cpu = end.cpu_secs - first.cpu_secs;
    let ok_polls = polls.iter().filter(|(_, s)| *s == 200).count();
    let ops = calls as f64 + polls.len() as f64;
    // No whole minute after the first: no steady figure (NaN, null in the JSON).
    let steady = if steady_cpu.is_empty() {
        summarize(&[f64::NAN])
    } else {
        summarize(&steady_cpu)
    };
    let steady_p50 = if steady.n == 0 { f64::NAN } else { steady.p50 };
    let rss_all: Vec<f64> = samples
        .iter()
        .filter_map(|s| s["rss_bytes"].as_u64())
        .map(|b| b as f64)
        .collect();
    let rss = summarize(&rss_all);
    println!(
        "\n{:.0} s: CPU {total_cpu:.2} s ({:.2} s/min, {:.1} % of a core); steady minutes (after the first) median {:.2} s/min",
        elapsed,
        total_cpu / elapsed * 60.0,
        total_cpu / elapsed * 100.0,
        steady_p50
    );
    // No refresh and no poll (both turned off): no cost per operation.
    let per_op_ms = if ops > 0.0 {
        total_cpu / ops * 1000.0
    } else {
        f64::NAN
    };
    println!(
        "per account: {:.2} ms CPU per minute; per refresh or poll: {:.2} ms CPU",
        total_cpu / elapsed * 60.0 / opts.accounts as f64 * 1000.0,
        per_op_ms
    );
    println!(
        "simulator answered {calls} refresh calls ({successes} successful) and {} usage polls ({ok_polls} × 200); \
         {} snapshots pushed ({}); RSS start {} median {} max {} end {} (VmHWM {}); log: {warn_lines} WARN, {error_lines} ERROR lines",
        polls.len(),
        snaps.len(),
        fmt_bytes(snap_bytes as f64),
        fmt_bytes(first.rss_bytes as f64),
        fmt_bytes(rss.p50),
        fmt_bytes(rss.max),
        fmt_bytes(end.rss_bytes as f64),
        fmt_bytes(end.hwm_bytes as f64)
    );
    println!("load average: start {load_start} / end {load_end}");
    Ok(json!({
        "accounts": opts.accounts,
        "ttl_secs": [opts.ttl_min, opts.ttl_max],
        "poll_secs": opts.poll_secs,
        "rust_log": opts.rust_log,
        "elapsed_s": elapsed,
        "cpu_s": total_cpu,
        "cpu_s_per_min": total_cpu / elapsed * 60.0,
        "cpu_s_per_min_steady_median": steady_p50,
        "cpu_ms_per_account_per_min": total_cpu / elapsed * 60.0 / opts.accounts as f64 * 1000.0,
        "cpu_ms_per_refresh_or_poll": per_op_ms,
        "refresh_calls": calls,
        "refresh_successes": successes,
        "usage_polls": polls.len(),
        "usage_polls_ok": ok_polls,
        "snapshots_pushed": snaps.len(),
        "snapshot_bytes_pushed": snap_bytes,
        "rss_bytes": {"start": first.rss_bytes, "median": rss.p50, "max": rss.max,
                      "end": end.rss_bytes, "vmhwm": end.hwm_bytes},
        "log_warn_lines": warn_lines,
        "log_error_lines": error_lines,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "minutes": minutes,
        "samples": samples,
    }))
}
