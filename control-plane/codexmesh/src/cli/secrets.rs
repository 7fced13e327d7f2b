//! `codexmesh secrets …`: the master key's status and its rotation (`docs/secrets.md`).

use clap::Subcommand;
use serde::Serialize;

use super::{notify, CliError, Ctx};
use codexmesh_engine::ops::secrets::{self, RotateOptions};

#[derive(Debug, Subcommand)]
pub enum Args {
    /// The store's key version, a rotation under way, and the versions this keyring holds
    Status,
    /// Re-seal every stored secret under a new master key version; resumes an interrupted
    /// rotation (run it again until it says it is done)
    RotateMasterKey {
        /// Only print a new key entry (`vN:BASE64`) for keys kept in CODEXMESH_MASTER_KEY;
        /// changes nothing
        #[arg(long)]
        print_new: bool,
    },
}

#[derive(Serialize)]
struct NewKeyJson<'a> {
    version: u32,
    entry: &'a str,
}

pub async fn execute(args: Args, ctx: &Ctx) -> Result<(), CliError> {
    let out = &ctx.out;
    match args {
        Args::Status => {
            let s = notify(secrets::status(&ctx.ops).await?);
            if out.json {
                return out.json(&s);
            }
            let version = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
            out.line(&format!("master key:      {}", version(s.current_version)))?;
            match (s.rotating_to, s.rows_to_reseal) {
                (Some(to), left) => out.line(&format!(
                    "rotation:        to v{to}, {} rows left to re-seal",
                    left.unwrap_or(0)
                ))?,
                (None, _) => out.line("rotation:        none")?,
            }
            out.line(&format!(
                "keyring:         {} (from {})",
                s.keyring_versions
                    .iter()
                    .map(|v| format!("v{v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                s.keys_from
            ))
        }
        Args::RotateMasterKey { print_new: true } => {
            let key = notify(secrets::new_key_entry(&ctx.ops).await?);
            if out.json {
                return out.json(&NewKeyJson {
                    version: key.version,
                    entry: &key.entry,
                });
            }
            out.line(&key.entry)?;
            eprintln!(
                "a new master key, version {}, shown once and stored nowhere: put it in \
                 CODEXMESH_MASTER_KEY before the current key (`NEW,CURRENT`, comma-separated) \
                 for every process that uses this store, restart them, then run \
                 `codexmesh secrets rotate-master-key`",
                key.version
            );
            Ok(())
        }
        Args::RotateMasterKey { print_new: false } => {
            let r = notify(secrets::rotate_master_key(&ctx.ops, RotateOptions::default()).await?);
            if out.json {
                return out.json(&r);
            }
            if r.passes == 0 {
                out.line(&format!(
                    "the store already uses master key v{}; finished the rotation's last step",
                    r.to_version
                ))?;
            } else {
                out.line(&format!(
                    "rotated the master key from v{} to v{}: re-sealed {} rows in {} pass(es){}",
                    r.from_version,
                    r.to_version,
                    r.resealed,
                    r.passes,
                    if r.raced > 0 {
                        format!(" ({} changed meanwhile and were sealed anew)", r.raced)
                    } else {
                        String::new()
                    }
                ))?;
            }
            if r.old_keys_removed {
                out.line(&format!(
                    "{} now holds only the keys from v{} on",
                    r.keys_from, r.to_version
                ))?;
            }
            Ok(())
        }
    }
}
