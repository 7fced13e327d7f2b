//! The master key: its status and its rotation (`codexmesh secrets …`; `docs/secrets.md`).
//!
//! Rules this module keeps:
//! - a rotation runs in steps that can each be interrupted (a crash, SIGKILL, an error) and
//!   re-run: (1) choose the next key: the one a previous attempt recorded, else a newer key the
//!   keyring already holds (an operator put it there), else a new one, version + 1; (2) a key
//!   file gets the new key *before* the store names it, newest first with the old kept, so the
//!   store never accepts a key no file holds; (3) the store records it as next; (4) every sealed
//!   secret is re-sealed under it, row by row (compare-and-swap: a concurrent refresh wins),
//!   in passes until none is left; (5) the store switches to it, refusing while any secret is
//!   under another version; (6) the key file drops the older keys;
//! - at every point the keys on disk (or in the environment) open every secret, because a
//!   secret is only ever sealed with a key the store accepts, and the store only accepts keys
//!   the keyring held when it was told about them;
//! - keys given in the environment or the config file are never written: the command adopts a
//!   newer key found there, and otherwise explains how to add one (it never invents a key the
//!   operator would have to copy from its output, unless asked: [`new_key_entry`]);
//! - one rotation at a time per key file (an advisory lock next to it, released by the kernel
//!   when the process dies, so a killed rotation never blocks the next run).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Notice, Ops, OpsError, Outcome};
use codexmesh_store::crypto::{Keyring, Keys, MasterKey};
use codexmesh_store::keyfile::{read_key_file, write_key_file, KeyOrigin, KeySource};
use codexmesh_store::{KeyMark, SealedKind, Store, StoreError};

/// Re-sealing passes before a rotation gives up on writers that keep sealing with an old key
/// (servers that have not read the new key yet); each pass is itself bounded by the row count.
const MAX_PASSES: u32 = 8;
/// Rows read per page while re-sealing.
const PAGE_ROWS: u32 = 100;

/// Where a rotation stands, for [`RotateOptions::checkpoint`] (tests stop it at each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The key file holds the new key (and the old ones).
    FileWritten,
    /// The store accepts the new key as next.
    Recorded,
    /// One more row was re-sealed (this run's count so far).
    Resealed(u64),
    /// The store's current key is the new one.
    Switched,
}

/// How a rotation runs. `Default` is what the CLI uses.
#[derive(Default)]
pub struct RotateOptions {
    /// Called at each [`Checkpoint`]; returning `false` stops the rotation there (a test's
    /// stand-in for a crash: nothing is undone).
    #[allow(clippy::type_complexity)]
    pub checkpoint: Option<Box<dyn FnMut(Checkpoint) -> bool + Send>>,
}

impl std::fmt::Debug for RotateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateOptions")
            .field("checkpoint", &self.checkpoint.is_some())
            .finish()
    }
}

impl RotateOptions {
    fn reached(&mut self, at: Checkpoint) -> Result<(), OpsError> {
        let go_on = self.checkpoint.as_mut().is_none_or(|hook| hook(at));
        if go_on {
            Ok(())
        } else {
            Err(OpsError::Conflict(format!(
                "rotation stopped at {at:?} (test hook)"
            )))
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rotation {
    /// The key version the store used before (the oldest one dropped, when finishing an
    /// earlier run's last step).
    pub from_version: u32,
    pub to_version: u32,
    /// Rows (accounts, operators) this run re-sealed.
    pub resealed: u64,
    /// Rows that changed while being re-sealed (a refresh wrote new tokens): sealed anew by
    /// their writer, or re-sealed by a later pass.
    pub raced: u64,
    pub passes: u32,
    /// The key file, or the variable the keys came from.
    pub keys_from: String,
    /// Whether the key file was rewritten without the keys older than `to_version`.
    pub old_keys_removed: bool,
}

/// The master key as the store and this process see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyStatus {
    /// The store's current key version (none before the first secret is sealed).
    pub current_version: Option<u32>,
    /// The version a rotation is moving to, while one is under way.
    pub rotating_to: Option<u32>,
    /// While rotating: rows holding a secret not yet under the new key.
    pub rows_to_reseal: Option<u64>,
    /// The versions this process's keyring holds, newest first.
    pub keyring_versions: Vec<u32>,
    /// Whether the keyring holds the store's current key (else nothing opens).
    pub keyring_holds_current: bool,
    pub keys_from: String,
}

/// A new key for an operator to install by hand (keys given in the environment).
pub struct NewKeyEntry {
    /// `vN:BASE64`.
    pub entry: String,
    pub version: u32,
}

impl std::fmt::Debug for NewKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKeyEntry")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn keys_from(source: &KeySource) -> String {
    source.origin().to_string()
}

/// The master key's status: versions, a rotation under way, and whether the keyring fits.
pub async fn status(ops: &Ops) -> Result<Outcome<KeyStatus>, OpsError> {
    ops.require_owner("read the master key status")?;
    let source = ops.settings().master_keys()?;
    let store = ops.store().await?;
    let state = store.key_state().await?;
    let ring = source.keyring();
    let rows_to_reseal = match state.next {
        Some(n) => Some(store.count_sealed_not_under(n.version).await?),
        None => None,
    };
    let holds = |m: Option<KeyMark>| m.is_none_or(|m| ring.keys().iter().any(|k| m.matches(k)));
    let status = KeyStatus {
        current_version: state.current.map(|c| c.version),
        rotating_to: state.next.map(|n| n.version),
        rows_to_reseal,
        keyring_versions: ring.versions(),
        keyring_holds_current: holds(state.current),
        keys_from: keys_from(&source),
    };
    let mut notices = Vec::new();
    if !status.keyring_holds_current {
        notices.push(Notice::warning(
            "keyring_lacks_current_key",
            format!(
                "the keys from {} do not include the store's current key: nothing sealed opens",
                status.keys_from
            ),
        ));
    }
    if let Some(to) = status.rotating_to {
        notices.push(Notice::note(
            "rotation_pending",
            format!(
                "a rotation to key version {to} is under way: run \
                 `codexmesh secrets rotate-master-key` to finish it"
            ),
        ));
    }
    Ok(Outcome::with_notices(status, notices))
}

/// A new key one version above every version in use, for keys given in the environment:
/// nothing is written; the operator installs it (`vN:NEWKEY,vM:OLDKEY`) and then rotates.
pub async fn new_key_entry(ops: &Ops) -> Result<Outcome<NewKeyEntry>, OpsError> {
    ops.require_owner("rotate the master key")?;
    let source = ops.settings().master_keys()?;
    let state = ops.store().await?.key_state().await?;
    let version = next_version(&source.reload(), state.current, state.next);
    let key = MasterKey::generate()
        .map_err(StoreError::from)?
        .with_version(version);
    Ok(Outcome::new(NewKeyEntry {
        entry: key.to_entry(),
        version,
    }))
}

fn next_version(ring: &Keyring, current: Option<KeyMark>, next: Option<KeyMark>) -> u32 {
    ring.versions()
        .into_iter()
        .chain(current.map(|c| c.version))
        .chain(next.map(|n| n.version))
        .max()
        .unwrap_or(1)
        .saturating_add(1)
}

/// Holds the rotation lock of a key file while alive (see the module rules).
struct RotationLock {
    _file: std::fs::File,
}

fn lock_rotation(key_file: &Path) -> Result<RotationLock, OpsError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = key_file.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| OpsError::Write {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock(2) on a descriptor we own; the lock goes with the descriptor.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(OpsError::Conflict(format!(
            "another master key rotation holds {}: wait for it to end",
            path.display()
        )));
    }
    Ok(RotationLock { _file: file })
}

/// Rewrites the key file from what it holds now (never from an older read), changed by `edit`.
fn rewrite_key_file(
    path: &Path,
    edit: impl FnOnce(&Keyring) -> Result<Keyring, OpsError>,
) -> Result<(), OpsError> {
    let now = read_key_file(path).map_err(crate::config::ConfigError::from)?;
    let ring = edit(&now)?;
    write_key_file(path, &ring).map_err(crate::config::ConfigError::from)?;
    Ok(())
}

/// Rotates the master key (see the module rules); resumes an interrupted rotation.
pub async fn rotate_master_key(
    ops: &Ops,
    mut options: RotateOptions,
) -> Result<Outcome<Rotation>, OpsError> {
    let result = rotate(ops, &mut options).await;
    ops.audited("master_key.rotate", None, &[], result).await
}

async fn rotate(ops: &Ops, options: &mut RotateOptions) -> Result<Outcome<Rotation>, OpsError> {
    ops.require_owner("rotate the master key")?;
    let source = ops.settings().master_keys()?;
    let key_file = match source.origin() {
        KeyOrigin::File(path) => Some(path.clone()),
        KeyOrigin::Given(_) => None,
    };
    let _lock = key_file.as_deref().map(lock_rotation).transpose()?;
    let store = ops.store().await?;
    let ring = source.reload();
    let state = store.key_state().await?;
    let current = match state.current {
        // Nothing sealed yet: the store takes the newest key as current when told of the next.
        None => ring.newest().clone(),
        Some(c) => ring
            .keys()
            .iter()
            .find(|k| c.matches(k))
            .cloned()
            .ok_or(StoreError::MasterKeyMismatch)?,
    };
    let recorded = state
        .next
        .and_then(|n| ring.keys().iter().find(|k| n.matches(k)).cloned());
    let newer = Some(ring.newest())
        .filter(|k| k.version() > current.version())
        .cloned();
    let mut notices = Vec::new();
    let target = match recorded.or(newer) {
        Some(t) => t,
        None if state.next.is_none()
            && ring.keys().iter().any(|k| k.version() < current.version()) =>
        {
            // The store switched already (an earlier run stopped before its last step).
            let oldest = ring
                .versions()
                .into_iter()
                .min()
                .unwrap_or(current.version());
            let removed = drop_old_keys(key_file.as_deref(), &current, &source, &mut notices)?;
            return Ok(Outcome::with_notices(
                Rotation {
                    from_version: oldest,
                    to_version: current.version(),
                    resealed: 0,
                    raced: 0,
                    passes: 0,
                    keys_from: keys_from(&source),
                    old_keys_removed: removed,
                },
                notices,
            ));
        }
        None => {
            let version = next_version(&ring, state.current, state.next);
            if key_file.is_none() {
                return Err(OpsError::Conflict(format!(
                    "the master keys come from {origin}, which this command cannot change: \
                     put a new key first, as `v{version}:NEWKEY,v{cur}:CURRENTKEY`, in {origin} \
                     for every process that uses this store (`codexmesh secrets \
                     rotate-master-key --print-new` prints one), restart the servers, then run \
                     this again",
                    origin = keys_from(&source),
                    cur = current.version(),
                )));
            }
            MasterKey::generate()
                .map_err(StoreError::from)?
                .with_version(version)
        }
    };
    if let Some(path) = key_file.as_deref() {
        if ring.get(target.version()).is_none() {
            let add = target.clone();
            rewrite_key_file(path, |now| {
                now.with(add).map_err(|e| {
                    OpsError::Conflict(format!(
                        "{}: {e}: another rotation changed it; run this again",
                        path.display()
                    ))
                })
            })?;
            options.reached(Checkpoint::FileWritten)?;
        }
    }
    store
        .start_key_rotation(ops.actor(), &current, &target)
        .await?;
    options.reached(Checkpoint::Recorded)?;

    let (mut resealed, mut raced, mut passes) = (0u64, 0u64, 0u32);
    loop {
        passes += 1;
        let (done, lost) = reseal_pass(ops, store, &source, &target, options, resealed).await?;
        resealed += done;
        raced += lost;
        let left = store.finish_key_rotation(ops.actor(), &target).await?;
        if left == 0 {
            break;
        }
        if passes >= MAX_PASSES {
            return Err(OpsError::Conflict(format!(
                "{left} secrets were sealed with an older master key again while rotating \
                 (a process still using only the old key?); nothing is lost: run this again"
            )));
        }
    }
    options.reached(Checkpoint::Switched)?;
    let removed = drop_old_keys(key_file.as_deref(), &target, &source, &mut notices)?;
    notices.push(Notice::note(
        "sessions_end",
        "operator sessions signed under the old key end once no process holds it: \
         operators sign in again",
    ));
    Ok(Outcome::with_notices(
        Rotation {
            from_version: current.version(),
            to_version: target.version(),
            resealed,
            raced,
            passes,
            keys_from: keys_from(&source),
            old_keys_removed: removed,
        },
        notices,
    ))
}

/// One pass over every sealed row not under `target`: (re-sealed, changed meanwhile).
async fn reseal_pass(
    ops: &Ops,
    store: &Store,
    keys: &KeySource,
    target: &MasterKey,
    options: &mut RotateOptions,
    before: u64,
) -> Result<(u64, u64), OpsError> {
    let _ = ops;
    let (mut done, mut lost) = (0u64, 0u64);
    for kind in [
        SealedKind::Account,
        SealedKind::Operator,
        SealedKind::Webhook,
    ] {
        let mut after = String::new();
        loop {
            let rows = store
                .sealed_rows_not_under(kind, target, &after, PAGE_ROWS)
                .await?;
            let Some(last) = rows.last() else {
                break;
            };
            after.clone_from(&last.id);
            for row in &rows {
                if store.reseal_row(keys, target, row).await? {
                    done += 1;
                    options.reached(Checkpoint::Resealed(before + done))?;
                    #[cfg(feature = "test-faults")]
                    if ops.settings().fault == Some(crate::config::Fault::SlowReseal) {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                } else {
                    lost += 1;
                }
            }
        }
    }
    Ok((done, lost))
}

/// Step 6: the key file without the keys older than `kept` (true when it changed); for keys
/// given in the environment, a notice saying which to remove.
fn drop_old_keys(
    key_file: Option<&Path>,
    kept: &MasterKey,
    source: &KeySource,
    notices: &mut Vec<Notice>,
) -> Result<bool, OpsError> {
    let old: Vec<u32> = source
        .reload()
        .versions()
        .into_iter()
        .filter(|v| *v < kept.version())
        .collect();
    if old.is_empty() {
        return Ok(false);
    }
    match key_file {
        Some(path) => {
            rewrite_key_file(path, |now| Ok(now.without_older_than(kept.version())))?;
            Ok(true)
        }
        None => {
            notices.push(Notice::warning(
                "remove_old_keys",
                format!(
                    "every secret is sealed with key version {}: remove version(s) {} from {} \
                     (keep `v{}:…`) and restart the servers",
                    kept.version(),
                    old.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    source.origin(),
                    kept.version()
                ),
            ));
            Ok(false)
        }
    }
}
