//! The ChatGPT simulator (`codexmesh-sim`) and the client of its `/__sim/` control API.
//!
//! Two ways to run it, one [`Sim`]: [`Sim::start`] runs it in this process, on its own runtime
//! in its own thread (so blocking test code never starves it) — for tests whose cargo run
//! builds no simulator binary; [`Sim::spawn`] runs the built binary as a child [`Proc`] — for
//! the end-to-end tests, which may kill it. Either way it listens on an OS-chosen loopback port,
//! is driven over HTTP only, and stops when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::bin::Artifacts;
use crate::net::parse_addr;
use crate::proc::Proc;
use crate::wait::{self, Probe};

/// How the simulator runs.
enum Running {
    /// The `codexmesh-sim` binary.
    Child(Proc),
    /// [`codexmesh_sim::start`] on a thread of this process.
    Thread {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// A running simulator and a client of its control API.
pub struct Sim {
    pub addr: SocketAddr,
    http: reqwest::Client,
    running: Running,
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

impl Sim {
    /// Runs the simulator in this process.
    pub fn start() -> Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match codexmesh_sim::start(([127, 0, 0, 1], 0).into()).await {
                    Ok(sim) => {
                        let _ = addr_tx.send(Ok(sim.addr));
                        let _ = stop_rx.await;
                        drop(sim);
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| anyhow!("the simulator did not start within 20 s"))?
            .map_err(|e| anyhow!("the simulator did not start: {e}"))?;
        Ok(Self {
            addr,
            http: client()?,
            running: Running::Thread {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
        })
    }

    /// Runs the simulator binary of `art` as a child, its log in `dir`.
    pub fn spawn(art: &Artifacts, dir: &Path) -> Result<Self> {
        let mut cmd = Command::new(&art.sim);
        cmd.args(["--listen", "127.0.0.1:0"]);
        let mut proc = Proc::spawn("sim", cmd, dir)?;
        let addr = parse_addr(&proc.wait_for_line("listening on ", Duration::from_secs(20))?)?;
        Ok(Self {
            addr,
            http: client()?,
            running: Running::Child(proc),
        })
    }

    /// The PID of a spawned simulator (`None` in process).
    pub fn pid(&self) -> Option<i32> {
        match &self.running {
            Running::Child(p) => p.pid(),
            Running::Thread { .. } => None,
        }
    }

    /// The spawned simulator's process (`None` in process).
    pub fn proc(&self) -> Option<&Proc> {
        match &self.running {
            Running::Child(p) => Some(p),
            Running::Thread { .. } => None,
        }
    }

    /// `http://ADDR`.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream base URL (`CODEXMESH_UPSTREAM_BASE_URL`): `http://ADDR/backend-api`.
    pub fn base_url(&self) -> String {
        format!("http://{}/backend-api", self.addr)
    }

    /// The OAuth token endpoint (`CODEXMESH_OAUTH_TOKEN_URL`).
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// Settings flags pointing every outbound call of `codexmesh` at this simulator.
    pub fn cp_args(&self) -> Vec<String> {
        vec![
            "--upstream-base-url".into(),
            self.base_url(),
            "--oauth-token-url".into(),
            self.token_url(),
            "--auth-base-url".into(),
            self.root_url(),
        ]
    }

    /// One call of the control API; `path` starts at the root (`/__sim/...`). A non-2xx answer
    /// is an error; an empty body is `null`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.root_url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("sim {path}"))?;
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
        self.call(reqwest::Method::POST, "/__sim/accounts", Some(spec))
            .await
    }

    /// `GET /__sim/accounts/{id}`: quota use, tokens, refresh call counts.
    pub async fn account(&self, id: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, &format!("/__sim/accounts/{id}"), None)
            .await
    }

    /// `POST /__sim/accounts/{id}`: patch limits, usage, failures.
    pub async fn patch_account(&self, id: &str, patch: Value) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            &format!("/__sim/accounts/{id}"),
            Some(patch),
        )
        .await
    }

    /// `POST /__sim/behavior`: the simulator-wide knobs.
    pub async fn behavior(&self, knobs: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, "/__sim/behavior", Some(knobs))
            .await
    }

    /// Every request-log entry.
    pub async fn requests(&self) -> Result<Vec<Value>> {
        self.requests_where("").await
    }

    /// Request-log entries matching `query` (e.g. `path_contains=/oauth/token&include_body=1`).
    pub async fn requests_where(&self, query: &str) -> Result<Vec<Value>> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/__sim/requests?{query}"),
                None,
            )
            .await?;
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

    pub async fn clear_requests(&self) -> Result<()> {
        self.call(reqwest::Method::DELETE, "/__sim/requests", None)
            .await?;
        Ok(())
    }

    /// Polls `GET /__sim/accounts/{id}` until `pred` holds (bounded).
    pub async fn wait_account(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let pred = &pred;
        wait::until_async(
            within,
            Duration::from_millis(50),
            &format!("sim account {id}: {what}"),
            || async move {
                let a = self.account(id).await?;
                Ok(if pred(&a) {
                    Probe::Ready(a)
                } else {
                    Probe::NotYet(a.to_string())
                })
            },
        )
        .await
    }

    /// A plain GET on the simulator's upstream with an access token; returns the status (is the
    /// token accepted?).
    pub async fn get_with_token(&self, path: &str, token: &str, account_id: &str) -> Result<u16> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base_url()))
            .bearer_auth(token)
            .header("chatgpt-account-id", account_id)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Running::Thread { stop, thread } = &mut self.running {
            if let Some(s) = stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
        // A spawned simulator's Proc kills it by PID when it drops.
    }
}
