//! Envoy with the codexmesh wasm module.
//!
//! Rules: the bootstrap is rendered by the CLI (`codexmesh envoy-bootstrap`, as `codexmesh up`
//! does) with the gateway and admin listeners on port 0; Envoy writes its admin address to a
//! file and the gateway port is read from `/listeners`, both awaited with a deadline. The push
//! token reaches Envoy through its environment only. Envoy is a [`Proc`]: killed by PID on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::bin::Artifacts;
use crate::cli::Cli;
use crate::net::parse_addr;
use crate::proc::{tail, Proc};
use crate::stack::ControlPlane;
use crate::wait::{self, Probe};

/// How long Envoy may take to come up.
const START_WITHIN: Duration = Duration::from_secs(30);

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
        let bootstrap = Self::render_bootstrap(cp, grpc, control_plane, dir, name)?;
        Self::run(art, &bootstrap, push_token, dir, name).await
    }

    /// Renders `dir/<name>.yaml` with `codexmesh envoy-bootstrap` (node id `name`, gateway and
    /// admin on port 0, the control plane at `grpc` or `control_plane`); returns its path. A
    /// caller may edit it before [`Envoy::run`].
    pub fn render_bootstrap(
        cp: &ControlPlane,
        grpc: SocketAddr,
        control_plane: Option<&str>,
        dir: &Path,
        name: &str,
    ) -> Result<PathBuf> {
        Self::render_bootstrap_with(cp, grpc, control_plane, &[], dir, name)
    }

    /// [`Envoy::render_bootstrap`] with further `envoy-bootstrap` arguments (`extra`).
    pub fn render_bootstrap_with(
        cp: &ControlPlane,
        grpc: SocketAddr,
        control_plane: Option<&str>,
        extra: &[String],
        dir: &Path,
        name: &str,
    ) -> Result<PathBuf> {
        let bootstrap = dir.join(format!("{name}.yaml"));
        let mut cmd = cp.command();
        cmd.env("CODEXMESH_GRPC_LISTEN", grpc.to_string())
            .env("CODEXMESH_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("CODEXMESH_ENVOY_ADMIN_LISTEN", "127.0.0.1:0")
            .arg("envoy-bootstrap")
            .arg("--out")
            .arg(&bootstrap)
            .args(["--node-id", name]);
        if let Some(target) = control_plane {
            cmd.args(["--control-plane", target]);
        }
        cmd.args(extra);
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "envoy-bootstrap failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(bootstrap)
    }

    /// Starts Envoy on a bootstrap already rendered and waits for its admin address and its
    /// listener.
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
        let admin = wait::until(
            START_WITHIN,
            Duration::from_millis(20),
            "envoy to write its admin address",
            || {
                if let Ok(text) = std::fs::read_to_string(&admin_path) {
                    if let Ok(a) = parse_addr(&text) {
                        return Ok(Probe::Ready(a));
                    }
                }
                if !proc.is_running() {
                    bail!("envoy exited:\n{}", tail(&proc.log_text()));
                }
                Ok(Probe::NotYet(tail(&proc.log_text())))
            },
        )?;
        let http = reqwest::Client::new();
        // The probe checks the process between awaits: a shared cell, borrowed only briefly.
        let cell = std::cell::RefCell::new(&mut proc);
        let (http, cell) = (&http, &cell);
        let listen = wait::until_async(
            START_WITHIN,
            Duration::from_millis(20),
            "envoy's gateway listener",
            || async move {
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
                            return Ok(Probe::Ready(parse_addr(&format!("127.0.0.1:{port}"))?));
                        }
                    }
                }
                let mut proc = cell.borrow_mut();
                if !proc.is_running() {
                    bail!("envoy exited:\n{}", tail(&proc.log_text()));
                }
                Ok(Probe::NotYet(tail(&proc.log_text())))
            },
        )
        .await?;
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

/// The leak scan reads what Envoy's admin shows while it still answers: the whole config (with
/// endpoints) and every stat.
impl Drop for Envoy {
    fn drop(&mut self) {
        if crate::leaks::scan_dir().is_none() {
            return;
        }
        let admin = self.admin.to_string();
        for (origin, path) in [
            ("envoy /config_dump", "/config_dump?include_eds"),
            ("envoy /stats", "/stats"),
            ("envoy /stats/prometheus", "/stats/prometheus"),
            ("envoy /clusters", "/clusters"),
        ] {
            match crate::net::http_get(&admin, path) {
                Ok((200, body)) => crate::leaks::scan_text(origin, body.as_bytes()),
                Ok((status, _)) => crate::leaks::unreadable(origin, &format!("status {status}")),
                Err(e) => crate::leaks::unreadable(origin, &e.to_string()),
            }
        }
    }
}
