//! Iceberg manifests by path, read once per process: shared by every query session and by
//! table maintenance (compaction's planning and commits, expiry, projection refreshes), and
//! bounded by the memory they hold.
//!
//! A table of many small commits has thousands of manifests, and decoding one (its Avro
//! header's schema is parsed anew for every file) costs far more than the few entries it
//! holds: `floe compact` of a 5,000-commit table decoded each of its 5,000 manifests once to
//! plan, once more for each bin's commit and once more for expiry before they shared this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, Datum, Manifest, ManifestEntry, ManifestFile, ManifestStatus, PrimitiveLiteral,
};
use iceberg::table::Table;

use crate::fair_lru::FairLru;

/// Manifests read at once.
const READ_CONCURRENCY: usize = 16;

/// Manifests by path. A manifest never changes once written, so a cached copy is never stale.
/// The cache holds at most `max_bytes` of manifests in all (as estimated by
/// [`manifest_bytes`]), kept per tenant (the folder that holds the table) as [`FairLru`] does:
/// one tenant's scans of a table of many manifests cannot push every other tenant's out. A
/// manifest asked for while it is being read is read once: the later callers wait for that read
/// (queries planning the same table at once, a compaction's planning beside them).
pub struct ManifestCache {
    state: Mutex<CacheState>,
    /// Manifests read from storage (not found in the cache).
    read: AtomicU64,
}

struct CacheState {
    /// Each manifest, of its table's tenant, with its estimated bytes.
    kept: FairLru<Arc<Manifest>>,
    /// Reads under way, by path. A caller that finds one waits for it; when the reader gave
    /// up (its query was cancelled) or failed, a waiter reads in its place.
    reading: HashMap<String, Arc<tokio::sync::OnceCell<Arc<Manifest>>>>,
}

impl ManifestCache {
    pub fn new(max_bytes: usize) -> ManifestCache {
        ManifestCache {
            state: Mutex::new(CacheState {
                kept: FairLru::new(max_bytes),
                reading: HashMap::new(),
            }),
            read: AtomicU64::new(0),
        }
    }

    /// The manifest of `table` that `file` names, from the cache or read (and kept) now.
    pub async fn load(&self, table: &Table, file: &ManifestFile) -> iceberg::Result<Arc<Manifest>> {
        self.load_for(table.file_io(), owner(table), file).await
    }

    /// The manifest `file` names, from the cache or read (and kept, for `owner`) now.
    async fn load_for(
        &self,
        io: &FileIO,
        owner: &str,
        file: &ManifestFile,
    ) -> iceberg::Result<Arc<Manifest>> {
        let path = &file.manifest_path;
        let read = {
            let Ok(mut state) = self.state.lock() else {
                return read_manifest(io, file).await.map(Arc::new);
            };
            if let Some(m) = state.kept.get(path) {
                return Ok(m);
            }
            state.reading.entry(path.clone()).or_default().clone()
        };
        let manifest = read
            .get_or_try_init(|| async {
                let m = read_manifest(io, file).await?;
                self.read.fetch_add(1, Ordering::Relaxed);
                Ok::<_, iceberg::Error>(Arc::new(m))
            })
            .await?
            .clone();
        if let Ok(mut state) = self.state.lock() {
            // Kept before the read is forgotten, so that no caller in between reads it again.
            state.put(path, owner, manifest.clone());
            if state
                .reading
                .get(path)
                .is_some_and(|r| Arc::ptr_eq(r, &read))
            {
                state.reading.remove(path);
            }
        }
        Ok(manifest)
    }

    /// Manifests read from storage so far (the others came from the cache).
    pub fn manifests_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The manifests of `table` that `files` name, in their order; those not cached are read
    /// concurrently. The caller holds every one until it drops the result, whatever the cache
    /// drops.
    pub async fn load_all<'a>(
        &self,
        table: &Table,
        files: impl IntoIterator<Item = &'a ManifestFile>,
    ) -> iceberg::Result<Vec<Arc<Manifest>>> {
        let (io, owner) = (table.file_io(), owner(table));
        // Collected first: a lazy map's closure in the future would make it not `Send`.
        let loads: Vec<_> = files
            .into_iter()
            .map(|f| self.load_for(io, owner, f))
            .collect();
        futures::stream::iter(loads)
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Estimated bytes held now.
    pub fn bytes(&self) -> usize {
        self.state.lock().map_or(0, |s| s.kept.bytes())
    }
}

impl CacheState {
    /// Keeps `manifest` for `owner` unless it is kept already (a manifest never changes).
    fn put(&mut self, path: &str, owner: &str, manifest: Arc<Manifest>) {
        if !self.kept.contains_key(path) {
            let bytes = manifest_bytes(&manifest);
            self.kept.insert(path, owner, manifest, bytes);
        }
    }
}

/// Whose a table's manifests are in the cache: the folder that holds the table (in Floe's
/// warehouse, `<warehouse>/<tenant>`: its tenant).
fn owner(table: &Table) -> &str {
    folder_of(table.metadata().location())
}

/// The folder holding the table at `location`.
fn folder_of(location: &str) -> &str {
    let location = location.trim_end_matches('/');
    location
        .rsplit_once('/')
        .map_or(location, |(folder, _)| folder)
}

/// Reads the manifest `file` names. Its bytes are decoded on a blocking thread of the runtime
/// that reads: decoding is CPU work (mostly Avro, the file's schema parsed anew each time), and
/// a table of many small commits has thousands of manifests, which then decode on every core
/// instead of the one thread polling the reads. What iceberg-rust's own
/// [`ManifestFile::load_manifest`] does, which also decodes encrypted manifests (Floe writes
/// none; they go to it).
async fn read_manifest(io: &FileIO, file: &ManifestFile) -> iceberg::Result<Manifest> {
    if file.key_metadata.is_some() {
        return file.load_manifest(io).await;
    }
    let bytes = io.new_input(&file.manifest_path)?.read().await?;
    let list_entry = file.clone();
    tokio::task::spawn_blocking(move || {
        let (entries, metadata) = Manifest::parse_avro(&bytes)?.into_parts();
        let entries = entries
            .into_iter()
            .map(|e| {
                let mut e = Arc::unwrap_or_clone(e);
                inherit(&mut e, &list_entry);
                e
            })
            .collect();
        Ok(Manifest::new(metadata, entries))
    })
    .await
    .map_err(|e| {
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            format!("decoding manifest {}: {e}", file.manifest_path),
        )
    })?
}

/// Sequence number inheritance (Iceberg spec, "Sequence Number Inheritance"): an entry's
/// missing snapshot id is the one that added its manifest; its missing data and file sequence
/// numbers are the manifest's when the entry was added by it (or the table predates sequence
/// numbers, 0).
fn inherit(entry: &mut ManifestEntry, list_entry: &ManifestFile) {
    entry
        .snapshot_id
        .get_or_insert(list_entry.added_snapshot_id);
    if entry.status == ManifestStatus::Added || list_entry.sequence_number == 0 {
        entry
            .sequence_number
            .get_or_insert(list_entry.sequence_number);
        entry
            .file_sequence_number
            .get_or_insert(list_entry.sequence_number);
    }
}

/// Bytes of one entry of a statistics map (`i32` to `u64`): the pair, its control byte and the
/// spare room of a hash table at most 7/8 full.
const COUNT_ENTRY_BYTES: usize = 32;

/// Estimated memory a manifest holds once read: for each data file, its entry (about 600
/// bytes), its path, its statistics (per column: sizes, value, null and NaN counts, lower and
/// upper bounds with their strings' or binaries' bytes) and split offsets. An estimate from the
/// structs' sizes and lengths (the allocator's own overhead is not counted); the same manifest
/// always gets the same figure.
pub fn manifest_bytes(m: &Manifest) -> usize {
    std::mem::size_of::<Manifest>()
        + m.entries()
            .iter()
            // The entry (its data file inline) behind an `Arc`, and what the file points to.
            .map(|e| 2 * 8 + std::mem::size_of::<ManifestEntry>() + data_file_heap(e.data_file()))
            .sum::<usize>()
}

fn data_file_heap(f: &DataFile) -> usize {
    let counts = f.column_sizes().len()
        + f.value_counts().len()
        + f.null_value_counts().len()
        + f.nan_value_counts().len();
    let bound = |d: &Datum| {
        COUNT_ENTRY_BYTES
            + std::mem::size_of::<Datum>()
            + match d.literal() {
                PrimitiveLiteral::String(s) => s.len(),
                PrimitiveLiteral::Binary(b) => b.len(),
                _ => 0,
            }
    };
    let bounds: usize = f
        .lower_bounds()
        .values()
        .chain(f.upper_bounds().values())
        .map(bound)
        .sum();
    f.file_path().len()
        + counts * COUNT_ENTRY_BYTES
        + bounds
        + f.split_offsets().map_or(0, std::mem::size_of_val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{
        DataContentType, DataFileBuilder, DataFileFormat, ManifestContentType, ManifestMetadata,
        ManifestStatus, NestedField, PartitionSpec, PrimitiveType, Schema, Struct, Type,
    };

    /// A table schema of one string column.
    fn one_string_column() -> Schema {
        Schema::builder()
            .with_fields(vec![Arc::new(NestedField::required(
                1,
                "x",
                Type::Primitive(PrimitiveType::String),
            ))])
            .build()
            .unwrap()
    }

    /// A manifest of `files` data files, each with statistics for `columns` columns and string
    /// bounds of `bound_len` bytes.
    fn manifest(files: usize, columns: i32, bound_len: usize) -> Arc<Manifest> {
        let schema = one_string_column();
        let metadata = ManifestMetadata::builder()
            .schema(Arc::new(schema))
            .schema_id(0)
            .partition_spec(PartitionSpec::unpartition_spec())
            .format_version(iceberg::spec::FormatVersion::V2)
            .content(ManifestContentType::Data)
            .build();
        let stats: HashMap<i32, u64> = (1..=columns).map(|c| (c, 10)).collect();
        let bounds: HashMap<i32, Datum> = (1..=columns)
            .map(|c| (c, Datum::string("b".repeat(bound_len))))
            .collect();
        let entries = (0..files)
            .map(|i| {
                let data = DataFileBuilder::default()
                    .content(DataContentType::Data)
                    .file_path(format!("f{i}"))
                    .file_format(DataFileFormat::Parquet)
                    .partition(Struct::empty())
                    .record_count(1)
                    .file_size_in_bytes(1)
                    .column_sizes(stats.clone())
                    .value_counts(stats.clone())
                    .null_value_counts(stats.clone())
                    .lower_bounds(bounds.clone())
                    .upper_bounds(bounds.clone())
                    .build()
                    .unwrap();
                ManifestEntry::builder()
                    .status(ManifestStatus::Added)
                    .data_file(data)
                    .build()
            })
            .collect();
        Arc::new(Manifest::new(metadata, entries))
    }

    #[test]
    fn a_tables_manifests_belong_to_the_folder_holding_it() {
        assert_eq!(folder_of("s3://b/w/acme/events"), "s3://b/w/acme");
        assert_eq!(folder_of("file:///w/acme/events/"), "file:///w/acme");
    }

    #[test]
    fn a_manifest_costs_more_with_more_files_columns_and_longer_bounds() {
        let base = manifest_bytes(&manifest(10, 5, 8));
        assert!(manifest_bytes(&manifest(20, 5, 8)) > base);
        assert!(manifest_bytes(&manifest(10, 10, 8)) > base);
        assert_eq!(
            manifest_bytes(&manifest(10, 5, 108)) - base,
            10 * 5 * 2 * 100,
            "each bound's string bytes count"
        );
        // Ten files of five columns' statistics: several KiB, not a few bytes per file.
        assert!(base > 10 * 5 * 5 * COUNT_ENTRY_BYTES, "{base}");
    }

    /// A manifest of one data file written under `dir`, as a manifest list names it.
    async fn written(dir: &std::path::Path, io: &FileIO) -> ManifestFile {
        let schema = one_string_column();
        let path = format!("{}/m0.avro", dir.display());
        let mut writer = iceberg::spec::ManifestWriterBuilder::new(
            io.new_output(&path).unwrap(),
            Some(1),
            Arc::new(schema),
            PartitionSpec::unpartition_spec(),
        )
        .build_v2_data();
        let data = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!("{}/f0.parquet", dir.display()))
            .file_format(DataFileFormat::Parquet)
            .partition(Struct::empty())
            .record_count(1)
            .file_size_in_bytes(1)
            .build()
            .unwrap();
        writer.add_file(data, 1).unwrap();
        writer.write_manifest_file().await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_manifest_asked_for_by_many_at_once_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let io =
            iceberg::io::FileIOBuilder::new(Arc::new(iceberg::io::LocalFsStorageFactory)).build();
        let file = written(dir.path(), &io).await;
        let cache = ManifestCache::new(1 << 20);
        let loads = (0..8).map(|_| cache.load_for(&io, "t", &file));
        let manifests = futures::future::try_join_all(loads).await.unwrap();
        assert_eq!(cache.manifests_read(), 1, "eight callers at once, one read");
        assert!(manifests.iter().all(|m| Arc::ptr_eq(m, &manifests[0])));
        assert_eq!(manifests[0].entries().len(), 1);
        // Later callers find it kept; a cache that keeps nothing reads it again each time.
        cache.load_for(&io, "t", &file).await.unwrap();
        assert_eq!(cache.manifests_read(), 1);
        let keeps_nothing = ManifestCache::new(0);
        keeps_nothing.load_for(&io, "t", &file).await.unwrap();
        keeps_nothing.load_for(&io, "t", &file).await.unwrap();
        assert_eq!(keeps_nothing.manifests_read(), 2);
    }
}
