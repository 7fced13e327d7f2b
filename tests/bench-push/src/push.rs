//! `push`: the real control plane, N accounts in SQLite, S subscribers, C changes; how long each
//! change takes to reach every subscriber, and what it costs the control plane.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use codexmesh_engine::config::Settings;
use codexmesh_model::util::now_ms;
use codexmesh_proto::v1 as pb;
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::{Actor, Store};
use serde_json::{json, Value};

use crate::fill;
use crate::gen::{self, Rng};
use crate::procstat::{self, ProcSample};
use crate::stats::{fmt_bytes, fmt_ms, summarize};
use crate::subscriber::{self, Kind, Shared};

pub struct Options {
    pub accounts: usize,
    pub pools: usize,
    pub subscribers: Vec<usize>,
    pub changes: usize,
    pub codexmesh: PathBuf,
    /// `CODEXMESH_CHANGE_POLL_MS` for the server (None: the product default, `Settings::builtin()`'s).
    pub change_poll_ms: Option<u64>,
    pub change_timeout: Duration,
    /// The control plane is killed when its RSS passes this, or when the machine's
    /// MemAvailable drops under `min_available`: the machine is shared.
    pub max_rss: u64,
    pub min_available: u64,
    pub keep: bool,
}

/// The first binary that exists: release, else debug.
pub fn default_codexmesh() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let release = root.join("target/release/codexmesh");
    if release.exists() {
        release
    } else {
        root.join("target/debug/codexmesh")
    }
}

struct Populated {
    account_ids: Vec<String>,
    pool_names: Vec<String>,
    timings: Value,
}

/// Writes pools, keys and accounts (sealed tokens, quota) through the store API, one
/// transaction per row as the CLI would, but without a process per row.
async fn populate(store: &Store, key: &MasterKey, opts: &Options) -> Result<Populated> {
    let actor = Actor::new("bench".to_owned());
    let mut rng = Rng::new(0xBE4C_0001);
    let now_unix = now_ms() / 1000;
    let t = Instant::now();
    let pools = opts.pools.max(1);
    let mut pool_names = Vec::new();
    for p in 0..pools {
        let name = format!("bench-{p:03}");
        store
            .create_pool(&actor, &name)
            .await
            .with_context(|| format!("create pool {name}"))?;
        pool_names.push(name);
    }
    let pools_ms = t.elapsed().as_secs_f64() * 1000.0;

    let t = Instant::now();
    let n_keys = gen::key_count(opts.accounts, pools);
    for k in 0..n_keys {
        fill::create_key(store, &actor, &pool_names[k % pools], &mut rng).await?;
    }
    let keys_ms = t.elapsed().as_secs_f64() * 1000.0;

    let t = Instant::now();
    let mut account_ids = Vec::with_capacity(opts.accounts);
    for n in 0..opts.accounts {
        let login = gen::login(&mut rng, n, now_unix);
        let email = login.email.clone();
        let creds = fill::credentials(login);
        let done = store
            .import_account(&actor, &pool_names[n % pools], Some(&email), &creds, key)
            .await
            .with_context(|| format!("import account {n}"))?;
        account_ids.push(done.account.id);
        if (n + 1) % 2000 == 0 {
            println!(
                "  imported {}/{} accounts ({:.1} s)",
                n + 1,
                opts.accounts,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let accounts_ms = t.elapsed().as_secs_f64() * 1000.0;

    let t = Instant::now();
    fill::write_quota_rows(store, &account_ids, &mut rng, now_unix, now_ms()).await?;
    let quota_ms = t.elapsed().as_secs_f64() * 1000.0;
    let rows_per_sec = opts.accounts as f64 / (accounts_ms / 1000.0).max(1e-9);
    println!(
        "populated: {} pools ({:.0} ms), {} keys ({:.0} ms), {} accounts ({:.1} s, {:.0}/s), quota ({:.1} s)",
        pools,
        pools_ms,
        n_keys,
        keys_ms,
        opts.accounts,
        accounts_ms / 1000.0,
        rows_per_sec,
        quota_ms / 1000.0
    );
    Ok(Populated {
        account_ids,
        pool_names,
        timings: json!({
            "pools": pools, "keys": n_keys, "accounts": opts.accounts,
            "pools_ms": pools_ms, "keys_ms": keys_ms, "accounts_ms": accounts_ms,
            "accounts_per_sec": rows_per_sec, "quota_ms": quota_ms,
        }),
    })
}

const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// What one rebuild costs, measured in this process with the control plane's own code: the
/// store read (`Store::snapshot_data`) and `snapshot::build` (opens every sealed token).
async fn measure_rebuild(store: &Store, key: &MasterKey) -> Result<Value> {
    let mut read_ms = Vec::new();
    let mut build_ms = Vec::new();
    let mut encode_ms = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..5 {
        let t = Instant::now();
        let data = store.snapshot_data().await.context("snapshot_data")?;
        read_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let snap = codexmesh_engine::snapshot::build(&data, key, "bench");
        build_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        bytes = prost::Message::encode_to_vec(&snap).len();
        encode_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (r, b, e) = (
        summarize(&read_ms),
        summarize(&build_ms),
        summarize(&encode_ms),
    );
    println!(
        "one rebuild, in-process (median of 5): store read {} + build {} (+ one encode {}, {})",
        fmt_ms(r.p50),
        fmt_ms(b.p50),
        fmt_ms(e.p50),
        fmt_bytes(bytes as f64)
    );
    Ok(
        json!({"store_read_ms": r.json(), "build_ms": b.json(), "encode_ms": e.json(),
              "encoded_bytes": bytes}),
    )
}

/// A running `codexmesh serve`, killed by PID when dropped.
struct ControlPlane {
    child: Child,
    grpc: SocketAddr,
    log: PathBuf,
}

impl ControlPlane {
    fn start(
        bin: &Path,
        dir: &Path,
        store_url: &str,
        push_token: &str,
        master_key: &MasterKey,
        opts: &Options,
        run: usize,
    ) -> Result<Self> {
        let log = dir.join(format!("serve-{run}.log"));
        let stderr = std::fs::File::create(&log).context("create serve log")?;
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CODEXMESH_") {
                cmd.env_remove(k);
            }
        }
        // Nothing reaches the Internet: outbound URLs point at a closed loopback port.
        let nowhere = "http://127.0.0.1:9";
        cmd.current_dir(dir)
            .env("CODEXMESH_STORE", store_url)
            .env("CODEXMESH_DATA_DIR", dir.join("data"))
            .env("CODEXMESH_GRPC_LISTEN", "127.0.0.1:0")
            .env("CODEXMESH_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CODEXMESH_PUSH_TOKEN", push_token)
            .env("CODEXMESH_MASTER_KEY", master_key.to_base64())
            .env("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0")
            .env(
                "CODEXMESH_UPSTREAM_BASE_URL",
                format!("{nowhere}/backend-api"),
            )
            .env(
                "CODEXMESH_OAUTH_TOKEN_URL",
                format!("{nowhere}/oauth/token"),
            )
            .env("CODEXMESH_AUTH_BASE_URL", nowhere)
            .env("RUST_LOG", "warn")
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(ms) = opts.change_poll_ms {
            cmd.env("CODEXMESH_CHANGE_POLL_MS", ms.to_string());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("codexmesh serving ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut cp = Self {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            anyhow!(
                "serve printed no `codexmesh serving` line within 60 s; log:\n{}",
                cp.log_tail(30)
            )
        })?;
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .ok_or_else(|| anyhow!("no grpc= in {line:?}"))?;
        cp.grpc = grpc
            .parse()
            .with_context(|| format!("grpc address {grpc}"))?;
        Ok(cp)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("serve did not stop within 15 s of SIGTERM: killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Samples the control plane every 50 ms: peak RSS, and a kill switch for memory.
struct Monitor {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    aborted: Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(pid: u32, max_rss: u64, min_available: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let aborted = Arc::new(std::sync::Mutex::new(None));
        let (s, p, a) = (stop.clone(), peak_rss.clone(), aborted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let Ok(sample) = procstat::sample(pid) else {
                    break; // gone
                };
                p.fetch_max(sample.rss_bytes, Ordering::AcqRel);
                let avail = procstat::mem_available().unwrap_or(u64::MAX);
                let why = if sample.rss_bytes > max_rss {
                    Some(format!(
                        "control plane RSS {} passed the cap {}",
                        fmt_bytes(sample.rss_bytes as f64),
                        fmt_bytes(max_rss as f64)
                    ))
                } else if avail < min_available {
                    Some(format!(
                        "machine MemAvailable {} fell under {} (control plane RSS {})",
                        fmt_bytes(avail as f64),
                        fmt_bytes(min_available as f64),
                        fmt_bytes(sample.rss_bytes as f64)
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    eprintln!("ABORT: {why}: killing the control plane (pid {pid})");
                    signal(pid, libc::SIGKILL);
                    if let Ok(mut slot) = a.lock() {
                        *slot = Some(why);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            peak_rss,
            aborted,
            thread: Some(thread),
        }
    }

    fn aborted(&self) -> Option<String> {
        self.aborted.lock().ok().and_then(|a| a.clone())
    }

    fn finish(mut self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.peak_rss.load(Ordering::Acquire), self.aborted())
    }
}

/// One full tonic client reads the first snapshot: checks the table has every account (and
/// that a large snapshot passes tonic's 4 MB default decode limit only when raised).
async fn verify_with_tonic(addr: SocketAddr, token: &str, accounts: usize) -> Result<Value> {
    use codexmesh_proto::v1::mesh_client::MeshClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("tonic connect")?;
    let mut client = MeshClient::new(channel).max_decoding_message_size(1 << 30);
    let mut req = tonic::Request::new(pb::SubscribeRequest {
        node_id: "bench-verify".to_owned(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("token is not a header value"))?,
    );
    let t = Instant::now();
    let mut stream = client
        .subscribe(req)
        .await
        .context("Subscribe")?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .map_err(|_| anyhow!("no first message within 60 s"))?
        .context("first message")?
        .ok_or_else(|| anyhow!("stream ended before the first snapshot"))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let Some(pb::subscribe_response::Kind::Snapshot(snap)) = first.kind else {
        return Err(anyhow!("first message is not a snapshot"));
    };
    let bytes = prost::Message::encoded_len(&snap);
    let index = codexmesh_filter_core::snapshot::SnapshotIndex::new(snap);
    let n: usize = index.pools().iter().map(|p| p.accounts.len()).sum();
    let keys: usize = index.pools().iter().map(|p| p.keys.len()).sum();
    let tokens_ok = index
        .pools()
        .iter()
        .flat_map(|p| p.accounts.iter())
        .all(|a| a.access_token.len() >= 1000 && a.quota.is_some());
    if n != accounts || !tokens_ok {
        return Err(anyhow!(
            "first snapshot has {n} accounts (want {accounts}); all tokens ≥1 KB with quota: {tokens_ok}"
        ));
    }
    println!(
        "verified with tonic: version {} has {n} accounts, {keys} keys, {} encoded; first snapshot in {}",
        index.version(),
        fmt_bytes(bytes as f64),
        fmt_ms(ms)
    );
    Ok(
        json!({"version": index.version(), "accounts": n, "keys": keys, "encoded_bytes": bytes,
              "first_snapshot_ms": ms}),
    )
}

enum Change {
    Pause(String),
    Resume(String),
    CreateKey(String),
}

impl Change {
    fn name(&self) -> &'static str {
        match self {
            Self::Pause(_) => "pause",
            Self::Resume(_) => "resume",
            Self::CreateKey(_) => "key_create",
        }
    }
}

/// Change `i`: pause an account, resume it, create a key; repeat with the next account.
/// The control plane's built-in `change_poll_ms`.
fn default_change_poll_ms() -> Result<u64> {
    let poll = Settings::builtin()?.change_poll;
    Ok(u64::try_from(poll.as_millis())?)
}

fn change_for(i: usize, pop: &Populated) -> Change {
    let round = i / 3;
    let account = pop.account_ids[(round * 7919) % pop.account_ids.len()].clone();
    match i % 3 {
        0 => Change::Pause(account),
        1 => Change::Resume(account),
        _ => Change::CreateKey(pop.pool_names[round % pop.pool_names.len()].clone()),
    }
}

async fn apply(store: &Store, change: &Change, rng: &mut Rng) -> Result<()> {
    let actor = Actor::new("bench".to_owned());
    match change {
        Change::Pause(id) => {
            store.set_account_paused(&actor, id, true).await?;
        }
        Change::Resume(id) => {
            store.set_account_paused(&actor, id, false).await?;
        }
        Change::CreateKey(pool) => {
            let raw = gen::raw_key(rng);
            let hash = codexmesh_model::keys::hash_key(&raw);
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            store.create_key(&actor, pool, None, false, &hex).await?;
        }
    }
    Ok(())
}

struct Committed {
    revision: u64,
    at: Instant,
    kind: &'static str,
    commit_ms: f64,
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    opts: &Options,
    subscribers: usize,
    run: usize,
    dir: &Path,
    store_url: &str,
    store: &Store,
    token: &str,
    master_key: &MasterKey,
    pop: &Populated,
    rng: &mut Rng,
) -> Result<Value> {
    println!(
        "\n== {subscribers} subscriber(s), {} changes ==",
        opts.changes
    );
    let t_start = Instant::now();
    let mut cp = ControlPlane::start(
        &opts.codexmesh,
        dir,
        store_url,
        token,
        master_key,
        opts,
        run,
    )?;
    let start_ms = t_start.elapsed().as_secs_f64() * 1000.0;
    let pid = cp.pid();
    let monitor = Monitor::start(pid, opts.max_rss, opts.min_available);
    // Background cost with nobody subscribed and nothing changing (the refresh scheduler
    // rescans every account every 5 s): two rescans' worth.
    let idle = procstat::sample(pid)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_end = procstat::sample(pid)?;
    let idle_cpu = (idle_end.cpu_secs - idle.cpu_secs) / IDLE_WINDOW.as_secs_f64();
    println!(
        "control plane idle (no subscribers, no changes): {:.1} % of a core over {:?}",
        idle_cpu * 100.0,
        IDLE_WINDOW
    );
    println!(
        "control plane pid {pid} on {} up in {} (RSS {})",
        cp.grpc,
        fmt_ms(start_ms),
        fmt_bytes(idle.rss_bytes as f64)
    );
    let result = drive(
        opts,
        subscribers,
        &cp,
        &monitor,
        idle.rss_bytes,
        store,
        token,
        pop,
        rng,
    )
    .await;
    let after_stop = procstat::sample(pid).ok();
    let (peak_rss, aborted) = monitor.finish();
    let hwm = after_stop.map_or(0, |s| s.hwm_bytes);
    let log_tail = cp.log_tail(15);
    cp.stop()?;
    let mut out = match result {
        Ok(v) => v,
        Err(e) => {
            let why = aborted.clone().unwrap_or_else(|| format!("{e:#}"));
            println!("run failed: {why}");
            if !log_tail.is_empty() {
                println!("control plane log (tail):\n{log_tail}");
            }
            json!({"error": why})
        }
    };
    if let Some(o) = out.as_object_mut() {
        o.insert("subscribers".into(), json!(subscribers));
        o.insert("serve_start_ms".into(), json!(start_ms));
        o.insert("idle_rss_bytes".into(), json!(idle.rss_bytes));
        o.insert("idle_cpu_cores".into(), json!(idle_cpu));
        o.insert("peak_rss_bytes_sampled".into(), json!(peak_rss));
        o.insert("peak_rss_bytes_vmhwm".into(), json!(hwm));
        o.insert("aborted".into(), json!(aborted));
    }
    println!(
        "control plane RSS: idle {}, peak {} (VmHWM {})",
        fmt_bytes(idle.rss_bytes as f64),
        fmt_bytes(peak_rss as f64),
        fmt_bytes(hwm as f64)
    );
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    opts: &Options,
    subscribers: usize,
    cp: &ControlPlane,
    monitor: &Monitor,
    idle_rss: u64,
    store: &Store,
    token: &str,
    pop: &Populated,
    rng: &mut Rng,
) -> Result<Value> {
    let pid = cp.pid();
    let verify = verify_with_tonic(cp.grpc, token, opts.accounts).await?;

    // Connect in batches; each batch waits for its initial snapshots, so the connect burst does
    // not become the measurement.
    let t_connect = Instant::now();
    let mut subs: Vec<(Arc<Shared>, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut initial_ms = Vec::new();
    let batch = 50usize;
    let mut next_report = 100usize;
    while subs.len() < subscribers {
        if let Some(why) = monitor.aborted() {
            return Err(anyhow!(
                "{why} (while connecting: {} of {subscribers} subscribers had their initial snapshot)",
                subs.len()
            ));
        }
        if subs.len() >= next_report {
            next_report += 100;
            let rss = procstat::sample(pid).map_or(0, |s| s.rss_bytes);
            println!(
                "  {} subscribers connected ({:.1} s), control plane RSS {}",
                subs.len(),
                t_connect.elapsed().as_secs_f64(),
                fmt_bytes(rss as f64)
            );
        }
        let n = batch.min(subscribers - subs.len());
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let id = subs.len() + i;
            let addr = cp.grpc;
            let token = token.to_owned();
            set.spawn(async move {
                let shared = Arc::new(Shared::default());
                let t = Instant::now();
                let task =
                    subscriber::subscribe(addr, &token, format!("bench-{id}"), shared.clone())
                        .await?;
                let deadline = t + Duration::from_secs(120);
                while shared.version.load(Ordering::Acquire) == 0 {
                    if shared.ended.load(Ordering::Acquire) || Instant::now() > deadline {
                        let err = shared.error.lock().ok().and_then(|e| e.clone());
                        return Err(anyhow!(
                            "subscriber {id}: no initial snapshot ({})",
                            err.unwrap_or_else(|| "timeout 120 s".to_owned())
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok::<_, anyhow::Error>((shared, task, t.elapsed().as_secs_f64() * 1000.0))
            });
        }
        while let Some(joined) = set.join_next().await {
            let (shared, task, ms) = joined.context("subscriber task")??;
            initial_ms.push(ms);
            subs.push((shared, task));
        }
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    let initial = summarize(&initial_ms);
    println!(
        "{} subscribers connected in {connect_s:.1} s; initial snapshot per subscriber (batches of {batch}): p50 {} p99 {}",
        subs.len(),
        fmt_ms(initial.p50),
        fmt_ms(initial.p99)
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::sample(pid)?;
    println!(
        "control plane RSS after connecting (settled): {} ({} per subscriber over idle)",
        fmt_bytes(before.rss_bytes as f64),
        fmt_bytes(before.rss_bytes.saturating_sub(idle_rss) as f64 / subs.len().max(1) as f64)
    );
    let phase_start = Instant::now();
    let mut committed = Vec::new();
    let mut timeouts = 0usize;
    for i in 0..opts.changes {
        if let Some(why) = monitor.aborted() {
            return Err(anyhow!("{why} (after {i} changes)"));
        }
        // Land changes at random points of the server's poll cycle.
        let poll = match opts.change_poll_ms {
            Some(ms) => ms,
            None => default_change_poll_ms()?,
        };
        tokio::time::sleep(Duration::from_millis(rng.range(20, 20 + poll))).await;
        let change = change_for(i, pop);
        let t0 = Instant::now();
        apply(store, &change, rng)
            .await
            .with_context(|| format!("change {i} ({})", change.name()))?;
        let at = Instant::now();
        // Read after the commit: at least this change's revision (equal when nobody else wrote).
        let revision = u64::try_from(store.revision().await?).unwrap_or(0);
        committed.push(Committed {
            revision,
            at,
            kind: change.name(),
            commit_ms: (at - t0).as_secs_f64() * 1000.0,
        });
        let deadline = at + opts.change_timeout;
        loop {
            let behind = subs
                .iter()
                .filter(|(s, _)| {
                    !s.ended.load(Ordering::Acquire) && s.version.load(Ordering::Acquire) < revision
                })
                .count();
            if behind == 0 {
                break;
            }
            if Instant::now() > deadline {
                timeouts += 1;
                println!(
                    "change {i}: {behind} subscriber(s) still behind revision {revision} after {:?}",
                    opts.change_timeout
                );
                break;
            }
            if let Some(why) = monitor.aborted() {
                return Err(anyhow!("{why} (during change {i})"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Let stragglers' messages finish before reading the counters.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let phase = phase_start.elapsed().as_secs_f64();
    let after: ProcSample = procstat::sample(pid)?;

    // Latency per (change, subscriber): first snapshot with version >= the change's revision.
    let logs: Vec<_> = subs.iter().map(|(s, _)| s.log()).collect();
    let mut done_ms = Vec::new();
    let mut first_byte_ms = Vec::new();
    let mut missing = 0usize;
    let mut per_change_max = Vec::new();
    for c in &committed {
        let mut worst = 0f64;
        for log in &logs {
            match log
                .iter()
                .find(|r| r.kind == Kind::Snapshot && r.version >= c.revision && r.done >= c.at)
            {
                Some(r) => {
                    let d = (r.done - c.at).as_secs_f64() * 1000.0;
                    worst = worst.max(d);
                    done_ms.push(d);
                    first_byte_ms
                        .push(r.first_byte.saturating_duration_since(c.at).as_secs_f64() * 1000.0);
                }
                None => missing += 1,
            }
        }
        per_change_max.push(worst);
    }
    let phase_from = phase_start;
    let snap_msgs: Vec<_> = logs
        .iter()
        .flat_map(|l| l.iter())
        .filter(|r| r.kind == Kind::Snapshot && r.done >= phase_from)
        .collect();
    let bytes_received: u64 = snap_msgs.iter().map(|r| r.bytes).sum();
    let changes = committed.len().max(1) as f64;
    let cpu_per_change = (after.cpu_secs - before.cpu_secs) / changes;
    let bytes_per_change = bytes_received as f64 / changes;
    let wchar_per_change = after.wchar.saturating_sub(before.wchar) as f64 / changes;
    let snapshots_per_subscriber = snap_msgs.len() as f64 / subs.len().max(1) as f64;
    let ended = subs
        .iter()
        .filter(|(s, _)| s.ended.load(Ordering::Acquire))
        .count();
    let errors: Vec<String> = subs
        .iter()
        .filter_map(|(s, _)| s.error.lock().ok().and_then(|e| e.clone()))
        .take(5)
        .collect();
    for (_, task) in &subs {
        task.abort();
    }
    let done = summarize(&done_ms);
    let first = summarize(&first_byte_ms);
    let worst = summarize(&per_change_max);
    let commit = summarize(&committed.iter().map(|c| c.commit_ms).collect::<Vec<_>>());
    println!(
        "change → snapshot fully received, per (change, subscriber) n={}: p50 {} p90 {} p99 {} max {}",
        done.n,
        fmt_ms(done.p50),
        fmt_ms(done.p90),
        fmt_ms(done.p99),
        fmt_ms(done.max)
    );
    println!(
        "change → first byte of that snapshot: p50 {} p99 {}; change → LAST subscriber has it: p50 {} p99 {}",
        fmt_ms(first.p50),
        fmt_ms(first.p99),
        fmt_ms(worst.p50),
        fmt_ms(worst.p99)
    );
    println!(
        "control plane per change: CPU {} (utime+stime), bytes sent {} (sum of encoded snapshot \
         messages the subscribers received; /proc wchar says {}), {:.2} snapshots/subscriber/change",
        fmt_ms(cpu_per_change * 1000.0),
        fmt_bytes(bytes_per_change),
        fmt_bytes(wchar_per_change),
        snapshots_per_subscriber / changes
    );
    println!(
        "store commit of a change: p50 {}; phase {phase:.1} s; missing {missing}, timeouts {timeouts}, streams ended {ended}",
        fmt_ms(commit.p50)
    );
    for e in &errors {
        println!("  subscriber error: {e}");
    }
    Ok(json!({
        "verify": verify,
        "connect_secs": connect_s,
        "rss_after_connect_bytes": before.rss_bytes,
        "initial_snapshot_ms": initial.json(),
        "changes": committed.len(),
        "change_kinds": committed.iter().map(|c| c.kind).collect::<Vec<_>>(),
        "latency_done_ms": done.json(),
        "latency_first_byte_ms": first.json(),
        "latency_last_subscriber_ms": worst.json(),
        "commit_ms": commit.json(),
        "cpu_secs_per_change": cpu_per_change,
        "bytes_per_change": bytes_per_change,
        "bytes_per_change_source": "sum of gRPC message lengths of the snapshots the subscribers received during the change phase",
        "wchar_bytes_per_change": wchar_per_change,
        "snapshots_per_subscriber_per_change": snapshots_per_subscriber / changes,
        "missing": missing,
        "timeouts": timeouts,
        "streams_ended": ended,
        "subscriber_errors": errors,
        "phase_secs": phase,
    }))
}

pub async fn run(opts: &Options) -> Result<Value> {
    let nofile = procstat::raise_nofile()?;
    if let Some(&max) = opts.subscribers.iter().max() {
        if (max as u64) * 2 + 100 > nofile {
            return Err(anyhow!(
                "open-file limit {nofile} is too low for {max} subscribers (both ends live here)"
            ));
        }
    }
    if !opts.codexmesh.exists() {
        return Err(anyhow!(
            "{} does not exist: cargo build --release -p codexmesh, or pass --codexmesh",
            opts.codexmesh.display()
        ));
    }
    let bin_age = std::fs::metadata(&opts.codexmesh)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.elapsed().ok())
        .map_or(0, |d| d.as_secs());
    let poll = match opts.change_poll_ms {
        Some(ms) => ms.to_string(),
        None => format!("default ({})", default_change_poll_ms()?),
    };
    println!(
        "push bench: {} ({} s old), {} accounts over {} pool(s), subscribers {:?}, {} changes, change_poll_ms {}",
        opts.codexmesh.display(),
        bin_age,
        opts.accounts,
        opts.pools,
        opts.subscribers,
        opts.changes,
        poll
    );
    let tmp = tempfile::Builder::new()
        .prefix("codexmesh-bench-push-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let store_url = format!("sqlite://{}", dir.join("store").join("cm.db").display());
    let master_key = MasterKey::generate()?;
    let mut rng = Rng::new(0xBE4C_0002);
    let token = format!("bench-push-{}", rng.alnum(32));

    let store = Store::open(&store_url).await.context("open store")?;
    let pop = populate(&store, &master_key, opts).await?;
    let rebuild = measure_rebuild(&store, &master_key).await?;
    let mut runs = Vec::new();
    for (run, &s) in opts.subscribers.iter().enumerate() {
        let r = run_one(
            opts,
            s,
            run,
            &dir,
            &store_url,
            &store,
            &token,
            &master_key,
            &pop,
            &mut rng,
        )
        .await?;
        let stop = r.get("aborted").is_some_and(|a| !a.is_null());
        runs.push(r);
        if stop {
            println!("memory guard fired: skipping larger subscriber counts");
            break;
        }
    }
    store.close().await;
    if opts.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    Ok(json!({
        "codexmesh": opts.codexmesh.display().to_string(),
        "codexmesh_binary_age_secs": bin_age,
        "accounts": opts.accounts,
        "pools": opts.pools,
        "changes": opts.changes,
        "change_poll_ms": opts.change_poll_ms,
        "populate": pop.timings,
        "rebuild_in_process": rebuild,
        "runs": runs,
    }))
}
