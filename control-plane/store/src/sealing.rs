//! Which master keys the store accepts, and the key a writer seals with.
//!
//! Rules: `meta` names the current key (`master_key_fp` and `master_key_version`; a store from
//! before key versions has no version row, which means version 1) and, while a rotation runs
//! (`rotation.rs`), the next one (`master_key_next_fp`, `master_key_next_version`). A key is
//! accepted when both its fingerprint and its version match one of them. A writer chooses its
//! sealing key with [`sealing_key_tx`] after its transaction's first statement, which wrote the
//! `meta` revision row (`begin_write` / `begin_unpublished_write`): that row serialises it with
//! the rotation's switch, so a writer never seals with a key the store stopped accepting. It
//! takes the newest key it holds that the store accepts, reading its keys again once when it
//! holds none (a server whose key file a rotation rewrote).

use sqlx::{Any, Transaction};

use crate::crypto::{Keys, MasterKey};
use crate::error::StoreError;
use crate::Store;

/// The associated-data field name of an operator's sealed TOTP secret.
pub const TOTP_FIELD: &str = "totp_secret";

pub(crate) const CURRENT_FP: &str = "master_key_fp";
pub(crate) const CURRENT_VERSION: &str = "master_key_version";
pub(crate) const NEXT_FP: &str = "master_key_next_fp";
pub(crate) const NEXT_VERSION: &str = "master_key_next_version";

/// One key as the store knows it: its version and fingerprint (never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMark {
    pub version: u32,
    pub fingerprint: i64,
}

impl KeyMark {
    pub fn of(key: &MasterKey) -> Self {
        Self {
            version: key.version(),
            fingerprint: key.fingerprint(),
        }
    }

    pub fn matches(&self, key: &MasterKey) -> bool {
        *self == Self::of(key)
    }
}

/// The keys the store accepts: the current one (none before the first secret is sealed) and,
/// while a rotation runs, the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyState {
    pub current: Option<KeyMark>,
    pub next: Option<KeyMark>,
}

impl KeyState {
    pub fn accepts(&self, key: &MasterKey) -> bool {
        [self.current, self.next]
            .iter()
            .flatten()
            .any(|m| m.matches(key))
    }
}

pub(crate) async fn key_state_tx(
    tx: &mut Transaction<'static, Any>,
) -> Result<KeyState, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, value FROM meta WHERE key IN ($1, $2, $3, $4) ORDER BY key")
            .bind(CURRENT_FP)
            .bind(CURRENT_VERSION)
            .bind(NEXT_FP)
            .bind(NEXT_VERSION)
            .fetch_all(&mut **tx)
            .await?;
    let get = |name: &str| rows.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let version = |name: &str, default: Option<u32>| -> Result<Option<u32>, StoreError> {
        match get(name) {
            None => Ok(default),
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("meta {name} is {v}"))),
        }
    };
    let current = match get(CURRENT_FP) {
        None => None,
        Some(fingerprint) => Some(KeyMark {
            version: version(CURRENT_VERSION, Some(1))?.unwrap_or(1),
            fingerprint,
        }),
    };
    let next = match (get(NEXT_FP), version(NEXT_VERSION, None)?) {
        (Some(fingerprint), Some(version)) => Some(KeyMark {
            version,
            fingerprint,
        }),
        _ => None,
    };
    Ok(KeyState { current, next })
}

/// Sets (or replaces) one `meta` value.
pub(crate) async fn set_meta_tx(
    tx: &mut Transaction<'static, Any>,
    key: &str,
    value: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key.to_owned())
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records `key` as the current key of a store that has none yet (its first secret).
pub(crate) async fn record_first_key_tx(
    tx: &mut Transaction<'static, Any>,
    key: &MasterKey,
) -> Result<(), StoreError> {
    set_meta_tx(tx, CURRENT_FP, key.fingerprint()).await?;
    set_meta_tx(tx, CURRENT_VERSION, i64::from(key.version())).await
}

/// The key to seal with, inside a write transaction (see the module rules): the newest held key
/// the store accepts; the newest held key on a store that has none yet (recorded as current).
pub(crate) async fn sealing_key_tx(
    tx: &mut Transaction<'static, Any>,
    keys: &(impl Keys + ?Sized),
) -> Result<MasterKey, StoreError> {
    let state = key_state_tx(tx).await?;
    if state.current.is_none() {
        let key = keys.keyring().newest().clone();
        record_first_key_tx(tx, &key).await?;
        return Ok(key);
    }
    for ring in [keys.keyring(), keys.reload()] {
        if let Some(key) = ring.keys().iter().find(|k| state.accepts(k)) {
            return Ok(key.clone());
        }
    }
    Err(StoreError::MasterKeyMismatch)
}

impl Store {
    /// The keys the store accepts now.
    pub async fn key_state(&self) -> Result<KeyState, StoreError> {
        let mut tx = self.pool.begin().await?;
        let state = key_state_tx(&mut tx).await;
        tx.rollback().await?;
        state
    }

    /// Fails early when `keys` lack the key the store's secrets are sealed with (its current
    /// key, same version): reading them again once first. A store with no secret yet accepts
    /// any keys. During a rotation, holding the current key is enough: secrets the next key
    /// sealed are opened by reading the keys again when met.
    pub async fn verify_master_key(&self, keys: &(impl Keys + ?Sized)) -> Result<(), StoreError> {
        let Some(current) = self.key_state().await?.current else {
            return Ok(());
        };
        for ring in [keys.keyring(), keys.reload()] {
            if ring.keys().iter().any(|k| current.matches(k)) {
                return Ok(());
            }
        }
        Err(StoreError::MasterKeyMismatch)
    }
}
