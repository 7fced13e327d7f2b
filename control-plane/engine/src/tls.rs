//! TLS for the control plane's two listeners (the gRPC push channel and the admin HTTP API) and
//! the trust of its outbound HTTP client.
//!
//! Rules:
//! - A listener speaks TLS only when both its certificate and its key are set; one without the
//!   other is a configuration error, and with neither nothing changes (plain TCP, as before).
//! - When a client CA is set, every client must present a certificate chaining to it: there is
//!   no anonymous fallback, and a certificate from any other CA fails the handshake.
//! - Certificates and keys are read once, at start-up, from PEM files; a bad file stops `serve`
//!   naming the file and the problem, never its content.
//! - Upstream certificates are always verified against the public (webpki) roots. The only
//!   widening is `upstream_ca_file`: a named PEM bundle (a private CA, a TLS-inspecting egress
//!   proxy) trusted in addition. There is no switch that turns verification off.
//! - A handshake gets [`HANDSHAKE_TIMEOUT`] in its own task, so a slow or silent client never
//!   holds up the others; failed handshakes are dropped (logged at debug, without secrets).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {setting} is set but {missing} is not (a TLS listener needs both)")]
    Incomplete {
        what: &'static str,
        setting: &'static str,
        missing: &'static str,
    },
    #[error("{what}: {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{what}: {message}")]
    Config { what: &'static str, message: String },
}

/// One listener's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// The server certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs (PEM bundle).
    pub client_ca: Option<PathBuf>,
}

impl ListenerTls {
    /// The TLS of a listener from its three optional settings: `None` when neither certificate
    /// nor key is set (a client CA alone is an error too: it would silently require nothing).
    pub fn from_settings(
        what: &'static str,
        names: [&'static str; 3],
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let [cert_name, key_name, ca_name] = names;
        match (cert, key) {
            (None, None) => match client_ca {
                None => Ok(None),
                Some(_) => Err(TlsError::Incomplete {
                    what,
                    setting: ca_name,
                    missing: cert_name,
                }),
            },
            (Some(_), None) => Err(TlsError::Incomplete {
                what,
                setting: cert_name,
                missing: key_name,
            }),
            (None, Some(_)) => Err(TlsError::Incomplete {
                what,
                setting: key_name,
                missing: cert_name,
            }),
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: client_ca.map(Path::to_path_buf),
            })),
        }
    }

    /// The rustls configuration of this listener, offering `alpn` (e.g. `h2` for gRPC).
    pub fn server_config(
        &self,
        what: &'static str,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = read_certs(what, &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::File {
            what,
            path: self.key.clone(),
            message: format!("no usable private key ({e})"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                what,
                message: e.to_string(),
            })?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = root_store(what, ca)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Config {
                            what,
                            message: format!("client CA {}: {e}", ca.display()),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::File {
                what,
                path: self.cert.clone(),
                message: format!("certificate and key do not fit together ({e})"),
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Every certificate of a PEM file (at least one).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read certificates ({e})")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".to_owned()));
    }
    Ok(certs)
}

fn root_store(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(what, path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            message: format!("not a usable CA certificate ({e})"),
        })?;
    }
    Ok(roots)
}

/// The certificates of `upstream_ca_file` as reqwest roots (added to the public ones).
pub fn upstream_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    read_certs("upstream CA bundle", path)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der).map_err(|e| TlsError::File {
                what: "upstream CA bundle",
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// A TLS connection accepted by [`TlsIncoming`], usable by tonic (it reports the TCP peer like
/// a plain connection does) and by axum.
#[derive(Debug)]
pub struct TlsConn(TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

/// A bound TCP listener handing out finished TLS connections.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `tcp` (a task that ends when this is dropped).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(_) => {
                        // Out of descriptors and the like: back off a little, keep serving.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((TlsConn(tls), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<TlsConn>> {
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(self.rx), |c| {
            Ok(c.0)
        })
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task is gone: nothing will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The admin router as axum's per-connection service over [`TlsIncoming`], each connection's
/// requests carrying the TCP peer as `ConnectInfo<SocketAddr>` (what the allowlist reads), as
/// `into_make_service_with_connect_info` does for plain TCP.
#[derive(Clone)]
pub struct WithPeer(pub axum::Router);

impl<'a> tower_service::Service<axum::serve::IncomingStream<'a, TlsIncoming>> for WithPeer {
    type Response =
        axum::middleware::AddExtension<axum::Router, axum::extract::ConnectInfo<SocketAddr>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, conn: axum::serve::IncomingStream<'a, TlsIncoming>) -> Self::Future {
        use tower_layer::Layer;
        let peer = axum::extract::ConnectInfo(*conn.remote_addr());
        std::future::ready(Ok(axum::Extension(peer).layer(self.0.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_configuration_is_an_error() {
        let names = ["cert", "key", "ca"];
        let p = Path::new("/x");
        assert_eq!(
            ListenerTls::from_settings("t", names, None, None, None).unwrap(),
            None
        );
        for (c, k, ca) in [
            (Some(p), None, None),
            (None, Some(p), None),
            (None, None, Some(p)),
        ] {
            assert!(ListenerTls::from_settings("t", names, c, k, ca).is_err());
        }
        let full = ListenerTls::from_settings("t", names, Some(p), Some(p), Some(p)).unwrap();
        assert_eq!(full.map(|t| t.client_ca), Some(Some(PathBuf::from("/x"))));
    }

    #[test]
    fn unreadable_files_are_named() {
        let tls = ListenerTls {
            cert: PathBuf::from("/nonexistent/cert.pem"),
            key: PathBuf::from("/nonexistent/key.pem"),
            client_ca: None,
        };
        let e = tls.server_config("gRPC", &[b"h2"]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
