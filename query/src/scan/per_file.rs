//! DataFusion's Parquet source, with each file's metrics dropped with the file.
//!
//! `ParquetSource` registers some thirty metrics labelled with the file's name for every file
//! it opens (its opener's and its reader's), all in one metrics set that lives as long as the
//! plan (apache/datafusion#23644), behind one mutex that every opening thread takes. Over a
//! table of 20,000 small files (a day of commits not yet compacted) they held about 250 MiB of
//! the server's resident memory per scan until the query ended, twice for a query that scans
//! the table twice (BENCHMARKS.md). Floe reads none of them (the bytes a query scans are counted
//! from its plan's file list); EXPLAIN ANALYZE still shows the scan's own figures (rows, time,
//! files opened) without the Parquet reader's (bytes read, row groups and pages pruned, files
//! pruned when opened, predicates that could not be built).
//!
//! [`PerFileMetrics`] stands in for the plan's `ParquetSource` and opens every file with a
//! `ParquetSource` of its own, built from the plan's (options, reader factory with the footer
//! cache, pushed-down predicate, projection, batch size): the file's metrics go to a set that is
//! dropped with the file's stream. The scan's own metrics (the file stream's, per partition)
//! stay in the plan's set.

use std::any::Any;
use std::fmt::Formatter;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileOpenFuture, FileOpener, FileScanConfig, FileScanConfigBuilder, FileSource,
    ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DFResult;
use datafusion::object_store::ObjectStore;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::filter_pushdown::FilterPushdownPropagation;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::sort_pushdown::SortOrderPushdownResult;
use datafusion::physical_plan::{DisplayFormatType, ExecutionPlan, PhysicalExpr};

use super::dictionaries::{DictionaryHint, dictionary_of_strings};

/// `plan` (a `DataSourceExec` over Parquet files) with each file opened by a source of its own,
/// so that the file's metrics go with it; any other plan as it is. For a plan as
/// `ParquetFormat::create_physical_plan` makes it, before the optimizer: a source the optimizer
/// has set to read row groups in reverse would lose that (the answer stays the same: that
/// order is inexact and its sort stays), as would an encryption factory set on the source
/// rather than named in its options.
pub fn per_file_metrics(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let Some(config) = super::file_scan(plan.as_ref()) else {
        return plan;
    };
    let Some(source) = wrap(config.file_source.clone(), None) else {
        return plan;
    };
    let config = FileScanConfigBuilder::from(config.clone())
        .with_source(source)
        .build();
    DataSourceExec::from_data_source(config)
}

/// `source` as a [`PerFileMetrics`] if it is a plain `ParquetSource` (one that needs no
/// encryption factory, the one setting a copy cannot carry over).
fn wrap(source: Arc<dyn FileSource>, batch_size: Option<usize>) -> Option<Arc<dyn FileSource>> {
    let parquet = source.as_any().downcast_ref::<ParquetSource>()?;
    if parquet.table_parquet_options().crypto.factory_id.is_some() {
        return None;
    }
    Some(Arc::new(PerFileMetrics {
        plan: parquet.clone(),
        batch_size,
    }))
}

/// A `ParquetSource` that opens each file with a copy of itself holding metrics of its own.
#[derive(Clone)]
pub struct PerFileMetrics {
    /// The plan's source: its options, predicate and projection, and the scan's metrics.
    plan: ParquetSource,
    /// As set by the scan when it starts (`FileSource::with_batch_size`).
    batch_size: Option<usize>,
}

impl PerFileMetrics {
    /// A source like the plan's, with a metrics set of its own.
    fn for_one_file(&self) -> DFResult<Arc<dyn FileSource>> {
        let factory = self.plan.parquet_file_reader_factory().cloned();
        let fresh = self.copy(self.plan.table_schema().clone(), factory)?;
        Ok(match self.batch_size {
            Some(size) => fresh.with_batch_size(size),
            None => fresh,
        })
    }

    /// The plan's source with `schema` and `factory` (its options, predicate and projection
    /// carried over), and a metrics set of its own.
    fn copy(
        &self,
        schema: TableSchema,
        factory: Option<Arc<dyn ParquetFileReaderFactory>>,
    ) -> DFResult<Arc<dyn FileSource>> {
        let options = self.plan.table_parquet_options();
        let mut fresh = ParquetSource::new(schema).with_table_parquet_options(options.clone());
        if let Some(factory) = factory {
            fresh = fresh.with_parquet_file_reader_factory(factory);
        }
        if let Some(hint) = options.global.metadata_size_hint {
            fresh = fresh.with_metadata_size_hint(hint);
        }
        if let Some(predicate) = self.plan.filter() {
            fresh = fresh.with_predicate(predicate);
        }
        let mut fresh: Arc<dyn FileSource> = Arc::new(fresh);
        if let Some(projection) = self.plan.projection()
            && let Some(projected) = fresh.try_pushdown_projection(projection)?
        {
            fresh = projected;
        }
        Ok(fresh)
    }

    /// This source with the string columns of the table named in `columns` read as
    /// dictionaries (`dictionaries.rs`): the table schema says `Dictionary(Int32, Utf8)` for
    /// them, and every file's footer asks the Parquet reader for it. `None` if the source has
    /// no reader factory to wrap (the plan's always has one: the footer cache's).
    pub fn reading_dictionaries(&self, columns: &[String]) -> DFResult<Option<PerFileMetrics>> {
        let Some(factory) = self.plan.parquet_file_reader_factory().cloned() else {
            return Ok(None);
        };
        let table = self.plan.table_schema();
        let fields: Vec<Field> = table
            .file_schema()
            .fields()
            .iter()
            .map(|f| match columns.contains(f.name()) {
                true => f.as_ref().clone().with_data_type(dictionary_of_strings()),
                false => f.as_ref().clone(),
            })
            .collect();
        let file_schema = Schema::new_with_metadata(fields, table.file_schema().metadata().clone());
        let schema = TableSchema::new(Arc::new(file_schema), table.table_partition_cols().clone());
        let hinted = Arc::new(DictionaryHint::new(factory, columns.to_vec()));
        let copied = self.copy(schema, Some(hinted))?;
        let Some(plan) = copied.as_any().downcast_ref::<ParquetSource>() else {
            return Ok(None);
        };
        Ok(Some(PerFileMetrics {
            plan: plan.clone(),
            batch_size: self.batch_size,
        }))
    }

    fn rewrapped(&self, source: Arc<dyn FileSource>) -> Arc<dyn FileSource> {
        wrap(source.clone(), self.batch_size).unwrap_or(source)
    }
}

impl FileSource for PerFileMetrics {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition: usize,
    ) -> DFResult<Arc<dyn FileOpener>> {
        // What `ParquetSource` takes from the scan's configuration, without its file list.
        let config = FileScanConfigBuilder::new(
            base_config.object_store_url.clone(),
            base_config.file_source.clone(),
        )
        .with_limit(base_config.limit)
        .with_preserve_order(base_config.preserve_order)
        .with_expr_adapter(base_config.expr_adapter_factory.clone())
        .build();
        Ok(Arc::new(PerFileOpener {
            source: self.clone(),
            object_store,
            config,
            partition,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_schema(&self) -> &TableSchema {
        self.plan.table_schema()
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(Self {
            plan: self.plan.clone(),
            batch_size: Some(batch_size),
        })
    }

    fn filter(&self) -> Option<Arc<dyn PhysicalExpr>> {
        self.plan.filter()
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        self.plan.projection()
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        self.plan.metrics()
    }

    fn file_type(&self) -> &str {
        self.plan.file_type()
    }

    fn fmt_extra(&self, t: DisplayFormatType, f: &mut Formatter) -> std::fmt::Result {
        self.plan.fmt_extra(t, f)
    }

    fn supports_repartitioning(&self) -> bool {
        self.plan.supports_repartitioning()
    }

    fn try_pushdown_filters(
        &self,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> DFResult<FilterPushdownPropagation<Arc<dyn FileSource>>> {
        let mut pushed = self.plan.try_pushdown_filters(filters, config)?;
        pushed.updated_node = pushed.updated_node.map(|s| self.rewrapped(s));
        Ok(pushed)
    }

    /// Declined: the only order `ParquetSource` offers is reading row groups in reverse (an
    /// inexact order, whose sort stays), which its copies could not carry. Floe's scans declare
    /// no output order, so this loses at most the speed of `ORDER BY c DESC` where a filter
    /// makes `c` constant.
    fn try_pushdown_sort(
        &self,
        _order: &[PhysicalSortExpr],
        _eq_properties: &EquivalenceProperties,
    ) -> DFResult<SortOrderPushdownResult<Arc<dyn FileSource>>> {
        Ok(SortOrderPushdownResult::Unsupported)
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> DFResult<Option<Arc<dyn FileSource>>> {
        Ok(self
            .plan
            .try_pushdown_projection(projection)?
            .map(|s| self.rewrapped(s)))
    }
}

/// Opens each file of one partition with its own `ParquetSource` (and so its own metrics).
struct PerFileOpener {
    source: PerFileMetrics,
    object_store: Arc<dyn ObjectStore>,
    config: FileScanConfig,
    partition: usize,
}

impl FileOpener for PerFileOpener {
    fn open(&self, file: PartitionedFile) -> DFResult<FileOpenFuture> {
        self.source
            .for_one_file()?
            .create_file_opener(self.object_store.clone(), &self.config, self.partition)?
            .open(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    /// Metrics labelled with a file's name, anywhere in `plan`.
    fn per_file_metrics_in(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut n = 0;
        plan.apply(|node| {
            if let Some(metrics) = node.metrics() {
                n += metrics
                    .iter()
                    .filter(|m| m.labels().iter().any(|l| l.name() == "filename"))
                    .count();
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        n
    }

    fn scan_source(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn FileSource> {
        let mut found = None;
        plan.apply(|node| {
            if let Some(config) = crate::scan::file_scan(node.as_ref()) {
                found = Some(config.file_source.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        found.unwrap()
    }

    #[tokio::test]
    async fn files_read_alike_and_their_metrics_leave_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        for i in 0..4 {
            let path = dir.path().join(format!("{i}.parquet"));
            ctx.sql(&format!(
                "SELECT {i} * 10 + x AS n, 'f{i}' AS f, x * 2 AS unused FROM (VALUES (1), (2), (3)) t(x)"
            ))
            .await
            .unwrap()
            .write_parquet(path.to_str().unwrap(), DataFrameWriteOptions::new(), None)
            .await
            .unwrap();
        }
        ctx.register_parquet(
            "t",
            dir.path().to_str().unwrap(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
        let sql = "SELECT f, sum(n) FROM t WHERE n > 11 GROUP BY f ORDER BY f";
        let plan = || async {
            ctx.sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap()
        };
        let plain = plan().await;
        // From a plan of its own: the wrapper keeps the plan's set for the scan's own metrics.
        let ours = plan()
            .await
            .transform_up(|node| Ok(Transformed::yes(per_file_metrics(node))))
            .unwrap()
            .data;

        // The filter and the projection DataFusion pushed into its source are carried over.
        let source = scan_source(&ours);
        assert!(source.as_any().is::<PerFileMetrics>());
        assert!(source.filter().is_some());
        assert_eq!(
            source.projection().map(|p| p.as_ref().len()),
            scan_source(&plain).projection().map(|p| p.as_ref().len())
        );

        let expected = collect(plain.clone(), ctx.task_ctx()).await.unwrap();
        let got = collect(ours.clone(), ctx.task_ctx()).await.unwrap();
        let table = pretty_format_batches(&got).unwrap().to_string();
        assert_eq!(pretty_format_batches(&expected).unwrap().to_string(), table);
        assert!(table.contains("| f1 | 25 "), "{table}");
        // DataFusion's own source keeps dozens of metrics per file for the plan's life (its
        // opener's and its reader's); this one none.
        assert!(per_file_metrics_in(&plain) >= 4 * 17);
        assert_eq!(per_file_metrics_in(&ours), 0);
    }
}
