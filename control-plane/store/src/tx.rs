//! Shared transaction helpers: starting writes and consistent reads, input checks, and
//! resolving a pool, account or key from what an operator typed. Rules: aggregates use these;
//! this module uses only `rows` and `error` (no aggregate module), and runs inside the caller's
//! transaction (it never commits).

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::error::{Entity, Lookup, StoreError};
use crate::rows::{
    account_from_row, key_from_row, membership_from_row, pool_from_row, ACCOUNT_SELECT, KEY_SELECT,
    MEMBERSHIP_SELECT, POOL_SELECT,
};
use crate::{Backend, Store};
use codexmesh_model::ids;
use codexmesh_model::records::{Account, Membership, Pool, PoolKey};

/// Pool names: see [`codexmesh_model::ids::validate_pool_name`].
pub fn validate_pool_name(name: &str) -> Result<(), StoreError> {
    ids::validate_pool_name(name).map_err(StoreError::from)
}

/// Labels: see [`codexmesh_model::ids::validate_label`].
pub fn validate_label(label: &str) -> Result<(), StoreError> {
    ids::validate_label(label).map_err(StoreError::from)
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Starts a mutation: opens a transaction whose first statement bumps the revision.
    /// Dropping the transaction without commit rolls the bump back too.
    pub(crate) async fn begin_write(&self) -> Result<(Transaction<'static, Any>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, revision))
    }

    /// Starts a change to what no snapshot carries (operators, API tokens): like
    /// [`Store::begin_write`] its first statement writes the `meta` row (the same lock order,
    /// and SQLite's write lock taken up front), but it leaves the revision as it is, so Envoys
    /// are not sent a new snapshot for it. The audit row names the revision it was made at.
    pub(crate) async fn begin_unpublished_write(
        &self,
    ) -> Result<(Transaction<'static, Any>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = value WHERE key = 'revision' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, revision))
    }

    /// Starts a read that must see one consistent state (snapshot builds).
    pub(crate) async fn begin_consistent_read(
        &self,
    ) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // READ COMMITTED would let the tables move under the revision we report.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

/// Fills in `accounts`' memberships (all of them when `only` is None, else those of the one
/// account `only`) and puts the one in `view_pool` (else the first by pool name) in view.
pub(crate) async fn attach_memberships_tx(
    tx: &mut Transaction<'static, Any>,
    accounts: &mut [Account],
    only: Option<&str>,
    view_pool: Option<&str>,
) -> Result<(), StoreError> {
    let rows = match only {
        Some(id) => {
            sqlx::query(&format!(
                "{MEMBERSHIP_SELECT} WHERE m.account_id = $1 ORDER BY p.name"
            ))
            .bind(id.to_owned())
            .fetch_all(&mut **tx)
            .await?
        }
        None => {
            sqlx::query(&format!("{MEMBERSHIP_SELECT} ORDER BY p.name"))
                .fetch_all(&mut **tx)
                .await?
        }
    };
    let mut of: HashMap<String, Vec<Membership>> = HashMap::new();
    for r in &rows {
        let (account_id, m) = membership_from_row(r)?;
        of.entry(account_id).or_default().push(m);
    }
    for a in accounts.iter_mut() {
        a.pools = of.remove(&a.id).unwrap_or_default();
        let shown = view_pool
            .and_then(|p| a.membership(p))
            .or_else(|| a.pools.first())
            .cloned();
        if let Some(m) = shown {
            a.view_membership(&m);
        }
    }
    Ok(())
}

/// Which unique pool column a lookup matches on (a closed set: it is put into the SQL).
#[derive(Clone, Copy)]
pub(crate) enum PoolKeyColumn {
    Id,
    Name,
}

/// The pool whose id or name equals `value`, if there is one.
pub(crate) async fn find_pool_tx(
    tx: &mut Transaction<'static, Any>,
    column: PoolKeyColumn,
    value: &str,
) -> Result<Option<Pool>, StoreError> {
    let column = match column {
        PoolKeyColumn::Id => "id",
        PoolKeyColumn::Name => "name",
    };
    let row = sqlx::query(&format!("{POOL_SELECT} WHERE {column} = $1"))
        .bind(value.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(pool_from_row).transpose()
}

pub(crate) async fn pool_by_name_tx(
    tx: &mut Transaction<'static, Any>,
    name: &str,
) -> Result<Pool, StoreError> {
    find_pool_tx(tx, PoolKeyColumn::Name, name)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Pool, name, Lookup::Name))
}

/// One row out of an id-or-label lookup; several label matches are an error naming them.
fn pick_one<T>(
    rows: &[AnyRow],
    what: Entity,
    ident: &str,
    map: fn(&AnyRow) -> Result<T, StoreError>,
    id_of: fn(&T) -> &str,
) -> Result<T, StoreError> {
    let mut found: Vec<T> = rows.iter().map(map).collect::<Result<_, _>>()?;
    match found.len() {
        0 => Err(StoreError::not_found(what, ident, Lookup::IdOrLabel)),
        1 => Ok(found.remove(0)),
        _ => Err(StoreError::Ambiguous {
            what,
            ident: ident.to_owned(),
            ids: found.iter().map(id_of).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Rows whose `id` equals `ident`, else those whose `label` does.
async fn rows_by_id_or_label(
    tx: &mut Transaction<'static, Any>,
    select: &str,
    alias: &str,
    ident: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    let by_id = sqlx::query(&format!("{select} WHERE {alias}.id = $1"))
        .bind(ident.to_owned())
        .fetch_all(&mut **tx)
        .await?;
    if !by_id.is_empty() {
        return Ok(by_id);
    }
    Ok(sqlx::query(&format!(
        "{select} WHERE {alias}.label = $1 ORDER BY {alias}.id"
    ))
    .bind(ident.to_owned())
    .fetch_all(&mut **tx)
    .await?)
}

/// A pool an account or key points at: its absence is corruption, not a typo.
pub(crate) async fn pool_by_id_tx(
    tx: &mut Transaction<'static, Any>,
    id: &str,
) -> Result<Pool, StoreError> {
    find_pool_tx(tx, PoolKeyColumn::Id, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("pool {id} is missing")))
}

pub(crate) async fn resolve_account_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<Account, StoreError> {
    let rows = rows_by_id_or_label(tx, ACCOUNT_SELECT, "a", ident).await?;
    let mut account = [pick_one(
        &rows,
        Entity::Account,
        ident,
        account_from_row,
        |a| &a.id,
    )?];
    let id = account[0].id.clone();
    attach_memberships_tx(tx, &mut account, Some(&id), None).await?;
    let [account] = account;
    Ok(account)
}

/// [`resolve_account_tx`] with the membership in `pool` in view; an error naming the account's
/// pools when it is not a member there.
pub(crate) async fn resolve_member_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
    pool: &Pool,
) -> Result<Account, StoreError> {
    let mut account = resolve_account_tx(tx, ident).await?;
    let m = account.membership(&pool.id).cloned().ok_or_else(|| {
        StoreError::not_found(
            Entity::Membership,
            account.label.clone(),
            Lookup::InPool {
                pool: pool.name.clone(),
                its_pools: account.pool_names(),
            },
        )
    })?;
    account.view_membership(&m);
    Ok(account)
}

/// The account by id or label, with the membership in pool `pool_name` in view when given;
/// without a pool, an account in several pools is an error asking for one.
pub(crate) async fn resolve_account_for_pool_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
    pool_name: Option<&str>,
) -> Result<Account, StoreError> {
    match pool_name {
        Some(name) => {
            let pool = pool_by_name_tx(tx, name).await?;
            resolve_member_tx(tx, ident, &pool).await
        }
        None => {
            let account = resolve_account_tx(tx, ident).await?;
            if account.pools.len() > 1 {
                return Err(StoreError::invalid(
                    "pool",
                    format!(
                        "account {} is in several pools ({}): name one with --pool",
                        account.label,
                        account.pool_names()
                    ),
                ));
            }
            Ok(account)
        }
    }
}

pub(crate) async fn resolve_key_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<PoolKey, StoreError> {
    let rows = rows_by_id_or_label(tx, KEY_SELECT, "k", ident).await?;
    pick_one(&rows, Entity::Key, ident, key_from_row, |k| &k.id)
}
