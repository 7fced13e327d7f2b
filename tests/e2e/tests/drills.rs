//! Failure drills under sustained load (part A): real Envoy with the built wasm module, the
//! control plane, the simulator and, for two drills, a throwaway PostgreSQL. In each drill
//! clients stream Codex turns without pause ([`codexmesh_test_kit::load`]) while the control
//! plane is SIGKILLed and restarted, frozen for 25 s, one of two replicas is killed, or
//! PostgreSQL is restarted; every drill asserts 0 failed client requests (Envoy keeps serving
//! from its last snapshot) and that requests were served during the outage itself.
//!
//! Rules the drills keep:
//! - **Figures on one line**: each prints `DRILL <name> key=value ...` (requests, ok, failed,
//!   latency percentiles, rps, the outage's length, requests served during it, recovery
//!   seconds: from the end of the outage until every Envoy acknowledged a snapshot made after
//!   it); `scripts/drill.sh` collects them.
//! - **Load length**: `CODEXMESH_DRILL_SECONDS` of load before and after each event (default
//!   [`DEFAULT_SECONDS`], short for CI); the freeze is always 25 s.
//! - **"No lost write"** (PostgreSQL restart): every request the clients were served ends up
//!   in the request log once the database is back (served == logged, no more, no fewer), and
//!   each operator write made during the outage either failed with an error that says so or
//!   is there afterwards; none vanishes.
//! - Every wait is bounded; a missing PostgreSQL skips with a printed note unless
//!   `CODEXMESH_REQUIRE_POSTGRES=1`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use codexmesh_test_kit::pg::TempPostgres;
use codexmesh_test_kit::wait::{self, Probe};
use codexmesh_test_kit::{
    import_account, Artifacts, ControlPlane, CpEnv, Envoy, Load, LoadFigures, LoadSpec, Sim, Stack,
    StackOptions, POOL,
};
use serde_json::{json, Value};

/// Seconds of load before and after each event unless `CODEXMESH_DRILL_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 6;
/// Concurrent streaming clients.
const CLIENTS: usize = 8;
/// How long the control plane stays frozen (SIGSTOP).
const FREEZE: Duration = Duration::from_secs(25);
/// How long the control plane (or PostgreSQL) stays down in the kill drills.
const DOWN: Duration = Duration::from_secs(4);

fn drill_seconds() -> Duration {
    let secs = std::env::var("CODEXMESH_DRILL_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SECONDS);
    Duration::from_secs(secs)
}

fn setting(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

/// Streams take a little while (a few events 10 ms apart), as a model's answer does.
fn streaming_sim() -> Value {
    json!({"event_delay_ms": 10})
}

/// Prints the drill's one figures line.
fn report(name: &str, figs: &LoadFigures, extra: &[(&str, String)]) {
    let mut line = format!("DRILL {name} {}", figs.summary());
    for (k, v) in extra {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
}

fn assert_no_failure(name: &str, figs: &LoadFigures) {
    assert_eq!(
        figs.failed,
        0,
        "{name}: {} of {} client requests failed:\n{}",
        figs.failed,
        figs.requests,
        figs.failure_report(20)
    );
    assert!(figs.ok > 0, "{name}: nothing was served");
}

/// The store revision (`codexmesh status`).
fn revision(cp: &ControlPlane) -> u64 {
    cp.cli_json(&["status"]).unwrap()["revision"]
        .as_u64()
        .unwrap()
}

/// Waits (bounded) until every node in `nodes` acknowledged a snapshot of at least `version`
/// (`codexmesh status`, from the store); returns how long that took.
async fn until_acked(cp: &ControlPlane, nodes: &[&str], version: u64) -> Duration {
    let start = Instant::now();
    wait::until_async(
        Duration::from_secs(60),
        Duration::from_millis(100),
        &format!("{nodes:?} to ACK snapshot v{version}"),
        || async {
            let status = cp.cli_json(&["status"])?;
            let envoys = status["envoys"].as_array().cloned().unwrap_or_default();
            let done = nodes.iter().all(|n| {
                envoys
                    .iter()
                    .find(|e| e["node_id"] == *n)
                    .and_then(|e| e["acked_version"].as_u64())
                    >= Some(version)
            });
            Ok(if done {
                Probe::Ready(())
            } else {
                Probe::NotYet(status["envoys"].to_string())
            })
        },
    )
    .await
    .unwrap();
    start.elapsed()
}

/// A configuration change made with the CLI (a new pool); returns the revision it made.
fn cli_change(cp: &ControlPlane, name: &str) -> u64 {
    cp.cli_json(&["pool", "create", name]).unwrap();
    revision(cp)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// A stack on SQLite with two accounts and streaming answers, its Envoy under load.
async fn loaded_stack() -> (Stack, Load) {
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({}), json!({})],
        cp_env: vec![setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0")],
        sim_behavior: Some(streaming_sim()),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let load = Load::start(LoadSpec::new(&[stack.envoy.url("")], &stack.key, CLIENTS)).unwrap();
    load.served_more(CLIENTS as u64, Duration::from_secs(20))
        .await
        .unwrap();
    (stack, load)
}

/// The drills run one at a time (each test takes this first): they share the machine's cores
/// with nothing else of this binary, so their figures are comparable.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (a) SIGKILL, down for [`DOWN`], restarted on the same gRPC port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_sigkill_and_restart() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let name = "cp_sigkill_restart";
    let (mut stack, load) = loaded_stack().await;
    tokio::time::sleep(drill_seconds()).await;

    let served_before = load.ok_count();
    stack.cp.kill();
    tokio::time::sleep(DOWN).await;
    let served_down = load.ok_count() - served_before;
    let restarted = Instant::now();
    stack.cp.start().unwrap();
    let version = cli_change(&stack.cp, "after-kill");
    until_acked(&stack.cp, &["envoy"], version).await;
    let recovery = restarted.elapsed();

    tokio::time::sleep(drill_seconds()).await;
    let figs = load.stop().await;
    report(
        name,
        &figs,
        &[
            ("down_s", secs(DOWN)),
            ("served_while_down", served_down.to_string()),
            ("recovery_s", secs(recovery)),
        ],
    );
    assert_no_failure(name, &figs);
    assert!(served_down > 0, "{name}: nothing served while it was down");
}

/// (b) SIGSTOP for 25 s, then SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_frozen_for_25s() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let name = "cp_frozen_25s";
    let (stack, load) = loaded_stack().await;
    tokio::time::sleep(drill_seconds()).await;

    let served_before = load.ok_count();
    stack.cp.proc().unwrap().freeze().unwrap();
    tokio::time::sleep(FREEZE).await;
    let served_frozen = load.ok_count() - served_before;
    let thawed = Instant::now();
    stack.cp.proc().unwrap().thaw().unwrap();
    let version = cli_change(&stack.cp, "after-freeze");
    until_acked(&stack.cp, &["envoy"], version).await;
    let recovery = thawed.elapsed();

    tokio::time::sleep(drill_seconds()).await;
    let figs = load.stop().await;
    report(
        name,
        &figs,
        &[
            ("down_s", secs(FREEZE)),
            ("served_while_down", served_frozen.to_string()),
            ("recovery_s", secs(recovery)),
        ],
    );
    assert_no_failure(name, &figs);
    assert!(
        served_frozen > 0,
        "{name}: nothing served while it was frozen"
    );
}

/// Everything of a PostgreSQL-backed gateway: the simulator, `replicas` control planes on one
/// database, a pool with two accounts and a key, and one Envoy per name, each dialing every
/// replica.
struct PgGateway {
    _sim: Sim,
    replicas: Vec<ControlPlane>,
    envoys: Vec<Envoy>,
    key: String,
    // Last: dropped after the processes in it.
    _dir: codexmesh_test_kit::leaks::TestDir,
}

impl PgGateway {
    async fn start(pg: &TempPostgres, db: &str, replicas: usize, envoys: &[&str]) -> Self {
        let dir = codexmesh_test_kit::test_dir("codexmesh-drill-").unwrap();
        let art = Artifacts::locate().unwrap();
        let sim = Sim::spawn(&art, dir.path()).unwrap();
        sim.behavior(streaming_sim()).await.unwrap();
        let mut env = CpEnv::new(
            dir.path(),
            &sim,
            &art,
            vec![setting("CODEXMESH_QUOTA_POLL_INTERVAL_SECS", "0")],
        );
        env.store = pg.create_database(db).unwrap();
        let mut cps: Vec<ControlPlane> = (0..replicas)
            .map(|i| {
                let logs = dir.path().join(format!("replica-{i}"));
                std::fs::create_dir_all(&logs).unwrap();
                ControlPlane::new(&art, env.clone(), &logs)
            })
            .collect();
        cps[0].cli_json(&["pool", "create", POOL]).unwrap();
        for i in 0..2 {
            let label = format!("acct-{i}");
            import_account(&sim, &cps[0], dir.path(), POOL, &label, json!({}))
                .await
                .unwrap();
        }
        let key = cps[0].cli_json(&["key", "create", "--pool", POOL]).unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let grpc: Vec<SocketAddr> = cps.iter_mut().map(|cp| cp.start().unwrap()).collect();
        let targets = grpc
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let push = env.push_token.clone();
        let mut started = Vec::new();
        for name in envoys {
            let envoy = Envoy::start_dialing(
                &art,
                &cps[0],
                grpc[0],
                Some(&targets),
                &push,
                dir.path(),
                name,
            )
            .await
            .unwrap();
            serving(&envoy, &key).await;
            started.push(envoy);
        }
        Self {
            _sim: sim,
            replicas: cps,
            envoys: started,
            key,
            _dir: dir,
        }
    }

    fn bases(&self) -> Vec<String> {
        self.envoys.iter().map(|e| e.url("")).collect()
    }
}

/// Waits (bounded) until `envoy` serves a turn with `key`.
async fn serving(envoy: &Envoy, key: &str) {
    let http = reqwest::Client::new();
    let url = envoy.url("/backend-api/codex/responses");
    wait::until_async(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "the gateway to serve",
        || async {
            let resp = http
                .post(&url)
                .bearer_auth(key)
                .header("accept", "text/event-stream")
                .json(&codexmesh_test_kit::turn_body("ping"))
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            Ok(if status == 200 {
                Probe::Ready(())
            } else {
                Probe::NotYet(format!("{status} {body}"))
            })
        },
    )
    .await
    .unwrap();
}

/// An owner token for the admin API (made with the CLI).
fn owner_token(cp: &ControlPlane) -> String {
    cp.cli_json(&[
        "operator", "token", "create", "--label", "drill", "--role", "owner",
    ])
    .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The node ids of the Envoys holding a Subscribe stream to this replica now.
async fn connected_to(cp: &ControlPlane, token: &str) -> Vec<String> {
    let admin = cp.admin_addr.expect("admin address");
    let list: Value = reqwest::Client::new()
        .get(format!("http://{admin}/api/v1/envoys"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut nodes: Vec<String> = list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["connected"] == true)
        .filter_map(|e| e["node_id"].as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

/// Creates pool `name` through a replica's admin API; returns the answer's status and body.
async fn api_create_pool(admin: SocketAddr, token: &str, name: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{admin}/api/v1/pools"))
        .bearer_auth(token)
        .json(&json!({"name": name}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match resp {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, format!("no answer: {e}")),
    }
}

/// (c) Two replicas on PostgreSQL, two Envoys dialing both; the replica serving the Envoys is
/// SIGKILLed; a change made through the survivor's API reaches both Envoys (acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_envoys_move_to_the_other() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let name = "replica_killed";
    let Some(pg) = TempPostgres::start().unwrap() else {
        println!("DRILL {name} SKIPPED (no PostgreSQL)");
        return;
    };
    let mut gw = PgGateway::start(&pg, "drill_replicas", 2, &["envoy-a", "envoy-b"]).await;
    let nodes = ["envoy-a", "envoy-b"];
    let token = owner_token(&gw.replicas[0]);
    let version = revision(&gw.replicas[0]);
    until_acked(&gw.replicas[0], &nodes, version).await;
    let load = Load::start(LoadSpec::new(&gw.bases(), &gw.key, CLIENTS)).unwrap();
    load.served_more(CLIENTS as u64, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(drill_seconds()).await;

    // Kill the replica holding more of the Envoys' streams (the first when tied).
    let mut on = Vec::new();
    for cp in &gw.replicas {
        on.push(connected_to(cp, &token).await);
    }
    let victim = usize::from(on[1].len() > on[0].len());
    let survivor = 1 - victim;
    let served_before = load.ok_count();
    let killed = Instant::now();
    gw.replicas[victim].kill();
    let (status, body) = api_create_pool(
        gw.replicas[survivor].admin_addr.expect("admin address"),
        &token,
        "after-replica",
    )
    .await;
    assert_eq!(
        status, 201,
        "{name}: the surviving replica refused a change: {body}"
    );
    let version = revision(&gw.replicas[survivor]);
    until_acked(&gw.replicas[survivor], &nodes, version).await;
    let recovery = killed.elapsed();
    let moved = wait::until_async(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "both Envoys to hold a stream to the surviving replica",
        || async {
            let now = connected_to(&gw.replicas[survivor], &token).await;
            Ok(if now == nodes {
                Probe::Ready(now)
            } else {
                Probe::NotYet(format!("{now:?}"))
            })
        },
    )
    .await
    .unwrap();
    let served_during = load.ok_count() - served_before;

    tokio::time::sleep(drill_seconds()).await;
    let figs = load.stop().await;
    report(
        name,
        &figs,
        &[
            ("envoys", nodes.len().to_string()),
            ("on_killed_replica", on[victim].len().to_string()),
            ("on_survivor_after", moved.len().to_string()),
            ("served_during_move", served_during.to_string()),
            ("recovery_s", secs(recovery)),
        ],
    );
    assert_no_failure(name, &figs);
    assert!(served_during > 0, "{name}: nothing served during the move");
    drop(gw);
    drop(pg);
}

/// One operator write during the outage and what it said.
struct OutageWrite {
    pool: String,
    via: &'static str,
    persisted_claimed: bool,
    said: String,
}

/// (d) PostgreSQL stopped for [`DOWN`] and started again on the same data dir and port while
/// the load runs: served == logged afterwards, and no operator write vanished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let name = "postgres_restart";
    let Some(pg) = TempPostgres::start().unwrap() else {
        println!("DRILL {name} SKIPPED (no PostgreSQL)");
        return;
    };
    let db = "drill_pg_restart";
    let gw = PgGateway::start(&pg, db, 1, &["envoy-a"]).await;
    let cp = &gw.replicas[0];
    let token = owner_token(cp);
    let load_started_ms = unix_ms();
    let load = Load::start(LoadSpec::new(&gw.bases(), &gw.key, CLIENTS)).unwrap();
    load.served_more(CLIENTS as u64, Duration::from_secs(20))
        .await
        .unwrap();
    tokio::time::sleep(drill_seconds()).await;

    let served_before = load.ok_count();
    pg.stop().unwrap();
    let stopped = Instant::now();
    // Operator writes while the database is away, at the same time: through the replica's
    // API and through the CLI (each waits for the store until its own timeout).
    let admin = cp.admin_addr.expect("admin address");
    let api_token = token.clone();
    let api_write =
        tokio::spawn(async move { api_create_pool(admin, &api_token, "during-outage-api").await });
    let run =
        tokio::task::block_in_place(|| cp.cli(&["pool", "create", "during-outage-cli"])).unwrap();
    let mut writes = vec![OutageWrite {
        pool: "during-outage-cli".into(),
        via: "cli",
        persisted_claimed: run.code == 0,
        said: format!("exit {}: {}", run.code, run.stderr.trim()),
    }];
    let (status, body) = api_write.await.unwrap();
    writes.push(OutageWrite {
        pool: "during-outage-api".into(),
        via: "api",
        persisted_claimed: status == 201,
        said: format!("{status}: {body}"),
    });
    let left = DOWN.saturating_sub(stopped.elapsed());
    tokio::time::sleep(left).await;
    let down = stopped.elapsed();
    let served_down = load.ok_count() - served_before;
    pg.restart().unwrap();
    let restarted = Instant::now();
    let version = cli_change(cp, "after-postgres");
    until_acked(cp, &["envoy-a"], version).await;
    let recovery = restarted.elapsed();

    tokio::time::sleep(drill_seconds()).await;
    let figs = load.stop().await;

    // Every served request reaches the request log (bounded wait for the last reports).
    let sql = format!(
        "SELECT count(*) FROM outcomes WHERE status = 200 AND node_id = 'envoy-a' \
         AND started_at >= {load_started_ms}"
    );
    let logged_wait = Instant::now();
    let logged = wait::until_async(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "every served request in the request log",
        || async {
            let logged: u64 = pg.query_scalar(db, &sql)?.parse()?;
            Ok(if logged >= figs.ok {
                Probe::Ready(logged)
            } else {
                Probe::NotYet(format!("logged {logged} of {} served", figs.ok))
            })
        },
    )
    .await;
    let logged = match logged {
        Ok(n) => n,
        Err(e) => {
            report(name, &figs, &[("lost", "?".into())]);
            panic!(
                "{name}: {e}\ncontrol plane log:\n{}",
                codexmesh_test_kit::tail(&cp.proc().unwrap().log_text())
            );
        }
    };
    // Reports that were still on their way are in by now: no more rows arrive later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged_final: u64 = pg.query_scalar(db, &sql).unwrap().parse().unwrap();

    let mut write_lines = Vec::new();
    for w in &writes {
        let exists = cp
            .cli_json(&["pool", "list"])
            .unwrap()
            .to_string()
            .contains(&format!("\"{}\"", w.pool));
        write_lines.push(format!(
            "{} {} claimed={} exists={} said={}",
            w.via, w.pool, w.persisted_claimed, exists, w.said
        ));
        if w.persisted_claimed {
            assert!(
                exists,
                "{name}: a write acknowledged during the outage vanished: {}",
                w.said
            );
        } else {
            assert!(
                !w.said.trim().is_empty() && w.said.len() > 6,
                "{name}: a write failed without saying why: {}",
                w.said
            );
        }
    }
    let writes_failed_clearly = writes.iter().filter(|w| !w.persisted_claimed).count();
    report(
        name,
        &figs,
        &[
            ("down_s", secs(down)),
            ("served_while_down", served_down.to_string()),
            ("logged", logged_final.to_string()),
            ("lost", figs.ok.saturating_sub(logged_final).to_string()),
            (
                "duplicated",
                logged_final.saturating_sub(figs.ok).to_string(),
            ),
            ("outage_writes", writes.len().to_string()),
            ("outage_writes_refused", writes_failed_clearly.to_string()),
            ("recovery_s", secs(recovery)),
            ("logged_within_s", secs(logged_wait.elapsed())),
        ],
    );
    for l in &write_lines {
        println!("  outage write: {l}");
    }
    assert_no_failure(name, &figs);
    assert!(
        served_down > 0,
        "{name}: nothing served while the database was away"
    );
    assert!(logged >= figs.ok);
    assert_eq!(
        logged_final, figs.ok,
        "{name}: served {} but the request log holds {logged_final}",
        figs.ok
    );
    drop(gw);
    drop(pg);
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
