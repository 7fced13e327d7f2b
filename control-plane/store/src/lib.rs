//! The store: sqlx `AnyPool` over SQLite (default) or Postgres, with embedded migrations.
//!
//! Portability rules: `$N` placeholders (SQLite maps them by number too), times as i64 unix ms,
//! flags as 0/1 integers, no NUMERIC results. Every mutation of snapshot input bumps
//! `meta.revision` as the first statement of its transaction: that takes SQLite's write lock up
//! front (no lock-upgrade deadlocks) and serialises writers on one row in Postgres. Writes that
//! are not (meaningful) snapshot input do not bump it: outcomes and activity counters, leases,
//! refresh bookkeeping (failure count, next attempt), and quota evidence or health scores that
//! did not move enough to change routing (see `quota.rs` and `accounts.rs`). Those writers never
//! take the `meta` row, so lock order stays `meta` first, then account rows.
//!
//! Layout: one private module per aggregate (`pools`, `accounts`, `keys`, `routing`, `leases`,
//! `operators`, `quota`, `outcomes`, `audit`, `snapshot_data`, `rotation`), each adding methods
//! to [`Store`]; `rows` (all row mapping) and `error` are leaves; `tx` (transaction starts,
//! lookups by name, id or label) sits between them and the aggregates; `sealing` (which master
//! keys the store accepts, the key a writer seals with) serves the writers of sealed secrets.
//! Dependencies point one way: leaves ← `tx` ← aggregates (and `audit` ← the writers, `quota` ←
//! `snapshot_data`, `sealing` ← `accounts`, `operators`, `rotation`, `keys` ← `invites`: a
//! redemption mints a key); no aggregate uses another otherwise. Public modules: `crypto` (keys, sealing), `keyfile` (where keys come from),
//! `files`. `declarative` (`codexmesh apply`: a whole plan in one transaction) writes across
//! aggregates with its own statements and `routing`'s routing writer.

pub mod crypto;
pub mod files;
pub mod keyfile;

mod accounts;
mod activity;
mod alerts;
mod audit;
mod declarative;
mod envoys;
mod error;
mod invites;
mod keys;
mod leases;
mod operators;
mod outcomes;
mod pools;
mod quota;
mod rotation;
mod routing;
mod rows;
mod sealing;
mod snapshot_data;
mod tx;
mod usage;
mod warmup;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;
use sqlx::Connection as _;

// The public API: the store, what its methods take and return, its errors. The aggregate
// modules stay private: their methods are on `Store`.
pub use activity::{ActivityQuery, ACTIVITY_MAX_ROWS};
pub use alerts::{DueDelivery, PoolSample, WEBHOOK_SECRET_FIELD};
pub use audit::AuditFilter;
pub use codexmesh_model::records::*;
pub use declarative::{Applied, NewKey};
pub use envoys::{
    AckedVersion, EnvoyNode, RejectedVersion, SnapshotVerdict, ENVOY_NODE_RETENTION_MS,
    MAX_ENVOY_NODES,
};
pub use error::{ConflictReason, Entity, Lookup, StoreError};
pub use invites::{NewInvite, Redeemed};
pub use operators::{NewOperator, OperatorCredentials, Throttle};
pub use quota::QuotaWrite;
pub use rotation::{SealedKind, SealedRow};
pub use routing::{KeyRouting, KeyRoutingChange};
pub use sealing::{KeyMark, KeyState, TOTP_FIELD};
pub use tx::{validate_label, validate_pool_name};
pub use usage::SharePoint;
pub use warmup::PoolWarmup;

/// The schema, per backend (tests upgrade old schemas step by step with these).
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
pub static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Who made a change, for the audit log: a name (`cli:alice`, `operator:bob`, `token:ci`,
/// `refresher`) and, for changes that came over the network, the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The client's IP address (admin API requests); None for local and background work.
    pub client: Option<String>,
}

impl Actor {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            client: None,
        }
    }

    /// The same actor, seen from `client`.
    pub fn from_client(mut self, client: Option<String>) -> Self {
        self.client = client;
        self
    }

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
        Self::new(format!("cli:{user}"))
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
                if path.is_some() {
                    // Not for an in-memory store: its one connection is the whole database.
                    options = options.after_release(|conn, _meta| {
                        Box::pin(async move {
                            // A write that fails with SQLITE_FULL or SQLITE_IOERR may make SQLite
                            // roll back the whole transaction itself; sqlx still counts it open,
                            // its ROLLBACK then fails, and the connection would go back to the
                            // pool believing it is inside a transaction: its next "transaction"
                            // becomes a savepoint of a transaction nobody ends, holding the
                            // write lock forever (every other writer: "database is locked";
                            // its own writes visible only to itself). The ping runs after any
                            // queued rollback; a connection still counted in a transaction
                            // then is closed (SQLite rolls back whatever is left) instead.
                            conn.ping().await?;
                            if conn.is_in_transaction() {
                                tracing::warn!(
                                    "closing a SQLite connection left inside a transaction \
                                     (a failed write's automatic rollback)"
                                );
                                return Ok(false);
                            }
                            Ok(true)
                        })
                    });
                }
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
}
