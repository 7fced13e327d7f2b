//! Where a process's master keys come from, and the key file a rotation rewrites.
//!
//! Rules: a [`KeySource`] is either fixed (keys given in the environment or the config file,
//! which a running process cannot see change) or the data dir's key file, read again when a key
//! is missing and the file changed since it was last read (one `stat`; the file is replaced
//! whole by a rename, so a reader sees the old keys or the new ones, never half a file). A
//! reload that fails keeps the keys held and logs why, so a bad edit never takes keys away from
//! a running server. The key file is written only through [`write_key_file`]: private (0600),
//! atomically, and synced with its directory before the writer goes on.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::crypto::{CryptoError, Keyring, Keys, MasterKey};
use crate::files::{write_file_atomically, Access, Existing};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: CryptoError },
}

/// Where the keys were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The key file (a rotation may rewrite it).
    File(PathBuf),
    /// Given by the operator (`CODEXMESH_MASTER_KEY`, the config file): named as in messages.
    Given(String),
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::File(p) => write!(f, "{}", p.display()),
            KeyOrigin::Given(name) => f.write_str(name),
        }
    }
}

/// What identifies one version of the key file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

struct Held {
    ring: Arc<Keyring>,
    stamp: Option<Stamp>,
}

struct Inner {
    origin: KeyOrigin,
    held: RwLock<Held>,
}

/// A process's master keys and where they came from. Cheap to clone (shared).
#[derive(Clone)]
pub struct KeySource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("origin", &self.inner.origin)
            .field("versions", &self.keyring().versions())
            .finish()
    }
}

impl From<MasterKey> for KeySource {
    fn from(key: MasterKey) -> Self {
        Self::fixed(Keyring::from(key), "a fixed key")
    }
}

impl From<Keyring> for KeySource {
    fn from(ring: Keyring) -> Self {
        Self::fixed(ring, "a fixed keyring")
    }
}

impl KeySource {
    /// Keys that never change while the process runs (given in the environment, a test's).
    pub fn fixed(ring: Keyring, origin: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                origin: KeyOrigin::Given(origin.into()),
                held: RwLock::new(Held {
                    ring: Arc::new(ring),
                    stamp: None,
                }),
            }),
        }
    }

    /// The keys in the key file at `path`, read again when a key is missing and the file
    /// changed.
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let before = stamp(path).map_err(io)?;
        let ring = read_key_file(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                origin: KeyOrigin::File(path.to_owned()),
                held: RwLock::new(Held {
                    ring: Arc::new(ring),
                    stamp: Some(before),
                }),
            }),
        })
    }

    pub fn origin(&self) -> &KeyOrigin {
        &self.inner.origin
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.inner
            .held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Keys for KeySource {
    fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.held().ring)
    }

    fn reload(&self) -> Arc<Keyring> {
        let KeyOrigin::File(path) = &self.inner.origin else {
            return self.keyring();
        };
        let now = match stamp(path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot read the master key file again; keeping the keys held");
                return self.keyring();
            }
        };
        if self.held().stamp == Some(now) {
            return self.keyring();
        }
        match read_key_file(path) {
            Ok(ring) => {
                let ring = Arc::new(ring);
                tracing::info!(path = %path.display(), versions = ?ring.versions(),
                    "master key file read again");
                let mut held = self
                    .inner
                    .held
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                held.ring = Arc::clone(&ring);
                held.stamp = Some(now);
                ring
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the master key file; keeping the keys held");
                self.keyring()
            }
        }
    }
}

/// Reads a key file (a legacy single base64 key, or `vN:BASE64` lines).
pub fn read_key_file(path: &Path) -> Result<Keyring, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    Keyring::parse(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Replaces the key file with `ring` (mode 0600, atomically: a temp file synced, renamed into
/// place, the directory synced), so a crash leaves the old file or the new one.
pub fn write_key_file(path: &Path, ring: &Keyring) -> Result<(), KeyFileError> {
    write_file_atomically(
        path,
        ring.to_text().as_bytes(),
        Access::Private,
        Existing::Replace,
    )
    .map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_source_reads_again_only_when_the_file_changed(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("master.key");
        let old = MasterKey::generate()?;
        std::fs::write(&path, format!("{}\n", old.to_base64()))?;
        let source = KeySource::from_file(&path)?;
        assert_eq!(source.keyring().versions(), vec![1]);
        assert_eq!(source.origin(), &KeyOrigin::File(path.clone()));

        let new = MasterKey::generate()?.with_version(2);
        let sealed = new.seal_str("acc_1", "access_token", "t2")?;
        let ring = Keyring::new(vec![new.clone(), old.clone()])?;
        write_key_file(&path, &ring)?;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        // Held keys stay until a key is missing; then the file is read again.
        assert_eq!(source.keyring().versions(), vec![1]);
        assert_eq!(
            Keys::open_string(&source, "acc_1", "access_token", &sealed)?,
            "t2"
        );
        assert_eq!(source.keyring().versions(), vec![2, 1]);

        // A broken file keeps the keys held.
        std::fs::write(&path, "v3:garbage\n")?;
        assert_eq!(source.reload().versions(), vec![2, 1]);
        // A fixed source never changes.
        let fixed = KeySource::fixed(Keyring::from(old), "CODEXMESH_MASTER_KEY");
        assert!(Keys::open(&fixed, "acc_1", "access_token", &sealed).is_err());
        assert_eq!(fixed.origin().to_string(), "CODEXMESH_MASTER_KEY");
        assert!(!format!("{fixed:?}").contains(&new.to_base64()[..10]));
        assert!(matches!(
            KeySource::from_file(&path),
            Err(KeyFileError::Parse { .. })
        ));
        Ok(())
    }
}
