//! Floe's query engine: DataFusion over one tenant's Iceberg tables.
//!
//! Every session is built for exactly one tenant: its only catalog is `floe`, whose only schema
//! is the tenant's namespace. Other tenants' tables are not registered, so they cannot be named,
//! listed or guessed. Statements that change anything (DDL, DML, `SET`, `COPY`) are refused.

pub mod cpu;
pub mod dashboard;
pub mod dialect;
mod dictionary_compare;
pub mod dictionary_filters;
mod dictionary_reads;
pub mod event_views;
pub mod footers;
pub mod functions;
pub mod groups;
pub mod memory;
mod pass_through;
pub mod projection;
pub mod scan;
pub mod set_ops;
pub mod spill;
pub mod trino;
pub mod type_names;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use floe_catalog::config::QueryConfig;
use floe_catalog::{CATALOG_NAME, Catalog, ErrorKind, TenantId};
use scan::FloeTable;

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

    /// The statement changes something, or reads what SQL users may not (refused by its kind).
    #[error("{0}")]
    Denied(String),

    /// Valid SQL that Floe does not run (e.g. table functions).
    #[error("{0}")]
    NotSupported(String),

    /// SQL the parser cannot take, or nested too deeply.
    #[error("{0}")]
    Syntax(String),

    /// A well-formed statement with a bad value (unknown snapshot, bad time zone).
    #[error("{0}")]
    InvalidArgument(String),

    /// A table the statement names does not exist for this tenant.
    #[error("Table '{0}' does not exist")]
    TableNotFound(String),
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
            Error::Denied(_) => ErrorKind::PermissionDenied,
            Error::NotSupported(_) | Error::Syntax(_) | Error::InvalidArgument(_) => {
                ErrorKind::InvalidInput
            }
            Error::TableNotFound(_) => ErrorKind::NotFound,
        }
    }

    /// As a catalog error of the same kind (for the HTTP edge's one table of statuses).
    pub fn into_catalog(self) -> floe_catalog::Error {
        let kind = self.kind();
        let message = self.to_string();
        match self {
            Error::Catalog(e) => e,
            _ => match kind {
                ErrorKind::InvalidInput => floe_catalog::Error::invalid(message),
                ErrorKind::PermissionDenied => floe_catalog::Error::Forbidden { message },
                ErrorKind::NotFound => floe_catalog::Error::NotFound { what: message },
                ErrorKind::Unavailable | ErrorKind::CommitConflict => {
                    floe_catalog::Error::Unavailable {
                        what: "the query".into(),
                        why: message,
                    }
                }
                _ => floe_catalog::Error::internal(message),
            },
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

/// Which of a tenant's tables a session registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every table, the audit log too (role `admin`; `floe sql` on the server's machine).
    Everything,
    /// Every table but the audit log (role `analyst`; the dashboard's and alert rules'
    /// queries).
    AllTables,
    /// Projection tables only (role `viewer`).
    ProjectionsOnly,
}

/// Builds tenant-scoped DataFusion sessions.
#[derive(Clone)]
pub struct Engine {
    catalog: Catalog,
    config: QueryConfig,
    /// Where sessions read data files, and the store to register for it (S3).
    store_url: ObjectStoreUrl,
    /// Parquet footers and page indexes, shared by every session: data files never change.
    footers: Arc<dyn FileMetadataCache>,
    /// Iceberg manifests, shared by every session and the catalog's maintenance.
    manifests: Arc<floe_catalog::manifests::ManifestCache>,
    /// The memory all queries share (`query.memory_total_bytes`).
    memory: memory::Budget,
    /// The cores all queries share (`query.cpu_slots`).
    cpu: cpu::CpuShare,
    /// The disk all queries may spill to (`query.spill_total_bytes`; `spill`).
    spill: Arc<datafusion::execution::disk_manager::DiskManager>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("catalog", &self.catalog)
            .field("config", &self.config)
            .finish()
    }
}

impl Engine {
    pub fn new(catalog: Catalog, config: QueryConfig) -> Self {
        let store_url = ObjectStoreUrl::parse(&catalog.data_store().url)
            .expect("the warehouse's store URL is a valid URL");
        let footers = Arc::new(footers::FooterCache::new(
            config.footer_cache_bytes as usize,
        ));
        let manifests = catalog.manifests().clone();
        let memory = memory::Budget::new(
            config.memory_total_bytes,
            std::time::Duration::from_millis(config.memory_wait_ms),
        );
        let cpu = cpu::CpuShare::with_behind(
            config.cpu_slots,
            std::time::Duration::from_millis(config.cpu_credit_ms),
            std::time::Duration::from_millis(config.cpu_slice_ms),
            config.cpu_behind_nice,
            std::time::Duration::from_millis(config.cpu_behind_window_ms),
        );
        let spill = spill::manager(None, config.spill_total_bytes)
            .expect("the system's temporary directory needs no set-up");
        Engine {
            catalog,
            config,
            store_url,
            footers,
            manifests,
            memory,
            cpu,
            spill,
        }
    }

    /// The engine with its queries spilling into this process' directory under `root`
    /// (`<data_dir>/spill`; `spill::process_dir`).
    pub fn spilling_into(mut self, root: &std::path::Path) -> floe_catalog::Result<Self> {
        self.spill = spill::manager(Some(root), self.config.spill_total_bytes)?;
        Ok(self)
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The memory all queries share.
    pub fn memory(&self) -> &memory::Budget {
        &self.memory
    }

    /// The cores all queries share.
    pub fn cpu(&self) -> &cpu::CpuShare {
        &self.cpu
    }

    /// A session that sees exactly `tenant`'s tables allowed by `scope`, as of now, in UTC.
    pub async fn session(&self, tenant: &TenantId, scope: Scope) -> Result<SessionContext> {
        self.session_scoped(tenant, scope, "UTC").await
    }

    /// A session that sees `tenant`'s tables allowed by `scope`, with the per-query memory pool,
    /// Trino's functions, and `time_zone` (an IANA name or `+hh:mm`) as its zone.
    pub async fn session_scoped(
        &self,
        tenant: &TenantId,
        scope: Scope,
        time_zone: &str,
    ) -> Result<SessionContext> {
        if arrow::array::timezone::Tz::from_str(time_zone).is_err() {
            return Err(Error::InvalidArgument(format!(
                "Time zone not supported: {time_zone}"
            )));
        }
        // The information_schema is Floe's own (below): Trino's shape and type names, and only
        // this tenant's tables.
        let mut cfg = SessionConfig::new()
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, tenant.as_str());
        cfg.options_mut().execution.time_zone = Some(time_zone.to_string());
        if self.config.target_partitions > 0 {
            cfg = cfg.with_target_partitions(self.config.target_partitions);
        }
        let caches = CacheManagerConfig::default()
            .with_file_metadata_cache(Some(self.footers.clone()))
            .with_metadata_cache_limit(self.config.footer_cache_bytes as usize);
        let pool = self
            .memory
            .query_pool(tenant.as_str(), self.config.memory_limit_bytes);
        let mut runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_cache_manager(caches)
            .build()?;
        runtime.disk_manager = self.spill.clone();
        let runtime = Arc::new(runtime);
        match &self.catalog.data_store().store {
            Some(store) => {
                runtime.register_object_store(self.store_url.as_ref(), store.clone());
            }
            // A local warehouse is read on the query's own threads (`scan::local_files`).
            None => {
                runtime.register_object_store(
                    self.store_url.as_ref(),
                    scan::local_files::QueryFiles::new(),
                );
            }
        }
        // DataFusion's planning, set operations' probe sides made distinct (`set_ops`), then
        // grouping and filtering dictionary columns where it can (`groups`,
        // `dictionary_filters`).
        let state = SessionStateBuilder::new()
            .with_config(cfg)
            .with_runtime_env(runtime)
            .with_default_features();
        // The values of projections counted first, so that the counts travel with projections
        // later rules push into scans (`memory::guard`).
        let state = memory::with_size_checks(state, &pool)
            .with_optimizer_rule(Arc::new(set_ops::DistinctProbe))
            .with_physical_optimizer_rule(Arc::new(groups::DictionaryGroups))
            .with_physical_optimizer_rule(Arc::new(
                dictionary_filters::DictionaryFilters::for_pool(pool.clone()),
            ))
            .build();
        let ctx = SessionContext::new_with_state(state);
        functions::register(&ctx);
        memory::bound_functions(&ctx, &pool, self.config.max_sql_bytes);
        let schema = Arc::new(MemorySchemaProvider::new());
        // Two questions to the database, asked together: the tables' metadata files (each read
        // once per location, then kept) and the event schemas the views are made from. Asked
        // one table at a time, a session waited on the catalog's runtime once per table, a
        // queue another tenant's ingest shares.
        let views = scope != Scope::ProjectionsOnly;
        let (located, schemas) = tokio::join!(self.catalog.table_locations(tenant), async {
            if views {
                Some(self.catalog.schemas(tenant, None).await)
            } else {
                None
            }
        });
        for (name, location) in located? {
            let table = match self.catalog.load_table_at(tenant, &name, location).await {
                Ok(table) => table,
                // Dropped (a projection's metadata goes with it) or committed to since it was
                // listed: asked again, a dropped table is left out, as if listed a moment later.
                Err(first) => match self.catalog.load_table(tenant, &name).await {
                    Ok(table) => table,
                    Err(floe_catalog::Error::NotFound { .. }) => continue,
                    Err(_) => return Err(first.into()),
                },
            };
            let kind = table
                .metadata()
                .properties()
                .get("floe.table.kind")
                .cloned();
            let visible = match scope {
                Scope::Everything => true,
                Scope::AllTables => kind.as_deref() != Some("audit"),
                Scope::ProjectionsOnly => kind.as_deref() == Some("projection"),
            };
            if !visible {
                continue;
            }
            let provider = FloeTable::try_new(
                table,
                None,
                self.store_url.clone(),
                self.catalog.data_store().clone(),
                self.manifests.clone(),
            )
            .await
            .map_err(|source| Error::Table {
                table: name.clone(),
                source: Box::new(source),
            })?;
            schema.register_table(name, Arc::new(provider))?;
        }
        if let Some(schemas) = schemas
            && let Some(events) = schema.table(floe_catalog::table::EVENTS_TABLE).await?
        {
            // The views are an addition: a registry that cannot be read leaves them out, not
            // the tables.
            match schemas {
                Ok(schemas) if !schemas.is_empty() => {
                    event_views::register(&ctx, &schema, events, schemas)?;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "event schemas unreadable; no per-type views");
                }
            }
        }
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema(
            INFORMATION_SCHEMA,
            Arc::new(information_schema(tenant, schema.as_ref()).await?),
        )?;
        catalog.register_schema(tenant.as_str(), schema)?;
        ctx.register_catalog(CATALOG_NAME, catalog);
        Ok(ctx)
    }

    /// Plans one read-only statement, in Trino's dialect, in a session from `session_scoped`.
    ///
    /// The statement is classified before planning (see `dialect`): anything but a query is
    /// refused by its kind. Tables read at a snapshot (`FOR VERSION AS OF`, `FOR TIMESTAMP AS
    /// OF`) are registered first, and only if the session already sees the table.
    pub async fn plan(
        &self,
        ctx: &SessionContext,
        tenant: &TenantId,
        sql: &str,
    ) -> Result<datafusion::dataframe::DataFrame> {
        let translated = dialect::translate(
            sql,
            self.config.max_sql_depth,
            self.config.max_sql_operators,
        )?;
        let schema = ctx
            .catalog(CATALOG_NAME)
            .and_then(|c| c.schema(tenant.as_str()))
            .ok_or_else(|| Error::TableNotFound(tenant.to_string()))?;
        for snap in &translated.snapshots {
            let other_schema = snap.schema.as_deref().is_some_and(|s| s != tenant.as_str());
            if other_schema || !schema.table_exist(&snap.table) {
                return Err(Error::TableNotFound(snap.table.clone()));
            }
            if schema.table_exist(&snap.name) {
                continue;
            }
            let table = self.catalog.load_table(tenant, &snap.table).await?;
            let snapshot_id = snapshot_at(&table, snap.at)?;
            let provider = FloeTable::try_new(
                table,
                Some(snapshot_id),
                self.store_url.clone(),
                self.catalog.data_store().clone(),
                self.manifests.clone(),
            )
            .await
            .map_err(|source| Error::Table {
                table: snap.table.clone(),
                source: Box::new(source),
            })?;
            schema.register_table(snap.name.clone(), Arc::new(provider))?;
        }
        let state = ctx.state();
        for reference in state.resolve_table_references(&translated.statement)? {
            let resolved = reference.clone().resolve(CATALOG_NAME, tenant.as_str());
            let known = resolved.catalog.as_ref() == CATALOG_NAME
                && ctx
                    .catalog(CATALOG_NAME)
                    .and_then(|c| c.schema(&resolved.schema))
                    .is_some_and(|s| s.table_exist(&resolved.table));
            if !known {
                // The same answer whether the table is missing or belongs to another tenant.
                return Err(Error::TableNotFound(reference.to_string()));
            }
        }
        let plan = state.statement_to_plan(translated.statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        Ok(ctx.execute_logical_plan(plan).await?)
    }

    /// Runs one read-only statement for `tenant` on a thread of its own (as a query of the
    /// Trino protocol runs: its work never holds a thread that serves HTTP), within the
    /// tenant's CPU share, and collects the result (within `query.memory_limit_bytes` and
    /// `query.timeout_secs`: past it the work is dropped and the call fails).
    pub async fn sql_apart(
        &self,
        tenant: &TenantId,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let engine = self.clone();
        let (tenant, sql) = (tenant.clone(), sql.to_string());
        let cpu = self.cpu().tenant(tenant.as_str());
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| floe_catalog::Error::internal(format!("a query runtime: {e}")))?;
            let limit = Duration::from_secs(engine.config().timeout_secs);
            let work = cpu.run(async move { engine.sql(&tenant, Scope::AllTables, &sql).await });
            runtime
                .block_on(async { tokio::time::timeout(limit, work).await })
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "Query exceeded the maximum execution time of {}s",
                        limit.as_secs()
                    ))
                })?
        })
        .await
        .map_err(|e| floe_catalog::Error::internal(format!("a query thread stopped: {e}")))?
    }

    /// Runs one read-only statement for `tenant` over the tables `scope` allows and collects
    /// the result.
    pub async fn sql(
        &self,
        tenant: &TenantId,
        scope: Scope,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let ctx = self.session(tenant, scope).await?;
        let df = self.plan(&ctx, tenant, sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = memory::claims::collect(df).await?;
        Ok((schema, batches))
    }
}

/// The snapshot a time-travel clause names: the id itself, or the one current at the instant.
fn snapshot_at(table: &iceberg::table::Table, at: dialect::AsOf) -> Result<i64> {
    let meta = table.metadata();
    match at {
        dialect::AsOf::Version(id) => {
            meta.snapshot_by_id(id)
                .map(|s| s.snapshot_id())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("Iceberg snapshot ID does not exist: {id}"))
                })
        }
        dialect::AsOf::Timestamp(ms) => {
            // The snapshot log records which snapshot was current from when.
            meta.history()
                .iter()
                .filter(|entry| entry.timestamp_ms() <= ms)
                .filter(|entry| meta.snapshot_by_id(entry.snapshot_id).is_some())
                .max_by_key(|entry| entry.timestamp_ms())
                .map(|entry| entry.snapshot_id)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "No version history table {} at or before {}",
                        table.identifier(),
                        chrono::DateTime::from_timestamp_millis(ms)
                            .map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
                    ))
                })
        }
    }
}

const INFORMATION_SCHEMA: &str = "information_schema";

/// `information_schema.{schemata, tables, columns}` for one tenant, as Trino shows them (column
/// types by their Trino names), so SQL tools can reflect the tenant's tables.
async fn information_schema(
    tenant: &TenantId,
    tables: &MemorySchemaProvider,
) -> Result<MemorySchemaProvider> {
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;

    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let strings = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let cat = || Some(CATALOG_NAME.to_string());
    let info_tables = ["columns", "schemata", "tables"];

    let mut names = tables.table_names();
    names.sort();
    let (mut t_schema, mut t_name, mut t_type) = (Vec::new(), Vec::new(), Vec::new());
    let mut cols: [Vec<Option<String>>; 6] = Default::default();
    let mut positions = Vec::new();
    for name in &names {
        t_schema.push(Some(tenant.to_string()));
        t_name.push(Some(name.clone()));
        let table = tables.table(name).await?;
        let view = table
            .as_ref()
            .is_some_and(|t| t.table_type() == datafusion::datasource::TableType::View);
        t_type.push(Some(if view { "VIEW" } else { "BASE TABLE" }.to_string()));
        let Some(table) = table else {
            continue;
        };
        for (i, f) in table.schema().fields().iter().enumerate() {
            cols[0].push(Some(tenant.to_string()));
            cols[1].push(Some(name.clone()));
            cols[2].push(Some(f.name().clone()));
            cols[3].push(Some(if f.is_nullable() { "YES" } else { "NO" }.to_string()));
            cols[4].push(Some(type_names::trino_type(f.data_type()).0));
            cols[5].push(None);
            positions.push(i as i64 + 1);
        }
    }
    for name in info_tables {
        t_schema.push(Some(INFORMATION_SCHEMA.to_string()));
        t_name.push(Some(name.to_string()));
        t_type.push(Some("BASE TABLE".to_string()));
    }
    let n_tables = t_name.len();
    let tables_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            utf8("table_catalog", false),
            utf8("table_schema", false),
            utf8("table_name", false),
            utf8("table_type", false),
        ])),
        vec![
            strings(vec![cat(); n_tables]),
            strings(t_schema),
            strings(t_name),
            strings(t_type),
        ],
    )?;
    let n_cols = positions.len();
    let [c_schema, c_table, c_name, c_null, c_type, c_comment] = cols;
    let columns_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            utf8("table_catalog", false),
            utf8("table_schema", false),
            utf8("table_name", false),
            utf8("column_name", false),
            Field::new("ordinal_position", DataType::Int64, false),
            utf8("column_default", true),
            utf8("is_nullable", false),
            utf8("data_type", false),
            utf8("comment", true),
            utf8("extra_info", true),
        ])),
        vec![
            strings(vec![cat(); n_cols]),
            strings(c_schema),
            strings(c_table),
            strings(c_name),
            Arc::new(Int64Array::from(positions)),
            strings(vec![None; n_cols]),
            strings(c_null),
            strings(c_type),
            strings(c_comment),
            strings(vec![None; n_cols]),
        ],
    )?;
    let schemata_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            utf8("catalog_name", false),
            utf8("schema_name", false),
        ])),
        vec![
            strings(vec![cat(), cat()]),
            strings(vec![
                Some(tenant.to_string()),
                Some(INFORMATION_SCHEMA.to_string()),
            ]),
        ],
    )?;
    let provider = MemorySchemaProvider::new();
    for (name, batch) in [
        ("tables", tables_batch),
        ("columns", columns_batch),
        ("schemata", schemata_batch),
    ] {
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        provider.register_table(name.to_string(), Arc::new(table))?;
    }
    Ok(provider)
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
