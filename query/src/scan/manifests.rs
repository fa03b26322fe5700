//! Manifests by path, shared by every session, bounded by the memory they hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use iceberg::spec::{DataFile, Datum, Manifest, ManifestEntry, PrimitiveLiteral};

/// Manifests by path, shared by every session. A manifest never changes once written, so a
/// cached copy is never stale. The cache holds at most `max_bytes` of manifests in all (as
/// estimated by [`manifest_bytes`]) and drops the least recently used past that.
pub struct ManifestCache {
    state: Mutex<CacheState>,
    max_bytes: usize,
}

#[derive(Default)]
struct CacheState {
    /// Each manifest with its estimated bytes and when it was last used.
    manifests: HashMap<String, (Arc<Manifest>, usize, u64)>,
    bytes: usize,
    tick: u64,
}

impl ManifestCache {
    pub fn new(max_bytes: usize) -> ManifestCache {
        ManifestCache {
            state: Mutex::new(CacheState::default()),
            max_bytes,
        }
    }

    pub(super) fn get(&self, path: &str) -> Option<Arc<Manifest>> {
        let mut state = self.state.lock().ok()?;
        state.tick += 1;
        let tick = state.tick;
        let (manifest, _, used) = state.manifests.get_mut(path)?;
        *used = tick;
        Some(manifest.clone())
    }

    pub(super) fn put(&self, path: &str, manifest: Arc<Manifest>) {
        let size = manifest_bytes(&manifest);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if size > self.max_bytes || state.manifests.contains_key(path) {
            return;
        }
        if state.bytes + size > self.max_bytes {
            // Drop the least recently used until an eighth of the room is free.
            let mut by_age: Vec<(u64, String)> = state
                .manifests
                .iter()
                .map(|(k, (_, _, used))| (*used, k.clone()))
                .collect();
            by_age.sort_unstable();
            let goal = (self.max_bytes - self.max_bytes / 8).saturating_sub(size);
            for (_, key) in by_age {
                if state.bytes <= goal {
                    break;
                }
                if let Some((_, bytes, _)) = state.manifests.remove(&key) {
                    state.bytes -= bytes;
                }
            }
        }
        state.tick += 1;
        let tick = state.tick;
        state.bytes += size;
        state
            .manifests
            .insert(path.to_string(), (manifest, size, tick));
    }

    /// Estimated bytes held now.
    pub fn bytes(&self) -> usize {
        self.state.lock().map_or(0, |s| s.bytes)
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

    /// A manifest of `files` data files, each with statistics for `columns` columns and string
    /// bounds of `bound_len` bytes.
    fn manifest(files: usize, columns: i32, bound_len: usize) -> Arc<Manifest> {
        let schema = Schema::builder()
            .with_fields(vec![Arc::new(NestedField::required(
                1,
                "x",
                Type::Primitive(PrimitiveType::String),
            ))])
            .build()
            .unwrap();
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

    #[test]
    fn manifest_cache_keeps_the_recently_used_within_its_bytes() {
        let one = manifest_bytes(&manifest(6, 3, 8));
        let cache = ManifestCache::new(one * 2 + one / 2);
        cache.put("a", manifest(6, 3, 8));
        cache.put("b", manifest(6, 3, 8));
        assert!(cache.get("a").is_some()); // b is now the least recently used
        cache.put("c", manifest(6, 3, 8));
        assert!(
            cache.bytes() <= one * 2 + one / 2,
            "{} bytes held",
            cache.bytes()
        );
        assert!(cache.get("a").is_some());
        assert!(cache.get("b").is_none());
        assert!(cache.get("c").is_some());
        // A manifest larger than the whole cache is not kept (and evicts nothing).
        cache.put("huge", manifest(60, 3, 8));
        assert!(cache.get("huge").is_none());
        assert_eq!(cache.bytes(), one * 2);
    }
}
