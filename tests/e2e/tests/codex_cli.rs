//! The real Codex CLI (npm `@openai/codex`, pinned in tests/codex-cli) talking to the gateway with
//! a pool key, as a developer would configure it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codexmesh_test_kit::{repo_root, turn_body, Stack, StackOptions, POOL};
use serde_json::{json, Value};

const REPLY: &str = "codexmesh e2e reply: the pool answered";

/// A throwaway CODEX_HOME whose config points the CLI at the gateway with the pool key as
/// `env_key`, the way README tells a developer to.
fn codex_home(stack: &Stack, websockets: bool) -> (PathBuf, PathBuf) {
    codex_home_with(stack, websockets, "", "")
}

/// [`codex_home`] with extra top-level config lines (`top`) and extra lines in the provider's
/// table (`provider`).
fn codex_home_with(
    stack: &Stack,
    websockets: bool,
    top: &str,
    provider: &str,
) -> (PathBuf, PathBuf) {
    let home = stack.dir.path().join("codex-home");
    std::fs::create_dir_all(&home).unwrap();
    let config = format!(
        r#"model_provider = "codexmesh"
model = "gpt-5.1-codex"
check_for_update_on_startup = false
{top}

[model_providers.codexmesh]
name = "OpenAI"
base_url = "{base}/backend-api/codex"
env_key = "CODEXMESH_API_KEY"
wire_api = "responses"
supports_websockets = {websockets}
{provider}

[features]
plugins = false
remote_plugin = false
apps = false

[analytics]
enabled = false

[feedback]
enabled = false
"#,
        base = stack.envoy.url(""),
    );
    std::fs::write(home.join("config.toml"), config).unwrap();
    let workdir = stack.dir.path().join("codex-work");
    std::fs::create_dir_all(&workdir).unwrap();
    (home, workdir)
}

/// Runs `codex exec PROMPT` to completion (bounded at 90 s); returns (success, stdout, stderr).
async fn codex_exec(stack: &Stack, prompt: &str) -> (bool, String, String) {
    codex_exec_with(stack, prompt, false).await
}

async fn codex_exec_with(stack: &Stack, prompt: &str, websockets: bool) -> (bool, String, String) {
    let (home, workdir) = codex_home(stack, websockets);
    run_codex(
        stack,
        &home,
        &workdir,
        &["exec", "--skip-git-repo-check", "--color", "never", prompt],
    )
    .await
}

/// Runs the Codex CLI with `args` in `workdir` with `home` as CODEX_HOME and the pool key in
/// `CODEXMESH_API_KEY`, to completion (bounded at 90 s; the child is killed by its PID after
/// that); returns (success, stdout, stderr).
async fn run_codex(
    stack: &Stack,
    home: &Path,
    workdir: &Path,
    args: &[&str],
) -> (bool, String, String) {
    let codex = repo_root().join("tests/codex-cli/node_modules/.bin/codex");
    assert!(
        codex.exists(),
        "Codex CLI missing at {}: scripts/setup.sh --test installs it",
        codex.display()
    );
    let child = Command::new(&codex)
        .args(args)
        .current_dir(workdir)
        .env("CODEX_HOME", home)
        .env("CODEXMESH_API_KEY", &stack.key)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CODEX_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(Duration::from_secs(90), waiter).await {
        Ok(done) => done.unwrap().unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("codex {args:?} did not finish within 90 s");
        }
    };
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_gets_its_answer_through_the_gateway() {
    let stack = Stack::start(2).await.unwrap();
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let started = Instant::now();
    let (ok, stdout, stderr) = codex_exec(&stack, "say hi").await;
    assert!(
        ok,
        "codex exec failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(REPLY),
        "answer missing from codex output:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    // It went through the pool: an imported account served it, with the gateway's credentials.
    let turns = stack.sim.turn_requests().await.unwrap();
    assert!(
        !turns.is_empty(),
        "the CLI's turn never reached the upstream"
    );
    let served_by = turns[0]["account_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        served_by == stack.account_id(0) || served_by == stack.account_id(1),
        "served by {served_by}"
    );
    assert_eq!(turns[0]["headers"]["originator"], "codex_exec");
    let recorded = serde_json::to_string(&turns).unwrap();
    assert!(!recorded.contains(&stack.key), "pool key leaked upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_that_tries_websockets_falls_back_to_sse_at_once() {
    let stack = Stack::start(1).await.unwrap();
    // The gateway forwards the upgrade now: the upstream refuses it here, and the gateway passes
    // its 426 through, the one refusal the CLI takes as "no WebSockets" without retrying.
    stack
        .sim
        .behavior(json!({"reply_text": REPLY, "websocket": "426"}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let started = Instant::now();
    let (ok, stdout, stderr) = codex_exec_with(&stack, "say hi", true).await;
    assert!(
        ok && stdout.contains(REPLY),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The 426 is taken at once: no multi-second upgrade retries.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The CLI did try: one refused upgrade reached the upstream, then the turn went over SSE.
    let log = stack.sim.requests().await.unwrap();
    let upgrades: Vec<&Value> = log.iter().filter(|r| r["websocket"] == true).collect();
    assert_eq!(upgrades.len(), 1, "{upgrades:#?}");
    assert_eq!(upgrades[0]["status"], 426);
    let posts: Vec<&Value> = log
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/backend-api/codex/responses")
        .collect();
    assert!(
        posts.iter().any(|r| r["status"] == 200),
        "no SSE turn after the refusal: {log:#?}"
    );
    assert!(
        upgrades[0]["seq"].as_u64() < posts[0]["seq"].as_u64(),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_cli_completes_twenty_turns_while_accounts_exhaust_one_after_another() {
    // 7 + 7 + 10 turns for the harness's warm-up plus 20 CLI turns; priority order spends the
    // accounts one after another, so two of them run dry mid-run.
    let stack = Stack::start_with(StackOptions {
        accounts: vec![
            json!({"primary_limit": 7}),
            json!({"primary_limit": 7}),
            json!({"primary_limit": 10}),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack
        .cp
        .cli_json(&["pool", "set-routing", POOL, "--strategy", "priority_order"])
        .unwrap();
    for (label, priority) in [("acct-0", "0"), ("acct-1", "1"), ("acct-2", "2")] {
        stack
            .cp
            .cli_json(&["account", "set", label, "--priority", priority])
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    for turn in 1..=20 {
        let (ok, stdout, stderr) = codex_exec(&stack, &format!("turn {turn}")).await;
        assert!(
            ok && stdout.contains(REPLY),
            "turn {turn} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    let turns = stack.sim.turn_requests().await.unwrap();
    let order: Vec<usize> = turns
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| {
            (0..3)
                .find(|i| r["account_id"] == stack.account_id(*i).as_str())
                .expect("served by a pool account")
        })
        .collect();
    assert_eq!(order.len(), 20);
    // One after another: never back to an account that ran dry.
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    assert_eq!((order[0], order[19]), (0, 2), "{order:?}");
    // Accounts 0 and 1 were spent to their last turn before the next took over: either the
    // quota evidence took them out first, or their 429 failed over invisibly.
    for i in 0..2 {
        let acct = stack.sim.account(&stack.account_id(i)).await.unwrap();
        assert_eq!(
            acct["primary"]["used"], acct["primary"]["limit"],
            "account {i}: {acct}"
        );
    }
}

/// The simulator's request log with request bodies (`include_body=1`).
async fn sim_requests_with_bodies(stack: &Stack) -> Vec<Value> {
    let v: Value = stack
        .http
        .get(format!(
            "http://{}/__sim/requests?include_body=1",
            stack.sim.addr
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    match v {
        Value::Array(items) => items,
        mut other => other["requests"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_runs_a_tool_turn_over_one_pooled_websocket_on_one_account() {
    let stack = Stack::start(3).await.unwrap();
    // The first answer is a function call (the simulator builds it from the CLI's first tool,
    // `exec_command`, whose only required argument is `cmd`: it becomes `"example"`, a command
    // that does not exist, run in a read-only sandbox). The CLI then sends the tool's output on
    // the same connection, and the second answer quotes it ("The tool said: ...").
    // CLI 0.169 with `supports_websockets = true` opens the WebSocket without the model
    // catalogue's `prefer_websockets` (it does not fetch the catalogue from a custom provider).
    stack
        .sim
        .behavior(json!({"reply_text": REPLY, "tool_calls_for_codex_cli": true}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let (home, workdir) = codex_home(&stack, true);
    let (ok, stdout, stderr) = run_codex(
        &stack,
        &home,
        &workdir,
        &[
            "exec",
            "--skip-git-repo-check",
            "--color",
            "never",
            "--sandbox",
            "read-only",
            "run the tool",
        ],
    )
    .await;
    assert!(
        ok,
        "codex exec failed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("The tool said:"),
        "the answer to the tool output is missing:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let log = sim_requests_with_bodies(&stack).await;
    // No turn needed HTTP: everything went over the WebSocket.
    assert!(
        !log.iter().any(|r| r["method"] == "POST"),
        "a POST turn reached the upstream: {:#?}",
        log.iter()
            .map(|r| (&r["method"], &r["path"], &r["status"]))
            .collect::<Vec<_>>()
    );
    let ws: Vec<&Value> = log.iter().filter(|r| r["websocket"] == true).collect();
    assert_eq!(ws.len(), 1, "one connection for the whole run: {ws:#?}");
    let rec = ws[0];
    assert_eq!(rec["status"], 101, "{rec}");
    // An account's own credentials, never the pool key.
    let account = rec["account_id"].as_str().unwrap_or_default();
    let i = (0..3)
        .find(|i| stack.account_id(*i) == account)
        .unwrap_or_else(|| panic!("not a pool account: {account}"));
    assert_eq!(
        rec["headers"]["authorization"].as_str(),
        Some(format!("Bearer {}", stack.access_token(i)).as_str())
    );
    assert_eq!(rec["headers"]["chatgpt-account-id"].as_str(), Some(account));
    assert!(
        !rec.to_string().contains(&stack.key),
        "the pool key reached the upstream"
    );
    assert_eq!(rec["headers"]["originator"], "codex_exec");

    // What the CLI did on that connection: a warm-up (`generate: false`), the turn continuing it,
    // then the tool output continuing the turn; each frame names the previous frame's response.
    let frames = rec["ws_requests"].as_array().unwrap();
    let summary: Vec<_> = frames
        .iter()
        .map(|f| {
            (
                &f["generate"],
                &f["previous_response_id"],
                &f["response_id"],
                &f["outcome"],
            )
        })
        .collect();
    let generating: Vec<&Value> = frames.iter().filter(|f| f["generate"] != false).collect();
    assert!(generating.len() >= 2, "{summary:#?}");
    for pair in frames.windows(2) {
        assert_eq!(
            pair[1]["previous_response_id"], pair[0]["response_id"],
            "{summary:#?}"
        );
    }
    assert_eq!(
        generating[1]["previous_response_id"], generating[0]["response_id"],
        "{summary:#?}"
    );
    assert!(
        frames
            .iter()
            .all(|f| f["outcome"] == "completed" || f["outcome"] == "warmup"),
        "{summary:#?}"
    );
    // The second request carries the output of the command the first answer asked for.
    let outputs: Vec<&Value> = generating[1]["body_json"]["input"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|it| it["type"] == "function_call_output")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        outputs
            .iter()
            .any(|o| o["output"].as_str().unwrap_or_default().contains("example")),
        "{outputs:#?}"
    );
    // Both turns were charged to that one account.
    let acct = stack.sim.account(account).await.unwrap();
    assert!(acct["turns"].as_u64().unwrap_or(0) >= 2, "{acct}");
}

/// One connection seen by a [`Sniffer`]: the request lines with their `Authorization` value,
/// and the answers' status codes, in order.
#[derive(Default, Debug, Clone)]
struct SniffedConn {
    requests: Vec<(String, String)>,
    statuses: Vec<u16>,
}

/// A TCP relay on a loopback port chosen at run time, in front of the gateway: it passes bytes
/// through unchanged and notes each HTTP/1.1 request line (with its `Authorization`) and each
/// answer's status, so a test sees which requests a client made and how the gateway answered.
struct Sniffer {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<SniffedConn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sniffer {
    /// (request line, authorization, status) for every answered request.
    fn exchanges(&self) -> Vec<(String, String, u16)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| {
                c.requests
                    .iter()
                    .zip(&c.statuses)
                    .map(|((line, auth), status)| (line.clone(), auth.clone(), *status))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Calls `on_head` with each complete header block in `buf` and drops it. Bodies are not parsed:
/// a body is handed over as part of the next block and ignored unless it starts like a request or
/// status line (the calls relayed here are bodiless GETs and their JSON answers).
fn scan_heads(buf: &mut Vec<u8>, mut on_head: impl FnMut(&str)) {
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        on_head(&head);
        buf.drain(..end + 4);
    }
    if buf.len() > 1 << 20 {
        buf.clear();
    }
}

async fn sniffer(upstream: std::net::SocketAddr) -> Sniffer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns: Arc<Mutex<Vec<SniffedConn>>> = Arc::default();
    let all = conns.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let idx = {
                let mut v = all.lock().unwrap();
                v.push(SniffedConn::default());
                v.len() - 1
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = all.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut acc = Vec::new();
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    acc.extend_from_slice(&buf[..n]);
                    scan_heads(&mut acc, |head| {
                        let mut lines = head.lines();
                        let first = lines.next().unwrap_or_default();
                        if !(first.starts_with("GET ") || first.starts_with("POST ")) {
                            return;
                        }
                        let auth = lines
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
                            .map(|(_, v)| v.trim().to_string())
                            .unwrap_or_default();
                        up.lock().unwrap()[idx]
                            .requests
                            .push((first.to_string(), auth));
                    });
                }
                let _ = sw.shutdown().await;
            });
            let down = all.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut acc = Vec::new();
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    acc.extend_from_slice(&buf[..n]);
                    scan_heads(&mut acc, |head| {
                        if let Some(code) = head
                            .strip_prefix("HTTP/1.1 ")
                            .and_then(|r| r.get(..3))
                            .and_then(|c| c.parse().ok())
                        {
                            down.lock().unwrap()[idx].statuses.push(code);
                        }
                    });
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    Sniffer { addr, conns, task }
}

/// The headers the Codex CLI 0.169 sends on its ChatGPT backend calls, with the pool key as the
/// bearer (what a client of the gateway presents).
fn cli_like_get(stack: &Stack, path: &str, marker: &str) -> reqwest::RequestBuilder {
    stack
        .http
        .get(stack.envoy.url(path))
        .bearer_auth(&stack.key)
        .header("originator", "codex_exec")
        .header(
            "user-agent",
            "codex_exec/0.169.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.169.0)",
        )
        .header("version", "0.169.0")
        .header("x-client-request-id", marker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatgpt_mode_cli_turns_through_the_pool_and_the_usage_endpoints_answer_for_the_pool() {
    // Quota polled every second, so the control plane's evidence follows the patches below.
    let stack = Stack::start_with(StackOptions {
        accounts: vec![
            json!({"primary_limit": 1000}),
            json!({"primary_limit": 1000}),
        ],
        cp_env: vec![("CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(), "1".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack
        .sim
        .behavior(json!({"reply_text": REPLY}))
        .await
        .unwrap();
    // 20 % and 60 % of the five-hour window used: the pool's figure is their mean, 40 %.
    stack
        .sim
        .patch_account(&stack.account_id(0), json!({"primary_used": 200}))
        .await
        .unwrap();
    stack
        .sim
        .patch_account(&stack.account_id(1), json!({"primary_used": 600}))
        .await
        .unwrap();

    // A ChatGPT-login user (their own account, not in the pool) pointing the CLI at the gateway:
    // turns go to the provider with the pool key (`env_key`), ChatGPT backend calls to
    // `chatgpt_base_url` (through a relay that notes what passes).
    let user = stack.sim.create_account(json!({})).await.unwrap();
    let user_token = user["access_token"].as_str().unwrap().to_string();
    let relay = sniffer(stack.envoy.listen).await;
    let (home, workdir) = codex_home_with(
        &stack,
        false,
        &format!("chatgpt_base_url = \"http://{}/backend-api/\"", relay.addr),
        "requires_openai_auth = true",
    );
    std::fs::write(
        home.join("auth.json"),
        serde_json::to_vec_pretty(&user["auth_json"]).unwrap(),
    )
    .unwrap();
    stack.sim.clear_requests().await.unwrap();
    let started = Instant::now();
    let (ok, stdout, stderr) = codex_exec_in(&stack, &home, &workdir, "say hi").await;
    assert!(
        ok && stdout.contains(REPLY),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let turns = stack.sim.turn_requests().await.unwrap();
    assert!(!turns.is_empty());
    for t in &turns {
        let served_by = t["account_id"].as_str().unwrap_or_default();
        assert!(
            served_by == stack.account_id(0) || served_by == stack.account_id(1),
            "a turn was not served by the pool: {t}"
        );
    }

    // What CLI 0.169 `exec` does in ChatGPT mode: it calls `/wham/accounts/check` (and
    // `/wham/settings/user`) with the login's own access token, never the pool key, and never
    // calls `/wham/usage`. The gateway does not take a ChatGPT token as a pool key: it refuses
    // them (401; the settings page is not an endpoint it serves, 404) and the CLI carries on.
    let exchanges = relay.exchanges();
    let backend: Vec<&(String, String, u16)> = exchanges
        .iter()
        .filter(|(line, _, _)| line.contains("/wham/"))
        .collect();
    assert!(
        backend
            .iter()
            .any(|(line, _, _)| line.starts_with("GET /backend-api/wham/accounts/check ")),
        "the CLI made no account check: {exchanges:#?}"
    );
    assert!(
        !backend
            .iter()
            .any(|(line, _, _)| line.contains("/wham/usage")),
        "{exchanges:#?}"
    );
    for (line, auth, status) in &backend {
        assert_eq!(auth, &format!("Bearer {user_token}"), "{line}");
        assert!((400..500).contains(status), "{line} answered {status}");
        if line.contains("/wham/accounts/check") {
            assert_eq!(*status, 401, "{line}");
        }
    }
    // None of them reached the upstream, and the login's token never did.
    let log = stack.sim.requests().await.unwrap();
    assert!(
        !log.iter().any(
            |r| r["path"].as_str().unwrap_or_default().contains("/wham/")
                && r["headers"]["originator"] == "codex_exec"
        ),
        "{log:#?}"
    );
    assert!(!serde_json::to_string(&log).unwrap().contains(&user_token));

    // The same endpoints with the CLI's headers and the pool key (reqwest: the CLI never sends
    // the pool key there) are answered by the gateway from its view of the whole pool.
    let deadline = Instant::now() + Duration::from_secs(20);
    let usage = loop {
        let resp = cli_like_get(&stack, "/backend-api/wham/usage", "e2e-usage-probe")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        if body["rate_limit"]["primary_window"]["used_percent"] == 40 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the pool's usage did not become 40 %: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // 40 is neither account's own figure (20, 60): it is the pool's.
    for i in 0..2 {
        let own = stack.sim.account(&stack.account_id(i)).await.unwrap();
        let pct = own["primary"]["used_percent"].as_f64().unwrap();
        assert!((pct - 40.0).abs() >= 15.0, "account {i}: {own}");
    }
    assert_eq!(usage["rate_limit"]["limit_reached"], false, "{usage}");
    assert_eq!(usage["rate_limit"]["allowed"], true, "{usage}");
    assert_eq!(
        usage["rate_limit"]["primary_window"]["limit_window_seconds"], 18000,
        "{usage}"
    );
    let check = cli_like_get(
        &stack,
        "/backend-api/wham/accounts/check",
        "e2e-check-probe",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(check.status(), 200);
    let check: Value = check.json().await.unwrap();
    assert_eq!(
        check["accounts"][0]["workspace_backend_origin"], "NO_CONSTRAINT",
        "{check}"
    );
    // The pool, never an account behind it.
    for answer in [&usage, &check] {
        let text = answer.to_string();
        for i in 0..2 {
            assert!(!text.contains(&stack.account_id(i)), "{text}");
            let email = stack.accounts[i]["email"].as_str().unwrap();
            assert!(!text.contains(email), "{text}");
        }
    }
    // Answered by the gateway itself: neither probe reached the simulator.
    let log = stack.sim.requests().await.unwrap();
    assert!(
        !log.iter().any(|r| {
            let marker = r["headers"]["x-client-request-id"]
                .as_str()
                .unwrap_or_default();
            marker.starts_with("e2e-") && marker.ends_with("-probe")
        }),
        "a usage probe reached the upstream"
    );
    assert!(
        !log.iter()
            .any(|r| r["path"] == "/backend-api/wham/accounts/check"),
        "{log:#?}"
    );
}

/// `codex exec PROMPT` with a prepared CODEX_HOME.
async fn codex_exec_in(
    stack: &Stack,
    home: &Path,
    workdir: &Path,
    prompt: &str,
) -> (bool, String, String) {
    run_codex(
        stack,
        home,
        workdir,
        &["exec", "--skip-git-repo-check", "--color", "never", prompt],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_stays_on_the_session_s_account_and_the_model_list_revalidates_with_its_etag() {
    let stack = Stack::start_with(StackOptions::accounts(3).without_quota_polling())
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    // Remote compaction, as the CLI sends it after turns of the same session (`session-id`):
    // three sessions, each compacted on the account that served its turn.
    for n in 0..3 {
        let session = format!("cli-session-{n}");
        let resp = stack
            .post_turn(&stack.key, Some(&session), &turn_body("hello"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
        let compact = stack
            .http
            .post(stack.envoy.url("/backend-api/codex/responses/compact"))
            .bearer_auth(&stack.key)
            .header("session-id", &session)
            .header("originator", "codex_exec")
            .json(&json!({
                "model": "gpt-5.1-codex",
                "instructions": "You are a test.",
                "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
                "tools": [],
                "parallel_tool_calls": false,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(compact.status(), 200);
        let body: Value = compact.json().await.unwrap();
        assert!(
            body["output"]
                .as_array()
                .is_some_and(|o| o.iter().any(|it| it["type"] == "compaction")),
            "{body}"
        );
    }
    let log = stack.sim.requests().await.unwrap();
    for n in 0..3 {
        let session = format!("cli-session-{n}");
        let of_session: Vec<(&str, &str)> = log
            .iter()
            .filter(|r| r["headers"]["session-id"] == session.as_str())
            .map(|r| {
                (
                    r["path"].as_str().unwrap_or_default(),
                    r["account_id"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(of_session.len(), 2, "{of_session:?}");
        assert_eq!(of_session[0].0, "/backend-api/codex/responses");
        assert_eq!(of_session[1].0, "/backend-api/codex/responses/compact");
        assert_eq!(
            of_session[0].1, of_session[1].1,
            "session {session} compacted on another account"
        );
    }

    // The model list: the upstream's ETag passes through, and a revalidation gets 304.
    let path = "/backend-api/codex/models?client_version=0.169.0";
    let direct = stack
        .http
        .get(format!(
            "{}/codex/models?client_version=0.169.0",
            stack.sim.base_url()
        ))
        .bearer_auth(stack.access_token(0))
        .send()
        .await
        .unwrap();
    let upstream_etag = direct.headers()["etag"].to_str().unwrap().to_string();
    let first = stack
        .http
        .get(stack.envoy.url(path))
        .bearer_auth(&stack.key)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let etag = first
        .headers()
        .get("etag")
        .expect("the model list lost its ETag")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(etag, upstream_etag);
    let models: Value = first.json().await.unwrap();
    assert!(models["models"].as_array().is_some_and(|m| !m.is_empty()));
    let again = stack
        .http
        .get(stack.envoy.url(path))
        .bearer_auth(&stack.key)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(
        again.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some(etag.as_str())
    );
    assert!(again.bytes().await.unwrap().is_empty());
    // The revalidation went to the upstream with the client's query and tag.
    let log = stack.sim.requests().await.unwrap();
    let lists: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"] == "/backend-api/codex/models")
        .collect();
    let last = lists.last().expect("no model list reached the upstream");
    assert_eq!(last["status"], 304, "{last}");
    assert_eq!(
        last["headers"]["if-none-match"].as_str(),
        Some(etag.as_str())
    );
    assert!(
        last["query"]
            .as_str()
            .unwrap_or_default()
            .contains("client_version=0.169.0"),
        "{last}"
    );
}
