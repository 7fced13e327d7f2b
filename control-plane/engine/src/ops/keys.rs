//! Pool key use cases: issue, list, rotate, revoke, give a key its own routing or make it
//! inherit.
//!
//! Rules: a key's secret exists only in [`IssuedKey`] (the store keeps its hash); a label and
//! the routing input are checked before the store is opened; a principal sees and changes only
//! the keys of its pools (`guard`), and every refused change is audited. A key's policy is
//! checked with `KeyPolicy::validate` before anything is written; a bad value is the invalid
//! error naming `policy.<field>` (audited like any refused change).

use super::pools::unused_primary;
use super::{Notice, Ops, OpsError, Outcome};
use codexmesh_model::keys::RawKey;
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::routing::{RoutingPatch, RoutingView};
use codexmesh_store::{
    Changed, ConflictReason, Entity, KeyRoutingChange, KeyStatus, Pool, PoolKey, StoreError,
};

/// A new key and its secret, shown once.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: PoolKey,
    pub secret: RawKey,
}

pub async fn issue(
    ops: &Ops,
    pool: &str,
    label: Option<&str>,
    operator: bool,
) -> Result<Outcome<IssuedKey>, OpsError> {
    issue_with_policy(ops, pool, label, operator, None).await
}

/// The invalid error of a policy that cannot be stored, naming `policy.<field>`.
pub fn check_policy(policy: &KeyPolicy) -> Result<(), OpsError> {
    policy.validate().map_err(|e| {
        OpsError::Store(StoreError::InvalidPath {
            field: format!("policy.{}", e.field),
            message: format!("policy.{e}"),
        })
    })
}

/// [`issue`] with the key's policy set in the same write (None or empty: no policy).
pub async fn issue_with_policy(
    ops: &Ops,
    pool: &str,
    label: Option<&str>,
    operator: bool,
    policy: Option<&KeyPolicy>,
) -> Result<Outcome<IssuedKey>, OpsError> {
    let result = async {
        if let Some(l) = label {
            codexmesh_store::validate_label(l)?;
        }
        if let Some(p) = policy {
            check_policy(p)?;
        }
        ops.change_pool(pool)?;
        let store = ops.store().await?;
        if store.pool_by_name(pool).await?.archived_at_ms.is_some() {
            return Err(StoreError::Conflict {
                what: Entity::Pool,
                ident: pool.to_owned(),
                reason: ConflictReason::Archived,
            }
            .into());
        }
        let (key, secret) = store
            .issue_key_with_policy(ops.actor(), pool, label, operator, policy)
            .await?;
        Ok(Outcome::new(IssuedKey { key, secret }))
    }
    .await;
    ops.audited("key.create", label, &[pool], result).await
}

/// The keys the principal sees (of `pool`, or of all its pools).
pub async fn list(ops: &Ops, pool: Option<&str>) -> Result<Outcome<Vec<PoolKey>>, OpsError> {
    if let Some(p) = pool {
        ops.see_pool(p)?;
    }
    let store = ops.store().await?;
    let mut keys = store.list_keys(pool).await?;
    keys.retain(|k| ops.access().sees_pool(&k.pool));
    Ok(Outcome::new(store.with_usage(keys).await?))
}

pub async fn revoke(ops: &Ops, ident: &str) -> Result<Outcome<Changed<PoolKey>>, OpsError> {
    let mut pool = None;
    let result = async {
        let key = ops.key_to_change(ident).await?;
        pool = Some(key.pool.clone());
        let store = ops.store().await?;
        Ok(Outcome::new(store.revoke_key(ops.actor(), &key.id).await?))
    }
    .await;
    let pools: Vec<&str> = pool.as_deref().into_iter().collect();
    ops.audited("key.revoke", Some(ident), &pools, result).await
}

/// One key as the principal sees it.
pub async fn get(ops: &Ops, ident: &str) -> Result<Outcome<PoolKey>, OpsError> {
    let key = ops.key_to_see(ident).await?;
    let store = ops.store().await?;
    let mut keys = store.with_usage(vec![key]).await?;
    match keys.pop() {
        Some(k) => Ok(Outcome::new(k)),
        None => Err(OpsError::Conflict(
            "the key disappeared while it was read".to_owned(),
        )),
    }
}

/// Gives the key a new secret (same id, label, pool and routing); the old one stops working
/// with the next snapshot. The new secret is shown once.
pub async fn rotate(ops: &Ops, ident: &str) -> Result<Outcome<IssuedKey>, OpsError> {
    let mut pool = None;
    let result = async {
        let key = ops.key_to_change(ident).await?;
        pool = Some(key.pool.clone());
        let store = ops.store().await?;
        let (key, secret) = store.rotate_key(ops.actor(), &key.id).await?;
        Ok(Outcome::with_notices(
            IssuedKey { key, secret },
            vec![Notice::note(
                "old_key_stops",
                "the previous secret of this key stops working as soon as the Envoys have \
                 the next snapshot (seconds): hand the new one out now",
            )],
        ))
    }
    .await;
    let pools: Vec<&str> = pool.as_deref().into_iter().collect();
    ops.audited("key.rotate", Some(ident), &pools, result).await
}

/// Replaces the key's policy (an empty policy clears it). Audited as `key.set_policy`.
pub async fn set_policy(
    ops: &Ops,
    ident: &str,
    policy: &KeyPolicy,
) -> Result<Outcome<Changed<PoolKey>>, OpsError> {
    let mut pool = None;
    let result = async {
        check_policy(policy)?;
        let key = ops.key_to_change(ident).await?;
        pool = Some(key.pool.clone());
        let store = ops.store().await?;
        let changed = store.set_key_policy(ops.actor(), &key.id, policy).await?;
        let notices = if changed.changed && changed.item.status == KeyStatus::Revoked {
            vec![Notice::note(
                "key_revoked",
                format!(
                    "key {} is revoked; its policy only matters if it is used again",
                    changed.item.id
                ),
            )]
        } else {
            Vec::new()
        };
        Ok(Outcome::with_notices(changed, notices))
    }
    .await;
    let pools: Vec<&str> = pool.as_deref().into_iter().collect();
    ops.audited("key.set_policy", Some(ident), &pools, result)
        .await
}

/// A key's effective routing after [`set_routing`].
#[derive(Debug, Clone)]
pub struct KeyRoutingResult {
    pub key: PoolKey,
    pub pool: Pool,
    pub routing: RoutingView,
    /// A change was asked for (false: this only showed the routing).
    pub requested: bool,
    pub changed: bool,
}

/// Gives the key its own routing (`patch` applied to its pool's current settings), makes it
/// follow its pool again (`inherit`), or with neither only reads it.
pub async fn set_routing(
    ops: &Ops,
    ident: &str,
    inherit: bool,
    patch: &RoutingPatch,
) -> Result<Outcome<KeyRoutingResult>, OpsError> {
    if inherit && !patch.is_empty() {
        return Err(OpsError::invalid(
            "inherit",
            format!(
                "--inherit drops the key's own routing; it cannot be combined with {}",
                patch.flags().join(", ")
            ),
        ));
    }
    let key = ops.key_to_see(ident).await?;
    let change = if inherit {
        Some(KeyRoutingChange::Inherit)
    } else if patch.is_empty() {
        None
    } else {
        Some(KeyRoutingChange::Custom(patch.clone()))
    };
    let store = ops.store().await?;
    let result = match &change {
        Some(c) => {
            let written = async {
                ops.require_writer()?;
                Ok(store.set_key_routing(ops.actor(), &key.id, c).await?)
            }
            .await;
            ops.audited("key.set_routing", Some(ident), &[&key.pool], written)
                .await?
        }
        None => Changed {
            changed: false,
            item: store.key_routing(&key.id).await?,
        },
    };
    let routing = result.item.effective().view();
    let mut notices: Vec<Notice> = unused_primary(patch, &routing).into_iter().collect();
    let codexmesh_store::KeyRouting { key, pool } = result.item;
    if key.status == KeyStatus::Revoked && result.changed {
        notices.push(Notice::note(
            "key_revoked",
            format!(
                "key {} is revoked; its routing only matters if it is used again",
                key.id
            ),
        ));
    }
    Ok(Outcome::with_notices(
        KeyRoutingResult {
            key,
            pool,
            routing,
            requested: change.is_some(),
            changed: result.changed,
        },
        notices,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::ErrorKind;
    use codexmesh_model::routing::RawRoutingFlags;

    #[tokio::test]
    async fn inherit_with_settings_is_refused_before_the_store_opens(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("never.db");
        let flags = crate::config::SettingsFlags {
            store: Some(format!("sqlite://{}", db.display())),
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let settings = crate::config::Settings::resolve(&flags, &|_| None)?;
        let ops = Ops::new(settings, codexmesh_store::Actor::new("test"));
        let patch = RawRoutingFlags {
            strategy: Some("round_robin"),
            ..RawRoutingFlags::default()
        }
        .parse()?;
        let Err(e) = set_routing(&ops, "k", true, &patch).await else {
            return Err("accepted --inherit with --strategy".into());
        };
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert_eq!(e.field(), Some("inherit"));
        assert_eq!(
            e.to_string(),
            "--inherit drops the key's own routing; it cannot be combined with --strategy"
        );
        assert!(!db.exists(), "bad input opened the store");
        Ok(())
    }

    #[tokio::test]
    async fn a_bad_policy_is_refused_naming_its_field_and_audited(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("s.db");
        let flags = crate::config::SettingsFlags {
            store: Some(format!("sqlite://{}", db.display())),
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let settings = crate::config::Settings::resolve(&flags, &|_| None)?;
        let ops = Ops::new(settings, codexmesh_store::Actor::new("test"));
        let bad = KeyPolicy {
            requests_per_minute: Some(0),
            ..KeyPolicy::default()
        };
        let Err(e) = set_policy(&ops, "k", &bad).await else {
            return Err("accepted requests_per_minute 0".into());
        };
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert_eq!(e.field(), Some("policy.requests_per_minute"));
        let Err(e) = issue_with_policy(&ops, "p", None, false, Some(&bad)).await else {
            return Err("issued a key with requests_per_minute 0".into());
        };
        assert_eq!(e.field(), Some("policy.requests_per_minute"));
        // Refused changes are audited, with what was wrong.
        let audit = ops.store().await?.recent_audit(10).await?;
        let refused: Vec<_> = audit
            .iter()
            .filter(|a| a.action == "key.set_policy" && a.outcome == "invalid")
            .collect();
        assert_eq!(refused.len(), 1, "{audit:?}");
        assert!(refused[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("policy.requests_per_minute")));
        Ok(())
    }
}
