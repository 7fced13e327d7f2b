//! `codexmesh apply -f FILE…`: creates or updates pools (routing, account memberships, keys) and
//! operators' roles and pools from declarative documents (docs/declarative.md), all files in one
//! transaction; `--dry-run` prints the diff and changes nothing; `--prune` also removes what the
//! files no longer name. A bad document exits 2 naming `FILE:LINE:COLUMN: field.path`, and
//! nothing is applied. New keys' secrets are printed once, after the diff (never in a dry run).

use std::io::Read;
use std::path::PathBuf;

use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::declarative::{self, SourceFile};
use codexmesh_model::declarative_plan::{self, ApplyOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A file of documents (`-`: standard input); repeat to apply several together
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Print what would change (created, changed, unchanged, pruned) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove what the files no longer name: memberships and keys of the pools they name,
    /// pools (archived) and operators' pools when the files have documents of that kind. Never
    /// deletes an account or an operator
    #[arg(long)]
    pub prune: bool,
}

fn read_file(path: &PathBuf) -> Result<SourceFile, CliError> {
    let name = path.display().to_string();
    let mut text = String::new();
    let read = if name == "-" {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| CliError::Usage(format!("{name}: cannot read it: {e}")))?;
    Ok(SourceFile { name, text })
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let files = args
        .files
        .iter()
        .map(read_file)
        .collect::<Result<Vec<_>, _>>()?;
    let options = ApplyOptions { prune: args.prune };
    let applied = notify(declarative::apply(&ctx.ops, &files, options, args.dry_run).await?);
    let out = &ctx.out;
    if out.json {
        return out.json(&applied.report());
    }
    out.line(declarative_plan::render(&applied.objects).trim_end())?;
    if let Some(r) = applied.revision {
        out.line(&format!("applied at revision {r}"))?;
    }
    for k in &applied.new_keys {
        out.line(&format!(
            "new key {}/{} ({}): {}",
            k.key.pool,
            k.key.label,
            k.key.id,
            k.secret.expose()
        ))?;
    }
    Ok(())
}
