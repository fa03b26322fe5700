//! Writing a projection's new rows as the files of its next snapshot: one file per day for a
//! table partitioned by `day` (only the days recomputed are rewritten), or one file holding
//! every row for a table that is not (the rows of the other days are read back from the
//! table's live files and kept as they are).

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{Date32Type, SchemaRef};
use floe_catalog::Catalog;
use floe_catalog::projection::DAY_COLUMN;
use floe_catalog::storage::DataStore;
use futures::{StreamExt, TryStreamExt};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{
    DataFile, DataFileFormat, Literal, PartitionKey, Schema as IcebergSchema,
    SchemaRef as IcebergSchemaRef, Struct,
};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::{Error, Result, ice};

/// ZSTD level of projection files (small files, written often).
const ZSTD_LEVEL: i32 = 3;

/// The Arrow schema of a projection table (with Iceberg's field ids).
pub fn arrow_schema(table: &Table) -> Result<SchemaRef> {
    arrow_of(table.metadata().current_schema())
}

/// An Iceberg schema as Arrow's (with the field ids).
pub fn arrow_of(schema: &IcebergSchema) -> Result<SchemaRef> {
    Ok(Arc::new(
        schema_to_arrow_schema(schema).map_err(ice("arrow schema"))?,
    ))
}

/// The files of the table's next snapshot, written with `schema` (the table's, or the one its
/// next snapshot brings in): `rows` (the rows of the days `changed`) and, for a table without
/// partitions and unless `whole`, its current rows of the other days.
pub async fn files_for(
    table: &Table,
    schema: &IcebergSchemaRef,
    catalog: &Catalog,
    rows: RecordBatch,
    changed: &BTreeSet<i32>,
    whole: bool,
) -> Result<Vec<DataFile>> {
    let partitioned = !table.metadata().default_partition_spec().is_unpartitioned();
    if partitioned {
        let mut files = Vec::new();
        for (day, batch) in by_day(&rows)? {
            files.extend(write(table, schema, batch, Some(day)).await?);
        }
        return Ok(files);
    }
    let mut batches = if whole {
        Vec::new()
    } else {
        kept_rows(table, catalog, changed, rows.schema()).await?
    };
    batches.push(rows);
    let all = concat_batches(&batches[0].schema(), &batches)
        .map_err(|e| Error::Invalid(format!("projection rows: {e}")))?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    write(table, schema, all, None).await
}

fn days_of(batch: &RecordBatch) -> Result<datafusion::arrow::array::Date32Array> {
    Ok(batch
        .column_by_name(DAY_COLUMN)
        .and_then(|c| c.as_primitive_opt::<Date32Type>())
        .ok_or_else(|| Error::Invalid("projection rows without a date `day`".into()))?
        .clone())
}

/// The rows of each day (rows come day by day).
fn by_day(rows: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>> {
    let days = days_of(rows)?;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=rows.num_rows() {
        if i == rows.num_rows() || days.value(i) != days.value(start) {
            out.push((days.value(start), rows.slice(start, i - start)));
            start = i;
        }
    }
    Ok(out)
}

/// The table's current rows whose day is not in `changed`, as `schema`.
async fn kept_rows(
    table: &Table,
    catalog: &Catalog,
    changed: &BTreeSet<i32>,
    schema: SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let store = catalog.data_store();
    for entry in catalog.live_entries(table).await? {
        let location = entry.file_path();
        let failed = |e: &dyn std::fmt::Display| Error::Storage {
            action: "reading",
            object: location.to_string(),
            message: e.to_string(),
        };
        let mut stream = open(store, location, entry.data_file().file_size_in_bytes()).await?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| failed(&e))?;
            let days = days_of(&batch)?;
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| Some(days.is_valid(i) && !changed.contains(&days.value(i))))
                .collect();
            let batch = filter_record_batch(&batch, &keep).map_err(|e| failed(&e))?;
            out.push(as_schema(&batch, &schema).map_err(|e| failed(&e))?);
        }
    }
    Ok(out)
}

/// Every row of `files` of `events`, as `schema` (columns by name; a column a file lacks is
/// NULL), read one file after the other as the stream is polled.
pub fn read_events(
    store: &DataStore,
    files: Vec<floe_catalog::delta::DeltaFile>,
    schema: SchemaRef,
) -> impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static {
    let store = store.clone();
    futures::stream::iter(files)
        .then(move |f| {
            let store = store.clone();
            let schema = schema.clone();
            async move {
                let failed = {
                    let path = f.path.clone();
                    move |e: &dyn std::fmt::Display| Error::Storage {
                        action: "reading",
                        object: path.clone(),
                        message: e.to_string(),
                    }
                };
                let batches = open(&store, &f.path, f.size).await?;
                Ok::<_, Error>(batches.map(move |batch| {
                    let batch = batch.map_err(|e| failed(&e))?;
                    as_schema(&batch, &schema).map_err(|e| failed(&e))
                }))
            }
        })
        .try_flatten()
}

/// `batch` with `schema`'s columns, by name, cast to its types (missing ones NULL).
fn as_schema(batch: &RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, String> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => cast(c, f.data_type()).map_err(|e| format!("{}: {e}", f.name())),
            None => Ok(datafusion::arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// A stream of every row of the Parquet file at `location` (of `size` bytes).
async fn open(
    store: &DataStore,
    location: &str,
    size: u64,
) -> Result<ParquetRecordBatchStream<ParquetObjectReader>> {
    let failed = |e: &dyn std::fmt::Display| Error::Storage {
        action: "reading",
        object: location.to_string(),
        message: e.to_string(),
    };
    let key = store.key(location).ok_or_else(|| {
        Error::Invalid(format!(
            "{location} is outside the warehouse ({})",
            store.url
        ))
    })?;
    let reader =
        ParquetObjectReader::new(store.object_store(), Path::from(key)).with_file_size(size);
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| failed(&e))?
        .build()
        .map_err(|e| failed(&e))
}

/// Writes `rows` as one file of the table, in the partition of `day` if given.
async fn write(
    table: &Table,
    schema: &IcebergSchemaRef,
    rows: RecordBatch,
    day: Option<i32>,
) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let schema = schema.clone();
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let location = DefaultLocationGenerator::new(metadata).map_err(ice("location"))?;
    let names = DefaultFileNameGenerator::new(
        format!("{}", uuid::Uuid::now_v7()),
        Some("refresh".to_string()),
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(props, schema.clone()),
        usize::MAX,
        table.file_io().clone(),
        location,
        names,
    );
    let key = day.map(|d| {
        PartitionKey::new(
            metadata.default_partition_spec().as_ref().clone(),
            schema.clone(),
            Struct::from_iter([Some(Literal::date(d))]),
        )
    });
    let mut writer = DataFileWriterBuilder::new(rolling)
        .build(key)
        .await
        .map_err(ice("data writer"))?;
    writer.write(rows).await.map_err(ice("writing parquet"))?;
    writer.close().await.map_err(ice("closing parquet"))
}
