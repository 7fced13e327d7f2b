//! Pool key use cases: issue, list, revoke, give a key its own routing or make it inherit.
//!
//! Rules: a key's secret exists only in [`IssuedKey`] (the store keeps its hash); a label and
//! the routing input are checked before the store is opened.

use super::pools::unused_primary;
use super::{Notice, Ops, OpsError, Outcome};
use codexmesh_model::keys::RawKey;
use codexmesh_model::routing::{RoutingPatch, RoutingView};
use codexmesh_store::{Changed, KeyRoutingChange, KeyStatus, Pool, PoolKey};

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
    if let Some(l) = label {
        codexmesh_store::validate_label(l)?;
    }
    let store = ops.store().await?;
    let (key, secret) = store.issue_key(ops.actor(), pool, label, operator).await?;
    Ok(Outcome::new(IssuedKey { key, secret }))
}

pub async fn list(ops: &Ops, pool: Option<&str>) -> Result<Outcome<Vec<PoolKey>>, OpsError> {
    let store = ops.store().await?;
    Ok(Outcome::new(store.list_keys(pool).await?))
}

pub async fn revoke(ops: &Ops, ident: &str) -> Result<Outcome<Changed<PoolKey>>, OpsError> {
    let store = ops.store().await?;
    Ok(Outcome::new(store.revoke_key(ops.actor(), ident).await?))
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
    let store = ops.store().await?;
    let change = if inherit {
        Some(KeyRoutingChange::Inherit)
    } else if patch.is_empty() {
        None
    } else {
        Some(KeyRoutingChange::Custom(patch.clone()))
    };
    let result = match &change {
        Some(c) => store.set_key_routing(ops.actor(), ident, c).await?,
        None => Changed {
            changed: false,
            item: store.key_routing(ident).await?,
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
}
