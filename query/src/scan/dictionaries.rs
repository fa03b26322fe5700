//! Reading chosen string columns as Arrow dictionaries, as Parquet stores them.
//!
//! Parquet keeps a low-cardinality string column (an event's `type`) as a dictionary page and
//! small integer keys; DataFusion's reader turns every key back into its string, so that a
//! `GROUP BY type` over ten million rows copies and hashes ten million strings. The Parquet
//! reader can hand the keys and the dictionary over unchanged when the file's Arrow schema (the
//! `ARROW:schema` entry of its footer) asks for a dictionary type; DataFusion has no option
//! for it (its opener coerces strings to views only). [`DictionaryHint`] wraps a scan's
//! reader factory and rewrites that entry in each footer it hands over, after the footer
//! cache: the cached footer stays as the file has it, and only the scans that asked read the
//! named columns as `Dictionary(Int32, Utf8)`. A page written without its dictionary (Parquet's
//! writer falls back to plain pages when a dictionary grows too large) reads as a dictionary
//! of its own values: the same strings, no saving.
//!
//! A file that keeps a named column without any dictionary (ingest writes `payload` and
//! `event_id` so) is not hinted for it: both the Parquet reader and DataFusion's cast would
//! hash every string into a dictionary of distinct ones, a cost the plain column never had.
//! Its strings are handed on instead as a dictionary whose key `i` is row `i`
//! ([`OwnDictionaries`], in place of that cast), and the readers of dictionaries take such a
//! dictionary as they take any.
//!
//! Used by the grouping over dictionaries (`crate::groups`) and the filters over them
//! (`crate::dictionary_filters`); any other reader of the scan's columns would see
//! dictionaries, so only those rules install it.

use std::any::Any;
use std::fmt::{self, Display, Formatter};
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, DictionaryArray, Int32Array, RecordBatch};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::common::{exec_err, internal_err};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::CastColumnExpr;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::ARROW_SCHEMA_META_KEY;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{encode_arrow_schema, parquet_to_arrow_schema};
use parquet::basic::Encoding;
use parquet::file::metadata::{FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataBuilder};

/// The type a hinted column reads as.
pub fn dictionary_of_strings() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// A reader factory whose files read `columns` (string columns, by name) as dictionaries.
#[derive(Debug)]
pub struct DictionaryHint {
    inner: Arc<dyn ParquetFileReaderFactory>,
    columns: Arc<[String]>,
}

impl DictionaryHint {
    pub fn new(inner: Arc<dyn ParquetFileReaderFactory>, columns: Vec<String>) -> DictionaryHint {
        DictionaryHint {
            inner,
            columns: columns.into(),
        }
    }
}

impl ParquetFileReaderFactory for DictionaryHint {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DFResult<Box<dyn AsyncFileReader + Send>> {
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(HintedReader {
            inner,
            columns: self.columns.clone(),
        }))
    }
}

/// One file's reader: bytes as they are, the footer with the hint.
struct HintedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    columns: Arc<[String]>,
}

impl AsyncFileReader for HintedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let columns = self.columns.clone();
        async move {
            let metadata = self.inner.get_metadata(options).await?;
            with_dictionaries(metadata, &columns)
        }
        .boxed()
    }
}

/// `metadata` whose Arrow schema reads the string columns named in `columns` as dictionaries
/// where every row group keeps a dictionary of them (the same footer when none does).
pub fn with_dictionaries(
    metadata: Arc<ParquetMetaData>,
    columns: &[String],
) -> parquet::errors::Result<Arc<ParquetMetaData>> {
    let file = metadata.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())?;
    let has_dictionaries = |name: &str| {
        let leaf = file
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().parts() == [name]);
        leaf.is_some_and(|leaf| {
            metadata.row_groups().iter().all(|g| {
                let chunk = g.column(leaf);
                chunk.dictionary_page_offset().is_some()
                    || chunk
                        .encodings()
                        .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY))
            })
        })
    };
    let mut changed = false;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let hinted = field.data_type() == &DataType::Utf8
                && columns.iter().any(|c| c == field.name())
                && has_dictionaries(field.name());
            changed |= hinted;
            match hinted {
                true => field
                    .as_ref()
                    .clone()
                    .with_data_type(dictionary_of_strings()),
                false => field.as_ref().clone(),
            }
        })
        .collect();
    if !changed {
        return Ok(metadata);
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    let mut entries: Vec<KeyValue> = file
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|e| e.key != ARROW_SCHEMA_META_KEY)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    entries.push(KeyValue::new(
        ARROW_SCHEMA_META_KEY.to_string(),
        encode_arrow_schema(&schema),
    ));
    let file = FileMetaData::new(
        file.version(),
        file.num_rows(),
        file.created_by().map(str::to_string),
        Some(entries),
        file.schema_descr_ptr(),
        file.column_orders().cloned(),
    );
    let rebuilt = ParquetMetaDataBuilder::new(file)
        .set_row_groups(metadata.row_groups().to_vec())
        .set_column_index(metadata.column_index().cloned())
        .set_offset_index(metadata.offset_index().cloned())
        .build();
    Ok(Arc::new(rebuilt))
}

/// DataFusion's adaptation of a file's columns to the table's, except that a string column the
/// table reads as a dictionary and the file has no dictionary for is handed on as
/// [`OwnDictionary`], not cast (see the module comment).
#[derive(Debug)]
pub struct OwnDictionaries {
    inner: Arc<dyn PhysicalExprAdapterFactory>,
}

impl OwnDictionaries {
    /// Over the scan's own adaptation (`None`: DataFusion's default).
    pub fn over(inner: Option<Arc<dyn PhysicalExprAdapterFactory>>) -> OwnDictionaries {
        OwnDictionaries {
            inner: inner.unwrap_or_else(|| Arc::new(DefaultPhysicalExprAdapterFactory)),
        }
    }
}

impl PhysicalExprAdapterFactory for OwnDictionaries {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> DFResult<Arc<dyn PhysicalExprAdapter>> {
        Ok(Arc::new(OwnDictionariesAdapter {
            inner: self
                .inner
                .create(logical_file_schema, physical_file_schema)?,
        }))
    }
}

#[derive(Debug)]
struct OwnDictionariesAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
}

impl PhysicalExprAdapter for OwnDictionariesAdapter {
    /// Only a column handed on as it is (a projection's) becomes an [`OwnDictionary`]; a cast
    /// inside the scan's filter stays, as the pruning of row groups and pages reads it.
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> DFResult<Arc<dyn PhysicalExpr>> {
        let adapted = self.inner.rewrite(expr)?;
        if let Some(cast) = adapted.as_any().downcast_ref::<CastColumnExpr>()
            && cast.input_field().data_type() == &DataType::Utf8
            && cast.target_field().data_type() == &dictionary_of_strings()
        {
            return Ok(Arc::new(OwnDictionary {
                strings: cast.expr().clone(),
            }));
        }
        Ok(adapted)
    }
}

/// A `Utf8` column as a `Dictionary(Int32, Utf8)` whose values are its strings, row `i` keyed
/// `i` (a null row keyed null): no string is copied or hashed. A dictionary may hold a string
/// twice; the readers of dictionaries here number or compare each value, not each distinct one.
#[derive(Debug)]
pub struct OwnDictionary {
    strings: Arc<dyn PhysicalExpr>,
}

impl PartialEq for OwnDictionary {
    fn eq(&self, other: &Self) -> bool {
        self.strings.as_ref() == other.strings.as_ref()
    }
}

impl Eq for OwnDictionary {}

impl Hash for OwnDictionary {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.strings.hash(state);
    }
}

impl OwnDictionary {
    fn of(strings: &dyn Array) -> DFResult<DictionaryArray<Int32Type>> {
        let Ok(rows) = i32::try_from(strings.len()) else {
            return exec_err!(
                "{} strings are too many for a dictionary's keys",
                strings.len()
            );
        };
        let keys = Int32Array::new(ScalarBuffer::from_iter(0..rows), strings.nulls().cloned());
        Ok(DictionaryArray::try_new(
            keys,
            arrow::array::make_array(strings.to_data()),
        )?)
    }
}

impl Display for OwnDictionary {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} (as its own dictionary)", self.strings)
    }
}

impl PhysicalExpr for OwnDictionary {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, _schema: &Schema) -> DFResult<DataType> {
        Ok(dictionary_of_strings())
    }

    fn nullable(&self, schema: &Schema) -> DFResult<bool> {
        self.strings.nullable(schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DFResult<ColumnarValue> {
        Ok(match self.strings.evaluate(batch)? {
            ColumnarValue::Array(strings) if strings.data_type() == &DataType::Utf8 => {
                ColumnarValue::Array(Arc::new(OwnDictionary::of(strings.as_string::<i32>())?))
            }
            ColumnarValue::Array(other) => {
                return internal_err!(
                    "a dictionary of its own strings, given {}",
                    other.data_type()
                );
            }
            ColumnarValue::Scalar(s) => ColumnarValue::Scalar(s.cast_to(&dictionary_of_strings())?),
        })
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.strings]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DFResult<Arc<dyn PhysicalExpr>> {
        if children.len() != 1 {
            return internal_err!("a dictionary of its own strings takes one column");
        }
        Ok(Arc::new(OwnDictionary {
            strings: children.swap_remove(0),
        }))
    }

    fn fmt_sql(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.strings.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Int32Type;
    use bytes::Bytes;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};

    fn file() -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("type", DataType::Utf8, false),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a", "a"])),
                Arc::new(StringArray::from(vec![Some("u1"), None, Some("u2"), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    #[test]
    fn a_hinted_column_reads_as_the_files_dictionary_and_the_others_as_before() {
        let bytes = file();
        let plain = ArrowReaderMetadata::load(&bytes, Default::default()).unwrap();
        let hinted = with_dictionaries(
            plain.metadata().clone(),
            &["type".to_string(), "n".to_string(), "missing".to_string()],
        )
        .unwrap();
        let hinted = ArrowReaderMetadata::try_new(hinted, Default::default()).unwrap();
        let schema = hinted.schema();
        assert_eq!(schema.field(0).data_type(), &dictionary_of_strings());
        // Only string columns are hinted; the others keep their types.
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
        assert_eq!(schema.field(2).data_type(), &DataType::Int64);

        let batch = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, hinted)
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let types = batch.column(0).as_dictionary::<Int32Type>();
        // The file's dictionary: two strings, four keys.
        assert_eq!(types.values().len(), 2);
        let strings = arrow::compute::cast(types, &DataType::Utf8).unwrap();
        assert_eq!(
            strings.as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![Some("a"), Some("b"), Some("a"), Some("a")]
        );
        assert_eq!(batch.column(1).null_count(), 2);
    }

    #[test]
    fn a_column_kept_without_a_dictionary_is_handed_on_as_its_own() {
        // `user_id` written as ingest writes `payload`: no dictionary.
        let schema = Arc::new(Schema::new(vec![
            Field::new("type", DataType::Utf8, false),
            Field::new("user_id", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a"])),
                Arc::new(StringArray::from(vec![Some("u1"), None, Some("u1")])),
            ],
        )
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_column_dictionary_enabled("user_id".into(), false)
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let plain = ArrowReaderMetadata::load(&Bytes::from(out), Default::default()).unwrap();
        let hinted = with_dictionaries(
            plain.metadata().clone(),
            &["type".to_string(), "user_id".to_string()],
        )
        .unwrap();
        let hinted = ArrowReaderMetadata::try_new(hinted, Default::default()).unwrap();
        // Not hinted: the reader would hash every string into a dictionary of distinct ones.
        assert_eq!(
            hinted.schema().field(0).data_type(),
            &dictionary_of_strings()
        );
        assert_eq!(hinted.schema().field(1).data_type(), &DataType::Utf8);

        // In its place: the strings as they are, key `i` for row `i`, null rows keyed null.
        let column = batch.column(1);
        let own = OwnDictionary::of(column.as_ref()).unwrap();
        assert_eq!(
            own.keys().iter().collect::<Vec<_>>(),
            vec![Some(0), None, Some(2)]
        );
        // Not copied.
        assert_eq!(
            own.values().to_data().buffers()[1].as_ptr(),
            column.to_data().buffers()[1].as_ptr()
        );
        let strings = arrow::compute::cast(&own, &DataType::Utf8).unwrap();
        assert_eq!(strings.as_ref(), column.as_ref());
    }

    #[test]
    fn a_footer_without_the_named_columns_is_handed_on_unchanged() {
        let bytes = file();
        let plain = ArrowReaderMetadata::load(&bytes, Default::default()).unwrap();
        let same = with_dictionaries(plain.metadata().clone(), &["n".to_string()]).unwrap();
        assert!(Arc::ptr_eq(&same, plain.metadata()));
    }
}
