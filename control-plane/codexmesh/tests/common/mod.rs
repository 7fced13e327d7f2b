//! Helpers for the integration tests: a temp workspace, the built binary, Codex auth.json files.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

pub mod pg;
pub mod sim;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type AnyError = Box<dyn std::error::Error>;

pub const BIN: &str = env!("CARGO_BIN_EXE_codexmesh");

/// Every setting variable, removed from children so the developer's environment cannot leak in.
const SETTING_VARS: &[&str] = &[
    "CODEXMESH_CONFIG",
    "CODEXMESH_STORE",
    "CODEXMESH_DATA_DIR",
    "CODEXMESH_UPSTREAM_BASE_URL",
    "CODEXMESH_OAUTH_TOKEN_URL",
    "CODEXMESH_GRPC_LISTEN",
    "CODEXMESH_ADMIN_LISTEN",
    "CODEXMESH_GATEWAY_LISTEN",
    "CODEXMESH_ENVOY_ADMIN_LISTEN",
    "CODEXMESH_PUSH_TOKEN",
    "CODEXMESH_MASTER_KEY",
    "CODEXMESH_ENVOY_BIN",
    "CODEXMESH_WASM",
    "CODEXMESH_HEARTBEAT_INTERVAL_MS",
    "CODEXMESH_CHANGE_POLL_MS",
    "CODEXMESH_REFRESH_LEAD_SECS",
    "CODEXMESH_REFRESH_LEASE_SECS",
    "CODEXMESH_QUOTA_POLL_INTERVAL_SECS",
    "CODEXMESH_HEALTH_WINDOW_SECS",
    "CODEXMESH_AUTH_BASE_URL",
    "CODEXMESH_WATCH",
    "CODEXMESH_WATCH_INTERVAL_MS",
    "CODEXMESH_FAULT",
    "RUST_LOG",
];

/// Where the binary's outbound calls go unless a test points them at a simulator: a closed
/// loopback port, so no test ever reaches the Internet.
const NOWHERE: &str = "http://127.0.0.1:9";

/// A temp dir holding one store and data dir.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// A store other than the workspace's SQLite file (e.g. a temporary Postgres).
    pub store_override: Option<String>,
    /// Settings flags added to every command (e.g. the simulator's URLs).
    pub extra_args: Vec<String>,
}

impl Workspace {
    pub fn new() -> Result<Self, AnyError> {
        Ok(Self {
            dir: tempfile::tempdir()?,
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

    /// The binary with this workspace's store and data dir, a clean environment, cwd = the dir.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        for v in SETTING_VARS {
            c.env_remove(v);
        }
        c.current_dir(self.path())
            .env(
                "CODEXMESH_UPSTREAM_BASE_URL",
                format!("{NOWHERE}/backend-api"),
            )
            .env(
                "CODEXMESH_OAUTH_TOKEN_URL",
                format!("{NOWHERE}/oauth/token"),
            )
            .env("CODEXMESH_AUTH_BASE_URL", NOWHERE)
            .arg("--store")
            .arg(self.store_url())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Run, AnyError> {
        let out = self.command().args(args).output()?;
        Ok(Run::from(out))
    }

    /// Runs and requires success.
    pub fn ok(&self, args: &[&str]) -> Result<Run, AnyError> {
        let r = self.run(args)?;
        if r.code != 0 {
            return Err(format!(
                "`codexmesh {}` exited {}:\nstdout: {}\nstderr: {}",
                args.join(" "),
                r.code,
                r.stdout,
                r.stderr
            )
            .into());
        }
        Ok(r)
    }

    pub fn ok_json(&self, args: &[&str]) -> Result<Value, AnyError> {
        let mut a = args.to_vec();
        a.push("--json");
        let r = self.ok(&a)?;
        Ok(serde_json::from_str(r.stdout.trim())?)
    }

    /// Writes an auth.json into the workspace and returns its path.
    pub fn write_auth(&self, name: &str, contents: &str) -> Result<PathBuf, AnyError> {
        let p = self.path().join(name);
        std::fs::write(&p, contents)?;
        Ok(p)
    }

    /// Writes `contents` as auth file `file_name` and imports it into `pool` (with `label` when
    /// given); returns the import's JSON answer.
    pub fn import_auth(
        &self,
        file_name: &str,
        contents: &str,
        pool: &str,
        label: Option<&str>,
    ) -> Result<Value, AnyError> {
        let path = self.write_auth(file_name, contents)?;
        let mut args = vec![
            "account",
            "import",
            path.to_str().ok_or("path")?,
            "--pool",
            pool,
        ];
        if let Some(label) = label {
            args.extend(["--name", label]);
        }
        self.ok_json(&args)
    }

    /// The store file's bytes plus its WAL (what "nothing written" is checked against).
    pub fn store_fingerprint(&self) -> Result<Vec<u8>, AnyError> {
        let mut bytes = std::fs::read(self.db_path())?;
        let wal = self.db_path().with_extension("db-wal");
        if wal.exists() {
            bytes.extend(std::fs::read(wal)?);
        }
        Ok(bytes)
    }
}

/// What the store holds, as the CLI shows it: the revision (bumped by every mutation), pools,
/// accounts and keys. Compared before and after a command that must not write.
pub fn logical_state(ws: &Workspace) -> Result<Value, AnyError> {
    let mut status = ws.ok_json(&["status"])?;
    if let Some(o) = status.as_object_mut() {
        o.remove("generated_at_ms");
    }
    Ok(json!({
        "status": status,
        "accounts": ws.ok_json(&["account", "list"])?,
        "keys": ws.ok_json(&["key", "list"])?,
    }))
}

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

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A JWT with `claims` and an empty signature: the control plane never verifies signatures, but
/// its decoder (`jsonwebtoken`) wants a header naming a real algorithm (ChatGPT's is RS256).
pub fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(claims)
    )
}

/// Codex CLI-shaped tokens for one ChatGPT account.
pub struct Login {
    pub account_id: String,
    pub email: String,
    pub plan: String,
    pub exp: i64,
    pub access_token: String,
    pub refresh_token: String,
    pub id_token: String,
}

impl Login {
    pub fn new(account_id: &str, email: &str, plan: &str, nonce: &str) -> Self {
        let ns = "https://api.openai.com/auth";
        let exp = 2_000_000_000;
        let id_token = jwt(&json!({
            "email": email,
            "exp": exp,
            ns: {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan, "chatgpt_user_id": "user-x"}
        }));
        let access_token = jwt(&json!({
            "exp": exp,
            "nonce": nonce,
            ns: {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan}
        }));
        Self {
            account_id: account_id.to_owned(),
            email: email.to_owned(),
            plan: plan.to_owned(),
            exp,
            access_token,
            refresh_token: format!("rt_{nonce}_secret"),
            id_token,
        }
    }

    pub fn auth_json(&self) -> String {
        json!({
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.account_id
            },
            "last_refresh": "2026-05-01T10:00:00.000000Z"
        })
        .to_string()
    }
}

/// A `codexmesh serve` child that is killed (by its PID) if the test ends early.
pub struct Served {
    pub child: Child,
    pub grpc: String,
    pub admin: String,
    /// Every stderr line so far (also forwarded to the test's stderr).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `serve` on OS-chosen loopback ports and waits for its readiness line.
    pub fn start(ws: &Workspace, extra: &[&str]) -> Result<Self, AnyError> {
        Self::start_env(ws, extra, &[])
    }

    /// Like [`Served::start`], with extra environment variables.
    pub fn start_env(
        ws: &Workspace,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, AnyError> {
        let mut cmd = ws.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--change-poll-ms",
                "100",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        // Forward stderr so failures show the server's log; it also keeps the pipe drained.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let mut served = Self {
            child,
            grpc: String::new(),
            admin: String::new(),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "serve printed no readiness line within 30 s")?;
        let field = |name: &str| -> Option<String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_owned))
        };
        if !line.starts_with("codexmesh serving ") {
            return Err(format!("unexpected first line: {line:?}").into());
        }
        served.grpc = field("grpc").ok_or("no grpc= in readiness line")?;
        served.admin = field("admin").ok_or("no admin= in readiness line")?;
        Ok(served)
    }

    /// The stderr lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().filter(|x| x.contains(needle)).cloned().collect())
            .unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit on its own; returns its wait status.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus, AnyError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("serve did not exit within {within:?}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(mut self) -> Result<i32, AnyError> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return Err("serve did not exit within 15 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A bare HTTP/1.1 GET against a loopback address; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), AnyError> {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), AnyError> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .ok_or("empty HTTP response")?
        .parse()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
