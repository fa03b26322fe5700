//! Iceberg tables: the layout of a tenant's tables (`events`, `events_dlq`), creating their
//! first metadata, and loading them. Changes to tables go through the one commit loop
//! (`commit.rs`): appends (`append.rs`), rewrites (`rewrite.rs`), expiry (`maintenance.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use iceberg::spec::{
    FormatVersion, NestedField, PrimitiveType, Schema, TableMetadata, TableMetadataBuilder,
    Transform, Type, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, NamespaceIdent, TableCreation, TableIdent};
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

pub use crate::append::{CommitOutcome, KafkaCommit};
pub use crate::positions::{
    KAFKA_PREFIX, KAFKA_START_PREFIX, KafkaBatch, KafkaRange, POSITION_PREFIX, SourcePosition,
    kafka_key, kafka_positions, kafka_start_property, position_in,
};
use crate::tenant::{INCARNATION_PROPERTY, TenantId, TenantKey};
use crate::{Catalog, Error, Result, storage};

/// The append-only event log of a tenant.
pub const EVENTS_TABLE: &str = "events";

/// Where a tenant's poison messages (Kafka records that are not valid events) are kept.
pub const DLQ_TABLE: &str = "events_dlq";

/// The schema of `<tenant>.events`. Field ids are fixed: readers and writers rely on them.
pub fn events_schema() -> Result<Schema> {
    let string = || Type::Primitive(PrimitiveType::String);
    let tstz = || Type::Primitive(PrimitiveType::Timestamptz);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "event_id", string()).into(),
            NestedField::required(2, "tenant_id", string()).into(),
            NestedField::required(3, "type", string()).into(),
            NestedField::required(4, "version", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::required(5, "ts", tstz()).into(),
            NestedField::required(6, "received_at", tstz()).into(),
            NestedField::optional(7, "user_id", string()).into(),
            NestedField::required(8, "payload", string()).into(),
        ])
        .build()
        .map_err(Error::ice("building the events schema"))
}

/// Whether every data file of the table can be read by column name: a name never stood for
/// another field id in any of its schemas (columns were only added, never renamed, nor dropped
/// and added again under the same name). Then a file written with any of its schemas reads
/// right by name against the current one, a column it lacks reading as null; Floe's readers
/// rely on it (the query scan, compaction), and fall back or refuse otherwise.
pub fn reads_by_name(metadata: &iceberg::spec::TableMetadata) -> bool {
    let mut ids: HashMap<&str, i32> = HashMap::new();
    let mut names: HashMap<i32, &str> = HashMap::new();
    metadata.schemas_iter().all(|schema| {
        schema.as_struct().fields().iter().all(|f| {
            let nested = matches!(
                *f.field_type,
                Type::Struct(_) | Type::List(_) | Type::Map(_)
            );
            // One id per name (not dropped and added again) and one name per id (not renamed).
            !nested
                && *ids.entry(f.name.as_str()).or_insert(f.id) == f.id
                && *names.entry(f.id).or_insert(f.name.as_str()) == f.name.as_str()
        })
    })
}

/// The schema of `<tenant>.events_dlq`: records that could not become events, with why and
/// where they came from. `payload` holds the record's value as text (invalid UTF-8 replaced).
pub fn dlq_schema() -> Result<Schema> {
    let string = || Type::Primitive(PrimitiveType::String);
    let tstz = || Type::Primitive(PrimitiveType::Timestamptz);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "topic", string()).into(),
            NestedField::required(2, "partition", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::required(3, "offset", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::required(4, "reason", string()).into(),
            NestedField::required(5, "detail", string()).into(),
            NestedField::required(6, "dead_lettered_at", tstz()).into(),
            NestedField::optional(7, "key", string()).into(),
            NestedField::required(8, "payload", string()).into(),
        ])
        .build()
        .map_err(Error::ice("building the dead-letter schema"))
}

/// Columns of `events` and `events_dlq` whose values are nearly all distinct within one ingest
/// batch: a Parquet dictionary of them saves nothing there and costs a hash of every value until
/// its page is full (a third of the time spent encoding an ingest file).
const DISTINCT_COLUMNS: [&str; 2] = ["event_id", "payload"];

/// The time of an event: a rewrite sorts by `(type, ts)`, so each value is a little above the
/// one before it, which Parquet's delta encoding keeps in a few bits (against 8 bytes per value
/// of plain pages, a dictionary of nearly distinct values outgrowing its page first). Only where
/// it is a timestamp: a projection may name a column of any type `ts`, and Parquet's writer
/// panics on a delta encoding of strings or floating point numbers.
const SORTED_TIME: &str = "ts";

/// Whether `schema`'s `ts` is a timestamp (or another 64-bit integer in Parquet).
fn sorted_time(schema: &Schema) -> bool {
    schema.field_by_name(SORTED_TIME).is_some_and(|f| {
        matches!(
            *f.field_type,
            Type::Primitive(
                PrimitiveType::Timestamp
                    | PrimitiveType::Timestamptz
                    | PrimitiveType::TimestampNs
                    | PrimitiveType::TimestamptzNs
                    | PrimitiveType::Long
            )
        )
    })
}

/// Who writes a data file of `events` or `events_dlq`, which decides how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileWriter {
    /// Ingest: small files written while requests wait; no dictionary for `event_id` and
    /// `payload` (`DISTINCT_COLUMNS`).
    Ingest,
    /// Compaction and erasure: large files read many times; every column keeps Parquet's
    /// dictionary (it falls back to plain pages once the dictionary outgrows its page), which
    /// pays when payloads repeat: without it the compacted files of `bench/compaction.py` were
    /// 19 % larger, and their rewrite took 1.22× DuckDB's time against 1.12× (BENCHMARKS.md).
    /// But `ts`, sorted within each type, is delta-encoded (`SORTED_TIME`).
    Rewrite,
}

/// The Parquet writer properties of a data file of `schema` (`events`, `events_dlq`, or any
/// table a rewrite takes on; one place for every writer of them): `compression`, and
/// dictionaries and encodings as `writer` needs them.
pub fn data_file_properties(
    compression: Compression,
    writer: FileWriter,
    schema: &Schema,
) -> WriterProperties {
    let props = WriterProperties::builder().set_compression(compression);
    match writer {
        FileWriter::Ingest => DISTINCT_COLUMNS.iter().fold(props, |props, column| {
            props.set_column_dictionary_enabled(ColumnPath::from(*column), false)
        }),
        FileWriter::Rewrite if sorted_time(schema) => props
            .set_column_dictionary_enabled(ColumnPath::from(SORTED_TIME), false)
            .set_column_encoding(ColumnPath::from(SORTED_TIME), Encoding::DELTA_BINARY_PACKED),
        FileWriter::Rewrite => props,
    }
    .build()
}

/// The name of the day partition field of `events` and `events_dlq`.
pub const DAY_PARTITION: &str = "ts_day";

/// Partitioned by `day(<field day_of>)` (a timestamp), named [`DAY_PARTITION`].
pub(crate) fn day_spec(day_of: i32) -> Result<UnboundPartitionSpec> {
    Ok(UnboundPartitionSpec::builder()
        .add_partition_field(day_of, DAY_PARTITION, Transform::Day)
        .map_err(Error::ice("partition spec"))?
        .build())
}

/// Cache of the last metadata seen per table, keyed by its location, so a commit does not
/// re-read a metadata file it wrote itself.
pub(crate) type TableCache = Arc<Mutex<HashMap<(String, String), (String, Arc<TableMetadata>)>>>;

impl Catalog {
    /// Writes the first metadata file of a tenant's events table; returns its location.
    pub(crate) async fn create_events_metadata(
        &self,
        tenant: &TenantKey,
        properties: &[(String, String)],
    ) -> Result<String> {
        self.create_table_metadata(
            tenant,
            EVENTS_TABLE,
            events_schema()?,
            day_spec(5)?,
            "event-log",
            properties,
        )
        .await
    }

    /// Writes the first metadata file of a table partitioned by `spec`, owned by the tenant
    /// incarnation `tenant` (a table property).
    pub(crate) async fn create_table_metadata(
        &self,
        tenant: &TenantKey,
        name: &str,
        schema: Schema,
        spec: UnboundPartitionSpec,
        kind: &str,
        properties: &[(String, String)],
    ) -> Result<String> {
        let location = format!("{}/{}/{}", self.warehouse, tenant.id(), name);
        let creation = TableCreation::builder()
            .name(name.to_string())
            .location(location.clone())
            .schema(schema)
            .partition_spec(spec)
            .properties(
                [
                    ("write.format.default".to_string(), "parquet".to_string()),
                    (
                        "write.parquet.compression-codec".to_string(),
                        "zstd".to_string(),
                    ),
                    ("floe.table.kind".to_string(), kind.to_string()),
                    (
                        INCARNATION_PROPERTY.to_string(),
                        tenant.incarnation().to_string(),
                    ),
                    // Keep the last 100 metadata files and delete older ones after each commit,
                    // so a table's metadata does not grow without bound (Iceberg's own knobs).
                    (
                        "write.metadata.delete-after-commit.enabled".to_string(),
                        "true".to_string(),
                    ),
                    (
                        "write.metadata.previous-versions-max".to_string(),
                        "100".to_string(),
                    ),
                ]
                .into_iter()
                .chain(properties.iter().cloned()),
            )
            .format_version(FormatVersion::V2)
            .build();
        let metadata = TableMetadataBuilder::from_table_creation(creation)
            .map_err(Error::ice("table metadata"))?
            .build()
            .map_err(Error::ice("table metadata"))?
            .metadata;
        let metadata_location = MetadataLocation::new_with_metadata(&location, &metadata);
        let metadata_location = metadata_location.to_string();
        self.write_metadata(&metadata, &metadata_location).await?;
        Ok(metadata_location)
    }

    /// Creates the tenant's dead-letter table unless it exists (tenants created before it
    /// existed get it on their first poison message).
    pub async fn ensure_dlq_table(&self, tenant: &TenantId) -> Result<()> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            if c.metadata_location(&tenant, DLQ_TABLE).await.is_ok() {
                return Ok(());
            }
            let Some(key) = c.tenant_key(&tenant).await? else {
                return Err(Error::NotFound {
                    what: format!("tenant {tenant}"),
                });
            };
            let location = c
                .create_table_metadata(
                    &key,
                    DLQ_TABLE,
                    dlq_schema()?,
                    day_spec(6)?,
                    "dead-letter",
                    &[],
                )
                .await?;
            c.register_table(&tenant, DLQ_TABLE, &location).await?;
            Ok(())
        })
        .await
    }

    /// Points the catalog's new table `name` at its first metadata file `location`, unless a
    /// table of that name exists (then the file is deleted: nothing references it). `false`:
    /// it existed.
    pub(crate) async fn register_table(
        &self,
        tenant: &TenantId,
        name: &str,
        location: &str,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location, iceberg_type) \
             VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING",
        )
        .bind(&self.name)
        .bind(tenant.as_str())
        .bind(name)
        .bind(location)
        .execute(&self.db)
        .await
        .map_err(Error::db(format!("create table {tenant}.{name}")))?;
        if inserted.rows_affected() == 0 {
            // Another worker created it first.
            let _ = self.file_io.delete(location).await;
            return Ok(false);
        }
        Ok(true)
    }

    /// Writes a metadata file and syncs it to storage before returning.
    pub(crate) async fn write_metadata(
        &self,
        metadata: &TableMetadata,
        location: &str,
    ) -> Result<()> {
        let json = serde_json::to_vec(metadata)
            .map_err(|e| Error::internal(format!("serialising table metadata: {e}")))?;
        let out = self
            .file_io
            .new_output(location)
            .map_err(Error::ice("metadata output"))?;
        let mut writer = out.writer().await.map_err(Error::ice("metadata writer"))?;
        writer
            .write(Bytes::from(json))
            .await
            .map_err(Error::ice("writing metadata"))?;
        writer
            .close()
            .await
            .map_err(Error::ice("closing metadata"))?;
        // On a local warehouse, the metadata file (and the manifests and list written before
        // it, in the same folder) are durable only once their folders are.
        self.sync_dirs(vec![location.to_string()]).await
    }

    /// Syncs the folders holding `locations` on a local warehouse (nothing on S3).
    pub(crate) async fn sync_dirs(&self, locations: Vec<String>) -> Result<()> {
        if !self.warehouse.starts_with("file://") {
            return Ok(());
        }
        let root = self.warehouse.clone();
        tokio::task::spawn_blocking(move || {
            storage::sync_dirs_of(&root, locations.iter().map(String::as_str))
        })
        .await
        .map_err(|e| Error::internal(format!("syncing folders: {e}")))?
    }

    /// Names of the tables in a tenant's namespace.
    pub async fn list_tables(&self, tenant: &TenantId) -> Result<Vec<String>> {
        let tenant = tenant.to_string();
        self.on_io(move |c| async move {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name FROM iceberg_tables WHERE catalog_name = $1 \
                 AND table_namespace = $2 ORDER BY table_name",
            )
            .bind(&c.name)
            .bind(&tenant)
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("list tables"))?;
            Ok(rows.into_iter().map(|(n,)| n).collect())
        })
        .await
    }

    /// Each table of a tenant's namespace that has a metadata file, with that file's location:
    /// `(name, location)`, by name. One query, so that a reader of all of a tenant's tables (a
    /// query's session) asks the database once, not once per table ([`Catalog::load_table_at`]).
    pub async fn table_locations(&self, tenant: &TenantId) -> Result<Vec<(String, String)>> {
        self.located(
            "list the tenant's tables",
            "SELECT table_name, metadata_location FROM iceberg_tables WHERE catalog_name = $1 \
             AND table_namespace = $2 ORDER BY table_name",
            tenant.to_string(),
        )
        .await
    }

    /// Every tenant's metadata file of the table `table` (a pointer that moves with each
    /// commit): `(tenant, location)`, by tenant. One query, for pollers of many tenants.
    pub async fn metadata_locations(&self, table: &str) -> Result<Vec<(String, String)>> {
        self.located(
            "list every tenant's table",
            "SELECT table_namespace, metadata_location FROM iceberg_tables \
             WHERE catalog_name = $1 AND table_name = $2 ORDER BY table_namespace",
            table.to_string(),
        )
        .await
    }

    /// The rows of `sql` (`$1` this catalog, `$2` `value`) as `(name, metadata location)`,
    /// those without a metadata file left out; `context` names the question in its errors.
    async fn located(
        &self,
        context: &'static str,
        sql: &'static str,
        value: String,
    ) -> Result<Vec<(String, String)>> {
        self.on_io(move |c| async move {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(sql)
                .bind(&c.name)
                .bind(&value)
                .fetch_all(&c.db)
                .await
                .map_err(Error::db(context))?;
            Ok(rows
                .into_iter()
                .filter_map(|(name, l)| Some((name, l?)))
                .collect())
        })
        .await
    }

    async fn metadata_location(&self, tenant: &TenantId, table: &str) -> Result<String> {
        let (tenant, table) = (tenant.to_string(), table.to_string());
        self.on_io(move |c| async move {
            let row: Option<(Option<String>,)> = sqlx::query_as(
                "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = $1 \
                 AND table_namespace = $2 AND table_name = $3",
            )
            .bind(&c.name)
            .bind(&tenant)
            .bind(&table)
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("load table"))?;
            row.and_then(|(l,)| l).ok_or_else(|| Error::NotFound {
                what: format!("table {tenant}.{table}"),
            })
        })
        .await
    }

    /// Loads the current state of a table.
    pub async fn load_table(&self, tenant: &TenantId, table: &str) -> Result<Table> {
        let location = self.metadata_location(tenant, table).await?;
        self.load_table_at(tenant, table, location).await
    }

    /// Loads a table as its metadata file `location` has it (a location
    /// [`Catalog::table_locations`] gave; read once per location, then kept).
    pub async fn load_table_at(
        &self,
        tenant: &TenantId,
        table: &str,
        location: String,
    ) -> Result<Table> {
        let key = (tenant.to_string(), table.to_string());
        let cached = {
            let cache = self
                .tables
                .lock()
                .map_err(|_| Error::internal("table cache poisoned"))?;
            cache
                .get(&key)
                .filter(|(l, _)| *l == location)
                .map(|(_, m)| m.clone())
        };
        let metadata = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(
                    TableMetadata::read_from(&self.file_io, &location)
                        .await
                        .map_err(Error::ice(format!("reading metadata of {tenant}.{table}")))?,
                );
                self.cache_metadata(&key, &location, &m);
                m
            }
        };
        self.table_from(tenant, table, &location, metadata)
    }

    pub(crate) fn cache_metadata(
        &self,
        key: &(String, String),
        location: &str,
        m: &Arc<TableMetadata>,
    ) {
        if let Ok(mut cache) = self.tables.lock() {
            cache.insert(key.clone(), (location.to_string(), m.clone()));
        }
    }

    /// Drops a table's cached metadata (it was dropped).
    pub(crate) fn forget_table(&self, tenant: &TenantId, table: &str) {
        if let Ok(mut cache) = self.tables.lock() {
            cache.remove(&(tenant.to_string(), table.to_string()));
        }
    }

    /// Drops the cached metadata of every table of a tenant (it was deleted).
    pub(crate) fn forget_tenant_tables(&self, tenant: &TenantId) {
        if let Ok(mut cache) = self.tables.lock() {
            cache.retain(|(t, _), _| t != tenant.as_str());
        }
    }

    fn table_from(
        &self,
        tenant: &TenantId,
        table: &str,
        location: &str,
        metadata: Arc<TableMetadata>,
    ) -> Result<Table> {
        // Iceberg names every file by its absolute location, so a copy of a data directory
        // still names the original's files: maintaining the copy's tables would delete the
        // original's files, and writing to them would add files the original never lists.
        let warehouse = format!("{}/", storage::as_s3(&self.warehouse));
        for place in [location, metadata.location()] {
            if !storage::as_s3(place).starts_with(&warehouse) {
                return Err(Error::Config {
                    message: format!(
                        "table {tenant}.{table} lives at {place}, outside this catalog's \
                         warehouse {}: refusing to read or change it (a copied or moved data \
                         directory keeps its tables' absolute locations; point `warehouse` and \
                         the catalog at the same place)",
                        self.warehouse
                    ),
                });
            }
        }
        // Reads of this table run on the runtime of whoever loaded it.
        let runtime = iceberg::Runtime::try_current().map_err(Error::ice("no tokio runtime"))?;
        Table::builder()
            .runtime(runtime)
            .file_io(self.file_io.clone())
            .metadata_location(location)
            .metadata(metadata)
            .identifier(TableIdent::new(
                NamespaceIdent::new(tenant.to_string()),
                table.to_string(),
            ))
            .build()
            .map_err(Error::ice("building table handle"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;

    fn rewrite_of(schema: &Schema) -> WriterProperties {
        data_file_properties(Compression::SNAPPY, FileWriter::Rewrite, schema)
    }

    #[test]
    fn only_a_timestamp_ts_is_delta_encoded() {
        let ts = ColumnPath::from(SORTED_TIME);
        let events = rewrite_of(&events_schema().unwrap());
        assert_eq!(events.encoding(&ts), Some(Encoding::DELTA_BINARY_PACKED));
        assert!(!events.dictionary_enabled(&ts));

        // A projection's own `ts` of text: Parquet's writer panics on delta-encoded strings.
        let text = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, SORTED_TIME, Type::Primitive(PrimitiveType::String))
                    .into(),
            ])
            .build()
            .unwrap();
        let props = rewrite_of(&text);
        assert_eq!(props.encoding(&ts), None);
        let batch = RecordBatch::try_from_iter([(
            SORTED_TIME,
            Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
        )])
        .unwrap();
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
}
