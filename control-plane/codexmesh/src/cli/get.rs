//! `codexmesh get pools|operators [NAME] [-o yaml|json]`: the declarative documents stating what
//! the store holds, exactly as `codexmesh apply` reads them (get → apply changes nothing). YAML
//! by default; JSON (`-o json` or `--json`) is an array of the same documents.

use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::declarative::{self, ExportKind};
use codexmesh_model::declarative as docs;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    /// Unarchived pools: routing, memberships, active keys
    #[value(alias = "pool")]
    Pools,
    /// Operators' roles and pools
    #[value(alias = "operator")]
    Operators,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    pub what: What,
    /// Only this pool (or operator)
    pub name: Option<String>,
    /// yaml (what `apply` reads; the default) or json
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let kind = match args.what {
        What::Pools => ExportKind::Pools,
        What::Operators => ExportKind::Operators,
    };
    let found = notify(declarative::export(&ctx.ops, kind, args.name.as_deref()).await?);
    if ctx.out.json || args.output == Format::Json {
        let values: Vec<serde_json::Value> = found.iter().map(docs::to_value).collect();
        return ctx.out.json(&values);
    }
    ctx.out.line(docs::to_yaml(&found).trim_end())
}
