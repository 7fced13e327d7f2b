//! The real Claude Code and Gemini CLI (pinned in `tests/agent-clis`, installed by
//! `scripts/setup.sh --test`), run as a developer behind the gateway would run them.
//!
//! Rules:
//! - **Offline by their own settings.** Each run starts from an empty environment (only `PATH`
//!   is kept, so no developer key, proxy or config leaks in) with its own `HOME`; Claude Code gets
//!   `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` and `DISABLE_AUTOUPDATER=1`, Gemini CLI a
//!   `settings.json` with usage statistics, telemetry and auto-update off. What they still try
//!   outside the gateway (Google's userinfo) goes nowhere: the tests run on loopback.
//! - **The pool key is their only credential**: Claude Code sends it as `x-api-key`
//!   (`ANTHROPIC_API_KEY`) or as a bearer token (`ANTHROPIC_AUTH_TOKEN`); Gemini CLI as the bearer
//!   token of `GOOGLE_CLOUD_ACCESS_TOKEN` in Code Assist mode (`GOOGLE_GENAI_USE_GCA=true`, the
//!   string `true`: `1` does not select it).
//! - **Bounded.** A run that does not finish within [`RUN_LIMIT`] is killed by its PID.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bin::repo_root;

/// Longest a CLI run may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// How Claude Code presents the pool key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaudeKeyHeader {
    /// `ANTHROPIC_API_KEY` → `x-api-key`.
    XApiKey,
    /// `ANTHROPIC_AUTH_TOKEN` → `Authorization: Bearer`.
    Bearer,
}

/// What a run printed.
#[derive(Debug, Clone)]
pub struct CliRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Fails with both streams unless the run exited 0.
    pub fn ok(self) -> Result<Self> {
        if !self.success {
            bail!(
                "the CLI failed\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// The Claude Code native binary (`@anthropic-ai/claude-code-linux-x64`).
pub fn claude_binary() -> Result<PathBuf> {
    installed("node_modules/@anthropic-ai/claude-code-linux-x64/claude")
}

/// Gemini CLI's launcher (`@google/gemini-cli`, runs on node ≥ 20).
pub fn gemini_binary() -> Result<PathBuf> {
    installed("node_modules/.bin/gemini")
}

fn installed(rel: &str) -> Result<PathBuf> {
    let path = repo_root().join("tests/agent-clis").join(rel);
    if !path.exists() {
        bail!(
            "{} is missing: `bash scripts/setup.sh --test` installs the pinned agent CLIs",
            path.display()
        );
    }
    Ok(path)
}

/// A Claude Code user: its own home and working directory under `dir`.
pub struct ClaudeCode {
    pub home: PathBuf,
    pub workdir: PathBuf,
    pub gateway_url: String,
    pub pool_key: String,
    pub key_header: ClaudeKeyHeader,
}

impl ClaudeCode {
    /// A fresh user in `dir` pointed at `gateway_url` (no `/v1`: the CLI appends it).
    pub fn new(
        dir: &Path,
        gateway_url: &str,
        pool_key: &str,
        key_header: ClaudeKeyHeader,
    ) -> Result<Self> {
        let home = dir.join("claude-home");
        let workdir = dir.join("claude-work");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&workdir)?;
        Ok(Self {
            home,
            workdir,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            pool_key: pool_key.to_owned(),
            key_header,
        })
    }

    /// `claude -p PROMPT` plus `extra` (e.g. `--session-id U` or `--resume U`).
    pub async fn prompt(&self, prompt: &str, extra: &[&str]) -> Result<CliRun> {
        let mut cmd = Command::new(claude_binary()?);
        cmd.arg("-p").arg(prompt).args(extra);
        clean_env(&mut cmd, &self.home, &self.workdir);
        cmd.env("ANTHROPIC_BASE_URL", &self.gateway_url)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1");
        match self.key_header {
            ClaudeKeyHeader::XApiKey => cmd.env("ANTHROPIC_API_KEY", &self.pool_key),
            ClaudeKeyHeader::Bearer => cmd.env("ANTHROPIC_AUTH_TOKEN", &self.pool_key),
        };
        run(cmd).await
    }
}

/// A Gemini CLI user in Code Assist mode: its own home (with `settings.json`) and working
/// directory under `dir`.
pub struct GeminiCli {
    pub home: PathBuf,
    pub workdir: PathBuf,
    pub gateway_url: String,
    pub pool_key: String,
}

/// `~/.gemini/settings.json`: Google login (Code Assist) selected, nothing phoning home.
pub const GEMINI_SETTINGS: &str = r#"{
  "security": { "auth": { "selectedType": "oauth-personal" } },
  "privacy": { "usageStatisticsEnabled": false },
  "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
  "telemetry": { "enabled": false }
}
"#;

impl GeminiCli {
    pub fn new(dir: &Path, gateway_url: &str, pool_key: &str) -> Result<Self> {
        let home = dir.join("gemini-home");
        let workdir = dir.join("gemini-work");
        std::fs::create_dir_all(home.join(".gemini"))?;
        std::fs::create_dir_all(&workdir)?;
        std::fs::write(home.join(".gemini/settings.json"), GEMINI_SETTINGS)?;
        Ok(Self {
            home,
            workdir,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            pool_key: pool_key.to_owned(),
        })
    }

    /// `gemini -p PROMPT` plus `extra` (e.g. `--resume latest`).
    pub async fn prompt(&self, prompt: &str, extra: &[&str]) -> Result<CliRun> {
        let mut cmd = Command::new(gemini_binary()?);
        cmd.arg("-p").arg(prompt).args(extra);
        clean_env(&mut cmd, &self.home, &self.workdir);
        cmd.env("GOOGLE_GENAI_USE_GCA", "true")
            .env("GOOGLE_CLOUD_ACCESS_TOKEN", &self.pool_key)
            .env("CODE_ASSIST_ENDPOINT", &self.gateway_url)
            .env("GEMINI_CLI_TRUST_WORKSPACE", "true")
            .env("GEMINI_CLI_NO_RELAUNCH", "true");
        run(cmd).await
    }
}

/// Only `PATH` from this process; `HOME` and the temp dir are the user's own.
fn clean_env(cmd: &mut Command, home: &Path, workdir: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let tmp = home.join("tmp");
    let _ = std::fs::create_dir_all(&tmp);
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("TMPDIR", &tmp)
        .env("NO_COLOR", "1")
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

async fn run(mut cmd: Command) -> Result<CliRun> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(RUN_LIMIT, waiter).await {
        Ok(done) => {
            let out = done.context("waiting for the CLI")??;
            Ok(CliRun {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on the PID of the child we spawned (its waiter still holds
                // it, so the PID is not reaped and cannot be reused).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            bail!("{program} did not finish within {RUN_LIMIT:?}");
        }
    }
}
