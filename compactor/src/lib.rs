//! Compaction: rewriting a table's small files into few large ones, sorted by `(type, ts)`.
//!
//! Per partition, files below the target size are packed into bins of about the target size
//! (largest first, each into the first bin with room). Each bin streams through DataFusion: a
//! Parquet scan of its files, a sort that spills to disk past `compaction.memory_limit_bytes`,
//! and iceberg-rust's Parquet writer, rolling over at the target size. Bins are committed
//! `compaction.bins_per_commit` at a time as one Iceberg `replace` snapshot
//! (`floe_catalog::rewrite`), which checks that their input files are still live and carries
//! appends that landed meanwhile; bins whose inputs are gone are dropped together and their new
//! files deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::prelude::SessionConfig;
use floe_catalog::config::CompactionConfig;
use floe_catalog::schema::promote;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, TenantId};
use futures::StreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};

pub mod backfill;
mod bins;
pub mod erasure;
pub mod maintain;
pub mod projection;
mod whole_files;

pub use bins::{BinDone, Rewritten};
pub use erasure::RowFilter;

/// Errors of the compactor. Each says, through [`Error::kind`], whether the next run can get
/// past it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] floe_catalog::Error),

    #[error("{context}: {source}")]
    Iceberg {
        context: &'static str,
        #[source]
        source: Box<iceberg::Error>,
    },

    #[error("rewriting {table}: {source}")]
    DataFusion {
        table: String,
        #[source]
        source: Box<datafusion::error::DataFusionError>,
    },

    /// Reading or listing an object in the warehouse failed.
    #[error("{action} {object}: {message}")]
    Storage {
        action: &'static str,
        object: String,
        message: String,
    },

    /// A table kept changing under a maintenance step (commits of other writers won, or the
    /// files it works on were replaced): nothing was committed; the next run tries again.
    #[error("{table}: {what}; the next run tries again")]
    KeptChanging { table: String, what: &'static str },

    /// A setting or an input that cannot work, whatever the retries.
    #[error("{0}")]
    Invalid(String),

    /// The threads a rewrite reads on could not be started (the process is at its limit of
    /// threads or memory); a later run may find them.
    #[error("starting a rewrite's threads: {0}")]
    Threads(String),
}

impl Error {
    pub fn kind(&self) -> floe_catalog::ErrorKind {
        use floe_catalog::ErrorKind as K;
        match self {
            Error::Catalog(e) => e.kind(),
            Error::Iceberg { .. } | Error::Storage { .. } | Error::Threads(_) => K::Unavailable,
            Error::DataFusion { source, .. } => match source.find_root() {
                datafusion::error::DataFusionError::ResourcesExhausted(_)
                | datafusion::error::DataFusionError::IoError(_)
                | datafusion::error::DataFusionError::ObjectStore(_) => K::Unavailable,
                _ => K::Internal,
            },
            Error::KeptChanging { .. } => K::CommitConflict,
            Error::Invalid(_) => K::InvalidInput,
        }
    }

    /// As a catalog error (for the HTTP edge's one table of statuses): a catalog error as it
    /// is, a refusal as invalid input, anything else as internal.
    pub fn into_catalog(self) -> floe_catalog::Error {
        match self {
            Error::Catalog(e) => e,
            Error::Invalid(m) => floe_catalog::Error::invalid(m),
            other => floe_catalog::Error::internal(other.to_string()),
        }
    }

    /// Whether the same step may succeed on a later run.
    pub fn retryable(&self) -> bool {
        self.kind().retryable()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn ice(context: &'static str) -> impl FnOnce(iceberg::Error) -> Error {
    move |source| Error::Iceberg {
        context,
        source: Box::new(source),
    }
}

/// One input file of a bin.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: String,
    pub bytes: u64,
    pub rows: u64,
    /// The field ids the file's manifest entry counts values of: the columns it was written
    /// with (a column added later is not among them).
    pub columns: Arc<[i32]>,
}

impl InputFile {
    /// The input that `file` (a live data file of a table) is.
    pub fn of(file: &DataFile) -> InputFile {
        let mut columns: Vec<i32> = file.value_counts().keys().copied().collect();
        columns.sort_unstable();
        InputFile {
            path: file.file_path().to_string(),
            bytes: file.file_size_in_bytes(),
            rows: file.record_count(),
            columns: columns.into(),
        }
    }

    /// Whether the file lacks a column of `schema` (it was written before the column was
    /// added): rewriting it fills the promoted properties from the payloads.
    pub fn lacks_columns(&self, schema: &iceberg::spec::Schema) -> bool {
        schema
            .as_struct()
            .fields()
            .iter()
            .any(|f| self.columns.binary_search(&f.id).is_err())
    }
}

/// Files of one partition rewritten together.
#[derive(Debug, Clone)]
pub struct Bin {
    pub partition: Struct,
    pub files: Vec<InputFile>,
    /// Output files roll over at this size.
    pub target: u64,
}

impl Bin {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// What one table looks like, and what compaction would do to it.
#[derive(Debug, Clone, Default)]
pub struct TablePlan {
    pub files: usize,
    pub bytes: u64,
    pub partitions: usize,
    pub bins: Vec<Bin>,
    /// Live files and bytes per partition (`ts_day=…`), before compaction.
    pub partition_stats: Vec<PartitionStat>,
}

/// Files and bytes of one partition.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartitionStat {
    pub partition: String,
    pub files: usize,
    pub bytes: u64,
}

/// Packs the small files of each partition into bins of about `target` bytes. Bins of one
/// file are left out: rewriting a file alone gains nothing.
pub fn plan(files: Vec<(Struct, InputFile)>, target: u64) -> TablePlan {
    let mut plan = TablePlan {
        files: files.len(),
        bytes: files.iter().map(|(_, f)| f.bytes).sum(),
        ..TablePlan::default()
    };
    let mut by_partition: HashMap<Struct, Vec<InputFile>> = HashMap::new();
    for (partition, file) in files {
        by_partition.entry(partition).or_default().push(file);
    }
    plan.partitions = by_partition.len();
    let mut partitions: Vec<(Struct, Vec<InputFile>)> = by_partition.into_iter().collect();
    partitions.sort_by_key(|(p, _)| format!("{p:?}"));
    for (partition, mut files) in partitions {
        files.retain(|f| f.bytes < target);
        plan.bins.extend(
            pack(files, target)
                .into_iter()
                .filter(|b| b.len() > 1)
                .map(|files| Bin {
                    partition: partition.clone(),
                    files,
                    target,
                }),
        );
    }
    plan
}

/// Packs files into bins of about `target` bytes: largest first, each into the first bin with
/// room (a file larger than the target gets a bin of its own).
fn pack(mut files: Vec<InputFile>, target: u64) -> Vec<Vec<InputFile>> {
    files.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
    let mut bins: Vec<Vec<InputFile>> = Vec::new();
    let mut room: Vec<u64> = Vec::new();
    for file in files {
        match room.iter().position(|r| *r >= file.bytes) {
            Some(i) => {
                room[i] -= file.bytes;
                bins[i].push(file);
            }
            None => {
                room.push(target.saturating_sub(file.bytes));
                bins.push(vec![file]);
            }
        }
    }
    bins
}

/// Compacts one tenant's tables with `config`.
pub struct Compactor {
    catalog: Catalog,
    config: CompactionConfig,
    /// Where rewrites spill: this process' directory under it (`floe_query::spill`), or the
    /// system's temporary directory if `None`.
    spill_root: Option<PathBuf>,
    /// Brought up to date by an erasure before it expires the old snapshots of `events`.
    projections: Option<projection::Refresher>,
}

impl Compactor {
    pub fn new(catalog: Catalog, config: CompactionConfig) -> Compactor {
        Compactor {
            catalog,
            config,
            spill_root: None,
            projections: None,
        }
    }

    /// Rewrites spill into this process' directory under `root` (`<data_dir>/spill`), made
    /// now (and the directories of processes gone removed).
    pub fn spilling_into(mut self, root: PathBuf) -> Result<Compactor> {
        if self.config.spill_total_bytes > 0 {
            floe_query::spill::process_dir(&root)?;
        }
        self.spill_root = Some(root);
        Ok(self)
    }

    /// Refreshes the tenant's projections during an erasure, after the rows are gone and before
    /// the snapshots that held them expire: the refresh then follows the erasure's commits
    /// instead of recomputing every day from all events.
    pub fn with_projections(mut self, refresher: projection::Refresher) -> Compactor {
        self.projections = Some(refresher);
        self
    }

    /// The plan for one table as it is now.
    pub async fn plan_table(&self, tenant: &TenantId, table: &str) -> Result<TablePlan> {
        self.plan_table_for(tenant, table, self.config.target_file_bytes)
            .await
    }

    /// The plan for one table with a target file size of `target` bytes.
    pub async fn plan_table_for(
        &self,
        tenant: &TenantId,
        table: &str,
        target: u64,
    ) -> Result<TablePlan> {
        let t = self.catalog.load_table(tenant, table).await?;
        if !floe_catalog::table::reads_by_name(t.metadata()) {
            // Rewriting maps columns by name, exact only when a name never changed its field.
            tracing::warn!(%tenant, table, "a column name changed its field id; not compacting");
            return Ok(TablePlan::default());
        }
        let inputs = parquet_inputs(&self.catalog, &t).await?;
        let mut stats: std::collections::BTreeMap<String, PartitionStat> = Default::default();
        for (partition, file) in &inputs {
            let name = partition_text(&t, partition);
            let stat = stats.entry(name.clone()).or_insert_with(|| PartitionStat {
                partition: name,
                ..PartitionStat::default()
            });
            stat.files += 1;
            stat.bytes += file.bytes;
        }
        let mut plan = plan(inputs, target);
        plan.partition_stats = stats.into_values().collect();
        Ok(plan)
    }

    /// Streams one rewrite reads its files with (`compaction.read_parallelism`, 0: the cores),
    /// at most one per [`MEMORY_PER_STREAM`] of `compaction.memory_limit_bytes`.
    fn read_streams(&self) -> usize {
        let wanted = match self.config.read_parallelism {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        wanted
            .min(self.config.memory_limit_bytes / MEMORY_PER_STREAM)
            .max(1)
    }

    /// Reads `files` (of one partition) sorted by `(type, ts)`, without the rows `drop` marks,
    /// and writes them as files of about `target` bytes in that partition.
    pub(crate) async fn rewrite(
        &self,
        table: &Table,
        partition: &Struct,
        files: &[InputFile],
        target: u64,
        drop: Option<&RowFilter>,
    ) -> Result<Vec<DataFile>> {
        let name = table.identifier().to_string();
        let spill_total = self.config.spill_total_bytes;
        let df = |source: datafusion::error::DataFusionError| {
            let source = if floe_query::spill::exceeded(&source.to_string()) {
                datafusion::error::DataFusionError::ResourcesExhausted(format!(
                    "the rewrite's sort would spill more than compaction.spill_total_bytes \
                     ({spill_total} bytes) to disk; the next run tries again (raise it, or \
                     compaction.memory_limit_bytes)"
                ))
            } else {
                source
            };
            Error::DataFusion {
                table: name.clone(),
                source: Box::new(source),
            }
        };
        let metadata = table.metadata();
        let schema = metadata.current_schema().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(ice("arrow schema"))?);

        let store = self.catalog.data_store();
        let store_url = ObjectStoreUrl::parse(&store.url).map_err(df)?;
        // The sorts of the streams share the rewrite's memory evenly, each spilling past its
        // share (a greedy pool would refuse a sort that has nothing to spill yet).
        let mut runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.config.memory_limit_bytes)))
            .build()
            .map_err(df)?;
        runtime.disk_manager =
            floe_query::spill::manager(self.spill_root.as_deref(), self.config.spill_total_bytes)?;
        let runtime = Arc::new(runtime);
        if let Some(s) = &store.store {
            runtime.register_object_store(store_url.as_ref(), s.clone());
        }
        let task = Arc::new(
            TaskContext::default()
                .with_runtime(runtime)
                .with_session_config(SessionConfig::new().with_target_partitions(1)),
        );
        let files_in = files;
        let files = files
            .iter()
            .map(|f| {
                let key = store.key(&f.path).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{} is outside the warehouse ({})",
                        f.path, store.url
                    ))
                })?;
                Ok(PartitionedFile::new(key, f.bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        // Files small enough are read whole in one request (two files a stream at most are
        // held: the one read and the next one opened).
        let whole = Arc::new(whole_files::WholeFiles::new(
            store.object_store(),
            (MEMORY_PER_STREAM / 16) as u64,
        ));
        let scan = |groups: Vec<FileGroup>| {
            let source = Arc::new(
                ParquetSource::new(TableSchema::from(arrow_schema.clone()))
                    .with_parquet_file_reader_factory(whole.clone()),
            );
            // Each file's reader metrics go with the file (a bin can hold thousands).
            floe_query::scan::per_file_metrics(DataSourceExec::from_data_source(
                FileScanConfigBuilder::new(store_url.clone(), source)
                    .with_file_groups(groups)
                    .build(),
            ))
        };
        // Events are sorted by (type, ts): the files are read and sorted in groups side by
        // side, one stream per core, and the sorted groups merged. A table without those
        // columns (dead letters) is rewritten in its order, by one stream.
        let ordering = ["type", "ts"]
            .iter()
            .filter(|c| arrow_schema.column_with_name(c).is_some())
            .map(|c| Ok(PhysicalSortExpr::new_default(col(c, &arrow_schema)?)))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(df)?;
        let (plan, streams): (Arc<dyn ExecutionPlan>, usize) = match LexOrdering::new(ordering) {
            Some(ordering) => {
                let groups = balanced_groups(files, self.read_streams());
                let streams = groups.len();
                let sorted = Arc::new(
                    SortExec::new(ordering.clone(), scan(groups)).with_preserve_partitioning(true),
                );
                if streams > 1 {
                    let merged = Arc::new(SortPreservingMergeExec::new(ordering, sorted));
                    (merged, streams)
                } else {
                    (sorted, 1)
                }
            }
            None => (scan(vec![FileGroup::new(files)]), 1),
        };

        let level = ZstdLevel::try_new(self.config.zstd_level)
            .map_err(|e| Error::Invalid(format!("compaction.zstd_level: {e}")))?;
        let props = floe_catalog::table::data_file_properties(
            Compression::ZSTD(level),
            floe_catalog::table::FileWriter::Rewrite,
            &schema,
        );
        let location =
            DefaultLocationGenerator::new(metadata).map_err(ice("location generator"))?;
        let names = DefaultFileNameGenerator::new(
            format!("{}", uuid::Uuid::now_v7()),
            Some("compacted".to_string()),
            DataFileFormat::Parquet,
        );
        let rolling = RollingFileWriterBuilder::new(
            ParquetWriterBuilder::new(props, schema.clone()),
            target as usize,
            table.file_io().clone(),
            location,
            names,
        );
        let key = PartitionKey::new(
            metadata.default_partition_spec().as_ref().clone(),
            schema,
            partition.clone(),
        );
        let mut writer = DataFileWriterBuilder::new(rolling)
            .build(Some(key))
            .await
            .map_err(ice("data writer"))?;
        // Files written before a property was promoted hold no value for it: fill it in.
        // (Judged against the schema written with, which may be newer than the one the bin was
        // planned with: a promotion may have landed in between.)
        let fill = table.identifier().name() == EVENTS_TABLE
            && files_in
                .iter()
                .any(|f| f.lacks_columns(metadata.current_schema()));
        // Read only once the writer stands: a writer that cannot be made reads nothing.
        let mut batches = apart(plan, task, streams)?;
        while let Some(batch) = batches.next().await {
            let mut batch = batch.map_err(df)?;
            if fill {
                batch = promote::fill(batch)?;
            }
            if let Some(drop) = drop {
                batch = drop.apply(&batch)?;
                if batch.num_rows() == 0 {
                    continue;
                }
            }
            writer.write(batch).await.map_err(ice("writing parquet"))?;
        }
        writer.close().await.map_err(ice("closing parquet"))
    }
}

/// Deletes files no commit took (best effort: orphan cleanup finds any left).
pub(crate) async fn delete_uncommitted(catalog: &Catalog, paths: &[String]) {
    for p in paths {
        if let Err(e) = catalog.file_io().delete(p).await {
            tracing::warn!(file = %p, error = %e, "could not delete an uncommitted file");
        }
    }
}

/// What becomes of the files a commit would have added when the commit failed with an error
/// (not a race lost to another writer, not inputs gone). A failed metadata swap leaves the
/// outcome unknown (`floe_catalog::Error::OutcomeUnknown`): the database may have applied it and
/// lost only its reply, or apply a timed-out one later, and deleting the files then would leave
/// the table naming files that are gone. So after such an error they are kept while the table
/// exists (or cannot be looked up): orphan cleanup deletes them once no snapshot reaches them
/// and they are older than `compaction.orphan_min_age_secs`. Any other error came before the
/// swap, and a table (or tenant) that is gone has no orphan cleanup and took nothing: the files
/// are deleted.
pub(crate) async fn after_failed_commit(
    catalog: &Catalog,
    tenant: &TenantId,
    table: &str,
    paths: &[String],
    error: &floe_catalog::Error,
) {
    let gone = |e: &floe_catalog::Error| e.kind() == floe_catalog::ErrorKind::NotFound;
    let may_have_landed = error.outcome_unknown()
        && !matches!(catalog.load_table(tenant, table).await, Err(e) if gone(&e));
    if may_have_landed {
        tracing::warn!(%tenant, table, files = paths.len(), %error,
            "a commit's outcome is unknown; its new files are kept (for orphan cleanup if it did not land)");
    } else {
        delete_uncommitted(catalog, paths).await;
    }
}

/// The least memory a read stream of a rewrite is given (each sort keeps some for its merge).
const MEMORY_PER_STREAM: usize = 64 << 20;

/// The batches of a plan run by [`apart`], in order.
struct Batches {
    rx: tokio::sync::mpsc::Receiver<datafusion::error::Result<RecordBatch>>,
    /// Set by the reading thread once its stream has ended, before it lets go of its sender.
    ended: Arc<AtomicBool>,
}

impl Batches {
    /// The next batch; `None` only when the plan's stream ended. A reading thread that stopped
    /// without its stream ending (it panicked) is an error: a rewrite that took it for the end
    /// would commit a file short of rows.
    async fn next(&mut self) -> Option<datafusion::error::Result<RecordBatch>> {
        match self.rx.recv().await {
            Some(batch) => Some(batch),
            None if self.ended.load(Ordering::Acquire) => None,
            None => Some(Err(datafusion::error::DataFusionError::Execution(
                "the rewrite's reading stopped before the end of its files (see the log for the \
                 panic); nothing was committed, and the next run tries the bin again"
                    .into(),
            ))),
        }
    }
}

/// Runs `plan` on a runtime of its own, `threads` workers on threads of their own, and hands its
/// batches over as they come (two at most waiting): reading, decoding and sorting a bin keep a
/// thread for as long as a batch or a sort takes, and must not keep the threads of the caller's
/// runtime from its other work (`floe serve`'s requests). Reads from S3 still go through the
/// store's own I/O runtime (`floe_catalog::storage`). When the receiver is dropped (the rewrite
/// failed or stopped), the reading stops at its stream's next batch.
fn apart(plan: Arc<dyn ExecutionPlan>, task: Arc<TaskContext>, threads: usize) -> Result<Batches> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let ended = Arc::new(AtomicBool::new(false));
    let end = ended.clone();
    std::thread::Builder::new()
        .name("floe-compact".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .thread_name("floe-compact-read")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut stream = match plan.execute(0, task) {
                    Ok(stream) => stream,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = tx.closed() => return,
                        next = stream.next() => next,
                    };
                    let Some(batch) = next else { break };
                    let failed = batch.is_err();
                    if tx.send(batch).await.is_err() || failed {
                        return;
                    }
                }
                end.store(true, Ordering::Release);
            });
        })
        .map_err(|e| Error::Threads(e.to_string()))?;
    Ok(Batches { rx, ended })
}

/// `files` in at most `streams` groups of about equal bytes (the largest file first into the
/// lightest group), none empty but the one group of no files.
fn balanced_groups(mut files: Vec<PartitionedFile>, streams: usize) -> Vec<FileGroup> {
    if files.is_empty() {
        return vec![FileGroup::new(files)];
    }
    let streams = streams.clamp(1, files.len());
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); streams];
    for f in files {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            lightest.0 += f.object_meta.size;
            lightest.1.push(f);
        }
    }
    groups
        .into_iter()
        .filter(|(_, g)| !g.is_empty())
        .map(|(_, g)| FileGroup::new(g))
        .collect()
}

/// The live Parquet files of a table, with their partitions.
pub(crate) async fn parquet_inputs(
    catalog: &Catalog,
    table: &Table,
) -> Result<Vec<(Struct, InputFile)>> {
    Ok(catalog
        .live_entries(table)
        .await?
        .iter()
        .filter(|e| e.file_format() == DataFileFormat::Parquet)
        .map(|e| {
            (
                e.data_file().partition().clone(),
                InputFile::of(e.data_file()),
            )
        })
        .collect())
}

/// `ts_day=2026-11-24`, as in the data file paths.
fn partition_text(table: &Table, partition: &Struct) -> String {
    let metadata = table.metadata();
    metadata
        .default_partition_spec()
        .partition_to_path(partition, metadata.current_schema().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::Literal;

    fn file(day: i32, name: &str, bytes: u64) -> (Struct, InputFile) {
        (
            Struct::from_iter([Some(Literal::date(day))]),
            InputFile {
                path: name.to_string(),
                bytes,
                rows: 1,
                columns: Arc::from([]),
            },
        )
    }

    #[test]
    fn plan_packs_small_files_per_partition() {
        let files = vec![
            file(1, "a", 60),
            file(1, "b", 50),
            file(1, "c", 40),
            file(1, "d", 30),
            file(1, "big", 100),
            file(2, "e", 10),
            file(2, "f", 10),
            file(3, "alone", 10),
        ];
        let plan = plan(files, 100);
        assert_eq!(plan.files, 8);
        assert_eq!(plan.partitions, 3);
        let bins: Vec<Vec<&str>> = plan
            .bins
            .iter()
            .map(|b| b.files.iter().map(|f| f.path.as_str()).collect())
            .collect();
        // Day 1: 60+40 and 50+30 (the 100-byte file is at target already); day 2: e+f; day 3
        // has one small file only.
        assert_eq!(bins, vec![vec!["a", "c"], vec!["b", "d"], vec!["e", "f"]]);
    }

    /// A reading thread that lets go of its sender without its stream ending (a panic) is an
    /// error for the rewrite, never the end of its rows.
    #[tokio::test]
    async fn reading_that_stops_before_the_end_is_an_error_not_the_end() {
        for (ended, is_end) in [(true, true), (false, false)] {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            drop(tx);
            let mut batches = Batches {
                rx,
                ended: Arc::new(AtomicBool::new(ended)),
            };
            let next = batches.next().await;
            assert_eq!(next.is_none(), is_end);
            if !is_end {
                assert!(matches!(next, Some(Err(_))));
            }
        }
    }

    #[test]
    fn files_are_read_in_groups_of_about_equal_bytes() {
        let files = |sizes: &[u64]| -> Vec<PartitionedFile> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &b)| PartitionedFile::new(format!("f{i}"), b))
                .collect()
        };
        let bytes = |groups: &[FileGroup]| -> Vec<u64> {
            groups
                .iter()
                .map(|g| g.iter().map(|f| f.object_meta.size).sum())
                .collect()
        };
        let groups = balanced_groups(files(&[70, 10, 40, 30, 20, 30]), 2);
        assert_eq!(bytes(&groups), vec![100, 100]);
        assert_eq!(groups.iter().map(FileGroup::len).sum::<usize>(), 6);
        // Fewer files than streams: one group per file, none empty; no files: one empty group.
        assert_eq!(balanced_groups(files(&[5, 6]), 8).len(), 2);
        assert_eq!(balanced_groups(files(&[5]), 0).len(), 1);
        assert_eq!(balanced_groups(Vec::new(), 4).len(), 1);
    }
}
