//! `codexmesh serve`: the gRPC Mesh service and the admin HTTP API until a signal.

use super::{CliError, Ctx, Output};
use codexmesh_engine::ops::{self, Ops};
use codexmesh_engine::server;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn execute(_args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let signals = server::watch_signals();
    let store = ctx.ops.store().await?.clone();
    let running = server::start(ctx.settings(), store.clone()).await?;
    // One line on stdout once both listeners are bound: harnesses wait for it.
    Output { json: false }.line(&format!(
        "codexmesh serving grpc={} admin={}",
        running.grpc_addr, running.admin_addr
    ))?;
    announce_bootstrap(&ctx.ops, running.admin_addr).await;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        signals.cancelled().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    running.finish().await?;
    store.close().await;
    Ok(())
}

/// With no owner yet, prints (to stderr, once per start) a one-time secret that creates the
/// first owner through the admin API, valid for an hour. Nothing is printed once an owner
/// exists; a failure is a warning, not a reason to stop serving.
pub(crate) async fn announce_bootstrap(ops: &Ops, admin: std::net::SocketAddr) {
    match ops::operators::bootstrap_secret(ops).await {
        Ok(issued) => {
            let secret = issued.value.secret;
            eprintln!(
                "\nNo owner exists yet. Create the first owner within the hour (this secret works \
                 once):\n  curl -s http://{admin}/api/v1/bootstrap -H 'content-type: application/json' \
                 \\\n    -d '{{\"secret\": \"{}\", \"name\": \"you@example.com\", \"password\": \"…\"}}'\n\
                 or from this host: codexmesh operator create NAME --role owner --password-stdin\n",
                secret.expose()
            );
        }
        // An owner exists: nothing to say.
        Err(e) if e.kind() == ops::ErrorKind::Conflict => {}
        Err(e) => tracing::warn!(error = %e, "cannot issue the first-owner bootstrap secret"),
    }
}
