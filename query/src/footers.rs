//! The Parquet footers (and page indexes) of the data files queries read, kept across queries
//! and shared by every tenant's: data files never change once written. Bounded by
//! `query.footer_cache_bytes` and kept per tenant as `floe_catalog::fair_lru` does, so that one
//! tenant's scan of a table of many files cannot push out every other tenant's footers
//! (DataFusion's own cache drops the least recently used of all).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::execution::cache::CacheAccessor;
use datafusion::execution::cache::cache_manager::{
    CachedFileMetadataEntry, FileMetadataCache, FileMetadataCacheEntry,
};
use datafusion::object_store::path::Path;
use floe_catalog::fair_lru::FairLru;

/// Footers by object path, for DataFusion's Parquet reader.
#[derive(Debug)]
pub struct FooterCache {
    kept: Mutex<FairLru<Arc<Kept>>>,
}

#[derive(Debug)]
struct Kept {
    entry: CachedFileMetadataEntry,
    hits: AtomicUsize,
}

impl FooterCache {
    pub fn new(max_bytes: usize) -> FooterCache {
        FooterCache {
            kept: Mutex::new(FairLru::new(max_bytes)),
        }
    }

    fn kept(&self) -> MutexGuard<'_, FairLru<Arc<Kept>>> {
        // A panic while the lock was held left the cache whole (every change is one call).
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whose a data file's footer is: the folder holding its table (in Floe's warehouse,
/// `<warehouse>/<tenant>/<table>/data/...`: its tenant).
fn owner(path: &str) -> &str {
    let table = path.rsplit_once("/data/").map_or(path, |(table, _)| table);
    table.rsplit_once('/').map_or(table, |(folder, _)| folder)
}

impl CacheAccessor<Path, CachedFileMetadataEntry> for FooterCache {
    fn get(&self, key: &Path) -> Option<CachedFileMetadataEntry> {
        let kept = self.kept().get(key.as_ref())?;
        kept.hits.fetch_add(1, Ordering::Relaxed);
        Some(kept.entry.clone())
    }

    fn put(&self, key: &Path, value: CachedFileMetadataEntry) -> Option<CachedFileMetadataEntry> {
        let bytes = value.file_metadata.memory_size();
        let kept = Arc::new(Kept {
            entry: value,
            hits: AtomicUsize::new(0),
        });
        let path = key.as_ref();
        let old = self.kept().insert(path, owner(path), kept, bytes);
        old.map(|k| k.entry.clone())
    }

    fn remove(&self, k: &Path) -> Option<CachedFileMetadataEntry> {
        self.kept().remove(k.as_ref()).map(|k| k.entry.clone())
    }

    fn contains_key(&self, k: &Path) -> bool {
        self.kept().contains_key(k.as_ref())
    }

    fn len(&self) -> usize {
        self.kept().len()
    }

    fn clear(&self) {
        self.kept().clear();
    }

    fn name(&self) -> String {
        "FooterCache".to_string()
    }
}

impl FileMetadataCache for FooterCache {
    fn cache_limit(&self) -> usize {
        self.kept().max_bytes()
    }

    fn update_cache_limit(&self, limit: usize) {
        self.kept().set_max_bytes(limit);
    }

    fn list_entries(&self) -> HashMap<Path, FileMetadataCacheEntry> {
        self.kept()
            .iter()
            .map(|(_, kept, bytes)| {
                let entry = FileMetadataCacheEntry {
                    object_meta: kept.entry.meta.clone(),
                    size_bytes: bytes,
                    hits: kept.hits.load(Ordering::Relaxed),
                    extra: kept.entry.file_metadata.extra_info(),
                };
                (kept.entry.meta.location.clone(), entry)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footer_belongs_to_the_folder_holding_its_table() {
        assert_eq!(
            owner("w/acme/events/data/ts_day=2026-11-30/f.parquet"),
            "w/acme"
        );
        assert_eq!(owner("w/acme/top_pages/data/f.parquet"), "w/acme");
        assert_eq!(owner("w/acme/f.parquet"), "w/acme", "elsewhere: its folder");
        assert_eq!(owner("f.parquet"), "f.parquet");
    }
}
