//! Declarative configuration use cases: apply documents (`codexmesh apply`, `PUT
//! /api/v1/config`) with a dry run and prune, and state the store as documents (`codexmesh get`,
//! `GET /api/v1/config`).
//!
//! Rules: the documents are read and checked (`codexmesh_model::declarative`) before the store
//! is opened; the plan is made and checked against the acting principal's access inside the
//! store's one write transaction (`Store::apply_config`), so a file applies whole or not at all
//! and its checks see what it changes; a refused apply is audited (`config.apply`), each change
//! of a successful one by the store; a new key's secret is only in the [`Applied`] this returns.

use serde::Serialize;

use super::keys::IssuedKey;
use super::{Notice, Ops, OpsError, Outcome};
use codexmesh_model::declarative::{self, Document, Kind};
use codexmesh_model::declarative_plan::{self, ApplyOptions, ObjectChange};
use codexmesh_store::{Entity, Lookup, StoreError};

/// One input file: its name (for errors) and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// What an apply did (or, in a dry run, would do).
#[derive(Debug)]
pub struct Applied {
    pub dry_run: bool,
    /// The revision it made (None: nothing was written).
    pub revision: Option<i64>,
    pub objects: Vec<ObjectChange>,
    /// Keys it created, with their secrets (shown once).
    pub new_keys: Vec<IssuedKey>,
}

/// [`Applied`] as JSON: the one answer that carries new keys' secrets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplyReport {
    pub dry_run: bool,
    /// Something was written.
    pub changed: bool,
    pub revision: Option<i64>,
    /// `2 created, 1 changed, 4 unchanged, 0 pruned` or `no changes (…)`.
    pub summary: String,
    pub objects: Vec<ObjectChange>,
    /// Keys the apply created, each with its secret: shown this once, only its hash is stored.
    pub new_keys: Vec<NewKeyReport>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewKeyReport {
    pub id: String,
    pub pool: String,
    pub label: String,
    pub secret: String,
}

impl Applied {
    pub fn report(&self) -> ApplyReport {
        ApplyReport {
            dry_run: self.dry_run,
            changed: self.revision.is_some(),
            revision: self.revision,
            summary: declarative_plan::summary(&self.objects),
            objects: self.objects.clone(),
            new_keys: self
                .new_keys
                .iter()
                .map(|k| NewKeyReport {
                    id: k.key.id.clone(),
                    pool: k.key.pool.clone(),
                    label: k.key.label.clone(),
                    secret: k.secret.expose().to_owned(),
                })
                .collect(),
        }
    }
}

/// Reads, checks and applies `files` (all or nothing); `dry_run` plans and writes nothing.
pub async fn apply(
    ops: &Ops,
    files: &[SourceFile],
    options: ApplyOptions,
    dry_run: bool,
) -> Result<Outcome<Applied>, OpsError> {
    let docs = declarative::read_all(files.iter().map(|f| (f.name.as_str(), f.text.as_str())))?;
    let pools: Vec<&str> = docs
        .iter()
        .filter(|d| d.kind() == Kind::Pool)
        .map(|d| d.name.as_str())
        .collect();
    let result = async {
        ops.require_writer()?;
        let store = ops.store().await?;
        let access = ops.access().clone();
        let applied = store
            .apply_config(ops.actor(), dry_run, |state| {
                declarative_plan::plan(&docs, state, &access, options).map_err(OpsError::from)
            })
            .await?;
        let mut notices = Vec::new();
        if dry_run {
            notices.push(Notice::info(
                "dry_run",
                "dry run: nothing was changed (new keys get their secrets when applied)",
            ));
        } else if applied.revision.is_none() {
            notices.push(Notice::info(
                "no_changes",
                "no changes: nothing was written",
            ));
        }
        if !applied.new_keys.is_empty() {
            notices.push(Notice::note(
                "keys_shown_once",
                format!(
                    "{} new key(s): each secret is shown this once (only its hash is stored)",
                    applied.new_keys.len()
                ),
            ));
        }
        Ok(Outcome::with_notices(
            Applied {
                dry_run,
                revision: applied.revision,
                objects: applied.plan.objects,
                new_keys: applied
                    .new_keys
                    .into_iter()
                    .map(|k| IssuedKey {
                        key: k.key,
                        secret: k.secret,
                    })
                    .collect(),
            },
            notices,
        ))
    }
    .await;
    if dry_run {
        result
    } else {
        ops.audited("config.apply", None, &pools, result).await
    }
}

/// What `get` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Pools,
    Operators,
}

/// The documents stating what the principal sees (`name`: one pool or operator), exactly as
/// [`apply`] reads them.
pub async fn export(
    ops: &Ops,
    kind: ExportKind,
    name: Option<&str>,
) -> Result<Outcome<Vec<Document>>, OpsError> {
    if let (ExportKind::Pools, Some(n)) = (kind, name) {
        ops.see_pool(n)?;
    }
    let store = ops.store().await?;
    let state = store.config_state().await?;
    let docs = match kind {
        ExportKind::Pools => declarative_plan::export_pools(&state, ops.access(), name),
        ExportKind::Operators => declarative_plan::export_operators(&state, ops.access())
            .into_iter()
            .filter(|d| name.is_none_or(|n| n == d.name))
            .collect(),
    };
    if let (Some(n), true) = (name, docs.is_empty()) {
        let what = match kind {
            ExportKind::Pools => Entity::Pool,
            ExportKind::Operators => Entity::Operator,
        };
        return Err(StoreError::NotFound {
            what,
            ident: n.to_owned(),
            lookup: Lookup::Name,
        }
        .into());
    }
    Ok(Outcome::new(docs))
}
