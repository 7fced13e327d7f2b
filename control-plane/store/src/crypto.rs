//! Sealing secrets at rest: AES-256-GCM under the master key, a fresh random nonce per seal, and
//! the owning account id (plus the field name) as associated data, so a sealed blob copied onto
//! another account or another column fails to open instead of silently decrypting.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

use codexmesh_model::util::{self, RandomError};

/// Blob layout: version byte, 12-byte nonce, ciphertext with the 16-byte tag appended.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

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
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The 32-byte key that seals account tokens. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = [0u8; 32];
        util::random_bytes(&mut k)?;
        Ok(Self(k))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::BadKeyLength(bytes.len()))?;
        Ok(Self(k))
    }

    /// Parses standard base64 (padding optional, surrounding whitespace ignored).
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        let s = s.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
            .map_err(|_| CryptoError::BadKeyEncoding)?;
        Self::from_bytes(&bytes)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A 63-bit fingerprint the store keeps so a different key is caught up front with a clear
    /// message rather than as undecryptable accounts. Domain-separated; reveals nothing useful.
    pub fn fingerprint(&self) -> i64 {
        let d = Sha256::new()
            .chain_update(b"codexmesh master key fingerprint v1\0")
            .chain_update(self.0)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        i64::from_le_bytes(first) & i64::MAX
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }

    /// Seals `plaintext` for `owner` (an account id) and `field` (e.g. "access_token").
    pub fn seal(&self, owner: &str, field: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        util::random_bytes(&mut nonce)?;
        let aad = associated_data(owner, field);
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
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, owner: &str, field: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let aad = associated_data(owner, field);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CryptoError::OpenFailed)
    }

    /// A 32-byte key for one `purpose` (e.g. `"operator-session-signing/v1"`), derived with
    /// HKDF-SHA256 from the master key: the derived key changes when the master key does, and no
    /// purpose's key reveals the master key or another purpose's key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"codexmesh master-key derivation"), &self.0);
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

fn associated_data(owner: &str, field: &str) -> Vec<u8> {
    format!("codexmesh/v1/{owner}/{field}").into_bytes()
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
        assert_ne!(a.derive("x"), a.0);
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
        let k = MasterKey::generate()?;
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
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
        Ok(())
    }
}
