//! The catalog database: the Iceberg JDBC catalog tables and Floe's own metadata tables, in
//! one SQLite (embedded default) database, with versioned migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use crate::{Error, Result};

pub type Db = Pool<Sqlite>;

/// Ordered migrations; each runs once, in one transaction, recorded in `floe_migrations`.
/// Never edit a released migration: add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "jdbc catalog tables and tenants",
    r#"
    CREATE TABLE IF NOT EXISTS iceberg_tables (
        catalog_name VARCHAR(255) NOT NULL,
        table_namespace VARCHAR(255) NOT NULL,
        table_name VARCHAR(255) NOT NULL,
        metadata_location VARCHAR(1000),
        previous_metadata_location VARCHAR(1000),
        iceberg_type VARCHAR(5),
        PRIMARY KEY (catalog_name, table_namespace, table_name)
    );
    CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
        catalog_name VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL,
        property_key VARCHAR(255),
        property_value VARCHAR(1000),
        PRIMARY KEY (catalog_name, namespace, property_key)
    );
    CREATE TABLE IF NOT EXISTS floe_tenants (
        id TEXT PRIMARY KEY NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS floe_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        tenant TEXT,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#,
)];

/// Opens (creating if needed) the catalog database at `url` and applies pending migrations.
pub async fn open(url: &str) -> Result<Db> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Err(Error::Config {
            message: format!(
                "unsupported catalog URL {url:?}: this build supports sqlite://PATH \
                 (postgres:// is planned)"
            ),
        });
    };
    if let Some(parent) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(Error::io(parent.display().to_string()))?;
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(Error::db("parsing the catalog URL"))?
        .create_if_missing(true)
        // WAL lets `floe tenant create` and `floe serve` share the file; FULL makes every
        // committed metadata swap durable before the write-ahead log behind it is truncated.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(Error::db("opening the catalog database"))?;
    migrate(&pool).await?;
    Ok(pool)
}

async fn migrate(pool: &Db) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS floe_migrations (version INTEGER PRIMARY KEY, \
         description TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(Error::db("creating floe_migrations"))?;
    for (version, description, sql) in MIGRATIONS {
        let mut tx = pool.begin().await.map_err(Error::db("migration"))?;
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM floe_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(Error::db("reading floe_migrations"))?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(format!("migration {version}")))?;
        sqlx::query(
            "INSERT OR IGNORE INTO floe_migrations (version, description, applied_at_ms) \
             VALUES (?, ?, ?)",
        )
        .bind(version)
        .bind(description)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(Error::db("recording a migration"))?;
        tx.commit().await.map_err(Error::db("migration commit"))?;
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
