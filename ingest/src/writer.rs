//! Events to Parquet data files of a table, one file per `day(ts)` partition touched.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::Compression;

use floe_catalog::schema::promote;
use floe_catalog::table::FileWriter;
use floe_catalog::written::Written;

use crate::event::StoredEvent;
use crate::{Error, Result};

const US_PER_DAY: i64 = 86_400_000_000;

/// A record that could not become an event: a row of `events_dlq`. Records refused over HTTP
/// (topic `http`) have partition and offset -1.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) reason: String,
    pub(crate) detail: String,
    pub(crate) key: Option<String>,
    pub(crate) payload: String,
    pub(crate) at_us: i64,
}

/// Target size of one ingest file before it rolls over to the next.
const TARGET_FILE_BYTES: usize = 256 << 20;

/// Writes `events` of `tenant` as Parquet files (in `compression`) of `table`, one per day
/// partition, offering each file's rows to `written` (this process's readers of new files).
pub async fn write_events(
    table: &Table,
    tenant: &str,
    events: &[&StoredEvent],
    compression: Compression,
    written: &Written,
) -> Result<Vec<DataFile>> {
    let arrow_schema = arrow_schema_of(table)?;
    let mut by_day: BTreeMap<i32, Vec<&StoredEvent>> = BTreeMap::new();
    for e in events {
        by_day.entry(day_of(e.ts)).or_default().push(e);
    }
    let mut batches = Vec::with_capacity(by_day.len());
    for (day, rows) in by_day {
        batches.push((day, to_batch(arrow_schema.clone(), tenant, &rows)?));
    }
    write_days(table, batches, compression, Some((written, tenant))).await
}

/// The day (since the Unix epoch) of a time in microseconds.
pub fn day_of(ts_us: i64) -> i32 {
    ts_us.div_euclid(US_PER_DAY) as i32
}

/// The Arrow schema of a table's current schema (with Iceberg's field ids).
pub fn arrow_schema_of(table: &Table) -> Result<arrow_schema::SchemaRef> {
    let schema = table.metadata().current_schema();
    Ok(Arc::new(
        schema_to_arrow_schema(schema).map_err(ice("arrow schema"))?,
    ))
}

/// Writes record batches of a table partitioned by one day transform, one batch per day; the
/// rows of each batch written as one file are offered to `written` (with their tenant).
pub async fn write_days(
    table: &Table,
    batches: Vec<(i32, RecordBatch)>,
    compression: Compression,
    written: Option<(&Written, &str)>,
) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().as_ref().clone();
    let props = floe_catalog::table::data_file_properties(compression, FileWriter::Ingest, &schema);
    let location = DefaultLocationGenerator::new(metadata).map_err(ice("location generator"))?;
    let names = DefaultFileNameGenerator::new(
        format!("{}", uuid::Uuid::now_v7()),
        None,
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(props, schema.clone()),
        TARGET_FILE_BYTES,
        table.file_io().clone(),
        location,
        names,
    );
    let builder = DataFileWriterBuilder::new(rolling);

    let mut files = Vec::new();
    for (day, batch) in batches {
        let key = PartitionKey::new(
            spec.clone(),
            schema.clone(),
            Struct::from_iter([Some(Literal::date(day))]),
        );
        let mut writer = builder.build(Some(key)).await.map_err(ice("data writer"))?;
        writer
            .write(batch.clone())
            .await
            .map_err(ice("writing parquet"))?;
        let day_files = writer.close().await.map_err(ice("closing parquet"))?;
        // A batch rolled over into several files cannot be told apart by file.
        if let (Some((written, tenant)), [file]) = (written, day_files.as_slice()) {
            written.offer(tenant, file.file_path(), &batch);
        }
        files.extend(day_files);
    }
    Ok(files)
}

fn to_batch(
    schema: arrow_schema::SchemaRef,
    tenant: &str,
    rows: &[&StoredEvent],
) -> Result<RecordBatch> {
    let n = rows.len();
    let mut event_id = StringBuilder::with_capacity(n, n * 36);
    let mut tenant_id = StringBuilder::with_capacity(n, n * tenant.len());
    let mut kind = StringBuilder::with_capacity(n, n * 12);
    let mut version = Int32Builder::with_capacity(n);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    let mut user = StringBuilder::with_capacity(n, n * 8);
    let mut payload = StringBuilder::with_capacity(n, rows.iter().map(|r| r.payload.len()).sum());
    for e in rows {
        event_id.append_value(&e.event_id);
        tenant_id.append_value(tenant);
        kind.append_value(&e.kind);
        version.append_value(e.version);
        ts.append_value(e.ts);
        received.append_value(e.received_at);
        user.append_option(e.user_id.as_deref());
        payload.append_value(&e.payload);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(event_id.finish()),
        Arc::new(tenant_id.finish()),
        Arc::new(kind.finish()),
        Arc::new(version.finish()),
        Arc::new(ts.finish()),
        Arc::new(received.finish()),
        Arc::new(user.finish()),
        Arc::new(payload.finish()),
    ];
    // The promoted properties (columns past the events' own), filled from the payloads.
    let promoted = schema.fields().len() > columns.len();
    for field in schema.fields().iter().skip(columns.len()) {
        columns.push(arrow_array::new_null_array(field.data_type(), n));
    }
    let batch = RecordBatch::try_new(schema, columns).map_err(|e| Error::Internal {
        message: format!("building a record batch: {e}"),
    })?;
    if !promoted {
        return Ok(batch);
    }
    Ok(promote::fill(batch)?)
}

/// Writes dead letters of `topic` (`http` for events refused over HTTP) as Parquet files of
/// `events_dlq`, one per day of their dead-lettering.
pub(crate) async fn write_dead_letters(
    table: &iceberg::table::Table,
    topic: &str,
    rows: &[&DeadLetter],
    compression: Compression,
) -> Result<Vec<DataFile>> {
    let schema = arrow_schema_of(table)?;
    let mut by_day: BTreeMap<i32, Vec<&DeadLetter>> = BTreeMap::new();
    for d in rows {
        by_day.entry(day_of(d.at_us)).or_default().push(d);
    }
    let mut batches = Vec::new();
    for (day, rows) in by_day {
        let n = rows.len();
        let mut t = StringBuilder::with_capacity(n, n * topic.len());
        let mut p = Int32Builder::with_capacity(n);
        let mut o = Int64Builder::with_capacity(n);
        let mut reason = StringBuilder::new();
        let mut detail = StringBuilder::new();
        let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut key = StringBuilder::new();
        let mut payload = StringBuilder::new();
        for d in rows {
            t.append_value(topic);
            p.append_value(d.partition);
            o.append_value(d.offset);
            reason.append_value(&d.reason);
            detail.append_value(&d.detail);
            at.append_value(d.at_us);
            key.append_option(d.key.as_deref());
            payload.append_value(&d.payload);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(t.finish()),
            Arc::new(p.finish()),
            Arc::new(o.finish()),
            Arc::new(reason.finish()),
            Arc::new(detail.finish()),
            Arc::new(at.finish()),
            Arc::new(key.finish()),
            Arc::new(payload.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Internal {
            message: format!("building a dead-letter batch: {e}"),
        })?;
        batches.push((day, batch));
    }
    write_days(table, batches, compression, None).await
}

/// Appends `rows` (events refused over HTTP that the tenant keeps aside) to the tenant's
/// `events_dlq`, in one commit, before the reply says so.
pub(crate) async fn store_dead_letters(
    catalog: &floe_catalog::Catalog,
    tenant: &floe_catalog::TenantKey,
    rows: &[DeadLetter],
    compression: Compression,
) -> Result<()> {
    use floe_catalog::table::DLQ_TABLE;
    catalog.ensure_dlq_table(tenant.id()).await?;
    let table = catalog.load_table(tenant.id(), DLQ_TABLE).await?;
    let refs: Vec<&DeadLetter> = rows.iter().collect();
    let files = write_dead_letters(&table, "http", &refs, compression).await?;
    catalog
        .commit_append(tenant, DLQ_TABLE, files, None)
        .await?;
    Ok(())
}

fn ice(context: &'static str) -> impl FnOnce(iceberg::Error) -> Error {
    move |source| Error::Iceberg {
        context,
        source: Box::new(source),
    }
}
