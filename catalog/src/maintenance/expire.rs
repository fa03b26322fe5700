//! Snapshot expiry: removes old snapshots from the table metadata (one compare-and-swap, like a
//! commit), then deletes what only they reached: manifest lists, manifests no kept snapshot
//! lists, and data files no kept snapshot holds live. Deciding by reachability, not by "what
//! was deleted when", also collects what replace, delete and overwrite snapshots left behind;
//! on a table of one line of history, reachability is decided from the manifest lists, the
//! manifests naming deleted files and the kept manifests written since ([`deleters`],
//! [`not_added_again`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::spec::{
    ManifestFile, ManifestStatus, SnapshotRef, TableMetadata, TableMetadataBuilder,
};
use iceberg::table::Table;

use super::{listed, maintenance_entry, reach};
use crate::commit::{Attempt, Change, Committed};
use crate::db::now_ms;
use crate::manifests::ManifestCache;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// Which snapshots expiry keeps: the current one, every one younger than `max_age`, the
/// `min_snapshots` newest, and every one from sequence number `keep_from_sequence` on (the
/// oldest `events` snapshot a projection still reflects: its refresh starts there).
#[derive(Debug, Clone, Copy)]
pub struct ExpirePolicy {
    pub max_age: Duration,
    pub min_snapshots: usize,
    pub keep_from_sequence: Option<i64>,
}

impl ExpirePolicy {
    /// Keep only the current snapshot (after an erasure: older snapshots hold the erased rows).
    pub fn keep_current_only() -> Self {
        ExpirePolicy {
            max_age: Duration::ZERO,
            min_snapshots: 0,
            keep_from_sequence: None,
        }
    }
}

/// What expiry did (or, dry, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExpireReport {
    pub snapshots_expired: usize,
    pub snapshots_kept: usize,
    /// Data files, manifests and manifest lists deleted (or to delete).
    pub files_deleted: usize,
    /// Bytes of the deleted data files.
    pub data_bytes_deleted: u64,
    /// Compare-and-swaps lost to commits before expiry's own landed.
    pub conflicts: u32,
    /// Manifest lists read (of the kept snapshots and of the expired ones): one per run of
    /// Floe's appends, not one per snapshot ([`super::LIST_HOLDS_PARENT`]).
    pub manifest_lists_read: usize,
    /// Manifests read (from the cache or storage): on a table of one line of history, only
    /// those naming the files the expired snapshots' successors deleted and, when that frees
    /// some, the kept snapshots' manifests written since (a freed path must not be live again).
    pub manifests_read: usize,
    /// Wall time, reading what the snapshots reach and deleting included.
    pub seconds: f64,
    /// The objects deleted (or to delete).
    #[serde(skip)]
    pub deleted: Vec<String>,
}

impl Catalog {
    /// Expires the snapshots `policy` does not keep and deletes the files only they reached.
    /// With `dry_run`, changes nothing and reports what would go.
    pub async fn expire_snapshots(
        &self,
        tenant: &TenantId,
        table: &str,
        policy: ExpirePolicy,
        dry_run: bool,
    ) -> Result<ExpireReport> {
        let (tenant, table) = (tenant.clone(), table.to_string());
        self.on_io(move |c| async move { c.expire_here(&tenant, &table, policy, dry_run).await })
            .await
    }

    async fn expire_here(
        &self,
        tenant: &TenantId,
        table: &str,
        policy: ExpirePolicy,
        dry_run: bool,
    ) -> Result<ExpireReport> {
        let started = std::time::Instant::now();
        let mut change = ExpireChange {
            tenant: tenant.to_string(),
            table: table.to_string(),
            policy,
            dry_run,
        };
        let outcome = self.commit_loop(tenant, table, &mut change).await?;
        match outcome {
            Committed::Done {
                value: (mut report, garbage),
                ..
            } => {
                // Nothing can reach the garbage once expired: new commits start from the kept
                // snapshots. (A dry run, or nothing to expire, leaves none.)
                self.delete_objects(&garbage).await?;
                if !garbage.is_empty() {
                    report.deleted = garbage;
                }
                report.seconds = started.elapsed().as_secs_f64();
                Ok(report)
            }
            // Commits kept winning; the next run tries again.
            Committed::KeptLosing { .. } => Err(Error::CommitConflict {
                table: format!("{tenant}.{table}"),
            }),
        }
    }
}

/// Splits the table's snapshots into kept and expired ones.
fn split_snapshots(
    metadata: &iceberg::spec::TableMetadata,
    policy: ExpirePolicy,
    now_ms: i64,
) -> (Vec<SnapshotRef>, Vec<SnapshotRef>) {
    let mut all: Vec<SnapshotRef> = metadata.snapshots().cloned().collect();
    all.sort_by_key(|s| std::cmp::Reverse((s.timestamp_ms(), s.sequence_number())));
    // Branches and tags (iceberg-rust has no public accessor for them; Floe only writes main).
    let mut referenced: HashSet<i64> = HashSet::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(metadata)
        && let Some(serde_json::Value::Object(refs)) = m.get("refs")
    {
        referenced.extend(
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(|v| v.as_i64())),
        );
    }
    let current = metadata.current_snapshot_id();
    let cutoff = now_ms - policy.max_age.as_millis() as i64;
    let (mut keep, mut expire) = (Vec::new(), Vec::new());
    for (i, s) in all.into_iter().enumerate() {
        let id = s.snapshot_id();
        if Some(id) == current
            || referenced.contains(&id)
            || i < policy.min_snapshots
            || s.timestamp_ms() >= cutoff
            || policy
                .keep_from_sequence
                .is_some_and(|from| s.sequence_number() >= from)
        {
            keep.push(s);
        } else {
            expire.push(s);
        }
    }
    (keep, expire)
}

/// The snapshots whose own manifests name, as deleted, every data file this expiry frees, when
/// the table's history lets that be known from the manifest lists: every snapshot is an
/// ancestor of the current one (no rollback left another line behind) and every expired
/// snapshot is older than every kept one. Then a data file reached by an expired snapshot and
/// live in no kept one was removed by a later snapshot whose parent is expired, and that
/// snapshot's own manifest names it as deleted (Floe never reuses a path); a snapshot whose
/// parent expired in an earlier run had its removals freed then. So expiry reads only the
/// manifests that snapshots among these added and that count deleted files, not everything the
/// expired snapshots reached (a table of merged manifests has written each file's entry many
/// times). `None`: read everything.
fn deleters(
    metadata: &TableMetadata,
    keep: &[SnapshotRef],
    expire: &[SnapshotRef],
) -> Option<HashSet<i64>> {
    let newest_expired = expire.iter().map(|s| s.sequence_number()).max()?;
    let oldest_kept = keep.iter().map(|s| s.sequence_number()).min()?;
    if newest_expired >= oldest_kept {
        return None;
    }
    let mut ancestors = 0;
    let mut at = metadata.current_snapshot();
    while let Some(s) = at {
        ancestors += 1;
        at = s
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    if ancestors != metadata.snapshots().count() {
        return None;
    }
    let expired: HashSet<i64> = expire.iter().map(|s| s.snapshot_id()).collect();
    Some(
        metadata
            .snapshots()
            .filter(|s| s.parent_snapshot_id().is_some_and(|p| expired.contains(&p)))
            .map(|s| s.snapshot_id())
            .collect(),
    )
}

/// `removed` (files the snapshots `deleters` removed) less those live again in a manifest the
/// kept snapshots list (`kept`): Floe never writes a removed path again, but another engine
/// sharing the catalog may (Iceberg's `add_files` imports any path), and the file is then live.
/// Only manifests added at or after the oldest of `deleters` can hold such an entry (a path is
/// added again after its removal, and a manifest holds no entry newer than itself); nothing is
/// read when nothing was removed. Returns what stays to delete and the manifests read.
async fn not_added_again(
    table: &Table,
    kept: &[ManifestFile],
    deleters: &HashSet<i64>,
    mut removed: HashMap<String, u64>,
    cache: &ManifestCache,
) -> Result<(HashMap<String, u64>, usize)> {
    let metadata = table.metadata();
    let since = deleters
        .iter()
        .filter_map(|id| metadata.snapshot_by_id(*id))
        .map(|s| s.sequence_number())
        .min();
    let (Some(since), false) = (since, removed.is_empty()) else {
        return Ok((removed, 0));
    };
    let later: Vec<&ManifestFile> = kept.iter().filter(|m| m.sequence_number >= since).collect();
    let loaded = cache
        .load_all(table, later.iter().copied())
        .await
        .map_err(Error::ice("reading a manifest"))?;
    for entry in loaded.iter().flat_map(|m| m.entries()) {
        if entry.is_alive() {
            removed.remove(entry.file_path());
        }
    }
    Ok((removed, later.len()))
}

/// Snapshot expiry, as the commit loop runs it: the value is the report and the files only
/// the expired snapshots reached (deleted once the swap is in).
struct ExpireChange {
    tenant: String,
    table: String,
    policy: ExpirePolicy,
    dry_run: bool,
}

impl Change for ExpireChange {
    type Value = (ExpireReport, Vec<String>);

    async fn attempt(
        &mut self,
        catalog: &Catalog,
        current: Table,
        conflicts: u32,
    ) -> Result<Attempt<Self::Value>> {
        let metadata = current.metadata();
        let (keep, expire) = split_snapshots(metadata, self.policy, now_ms());
        let mut report = ExpireReport {
            snapshots_expired: expire.len(),
            snapshots_kept: keep.len(),
            conflicts,
            ..ExpireReport::default()
        };
        if expire.is_empty() {
            return Ok(Attempt::Done((report, Vec::new())));
        }
        let kept_ids: HashSet<i64> = keep.iter().map(|s| s.snapshot_id()).collect();
        let cache = catalog.manifests();
        let (kept, gone, data) = match deleters(metadata, &keep, &expire) {
            // Only the manifests that name deleted files, of the snapshots that deleted them.
            Some(deleters) => {
                let kept = listed(&current, &keep, &HashSet::new(), &HashSet::new()).await?;
                let gone = listed(&current, &expire, &kept_ids, &kept.manifests).await?;
                let with_deletes: Vec<ManifestFile> = kept
                    .listed
                    .iter()
                    .chain(&gone.listed)
                    .filter(|m| {
                        deleters.contains(&m.added_snapshot_id) && m.deleted_files_count != Some(0)
                    })
                    .cloned()
                    .collect();
                report.manifests_read = with_deletes.len();
                let loaded = cache
                    .load_all(&current, &with_deletes)
                    .await
                    .map_err(Error::ice("reading a manifest"))?;
                let data: HashMap<String, u64> = loaded
                    .iter()
                    .zip(&with_deletes)
                    .flat_map(|(m, listed)| {
                        m.entries().iter().filter(move |e| {
                            e.status() == ManifestStatus::Deleted
                                && e.snapshot_id() == Some(listed.added_snapshot_id)
                        })
                    })
                    .map(|e| {
                        (
                            e.file_path().to_string(),
                            e.data_file().file_size_in_bytes(),
                        )
                    })
                    .collect();
                let (data, read) =
                    not_added_again(&current, &kept.listed, &deleters, data, cache).await?;
                report.manifests_read += read;
                (kept, gone, data)
            }
            // Everything the kept snapshots hold live against everything the expired reach.
            None => {
                let kept = reach(
                    &current,
                    &keep,
                    &HashSet::new(),
                    &HashSet::new(),
                    true,
                    cache,
                )
                .await?;
                let gone =
                    reach(&current, &expire, &kept_ids, &kept.manifests, false, cache).await?;
                report.manifests_read = kept.listed.len() + gone.listed.len();
                let data = gone
                    .data
                    .iter()
                    .filter(|(path, _)| !kept.data.contains_key(*path))
                    .map(|(path, bytes)| (path.clone(), *bytes))
                    .collect();
                (kept, gone, data)
            }
        };
        report.manifest_lists_read = kept.lists_read + gone.lists_read;
        let mut garbage: Vec<String> = Vec::new();
        for (path, bytes) in data {
            report.data_bytes_deleted += bytes;
            garbage.push(path);
        }
        garbage.extend(gone.manifests.difference(&kept.manifests).cloned());
        garbage.extend(gone.lists.difference(&kept.lists).cloned());
        report.files_deleted = garbage.len();
        if self.dry_run {
            report.deleted = garbage;
            return Ok(Attempt::Done((report, Vec::new())));
        }
        let old_location = current
            .metadata_location()
            .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
            .to_string();
        let ids: Vec<i64> = expire.iter().map(|s| s.snapshot_id()).collect();
        let built =
            TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(old_location.clone()))
                .remove_snapshots(&ids)
                .build()
                .map_err(Error::ice("expiring snapshots"))?;
        let mut prepared = catalog.prepare_metadata(&old_location, built).await?;
        // The record goes in with the swap: without it, no snapshot expires and no file goes.
        prepared.audit = maintenance_entry(
            &self.tenant,
            &self.table,
            "maintenance.expire",
            serde_json::json!({
                "table": self.table,
                "snapshots": report.snapshots_expired,
                "files": report.files_deleted,
                "data_bytes": report.data_bytes_deleted,
            }),
        );
        Ok(Attempt::Swap {
            prepared: Box::new(prepared),
            value: (report, garbage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::test_metadata;

    #[test]
    fn expiry_keeps_current_recent_and_newest() {
        // Appends without parents (only their ages matter here), sequence numbers in order.
        let metadata = |snapshots: &[(i64, i64)], current: i64| {
            let snapshots: Vec<_> = snapshots
                .iter()
                .enumerate()
                .map(|(i, (id, ts))| {
                    (
                        *id,
                        None,
                        i as i64 + 1,
                        *ts,
                        r#""operation":"append""#.into(),
                    )
                })
                .collect();
            test_metadata(&snapshots, current)
        };
        let now = 1_000_000;
        let m = metadata(&[(1, 1_000), (2, 2_000), (3, 3_000), (4, 999_000)], 4);
        let ids = |v: Vec<SnapshotRef>| {
            let mut v: Vec<i64> = v.iter().map(|s| s.snapshot_id()).collect();
            v.sort();
            v
        };
        let policy = |secs, min| ExpirePolicy {
            max_age: Duration::from_secs(secs),
            min_snapshots: min,
            keep_from_sequence: None,
        };
        // Age 10 s, keep 1: only the current one (and nothing younger than 10 s but it).
        let (keep, expire) = split_snapshots(&m, policy(10, 1), now);
        assert_eq!((ids(keep), ids(expire)), (vec![4], vec![1, 2, 3]));
        // Keep the two newest.
        let (keep, expire) = split_snapshots(&m, policy(10, 2), now);
        assert_eq!((ids(keep), ids(expire)), (vec![3, 4], vec![1, 2]));
        // Everything younger than 998.5 s stays.
        let (keep, expire) = split_snapshots(&m, policy(998, 1), now);
        assert_eq!((ids(keep), ids(expire)), (vec![2, 3, 4], vec![1]));
        // A projection reflects snapshot 2 (sequence 2): it and every later one stay.
        let pinned = ExpirePolicy {
            keep_from_sequence: Some(2),
            ..policy(10, 1)
        };
        let (keep, expire) = split_snapshots(&m, pinned, now);
        assert_eq!((ids(keep), ids(expire)), (vec![2, 3, 4], vec![1]));
        // Only the current snapshot stays, even when a newer one exists (after a rollback).
        let m = metadata(&[(1, 1_000), (2, 2_000)], 1);
        let (keep, expire) = split_snapshots(&m, ExpirePolicy::keep_current_only(), now);
        assert_eq!((ids(keep), ids(expire)), (vec![1], vec![2]));
    }

    #[test]
    fn deletions_are_read_from_the_manifests_of_snapshots_whose_parent_expires() {
        let append = r#""operation":"append""#.to_string();
        let line = |ids: &[(i64, Option<i64>)]| -> Vec<_> {
            ids.iter()
                .map(|(id, parent)| (*id, *parent, *id, *id * 1_000, append.clone()))
                .collect()
        };
        let ids = |v: &[i64], m: &TableMetadata| -> Vec<SnapshotRef> {
            v.iter()
                .map(|id| m.snapshot_by_id(*id).unwrap().clone())
                .collect()
        };
        let sorted = |h: HashSet<i64>| {
            let mut v: Vec<i64> = h.into_iter().collect();
            v.sort();
            v
        };
        // One line, 1 ← 2 ← 3 ← 4 (current): expiring 1 and 2, the snapshots whose parent
        // expires are 2 and 3; what 4 removed was live in 3, which stays.
        let m = test_metadata(
            &line(&[(1, None), (2, Some(1)), (3, Some(2)), (4, Some(3))]),
            4,
        );
        let found = deleters(&m, &ids(&[3, 4], &m), &ids(&[1, 2], &m));
        assert_eq!(found.map(sorted), Some(vec![2, 3]));
        // Kept and expired snapshots interleaved (a clock set back): read everything.
        assert_eq!(deleters(&m, &ids(&[2, 4], &m), &ids(&[1, 3], &m)), None);
        // A snapshot off the current line (rolled back from): its files were never deleted
        // by anyone, so read everything.
        let m = test_metadata(&line(&[(1, None), (2, Some(1)), (3, Some(1))]), 3);
        assert_eq!(deleters(&m, &ids(&[3], &m), &ids(&[1, 2], &m)), None);
        // Nothing expires: nothing to decide (expiry stops before it asks).
        assert_eq!(deleters(&m, &ids(&[1, 2, 3], &m), &[]), None);
    }
}
