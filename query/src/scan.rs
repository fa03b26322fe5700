//! Reading an Iceberg table with DataFusion's own Parquet scan.
//!
//! Floe reads the snapshot's manifest list and manifests (manifests through a cache shared by
//! every query: they never change once written) and hands DataFusion every live data file with
//! the statistics the manifest holds for it. DataFusion reads them spread over as many
//! partitions as the session has cores. Files whose manifest bounds rule out the query's filters
//! are dropped before any is opened; DataFusion prunes row groups and pages by the files' own
//! statistics, and keeps footers in a cache shared by every query.
//!
//! This reader maps columns by name (a column a file lacks reads as null). That is exact for the
//! tables Floe reads this way: tables whose column names never stood for another field id
//! (`floe_catalog::table::reads_by_name`: columns only added, as promoted properties are) and
//! snapshots without delete files. Anything else is read by iceberg-datafusion's scan, which
//! maps by field id and applies deletes.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{
    Column, ColumnStatistics, DFSchema, ScalarValue, Statistics, project_schema,
};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicate;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use floe_catalog::manifests::ManifestCache;
use floe_catalog::storage::DataStore;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, Datum, ManifestContentType, ManifestList,
    PrimitiveLiteral,
};
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;

pub mod dictionaries;
pub mod local_files;
mod per_file;
pub use per_file::{PerFileMetrics, per_file_metrics};

/// The file scan `node` is, if it is a `DataSourceExec` reading files.
pub fn file_scan(node: &dyn ExecutionPlan) -> Option<&FileScanConfig> {
    node.as_any()
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .as_any()
        .downcast_ref::<FileScanConfig>()
}

/// One table (at its current snapshot, or a given one) for DataFusion.
pub struct FloeTable {
    table: Table,
    snapshot_id: Option<i64>,
    schema: SchemaRef,
    /// The Iceberg field id of each column of `schema`.
    field_ids: Vec<i32>,
    /// Where the data files live for DataFusion (`file:///`, `s3://bucket`).
    store: ObjectStoreUrl,
    /// The same, as the catalog knows it (maps locations to keys).
    data: DataStore,
    manifests: Arc<ManifestCache>,
    /// Whether the table can be read by column name (see the module comment).
    native: bool,
    /// iceberg-datafusion's scan, for everything else.
    fallback: IcebergStaticTableProvider,
}

impl std::fmt::Debug for FloeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloeTable")
            .field("table", self.table.identifier())
            .field("snapshot_id", &self.snapshot_id)
            .field("native", &self.native)
            .finish()
    }
}

/// The files a scan reads, or why Floe's own reader cannot read them.
enum Planned {
    Files(Vec<PartitionedFile>),
    /// Delete files, encryption or a format other than Parquet: iceberg-datafusion's scan.
    Fallback,
}

impl FloeTable {
    /// `snapshot_id`: `None` reads the current snapshot.
    pub async fn try_new(
        table: Table,
        snapshot_id: Option<i64>,
        store: ObjectStoreUrl,
        data: DataStore,
        manifests: Arc<ManifestCache>,
    ) -> iceberg::Result<FloeTable> {
        let fallback = match snapshot_id {
            None => IcebergStaticTableProvider::try_new_from_table(table.clone()).await?,
            Some(id) => {
                IcebergStaticTableProvider::try_new_from_table_snapshot(table.clone(), id).await?
            }
        };
        let schema = fallback.schema();
        let metadata = table.metadata();
        // The schema the fallback reads with: the snapshot's, or the current one.
        let read_with = snapshot_id
            .and_then(|id| metadata.snapshot_by_id(id))
            .and_then(|s| s.schema_id())
            .and_then(|id| metadata.schema_by_id(id))
            .unwrap_or_else(|| metadata.current_schema());
        let field_ids: Vec<i32> = read_with
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.id)
            .collect();
        let native = floe_catalog::table::reads_by_name(metadata)
            && field_ids.len() == schema.fields().len();
        Ok(FloeTable {
            table,
            snapshot_id,
            schema,
            field_ids,
            store,
            data,
            manifests,
            native,
            fallback,
        })
    }

    /// The key of an Iceberg location in the warehouse's object store.
    fn object_path(&self, location: &str) -> DFResult<String> {
        self.data.key(location).ok_or_else(|| {
            DataFusionError::Execution(format!(
                "data file {location} is outside the warehouse ({})",
                self.data.url
            ))
        })
    }

    /// Every live data file of the snapshot, with its statistics from the manifests.
    async fn plan(&self) -> DFResult<Planned> {
        let metadata = self.table.metadata();
        let snapshot = match self.snapshot_id {
            Some(id) => metadata.snapshot_by_id(id),
            None => metadata.current_snapshot(),
        };
        let Some(snapshot) = snapshot else {
            return Ok(Planned::Files(Vec::new()));
        };
        if snapshot.encryption_key_id().is_some() {
            return Ok(Planned::Fallback);
        }
        let bytes = self
            .table
            .file_io()
            .new_input(snapshot.manifest_list())
            .map_err(iceberg_error)?
            .read()
            .await
            .map_err(iceberg_error)?;
        let list = ManifestList::parse_with_version(&bytes, metadata.format_version())
            .map_err(iceberg_error)?;
        if list
            .entries()
            .iter()
            .any(|m| m.content != ManifestContentType::Data)
        {
            return Ok(Planned::Fallback);
        }
        let manifests = self
            .manifests
            .load_all(&self.table, list.entries())
            .await
            .map_err(iceberg_error)?;
        let mut files = Vec::new();
        for manifest in &manifests {
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                let data = entry.data_file();
                if data.content_type() != DataContentType::Data
                    || data.file_format() != DataFileFormat::Parquet
                {
                    return Ok(Planned::Fallback);
                }
                let path = self.object_path(data.file_path())?;
                let file = PartitionedFile::new(path, data.file_size_in_bytes())
                    .with_statistics(Arc::new(self.file_statistics(data)));
                files.push(file);
            }
        }
        Ok(Planned::Files(files))
    }

    /// What the manifest says about one data file, in DataFusion's terms: row count, nulls, and
    /// bounds of integer, date and timestamp columns (string bounds may be truncated and float
    /// bounds say nothing about NaN, so they are left out). Bounds are `Inexact`: the spec makes
    /// them bounds, not the exact extremes, so DataFusion never answers `min`/`max` from them;
    /// they serve pruning (`FileBounds`).
    fn file_statistics(&self, data: &DataFile) -> Statistics {
        let columns = self
            .schema
            .fields()
            .iter()
            .zip(&self.field_ids)
            .map(|(field, id)| {
                let mut column = ColumnStatistics::new_unknown();
                if let Some(nulls) = data.null_value_counts().get(id) {
                    column.null_count = Precision::Exact(*nulls as usize);
                }
                let bound = |b: Option<&Datum>| {
                    b.and_then(|d| scalar(field.data_type(), d.literal()))
                        .map_or(Precision::Absent, Precision::Inexact)
                };
                column.min_value = bound(data.lower_bounds().get(id));
                column.max_value = bound(data.upper_bounds().get(id));
                column
            })
            .collect();
        Statistics {
            num_rows: Precision::Exact(data.record_count() as usize),
            total_byte_size: Precision::Inexact(data.file_size_in_bytes() as usize),
            column_statistics: columns,
        }
    }
}

impl FloeTable {
    /// Drops the files whose manifest bounds prove that no row passes `filters`. A filter that
    /// cannot be judged this way keeps every file (and any failure here only skips pruning).
    fn prune(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        files: Vec<PartitionedFile>,
    ) -> Vec<PartitionedFile> {
        let Some(filter) = conjunction(filters.iter().cloned()) else {
            return files;
        };
        let keep = DFSchema::try_from(self.schema.as_ref().clone())
            .and_then(|schema| state.create_physical_expr(filter, &schema))
            .and_then(|expr| PruningPredicate::try_new(expr, self.schema.clone()))
            .and_then(|predicate| {
                predicate.prune(&FileBounds {
                    files: &files,
                    schema: &self.schema,
                })
            });
        match keep {
            Ok(keep) => files
                .into_iter()
                .zip(keep)
                .filter_map(|(file, keep)| keep.then_some(file))
                .collect(),
            Err(e) => {
                tracing::debug!(table = %self.table.identifier(), error = %e, "no file pruning");
                files
            }
        }
    }
}

/// The manifest statistics of a scan's files, one container per file, for DataFusion's pruning.
/// Bounds are bounds here, not claims of exact minima and maxima.
struct FileBounds<'a> {
    files: &'a [PartitionedFile],
    schema: &'a Schema,
}

impl FileBounds<'_> {
    fn bounds(
        &self,
        column: &Column,
        pick: impl Fn(&ColumnStatistics) -> &Precision<ScalarValue>,
    ) -> Option<ArrayRef> {
        let index = self.schema.index_of(column.name()).ok()?;
        let null = ScalarValue::try_from(self.schema.field(index).data_type()).ok()?;
        let values = self.files.iter().map(|f| {
            let stats = f.statistics.as_ref()?;
            match pick(stats.column_statistics.get(index)?) {
                Precision::Exact(v) | Precision::Inexact(v) => Some(v.clone()),
                Precision::Absent => None,
            }
        });
        let values: Vec<ScalarValue> = values.map(|v| v.unwrap_or_else(|| null.clone())).collect();
        if values.iter().all(|v| v.is_null()) {
            return None;
        }
        ScalarValue::iter_to_array(values).ok()
    }

    fn counts(&self, count: impl Fn(&Statistics) -> Option<u64>) -> Option<ArrayRef> {
        let counts: UInt64Array = self
            .files
            .iter()
            .map(|f| f.statistics.as_deref().and_then(&count))
            .collect();
        Some(Arc::new(counts))
    }
}

impl PruningStatistics for FileBounds<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |c| &c.min_value)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |c| &c.max_value)
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let index = self.schema.index_of(column.name()).ok()?;
        self.counts(|s| match s.column_statistics.get(index)?.null_count {
            Precision::Exact(n) => Some(n as u64),
            _ => None,
        })
    }

    fn row_counts(&self, _column: &Column) -> Option<ArrayRef> {
        self.counts(|s| match s.num_rows {
            Precision::Exact(n) => Some(n as u64),
            _ => None,
        })
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// An Iceberg bound as a DataFusion value of the column's type, where the two agree exactly.
fn scalar(arrow_type: &DataType, value: &PrimitiveLiteral) -> Option<ScalarValue> {
    Some(match (arrow_type, value) {
        (DataType::Boolean, PrimitiveLiteral::Boolean(v)) => ScalarValue::Boolean(Some(*v)),
        (DataType::Int32, PrimitiveLiteral::Int(v)) => ScalarValue::Int32(Some(*v)),
        (DataType::Int64, PrimitiveLiteral::Long(v)) => ScalarValue::Int64(Some(*v)),
        (DataType::Date32, PrimitiveLiteral::Int(v)) => ScalarValue::Date32(Some(*v)),
        (DataType::Timestamp(TimeUnit::Microsecond, tz), PrimitiveLiteral::Long(v)) => {
            ScalarValue::TimestampMicrosecond(Some(*v), tz.clone())
        }
        _ => return None,
    })
}

fn iceberg_error(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Spreads `files` over at most `groups` groups of about equal bytes (largest first, each to the
/// lightest group), so that every core gets a similar share of the scan.
fn balance(mut files: Vec<PartitionedFile>, groups: usize) -> Vec<FileGroup> {
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let groups = groups.clamp(1, files.len().max(1));
    let mut bins: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); groups];
    for file in files {
        let lightest = bins
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += file.object_meta.size;
        lightest.1.push(file);
    }
    bins.into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}

#[async_trait]
impl TableProvider for FloeTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let files = match self.native {
            true => self.plan().await?,
            false => Planned::Fallback,
        };
        let files = match files {
            Planned::Files(files) => files,
            Planned::Fallback => {
                return self.fallback.scan(state, projection, filters, limit).await;
            }
        };
        let files = self.prune(state, filters, files);
        if files.is_empty() {
            let schema = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(TableSchema::new(self.schema.clone(), vec![]));
        let groups = balance(files, state.config().target_partitions());
        // No delete files: the manifests' counts and bounds describe exactly what is read.
        let statistics = groups
            .iter()
            .flat_map(|g| g.iter())
            .filter_map(|f| f.statistics.as_deref());
        let statistics = Statistics::try_merge_iter(statistics, &self.schema)?;
        // The filters are applied above the scan too (`Inexact`); DataFusion pushes them into
        // the Parquet source, which prunes row groups and pages by the files' own statistics.
        let config = FileScanConfigBuilder::new(self.store.clone(), source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        let plan = format.create_physical_plan(state, config).await?;
        Ok(per_file::per_file_metrics(plan))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> PartitionedFile {
        PartitionedFile::new(name.to_string(), size)
    }

    #[test]
    fn balance_spreads_bytes_over_groups() {
        let files = vec![
            file("a", 100),
            file("b", 60),
            file("c", 50),
            file("d", 40),
            file("e", 10),
        ];
        let groups = balance(files, 2);
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(groups.len(), 2);
        assert_eq!(sizes.iter().sum::<usize>(), 5);
        let names: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| f.object_meta.location.to_string())
                    .collect()
            })
            .collect();
        assert_eq!(names, vec![vec!["a", "d"], vec!["b", "c", "e"]]);
    }

    #[test]
    fn bounds_become_values_only_where_exact() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        assert_eq!(
            scalar(&ts, &PrimitiveLiteral::Long(7)),
            Some(ScalarValue::TimestampMicrosecond(
                Some(7),
                Some("+00:00".into())
            ))
        );
        assert_eq!(
            scalar(&DataType::Int64, &PrimitiveLiteral::Long(7)),
            Some(ScalarValue::Int64(Some(7)))
        );
        // Strings may be truncated bounds; floats say nothing about NaN.
        assert_eq!(
            scalar(&DataType::Utf8, &PrimitiveLiteral::String("u".into())),
            None
        );
        assert_eq!(
            scalar(&DataType::Float64, &PrimitiveLiteral::Double(1.0.into())),
            None
        );
    }

    #[test]
    fn balance_never_makes_empty_groups() {
        let groups = balance(vec![file("a", 1), file("b", 1)], 8);
        assert_eq!(groups.len(), 2);
        assert!(balance(Vec::new(), 4).is_empty());
    }
}
