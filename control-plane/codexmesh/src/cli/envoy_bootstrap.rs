//! `codexmesh envoy-bootstrap`: writes the Envoy bootstrap for these settings (rendering lives
//! in `crate::envoy_bootstrap`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{CliError, Ctx};
use crate::envoy_bootstrap as bootstrap;
use codexmesh_store::files;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output file
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Envoy node id (reported to the control plane)
    #[arg(long, value_name = "ID", default_value = bootstrap::DEFAULT_NODE_ID)]
    node_id: String,
    /// Where Envoy reaches the control plane, when not at grpc_listen: HOST:PORT, where
    /// HOST may be a DNS name (a container or Kubernetes service). Several replicas: repeat
    /// the flag or give a comma list; each is an endpoint of the control-plane cluster
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    control_plane: Vec<String>,
    /// Dial the control plane over TLS, trusting this CA bundle (PEM) for its certificate
    /// (serve's grpc_tls_cert)
    #[arg(long, value_name = "PEM")]
    control_plane_ca: Option<PathBuf>,
    /// The name the control plane's certificate must carry, when not the dialed host
    #[arg(long, value_name = "NAME", requires = "control_plane_ca")]
    control_plane_server_name: Option<String>,
    /// Client certificate chain (PEM) Envoy presents to the control plane (needed when serve
    /// has grpc_tls_client_ca)
    #[arg(long, value_name = "PEM", requires_all = ["control_plane_ca", "client_key"])]
    client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// An egress proxy (http://HOST:PORT) some accounts tunnel through: Envoy gets its own
    /// clusters for it, and serves those accounts only through it. Repeat the flag or give a
    /// comma list; replaces the envoy_egress_proxies setting
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    egress_proxy: Vec<String>,
}

pub fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let settings = ctx.settings();
    let (path, node_id) = (&args.out, args.node_id.as_str());
    let mut control_planes = args
        .control_plane
        .iter()
        .map(|t| bootstrap::ControlPlaneTarget::parse(t))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let control_plane = control_planes.next();
    if control_plane.is_none() && settings.grpc_listen.port() == 0 {
        return Err(CliError::Usage(
            "grpc_listen has port 0; Envoy needs the control plane's real port".to_owned(),
        ));
    }
    if node_id.is_empty() || node_id.chars().any(char::is_control) {
        return Err(CliError::Usage(
            "--node-id must be non-empty printable text".to_owned(),
        ));
    }
    let mut params = bootstrap::from_settings(settings, node_id, settings.grpc_listen);
    if let Some(target) = control_plane {
        params.control_plane = target;
        params.more_control_planes = control_planes.collect();
    }
    if !args.egress_proxy.is_empty() {
        let list = codexmesh_model::egress::EgressProxyList::parse(&args.egress_proxy)
            .map_err(|e| CliError::Usage(format!("--egress-proxy {e}")))?;
        params.egress_proxies = list.as_slice().to_vec();
    }
    // Envoy reads the files from its own working directory: pin the paths down.
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    params.control_plane_tls = args.control_plane_ca.map(|ca| bootstrap::ControlPlaneTls {
        ca: absolute(ca),
        server_name: args.control_plane_server_name,
        client_cert: args
            .client_cert
            .zip(args.client_key)
            .map(|(c, k)| (absolute(c), absolute(k))),
    });
    let yaml = bootstrap::render(&params)?;
    files::write_shared_file(path, yaml.as_bytes()).map_err(|source| CliError::Write {
        path: path.clone(),
        source,
    })?;
    if ctx.out.json {
        #[derive(Serialize)]
        struct Written<'a> {
            path: &'a Path,
            node_id: &'a str,
        }
        return ctx.out.json(&Written { path, node_id });
    }
    ctx.out.line(&format!("wrote {}", path.display()))
}
