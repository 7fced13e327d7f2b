//! Pool keys: `cmk_` + 40 alphanumerics from the OS CSPRNG, stored only as SHA-256 (docs/design.md).

use sha2::{Digest, Sha256};

use crate::util::{self, RandomError};

pub const KEY_PREFIX: &str = "cmk_";
const KEY_RANDOM_LEN: usize = 40;

/// A freshly generated raw key. Shown once and never stored; `Debug` hides it.
pub struct RawKey(String);

impl RawKey {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self(format!(
            "{KEY_PREFIX}{}",
            util::random_alnum(KEY_RANDOM_LEN)?
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        hash_key(&self.0)
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash())
    }
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawKey(<redacted>)")
    }
}

/// SHA-256 of the key's UTF-8 bytes: what the store keeps (hex) and the snapshot carries (raw).
/// A fast hash is fine because keys are long and random (no dictionary to brute-force).
pub fn hash_key(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// Whether `s` has the shape of a pool key (used to refuse obviously wrong input early).
pub fn looks_like_key(s: &str) -> bool {
    s.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_format() -> Result<(), RandomError> {
        let k = RawKey::generate()?;
        assert!(looks_like_key(k.expose()), "{}", k.expose());
        assert_eq!(k.expose().len(), 44);
        assert_ne!(k.expose(), RawKey::generate()?.expose());
        assert_eq!(format!("{k:?}"), "RawKey(<redacted>)");
        Ok(())
    }

    #[test]
    fn hash_is_sha256_of_utf8_bytes() {
        // SHA-256("abc"), a published test vector.
        assert_eq!(
            hex::encode(hash_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hash_hex_matches_raw_hash() -> Result<(), RandomError> {
        let k = RawKey::generate()?;
        assert_eq!(k.hash_hex(), hex::encode(hash_key(k.expose())));
        assert_eq!(k.hash_hex().len(), 64);
        Ok(())
    }

    #[test]
    fn key_shape() {
        assert!(!looks_like_key("cmk_short"));
        assert!(!looks_like_key(&format!("xyz_{}", "a".repeat(40))));
        assert!(looks_like_key(&format!("cmk_{}", "a".repeat(40))));
        assert!(!looks_like_key(&format!("cmk_{}-", "a".repeat(39))));
    }
}
