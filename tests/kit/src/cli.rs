//! Running the `codexmesh` CLI: the [`Cli`] trait (one implementation of run / require success /
//! parse `--json`) and [`Workspace`], a temp dir with its own store whose settings go as flags.
//!
//! Rules: every command comes from [`crate::env::codexmesh_command`] (scrubbed environment,
//! outbound URLs nowhere); CLI runs are synchronous and their output is captured whole in a
//! [`Run`]; `ok*` turn a non-zero exit into an error carrying both output streams.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::env::codexmesh_command;

/// Output of one CLI run.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Something that runs `codexmesh` with one test's settings.
pub trait Cli {
    /// A `codexmesh` command with this test's settings and no arguments yet.
    fn command(&self) -> Command;

    /// Runs `codexmesh ARGS` to the end.
    fn run(&self, args: &[&str]) -> Result<Run> {
        let out = self
            .command()
            .args(args)
            .output()
            .context("running codexmesh")?;
        Ok(Run::from(out))
    }

    /// Runs and requires exit code 0.
    fn ok(&self, args: &[&str]) -> Result<Run> {
        let r = self.run(args)?;
        if r.code != 0 {
            bail!(
                "`codexmesh {}` exited {}:\nstdout: {}\nstderr: {}",
                args.join(" "),
                r.code,
                r.stdout,
                r.stderr
            );
        }
        Ok(r)
    }

    /// Runs with `--json` appended, requires success, and parses stdout.
    fn ok_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let r = self.ok(&all)?;
        serde_json::from_str(r.stdout.trim()).with_context(|| {
            format!(
                "`codexmesh {}` printed no JSON: {}",
                args.join(" "),
                r.stdout
            )
        })
    }
}

/// A temp dir holding one store and data dir; settings go as flags before the subcommand.
pub struct Workspace {
    pub dir: crate::leaks::TestDir,
    /// The binary run (this test run's `codexmesh`, see [`crate::bin::codexmesh`]).
    pub bin: PathBuf,
    /// A store other than the workspace's SQLite file (e.g. a temporary Postgres).
    pub store_override: Option<String>,
    /// Settings flags added to every command (e.g. the simulator's URLs, [`crate::Sim::cp_args`]).
    pub extra_args: Vec<String>,
}

impl Workspace {
    pub fn new() -> Result<Self> {
        Ok(Self {
            dir: crate::test_dir("codexmesh-test-")?,
            bin: crate::bin::codexmesh()?,
            store_override: None,
            extra_args: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("store").join("cm.db")
    }

    pub fn store_url(&self) -> String {
        match &self.store_override {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.db_path().display()),
        }
    }

    /// Writes an auth.json into the workspace and returns its path.
    pub fn write_auth(&self, name: &str, contents: &str) -> Result<PathBuf> {
        crate::auth::write_auth_json(self.path(), name, contents)
    }

    /// Writes `contents` as auth file `file_name` and imports it into `pool` (with `label` when
    /// given); returns the import's JSON answer.
    pub fn import_auth(
        &self,
        file_name: &str,
        contents: &str,
        pool: &str,
        label: Option<&str>,
    ) -> Result<Value> {
        crate::auth::import_auth_json(self, self.path(), file_name, contents, pool, label)
    }

    /// The store file's raw bytes plus its WAL, for scanning what is stored in clear (not for
    /// "nothing was written": a WAL checkpoint on close moves bytes without a write).
    pub fn store_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = std::fs::read(self.db_path())?;
        let wal = self.db_path().with_extension("db-wal");
        if wal.exists() {
            bytes.extend(std::fs::read(wal)?);
        }
        Ok(bytes)
    }
}

impl Cli for Workspace {
    /// The binary with this workspace's store and data dir, a clean environment, cwd = the dir.
    fn command(&self) -> Command {
        let mut c = codexmesh_command(&self.bin);
        c.current_dir(self.path())
            .arg("--store")
            .arg(self.store_url())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args);
        c
    }
}

/// What the store holds, as the CLI shows it: the revision (bumped by every mutation), pools,
/// accounts and keys. Compared before and after a command that must not write.
pub fn logical_state(cli: &impl Cli) -> Result<Value> {
    let mut status = cli.ok_json(&["status"])?;
    if let Some(o) = status.as_object_mut() {
        o.remove("generated_at_ms");
    }
    Ok(json!({
        "status": status,
        "accounts": cli.ok_json(&["account", "list"])?,
        "keys": cli.ok_json(&["key", "list"])?,
    }))
}
