//! Publishing the chains to Iceberg: each chain's records, in order and exactly once, appended
//! to the table `audit` of its namespace (the tenant's, or `_platform`).
//!
//! The table's current snapshot records how far it holds the chain (the positions guard of
//! Kafka appends, on one partition: the next `seq` to publish), checked inside the commit's
//! compare-and-swap: two processes publishing the same records at once commit them once, the
//! loser's files are deleted. `floe_audit_chains.published` only tells which chains have
//! records to publish; the table is the truth.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFile, DataFileFormat, Literal, NestedField, PartitionKey, PrimitiveType, Schema, Struct,
    Type,
};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{PLATFORM_CHAIN, Record};
use crate::positions::{KafkaBatch, KafkaRange, kafka_positions};
use crate::table::{KafkaCommit, day_spec};
use crate::tenant::{TenantId, TenantKey};
use crate::{Catalog, Error, Result};

/// The audit table of a namespace.
pub const AUDIT_TABLE: &str = "audit";

/// The positions guard's names for a chain (one "partition", 0: the next `seq`).
const GROUP: &str = "audit";
const TOPIC: &str = "chain";

/// The incarnation of the platform's namespace (it is never deleted and created again).
pub(crate) const PLATFORM_INCARNATION: &str = "platform";

/// The schema of `audit`. Field ids are fixed.
pub fn audit_schema() -> Result<Schema> {
    let string = || Type::Primitive(PrimitiveType::String);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "seq", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::required(2, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
            NestedField::required(3, "actor", string()).into(),
            NestedField::optional(4, "tenant", string()).into(),
            NestedField::required(5, "action", string()).into(),
            NestedField::required(6, "detail", string()).into(),
            NestedField::required(7, "prev_hash", string()).into(),
            NestedField::required(8, "hash", string()).into(),
        ])
        .build()
        .map_err(Error::ice("building the audit schema"))
}

/// The day (since the epoch) of a time in milliseconds.
fn day_of(at_ms: i64) -> i32 {
    i32::try_from(at_ms.div_euclid(86_400_000)).unwrap_or(i32::MAX)
}

impl Catalog {
    /// Publishes what every chain has not yet published, at most `limit` records per chain
    /// per call. Returns how many records were committed. A chain whose table another process
    /// is appending to at the same moment is left for the next call.
    pub async fn publish_audit(&self, limit: i64) -> Result<u64> {
        self.on_io(move |c| async move {
            let pending: Vec<(String,)> = sqlx::query_as(
                "SELECT chain FROM floe_audit_chains WHERE seq > published ORDER BY chain",
            )
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("audit chains"))?;
            let mut total = 0;
            for (chain,) in pending {
                match c.publish_chain(&chain, limit).await {
                    Ok(n) => total += n,
                    Err(e) => {
                        tracing::warn!(chain, error = %e, "could not publish the audit chain; retried later");
                    }
                }
            }
            Ok(total)
        })
        .await
    }

    /// The namespace of a chain, as it exists now (`None`: the tenant is gone).
    async fn chain_namespace(&self, chain: &str) -> Result<Option<TenantKey>> {
        if chain == PLATFORM_CHAIN {
            return Ok(Some(TenantKey::new(
                TenantId::platform(),
                PLATFORM_INCARNATION,
            )));
        }
        self.tenant_key(&TenantId::parse(chain)?).await
    }

    /// Creates the audit table of a namespace unless it exists.
    async fn ensure_audit_table(&self, key: &TenantKey) -> Result<()> {
        match self.load_table(key.id(), AUDIT_TABLE).await {
            Ok(t)
                if t.metadata()
                    .properties()
                    .get("floe.table.kind")
                    .map(String::as_str)
                    == Some("audit") =>
            {
                return Ok(());
            }
            Ok(_) => {
                return Err(Error::internal(format!(
                    "{}.{AUDIT_TABLE} is not an audit table (made before the name was reserved)",
                    key.id()
                )));
            }
            Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if key.id().as_str() == PLATFORM_CHAIN {
            for (k, v) in [
                ("exists", "true".to_string()),
                ("location", format!("{}/{}", self.warehouse, PLATFORM_CHAIN)),
            ] {
                sqlx::query(
                    "INSERT INTO iceberg_namespace_properties \
                     (catalog_name, namespace, property_key, property_value) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(&self.name)
                .bind(PLATFORM_CHAIN)
                .bind(k)
                .bind(v)
                .execute(&self.db)
                .await
                .map_err(Error::db("platform namespace"))?;
            }
        }
        let location = self
            .create_table_metadata(
                key,
                AUDIT_TABLE,
                audit_schema()?,
                day_spec(2)?,
                "audit",
                &[],
            )
            .await?;
        if key.id().as_str() == PLATFORM_CHAIN {
            self.register_table(key.id(), AUDIT_TABLE, &location)
                .await?;
            return Ok(());
        }
        // Only while this incarnation of the tenant exists: a tenant deleted meanwhile gets no
        // table (nor objects under its prefix) back.
        let inserted = sqlx::query(
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location, iceberg_type) \
             SELECT $1, $2, $3, $4, NULL, 'TABLE' WHERE EXISTS \
             (SELECT 1 FROM floe_tenants WHERE id = $2 AND incarnation = $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.name)
        .bind(key.id().as_str())
        .bind(AUDIT_TABLE)
        .bind(&location)
        .bind(key.incarnation())
        .execute(&self.db)
        .await
        .map_err(Error::db(format!(
            "create table {}.{AUDIT_TABLE}",
            key.id()
        )))?;
        if inserted.rows_affected() == 0 {
            let _ = self.file_io.delete(&location).await;
        }
        Ok(())
    }

    /// The next `seq` the chain's table lacks (1 for an empty table).
    pub(crate) fn published_next(table: &Table) -> Result<i64> {
        Ok(kafka_positions(table.metadata(), GROUP, TOPIC)?
            .get(&0)
            .copied()
            .unwrap_or(1))
    }

    async fn publish_chain(&self, chain: &str, limit: i64) -> Result<u64> {
        let Some(key) = self.chain_namespace(chain).await? else {
            return Ok(0);
        };
        self.ensure_audit_table(&key).await?;
        let table = self.load_table(key.id(), AUDIT_TABLE).await?;
        let next = Self::published_next(&table)?;
        let records = self.audit_records(chain, next, limit).await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            let (head, _, _) = self.audit_head(chain).await?;
            if head >= next {
                return Err(Error::internal(format!(
                    "audit chain {chain}: records {next} to {head} are missing from the catalog \
                     database"
                )));
            }
            self.mark_published(chain, next - 1).await?;
            return Ok(0);
        };
        if records[0].seq != next {
            return Err(Error::internal(format!(
                "audit chain {chain}: record {next} is missing from the catalog database"
            )));
        }
        let files = write_records(&table, &records).await?;
        let paths: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
        let batch = KafkaBatch {
            group: GROUP.into(),
            topic: TOPIC.into(),
            partitions: BTreeMap::from([(
                0,
                KafkaRange {
                    expected: (next > 1).then_some(next),
                    next: last + 1,
                },
            )]),
        };
        let committed = self
            .commit_append_guarded(&key, AUDIT_TABLE, files, &batch)
            .await;
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                // Not committed (the tenant deleted meanwhile, say): nothing references them.
                for p in paths {
                    let _ = self.file_io.delete(&p).await;
                }
                return Err(e);
            }
        };
        match committed {
            KafkaCommit::Committed { .. } => {
                self.mark_published(chain, last).await?;
                Ok(records.len() as u64)
            }
            KafkaCommit::AlreadyCommitted | KafkaCommit::Fenced { .. } => {
                // Another process published them: these files are referenced by nothing.
                for p in paths {
                    let _ = self.file_io.delete(&p).await;
                }
                Ok(0)
            }
        }
    }

    /// The head of a chain: its last `seq`, that record's hash, and the last `seq` marked
    /// published (`0`, [`GENESIS`], `0` for a chain never started).
    pub(crate) async fn audit_head(&self, chain: &str) -> Result<(i64, String, i64)> {
        let head: Option<(i64, String, i64)> =
            sqlx::query_as("SELECT seq, hash, published FROM floe_audit_chains WHERE chain = $1")
                .bind(chain)
                .fetch_optional(&self.db)
                .await
                .map_err(Error::db("audit chains"))?;
        Ok(head.unwrap_or((0, super::GENESIS.to_string(), 0)))
    }

    async fn mark_published(&self, chain: &str, seq: i64) -> Result<()> {
        sqlx::query(
            "UPDATE floe_audit_chains SET published = $2 WHERE chain = $1 AND published < $2",
        )
        .bind(chain)
        .bind(seq)
        .execute(&self.db)
        .await
        .map_err(Error::db("audit chains"))?;
        Ok(())
    }
}

/// Writes records as Parquet files of the audit table, one per day.
async fn write_records(table: &Table, records: &[Record]) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let arrow = Arc::new(schema_to_arrow_schema(&schema).map_err(Error::ice("audit schema"))?);
    let spec = metadata.default_partition_spec().as_ref().clone();
    let mut by_day: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_day.entry(day_of(r.at_ms)).or_default().push(r);
    }
    let level = ZstdLevel::try_new(3).map_err(|e| Error::internal(format!("zstd: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(props, schema.clone()),
        usize::MAX,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata).map_err(Error::ice("location"))?,
        DefaultFileNameGenerator::new(
            uuid::Uuid::now_v7().to_string(),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let builder = DataFileWriterBuilder::new(rolling);
    let mut files = Vec::new();
    for (day, rows) in by_day {
        let mut seq = Int64Builder::new();
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
        let (mut actor, mut tenant, mut action, mut detail, mut prev, mut hash) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for r in rows {
            seq.append_value(r.seq);
            at.append_value(r.at_ms * 1000);
            actor.append_value(&r.actor);
            tenant.append_option(r.tenant.as_deref());
            action.append_value(&r.action);
            detail.append_value(&r.detail);
            prev.append_value(&r.prev_hash);
            hash.append_value(&r.hash);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(seq.finish()),
            Arc::new(at.finish()),
            Arc::new(actor.finish()),
            Arc::new(tenant.finish()),
            Arc::new(action.finish()),
            Arc::new(detail.finish()),
            Arc::new(prev.finish()),
            Arc::new(hash.finish()),
        ];
        let batch = RecordBatch::try_new(arrow.clone(), columns)
            .map_err(|e| Error::internal(format!("audit batch: {e}")))?;
        let key = PartitionKey::new(
            spec.clone(),
            schema.clone(),
            Struct::from_iter([Some(Literal::date(day))]),
        );
        let mut writer = builder
            .build(Some(key))
            .await
            .map_err(Error::ice("audit writer"))?;
        writer
            .write(batch)
            .await
            .map_err(Error::ice("writing the audit log"))?;
        files.extend(
            writer
                .close()
                .await
                .map_err(Error::ice("closing audit file"))?,
        );
    }
    Ok(files)
}
