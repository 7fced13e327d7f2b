//! `codexmesh serve`: the gRPC Mesh service and the admin HTTP API until a signal.

use super::{CliError, Ctx, Output};
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
    crate::announce::bootstrap_secret(&ctx.ops, running.admin_addr).await;
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
