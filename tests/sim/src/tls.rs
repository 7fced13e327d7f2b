//! Optional HTTPS with a self-signed certificate made at start-up.
//!
//! Codex CLI 0.169 in ChatGPT mode (auth.json) refuses a `chatgpt_base_url` that is not HTTPS
//! ("workspace backend must use an HTTPS origin"), so the ChatGPT-mode paths (zstd bodies,
//! `/wham/accounts/check`, `/models`, token refresh) can only be driven through TLS. Clients
//! trust the certificate through `CODEX_CA_CERTIFICATE` / `SSL_CERT_FILE` (Codex) or their
//! own root store (tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A freshly made certificate and the server configuration using it.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate, PEM (give it to clients as their trusted root).
    pub cert_pem: String,
    /// rustls configuration serving it (ALPN `h2`, `http/1.1`).
    pub config: Arc<ServerConfig>,
}

/// Names the certificate covers.
pub fn default_names() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into(), "::1".into()]
}

/// Make a self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: Vec<String>) -> Result<SelfSigned, String> {
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let cert_pem = ck.cert.pem();
    let cert_der: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(SelfSigned {
        cert_pem,
        config: Arc::new(config),
    })
}

/// A listener that hands out finished TLS connections. Handshakes run in their own tasks,
/// so a slow client never holds up the others.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Wrap a bound TCP listener.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    () = tx.closed() => return,
                };
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(tls)) = hs.await {
                        let _ = tx.send((tls, addr)).await;
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task is gone: nothing will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_pem_certificate() {
        let s = self_signed(default_names()).unwrap();
        assert!(s.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(s.config.alpn_protocols.len(), 2);
    }
}
