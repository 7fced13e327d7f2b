//! Certificates for TLS tests, made at run time (rcgen): a CA, a server certificate for the
//! loopback names, a client certificate from the same CA and one from another CA.
//!
//! Rules: nothing is checked in (every run makes fresh keys in the test's directory); server
//! certificates carry `serverAuth`, client certificates `clientAuth`; file names are fixed so a
//! failing test's directory is easy to read.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA that issues test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IPs) as (certificate PEM, key PEM): a server
    /// certificate, or a client one when `client`.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        client: bool,
    ) -> Result<(String, String)> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The files of one test's PKI (all PEM).
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA that issued the server and the client certificate.
    pub ca: PathBuf,
    /// Server certificate for `127.0.0.1`, `localhost` and `::1`, and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate issued by [`Pki::ca`], and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from another CA (a stranger), and its key.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl Pki {
    /// Makes the CA and certificates into `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
            Ok(path)
        };
        let ca = TestCa::new("codexmesh test CA")?;
        let rogue_ca = TestCa::new("another CA")?;
        let (server_cert, server_key) =
            ca.issue("codexmesh", &["127.0.0.1", "localhost", "::1"], false)?;
        let (client_cert, client_key) = ca.issue("envoy", &["envoy"], true)?;
        let (rogue_cert, rogue_key) = rogue_ca.issue("envoy", &["envoy"], true)?;
        Ok(Self {
            ca: write("ca.pem", &ca.cert_pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
            rogue_cert: write("rogue.pem", &rogue_cert)?,
            rogue_key: write("rogue.key", &rogue_key)?,
        })
    }

    /// A reqwest identity (certificate and key) from two PEM files.
    pub fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity> {
        let mut pem = std::fs::read(cert)?;
        pem.extend_from_slice(&std::fs::read(key)?);
        Ok(reqwest::Identity::from_pem(&pem)?)
    }

    /// A client trusting [`Pki::ca`] only, presenting `identity` when given.
    pub fn client(
        &self,
        identity: Option<reqwest::Identity>,
        http2: bool,
    ) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca)?)?;
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(id) = identity {
            b = b.identity(id);
        }
        if http2 {
            b = b.http2_prior_knowledge();
        }
        Ok(b.build()?)
    }
}
