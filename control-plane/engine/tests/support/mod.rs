//! Shared by the store scenario tests: a Codex login to import and a throwaway PostgreSQL.
#![allow(dead_code)]

use codexmesh_model::credentials::{self as authjson, CodexCredentials};
use serde_json::json;

/// The throwaway PostgreSQL of the test kit (not every test file uses it).
#[allow(unused_imports)]
pub use codexmesh_test_kit::pg;

pub fn creds(
    account: &str,
    email: &str,
    access: &str,
) -> Result<CodexCredentials, authjson::AuthJsonError> {
    let ns = "https://api.openai.com/auth";
    let id_token = authjson::unsigned_jwt(&json!({
        "email": email,
        ns: {"chatgpt_account_id": account, "chatgpt_plan_type": "plus", "chatgpt_user_id": "u1"}
    }));
    let access_token = authjson::unsigned_jwt(&json!({"exp": 2_000_000_000, "n": access}));
    authjson::parse(
        json!({
            "auth_mode": "chatgpt",
            "tokens": {"id_token": id_token, "access_token": access_token,
                       "refresh_token": format!("rt-{access}"), "account_id": account}
        })
        .to_string()
        .as_bytes(),
    )
}

/// A database at `url` migrated up to (and including) `version` of `full`, as an older release
/// left it: what the upgrade tests fill with old rows before the newer migrations run.
pub async fn database_at_version(
    url: &str,
    full: &sqlx::migrate::Migrator,
    version: i64,
) -> Result<sqlx::AnyPool, Box<dyn std::error::Error>> {
    sqlx::any::install_default_drivers();
    let old = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            full.migrations
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    assert_eq!(i64::try_from(old.migrations.len())?, version);
    let db = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    old.run(&db).await?;
    Ok(db)
}

/// A new empty database `name` on the throwaway cluster; returns its URL.
pub async fn empty_database(
    temp: &pg::TempPostgres,
    name: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    sqlx::any::install_default_drivers();
    let admin = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&temp.url)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(temp
        .url
        .strip_suffix("/postgres")
        .map(|base| format!("{base}/{name}"))
        .ok_or("unexpected temp Postgres URL")?)
}
