//! Failure drills under sustained load, part B (stateful risks), through real Envoy, the built
//! wasm module, `codexmesh serve` and the simulator:
//!
//! - `refresh_kills`: the control plane SIGKILLed again and again (at random moments, half of
//!   them while a token refresh is in flight at the simulator, whose refresh tokens rotate and
//!   are single-use) while clients stream: no client request fails, no rotated refresh token is
//!   lost (the simulator revoked no lineage for reuse, no account needs re-authentication, every
//!   account refreshes again afterwards).
//! - `flapping_upstream`: three accounts flap between answering, 429 and connection resets
//!   (the simulator's `flap` knob), a fourth stays healthy: failover hides every 429 and reset
//!   (all before the first byte) from the clients, and Envoy keeps serving.
//! - `sqlite_disk_full`: the control plane's SQLite database on a small tmpfs that is filled
//!   under load: writes fail with a clear error (API and log) while `serve` keeps running, the
//!   database passes `PRAGMA integrity_check` with the committed data intact, Envoy keeps
//!   serving from the last snapshot, and once the filler is deleted writes persist and
//!   snapshots reach Envoy again without a restart. Needs `mount -t tmpfs` (root); where that is
//!   refused the drill prints `DRILL sqlite_disk_full SKIPPED …` and passes.
//!
//! Each drill prints one `DRILL <name> key=value …` line (requests, failed, p50/p99 ms, …).
//! Load lasts `CODEXMESH_DRILL_SECONDS` (default per drill, a few seconds to keep CI short).
//!
//! Rules: the load is this file's own loop (concurrent clients, each a stream of Codex SSE
//! turns in its own session; a request counts as served only with status 200 and a
//! `response.completed` event); every wait and loop is bounded; processes are stopped by PID
//! (the kit's `Proc`); the tmpfs is unmounted when the drill ends, and the filler is written
//! only after checking the path is on that tmpfs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use codexmesh_test_kit::{
    import_account, turn_body, Artifacts, ControlPlane, CpEnv, Envoy, Sim, Stack, StackOptions,
    POOL,
};
use serde_json::{json, Value};

/// Clients streaming at once in every drill.
const CLIENTS: usize = 8;

fn setting(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

/// How long a drill keeps the load on: `CODEXMESH_DRILL_SECONDS`, else `default`.
fn drill_seconds(default: u64) -> Duration {
    let secs = std::env::var("CODEXMESH_DRILL_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// A small xorshift generator seeded at run time (kill moments differ per run).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7);
        Self(u64::from(nanos) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The load loop.

/// One client request's outcome.
struct Sample {
    millis: f64,
    /// `None` when served; else why not.
    failure: Option<String>,
}

/// What a load run saw.
struct LoadReport {
    requests: usize,
    failed: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Failure reasons and how often each occurred.
    reasons: BTreeMap<String, usize>,
}

impl LoadReport {
    fn figures(&self) -> String {
        format!(
            "requests={} failed={} p50_ms={:.0} p99_ms={:.0}",
            self.requests, self.failed, self.p50_ms, self.p99_ms
        )
    }
}

/// Clients streaming Codex turns through Envoy until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts `clients` clients posting turns with `key` to `url`, back to back.
    fn start(url: String, key: String, clients: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let tasks = (0..clients)
            .map(|c| {
                let (http, url, key, stop) = (http.clone(), url.clone(), key.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    // Bounded: at most this many turns per client.
                    for n in 0..100_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let session = format!("drill-{c}-{}", n % 4);
                        let started = Instant::now();
                        let failure = one_turn(&http, &url, &key, &session).await.err();
                        samples.push(Sample {
                            millis: started.elapsed().as_secs_f64() * 1000.0,
                            failure,
                        });
                    }
                    samples
                })
            })
            .collect();
        Ok(Self { stop, tasks })
    }

    /// Stops the clients (each finishes its turn in flight) and sums up.
    async fn finish(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for t in self.tasks {
            samples.extend(t.await.context("a load client panicked")?);
        }
        let mut millis: Vec<f64> = samples.iter().map(|s| s.millis).collect();
        millis.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if millis.is_empty() {
                return 0.0;
            }
            let i = ((millis.len() as f64 - 1.0) * p).round() as usize;
            millis[i.min(millis.len() - 1)]
        };
        let mut reasons = BTreeMap::new();
        for f in samples.iter().filter_map(|s| s.failure.as_ref()) {
            *reasons.entry(f.clone()).or_insert(0) += 1;
        }
        Ok(LoadReport {
            requests: samples.len(),
            failed: samples.iter().filter(|s| s.failure.is_some()).count(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            reasons,
        })
    }
}

/// One streamed turn: served when the answer is 200 and the stream completes.
async fn one_turn(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    session: &str,
) -> std::result::Result<(), String> {
    let resp = http
        .post(url)
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .header("session-id", session)
        .json(&turn_body("drill"))
        .send()
        .await
        .map_err(|e| format!("send: {}", short(&e.to_string())))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("{status} body: {}", short(&e.to_string())))?;
    if status != 200 {
        return Err(format!("{status}: {}", short(&body)));
    }
    if !body.contains("response.completed") {
        return Err(format!("200 without response.completed: {}", short(&body)));
    }
    Ok(())
}

fn short(s: &str) -> String {
    s.chars().take(160).collect()
}

fn gateway_url(envoy: &Envoy) -> String {
    envoy.url("/backend-api/codex/responses")
}

// ---------------------------------------------------------------------------------------------
// Helpers on the stack.

/// The accounts of `codexmesh status --json`, by label.
fn status_accounts(cp: &ControlPlane) -> Result<BTreeMap<String, Value>> {
    let status = cp.cli_json(&["status"])?;
    Ok(status["pools"]
        .as_array()
        .ok_or_else(|| anyhow!("no pools in {status}"))?
        .iter()
        .flat_map(|p| p["accounts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| Some((a["label"].as_str()?.to_owned(), a)))
        .collect())
}

/// The highest snapshot version the stack's Envoy (node `envoy`) acknowledged.
fn acked_version(cp: &ControlPlane) -> Result<(u64, Option<u64>)> {
    let status = cp.cli_json(&["status"])?;
    let revision = status["revision"]
        .as_u64()
        .ok_or_else(|| anyhow!("no revision in {status}"))?;
    let acked = status["envoys"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["node_id"] == "envoy"))
        .and_then(|e| e["acked_version"].as_u64());
    Ok((revision, acked))
}

/// Token-endpoint calls the simulator has not answered, that arrived in the last `within_ms`.
async fn refreshes_in_flight(sim: &Sim, within_ms: i64) -> Result<usize> {
    let now = unix_ms();
    Ok(sim
        .requests_where("path_contains=/oauth/token")
        .await?
        .iter()
        .filter(|r| r["status"].is_null())
        .filter(|r| {
            r["real_unix_ms"]
                .as_i64()
                .is_some_and(|t| now - t < within_ms)
        })
        .count())
}

// ---------------------------------------------------------------------------------------------
// (a) SIGKILL during token refreshes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_token_refreshes_loses_no_rotated_token() -> Result<()> {
    const ACCOUNTS: usize = 4;
    const MIN_KILLS: usize = 10;
    /// How long the simulator's token endpoint takes: the window a kill can land in.
    const REFRESH_DELAY_MS: i64 = 300;
    let load_for = drill_seconds(25);
    // Access tokens of 16, 18, 20 and 22 s (so the accounts refresh out of step), refreshed at
    // half their life (8 to 11 s before they lapse: more than a kill, the 2 s refresh lease a
    // killed holder leaves behind and a restart take together); the simulator's token
    // endpoint answers after 300 ms, the window a kill can land in.
    let mut stack = Stack::start_with(StackOptions {
        accounts: (0..ACCOUNTS)
            .map(|i| json!({"access_token_ttl_secs": 16 + 2 * i}))
            .collect(),
        cp_env: vec![
            setting("CODEXMESH_REFRESH_LEAD_SECS", "60"),
            setting("CODEXMESH_REFRESH_LEASE_SECS", "2"),
            setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0"),
        ],
        sim_behavior: Some(json!({"refresh_delay_ms": REFRESH_DELAY_MS, "event_delay_ms": 10})),
        ..StackOptions::default()
    })
    .await?;
    stack.sim.clear_requests().await?;
    let load = Load::start(gateway_url(&stack.envoy), stack.key.clone(), CLIENTS)?;

    let mut rng = Rng::seeded();
    let started = Instant::now();
    let (mut kills, mut kills_in_flight) = (0usize, 0usize);
    let mut down = Duration::ZERO;
    // Bounded: at most 60 kills.
    while (kills < MIN_KILLS || started.elapsed() < load_for) && kills < 60 {
        tokio::time::sleep(Duration::from_millis(1200 + rng.below(1600))).await;
        if kills % 2 == 1 {
            // Every other kill waits (up to 6 s) for a refresh in flight, then lands inside it.
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until
                && refreshes_in_flight(&stack.sim, REFRESH_DELAY_MS).await? == 0
            {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        }
        if refreshes_in_flight(&stack.sim, REFRESH_DELAY_MS + 100).await? > 0 {
            kills_in_flight += 1;
        }
        stack.cp.kill(); // SIGKILL, by PID, and reaped
        kills += 1;
        let gone = Instant::now();
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        stack.cp.start()?;
        down += gone.elapsed();
    }
    let killing = started.elapsed();
    // Load for a little longer after the last restart: the restarted control plane serves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.finish().await?;

    // The simulator's view: rotations happened, no lineage was revoked (no retired token was
    // ever presented again).
    let mut rotations = 0;
    for i in 0..ACCOUNTS {
        let acct = stack.sim.account(&stack.account_id(i)).await?;
        assert_eq!(
            acct["revoked"], false,
            "acct-{i}: lineage revoked (a retired refresh token was reused): {acct}"
        );
        rotations += acct["refresh_successes"].as_u64().unwrap_or(0);
    }
    let cut = stack
        .sim
        .requests_where("path_contains=/oauth/token")
        .await?
        .iter()
        .filter(|r| r["status"].is_null())
        .count();
    // The control plane's view: no account needs re-authentication, and each refreshes again
    // now (the CLI waits out a killed holder's lease), presenting its stored refresh token.
    let accounts = status_accounts(&stack.cp)?;
    for i in 0..ACCOUNTS {
        let label = format!("acct-{i}");
        let a = accounts
            .get(&label)
            .ok_or_else(|| anyhow!("{label} missing from status"))?;
        assert_eq!(a["state"], "active", "{label}: {a}");
        let refreshed = stack.cp.cli_json(&["account", "refresh", &label])?;
        assert_eq!(refreshed["refreshed"], true, "{label}: {refreshed}");
        let acct = stack.sim.account(&stack.account_id(i)).await?;
        assert_eq!(
            acct["revoked"], false,
            "{label} after the last refresh: {acct}"
        );
    }
    println!(
        "DRILL refresh_kills {} kills={kills} kills_during_refresh={kills_in_flight} \
         refreshes_cut={cut} rotations={rotations} lost_refresh_tokens=0 needs_reauth=0 \
         cp_down_s={:.1} seconds={:.1}",
        report.figures(),
        down.as_secs_f64(),
        killing.as_secs_f64()
    );
    assert!(kills >= MIN_KILLS, "only {kills} kills");
    assert!(
        rotations >= ACCOUNTS as u64,
        "too few refreshes to mean anything: {rotations}"
    );
    assert_eq!(
        report.failed, 0,
        "failed client requests: {:?}",
        report.reasons
    );
    assert!(report.requests > 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (b) A flapping upstream.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_upstream_is_hidden_from_clients() -> Result<()> {
    let load_for = drill_seconds(12);
    let mut stack = Stack::start_with(StackOptions {
        accounts: vec![json!({}); 4],
        cp_env: vec![setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0")],
        sim_behavior: Some(json!({"event_delay_ms": 10})),
        ..StackOptions::default()
    })
    .await?;
    // Every member may be tried once per request.
    stack.cp.cli_json(&[
        "pool",
        "set-routing",
        POOL,
        "--strategy",
        "round_robin",
        "--max-attempts",
        "4",
    ])?;
    let flapping: Vec<String> = (0..3).map(|i| stack.account_id(i)).collect();
    // acct-0..2 run one step apart through ok → 429 → reset (400 ms each); acct-3 is healthy.
    stack
        .sim
        .behavior(json!({"flap": {
            "account_ids": flapping,
            "cycle": ["ok", "rate_limited", "reset"],
            "step_ms": 400,
        }}))
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the routing snapshot lands
    stack.sim.clear_requests().await?;
    let started = Instant::now();
    let load = Load::start(gateway_url(&stack.envoy), stack.key.clone(), CLIENTS)?;
    tokio::time::sleep(load_for).await;
    let report = load.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    stack.sim.behavior(json!({"flap": null})).await?;

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut flapper_served = 0;
    for t in stack.sim.turn_requests().await? {
        let status = t["status"].to_string();
        if status == "200" && flapping.iter().any(|f| t["account_id"] == f.as_str()) {
            flapper_served += 1;
        }
        *by_status.entry(status).or_insert(0) += 1;
    }
    let count = |s: &str| by_status.get(s).copied().unwrap_or(0);
    let attempts: usize = by_status.values().sum();
    // Envoy's own count of upstream connections the simulator reset under a request.
    let (code, stats) = codexmesh_test_kit::http_get(
        &stack.envoy.admin.to_string(),
        "/stats?filter=upstream_cx_destroy_remote_with_active_rq",
    )?;
    assert_eq!(code, 200, "{stats}");
    let envoy_resets: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cluster.codexmesh_upstream."))
        .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
        .sum();
    println!(
        "DRILL flapping_upstream {} upstream_attempts={attempts} upstream_429={} \
         upstream_resets={} envoy_upstream_resets={envoy_resets} \
         served_by_flapping={flapper_served} seconds={seconds:.1}",
        report.figures(),
        count("429"),
        count("502"),
    );
    assert!(count("429") >= 1, "no 429 was hit: {by_status:?}");
    assert!(count("502") >= 1, "no reset was hit: {by_status:?}");
    assert!(
        envoy_resets >= 1,
        "Envoy saw no upstream connection reset under a request: {stats}"
    );
    assert_eq!(
        report.failed, 0,
        "failed client requests: {:?}",
        report.reasons
    );
    // Envoy keeps serving (its process is the one started, and it answers).
    assert!(stack.envoy.proc.is_running(), "Envoy exited");
    let (status, body) = stack.turn(&stack.key).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (c) The SQLite disk full.

/// A tmpfs mounted on a fresh directory, unmounted (lazily, by path) when dropped.
struct SmallDisk {
    dir: codexmesh_test_kit::leaks::TestDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `16m`); `Err` with mount's words when refused.
    fn mount(size: &str) -> Result<Self> {
        let dir = codexmesh_test_kit::test_dir("codexmesh-small-disk-")?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let disk = Self { dir };
        if !disk.is_tmpfs()? {
            bail!("{} is not a tmpfs after mounting", disk.path().display());
        }
        Ok(disk)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the directory is a tmpfs mount point now (`/proc/self/mounts`).
    fn is_tmpfs(&self) -> Result<bool> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        let want = self.path().to_string_lossy().into_owned();
        Ok(mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next(), f.next(), f.next());
            at == Some(want.as_str()) && kind == Some("tmpfs")
        }))
    }

    /// Fills the disk with `name` until the filesystem refuses more; returns the bytes written.
    fn fill(&self, name: &str) -> Result<u64> {
        use std::io::Write as _;
        if !self.is_tmpfs()? {
            bail!(
                "refusing to fill {}: not the drill's tmpfs",
                self.path().display()
            );
        }
        let mut file = std::fs::File::create(self.path().join(name))?;
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 512] {
            let buf = vec![0x5au8; chunk];
            // Bounded: the tmpfs is small.
            for _ in 0..100_000 {
                match file.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let _ = file.sync_all();
        Ok(written)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A stack like [`Stack::start_with`] whose control-plane data dir (SQLite database and master
/// key) is `data_dir`; logs stay in the stack's own directory.
async fn stack_with_data_dir(data_dir: PathBuf, accounts: usize) -> Result<Stack> {
    let dir = codexmesh_test_kit::test_dir("codexmesh-e2e-")?;
    let art = Artifacts::locate()?;
    let sim = Sim::spawn(&art, dir.path())?;
    let mut env = CpEnv::new(
        dir.path(),
        &sim,
        &art,
        vec![setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0")],
    );
    env.store = format!("sqlite://{}", data_dir.join("codexmesh.db").display());
    env.data_dir = data_dir;
    sim.behavior(json!({"event_delay_ms": 10})).await?;
    let mut cp = ControlPlane::new(&art, env, dir.path());
    cp.cli_json(&["pool", "create", POOL])?;
    let mut imported = Vec::new();
    for i in 0..accounts {
        imported.push(
            import_account(&sim, &cp, dir.path(), POOL, &format!("acct-{i}"), json!({})).await?,
        );
    }
    let key = cp.cli_json(&["key", "create", "--pool", POOL])?["key"]
        .as_str()
        .ok_or_else(|| anyhow!("key create printed no key"))?
        .to_owned();
    let grpc = cp.start()?;
    let push = cp.env.push_token.clone();
    let envoy = Envoy::start(&art, &cp, grpc, &push, dir.path(), "envoy").await?;
    let stack = Stack {
        dir,
        art,
        sim,
        cp,
        envoy,
        key,
        accounts: imported,
        http: reqwest::Client::new(),
    };
    stack
        .wait_until_serving(&stack.key.clone(), Duration::from_secs(20))
        .await?;
    Ok(stack)
}

/// `POST /api/v1/pools` on the running server: (status, body).
async fn api_create_pool(stack: &Stack, token: &str, name: &str) -> Result<(u16, Value)> {
    let admin = stack
        .cp
        .admin_addr
        .ok_or_else(|| anyhow!("serve has no admin address"))?;
    let resp = stack
        .http
        .post(format!("http://{admin}/api/v1/pools"))
        .bearer_auth(token)
        .json(&json!({ "name": name }))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// `PRAGMA integrity_check` of the SQLite file (a separate connection, as an operator would).
async fn integrity_check(db: &Path) -> Result<String> {
    use sqlx::Connection as _;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(false);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    Ok(rows.join("; "))
}

/// Pool names as the CLI reads them from the store.
fn pool_names(cp: &ControlPlane) -> Result<Vec<String>> {
    let listed = cp.cli_json(&["pool", "list"])?;
    let items = listed
        .as_array()
        .cloned()
        .or_else(|| listed["pools"].as_array().cloned())
        .ok_or_else(|| anyhow!("pool list: {listed}"))?;
    Ok(items
        .iter()
        .filter_map(|p| {
            p["name"]
                .as_str()
                .or_else(|| p["pool"]["name"].as_str())
                .map(str::to_owned)
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_disk_fails_writes_clearly_and_recovers() -> Result<()> {
    let full_for = drill_seconds(8);
    let disk = match SmallDisk::mount("16m") {
        Ok(d) => d,
        Err(e) => {
            println!("DRILL sqlite_disk_full SKIPPED ({e})");
            return Ok(());
        }
    };
    let data_dir = disk.path().join("data");
    let db = data_dir.join("codexmesh.db");
    let mut stack = stack_with_data_dir(data_dir, 2).await?;
    let token = stack.cp.cli_json(&[
        "operator", "token", "create", "--label", "drill", "--role", "owner",
    ])?["secret"]
        .as_str()
        .ok_or_else(|| anyhow!("no token secret"))?
        .to_owned();
    // Committed before the disk fills: must survive it.
    stack.cp.cli_json(&["pool", "create", "before-full"])?;
    let pid = stack.cp.proc()?.pid();

    let load = Load::start(gateway_url(&stack.envoy), stack.key.clone(), CLIENTS)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let filled_at = Instant::now();
    let filler = disk.fill("filler")?;

    // Writes until one is refused (a write may still fit in pages SQLite already holds).
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..400 {
        let (status, body) = api_create_pool(&stack, &token, &format!("full-{i}")).await?;
        if status == 201 {
            accepted += 1;
            continue;
        }
        refused = Some((status, body));
        break;
    }
    let (refused_status, refused_body) =
        refused.ok_or_else(|| anyhow!("400 writes on a full disk were all accepted"))?;
    let message = refused_body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        refused_status, 503,
        "a write refused for a full disk: {refused_body}"
    );
    assert!(
        message.contains("disk is full"),
        "the API says why: {refused_body}"
    );
    let cli = stack.cp.cli(&["pool", "create", "during-full"])?;
    assert_ne!(cli.code, 0, "the CLI wrote on a full disk: {cli:?}");
    let cli_error = cli.stderr.trim().to_owned();

    // Full for a while under load: serve keeps running (same process), Envoy keeps serving.
    tokio::time::sleep(full_for).await;
    let log = stack.cp.proc()?.log_text();
    let full_lines = log
        .lines()
        .filter(|l| l.contains("disk is full") || l.contains("disk full"))
        .count();
    assert!(
        full_lines >= 1,
        "no clear disk-full error in the control plane's log:\n{}",
        codexmesh_test_kit::tail(&log)
    );
    assert!(
        !log.contains("panicked"),
        "the control plane panicked:\n{}",
        codexmesh_test_kit::tail(&log)
    );
    let still_running = stack
        .cp
        .serve
        .as_mut()
        .map(|s| s.proc.is_running())
        .unwrap_or(false);
    assert!(
        still_running,
        "serve exited on a full disk:\n{}",
        codexmesh_test_kit::tail(&log)
    );
    assert_eq!(stack.cp.proc()?.pid(), pid, "serve was restarted");
    let (status, body) = stack.turn(&stack.key).await?;
    assert_eq!(status, 200, "Envoy stopped serving on a full disk: {body}");
    let integrity_full = integrity_check(&db).await?;
    assert_eq!(integrity_full, "ok", "integrity while full");
    let pools = pool_names(&stack.cp)?;
    assert!(
        pools.iter().any(|p| p == "before-full") && pools.iter().any(|p| p == POOL),
        "committed data lost: {pools:?}"
    );
    assert!(!pools.iter().any(|p| p == "during-full"), "{pools:?}");

    // A supervisor restarting serve on the full disk gets a server that comes up and serves
    // snapshots (reads work), not a crash loop.
    stack.cp.kill();
    stack.cp.start()?;
    let restarted_pid = stack.cp.proc()?.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted_running = stack
        .cp
        .serve
        .as_mut()
        .map(|s| s.proc.is_running())
        .unwrap_or(false);
    assert!(
        restarted_running,
        "serve restarted on a full disk exited:\n{}",
        codexmesh_test_kit::tail(&stack.cp.proc()?.log_text())
    );
    let (status, body) = stack.turn(&stack.key).await?;
    assert_eq!(status, 200, "after the restart on a full disk: {body}");

    // Space returns: the server recovers by itself.
    std::fs::remove_file(disk.path().join("filler"))?;
    let freed = Instant::now();
    let mut recovered = None;
    // Bounded: 30 s.
    while freed.elapsed() < Duration::from_secs(30) {
        let (status, body) = api_create_pool(&stack, &token, "after-full").await?;
        if status == 201 {
            recovered = Some(freed.elapsed());
            break;
        }
        assert!(status >= 500, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = recovered.ok_or_else(|| anyhow!("writes did not recover within 30 s"))?;
    // A new key (a new snapshot) reaches Envoy and serves.
    let key = stack.cp.cli_json(&["key", "create", "--pool", POOL])?["key"]
        .as_str()
        .ok_or_else(|| anyhow!("no key"))?
        .to_owned();
    let push = stack
        .wait_until_serving(&key, Duration::from_secs(20))
        .await?;
    let (revision, acked) = acked_version(&stack.cp)?;
    assert!(acked.is_some(), "Envoy acknowledged nothing");
    assert_eq!(
        stack.cp.proc()?.pid(),
        restarted_pid,
        "serve restarted itself"
    );
    let report = load.finish().await?;
    let full_seconds = filled_at.elapsed().as_secs_f64() - freed.elapsed().as_secs_f64();
    let integrity_after = integrity_check(&db).await?;
    assert_eq!(integrity_after, "ok", "integrity after recovery");
    let pools = pool_names(&stack.cp)?;
    assert!(
        pools.iter().any(|p| p == "after-full") && pools.iter().any(|p| p == "before-full"),
        "{pools:?}"
    );
    println!(
        "DRILL sqlite_disk_full {} filler_mb={:.1} writes_accepted_while_full={accepted} \
         refused_status={refused_status} full_log_lines={full_lines} full_s={full_seconds:.1} \
         recovery_s={:.2} snapshot_push_s={:.2} revision={revision} acked={} \
         integrity=ok restarted_on_full_disk=ok",
        report.figures(),
        filler as f64 / 1_048_576.0,
        recovery.as_secs_f64(),
        push.as_secs_f64(),
        acked.unwrap_or(0),
    );
    println!("DRILL sqlite_disk_full api_error={message:?} cli_error={cli_error:?}");
    assert_eq!(
        report.failed, 0,
        "failed client requests: {:?}",
        report.reasons
    );
    drop(stack);
    drop(disk);
    Ok(())
}
