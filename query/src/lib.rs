//! Floe's query engine: DataFusion over one tenant's Iceberg tables.
//!
//! Every session is built for exactly one tenant: its only catalog is `floe`, whose only schema
//! is the tenant's namespace. Other tenants' tables are not registered, so they cannot be named,
//! listed or guessed. Statements that change anything (DDL, DML, `SET`, `COPY`) are refused.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use floe_catalog::config::QueryConfig;
use floe_catalog::{CATALOG_NAME, Catalog, ErrorKind, TenantId};
use iceberg_datafusion::IcebergStaticTableProvider;

/// Errors of the query crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] floe_catalog::Error),

    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),

    #[error("could not open table {table}")]
    Table {
        table: String,
        #[source]
        source: Box<iceberg::Error>,
    },

    #[error("formatting results: {0}")]
    Format(#[from] arrow::error::ArrowError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Catalog(e) => e.kind(),
            Error::DataFusion(e) => match e.find_root() {
                datafusion::error::DataFusionError::Plan(_)
                | datafusion::error::DataFusionError::SQL(..)
                | datafusion::error::DataFusionError::SchemaError(..)
                | datafusion::error::DataFusionError::NotImplemented(_) => ErrorKind::InvalidInput,
                datafusion::error::DataFusionError::ResourcesExhausted(_) => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Error::Table { .. } => ErrorKind::Unavailable,
            Error::Format(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How `floe sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// A header line, then one line per row.
    Csv,
    /// One JSON object per row, one per line.
    Json,
}

/// Builds tenant-scoped DataFusion sessions.
#[derive(Clone, Debug)]
pub struct Engine {
    catalog: Catalog,
    config: QueryConfig,
}

impl Engine {
    pub fn new(catalog: Catalog, config: QueryConfig) -> Self {
        Engine { catalog, config }
    }

    /// A session that sees exactly `tenant`'s tables, as of now.
    pub async fn session(&self, tenant: &TenantId) -> Result<SessionContext> {
        let mut cfg = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, tenant.as_str());
        if self.config.target_partitions > 0 {
            cfg = cfg.with_target_partitions(self.config.target_partitions);
        }
        let ctx = SessionContext::new_with_config(cfg);
        let schema = Arc::new(MemorySchemaProvider::new());
        for name in self.catalog.list_tables(tenant).await? {
            let table = self.catalog.load_table(tenant, &name).await?;
            let provider = IcebergStaticTableProvider::try_new_from_table(table)
                .await
                .map_err(|source| Error::Table {
                    table: name.clone(),
                    source: Box::new(source),
                })?;
            schema.register_table(name, Arc::new(provider))?;
        }
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema(tenant.as_str(), schema)?;
        ctx.register_catalog(CATALOG_NAME, catalog);
        Ok(ctx)
    }

    /// Runs one read-only statement for `tenant` and collects the result.
    pub async fn sql(&self, tenant: &TenantId, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let ctx = self.session(tenant).await?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx.sql_with_options(sql, options).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }
}

/// Renders batches in `format`.
pub fn render(schema: &SchemaRef, batches: &[RecordBatch], format: OutputFormat) -> Result<String> {
    match format {
        OutputFormat::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let empty = RecordBatch::new_empty(schema.clone());
                Ok(arrow::util::pretty::pretty_format_batches(&[empty])?.to_string())
            } else {
                Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
            }
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema.clone()))?;
                }
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}
