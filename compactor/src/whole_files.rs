//! A rewrite's small input files, each read in one request.
//!
//! DataFusion's Parquet reader makes at least two requests of a file: its footer (the last
//! `metadata_size_hint` bytes, the whole of a small file), then the column chunks it reads. A
//! rewrite reads every column of every file, and a bin of an uncompacted day holds thousands of
//! files of a few kilobytes (one per ingest commit): 20,000 in the 5,000-commit benchmark, each
//! request a trip to a blocking thread on the local file system or a GET on S3.
//! [`WholeFiles`] reads a file no larger than its limit in one request and serves the footer and
//! the column chunks from those bytes; a larger file is read as DataFusion reads it.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    DefaultParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

/// Opens files of at most `max_bytes` with one read of the whole file.
#[derive(Debug)]
pub struct WholeFiles {
    store: Arc<dyn ObjectStore>,
    max_bytes: u64,
}

impl WholeFiles {
    pub fn new(store: Arc<dyn ObjectStore>, max_bytes: u64) -> WholeFiles {
        WholeFiles { store, max_bytes }
    }
}

impl ParquetFileReaderFactory for WholeFiles {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        if file.object_meta.size > self.max_bytes {
            return DefaultParquetFileReaderFactory::new(self.store.clone()).create_reader(
                partition_index,
                file,
                metadata_size_hint,
                metrics,
            );
        }
        Ok(Box::new(Whole {
            store: self.store.clone(),
            location: file.object_meta.location.clone(),
            size: file.object_meta.size,
            bytes: None,
        }))
    }
}

/// One file, read whole at its first request.
struct Whole {
    store: Arc<dyn ObjectStore>,
    location: Path,
    /// As its manifest entry says.
    size: u64,
    bytes: Option<Bytes>,
}

impl Whole {
    async fn bytes(&mut self) -> Result<Bytes> {
        if let Some(bytes) = &self.bytes {
            return Ok(bytes.clone());
        }
        let external = |e: object_store::Error| ParquetError::External(Box::new(e));
        let bytes = self
            .store
            .get(&self.location)
            .await
            .map_err(external)?
            .bytes()
            .await
            .map_err(external)?;
        if bytes.len() as u64 != self.size {
            return Err(ParquetError::General(format!(
                "{} holds {} bytes where its manifest entry says {}",
                self.location,
                bytes.len(),
                self.size
            )));
        }
        self.bytes = Some(bytes.clone());
        Ok(bytes)
    }
}

fn slice(bytes: &Bytes, range: Range<u64>) -> Result<Bytes> {
    if range.start > range.end || range.end > bytes.len() as u64 {
        return Err(ParquetError::EOF(format!(
            "bytes {range:?} asked of a file of {}",
            bytes.len()
        )));
    }
    Ok(bytes.slice(range.start as usize..range.end as usize))
}

impl AsyncFileReader for Whole {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        async move { slice(&self.bytes().await?, range) }.boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            let bytes = self.bytes().await?;
            ranges.into_iter().map(|r| slice(&bytes, r)).collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>>> {
        async move {
            let bytes = self.bytes().await?;
            let mut reader = ParquetMetaDataReader::new();
            if let Some(o) = options {
                reader = reader
                    .with_metadata_options(Some(o.metadata_options().clone()))
                    .with_column_index_policy(o.column_index_policy())
                    .with_offset_index_policy(o.offset_index_policy());
            }
            Ok(Arc::new(reader.parse_and_finish(&bytes)?))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

    /// A file of `rows` rows in row groups of 100, its bytes.
    fn parquet(rows: i64) -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("v{i}")),
                )),
            ],
        )
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    /// Reads the file `f.parquet` of `memory` through `factory`, deleting it from the store once
    /// its footer is read: its rows' `n` values, or the error.
    async fn read_then_delete(
        factory: &WholeFiles,
        memory: &InMemory,
        size: u64,
    ) -> std::result::Result<Vec<i64>, String> {
        let file = PartitionedFile::new("f.parquet", size);
        let reader: Box<dyn AsyncFileReader> = factory
            .create_reader(0, file, Some(64), &ExecutionPlanMetricsSet::new())
            .unwrap();
        let stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .unwrap()
            .build()
            .unwrap();
        memory.delete(&Path::from("f.parquet")).await.unwrap();
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
        let mut n = Vec::new();
        for b in batches {
            let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            n.extend(col.values().iter().copied());
        }
        Ok(n)
    }

    #[tokio::test]
    async fn a_small_file_is_read_in_one_request_a_large_one_as_before() {
        let memory = Arc::new(InMemory::new());
        let bytes = parquet(1_000);
        let size = bytes.len() as u64;
        let put = |memory: Arc<InMemory>, bytes: Bytes| async move {
            memory
                .put(&Path::from("f.parquet"), PutPayload::from(bytes))
                .await
                .unwrap();
        };
        // Read whole with its footer: the ten row groups need nothing more from the store.
        put(memory.clone(), bytes.clone()).await;
        let whole = WholeFiles::new(memory.clone(), size);
        let rows = read_then_delete(&whole, &memory, size).await.unwrap();
        assert_eq!(rows, (0..1_000).collect::<Vec<_>>());

        // Above the limit, the row groups are read from the store after the footer.
        put(memory.clone(), bytes).await;
        let parts = WholeFiles::new(memory.clone(), size - 1);
        let err = read_then_delete(&parts, &memory, size).await.unwrap_err();
        assert!(err.to_lowercase().contains("not found"), "{err}");
    }

    #[tokio::test]
    async fn a_file_of_another_size_than_its_entry_is_an_error() {
        let memory = Arc::new(InMemory::new());
        let bytes = parquet(10);
        let size = bytes.len() as u64;
        memory
            .put(&Path::from("f.parquet"), PutPayload::from(bytes))
            .await
            .unwrap();
        let factory = WholeFiles::new(memory, 1 << 20);
        let mut reader = factory
            .create_reader(
                0,
                PartitionedFile::new("f.parquet", size + 1),
                None,
                &ExecutionPlanMetricsSet::new(),
            )
            .unwrap();
        let err = reader.get_metadata(None).await.unwrap_err().to_string();
        assert!(err.contains("manifest entry says"), "{err}");
    }
}
