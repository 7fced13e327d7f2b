//! The ChatGPT simulator (`codexmesh-sim`), embedded: it runs on its own runtime in its own
//! thread (so blocking test code never starves it), on an OS-chosen loopback port, and is
//! driven over its `/__sim/` HTTP control API like the end-to-end tests do.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::AnyError;

pub struct Sim {
    pub base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    pub fn start() -> Result<Self, AnyError> {
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
            .map_err(|_| "the simulator did not start")??;
        Ok(Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn upstream_url(&self) -> String {
        format!("{}/backend-api", self.base)
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.base)
    }

    /// Settings flags pointing every outbound call of `codexmesh` at this simulator.
    pub fn cp_args(&self) -> Vec<String> {
        vec![
            "--upstream-base-url".into(),
            self.upstream_url(),
            "--oauth-token-url".into(),
            self.token_url(),
            "--auth-base-url".into(),
            self.base.clone(),
        ]
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AnyError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(format!("sim {path}: {status}: {text}").into());
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    pub async fn create_account(&self, spec: Value) -> Result<Value, AnyError> {
        self.call(reqwest::Method::POST, "/__sim/accounts", Some(spec))
            .await
    }

    pub async fn account(&self, id: &str) -> Result<Value, AnyError> {
        self.call(reqwest::Method::GET, &format!("/__sim/accounts/{id}"), None)
            .await
    }

    pub async fn patch(&self, id: &str, patch: Value) -> Result<Value, AnyError> {
        self.call(
            reqwest::Method::POST,
            &format!("/__sim/accounts/{id}"),
            Some(patch),
        )
        .await
    }

    pub async fn behavior(&self, knobs: Value) -> Result<Value, AnyError> {
        self.call(reqwest::Method::POST, "/__sim/behavior", Some(knobs))
            .await
    }

    /// Request log entries (`query` e.g. `path_contains=/oauth/token&include_body=1`).
    pub async fn requests(&self, query: &str) -> Result<Vec<Value>, AnyError> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/__sim/requests?{query}"),
                None,
            )
            .await?;
        Ok(match v {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("requests") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    /// Polls `GET /__sim/accounts/{id}` until `pred` holds (bounded).
    pub async fn wait_account(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, AnyError> {
        let deadline = Instant::now() + within;
        loop {
            let a = self.account(id).await?;
            if pred(&a) {
                return Ok(a);
            }
            if Instant::now() > deadline {
                return Err(format!("sim account {id}: {what} not within {within:?}: {a}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A plain GET on the simulator's upstream with an access token (is it accepted?).
    pub async fn get_with_token(
        &self,
        path: &str,
        token: &str,
        account_id: &str,
    ) -> Result<u16, AnyError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.upstream_url()))
            .bearer_auth(token)
            .header("chatgpt-account-id", account_id)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
