//! A whole gateway for one test, and the control plane driven by environment settings.
//!
//! [`Stack`]: the simulator (its binary), `codexmesh serve` with pool [`POOL`], accounts and a
//! key, and Envoy with the wasm module, each in the test's own temporary directory and on ports
//! the OS picks. [`ControlPlane`]: CLI runs and `serve` starts against one store whose settings
//! ([`CpEnv`]) go as environment variables (as an operator's deployment would set them).
//!
//! Rules: the store, data dir and logs live in the test's directory; every `codexmesh` command
//! comes from [`crate::env::codexmesh_command`]; `serve` keeps its gRPC port across restarts so
//! Envoy keeps its cluster; every wait is bounded and its error carries the logs' tails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use crate::bin::Artifacts;
use crate::cli::{Cli, Run};
use crate::env::codexmesh_command;
use crate::envoy::Envoy;
use crate::proc::{tail, Proc};
use crate::serve::Served;
use crate::sim::Sim;
use crate::wait::{self, Probe};

/// Settings shared by every `codexmesh` invocation of one test.
#[derive(Clone)]
pub struct CpEnv {
    pub data_dir: PathBuf,
    pub store: String,
    pub push_token: String,
    pub upstream_base_url: String,
    pub oauth_token_url: String,
    /// The auth server's root (device-code logins).
    pub auth_base_url: String,
    /// Anthropic's API and OAuth token endpoint, Google Code Assist and Google's token endpoint
    /// (all on the simulator).
    pub claude_base_url: String,
    pub claude_token_url: String,
    pub gemini_base_url: String,
    pub google_token_url: String,
    pub wasm: PathBuf,
    /// Further settings for every invocation (e.g. `CODEXMESH_REFRESH_LEAD_SECS`).
    pub extra: Vec<(String, String)>,
}

impl CpEnv {
    /// The settings of a control plane in `dir` (SQLite store under `dir/data`) whose outbound
    /// calls go to `sim`.
    pub fn new(dir: &Path, sim: &Sim, art: &Artifacts, extra: Vec<(String, String)>) -> Self {
        Self {
            data_dir: dir.join("data"),
            store: format!("sqlite://{}", dir.join("data/codexmesh.db").display()),
            push_token: format!("push-{}", std::process::id()),
            upstream_base_url: sim.base_url(),
            oauth_token_url: sim.token_url(),
            auth_base_url: sim.root_url(),
            claude_base_url: sim.root_url(),
            claude_token_url: sim.claude_token_url(),
            gemini_base_url: sim.root_url(),
            google_token_url: sim.google_token_url(),
            wasm: art.wasm.clone(),
            extra,
        }
    }

    /// Sets the control plane's settings on a `codexmesh` command (`RUST_LOG=info` unless
    /// [`CpEnv::extra`] says otherwise).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("CODEXMESH_DATA_DIR", &self.data_dir)
            .env("CODEXMESH_STORE", &self.store)
            .env("CODEXMESH_PUSH_TOKEN", &self.push_token)
            .env("CODEXMESH_UPSTREAM_BASE_URL", &self.upstream_base_url)
            .env("CODEXMESH_OAUTH_TOKEN_URL", &self.oauth_token_url)
            .env("CODEXMESH_AUTH_BASE_URL", &self.auth_base_url)
            .env("CODEXMESH_CLAUDE_BASE_URL", &self.claude_base_url)
            .env("CODEXMESH_CLAUDE_TOKEN_URL", &self.claude_token_url)
            .env("CODEXMESH_GEMINI_BASE_URL", &self.gemini_base_url)
            .env("CODEXMESH_GOOGLE_TOKEN_URL", &self.google_token_url)
            .env("CODEXMESH_WASM", &self.wasm)
            .env("RUST_LOG", "info");
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
    }
}

/// The control plane: a `serve` process plus CLI runs against the same store.
pub struct ControlPlane {
    pub art_codexmesh: PathBuf,
    pub env: CpEnv,
    pub serve: Option<Served>,
    pub grpc_addr: Option<SocketAddr>,
    /// The admin HTTP API of the running `serve` (a new port on each start).
    pub admin_addr: Option<SocketAddr>,
    log_dir: PathBuf,
    starts: u32,
}

impl Cli for ControlPlane {
    fn command(&self) -> Command {
        let mut cmd = codexmesh_command(&self.art_codexmesh);
        self.env.apply(&mut cmd);
        cmd
    }
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

    /// Runs `codexmesh ARGS` ([`Cli::run`]).
    pub fn cli(&self, args: &[&str]) -> Result<Run> {
        self.run(args)
    }

    /// Runs a CLI command that must succeed and print JSON ([`Cli::ok_json`]).
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        self.ok_json(args)
    }

    /// Starts `serve`. The gRPC port is fixed after the first start, so Envoy keeps its cluster.
    pub fn start(&mut self) -> Result<SocketAddr> {
        let grpc = match self.grpc_addr {
            Some(a) => a.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let mut cmd = self.command();
        cmd.env("CODEXMESH_GRPC_LISTEN", &grpc)
            .env("CODEXMESH_ADMIN_LISTEN", "127.0.0.1:0")
            .arg("serve");
        self.starts += 1;
        let served = Served::spawn(
            &format!("control-plane-{}", self.starts),
            cmd,
            &self.log_dir,
        )?;
        let grpc_addr = served.grpc_addr()?;
        self.grpc_addr = Some(grpc_addr);
        self.admin_addr = served.admin_addr().ok();
        self.serve = Some(served);
        Ok(grpc_addr)
    }

    pub fn kill(&mut self) {
        if let Some(mut s) = self.serve.take() {
            s.proc.kill();
        }
    }

    pub fn proc(&self) -> Result<&Proc> {
        self.serve
            .as_ref()
            .map(|s| &s.proc)
            .ok_or_else(|| anyhow!("control plane not running"))
    }
}

/// A minimal Codex turn request body. No `prompt_cache_key`: tests that want locality add one.
pub fn turn_body(prompt: &str) -> Value {
    json!({
        "model": "gpt-5.1-codex",
        // The canary marks prompt text for the leak scan (crate::leaks).
        "instructions": format!("You are a test ({}).", crate::leaks::PROMPT_CANARY),
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
    pub dir: crate::leaks::TestDir,
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
    /// The simulator serves HTTPS ([`Sim::spawn_tls`]); the control plane and Envoy trust its
    /// certificate through `CODEXMESH_UPSTREAM_CA_FILE`.
    pub sim_tls: bool,
    /// Further `codexmesh envoy-bootstrap` arguments (e.g. `--control-plane-ca`).
    pub envoy_bootstrap_args: Vec<String>,
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
        let dir = crate::test_dir("codexmesh-e2e-")?;
        let art = Artifacts::locate()?;
        let sim = if opts.sim_tls {
            Sim::spawn_tls(&art, dir.path())?
        } else {
            Sim::spawn(&art, dir.path())?
        };
        let mut cp_env = opts.cp_env.clone();
        if let Some(ca) = &sim.ca_file {
            cp_env.push((
                "CODEXMESH_UPSTREAM_CA_FILE".into(),
                ca.display().to_string(),
            ));
        }
        let env = CpEnv::new(dir.path(), &sim, &art, cp_env);
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
        let bootstrap = Envoy::render_bootstrap_with(
            &cp,
            grpc,
            None,
            &opts.envoy_bootstrap_args,
            dir.path(),
            "envoy",
        )?;
        let envoy = Envoy::run(&art, &bootstrap, &push, dir.path(), "envoy").await?;
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
        wait::until_async(
            timeout,
            Duration::from_millis(25),
            "the gateway to serve",
            || async {
                let (status, body) = self.turn_at(envoy, key).await?;
                Ok(if status == 200 {
                    Probe::Ready(())
                } else {
                    Probe::NotYet(format!("answer {status} {body}"))
                })
            },
        )
        .await
        .with_context(|| {
            format!(
                "envoy log:\n{}\ncontrol plane log:\n{}",
                tail(&envoy.proc.log_text()),
                self.cp
                    .proc()
                    .map(|p| tail(&p.log_text()))
                    .unwrap_or_default()
            )
        })?;
        Ok(start.elapsed())
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
    crate::auth::import_auth_json(
        cp,
        dir,
        &format!("{label}.auth.json"),
        &serde_json::to_string_pretty(&account["auth_json"])?,
        pool,
        Some(label),
    )?;
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
