//! `codexmesh-sim --listen 127.0.0.1:0 [--port-file PATH]`

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use codexmesh_sim::state::BehaviorPatch;
use codexmesh_sim::{serve, SimState};
use tokio::net::TcpListener;

/// A loopback simulator of the ChatGPT Codex backend, Anthropic's API and Google Code Assist,
/// with their OAuth token endpoints, on one port.
#[derive(Debug, Parser)]
#[command(name = "codexmesh-sim", version)]
struct Args {
    /// Address to listen on (port 0 lets the OS choose).
    #[arg(long, env = "CODEXMESH_SIM_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the chosen port here (atomically: temp file then rename).
    #[arg(long, env = "CODEXMESH_SIM_PORT_FILE")]
    port_file: Option<PathBuf>,
    /// Allow a non-loopback listen address.
    #[arg(long)]
    allow_non_loopback: bool,
    /// Initial delay between SSE events (ms).
    #[arg(long, env = "CODEXMESH_SIM_EVENT_DELAY_MS")]
    event_delay_ms: Option<u64>,
    /// Initial reply text.
    #[arg(long, env = "CODEXMESH_SIM_REPLY_TEXT")]
    reply_text: Option<String>,
    /// Set `prefer_websockets: true` on every model of `/codex/models` (knob
    /// `prefer_websockets`).
    #[arg(long, env = "CODEXMESH_SIM_PREFER_WEBSOCKETS")]
    prefer_websockets: bool,
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1, localhost and ::1.
    #[arg(long, env = "CODEXMESH_SIM_TLS")]
    tls: bool,
    /// With --tls: write the certificate (PEM) here, for clients to trust. Written before the
    /// port file.
    #[arg(long, env = "CODEXMESH_SIM_TLS_CERT_OUT", requires = "tls")]
    tls_cert_out: Option<PathBuf>,
}

/// Write a file atomically: a temp file beside it, then rename.
fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() && !args.allow_non_loopback {
        eprintln!(
            "codexmesh-sim: refusing to listen on {} (not loopback); pass --allow-non-loopback",
            args.listen
        );
        return ExitCode::from(2);
    }
    let state = Arc::new(SimState::new());
    {
        let patch = BehaviorPatch {
            event_delay_ms: args.event_delay_ms,
            reply_text: args.reply_text.clone(),
            prefer_websockets: args.prefer_websockets.then_some(true),
            ..Default::default()
        };
        if let Err(e) = state.lock().behavior.apply(patch) {
            eprintln!("codexmesh-sim: {e}");
            return ExitCode::from(2);
        }
    }
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("codexmesh-sim: cannot bind {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("codexmesh-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = if args.tls {
        match codexmesh_sim::tls::self_signed(codexmesh_sim::tls::default_names()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("codexmesh-sim: cannot make a certificate: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if let (Some(path), Some(cert)) = (&args.tls_cert_out, &tls) {
        if let Err(e) = write_atomic(path, &cert.cert_pem) {
            eprintln!("codexmesh-sim: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &args.port_file {
        if let Err(e) = write_atomic(path, &format!("{}\n", addr.port())) {
            eprintln!("codexmesh-sim: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, tls = tls.is_some(), "codexmesh-sim ready");
    match serve(listener, state, tls.map(|c| c.config), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codexmesh-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
