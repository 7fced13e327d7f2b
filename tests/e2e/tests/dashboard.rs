//! The operator dashboard in a real browser (Debian's Chromium driven by npm `playwright-core`,
//! both installed by `scripts/setup.sh --test`) against a real gateway: the simulator, `serve`
//! (with the dashboard embedded in the binary) and Envoy.
//!
//! `the_dashboard_in_a_real_browser` prepares what the scenario needs through the admin API (an
//! owner, a viewer and an admin of pool `team` only, another tenant's pool with accounts, a pool of
//! 200 accounts, a simulator account's auth.json to paste) and runs
//! `tests/dashboard/dashboard.test.mjs` with it (JSON in `CODEXMESH_DASHBOARD_CONFIG`); the
//! script drives the pages and fails with the step it was on. Screenshots go to
//! `$CODEXMESH_TEST_ARTIFACTS/dashboard` (default `target/test-artifacts/dashboard`). With
//! `CODEXMESH_DASHBOARD_BENCH=N` the script only loads the 200-account pool page N times and
//! prints the render times (`scripts/bench-dashboard.sh`).
//!
//! `dev_stack` (ignored; run it by name with `--ignored --nocapture`) starts the same stack with
//! an owner and a little traffic and holds it for `CODEXMESH_DEV_HOLD_SECS` (default 1800), for
//! working on the dashboard's files by hand.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codexmesh_test_kit::{repo_root, tail, Stack, StackOptions, POOL};
use futures_util::StreamExt;
use serde_json::{json, Value};

const OWNER: &str = "owner";
const OWNER_PASSWORD: &str = "correct horse battery staple";
const VIEWER: &str = "vera-viewer";
/// A viewer who sets up a second factor and signs in with it.
const TOTP_OPERATOR: &str = "tomas-totp";
const TOTP_PASSWORD: &str = "totp operator password 777";
const VIEWER_PASSWORD: &str = "viewer password 12345";
const TENANT_ADMIN: &str = "ada-admin";
const TENANT_ADMIN_PASSWORD: &str = "admin password 12345";
/// Another tenant's pool: the admin of `team` must not see it or its accounts.
const OTHER_POOL: &str = "tenant-b";
const OTHER_LABELS: [&str; 2] = ["tenant-b-secret-0", "tenant-b-secret-1"];
/// The pool the owner creates through the overview, and the account pasted into it.
const NEW_POOL: &str = "browser-made";
const IMPORT_LABEL: &str = "pasted-account";
/// A pool with many accounts, for the render time of a big pool page.
const BIG_POOL: &str = "big";
const BIG_ACCOUNTS: usize = 200;
/// Turns sent with the key the owner creates on the keys page.
const TURNS: usize = 3;
/// How long the browser script may run (it bounds each of its own waits too).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);

/// Creates the first owner through the printed-secret bootstrap, as a person would.
async fn bootstrap_owner(stack: &Stack) {
    let secret = stack.cp.cli_json(&["operator", "bootstrap"]).unwrap()["secret"]
        .as_str()
        .expect("a bootstrap secret")
        .to_owned();
    let admin = stack.cp.admin_addr.expect("admin address");
    let resp = stack
        .http
        .post(format!("http://{admin}/api/v1/bootstrap"))
        .json(&json!({"secret": secret, "name": OWNER, "password": OWNER_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "bootstrap: {}",
        resp.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a development aid that holds a stack open; run it by name"]
async fn dev_stack() {
    let stack = Stack::start_with(StackOptions::accounts(3)).await.unwrap();
    bootstrap_owner(&stack).await;
    let admin = stack.cp.admin_addr.expect("admin address");
    println!("dashboard: http://{admin}/ui/  (sign in as {OWNER} / {OWNER_PASSWORD})");
    println!(
        "gateway:   http://{}  pool {POOL} key {}",
        stack.envoy.listen, stack.key
    );
    println!("simulator: {}", stack.sim.base_url());
    let hold: u64 = std::env::var("CODEXMESH_DEV_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let until = Instant::now() + Duration::from_secs(hold);
    while Instant::now() < until {
        let _ = stack.turn(&stack.key).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Chromium (`CHROMIUM`, else Debian's).
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails (never skips) when the browser tools are missing: setup installs them.
fn require_browser_tools() {
    let dashboard = repo_root().join("tests/dashboard");
    let missing: Vec<String> = [
        chromium(),
        dashboard.join("node_modules/playwright-core/package.json"),
        dashboard.join("node_modules/axe-core/axe.min.js"),
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .map(|p| p.display().to_string())
    .collect();
    assert!(
        missing.is_empty(),
        "the browser test tools are missing ({}): run scripts/setup.sh --test",
        missing.join(", ")
    );
}

/// `$CODEXMESH_TEST_ARTIFACTS/dashboard`, else `target/test-artifacts/dashboard`.
fn artifacts_dir() -> PathBuf {
    match std::env::var_os("CODEXMESH_TEST_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir).join("dashboard"),
        None => codexmesh_test_kit::bin::target_dir().join("test-artifacts/dashboard"),
    }
}

/// One admin API call with a bearer token; returns the status and the JSON body (`null` when
/// there is none).
async fn call(
    stack: &Stack,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let admin = stack.cp.admin_addr.expect("admin address");
    let mut req = stack
        .http
        .request(method, format!("http://{admin}/api/v1{path}"))
        .json(body)
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(stack: &Stack, token: &str, path: &str, body: Value) -> Value {
    let (status, answer) = call(stack, Some(token), reqwest::Method::POST, path, &body).await;
    assert!(
        (200..300).contains(&status),
        "POST {path}: {status} {answer}"
    );
    answer
}

/// Signs in through the API; returns the session token (usable as a bearer).
async fn sign_in(stack: &Stack, name: &str, password: &str) -> String {
    let (status, answer) = call(
        stack,
        None,
        reqwest::Method::POST,
        "/session",
        &json!({"name": name, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "signing in as {name}: {answer}");
    answer["token"]
        .as_str()
        .expect("a session token")
        .to_owned()
}

/// Creates a simulator account and imports its auth.json into `pool` through the API.
async fn import_through_api(stack: &Stack, token: &str, pool: &str, label: &str) -> Value {
    let account = stack.sim.create_account(json!({})).await.unwrap();
    post(
        stack,
        token,
        &format!("/pools/{pool}/accounts?label={label}"),
        account["auth_json"].clone(),
    )
    .await
}

/// The last lines of a process's log, without the snapshot lines that a 200-account store
/// writes many of (read lossily: Envoy's log is not always UTF-8).
fn log_tail(proc: &codexmesh_test_kit::Proc) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(&proc.log).unwrap_or_default()).into_owned();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("snapshot")).collect();
    tail(&kept.join("\n"))
}

/// Runs the browser script with `config`, printing its output as it comes; returns whether it
/// passed and the last lines it printed.
async fn run_browser_script(config: &Value) -> (bool, String) {
    let dashboard = repo_root().join("tests/dashboard");
    let mut child = Command::new("node")
        .arg(dashboard.join("dashboard.test.mjs"))
        .current_dir(&dashboard)
        .env("CODEXMESH_DASHBOARD_CONFIG", config.to_string())
        .env("CHROMIUM", chromium())
        .env("FORCE_COLOR", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running node (scripts/setup.sh --test installs it)");
    let pid = child.id() as i32;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let pump = |out: Box<dyn Read + Send>, lines: Arc<Mutex<Vec<String>>>| {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[browser] {line}");
                lines.lock().unwrap().push(line);
            }
        })
    };
    let readers = [
        pump(Box::new(child.stdout.take().unwrap()), lines.clone()),
        pump(Box::new(child.stderr.take().unwrap()), lines.clone()),
    ];
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline && !timed_out {
            timed_out = true;
            // SIGTERM first: playwright closes the browser it started on SIGTERM.
            // SAFETY: kill(2) on the PID of the child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let grace = Instant::now() + Duration::from_secs(10);
            while Instant::now() < grace && child.try_wait().unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in readers {
        let _ = r.join();
    }
    let printed = lines.lock().unwrap().join("\n");
    let mut last = tail(&printed);
    if timed_out {
        last.push_str(&format!(
            "\n(the script did not finish within {} s and was stopped)",
            SCRIPT_DEADLINE.as_secs()
        ));
    }
    (status.success() && !timed_out, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    require_browser_tools();
    let stack = Stack::start_with(StackOptions::accounts(1)).await.unwrap();
    bootstrap_owner(&stack).await;
    let owner = sign_in(&stack, OWNER, OWNER_PASSWORD).await;

    // Operators: a viewer and an admin, both of `team` only.
    for (name, role, password) in [
        (VIEWER, "viewer", VIEWER_PASSWORD),
        (TENANT_ADMIN, "admin", TENANT_ADMIN_PASSWORD),
        (TOTP_OPERATOR, "viewer", TOTP_PASSWORD),
    ] {
        post(
            &stack,
            &owner,
            "/operators",
            json!({"name": name, "role": role, "pools": [POOL], "password": password}),
        )
        .await;
    }
    // The owner's API token for the script's out-of-band calls (the pause).
    let api_token = stack
        .cp
        .cli_json(&[
            "operator",
            "token",
            "create",
            "--label",
            "browser-test",
            "--role",
            "owner",
        ])
        .unwrap()["secret"]
        .as_str()
        .expect("an API token")
        .to_owned();

    // Another tenant's pool with its accounts.
    post(&stack, &owner, "/pools", json!({"name": OTHER_POOL})).await;
    for label in OTHER_LABELS {
        import_through_api(&stack, &owner, OTHER_POOL, label).await;
    }

    // A pool of 200 accounts, imported a few at a time.
    let started = Instant::now();
    post(&stack, &owner, "/pools", json!({"name": BIG_POOL})).await;
    futures_util::stream::iter(0..BIG_ACCOUNTS)
        .map(|i| {
            let (stack, owner) = (&stack, &owner);
            async move {
                import_through_api(stack, owner, BIG_POOL, &format!("big-{i:03}")).await;
            }
        })
        .buffer_unordered(6)
        .collect::<Vec<()>>()
        .await;
    println!(
        "imported {BIG_ACCOUNTS} accounts into {BIG_POOL} in {} ms",
        started.elapsed().as_millis()
    );

    // The account the owner pastes into the import form.
    let pasted = stack.sim.create_account(json!({})).await.unwrap();
    // A Claude and a Gemini account the owner imports through the same form.
    let claude = stack.sim.create_claude_account(json!({})).await.unwrap();
    let gemini = stack.sim.create_gemini_account(json!({})).await.unwrap();
    let file_of = |id: &Value| {
        let sim = &stack.sim;
        let id = id.as_str().unwrap().to_owned();
        async move { serde_json::to_string_pretty(&sim.credentials_file(&id).await.unwrap()).unwrap() }
    };
    let import_providers = json!([
        {"label": "browser-claude", "provider": "claude", "project": "",
         "file": file_of(&claude["account_id"]).await, "secret": claude["access_token"]},
        {"label": "browser-gemini", "provider": "gemini", "project": gemini["project_id"],
         "file": file_of(&gemini["account_id"]).await, "secret": gemini["access_token"]},
    ]);
    // A little traffic on `team`, so its pages have something to show.
    for _ in 0..2 {
        assert_eq!(stack.turn(&stack.key).await.unwrap().0, 200);
    }

    let bench_loads: u64 = std::env::var("CODEXMESH_DASHBOARD_BENCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let admin = stack.cp.admin_addr.expect("admin address");
    let config = json!({
        "admin_url": format!("http://{admin}"),
        "gateway_url": format!("http://{}", stack.envoy.listen),
        "owner": {"name": OWNER, "password": OWNER_PASSWORD},
        "viewer": {"name": VIEWER, "password": VIEWER_PASSWORD, "pool": POOL},
        "totp_operator": {"name": TOTP_OPERATOR, "password": TOTP_PASSWORD},
        "tenant_admin": {"name": TENANT_ADMIN, "password": TENANT_ADMIN_PASSWORD, "pool": POOL},
        "api_token": api_token,
        "pool_a": POOL,
        "other_pool": {"name": OTHER_POOL, "labels": OTHER_LABELS},
        "new_pool": NEW_POOL,
        "import": {
            "label": IMPORT_LABEL,
            "auth_json": serde_json::to_string_pretty(&pasted["auth_json"]).unwrap(),
            "sim_account_id": pasted["account_id"],
        },
        "import_providers": import_providers,
        "sim_url": stack.sim.root_url(),
        "big_pool": {"name": BIG_POOL, "accounts": BIG_ACCOUNTS},
        "requests": TURNS,
        "artifacts_dir": artifacts_dir(),
        "bench_loads": bench_loads,
    });
    let (passed, last) = run_browser_script(&config).await;
    assert!(
        passed,
        "the dashboard's browser scenario failed:\n{last}\n\ncontrol plane log:\n{}\n\nenvoy log:\n{}",
        stack.cp.proc().map(log_tail).unwrap_or_default(),
        log_tail(&stack.envoy.proc)
    );
}
