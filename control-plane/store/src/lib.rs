//! The store: sqlx `AnyPool` over SQLite (default) or Postgres, with embedded migrations.
//!
//! Portability rules: `$N` placeholders (SQLite maps them by number too), times as i64 unix ms,
//! flags as 0/1 integers, no NUMERIC results. Every mutation of snapshot input bumps
//! `meta.revision` as the first statement of its transaction: that takes SQLite's write lock up
//! front (no lock-upgrade deadlocks) and serialises writers on one row in Postgres. Writes that
//! are not (meaningful) snapshot input do not bump it: outcomes and activity counters, leases,
//! refresh bookkeeping (failure count, next attempt), and quota evidence or health scores that
//! did not move enough to change routing (see `lifecycle.rs`). Those writers never take the
//! `meta` row, so lock order stays `meta` first, then account rows.

pub mod crypto;
pub mod files;
mod lifecycle;
mod ops;
mod routing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Row, Transaction};

pub use codexmesh_model::records::*;
pub use lifecycle::QuotaWrite;
pub use ops::{validate_label, validate_pool_name};
pub use routing::{KeyRouting, KeyRoutingChange};

use crate::crypto::CryptoError;
use codexmesh_model::util::RandomError;

/// The schema, per backend (tests upgrade old schemas step by step with these).
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store URL {0:?} is not sqlite:PATH or postgres://...")]
    BadUrl(String),
    #[error("cannot prepare the SQLite file {}: {source}", path.display())]
    SqliteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {ident:?} is ambiguous (matches {ids}); use the id")]
    Ambiguous {
        what: &'static str,
        ident: String,
        ids: String,
    },
    #[error(
        "the master key does not match the one this store's secrets were sealed with \
         (check CODEXMESH_MASTER_KEY / the data dir's master.key)"
    )]
    MasterKeyMismatch,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl From<codexmesh_model::ids::InvalidValue> for StoreError {
    fn from(e: codexmesh_model::ids::InvalidValue) -> Self {
        StoreError::Invalid(e.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Who made a change, for the audit log ("cli:alice", "api", "system").
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    pub fn cli() -> Self {
        use std::os::unix::fs::MetadataExt;
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            // No login name (services, containers): the process's uid still says who.
            .or_else(|| {
                std::fs::metadata("/proc/self")
                    .ok()
                    .map(|m| format!("uid{}", m.uid()))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self(format!("cli:{user}"))
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// The connection pool underneath, for tests and tools that inspect the schema or write rows
    /// by hand (e.g. a value no API accepts). Application code goes through the methods.
    #[doc(hidden)]
    pub fn sql_pool(&self) -> &AnyPool {
        &self.pool
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// The file behind a `sqlite:` URL, or None for in-memory databases and other backends.
pub fn sqlite_file_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::BadUrl(codexmesh_model::util::redact_url(url)))
    }
}

fn prepare_sqlite_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| StoreError::SqliteFile {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        crate::files::ensure_private_dir(parent).map_err(err)?;
    }
    // The file holds sealed tokens and key hashes: create it private.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(err)
}

impl Store {
    /// Opens (creating a SQLite file and its directory if missing) and migrates the store.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(15));
        match backend {
            Backend::Sqlite => {
                let path = sqlite_file_path(url);
                if let Some(p) = &path {
                    prepare_sqlite_file(p)?;
                }
                // Each in-memory connection would be its own database: keep exactly one.
                let max = if path.is_some() { 4 } else { 1 };
                options = options
                    .max_connections(max)
                    .min_connections(if path.is_some() { 0 } else { 1 })
                    .idle_timeout(if path.is_some() {
                        Some(Duration::from_secs(600))
                    } else {
                        None
                    })
                    .max_lifetime(if path.is_some() {
                        Some(Duration::from_secs(1800))
                    } else {
                        None
                    })
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            sqlx::query(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA foreign_keys = ON")
                                .execute(&mut *conn)
                                .await?;
                            // Safe with WAL and much faster for many small transactions.
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    });
            }
            Backend::Postgres => {
                options = options.max_connections(8);
            }
        }
        let pool = options.connect(url).await?;
        let store = Self { pool, backend };
        match backend {
            Backend::Sqlite => {
                // WAL lets readers (the snapshot builder) run beside a writer (the CLI). The
                // mode is persistent in the file, so only switch when it is not set yet.
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&store.pool)
                    .await?;
                if !mode.eq_ignore_ascii_case("wal") && sqlite_file_path(url).is_some() {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&store.pool)
                        .await?;
                }
                SQLITE_MIGRATIONS.run(&store.pool).await?;
            }
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&store.pool).await?,
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The current `meta.revision` (what the next snapshot's version would be).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'revision'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Starts a mutation: opens a transaction whose first statement bumps the revision.
    /// Dropping the transaction without commit rolls the bump back too.
    async fn begin_write(&self) -> Result<(Transaction<'static, Any>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, revision))
    }

    /// Starts a read that must see one consistent state (snapshot builds).
    async fn begin_consistent_read(&self) -> Result<Transaction<'static, Any>, StoreError> {
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

async fn audit(
    tx: &mut Transaction<'static, Any>,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
    revision: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail, revision) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(codexmesh_model::util::now_ms())
    .bind(actor.0.clone())
    .bind(action.to_owned())
    .bind(target.map(str::to_owned))
    .bind(detail.to_string())
    .bind(revision)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Typed column access with the column named in errors.
fn col<T>(row: &AnyRow, name: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get::<T, _>(name).map_err(StoreError::from)
}

fn col_u32(row: &AnyRow, name: &str) -> Result<u32, StoreError> {
    let v: i64 = col(row, name)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{name} = {v} is out of range")))
}

fn col_bool(row: &AnyRow, name: &str) -> Result<bool, StoreError> {
    Ok(col::<i64>(row, name)? != 0)
}

/// A nullable DOUBLE PRECISION parameter. sqlx 0.8's Any driver sends a NULL `f64` to Postgres
/// as `float4`, so a statement first prepared with a NULL there is cached with a `float4`
/// parameter and a later non-NULL `f64` fails ("incorrect binary data format"). A NULL `f32`
/// goes out as `float8`: use that for NULLs. (SQLite does not care.)
pub(crate) struct NullableF64(pub Option<f64>);

impl<'q> sqlx::Encode<'q, Any> for NullableF64 {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self.0 {
            Some(v) => <f64 as sqlx::Encode<'q, Any>>::encode_by_ref(&v, buf),
            None => <Option<f32> as sqlx::Encode<'q, Any>>::encode_by_ref(&None, buf),
        }
    }
}

impl sqlx::Type<Any> for NullableF64 {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <f64 as sqlx::Type<Any>>::type_info()
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}
