//! A running `codexmesh serve`.
//!
//! Rules: `serve` listens on loopback ports the OS picks (or the caller fixes) and is ready when
//! it prints `codexmesh serving grpc=ADDR admin=ADDR ...`; the kit waits for that line (bounded)
//! and reads both addresses from it. The process is a [`Proc`]: killed by PID on drop, log in the
//! test's directory.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::cli::{Cli, Workspace};
use crate::net::parse_addr;
use crate::proc::Proc;

/// How long `serve` may take to print its readiness line.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A `codexmesh serve` child, killed (by its PID) if the test ends early.
pub struct Served {
    pub proc: Proc,
    /// The gRPC address, `HOST:PORT` as printed.
    pub grpc: String,
    /// The admin HTTP API's address, `HOST:PORT` as printed.
    pub admin: String,
}

impl Served {
    /// Spawns `cmd` (a `codexmesh ... serve` command) as `name` with its log in `log_dir`, and
    /// waits for the readiness line.
    pub fn spawn(name: &str, cmd: Command, log_dir: &std::path::Path) -> Result<Self> {
        let mut proc = Proc::spawn(name, cmd, log_dir)?;
        let line = proc.wait_for_line("codexmesh serving ", READY_WITHIN)?;
        let field = |key: &str| -> Result<String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key).map(str::to_owned))
                .ok_or_else(|| anyhow!("no {key} in the readiness line: {line:?}"))
        };
        Ok(Self {
            grpc: field("grpc=")?,
            admin: field("admin=")?,
            proc,
        })
    }

    /// Starts `serve` for `ws` on OS-chosen loopback ports (change poll 100 ms) with `extra`
    /// flags after `serve`.
    pub fn start(ws: &Workspace, extra: &[&str]) -> Result<Self> {
        Self::start_env(ws, extra, &[])
    }

    /// Like [`Served::start`], with extra environment variables.
    pub fn start_env(ws: &Workspace, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = ws.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--change-poll-ms",
            "100",
        ])
        .args(extra);
        Self::spawn("serve", cmd, ws.path())
    }

    pub fn grpc_addr(&self) -> Result<SocketAddr> {
        parse_addr(&self.grpc)
    }

    pub fn admin_addr(&self) -> Result<SocketAddr> {
        parse_addr(&self.admin)
    }

    /// The log lines containing `needle` (every line for `""`).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.proc.log_lines(needle)
    }

    /// Waits (bounded) for the process to exit on its own; returns its wait status.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        self.proc.wait_exit(within)
    }

    /// SIGTERM, then waits (15 s) for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Result<i32> {
        self.proc.terminate(Duration::from_secs(15))
    }
}
