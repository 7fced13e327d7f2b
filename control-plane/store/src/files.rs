//! Files the control plane writes next to its store: the private data dir, secrets, rendered
//! configs. Rules: a file is written whole or not at all (temp file with its final mode, synced,
//! renamed into place, the directory synced); anything secret is mode 0600 in a 0700 directory.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (mode 0700 for anything we create) if it is missing.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Who may read a file [`write_file_atomically`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600: tokens, keys.
    Private,
    /// Mode 0666 less the umask, like any new file (e.g. an Envoy bootstrap).
    Shared,
}

/// What [`write_file_atomically`] does when `path` already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Replace,
    /// Fail with `ErrorKind::AlreadyExists` and leave the file as it is.
    Keep,
}

/// Writes `contents` to a temp file in `path`'s directory (created with its final mode, synced)
/// and then moves it into place, so a reader (Envoy, the Codex CLI) never sees half a file and
/// a failure leaves no temp file behind. The directory must exist.
pub fn write_file_atomically(
    path: &Path,
    contents: &[u8],
    access: Access,
    existing: Existing,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let mode = match access {
        Access::Private => 0o600,
        Access::Shared => 0o666,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".codexmesh-")
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    let placed = match existing {
        Existing::Replace => tmp.persist(path),
        Existing::Keep => tmp.persist_noclobber(path),
    };
    placed.map(drop).map_err(|e| e.error)?;
    // The rename is durable only once the directory is: a crash must not bring the old file
    // back after a caller went on (a master key rotation deletes what the old key opened).
    std::fs::File::open(dir)?.sync_all()
}

/// A file anyone may read (an Envoy bootstrap), replaced atomically; creates its directory if
/// needed.
pub fn write_shared_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    write_file_atomically(path, contents, Access::Shared, Existing::Replace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        let secret = dir.path().join("auth.json");
        write_file_atomically(&secret, b"one", Access::Private, Existing::Keep)?;
        assert_eq!(mode(&secret)?, 0o600);
        let again = write_file_atomically(&secret, b"two", Access::Private, Existing::Keep);
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read_to_string(&secret)?, "one");
        write_file_atomically(&secret, b"two", Access::Private, Existing::Replace)?;
        assert_eq!(std::fs::read_to_string(&secret)?, "two");
        assert_eq!(mode(&secret)?, 0o600);

        let shared = dir.path().join("envoy").join("bootstrap.yaml");
        write_shared_file(&shared, b"x")?;
        write_shared_file(&shared, b"y")?;
        assert_eq!(std::fs::read_to_string(&shared)?, "y");
        // The mode any new file gets (0666 less the umask).
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x")?;
        assert_eq!(mode(&shared)?, mode(&plain)?);
        // No temp file is left behind, whether the write succeeded or not.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 3);
        assert_eq!(std::fs::read_dir(dir.path().join("envoy"))?.count(), 1);
        let missing = dir.path().join("no-such-dir").join("f");
        assert!(write_file_atomically(&missing, b"x", Access::Shared, Existing::Replace).is_err());
        Ok(())
    }
}
