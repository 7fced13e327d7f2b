//! Benchmark commands for the snapshot and the control plane's push path. They print numbers
//! (and write them as JSON under `tests/bench-push/results/`); they assert no timing.

mod cp_load;
mod envoy_bench;
mod failover;
mod fill;
mod gen;
mod procstat;
mod push;
mod seed;
mod snapshot_bench;
mod stats;
mod subscriber;
mod surface_bench;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "codexmesh-bench-push",
    about = "Snapshot and push-path benchmarks (numbers, no assertions)"
)]
struct Cli {
    /// Where the JSON results go.
    #[arg(long, global = true, default_value_os_t = default_results_dir())]
    results_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Encoded size, decode time and per-request lookup cost of snapshots by account count.
    Snapshot {
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
        accounts: Vec<usize>,
        /// Pools the accounts (and keys) are spread over.
        #[arg(long, default_value_t = 1)]
        pools: usize,
        /// Time budget per measure and size, ms.
        #[arg(long, default_value_t = 3000)]
        budget_ms: u64,
    },
    /// Change → every subscriber has it, against the real control plane.
    Push {
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        #[arg(long, default_value_t = 1)]
        pools: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        subscribers: Vec<usize>,
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// The codexmesh binary (default: target/release/codexmesh, else target/debug).
        #[arg(long)]
        codexmesh: Option<PathBuf>,
        /// The server's CODEXMESH_CHANGE_POLL_MS (default: unset, i.e. the product's default).
        #[arg(long)]
        change_poll_ms: Option<u64>,
        /// Give up on a change reaching every subscriber after this many seconds.
        #[arg(long, default_value_t = 120)]
        change_timeout_secs: u64,
        /// Kill the control plane when its RSS passes this (the machine is shared).
        #[arg(long, default_value_t = 8192)]
        max_rss_mb: u64,
        /// ... or when the machine's MemAvailable falls under this.
        #[arg(long, default_value_t = 4096)]
        min_available_mb: u64,
        /// Keep the temp dir (store, serve logs).
        #[arg(long)]
        keep: bool,
        /// Instead: one real Envoy (the e2e harness: debug builds, wasm, .venv Envoy); time
        /// from a key created/revoked with the CLI to the data path acting on it.
        #[arg(long)]
        envoy: bool,
        /// Accounts imported for `--envoy` (one CLI import each).
        #[arg(long, default_value_t = 10)]
        envoy_accounts: usize,
    },
    /// Writes pools (one key each) and accounts straight into the store of the usual settings
    /// (CODEXMESH_STORE, CODEXMESH_DATA_DIR, CODEXMESH_MASTER_KEY); prints pools and keys as JSON.
    Seed {
        #[arg(long)]
        accounts: usize,
        #[arg(long, default_value_t = 1)]
        pools: usize,
        #[arg(long, default_value = "seed")]
        prefix: String,
    },
    /// Added latency of one failover (429, then the next account) through Envoy.
    Failover {
        #[arg(long, default_value_t = 10)]
        accounts: usize,
        /// Requests of each kind.
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Pause after each round (a failover cools its first account down for a second or so;
        /// at 150 ms a pool of 10 ran out of ready accounts).
        #[arg(long, default_value_t = 400)]
        gap_ms: u64,
        /// Retry back-off of a second Envoy measured beside the product's 20 ms (ms, >= 1).
        #[arg(long, default_value_t = 1)]
        short_backoff_ms: u64,
    },
    /// Control-plane CPU and memory while N accounts are refreshed and polled.
    CpLoad {
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Access-token lifetimes (s), spread uniformly; refreshed at half their life.
        #[arg(long, default_value_t = 120)]
        ttl_min: u64,
        #[arg(long, default_value_t = 360)]
        ttl_max: u64,
        /// CODEXMESH_QUOTA_POLL_INTERVAL_SECS.
        #[arg(long, default_value_t = 60)]
        poll_secs: u64,
        #[arg(long, default_value_t = 10)]
        sample_secs: u64,
        /// RUST_LOG of the control plane.
        #[arg(long, default_value = "info")]
        rust_log: String,
    },
    /// The client surfaces through one real Envoy: Envoy CPU per translated /v1 request vs the
    /// passthrough Codex request, and WebSocket turns and frames through the gateway vs direct.
    Surface {
        /// Streamed requests per kind and round (CPU time is counted in 10 ms ticks: 2,000
        /// requests resolve 5 µs per request).
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Turns over one WebSocket, through the gateway and direct.
        #[arg(long, default_value_t = 300)]
        ws_turns: usize,
    },
}

fn default_results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// UTC `YYYYMMDDTHHMMSSZ`.
fn utc_stamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn write_results(dir: &PathBuf, name: &str, args: Value, data: Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let stamp = utc_stamp();
    let path = dir.join(format!("{name}-{stamp}.json"));
    let host_cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let doc = json!({
        "bench": name,
        "utc": stamp,
        "args": args,
        "host": {"cpus": host_cpus, "loadavg_at_end": loadavg.trim()},
        "results": data,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn main() -> Result<()> {
    // Not a test: the processes' log tails would only clutter the numbers.
    codexmesh_test_kit::proc::set_log_tails(false);
    let cli = Cli::parse();
    let (name, args, data) = match cli.cmd {
        Cmd::Seed {
            accounts,
            pools,
            prefix,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let opts = seed::Options {
                accounts,
                pools,
                prefix,
                seed: 0x5EED,
            };
            let out = runtime.block_on(seed::run(&opts))?;
            println!("{out}");
            return Ok(());
        }
        Cmd::Failover {
            accounts,
            requests,
            gap_ms,
            short_backoff_ms,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let opts = failover::Options {
                accounts,
                requests,
                gap_ms,
                short_backoff_ms,
            };
            let data = runtime.block_on(failover::run(&opts))?;
            (
                "failover",
                json!({"accounts": accounts, "requests": requests, "gap_ms": gap_ms,
                       "short_backoff_ms": short_backoff_ms}),
                data,
            )
        }
        Cmd::Surface {
            requests,
            rounds,
            ws_turns,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let data = runtime.block_on(surface_bench::run(requests, rounds, ws_turns))?;
            (
                "surface",
                json!({"requests": requests, "rounds": rounds, "ws_turns": ws_turns}),
                data,
            )
        }
        Cmd::CpLoad {
            accounts,
            minutes,
            ttl_min,
            ttl_max,
            poll_secs,
            sample_secs,
            rust_log,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let opts = cp_load::Options {
                accounts,
                minutes,
                ttl_min,
                ttl_max,
                poll_secs,
                sample_secs,
                rust_log,
            };
            let data = runtime.block_on(cp_load::run(&opts))?;
            (
                "cp-load",
                json!({"accounts": accounts, "minutes": minutes, "ttl_secs": [ttl_min, ttl_max],
                       "poll_secs": poll_secs}),
                data,
            )
        }
        Cmd::Snapshot {
            accounts,
            pools,
            budget_ms,
        } => {
            let opts = snapshot_bench::Options {
                accounts: accounts.clone(),
                pools,
                budget: Duration::from_millis(budget_ms),
            };
            let data = snapshot_bench::run(&opts)?;
            (
                "snapshot",
                json!({"accounts": accounts, "pools": pools, "budget_ms": budget_ms}),
                data,
            )
        }
        Cmd::Push {
            accounts,
            pools,
            subscribers,
            changes,
            codexmesh,
            change_poll_ms,
            change_timeout_secs,
            max_rss_mb,
            min_available_mb,
            keep,
            envoy,
            envoy_accounts,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if envoy {
                let data = runtime.block_on(envoy_bench::run(
                    envoy_accounts,
                    changes,
                    Duration::from_secs(change_timeout_secs),
                ))?;
                let path = write_results(
                    &cli.results_dir,
                    "push-envoy",
                    json!({"accounts": envoy_accounts, "changes": changes}),
                    data,
                )?;
                println!("\nresults: {}", path.display());
                return Ok(());
            }
            let opts = push::Options {
                accounts,
                pools,
                subscribers: subscribers.clone(),
                changes,
                codexmesh: codexmesh.unwrap_or_else(push::default_codexmesh),
                change_poll_ms,
                change_timeout: Duration::from_secs(change_timeout_secs),
                max_rss: max_rss_mb << 20,
                min_available: min_available_mb << 20,
                keep,
            };
            let data = runtime.block_on(push::run(&opts))?;
            (
                "push",
                json!({"accounts": accounts, "pools": pools, "subscribers": subscribers,
                       "changes": changes, "change_poll_ms": change_poll_ms}),
                data,
            )
        }
    };
    let path = write_results(&cli.results_dir, name, args, data)?;
    println!("\nresults: {}", path.display());
    Ok(())
}
