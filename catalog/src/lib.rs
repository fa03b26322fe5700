//! Floe's catalog: configuration, tenants, tokens, the audit log, and the Iceberg catalog with
//! Floe's own commit path (metadata written, then a compare-and-swap of the table's metadata
//! pointer, with source positions in the snapshot summary of the same commit).

pub mod auth;
pub mod config;
mod db;
mod error;
pub mod table;
pub mod tenant;

use iceberg::io::FileIO;

pub use auth::{Authenticator, Claims, Role, TokenAuthority};
pub use config::Config;
use db::Db;
pub use error::{Error, ErrorKind, Result};
pub use table::{CommitOutcome, SourcePosition};
pub use tenant::{Tenant, TenantId};

/// The Iceberg catalog name Floe registers its tables under (what other engines call it).
pub const CATALOG_NAME: &str = "floe";

/// Handle on the catalog database and the warehouse. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    db: Db,
    name: String,
    warehouse: String,
    file_io: FileIO,
    tables: table::TableCache,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.name)
            .field("warehouse", &self.warehouse)
            .finish()
    }
}

impl Catalog {
    /// Opens the catalog named by `config` (creating the embedded database if needed).
    pub async fn open(config: &Config) -> Result<Catalog> {
        let warehouse = config.warehouse_url()?;
        let file_io = file_io_for(&warehouse)?;
        let db = db::open(&config.catalog_url()?).await?;
        Ok(Catalog {
            db,
            name: CATALOG_NAME.to_string(),
            warehouse,
            file_io,
            tables: Default::default(),
        })
    }

    pub fn warehouse(&self) -> &str {
        &self.warehouse
    }

    pub fn file_io(&self) -> &FileIO {
        &self.file_io
    }
}

/// Storage for a warehouse URL.
fn file_io_for(warehouse: &str) -> Result<FileIO> {
    if let Some(path) = warehouse.strip_prefix("file://") {
        std::fs::create_dir_all(path).map_err(Error::io(path.to_string()))?;
        Ok(FileIO::new_with_fs())
    } else {
        Err(Error::Config {
            message: format!(
                "unsupported warehouse URL {warehouse:?}: this build supports file://PATH \
                 (s3:// is planned)"
            ),
        })
    }
}

impl Catalog {
    /// Checks that the catalog database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.db)
            .await
            .map_err(error::Error::db("ping"))?;
        Ok(())
    }
}
