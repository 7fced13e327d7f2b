//! Watched pool folders: credential files dropped into a folder join a pool; a changed file
//! updates its account's tokens, a removed file removes its account. No restart needed.
//!
//! The file name says whose file it is: `claude_*.json` is Claude Code's (`.credentials.json`
//! or `{"api_key"}`), `gemini_*.json` Gemini CLI's `oauth_creds.json`, anything else a Codex
//! `auth.json`; content that disagrees is logged as an error naming both and skipped. A Gemini
//! file without a `project_id` gets the project Code Assist names (`loadCodeAssist`).
//!
//! Each `watch = DIR=POOL` folder is scanned every `watch_interval_ms` (polling: portable, and
//! cheap for a handful of small files). Only regular `*.json` files directly in the folder count
//! (not hidden ones, which editors and atomic writers use as temporaries); a symlink counts only
//! when it resolves to a file inside the folder. Each account remembers its file and the
//! SHA-256 of the content it was imported from, in the store, so a restart does not re-import
//! unchanged files (whose refresh tokens the gateway has long rotated). A malformed file is
//! logged once per content and skipped; the account it held, if any, stays. A folder that cannot
//! be read removes nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::WatchSpec;
use codexmesh_model::credentials as authjson;
use codexmesh_model::records::Provider;
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{Account, Actor, ImportAction, ImportSource, Store, StoreError};

const MAX_FILE_BYTES: u64 = 1 << 20;

/// What one scan did (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub imported: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub skipped: Vec<String>,
}

impl ScanReport {
    pub fn changed(&self) -> bool {
        !(self.imported.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }
}

/// A file found in a watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// Canonical folder + file name: the account's `source_path`.
    pub path: String,
    pub hash: String,
    pub bytes: Vec<u8>,
}

/// What a scan should do, from the files found and the accounts that came from this folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Files that are new or changed (path).
    pub import: Vec<String>,
    /// Accounts whose file is gone (account id).
    pub remove: Vec<String>,
}

/// The diff at the heart of a scan (pure, for tests).
pub fn plan(files: &[FoundFile], from_folder: &[Account]) -> Plan {
    let unchanged: HashSet<(&str, &str)> = from_folder
        .iter()
        .filter_map(|a| Some((a.source_path.as_deref()?, a.source_hash.as_deref()?)))
        .collect();
    let present: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    Plan {
        import: files
            .iter()
            .filter(|f| !unchanged.contains(&(f.path.as_str(), f.hash.as_str())))
            .map(|f| f.path.clone())
            .collect(),
        remove: from_folder
            .iter()
            .filter(|a| {
                a.source_path
                    .as_deref()
                    .is_some_and(|p| !present.contains(p))
            })
            .map(|a| a.id.clone())
            .collect(),
    }
}

/// Lists the candidate files of a folder. `Err` when the folder cannot be read at all.
pub fn list_folder(dir: &Path) -> std::io::Result<(PathBuf, Vec<FoundFile>, Vec<String>)> {
    let canon = std::fs::canonicalize(dir)?;
    let mut files = Vec::new();
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(&canon)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.to_ascii_lowercase().ends_with(".json") {
            continue;
        }
        let path = canon.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // vanished meanwhile
        };
        if meta.file_type().is_symlink() {
            match std::fs::canonicalize(&path) {
                Ok(target) if target.parent() == Some(canon.as_path()) => {}
                _ => {
                    refused.push(format!("{name}: symlink leading outside the folder"));
                    continue;
                }
            }
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_FILE_BYTES {
            refused.push(format!("{name}: larger than 1 MiB"));
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        files.push(FoundFile {
            path: path.to_string_lossy().into_owned(),
            hash: hex::encode(Sha256::digest(&bytes)),
            bytes,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((canon, files, refused))
}

/// Keeps the watched folders and their pools in step.
pub struct Watcher {
    store: Store,
    key: KeySource,
    specs: Vec<WatchSpec>,
    actor: Actor,
    /// (path, hash) of malformed files already reported.
    reported: HashSet<(String, String)>,
    /// Folders whose read failure was reported (until they are readable again).
    unreadable: HashSet<PathBuf>,
    /// Where a Gemini file without a project asks for it (None: such a file is skipped).
    gemini_base_url: Option<String>,
}

/// Whose credential file a watched file is, by its name: `claude_*` Claude, `gemini_*`
/// Gemini, anything else Codex.
pub fn provider_by_name(path: &str) -> Provider {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if name.starts_with("claude_") {
        Provider::Claude
    } else if name.starts_with("gemini_") {
        Provider::Gemini
    } else {
        Provider::Codex
    }
}

impl Watcher {
    pub fn new(store: Store, key: KeySource, specs: Vec<WatchSpec>) -> Self {
        Self {
            store,
            key,
            specs,
            actor: Actor::new("watch".to_owned()),
            reported: HashSet::new(),
            unreadable: HashSet::new(),
            gemini_base_url: None,
        }
    }

    /// Gemini files without a `project_id` ask Code Assist at `url` for theirs.
    pub fn with_gemini_base_url(mut self, url: String) -> Self {
        self.gemini_base_url = Some(url);
        self
    }

    /// Parses a watched file as the provider its name says, filling a Gemini login's project.
    async fn credentials_of(&self, file: &FoundFile) -> Result<authjson::LoginCredentials, String> {
        let provider = provider_by_name(&file.path);
        let mut creds = codexmesh_model::credential_files::parse_file(&file.bytes, Some(provider))
            .map_err(|e| e.to_string())?;
        if creds.provider == Provider::Gemini && creds.project_id.is_none() {
            let url = self
                .gemini_base_url
                .as_deref()
                .ok_or("no project_id in the file and no Gemini base URL to discover it")?;
            let http = crate::oauth::http_client().map_err(|e| e.to_string())?;
            let project =
                crate::ops::accounts::discover_gemini_project(&http, url, &creds.access_token)
                    .await
                    .map_err(|why| format!("no Code Assist project: {why}"))?;
            creds.project_id = Some(project);
        }
        Ok(creds)
    }

    /// One pass over every folder.
    pub async fn scan(&mut self) -> Result<ScanReport, StoreError> {
        let mut report = ScanReport::default();
        for spec in self.specs.clone() {
            self.scan_folder(&spec, &mut report).await?;
        }
        Ok(report)
    }

    async fn scan_folder(
        &mut self,
        spec: &WatchSpec,
        report: &mut ScanReport,
    ) -> Result<(), StoreError> {
        let (canon, files, refused) = match list_folder(&spec.dir) {
            Ok(found) => {
                if self.unreadable.remove(&spec.dir) {
                    tracing::info!(dir = %spec.dir.display(), "watched folder readable again");
                }
                found
            }
            Err(e) => {
                if self.unreadable.insert(spec.dir.clone()) {
                    tracing::warn!(dir = %spec.dir.display(), error = %e,
                        "cannot read the watched folder; nothing is imported or removed until it can be read");
                }
                return Ok(());
            }
        };
        for why in refused {
            if self.reported.insert((why.clone(), String::new())) {
                tracing::warn!(dir = %canon.display(), "skipping {why}");
            }
        }
        let pool = match self.store.pool_by_name(&spec.pool).await {
            Ok(p) => p,
            Err(StoreError::NotFound { .. }) => {
                tracing::info!(pool = %spec.pool, "creating the pool of a watched folder");
                match self.store.create_pool(&self.actor, &spec.pool).await {
                    Ok(p) => p,
                    // Another process created it meanwhile.
                    Err(StoreError::Conflict { .. }) => self.store.pool_by_name(&spec.pool).await?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let in_folder = |a: &Account| {
            a.source_path
                .as_deref()
                .is_some_and(|p| Path::new(p).parent() == Some(canon.as_path()))
        };
        let accounts: Vec<Account> = self
            .store
            .list_accounts(Some(&pool.name))
            .await?
            .into_iter()
            .filter(in_folder)
            .collect();
        let todo = plan(&files, &accounts);
        let by_path: HashMap<&str, &FoundFile> =
            files.iter().map(|f| (f.path.as_str(), f)).collect();
        for path in &todo.import {
            let Some(file) = by_path.get(path.as_str()) else {
                continue;
            };
            if self
                .reported
                .contains(&(file.path.clone(), file.hash.clone()))
            {
                continue;
            }
            let creds = match self.credentials_of(file).await {
                Ok(c) => c,
                Err(e) => {
                    self.reported.insert((file.path.clone(), file.hash.clone()));
                    tracing::warn!(file = %file.path, error = %e,
                        provider = %provider_by_name(&file.path),
                        "skipping a malformed or mismatched credential file in a watched folder");
                    report.skipped.push(file.path.clone());
                    continue;
                }
            };
            let source = ImportSource {
                path: file.path.clone(),
                hash: file.hash.clone(),
            };
            let result = self
                .store
                .import_account_from(
                    &self.actor,
                    &pool.name,
                    None,
                    &creds,
                    &self.key,
                    Some(&source),
                )
                .await?;
            let a = &result.account;
            if result.tokens == codexmesh_store::TokenUpdate::KeptNewer {
                tracing::info!(file = %file.path, pool = %pool.name, account = %a.label,
                    "the stored tokens of this login are newer than the file's: kept them");
            }
            match result.action {
                ImportAction::Created => {
                    tracing::info!(file = %file.path, pool = %pool.name, account = %a.label,
                        "imported an account from a watched folder");
                    report.imported.push(a.id.clone());
                }
                ImportAction::Updated => {
                    tracing::info!(file = %file.path, pool = %pool.name, account = %a.label,
                        "updated an account from its changed file");
                    report.updated.push(a.id.clone());
                }
            }
            // The file now holds another login: the account it held before goes.
            for old in accounts
                .iter()
                .filter(|o| o.source_path.as_deref() == Some(path.as_str()) && o.id != a.id)
            {
                self.remove(old, report).await?;
            }
        }
        for id in &todo.remove {
            if let Some(a) = accounts.iter().find(|a| &a.id == id) {
                self.remove(a, report).await?;
            }
        }
        Ok(())
    }

    async fn remove(&self, a: &Account, report: &mut ScanReport) -> Result<(), StoreError> {
        // Only this folder's pool: the login may be a member of others too (then it stays).
        match self.store.leave_pool(&self.actor, &a.id, &a.pool).await {
            Ok((_, deleted)) => {
                tracing::info!(account = %a.label, pool = %a.pool, deleted,
                    file = %a.source_path.as_deref().unwrap_or(""),
                    "removed an account whose watched file is gone from the pool");
                report.removed.push(a.id.clone());
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Scans every `interval` until `cancel`; `changed` is told after a scan that wrote.
    pub async fn run(
        mut self,
        interval: Duration,
        changed: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let mut failing = false;
        loop {
            match self.scan().await {
                Ok(r) => {
                    failing = false;
                    if r.changed() {
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "watched folder scan failed; retrying");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(path: &str, hash: &str) -> FoundFile {
        FoundFile {
            path: path.into(),
            hash: hash.into(),
            bytes: Vec::new(),
        }
    }

    fn from_file(id: &str, path: &str, hash: &str) -> Account {
        let mut a = codexmesh_model::records::fixtures::account(id);
        a.source_path = Some(path.into());
        a.source_hash = Some(hash.into());
        a
    }

    #[test]
    fn diffing() {
        let files = [
            found("/d/a.json", "h1"),
            found("/d/b.json", "h2"),
            found("/d/c.json", "h3"),
        ];
        let accounts = [
            from_file("acc_a", "/d/a.json", "h1"),       // unchanged
            from_file("acc_b", "/d/b.json", "old"),      // changed
            from_file("acc_gone", "/d/gone.json", "h9"), // removed
        ];
        let p = plan(&files, &accounts);
        assert_eq!(
            p.import,
            vec!["/d/b.json".to_owned(), "/d/c.json".to_owned()]
        );
        assert_eq!(p.remove, vec!["acc_gone".to_owned()]);
        assert_eq!(plan(&[], &[]), Plan::default());
    }

    #[test]
    fn listing_skips_what_is_not_ours() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("pool");
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("a.json"), b"{}")?;
        std::fs::write(dir.join("B.JSON"), b"[]")?;
        std::fs::write(dir.join(".tmp.json"), b"{}")?;
        std::fs::write(dir.join("notes.txt"), b"x")?;
        std::fs::create_dir(dir.join("sub.json"))?;
        std::fs::write(root.path().join("outside.json"), b"{}")?;
        std::os::unix::fs::symlink(root.path().join("outside.json"), dir.join("escape.json"))?;
        std::os::unix::fs::symlink(dir.join("a.json"), dir.join("alias.json"))?;
        let (canon, files, refused) = list_folder(&dir)?;
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| Path::new(&f.path).file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["B.JSON", "a.json", "alias.json"]);
        assert!(files
            .iter()
            .all(|f| Path::new(&f.path).parent() == Some(canon.as_path())));
        assert_eq!(files[1].hash, files[2].hash);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(list_folder(&root.path().join("missing")).is_err());
        Ok(())
    }

    #[test]
    fn the_file_name_says_the_provider() {
        assert_eq!(provider_by_name("/w/claude_alice.json"), Provider::Claude);
        assert_eq!(provider_by_name("/w/Gemini_bob.json"), Provider::Gemini);
        assert_eq!(provider_by_name("/w/alice.json"), Provider::Codex);
        assert_eq!(provider_by_name("/w/claude.json"), Provider::Codex);
    }
}
