//! `serve`: the gRPC Mesh service and the admin HTTP API, side by side, with one shutdown.

/// The admin API's OpenAPI document (what `GET /api/v1/openapi.json` serves).
pub use crate::api::openapi_json;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::lifecycle::Lifecycle;
use crate::push::MeshService;
use crate::snapshot::{self, SnapshotHub};
use codexmesh_store::{Actor, Store, StoreError};

/// How long open streams and connections get to finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} server failed: {1}")]
    Server(&'static str, String),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    cancel: CancellationToken,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<std::io::Result<()>>,
    hub: SnapshotHub,
    lifecycle: Lifecycle,
    usage_push: JoinHandle<()>,
    /// The alert evaluator (issue 15); ends at cancel.
    alerts: JoinHandle<()>,
}

/// A listener as bound: plain TCP, or TLS when the settings name a certificate.
enum Incoming {
    Plain(TcpListener),
    Tls(crate::tls::TlsIncoming),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Binds both listeners (port 0 picks a free port: see `grpc_addr`/`admin_addr`), builds the
/// first snapshot and starts serving. Fails before serving anything if the master key does not
/// match the store.
pub async fn start(settings: &Settings, store: Store) -> Result<RunningServer, ServeError> {
    let key = settings.master_keys()?;
    let push_token = settings.push_token()?;
    store.verify_master_key(&key).await?;
    // Read before binding: a bad certificate file stops `serve` before anything listens.
    let grpc_tls = settings
        .grpc_tls()?
        .map(|t| t.server_config("gRPC", &[b"h2"]))
        .transpose()?;
    let admin_tls = settings
        .admin_tls()?
        .map(|t| t.server_config("admin API", &[b"h2", b"http/1.1"]))
        .transpose()?;
    let (grpc_tls_on, admin_tls_on) = (grpc_tls.is_some(), admin_tls.is_some());

    let grpc_listener = bind("gRPC", settings.grpc_listen).await?;
    let admin_listener = bind("admin HTTP", settings.admin_listen).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            what: "gRPC",
            addr: settings.grpc_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            what: "admin HTTP",
            addr: settings.admin_listen,
            source,
        })?;

    let http =
        crate::oauth::http_client_for(settings).map_err(|e| ServeError::Http(e.to_string()))?;
    let cancel = CancellationToken::new();
    let cp_id = snapshot::new_control_plane_id();
    let hub = SnapshotHub::start(
        store.clone(),
        key.clone(),
        cp_id.clone(),
        settings.gateway_trusted_proxies.to_strings(),
        settings.change_poll,
        cancel.clone(),
    )
    .await?;
    let (alert_keys, alert_http) = (key.clone(), http.clone());
    let lifecycle = Lifecycle::start(
        settings,
        store.clone(),
        key,
        http,
        format!("serve:{cp_id}"),
        hub.nudger(),
        hub.subscribe(),
        cancel.clone(),
    );

    let usage_push = crate::usage_push::start(
        store.clone(),
        settings.usage_push_interval,
        lifecycle.usage_wake(),
        hub.nudger(),
        hub.subscribe(),
        cancel.clone(),
    );
    let envoys = crate::envoys::Envoys::default();
    // One registry for this process: refresh and poll outcomes, pushes, reported traffic.
    let metrics = crate::metrics::Metrics::new(hub.subscribe(), envoys.clone());
    lifecycle.refresher().record_into(metrics.clone());
    let service = MeshService::new(
        hub.frames(),
        &push_token,
        Arc::new(lifecycle.sink()),
        settings.heartbeat_interval,
        cancel.clone(),
    )
    .with_envoys(envoys.clone())
    .with_metrics(metrics.clone());
    let grpc = {
        let cancel = cancel.clone();
        let router = tonic::transport::Server::builder()
            // Lets a client notice a frozen control plane (and us a vanished Envoy).
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(service.routes());
        let incoming = match grpc_tls {
            Some(config) => {
                Incoming::Tls(crate::tls::TlsIncoming::new(grpc_listener, config).map_err(
                    |source| ServeError::Bind {
                        what: "gRPC",
                        addr: grpc_addr,
                        source,
                    },
                )?)
            }
            None => Incoming::Plain(grpc_listener),
        };
        tokio::spawn(async move {
            let stop = cancel.clone().cancelled_owned();
            let result = match incoming {
                Incoming::Plain(l) => {
                    router
                        .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop)
                        .await
                }
                Incoming::Tls(l) => {
                    router
                        .serve_with_incoming_shutdown(l.into_stream(), stop)
                        .await
                }
            };
            cancel.cancel();
            result
        })
    };
    let alerts = {
        let evaluator = crate::alerts::Evaluator::new(
            settings,
            store.clone(),
            alert_keys,
            alert_http,
            format!("serve:{cp_id}"),
        )
        .with_envoys(envoys.clone());
        tokio::spawn(evaluator.run(cancel.clone()))
    };
    let admin = {
        let cancel = cancel.clone();
        // The bound address (port 0 picked one): invite links default to it.
        let mut api_settings = settings.clone();
        api_settings.admin_listen = admin_addr;
        let ops = crate::ops::Ops::with_store(api_settings, Actor::new("api".to_owned()), store);
        let app = crate::api::router(ops, envoys, hub.subscribe(), cancel.clone(), metrics);
        let incoming = match admin_tls {
            Some(config) => Incoming::Tls(
                crate::tls::TlsIncoming::new(admin_listener, config).map_err(|source| {
                    ServeError::Bind {
                        what: "admin HTTP",
                        addr: admin_addr,
                        source,
                    }
                })?,
            ),
            None => Incoming::Plain(admin_listener),
        };
        tokio::spawn(async move {
            let stop = cancel.clone().cancelled_owned();
            let result = match incoming {
                Incoming::Plain(l) => {
                    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                    axum::serve(l, app).with_graceful_shutdown(stop).await
                }
                Incoming::Tls(l) => {
                    axum::serve(l, crate::tls::WithPeer(app))
                        .with_graceful_shutdown(stop)
                        .await
                }
            };
            cancel.cancel();
            result
        })
    };
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, grpc_tls = grpc_tls_on, admin_tls = admin_tls_on, "serving");
    Ok(RunningServer {
        grpc_addr,
        admin_addr,
        cancel,
        grpc,
        admin,
        hub,
        lifecycle,
        usage_push,
        alerts,
    })
}

impl RunningServer {
    /// Cancelling this token stops everything (what SIGINT/SIGTERM do).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The latest snapshot version published to subscribers.
    pub fn snapshot_version(&self) -> u64 {
        self.hub.current().version
    }

    /// Asks the snapshot builder to check the store now (after an in-process write).
    pub fn nudge(&self) {
        self.hub.nudge();
    }

    /// The refresher of this server (in-process tests and tools).
    pub fn refresher(&self) -> &crate::refresh::Refresher {
        self.lifecycle.refresher()
    }

    /// Waits until shutdown is asked for or a server fails, then stops the rest (bounded).
    pub async fn finish(mut self) -> Result<(), ServeError> {
        let mut grpc_done = None;
        let mut admin_done = None;
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            r = &mut self.grpc => grpc_done = Some(r),
            r = &mut self.admin => admin_done = Some(r),
        }
        self.cancel.cancel();
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while grpc_done.is_none() || admin_done.is_none() {
            tokio::select! {
                r = &mut self.grpc, if grpc_done.is_none() => grpc_done = Some(r),
                r = &mut self.admin, if admin_done.is_none() => admin_done = Some(r),
                _ = &mut grace => {
                    tracing::warn!("connections still open after the grace period; closing them");
                    self.grpc.abort();
                    self.admin.abort();
                    break;
                }
            }
        }
        self.hub.join().await;
        self.lifecycle.join(SHUTDOWN_GRACE).await;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.usage_push)
            .await
            .is_err()
        {
            self.usage_push.abort();
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.alerts)
            .await
            .is_err()
        {
            self.alerts.abort();
        }
        if let Some(r) = grpc_done {
            r.map_err(|e| ServeError::Server("gRPC", e.to_string()))?
                .map_err(|e| ServeError::Server("gRPC", e.to_string()))?;
        }
        if let Some(r) = admin_done {
            r.map_err(|e| ServeError::Server("admin HTTP", e.to_string()))?
                .map_err(|e| ServeError::Server("admin HTTP", e.to_string()))?;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Installs the SIGINT/SIGTERM handlers right away (so a signal during start-up leads to a clean
/// stop rather than the default "terminate now") and returns a token cancelled when one arrives.
pub fn watch_signals() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let handlers =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    let t = token.clone();
    tokio::spawn(async move {
        match handlers {
            Ok((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                t.cancel();
            }
            Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
        }
    });
    token
}
