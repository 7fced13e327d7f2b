//! The simulator (`codexmesh-sim`: ChatGPT, Anthropic and Google Code Assist on one port) and
//! the client of its `/__sim/` control API.
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
    /// With [`Sim::spawn_tls`]: its self-signed certificate (PEM), the one root to trust.
    pub ca_file: Option<std::path::PathBuf>,
    http: reqwest::Client,
    running: Running,
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// A client of a TLS simulator, trusting its certificate only.
fn tls_client(cert: &Path) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cert)?)?;
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
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
            ca_file: None,
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
            ca_file: None,
            http: client()?,
            running: Running::Child(proc),
        })
    }

    /// Like [`Sim::spawn`], serving HTTPS with a self-signed certificate (for 127.0.0.1,
    /// localhost and ::1) written to `dir/sim-ca.pem` ([`Sim::ca_file`]); every URL is
    /// `https://`.
    pub fn spawn_tls(art: &Artifacts, dir: &Path) -> Result<Self> {
        let cert = dir.join("sim-ca.pem");
        let mut cmd = Command::new(&art.sim);
        cmd.args(["--listen", "127.0.0.1:0", "--tls", "--tls-cert-out"])
            .arg(&cert);
        let mut proc = Proc::spawn("sim", cmd, dir)?;
        let addr = parse_addr(&proc.wait_for_line("listening on ", Duration::from_secs(20))?)?;
        Ok(Self {
            addr,
            http: tls_client(&cert)?,
            ca_file: Some(cert),
            running: Running::Child(proc),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        }
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

    /// `http://ADDR` (`https://` with [`Sim::spawn_tls`]).
    pub fn root_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// The upstream base URL (`CODEXMESH_UPSTREAM_BASE_URL`): `http://ADDR/backend-api`.
    pub fn base_url(&self) -> String {
        format!("{}://{}/backend-api", self.scheme(), self.addr)
    }

    /// The OAuth token endpoint (`CODEXMESH_OAUTH_TOKEN_URL`).
    pub fn token_url(&self) -> String {
        format!("{}://{}/oauth/token", self.scheme(), self.addr)
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
            "--claude-base-url".into(),
            self.root_url(),
            "--claude-token-url".into(),
            self.claude_token_url(),
            "--gemini-base-url".into(),
            self.root_url(),
            "--google-token-url".into(),
            self.google_token_url(),
        ]
    }

    /// Anthropic's OAuth token endpoint here (`CODEXMESH_CLAUDE_TOKEN_URL`).
    pub fn claude_token_url(&self) -> String {
        format!("{}://{}/v1/oauth/token", self.scheme(), self.addr)
    }

    /// Google's OAuth token endpoint here (`CODEXMESH_GOOGLE_TOKEN_URL`).
    pub fn google_token_url(&self) -> String {
        format!("{}://{}/google/oauth2/token", self.scheme(), self.addr)
    }

    /// Settings flags pointing `codexmesh`'s Claude and Gemini calls at this simulator: both
    /// data-path upstreams at the root, the two token endpoints. Not part of [`Sim::cp_args`]
    /// until every control plane knows these flags.
    pub fn provider_cp_args(&self) -> Vec<String> {
        vec![
            "--claude-base-url".into(),
            self.root_url(),
            "--claude-token-url".into(),
            self.claude_token_url(),
            "--gemini-base-url".into(),
            self.root_url(),
            "--google-token-url".into(),
            self.google_token_url(),
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

    /// Creates a Claude subscription (OAuth) account; `spec` adds fields (`account_id`,
    /// limits, ...). The answer holds `access_token` (`sk-ant-oat01-…`), `refresh_token`,
    /// `credentials_file` (`{"claudeAiOauth":{…}}`).
    pub async fn create_claude_account(&self, spec: Value) -> Result<Value> {
        self.create_account(with_fields(
            spec,
            &[("provider", "claude"), ("credential", "oauth")],
        ))
        .await
    }

    /// Creates a Claude API-key account; the answer's `api_key` is `sk-ant-api03-…`.
    pub async fn create_claude_api_key_account(&self, spec: Value) -> Result<Value> {
        self.create_account(with_fields(
            spec,
            &[("provider", "claude"), ("credential", "api_key")],
        ))
        .await
    }

    /// Creates a Gemini (Google OAuth, Code Assist) account; `spec` may name its
    /// `project_id`. The answer holds `access_token` (`ya29.…`), `refresh_token` (`1//…`),
    /// `project_id`, `credentials_file` (`oauth_creds.json`).
    pub async fn create_gemini_account(&self, spec: Value) -> Result<Value> {
        self.create_account(with_fields(spec, &[("provider", "gemini")]))
            .await
    }

    /// `GET /__sim/accounts/{id}/credentials_file`: the file the account's CLI would hold
    /// (Codex `auth.json`, Claude `.credentials.json` or `{"api_key"}`, Gemini
    /// `oauth_creds.json`) for its newest tokens.
    pub async fn credentials_file(&self, id: &str) -> Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/__sim/accounts/{id}/credentials_file"),
            None,
        )
        .await
    }

    /// Writes [`Sim::credentials_file`] of `id` to `path` (pretty JSON), e.g. into a watched
    /// folder as `claude_<id>.json`.
    pub async fn write_credentials_file(&self, id: &str, path: &Path) -> Result<Value> {
        let file = self.credentials_file(id).await?;
        std::fs::write(path, serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("write {}", path.display()))?;
        Ok(file)
    }

    /// Request-log entries of one account on paths containing `path` (e.g. `/v1/messages`,
    /// `:streamGenerateContent`), to check which credential arrived.
    pub async fn requests_of(&self, account_id: &str, path: &str) -> Result<Vec<Value>> {
        Ok(self
            .requests()
            .await?
            .into_iter()
            .filter(|r| r["account_id"] == account_id)
            .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(path)))
            .collect())
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

    /// The request-log entries that came through a gateway: every entry but the control
    /// plane's own calls (its usage polls and token refreshes, `User-Agent: codexmesh/…`),
    /// which may reach any account at any time.
    pub async fn gateway_requests(&self) -> Result<Vec<Value>> {
        Ok(self
            .requests()
            .await?
            .into_iter()
            .filter(|r| {
                !r["headers"]["user-agent"]
                    .as_str()
                    .is_some_and(|ua| ua.starts_with("codexmesh/"))
            })
            .collect())
    }

    /// [`Sim::gateway_requests`] whose path contains `path`, oldest first.
    pub async fn gateway_requests_to(&self, path: &str) -> Result<Vec<Value>> {
        Ok(self
            .gateway_requests()
            .await?
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(path)))
            .collect())
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

/// `spec` (an object, or `null` for none) with `fields` set where it has none of its own.
fn with_fields(spec: Value, fields: &[(&str, &str)]) -> Value {
    let mut obj = match spec {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    for (k, v) in fields {
        obj.entry(k.to_string())
            .or_insert_with(|| Value::String(v.to_string()));
    }
    Value::Object(obj)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn with_fields_keeps_what_the_spec_says() {
        let v = with_fields(
            json!({"account_id": "a", "credential": "api_key"}),
            &[("provider", "claude"), ("credential", "oauth")],
        );
        assert_eq!(
            v,
            json!({"account_id": "a", "provider": "claude", "credential": "api_key"})
        );
        assert_eq!(
            with_fields(Value::Null, &[("provider", "gemini")]),
            json!({"provider": "gemini"})
        );
    }

    #[tokio::test]
    async fn provider_helpers_reach_the_simulator() {
        let sim = tokio::task::spawn_blocking(Sim::start)
            .await
            .unwrap()
            .unwrap();
        let args = sim.provider_cp_args();
        let root = sim.root_url();
        assert_eq!(
            args,
            [
                "--claude-base-url".to_string(),
                root.clone(),
                "--claude-token-url".into(),
                format!("{root}/v1/oauth/token"),
                "--gemini-base-url".into(),
                root.clone(),
                "--google-token-url".into(),
                format!("{root}/google/oauth2/token"),
            ]
        );
        let c = sim
            .create_claude_account(json!({"account_id": "c"}))
            .await
            .unwrap();
        let file = sim.credentials_file("c").await.unwrap();
        assert_eq!(file["claudeAiOauth"]["accessToken"], c["access_token"]);
        let k = sim
            .create_claude_api_key_account(json!(null))
            .await
            .unwrap();
        assert!(k["api_key"].as_str().unwrap().starts_with("sk-ant-api03-"));
        let g = sim
            .create_gemini_account(json!({"account_id": "g", "project_id": "p"}))
            .await
            .unwrap();
        assert_eq!(g["project_id"], "p");
        let dir = std::env::temp_dir().join(format!("kit-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gemini_g.json");
        sim.write_credentials_file("g", &path).await.unwrap();
        let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["refresh_token"], g["refresh_token"]);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(sim
            .requests_of("g", "/v1internal")
            .await
            .unwrap()
            .is_empty());
        tokio::task::spawn_blocking(move || drop(sim))
            .await
            .unwrap();
    }
}
