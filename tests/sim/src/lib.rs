//! codexmesh-sim: a loopback simulator of the ChatGPT Codex backend and of the auth server's
//! token endpoint, faithful to `shared/docs/codex-protocol.md`, and of Anthropic's and Google's
//! Code Assist APIs with their token endpoints, faithful to
//! `shared/docs/claude-gemini-protocol.md`, for codexmesh's end-to-end tests. All three
//! providers are served on one port.
//!
//! Modules by concern:
//! - [`clock`]: the controllable clock everything reads time from;
//! - [`quota`]: usage windows and their arithmetic;
//! - [`jwt`], [`accounts`]: tokens, lineages, refresh rotation and reuse detection;
//! - [`oauth`]: `POST /oauth/token` (refresh and authorization-code grants);
//! - [`device`]: device-code login (`/api/accounts/deviceauth/*`, the `/codex/device` page);
//! - [`upstream`], [`sse`], [`models`], [`body`]: the backend endpoints;
//! - [`reply`]: what a turn answers (function calls, tool output, `text.format`);
//! - [`websocket`]: the Responses WebSocket (`GET /codex/responses` upgrades);
//! - [`claude`]: Anthropic's `/v1/messages`, `count_tokens`, `/v1/models`, `/api/oauth/usage`
//!   and `POST /v1/oauth/token`;
//! - [`gemini`]: Code Assist `/v1internal:<method>` and Google's token endpoint
//!   `POST /google/oauth2/token`;
//! - [`recording`]: the request log and the layer that adds quota headers;
//! - [`control`], [`state`]: the `/__sim/` control API and the knobs it sets;
//! - [`tls`]: optional HTTPS with a self-signed certificate.
//!
//! Tests normally run the binary (`codexmesh-sim --listen 127.0.0.1:0 --port-file F`); they
//! may also embed it with [`start`].

pub mod accounts;
pub mod body;
pub mod claude;
pub mod clock;
pub mod control;
pub mod device;
pub mod errors;
pub mod flap;
pub mod gemini;
pub mod jwt;
pub mod models;
pub mod oauth;
pub mod quota;
pub mod recording;
pub mod reply;
pub mod sse;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use state::{Shared, SimState};

/// The whole application: control API, backend under `/` and `/backend-api`, the issuer's
/// token and device-auth endpoints at the root.
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(control::routes())
        .merge(upstream::routes())
        .nest("/backend-api", upstream::routes())
        .merge(oauth::routes())
        .merge(device::routes())
        .merge(claude::routes())
        .merge(gemini::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            recording::layer,
        ))
        .with_state(state)
}

/// 404 in the shape of the provider whose path it is.
async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = uri.path();
    if gemini::is_gemini_path(path) {
        gemini::error(404, "Requested entity was not found.", Vec::new())
    } else if claude::is_claude_path(path) {
        claude::error(404, "not_found_error", &format!("Not found: {path}"))
    } else {
        upstream::not_found().await.into_response()
    }
}

/// A simulator running in this process.
#[derive(Debug)]
pub struct RunningSim {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (the same the control API changes).
    pub state: Shared,
    /// The self-signed certificate (PEM) when serving HTTPS.
    pub cert_pem: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningSim {
    /// `http://ADDR` (or `https://ADDR`).
    pub fn base_url(&self) -> String {
        let scheme = if self.cert_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Stop accepting, let open answers finish, and wait.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Serve on an already bound listener until `shutdown` resolves; HTTPS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    state: Shared,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            // Handlers may reset their connection (injected resets, `crate::flap`).
            let listener = flap::ResetListener::new(listener);
            axum::serve(
                listener,
                router(state).into_make_service_with_connect_info::<flap::ConnReset>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        Some(config) => {
            axum::serve(tls::TlsListener::new(listener, config)?, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Bind `listen` (port 0 picks one) and serve plain HTTP in the background.
pub async fn start(listen: SocketAddr) -> std::io::Result<RunningSim> {
    start_with(listen, false).await
}

/// Like [`start`], with HTTPS (a fresh self-signed certificate, see
/// [`RunningSim::cert_pem`]) when `https` is set.
pub async fn start_with(listen: SocketAddr, https: bool) -> std::io::Result<RunningSim> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state: Shared = Arc::new(SimState::new());
    let cert = if https {
        Some(tls::self_signed(tls::default_names()).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        state.clone(),
        cert.as_ref().map(|c| c.config.clone()),
        async move {
            let _ = rx.await;
        },
    ));
    Ok(RunningSim {
        addr,
        state,
        cert_pem: cert.map(|c| c.cert_pem),
        shutdown: Some(tx),
        task,
    })
}
