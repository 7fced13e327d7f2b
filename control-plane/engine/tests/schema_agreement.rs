//! The SQLite and PostgreSQL schemas agree: after every migration, each table has the same
//! columns with the same normalized type, nullability and default in both backends. The
//! normalized schema is also a golden file (`snapshots/schema_agreement__schema.snap`), so a
//! migration shows up in review as a diff of what it did to the tables.
//!
//! Normalization: `TEXT` → text; `BIGINT`, `INTEGER`, `BIGSERIAL` → int; `REAL`,
//! `DOUBLE PRECISION` → real; `BLOB`, `BYTEA` → bytes. A primary-key column is never null. An
//! auto-incrementing key (SQLite `INTEGER PRIMARY KEY AUTOINCREMENT`, Postgres `BIGSERIAL`) has
//! the default `auto`. Defaults lose their Postgres casts (`'active'::text` → `'active'`).
//! sqlx's own `_sqlx_migrations` table and SQLite's `sqlite_sequence` are not ours.

mod support;

use std::collections::BTreeMap;

use codexmesh_store::Store;
use sqlx::Row;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    ty: &'static str,
    nullable: bool,
    default: Option<String>,
}

type Schema = BTreeMap<String, BTreeMap<String, Column>>;

fn canonical_type(raw: &str) -> &'static str {
    match raw.trim().to_ascii_lowercase().as_str() {
        "text" => "text",
        "bigint" | "integer" | "bigserial" | "int8" | "int4" => "int",
        "real" | "double precision" | "float8" => "real",
        "blob" | "bytea" => "bytes",
        _ => "UNKNOWN",
    }
}

fn canonical_default(raw: Option<String>) -> Option<String> {
    let raw = raw?;
    if raw.starts_with("nextval(") {
        return Some("auto".to_owned());
    }
    // `'active'::text`, `(0)::bigint` → `'active'`, `0`.
    let no_cast = match raw.find("::") {
        Some(i) => &raw[..i],
        None => raw.as_str(),
    };
    Some(
        no_cast
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .to_owned(),
    )
}

fn ours(table: &str) -> bool {
    !table.starts_with("_sqlx") && table != "sqlite_sequence"
}

async fn sqlite_schema(store: &Store) -> Result<Schema, Box<dyn std::error::Error>> {
    let pool = store.sql_pool();
    let tables: Vec<String> =
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
    let mut schema = Schema::new();
    for table in tables.into_iter().filter(|t| ours(t)) {
        let sql = format!(
            "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{table}')"
        );
        let mut columns = BTreeMap::new();
        for row in sqlx::query(&sql).fetch_all(pool).await? {
            let name: String = row.try_get(0)?;
            let ty: String = row.try_get(1)?;
            let not_null: i64 = row.try_get(2)?;
            let default: Option<String> = row.try_get(3)?;
            let pk: i64 = row.try_get(4)?;
            let auto = pk > 0 && ty.eq_ignore_ascii_case("integer");
            columns.insert(
                name,
                Column {
                    ty: canonical_type(&ty),
                    nullable: not_null == 0 && pk == 0,
                    default: if auto {
                        Some("auto".to_owned())
                    } else {
                        canonical_default(default)
                    },
                },
            );
        }
        schema.insert(table, columns);
    }
    Ok(schema)
}

async fn postgres_schema(store: &Store) -> Result<Schema, Box<dyn std::error::Error>> {
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
         column_default::text FROM information_schema.columns \
         WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    )
    .fetch_all(store.sql_pool())
    .await?;
    let mut schema = Schema::new();
    for row in rows {
        let table: String = row.try_get(0)?;
        if !ours(&table) {
            continue;
        }
        let name: String = row.try_get(1)?;
        let ty: String = row.try_get(2)?;
        let nullable: String = row.try_get(3)?;
        let default: Option<String> = row.try_get(4)?;
        schema.entry(table).or_default().insert(
            name,
            Column {
                ty: canonical_type(&ty),
                nullable: nullable == "YES",
                default: canonical_default(default),
            },
        );
    }
    Ok(schema)
}

fn render(schema: &Schema) -> String {
    let mut out = String::new();
    for (table, columns) in schema {
        out.push_str(table);
        out.push('\n');
        for (name, c) in columns {
            out.push_str(&format!(
                "  {name}: {}{}{}\n",
                c.ty,
                if c.nullable { "" } else { " not null" },
                c.default
                    .as_ref()
                    .map(|d| format!(" default {d}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

#[tokio::test]
async fn sqlite_and_postgres_schemas_agree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sqlite = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await?;
    let sqlite_schema = sqlite_schema(&sqlite).await?;
    sqlite.close().await;
    let rendered = render(&sqlite_schema);
    assert!(
        !rendered.contains("UNKNOWN"),
        "a type to normalize:\n{rendered}"
    );
    insta::assert_snapshot!("schema", rendered);

    let Some(pg) = support::pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        eprintln!("SKIPPED: the PostgreSQL half (no PostgreSQL binaries on this machine)");
        return Ok(());
    };
    let postgres = Store::open(&pg.url).await?;
    let postgres_schema = postgres_schema(&postgres).await?;
    postgres.close().await;
    let theirs = render(&postgres_schema);
    assert_eq!(
        rendered, theirs,
        "SQLite (left) and PostgreSQL (right) schemas differ after the migrations"
    );
    Ok(())
}
