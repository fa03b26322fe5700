//! Replacing data files: Floe's own Iceberg `replace` (the same rows rewritten: compaction),
//! `delete` (whole files dropped: retention) and `overwrite` (files rewritten without some rows:
//! erasure) snapshots. iceberg-rust 0.10 has none of these actions.
//!
//! A rewrite commit writes one manifest holding every live file of the table: the kept ones as
//! `EXISTING` (their snapshot and sequence numbers preserved), the replaced ones as `DELETED`,
//! the new ones as `ADDED`. So each compaction also merges the table's manifests into one. The
//! commit is the same compare-and-swap as an append; before every attempt it re-reads the table
//! and checks that every file it replaces is still live. An append that lands meanwhile is
//! carried into the retry (each attempt reads only the manifests added since the last); a
//! replaced file that is gone (another compactor, an erasure), or losing the swap
//! `commit.max_attempts` times, makes the commit give up without committing anything, and the
//! caller deletes its new files. A conflict is never fatal.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, ManifestContentType, ManifestEntryRef,
    ManifestWriterBuilder, Operation,
};
use iceberg::table::Table;

use crate::audit::Entry;
use crate::commit::{Attempt, Change, Committed, Evolve, NewSnapshot, Prepared, new_snapshot_id};
use crate::manifests::ManifestCache;
use crate::positions::carried_properties;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What a rewrite does to the rows of the files it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteKind {
    /// The new files hold exactly the rows of the old ones (compaction): `replace`.
    Replace,
    /// The old files go, nothing comes in (retention): `delete`.
    Delete,
    /// The new files hold some of the old files' rows (erasure): `overwrite`.
    Overwrite,
}

impl RewriteKind {
    /// The snapshot a rewrite of this kind makes.
    fn shape(self) -> Shape {
        match self {
            RewriteKind::Replace => Shape {
                operation: Operation::Replace,
                rows: Rows::Same,
                removed_keep_bounds: true,
                evolve: None,
            },
            RewriteKind::Delete => Shape {
                operation: Operation::Delete,
                rows: Rows::NoneAdded,
                removed_keep_bounds: false,
                evolve: None,
            },
            RewriteKind::Overwrite => Shape {
                operation: Operation::Overwrite,
                rows: Rows::Fewer,
                removed_keep_bounds: false,
                evolve: None,
            },
        }
    }
}

/// What a rewrite snapshot is: its operation, the rule its row counts follow, and whether the
/// entries of removed files keep their column bounds.
pub(crate) struct Shape {
    pub operation: Operation,
    pub rows: Rows,
    /// An erasure's or retention's removed files leave no column bounds behind: bounds are
    /// values of the very rows being removed.
    pub removed_keep_bounds: bool,
    /// A new schema for the table from this snapshot on (a projection redefined).
    pub evolve: Option<Evolve>,
}

/// The rule a rewrite's row counts follow.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows {
    /// The new files hold as many rows as the removed ones (compaction).
    Same,
    /// No files come in (retention).
    NoneAdded,
    /// At most as many rows come in as go (erasure).
    Fewer,
    /// Any (a derived table's rows recomputed).
    Any,
}

/// How a rewrite commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceOutcome {
    /// The new snapshot; `conflicts`: compare-and-swaps lost to other writers first.
    Committed { snapshot_id: i64, conflicts: u32 },
    /// Some replaced files are no longer live: nothing was committed.
    InputsGone { missing: Vec<String> },
    /// Other writers won every compare-and-swap: nothing was committed (try again later).
    KeptLosing { conflicts: u32 },
}

/// What one attempt of a rewrite came to.
enum Rewritten {
    Committed(i64),
    /// These replaced files are no longer live.
    InputsGone(Vec<String>),
}

/// The live data files of a table's current snapshot, with their manifest entries (reading
/// every manifest: [`Catalog::live_entries`] reads each once per process).
pub async fn live_entries(table: &Table) -> Result<Vec<ManifestEntryRef>> {
    live_entries_in(table, &ManifestCache::new(0)).await
}

/// [`live_entries`], reading only the manifests not in `cache`.
pub(crate) async fn live_entries_in(
    table: &Table,
    cache: &ManifestCache,
) -> Result<Vec<ManifestEntryRef>> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(Vec::new());
    };
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(Error::ice("reading the manifest list"))?;
    if let Some(m) = list
        .entries()
        .iter()
        .find(|m| m.content != ManifestContentType::Data)
    {
        return Err(Error::internal(format!(
            "{}: delete manifests are not supported ({})",
            table.identifier(),
            m.manifest_path
        )));
    }
    let manifests = cache
        .load_all(table, list.entries())
        .await
        .map_err(Error::ice("reading a manifest"))?;
    Ok(manifests
        .iter()
        .flat_map(|m| m.entries().iter().filter(|e| e.is_alive()).cloned())
        .collect())
}

impl Catalog {
    /// The live data files of `table`'s current snapshot, with their manifest entries; each
    /// manifest is read once per process (see [`crate::manifests`]).
    pub async fn live_entries(&self, table: &Table) -> Result<Vec<ManifestEntryRef>> {
        live_entries_in(table, self.manifests()).await
    }
}

impl Catalog {
    /// Replaces the data files at `removed` with `added` (the same rows, rewritten) in one
    /// `replace` snapshot. Source positions and totals carry over; see the module comment.
    pub async fn commit_replace(
        &self,
        tenant: &TenantId,
        table: &str,
        removed: Vec<String>,
        added: Vec<DataFile>,
    ) -> Result<ReplaceOutcome> {
        self.commit_rewrite(tenant, table, RewriteKind::Replace, removed, added, None)
            .await
    }

    /// Removes the data files at `removed` and adds `added` in one snapshot of `kind`; the
    /// row count must change as `kind` says. See the module comment. `audit`, when given, is
    /// written in the commit's own transaction: no record, no commit.
    pub async fn commit_rewrite(
        &self,
        tenant: &TenantId,
        table: &str,
        kind: RewriteKind,
        removed: Vec<String>,
        added: Vec<DataFile>,
        audit: Option<Entry>,
    ) -> Result<ReplaceOutcome> {
        let (tenant, table) = (tenant.clone(), table.to_string());
        self.on_io(move |c| async move {
            c.commit_rewrite_here(&tenant, &table, kind, removed, added, audit)
                .await
        })
        .await
    }

    async fn commit_rewrite_here(
        &self,
        tenant: &TenantId,
        table: &str,
        kind: RewriteKind,
        removed: Vec<String>,
        added: Vec<DataFile>,
        audit: Option<Entry>,
    ) -> Result<ReplaceOutcome> {
        self.sync_dirs(added.iter().map(|f| f.file_path().to_string()).collect())
            .await?;
        let mut change = RewriteChange {
            kind,
            removed,
            added,
            audit,
        };
        let outcome = self.commit_loop(tenant, table, &mut change).await?;
        Ok(match outcome {
            Committed::Done {
                value: Rewritten::Committed(snapshot_id),
                conflicts,
            } => ReplaceOutcome::Committed {
                snapshot_id,
                conflicts,
            },
            Committed::Done {
                value: Rewritten::InputsGone(missing),
                ..
            } => ReplaceOutcome::InputsGone { missing },
            Committed::KeptLosing { conflicts } => ReplaceOutcome::KeptLosing { conflicts },
        })
    }

    /// Writes the one manifest of a rewrite (every live file: kept, removed, added) and its
    /// snapshot of `shape`, with `props` added to the summary. See the module comment.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn prepare_rewrite(
        &self,
        current: &Table,
        old_location: &str,
        shape: &Shape,
        live: &[ManifestEntryRef],
        removed: &[String],
        added: Vec<DataFile>,
        props: HashMap<String, String>,
    ) -> Result<Prepared> {
        let metadata = current.metadata();
        let parent = metadata.current_snapshot();
        let schema = match &shape.evolve {
            Some(e) => Arc::new(e.schema.clone()),
            None => metadata.current_schema().clone(),
        };
        let spec = metadata.default_partition_spec().clone();
        let commit_id = uuid::Uuid::now_v7();
        let snapshot_id = new_snapshot_id(metadata);
        let sequence_number = metadata.next_sequence_number();
        let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();

        let manifest_path = format!("{}/metadata/{commit_id}-m0.avro", metadata.location());
        let out = self
            .file_io
            .new_output(&manifest_path)
            .map_err(Error::ice("manifest output"))?;
        let mut writer =
            ManifestWriterBuilder::new(out, Some(snapshot_id), schema, (*spec).clone())
                .build_v2_data();
        let (mut deleted_files, mut deleted_records, mut deleted_bytes) = (0u64, 0u64, 0u64);
        for entry in live {
            let data = entry.data_file().clone();
            if data.content_type() != DataContentType::Data {
                return Err(Error::internal(
                    "replace over delete files is not supported",
                ));
            }
            let seq = entry
                .sequence_number()
                .ok_or_else(|| Error::internal("live entry without a sequence number"))?;
            if removed.contains(entry.file_path()) {
                deleted_files += 1;
                deleted_records += data.record_count();
                deleted_bytes += data.file_size_in_bytes();
                let data = if shape.removed_keep_bounds {
                    data
                } else {
                    without_metrics(&data)?
                };
                writer
                    .add_delete_file(data, seq, entry.file_sequence_number)
                    .map_err(Error::ice("manifest: replaced file"))?;
            } else {
                let added_by = entry
                    .snapshot_id()
                    .ok_or_else(|| Error::internal("live entry without a snapshot id"))?;
                writer
                    .add_existing_file(data, added_by, seq, entry.file_sequence_number)
                    .map_err(Error::ice("manifest: kept file"))?;
            }
        }
        let (added_files, added_records, added_bytes) = (
            added.len() as u64,
            added.iter().map(|f| f.record_count()).sum::<u64>(),
            added.iter().map(|f| f.file_size_in_bytes()).sum::<u64>(),
        );
        let rows_ok = match shape.rows {
            Rows::Same => added_records == deleted_records,
            Rows::NoneAdded => added_files == 0,
            Rows::Fewer => added_records <= deleted_records,
            Rows::Any => true,
        };
        if !rows_ok {
            return Err(Error::internal(format!(
                "a {:?} rewrite cannot take {deleted_records} rows out and put {added_records} in",
                shape.operation
            )));
        }
        for f in added {
            writer
                .add_file(f, sequence_number)
                .map_err(Error::ice("manifest: new file"))?;
        }
        let manifest = writer
            .write_manifest_file()
            .await
            .map_err(Error::ice("writing the manifest"))?;

        let before = |key: &str| {
            parent
                .and_then(|p| p.summary().additional_properties.get(key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut props = props;
        if let Some(parent) = parent {
            for (k, v) in carried_properties(parent) {
                props.entry(k).or_insert(v);
            }
        }
        let totals = [
            (
                "total-records",
                (before("total-records") + added_records).saturating_sub(deleted_records),
            ),
            (
                "total-data-files",
                (before("total-data-files") + added_files).saturating_sub(deleted_files),
            ),
            (
                "total-files-size",
                (before("total-files-size") + added_bytes).saturating_sub(deleted_bytes),
            ),
            ("added-data-files", added_files),
            ("deleted-data-files", deleted_files),
            ("added-records", added_records),
            ("deleted-records", deleted_records),
            ("added-files-size", added_bytes),
            ("removed-files-size", deleted_bytes),
            ("total-delete-files", 0),
            ("total-position-deletes", 0),
            ("total-equality-deletes", 0),
        ];
        for (k, v) in totals {
            props.insert(k.to_string(), v.to_string());
        }
        let mut prepared = self
            .prepare_snapshot(
                current,
                old_location,
                NewSnapshot {
                    snapshot_id,
                    sequence_number,
                    commit_id,
                    operation: shape.operation.clone(),
                    props,
                    evolve: shape.evolve.clone(),
                },
                vec![manifest],
            )
            .await?;
        prepared.written.insert(0, manifest_path);
        Ok(prepared)
    }
}

/// The entry of a removed file without its column metrics (only what identifies the file).
fn without_metrics(f: &DataFile) -> Result<DataFile> {
    DataFileBuilder::default()
        .content(f.content_type())
        .file_path(f.file_path().to_string())
        .file_format(f.file_format())
        .partition(f.partition().clone())
        .record_count(f.record_count())
        .file_size_in_bytes(f.file_size_in_bytes())
        .build()
        .map_err(|e| Error::internal(format!("a removed file's entry: {e}")))
}

/// A rewrite, as the commit loop runs it.
struct RewriteChange {
    kind: RewriteKind,
    removed: Vec<String>,
    added: Vec<DataFile>,
    /// The change's audit record, written with the swap.
    audit: Option<Entry>,
}

impl Change for RewriteChange {
    type Value = Rewritten;

    async fn attempt(
        &mut self,
        catalog: &Catalog,
        current: Table,
        _conflicts: u32,
    ) -> Result<Attempt<Rewritten>> {
        let live = catalog.live_entries(&current).await?;
        let live_paths: HashSet<&str> = live.iter().map(|e| e.file_path()).collect();
        let missing: Vec<String> = self
            .removed
            .iter()
            .filter(|p| !live_paths.contains(p.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() || current.metadata().current_snapshot().is_none() {
            return Ok(Attempt::Done(Rewritten::InputsGone(missing)));
        }
        let old_location = current
            .metadata_location()
            .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
            .to_string();
        let mut prepared = catalog
            .prepare_rewrite(
                &current,
                &old_location,
                &self.kind.shape(),
                &live,
                &self.removed,
                self.added.clone(),
                HashMap::new(),
            )
            .await?;
        prepared.audit = self.audit.clone();
        let snapshot_id = prepared.snapshot_id;
        Ok(Attempt::Swap {
            prepared: Box::new(prepared),
            value: Rewritten::Committed(snapshot_id),
        })
    }
}
