//! Merging an append's manifests, as Iceberg's merge-append does: every append adds a manifest,
//! so a table of many small commits would otherwise list one manifest per commit, and every
//! commit would read and write a manifest list that long, and every reader (Floe's scan and
//! planning, another Iceberg engine, expiry) would open each of them.
//!
//! The table's own Iceberg properties decide, with Iceberg's defaults:
//! `commit.manifest-merge.enabled` (true), `commit.manifest.min-count-to-merge` (100) and
//! `commit.manifest.target-size-bytes` (8 MiB). When an append would leave the list with at
//! least the minimum count of small data manifests of the table's partition spec (smaller than
//! the target), the append writes one manifest instead of its own: its new files as `ADDED`,
//! and every live file of those small manifests as `EXISTING`, with the snapshot that added it
//! and its sequence numbers kept. Files deleted by earlier snapshots are dropped from it (those
//! snapshots' own manifests still name them, for expiry). Larger manifests are left as they
//! are, so a merged manifest is rewritten until it passes the target and then never again.
//! Simpler than Iceberg's bins of the target size, to the same end: the list stays short and
//! each commit's work bounded.
//!
//! Readers see the same live files with the same sequence numbers; an incremental reader
//! (`crate::delta`) takes only the entries `ADDED` by a snapshot, which the merged manifest
//! keeps for the append's own files.

use std::sync::Arc;

use iceberg::spec::{
    DataFile, ManifestContentType, ManifestFile, ManifestWriterBuilder, PartitionSpec, Schema,
    TableMetadata,
};
use iceberg::table::Table;

use crate::{Catalog, Error, Result};

/// Iceberg's table properties for merging manifests on append, and their defaults.
const ENABLED: (&str, bool) = ("commit.manifest-merge.enabled", true);
const MIN_COUNT: (&str, usize) = ("commit.manifest.min-count-to-merge", 100);
const TARGET_BYTES: (&str, i64) = ("commit.manifest.target-size-bytes", 8 * 1024 * 1024);

/// When an append merges manifests, read from the table's properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MergePolicy {
    enabled: bool,
    min_count: usize,
    target_bytes: i64,
}

impl MergePolicy {
    /// The table's policy (a property that does not parse is taken at Iceberg's default).
    pub(crate) fn of(metadata: &TableMetadata) -> MergePolicy {
        fn prop<T: std::str::FromStr>(m: &TableMetadata, (key, default): (&str, T)) -> T {
            m.properties()
                .get(key)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        }
        MergePolicy {
            enabled: prop(metadata, ENABLED),
            min_count: prop(metadata, MIN_COUNT).max(2),
            target_bytes: prop(metadata, TARGET_BYTES),
        }
    }

    /// Which of `manifests` (a parent's list) an append of a new manifest of spec `spec_id`
    /// merges with its files: none, or every small data manifest of that spec when they are,
    /// with the append's own, at least the minimum count.
    pub(crate) fn pick(&self, manifests: &[ManifestFile], spec_id: i32) -> Vec<usize> {
        if !self.enabled {
            return Vec::new();
        }
        let small: Vec<usize> = manifests
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.content == ManifestContentType::Data
                    && m.partition_spec_id == spec_id
                    && m.key_metadata.is_none()
                    && m.manifest_length < self.target_bytes
            })
            .map(|(i, _)| i)
            .collect();
        if small.len() + 1 < self.min_count {
            return Vec::new();
        }
        small
    }
}

/// The new files of an append and the manifests it merges them with (none, most of the time).
pub(crate) struct AppendManifest<'a> {
    pub snapshot_id: i64,
    pub sequence_number: i64,
    pub schema: Arc<Schema>,
    pub spec: &'a PartitionSpec,
    pub files: Vec<DataFile>,
    pub merged: Vec<ManifestFile>,
}

impl Catalog {
    /// Writes at `path` the one manifest of an append: `merge.files` as `ADDED`, and, when it
    /// merges, the live files of `merge.merged` as `EXISTING` (each manifest read through the
    /// process' manifest cache).
    pub(crate) async fn write_append_manifest(
        &self,
        table: &Table,
        path: &str,
        merge: AppendManifest<'_>,
    ) -> Result<ManifestFile> {
        let manifests = self
            .manifests()
            .load_all(table, &merge.merged)
            .await
            .map_err(Error::ice("reading a manifest to merge"))?;
        let out = self
            .file_io
            .new_output(path)
            .map_err(Error::ice("manifest output"))?;
        let mut writer = ManifestWriterBuilder::new(
            out,
            Some(merge.snapshot_id),
            merge.schema,
            merge.spec.clone(),
        )
        .build_v2_data();
        for f in merge.files {
            writer
                .add_file(f, merge.sequence_number)
                .map_err(Error::ice("adding a file to the manifest"))?;
        }
        for entry in manifests.iter().flat_map(|m| m.entries()) {
            if !entry.is_alive() {
                continue;
            }
            let (Some(added_by), Some(sequence)) = (entry.snapshot_id(), entry.sequence_number())
            else {
                return Err(Error::internal(format!(
                    "{}: a live entry without its snapshot or sequence number ({})",
                    table.identifier(),
                    entry.file_path()
                )));
            };
            writer
                .add_existing_file(
                    entry.data_file().clone(),
                    added_by,
                    sequence,
                    entry.file_sequence_number,
                )
                .map_err(Error::ice("manifest: merged file"))?;
        }
        writer
            .write_manifest_file()
            .await
            .map_err(Error::ice("writing the manifest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(length: i64, spec_id: i32, content: ManifestContentType) -> ManifestFile {
        ManifestFile {
            manifest_path: format!("m-{length}"),
            manifest_length: length,
            partition_spec_id: spec_id,
            content,
            sequence_number: 1,
            min_sequence_number: 1,
            added_snapshot_id: 1,
            added_files_count: Some(1),
            existing_files_count: Some(0),
            deleted_files_count: Some(0),
            added_rows_count: Some(1),
            existing_rows_count: Some(0),
            deleted_rows_count: Some(0),
            partitions: None,
            key_metadata: None,
            first_row_id: None,
        }
    }

    #[test]
    fn an_append_merges_the_small_manifests_of_its_spec_once_there_are_enough() {
        let policy = MergePolicy {
            enabled: true,
            min_count: 4,
            target_bytes: 100,
        };
        let data = ManifestContentType::Data;
        let mut list = vec![manifest(10, 0, data), manifest(500, 0, data)];
        list.push(manifest(20, 1, data)); // another spec
        list.push(manifest(30, 0, ManifestContentType::Deletes));
        list.push(manifest(40, 0, data));
        // Two small manifests of spec 0 and the append's own: three, below four.
        assert!(policy.pick(&list, 0).is_empty());
        list.push(manifest(50, 0, data));
        // Now four: the small ones of spec 0 are merged, the large one is left alone.
        assert_eq!(policy.pick(&list, 0), vec![0, 4, 5]);
        let off = MergePolicy {
            enabled: false,
            ..policy
        };
        assert!(off.pick(&list, 0).is_empty());
    }
}
