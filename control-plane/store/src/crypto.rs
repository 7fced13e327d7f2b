//! Sealing secrets at rest: AES-256-GCM under a master key, a fresh random nonce per seal, and
//! the owning account id (plus the field name) as associated data, so a sealed blob copied onto
//! another account or another column fails to open instead of silently decrypting.
//!
//! Master keys have versions, so the key can be rotated (`rotation.rs`, `docs/secrets.md`):
//! - a blob says which key version sealed it. Format 1, `[1][nonce][ct+tag]`, is version 1 (what
//!   every release before rotation wrote; a version-1 key still writes it, so a store that was
//!   never rotated stays readable by those releases). Format 2, `[2][version u32 BE][nonce]
//!   [ct+tag]`, carries any version; its 5-byte header is part of the associated data;
//! - a [`Keyring`] holds one key per version (newest first) and opens a blob with the key of the
//!   blob's version; which key seals is the store's choice (the newest one it accepts);
//! - a keyring's text form is one key per line, `vN:BASE64` (a bare base64 key is version 1, the
//!   legacy single-key file), or the same separated by commas (an environment variable);
//! - nothing here ever shows a key: `Debug` prints versions only, and errors about a keyring
//!   entry name its position, never its text.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

use codexmesh_model::util::{self, RandomError};

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Format 2's header: the format byte and the key version.
const V2_HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 32 bytes of base64 (got {0} bytes)")]
    BadKeyLength(usize),
    #[error("master key is not valid base64")]
    BadKeyEncoding,
    #[error("sealed secret is truncated or of an unknown format")]
    Malformed,
    // Deliberately vague: a wrong key, a tampered blob and a wrong owner look the same.
    #[error("sealed secret could not be opened (wrong master key, or the data was altered)")]
    OpenFailed,
    #[error("sealing failed")]
    SealFailed,
    #[error(
        "a secret is sealed with master key version {0}, which the keyring does not hold \
         (add `v{0}:KEY` to the master key file or CODEXMESH_MASTER_KEY)"
    )]
    KeyNotHeld(u32),
    /// Entry `entry` (1-based: a line, or an item between commas) of a keyring is unusable.
    #[error("master keyring entry {entry}: {problem}")]
    BadKeyringEntry { entry: usize, problem: String },
    #[error("master keyring holds no key")]
    EmptyKeyring,
    #[error("master keyring holds version {0} twice")]
    DuplicateVersion(u32),
    #[error("master keyring holds one key under two versions ({0} and {1})")]
    DuplicateKey(u32, u32),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// A 32-byte key that seals account tokens, with its version. `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey {
    version: u32,
    bytes: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(v{}, <redacted>)", self.version)
    }
}

impl MasterKey {
    /// A new random key, version 1 (see [`MasterKey::with_version`]).
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = [0u8; 32];
        util::random_bytes(&mut k)?;
        Ok(Self {
            version: 1,
            bytes: k,
        })
    }

    /// A version-1 key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::BadKeyLength(bytes.len()))?;
        Ok(Self {
            version: 1,
            bytes: k,
        })
    }

    /// Parses standard base64 (padding optional, surrounding whitespace ignored) as version 1.
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        let s = s.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
            .map_err(|_| CryptoError::BadKeyEncoding)?;
        Self::from_bytes(&bytes)
    }

    /// The same key under version `version` (at least 1).
    pub fn with_version(self, version: u32) -> Self {
        Self {
            version: version.max(1),
            ..self
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// The keyring entry for this key: `vN:BASE64`.
    pub fn to_entry(&self) -> String {
        format!("v{}:{}", self.version, self.to_base64())
    }

    /// A 63-bit fingerprint of the key bytes (not the version) that the store keeps, so a
    /// different key is caught up front with a clear message rather than as undecryptable
    /// accounts. Domain-separated; reveals nothing useful.
    pub fn fingerprint(&self) -> i64 {
        let d = Sha256::new()
            .chain_update(b"codexmesh master key fingerprint v1\0")
            .chain_update(self.bytes)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        i64::from_le_bytes(first) & i64::MAX
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.bytes))
    }

    /// The first bytes of every blob this key seals: format 1 for version 1, else format 2
    /// with the version. What the store compares to find secrets sealed under another key.
    pub fn blob_prefix(&self) -> Vec<u8> {
        blob_prefix(self.version)
    }

    /// Seals `plaintext` for `owner` (an account id) and `field` (e.g. "access_token").
    pub fn seal(&self, owner: &str, field: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        util::random_bytes(&mut nonce)?;
        let header = self.blob_prefix();
        // Format 1 authenticates no header (as it always did); format 2 its whole header.
        let aad_header = if self.version == 1 {
            &[][..]
        } else {
            &header[..]
        };
        let aad = associated_data(aad_header, owner, field);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::SealFailed)?;
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + ct.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a blob sealed by this key (its version must be this key's).
    pub fn open(&self, owner: &str, field: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let blob = Blob::parse(sealed)?;
        if blob.version != self.version {
            return Err(CryptoError::KeyNotHeld(blob.version));
        }
        let aad = associated_data(blob.header, owner, field);
        self.cipher()
            .decrypt(
                Nonce::from_slice(blob.nonce),
                Payload {
                    msg: blob.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::OpenFailed)
    }

    /// A 32-byte key for one `purpose` (e.g. `"operator-session-signing/v1"`), derived with
    /// HKDF-SHA256 from the master key: the derived key changes when the master key does, and no
    /// purpose's key reveals the master key or another purpose's key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let hk =
            hkdf::Hkdf::<sha2::Sha256>::new(Some(b"codexmesh master-key derivation"), &self.bytes);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255 * 32 limit: expand cannot fail.
        if hk.expand(purpose.as_bytes(), &mut out).is_err() {
            out = [0u8; 32];
        }
        out
    }

    pub fn seal_str(&self, owner: &str, field: &str, s: &str) -> Result<Vec<u8>, CryptoError> {
        self.seal(owner, field, s.as_bytes())
    }

    pub fn open_string(
        &self,
        owner: &str,
        field: &str,
        sealed: &[u8],
    ) -> Result<String, CryptoError> {
        String::from_utf8(self.open(owner, field, sealed)?).map_err(|_| CryptoError::Malformed)
    }
}

/// The parts of a sealed blob.
struct Blob<'a> {
    version: u32,
    /// What is authenticated besides owner and field: nothing for format 1 (as it always was),
    /// the format byte and version for format 2.
    header: &'a [u8],
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Blob<'a> {
    fn parse(sealed: &'a [u8]) -> Result<Self, CryptoError> {
        let (version, header_len, aad_header) = match sealed.first() {
            Some(&FORMAT_V1) => (1, 1, &sealed[..0]),
            Some(&FORMAT_V2) if sealed.len() >= V2_HEADER_LEN => {
                let mut v = [0u8; 4];
                v.copy_from_slice(&sealed[1..V2_HEADER_LEN]);
                let version = u32::from_be_bytes(v);
                if version == 0 {
                    return Err(CryptoError::Malformed);
                }
                (version, V2_HEADER_LEN, &sealed[..V2_HEADER_LEN])
            }
            _ => return Err(CryptoError::Malformed),
        };
        if sealed.len() < header_len + NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = sealed[header_len..].split_at(NONCE_LEN);
        Ok(Self {
            version,
            header: aad_header,
            nonce,
            ciphertext,
        })
    }
}

/// The first bytes of every blob sealed by a key of `version` (1 byte for version 1, else 5).
pub fn blob_prefix(version: u32) -> Vec<u8> {
    if version <= 1 {
        vec![FORMAT_V1]
    } else {
        let mut p = vec![FORMAT_V2];
        p.extend_from_slice(&version.to_be_bytes());
        p
    }
}

/// The version of the key that sealed `sealed` (1 for a format-1 blob).
pub fn blob_version(sealed: &[u8]) -> Result<u32, CryptoError> {
    Blob::parse(sealed).map(|b| b.version)
}

fn associated_data(header: &[u8], owner: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 24 + owner.len() + field.len());
    // Format 1 blobs were sealed with exactly the text below; format 2 adds its header first.
    aad.extend_from_slice(header);
    aad.extend_from_slice(format!("codexmesh/v1/{owner}/{field}").as_bytes());
    aad
}

/// The master keys a process holds, one per version, newest (highest version) first; never
/// empty. Opens any blob whose version it holds. `Debug` shows the versions only.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({:?}, <redacted>)", self.versions())
    }
}

impl From<MasterKey> for Keyring {
    fn from(key: MasterKey) -> Self {
        Self { keys: vec![key] }
    }
}

impl Keyring {
    /// A keyring of `keys` (any order): at least one, no version twice, no key twice.
    pub fn new(mut keys: Vec<MasterKey>) -> Result<Self, CryptoError> {
        if keys.is_empty() {
            return Err(CryptoError::EmptyKeyring);
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.version));
        for pair in keys.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(CryptoError::DuplicateVersion(pair[0].version));
            }
        }
        for (i, a) in keys.iter().enumerate() {
            if let Some(b) = keys[i + 1..].iter().find(|b| b.bytes == a.bytes) {
                return Err(CryptoError::DuplicateKey(b.version, a.version));
            }
        }
        Ok(Self { keys })
    }

    /// Parses the text form: entries separated by newlines or commas, each `vN:BASE64` (N >= 1)
    /// or a bare base64 key (version 1); blank entries and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        let entries = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let bad = |problem: String| CryptoError::BadKeyringEntry {
                entry: i + 1,
                problem,
            };
            let key = match entry.split_once(':') {
                None => MasterKey::from_base64(entry).map_err(|e| bad(e.to_string()))?,
                Some((tag, b64)) => {
                    let version = tag
                        .strip_prefix('v')
                        .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                        .and_then(|n| n.parse::<u32>().ok())
                        .filter(|v| *v >= 1)
                        .ok_or_else(|| {
                            bad("expected `vN:BASE64` with a version N from 1 to 4294967295"
                                .to_owned())
                        })?;
                    MasterKey::from_base64(b64)
                        .map_err(|e| bad(e.to_string()))?
                        .with_version(version)
                }
            };
            keys.push(key);
        }
        Self::new(keys)
    }

    /// The text form, one `vN:BASE64` line per key, newest first, after a comment line.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# codexmesh master keys, newest first (docs/secrets.md). Keep this file private.\n",
        );
        for k in &self.keys {
            out.push_str(&k.to_entry());
            out.push('\n');
        }
        out
    }

    /// The highest version held.
    pub fn newest(&self) -> &MasterKey {
        // `new` refuses an empty ring.
        &self.keys[0]
    }

    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.version).collect()
    }

    pub fn get(&self, version: u32) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.version == version)
    }

    pub fn by_fingerprint(&self, fingerprint: i64) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.fingerprint() == fingerprint)
    }

    /// This ring with `key` added (its version must be new).
    pub fn with(&self, key: MasterKey) -> Result<Self, CryptoError> {
        let mut keys = self.keys.clone();
        keys.push(key);
        Self::new(keys)
    }

    /// This ring without the keys older than `version` (kept whole if that would empty it).
    pub fn without_older_than(&self, version: u32) -> Self {
        let keys: Vec<MasterKey> = self
            .keys
            .iter()
            .filter(|k| k.version >= version)
            .cloned()
            .collect();
        if keys.is_empty() {
            self.clone()
        } else {
            Self { keys }
        }
    }

    /// Opens a blob with the key of its version.
    pub fn open(&self, owner: &str, field: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let version = blob_version(sealed)?;
        self.get(version)
            .ok_or(CryptoError::KeyNotHeld(version))?
            .open(owner, field, sealed)
    }
}

/// Where a process gets its master keys: a fixed [`Keyring`] (a test's key, a key given in the
/// environment), or one that can be read again (`keyfile::KeySource`, the data dir's key file,
/// which a rotation rewrites while servers run). Opening reads the keys again once when the
/// blob's version is not held; the store does the same when no held key is one it accepts.
pub trait Keys: Send + Sync {
    /// The keys held now.
    fn keyring(&self) -> Arc<Keyring>;

    /// The keys, read again from where they came from if that changed; a fixed ring returns
    /// itself. Never fails: an unreadable source keeps the keys held (and says so in the log).
    fn reload(&self) -> Arc<Keyring> {
        self.keyring()
    }

    /// Opens `sealed` with the key of its version, reading the keys again once if it is not held.
    fn open(&self, owner: &str, field: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match Keyring::open(&self.keyring(), owner, field, sealed) {
            Err(CryptoError::KeyNotHeld(_)) => Keyring::open(&self.reload(), owner, field, sealed),
            other => other,
        }
    }

    fn open_string(&self, owner: &str, field: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        String::from_utf8(Keys::open(self, owner, field, sealed)?)
            .map_err(|_| CryptoError::Malformed)
    }
}

impl Keys for MasterKey {
    fn keyring(&self) -> Arc<Keyring> {
        Arc::new(Keyring::from(self.clone()))
    }
}

impl Keys for Keyring {
    fn keyring(&self) -> Arc<Keyring> {
        Arc::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_depend_on_purpose_and_master_key() -> Result<(), CryptoError> {
        let (a, b) = (MasterKey::generate()?, MasterKey::generate()?);
        assert_eq!(a.derive("x"), a.derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
        assert_ne!(a.derive("x"), b.derive("x"));
        assert_ne!(a.derive("x"), a.bytes);
        Ok(())
    }

    #[test]
    fn round_trip() -> Result<(), CryptoError> {
        let k = MasterKey::generate()?;
        let sealed = k.seal_str("acc_1", "access_token", "secret-token")?;
        assert!(!sealed.windows(12).any(|w| w == b"secret-token"));
        assert_eq!(
            k.open_string("acc_1", "access_token", &sealed)?,
            "secret-token"
        );
        Ok(())
    }

    /// A version-1 key writes format 1 exactly as releases before key versions did (so their
    /// blobs open and a never-rotated store stays readable by them); later versions write
    /// format 2 with the version in the header.
    #[test]
    fn blob_formats() -> Result<(), CryptoError> {
        let k1 = MasterKey::from_bytes(&[3u8; 32])?;
        let sealed = k1.seal_str("acc_1", "access_token", "tok")?;
        assert_eq!(sealed[0], 1);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 3 + TAG_LEN);
        assert_eq!(blob_version(&sealed)?, 1);
        // Format 1 as the old code sealed it: AAD is the owner/field text alone.
        let nonce = [9u8; NONCE_LEN];
        let ct = k1
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: b"legacy",
                    aad: b"codexmesh/v1/acc_1/refresh_token",
                },
            )
            .map_err(|_| CryptoError::SealFailed)?;
        let legacy = [&[1u8][..], &nonce, &ct].concat();
        assert_eq!(k1.open("acc_1", "refresh_token", &legacy)?, b"legacy");

        let k7 = MasterKey::from_bytes(&[3u8; 32])?.with_version(7);
        let sealed7 = k7.seal_str("acc_1", "access_token", "tok")?;
        assert_eq!(&sealed7[..5], &[2, 0, 0, 0, 7]);
        assert_eq!(sealed7[..5], k7.blob_prefix()[..]);
        assert_eq!(blob_version(&sealed7)?, 7);
        assert_eq!(k7.open_string("acc_1", "access_token", &sealed7)?, "tok");
        // The same key bytes under another version do not open it, and the header is
        // authenticated: relabelling the blob as version 1 (or 8) fails.
        assert!(matches!(
            k1.open("acc_1", "access_token", &sealed7),
            Err(CryptoError::KeyNotHeld(7))
        ));
        let mut relabelled = sealed7.clone();
        relabelled[4] = 8;
        let k8 = MasterKey::from_bytes(&[3u8; 32])?.with_version(8);
        assert!(matches!(
            k8.open("acc_1", "access_token", &relabelled),
            Err(CryptoError::OpenFailed)
        ));
        let as_v1 = [&[1u8][..], &sealed7[5..]].concat();
        assert!(matches!(
            k1.open("acc_1", "access_token", &as_v1),
            Err(CryptoError::OpenFailed)
        ));
        for bad in [&[][..], &[2, 0, 0, 0, 0][..], &[3; 40][..], &sealed7[..20]] {
            assert!(matches!(blob_version(bad), Err(CryptoError::Malformed)));
        }
        assert!(matches!(
            k7.open("acc_1", "access_token", &sealed7[..20]),
            Err(CryptoError::Malformed)
        ));
        Ok(())
    }

    #[test]
    fn nonces_differ_per_seal() -> Result<(), CryptoError> {
        let k = MasterKey::generate()?;
        let a = k.seal_str("acc_1", "f", "same")?;
        let b = k.seal_str("acc_1", "f", "same")?;
        assert_ne!(a, b);
        Ok(())
    }

    #[test]
    fn tampering_is_detected() -> Result<(), CryptoError> {
        for k in [
            MasterKey::generate()?,
            MasterKey::generate()?.with_version(2),
        ] {
            let sealed = k.seal_str("acc_1", "access_token", "secret-token")?;
            for i in 0..sealed.len() {
                let mut t = sealed.clone();
                t[i] ^= 0x01;
                assert!(k.open("acc_1", "access_token", &t).is_err(), "byte {i}");
            }
            assert!(matches!(
                k.open("acc_1", "access_token", &sealed[..sealed.len() - 1]),
                Err(CryptoError::OpenFailed)
            ));
            assert!(matches!(
                k.open("acc_1", "access_token", &sealed[..10]),
                Err(CryptoError::Malformed)
            ));
        }
        Ok(())
    }

    #[test]
    fn wrong_owner_field_or_key_fails() -> Result<(), CryptoError> {
        let k = MasterKey::generate()?;
        let sealed = k.seal_str("acc_1", "access_token", "secret-token")?;
        assert!(matches!(
            k.open("acc_2", "access_token", &sealed),
            Err(CryptoError::OpenFailed)
        ));
        assert!(matches!(
            k.open("acc_1", "refresh_token", &sealed),
            Err(CryptoError::OpenFailed)
        ));
        let other = MasterKey::generate()?;
        assert!(matches!(
            other.open("acc_1", "access_token", &sealed),
            Err(CryptoError::OpenFailed)
        ));
        Ok(())
    }

    #[test]
    fn base64_and_fingerprint() -> Result<(), CryptoError> {
        let k = MasterKey::generate()?;
        let k2 = MasterKey::from_base64(&format!("  {}\n", k.to_base64()))?;
        assert_eq!(k.fingerprint(), k2.fingerprint());
        // The fingerprint is the key's, whatever its version.
        assert_eq!(k.fingerprint(), k2.clone().with_version(5).fingerprint());
        assert!(k.fingerprint() >= 0);
        assert_ne!(k.fingerprint(), MasterKey::generate()?.fingerprint());
        assert!(matches!(
            MasterKey::from_base64("AAAA"),
            Err(CryptoError::BadKeyLength(3))
        ));
        assert!(matches!(
            MasterKey::from_base64("not base64!"),
            Err(CryptoError::BadKeyEncoding)
        ));
        assert_eq!(format!("{k:?}"), "MasterKey(v1, <redacted>)");
        Ok(())
    }

    #[test]
    fn keyrings_parse_and_print() -> Result<(), CryptoError> {
        let (a, b) = (
            MasterKey::generate()?,
            MasterKey::generate()?.with_version(2),
        );
        // The legacy file: one bare key is version 1.
        let legacy = Keyring::parse(&format!("{}\n", a.to_base64()))?;
        assert_eq!(legacy.versions(), vec![1]);
        assert_eq!(legacy.newest().fingerprint(), a.fingerprint());
        // Lines (with a comment and blank lines) or commas, any order: newest first.
        let text = format!("# keys\n\n{}\n v2:{} \n", a.to_base64(), b.to_base64());
        let commas = format!("v1:{},{}", a.to_base64(), b.to_entry());
        for ring in [Keyring::parse(&text)?, Keyring::parse(&commas)?] {
            assert_eq!(ring.versions(), vec![2, 1]);
            assert_eq!(ring.newest().fingerprint(), b.fingerprint());
            assert_eq!(
                ring.by_fingerprint(a.fingerprint()).map(MasterKey::version),
                Some(1)
            );
            assert!(ring.get(3).is_none());
            let again = Keyring::parse(&ring.to_text())?;
            assert_eq!(again.versions(), vec![2, 1]);
            assert_eq!(
                again.get(2).map(MasterKey::fingerprint),
                Some(b.fingerprint())
            );
        }
        let ring = Keyring::parse(&text)?;
        assert_eq!(ring.without_older_than(2).versions(), vec![2]);
        assert_eq!(ring.without_older_than(9).versions(), vec![2, 1]);
        let c = MasterKey::generate()?.with_version(3);
        assert_eq!(ring.with(c.clone())?.versions(), vec![3, 2, 1]);
        assert!(matches!(
            ring.with(c.with_version(2)),
            Err(CryptoError::DuplicateVersion(2))
        ));
        // Debug shows versions, never a key.
        let shown = format!("{ring:?}");
        assert_eq!(shown, "Keyring([2, 1], <redacted>)");
        assert!(!shown.contains(&a.to_base64()[..8]));
        Ok(())
    }

    #[test]
    fn bad_keyrings_are_refused_without_echoing_keys() -> Result<(), CryptoError> {
        let a = MasterKey::generate()?;
        let secret = a.to_base64();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "master keyring holds no key"),
            (
                "# only a comment\n".to_owned(),
                "master keyring holds no key",
            ),
            (
                format!("{secret}\nv0:{secret}"),
                "master keyring entry 2: expected `vN:BASE64`",
            ),
            (
                format!("x2:{secret}"),
                "master keyring entry 1: expected `vN:BASE64`",
            ),
            (
                format!("v-2:{secret}"),
                "master keyring entry 1: expected `vN:BASE64`",
            ),
            (
                format!("v99999999999:{secret}"),
                "master keyring entry 1: expected `vN:BASE64`",
            ),
            (
                "v2:AAAA".to_owned(),
                "master keyring entry 1: master key must be 32 bytes of base64 (got 3 bytes)",
            ),
            (
                format!("v2:{secret}, v3:{}!", &secret[..20]),
                "master keyring entry 2: master key is not valid base64",
            ),
            (
                format!("v2:{secret}\nv2:{}", MasterKey::generate()?.to_base64()),
                "master keyring holds version 2 twice",
            ),
            (
                format!("{secret}\nv1:{}", MasterKey::generate()?.to_base64()),
                "master keyring holds version 1 twice",
            ),
            (
                format!("v3:{secret}\nv1:{secret}"),
                "master keyring holds one key under two versions (1 and 3)",
            ),
        ];
        for (text, expected) in cases {
            let err = Keyring::parse(&text).err().map(|e| e.to_string());
            let err = err.unwrap_or_default();
            assert!(err.starts_with(expected), "{text:?}: {err}");
            assert!(!err.contains(&secret[..12]), "{err}");
        }
        Ok(())
    }

    #[test]
    fn keyrings_open_by_version() -> Result<(), CryptoError> {
        let old = MasterKey::generate()?;
        let new = MasterKey::generate()?.with_version(2);
        let ring = Keyring::new(vec![old.clone(), new.clone()])?;
        let by_old = old.seal_str("acc_1", "id_token", "one")?;
        let by_new = new.seal_str("acc_1", "id_token", "two")?;
        assert_eq!(ring.open("acc_1", "id_token", &by_old)?, b"one");
        assert_eq!(ring.open("acc_1", "id_token", &by_new)?, b"two");
        assert_eq!(
            Keys::open_string(&ring, "acc_1", "id_token", &by_new)?,
            "two"
        );
        // The old key alone no longer opens what the new one sealed, and says which it lacks.
        let only_old = Keyring::from(old);
        let err = only_old.open("acc_1", "id_token", &by_new).err();
        assert!(matches!(err, Some(CryptoError::KeyNotHeld(2))), "{err:?}");
        assert!(Keys::open(&only_old, "acc_1", "id_token", &by_new).is_err());
        Ok(())
    }
}
