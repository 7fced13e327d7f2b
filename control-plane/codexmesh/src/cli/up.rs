//! `codexmesh up`: laptop mode (the run itself lives in `crate::up`).

use super::{CliError, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn execute(_args: Args, ctx: &Ctx) -> Result<(), CliError> {
    Ok(crate::up::run(ctx.settings()).await?)
}
