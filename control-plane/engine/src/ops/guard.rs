//! Tenant isolation and the audit of refusals, for every use case.
//!
//! Rules this module keeps (issue 11):
//! - what the acting principal may not see does not exist for it: a pool, account or key
//!   outside its pools is "not found", worded exactly as for a name nobody has, so existence
//!   does not leak; what it sees but may not change is [`OpsError::Forbidden`];
//! - names are resolved among what the principal sees, so a label shared with another tenant's
//!   account or key neither resolves to it nor makes the lookup "ambiguous";
//! - an account is shown with the memberships the principal sees only;
//! - a change to an account that other tenants' pools share (pause, resume, delete) needs the
//!   right to change every pool it is in;
//! - a refused or failed change is written to the audit log with its outcome (the kind of the
//!   error) by [`Ops::audited`]; a successful one is audited by the store in its transaction.

use super::{ErrorKind, Ops, OpsError};
use codexmesh_model::records::{Account, PoolKey};
use codexmesh_store::{Actor, Entity, Lookup, StoreError};

fn not_found(what: Entity, ident: &str, lookup: Lookup) -> OpsError {
    StoreError::NotFound {
        what,
        ident: ident.to_owned(),
        lookup,
    }
    .into()
}

impl ErrorKind {
    /// The audit log's outcome word for this kind of refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::TotpRequired => "totp_required",
            ErrorKind::Internal => "internal",
        }
    }
}

impl Ops {
    /// The pools the principal is limited to (None: all, an owner or the shell).
    pub(crate) fn visible_pools(&self) -> Option<Vec<String>> {
        (!self.access.role.sees_all_pools()).then(|| self.access.pools.clone())
    }

    /// Refuses, as "no pool named …", a pool the principal does not see.
    pub(crate) fn see_pool(&self, name: &str) -> Result<(), OpsError> {
        if self.access.sees_pool(name) {
            Ok(())
        } else {
            Err(not_found(Entity::Pool, name, Lookup::Name))
        }
    }

    /// A pool the principal may change: unseen is not found, seen but read-only forbidden.
    pub(crate) fn change_pool(&self, name: &str) -> Result<(), OpsError> {
        self.see_pool(name)?;
        self.require_writer()
    }

    /// Refuses read-only principals.
    pub(crate) fn require_writer(&self) -> Result<(), OpsError> {
        if self.access.role.can_write() {
            Ok(())
        } else {
            Err(OpsError::Forbidden(format!(
                "a {} may not change anything",
                self.access.role
            )))
        }
    }

    /// Refuses anyone but an owner (or the shell).
    pub(crate) fn require_owner(&self, what: &str) -> Result<(), OpsError> {
        if self.access.role.sees_all_pools() {
            Ok(())
        } else {
            Err(OpsError::Forbidden(format!("only an owner may {what}")))
        }
    }

    fn sees_account(&self, a: &Account) -> bool {
        a.pools.iter().any(|m| self.access.sees_pool(&m.pool))
    }

    /// The account as the principal may see it: only its visible memberships, and the pool it
    /// is listed under one of them.
    pub(crate) fn redact_account(&self, mut a: Account) -> Account {
        if self.access.role.sees_all_pools() {
            return a;
        }
        a.pools.retain(|m| self.access.sees_pool(&m.pool));
        if !self.access.sees_pool(&a.pool) {
            if let Some(m) = a.pools.first() {
                a.pool_id = m.pool_id.clone();
                a.pool = m.pool.clone();
                a.priority = m.priority;
                a.weight = m.weight;
            }
        }
        a
    }

    /// Finds an account by id or label among those the principal sees.
    pub(crate) async fn account_to_see(&self, ident: &str) -> Result<Account, OpsError> {
        let store = self.store().await?;
        if self.access.role.sees_all_pools() {
            return Ok(store.account(ident).await?);
        }
        let mut found: Vec<Account> = store
            .list_accounts(None)
            .await?
            .into_iter()
            .filter(|a| self.sees_account(a) && (a.id == ident || a.label == ident))
            .collect();
        // An id match wins over labels (as in the store's lookup).
        if let Some(i) = found.iter().position(|a| a.id == ident) {
            return Ok(found.swap_remove(i));
        }
        match found.len() {
            0 => Err(not_found(Entity::Account, ident, Lookup::IdOrLabel)),
            1 => Ok(found.swap_remove(0)),
            _ => Err(StoreError::Ambiguous {
                what: Entity::Account,
                ident: ident.to_owned(),
                ids: found
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into()),
        }
    }

    /// An account the principal may change as a whole (pause, resume, delete): it must be
    /// allowed to change every pool the account is in.
    pub(crate) async fn account_to_change(&self, ident: &str) -> Result<Account, OpsError> {
        let account = self.account_to_see(ident).await?;
        self.require_writer()?;
        if account
            .pools
            .iter()
            .all(|m| self.access.may_change_pool(&m.pool))
        {
            Ok(account)
        } else {
            Err(OpsError::Forbidden(format!(
                "account {} also serves pools you do not manage; ask an owner",
                account.label
            )))
        }
    }

    /// Finds a key by id or label among those the principal sees.
    pub(crate) async fn key_to_see(&self, ident: &str) -> Result<PoolKey, OpsError> {
        let store = self.store().await?;
        if self.access.role.sees_all_pools() {
            return Ok(store.find_key(ident).await?);
        }
        let mut found: Vec<PoolKey> = store
            .list_keys(None)
            .await?
            .into_iter()
            .filter(|k| self.access.sees_pool(&k.pool) && (k.id == ident || k.label == ident))
            .collect();
        if let Some(i) = found.iter().position(|k| k.id == ident) {
            return Ok(found.swap_remove(i));
        }
        match found.len() {
            0 => Err(not_found(Entity::Key, ident, Lookup::IdOrLabel)),
            1 => Ok(found.swap_remove(0)),
            _ => Err(StoreError::Ambiguous {
                what: Entity::Key,
                ident: ident.to_owned(),
                ids: found
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into()),
        }
    }

    /// A key the principal may change (its pool's writer).
    pub(crate) async fn key_to_change(&self, ident: &str) -> Result<PoolKey, OpsError> {
        let key = self.key_to_see(ident).await?;
        self.require_writer()?;
        Ok(key)
    }

    /// Passes a change's result through; a refusal or failure is added to the audit log with
    /// its kind as the outcome (best effort: if that write fails too, it is logged and the
    /// original error stands). `pools` are the pools the change was aimed at, when known.
    pub(crate) async fn audited<T>(
        &self,
        action: &str,
        target: Option<&str>,
        pools: &[&str],
        result: Result<T, OpsError>,
    ) -> Result<T, OpsError> {
        if let Err(e) = &result {
            let pools: Vec<String> = pools.iter().map(|p| (*p).to_owned()).collect();
            self.audit_refusal_as(self.actor(), action, target, &pools, e)
                .await;
        }
        result
    }

    /// Writes the audit row of refusal `e` as `actor` (sign-in and bootstrap name the one who
    /// tried, not the acting principal). Best effort: a failed write is logged.
    pub(crate) async fn audit_refusal_as(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        pools: &[String],
        e: &OpsError,
    ) {
        let detail = serde_json::json!({ "error": audit_message(e) });
        let written = match self.store().await {
            Ok(store) => store
                .audit_refusal(actor, action, target, e.kind().as_str(), pools, detail)
                .await
                .map_err(OpsError::from),
            Err(open) => Err(open),
        };
        if let Err(write) = written {
            tracing::warn!(action, error = %write, "cannot audit a refused change");
        }
    }
}

/// What an audit row says about a refusal: the message, except for internal and store
/// failures (which may carry details for the server log only).
fn audit_message(e: &OpsError) -> String {
    match e.kind() {
        ErrorKind::Internal | ErrorKind::Unavailable => e.kind().as_str().to_owned(),
        _ => e.to_string(),
    }
}
