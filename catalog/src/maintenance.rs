//! Table maintenance that frees storage: snapshot expiry, garbage collection, orphan files, and
//! purging a tenant.
//!
//! Expiry removes old snapshots from the table metadata (one compare-and-swap, like a commit),
//! then deletes what only they reached: manifest lists, manifests no kept snapshot lists, and
//! data files no kept snapshot holds live. Deciding by reachability, not by "what was deleted
//! when", also collects what replace, delete and overwrite snapshots left behind. Orphan cleanup
//! lists a table's folder and deletes objects that no snapshot and no metadata file in the log
//! reaches, once they are older than a safety age: a commit in flight has written its files but
//! not swapped them in yet, and must not lose them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{ManifestFile, Operation, SnapshotRef, TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::audit::{AUDIT_TABLE, Entry, MAINTENANCE_ACTOR};
use crate::commit::{Attempt, Change, Committed};
use crate::db::now_ms;
use crate::manifests::ManifestCache;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// Manifest lists read at once.
const READ_CONCURRENCY: usize = 16;

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
    /// Floe's appends, not one per snapshot ([`LIST_HOLDS_PARENT`]).
    pub manifest_lists_read: usize,
    /// Wall time, reading what the snapshots reach and deleting included.
    pub seconds: f64,
    /// The objects deleted (or to delete).
    #[serde(skip)]
    pub deleted: Vec<String>,
}

/// What orphan cleanup did (or, dry, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OrphanReport {
    /// Objects listed under the table's folder.
    pub listed: usize,
    pub orphans_deleted: usize,
    pub bytes_deleted: u64,
    /// Orphans younger than the safety age, left for a later run.
    pub orphans_too_young: usize,
    pub seconds: f64,
    #[serde(skip)]
    pub deleted: Vec<String>,
}

/// The files a set of snapshots reaches.
#[derive(Default)]
struct Reach {
    lists: HashSet<String>,
    manifests: HashSet<String>,
    /// Data files by path, with their size.
    data: HashMap<String, u64>,
    /// Manifest lists read (the others were held whole by a child's: [`LIST_HOLDS_PARENT`]).
    lists_read: usize,
}

/// The summary property of a snapshot whose manifest list holds every manifest of its
/// parent's list, unchanged (Floe's appends: the parent's list plus the new manifest); its
/// value is the parent's snapshot id. The parent's list need not be read to know what the two
/// reach together: this is what makes expiry and orphan cleanup read one list per run of
/// appends instead of one per snapshot. Snapshots of other writers (a merging append may drop
/// its parent's manifests) lack it and are read; one that copied it from its parent names the
/// wrong parent, or is no append, and is not trusted.
pub(crate) const LIST_HOLDS_PARENT: &str = "floe.list-holds-parent";

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

    /// Deletes objects under the table's folder that no snapshot and no metadata file of the
    /// table reaches, if they are older than `min_age`. With `dry_run`, lists them only.
    pub async fn remove_orphans(
        &self,
        tenant: &TenantId,
        table: &str,
        min_age: Duration,
        dry_run: bool,
    ) -> Result<OrphanReport> {
        let (tenant, table) = (tenant.clone(), table.to_string());
        self.on_io(move |c| async move {
            c.remove_orphans_here(&tenant, &table, min_age, dry_run)
                .await
        })
        .await
    }

    async fn remove_orphans_here(
        &self,
        tenant: &TenantId,
        table: &str,
        min_age: Duration,
        dry_run: bool,
    ) -> Result<OrphanReport> {
        let started = std::time::Instant::now();
        // List first, then read the table: a file listed before the read is either reached by
        // the metadata read after it, or was written by a commit not yet swapped in (and is
        // then younger than any sane safety age).
        let current = self.load_table(tenant, table).await?;
        let prefix = self.object_key(current.metadata().location())?;
        let store = self.data_store.object_store();
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&Path::from(format!("{prefix}/"))))
            .try_collect()
            .await
            .map_err(|e| Error::Storage {
                message: format!("listing {prefix}: {e}"),
            })?;
        let current = self.load_table(tenant, table).await?;
        let metadata = current.metadata();
        let snapshots: Vec<SnapshotRef> = metadata.snapshots().cloned().collect();
        let reached = reach(
            &current,
            &snapshots,
            &HashSet::new(),
            &HashSet::new(),
            true,
            self.manifests(),
        )
        .await?;
        let mut keep: HashSet<String> = HashSet::new();
        let mut add = |location: &str| {
            if let Some(k) = self.data_store.key(location) {
                keep.insert(k);
            }
        };
        reached.lists.iter().for_each(|l| add(l));
        reached.manifests.iter().for_each(|m| add(m));
        reached.data.keys().for_each(|d| add(d));
        if let Some(l) = current.metadata_location() {
            add(l);
        }
        metadata
            .metadata_log()
            .iter()
            .for_each(|l| add(&l.metadata_file));

        let cutoff = chrono::DateTime::<chrono::Utc>::from(SystemTime::now() - min_age);
        let mut report = OrphanReport {
            listed: listed.len(),
            ..OrphanReport::default()
        };
        let mut orphans = Vec::new();
        for object in listed {
            let key = object.location.to_string();
            if keep.contains(&key) {
                continue;
            }
            if object.last_modified > cutoff {
                report.orphans_too_young += 1;
                continue;
            }
            report.bytes_deleted += object.size;
            orphans.push(key);
        }
        report.orphans_deleted = orphans.len();
        if !dry_run {
            if !orphans.is_empty()
                && let Some(entry) = maintenance_entry(
                    tenant.as_str(),
                    table,
                    "maintenance.orphans",
                    serde_json::json!({
                        "table": table,
                        "files": orphans.len(),
                        "bytes": report.bytes_deleted,
                    }),
                )
            {
                // No record, no deletion.
                self.audit_all(vec![entry]).await?;
            }
            self.delete_keys(&orphans).await?;
        }
        report.deleted = orphans;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Deletes every object under a tenant's prefix in the warehouse; returns how many went.
    pub(crate) async fn delete_tenant_objects(&self, tenant: &TenantId) -> Result<usize> {
        self.delete_objects_under(&format!("{}/{}", self.warehouse, tenant))
            .await
    }

    /// Deletes every object under the folder `location` of the warehouse (and, on a local
    /// warehouse, the folder); how many objects.
    pub(crate) async fn delete_objects_under(&self, location: &str) -> Result<usize> {
        let prefix = self.object_key(location)?;
        let store = self.data_store.object_store();
        let mut deleted = 0;
        // Listing and deleting page by page keeps memory flat for any tenant size.
        loop {
            let page: Vec<String> = store
                .list(Some(&Path::from(format!("{prefix}/"))))
                .take(1000)
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .map_err(|e| Error::Storage {
                    message: format!("listing {prefix}: {e}"),
                })?;
            if page.is_empty() {
                break;
            }
            deleted += page.len();
            self.delete_keys(&page).await?;
        }
        if self.data_store.store.is_none() {
            // A local warehouse keeps empty folders; remove them too.
            let dir = std::path::Path::new("/").join(&prefix);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(dir.display().to_string())(e)),
            }
        }
        Ok(deleted)
    }

    /// The object key of a warehouse location, or an error if it lies outside the warehouse.
    fn object_key(&self, location: &str) -> Result<String> {
        self.data_store
            .key(location)
            .map(|k| k.trim_end_matches('/').to_string())
            .ok_or_else(|| {
                Error::internal(format!(
                    "{location} lies outside the warehouse {}",
                    self.data_store.url
                ))
            })
    }

    /// Deletes the objects at these Iceberg locations (missing ones count as deleted).
    pub(crate) async fn delete_objects(&self, locations: &[String]) -> Result<()> {
        let keys: Vec<String> = locations
            .iter()
            .map(|l| self.object_key(l))
            .collect::<Result<_>>()?;
        self.delete_keys(&keys).await
    }

    /// Deletes objects by key in batches (S3 `DeleteObjects` takes 1,000 at a time).
    async fn delete_keys(&self, keys: &[String]) -> Result<()> {
        let store = self.data_store.object_store();
        let paths: Vec<object_store::Result<Path>> =
            keys.iter().map(|k| Ok(Path::from(k.as_str()))).collect();
        let paths = futures::stream::iter(paths).boxed();
        let mut results = store.delete_stream(paths);
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(Error::Storage {
                        message: format!("deleting: {e}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A table's maintenance record: who holds it, and how the last run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MaintenanceRecord {
    pub tenant: String,
    pub table: String,
    pub holder: Option<String>,
    pub lease_until_ms: i64,
    pub last_run_at_ms: Option<i64>,
    pub last_result: Option<String>,
}

impl Catalog {
    /// Every table's maintenance record (`floe compact --status`).
    pub async fn maintenance_records(&self) -> Result<Vec<MaintenanceRecord>> {
        self.on_io(|c| async move {
            type Row = (
                String,
                String,
                Option<String>,
                i64,
                Option<i64>,
                Option<String>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT tenant, table_name, holder, lease_until_ms, last_run_at_ms, \
                     last_result FROM floe_maintenance ORDER BY tenant, table_name",
            )
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("maintenance records"))?;
            Ok(rows
                .into_iter()
                .map(
                    |(tenant, table, holder, lease_until_ms, last_run_at_ms, last_result)| {
                        MaintenanceRecord {
                            tenant,
                            table,
                            holder,
                            lease_until_ms,
                            last_run_at_ms,
                            last_result,
                        }
                    },
                )
                .collect())
        })
        .await
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

/// The manifest lists, manifests and data files `snapshots` reach. Manifests in `skip` are not
/// read (nor counted); `alive_only`: only entries live in their snapshot count as reached.
/// `read_elsewhere`: snapshots whose lists the caller reads (or has read) itself, all of whose
/// manifests are in `skip`.
async fn reach(
    table: &Table,
    snapshots: &[SnapshotRef],
    read_elsewhere: &HashSet<i64>,
    skip: &HashSet<String>,
    alive_only: bool,
    cache: &ManifestCache,
) -> Result<Reach> {
    let mut out = Reach::default();
    // A snapshot whose child is one of Floe's appends in this set (or in `read_elsewhere`) is
    // not read: the child's list holds all of its manifests, and the child is read (or held by
    // its own child).
    let ids: HashSet<i64> = snapshots
        .iter()
        .map(|s| s.snapshot_id())
        .chain(read_elsewhere.iter().copied())
        .collect();
    let held = held_by_children(table.metadata(), &ids);
    let read: Vec<SnapshotRef> = snapshots
        .iter()
        .filter(|s| !held.contains(&s.snapshot_id()))
        .cloned()
        .collect();
    out.lists_read = read.len();
    // Lists are folded in as they arrive: many snapshots share most of their manifests, and
    // holding every list at once would take memory in proportion to snapshots × manifests.
    let mut lists = futures::stream::iter(read.into_iter().map(|s| {
        let table = table.clone();
        async move {
            table
                .manifest_list_reader(&s)
                .load()
                .await
                .map(|l| l.entries().to_vec())
                .map_err(Error::ice("reading a manifest list"))
        }
    }))
    .buffer_unordered(READ_CONCURRENCY);
    out.lists = snapshots
        .iter()
        .map(|s| s.manifest_list().to_string())
        .collect();
    let mut wanted: Vec<ManifestFile> = Vec::new();
    while let Some(list) = lists.next().await {
        for m in list? {
            if !skip.contains(&m.manifest_path) && out.manifests.insert(m.manifest_path.clone()) {
                wanted.push(m);
            }
        }
    }
    let loaded = cache
        .load_all(table.file_io(), &wanted)
        .await
        .map_err(Error::ice("reading a manifest"))?;
    for manifest in &loaded {
        for e in manifest.entries() {
            if !alive_only || e.is_alive() {
                out.data.insert(
                    e.file_path().to_string(),
                    e.data_file().file_size_in_bytes(),
                );
            }
        }
    }
    Ok(out)
}

/// The snapshots among `ids` whose every manifest a child among `ids` lists too: the parents
/// named by Floe's appends ([`LIST_HOLDS_PARENT`], trusted only on an append that names its
/// own parent).
fn held_by_children(metadata: &TableMetadata, ids: &HashSet<i64>) -> HashSet<i64> {
    metadata
        .snapshots()
        .filter(|s| ids.contains(&s.snapshot_id()))
        .filter(|s| s.summary().operation == Operation::Append)
        .filter_map(|s| {
            let parent = s.parent_snapshot_id()?;
            let said = s.summary().additional_properties.get(LIST_HOLDS_PARENT)?;
            (said.parse::<i64>().ok() == Some(parent) && ids.contains(&parent)).then_some(parent)
        })
        .collect()
}

/// The audit record of a maintenance deletion in `table`. None for the audit table itself:
/// its records are proven by their chain (`floe audit verify`), and a record of each of its
/// own compactions would give the next one something to compact, run after run.
fn maintenance_entry(
    tenant: &str,
    table: &str,
    action: &str,
    detail: serde_json::Value,
) -> Option<Entry> {
    (table != AUDIT_TABLE)
        .then(|| Entry::new(MAINTENANCE_ACTOR, Some(tenant), action, detail.to_string()))
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
        let kept = reach(
            &current,
            &keep,
            &HashSet::new(),
            &HashSet::new(),
            true,
            catalog.manifests(),
        )
        .await?;
        let kept_ids: HashSet<i64> = keep.iter().map(|s| s.snapshot_id()).collect();
        let gone = reach(
            &current,
            &expire,
            &kept_ids,
            &kept.manifests,
            false,
            catalog.manifests(),
        )
        .await?;
        report.manifest_lists_read = kept.lists_read + gone.lists_read;
        let mut garbage: Vec<String> = Vec::new();
        for (path, bytes) in &gone.data {
            if !kept.data.contains_key(path) {
                report.data_bytes_deleted += bytes;
                garbage.push(path.clone());
            }
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

    #[test]
    fn expiry_keeps_current_recent_and_newest() {
        let json = |snapshots: &[(i64, i64)], current: i64| {
            let snaps: Vec<String> = snapshots
                .iter()
                .enumerate()
                .map(|(i, (id, ts))| {
                    format!(
                        r#"{{"snapshot-id":{id},"sequence-number":{},"timestamp-ms":{ts},
                        "manifest-list":"/t/m/{id}.avro","summary":{{"operation":"append"}},
                        "schema-id":0}}"#,
                        i + 1
                    )
                })
                .collect();
            format!(
                r#"{{"format-version":2,"table-uuid":"9c12d441-03fe-4693-9a96-a0705ddf69c1",
                "location":"/t","last-sequence-number":{},"last-updated-ms":1,
                "last-column-id":1,"current-schema-id":0,
                "schemas":[{{"type":"struct","schema-id":0,"fields":[
                  {{"id":1,"name":"x","required":true,"type":"long"}}]}}],
                "default-spec-id":0,"partition-specs":[{{"spec-id":0,"fields":[]}}],
                "last-partition-id":999,"default-sort-order-id":0,
                "sort-orders":[{{"order-id":0,"fields":[]}}],
                "properties":{{}},"current-snapshot-id":{current},
                "refs":{{"main":{{"snapshot-id":{current},"type":"branch"}}}},
                "snapshots":[{}],"snapshot-log":[],"metadata-log":[]}}"#,
                snapshots.len(),
                snaps.join(",")
            )
        };
        let now = 1_000_000;
        let m: iceberg::spec::TableMetadata = serde_json::from_str(&json(
            &[(1, 1_000), (2, 2_000), (3, 3_000), (4, 999_000)],
            4,
        ))
        .unwrap();
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
        let m: iceberg::spec::TableMetadata =
            serde_json::from_str(&json(&[(1, 1_000), (2, 2_000)], 1)).unwrap();
        let (keep, expire) = split_snapshots(&m, ExpirePolicy::keep_current_only(), now);
        assert_eq!((ids(keep), ids(expire)), (vec![1], vec![2]));
    }

    #[test]
    fn only_an_append_naming_its_own_parent_holds_its_parents_list() {
        // (id, parent, operation, the property's value)
        let snapshots = [
            (1, None, "append", None),
            (2, Some(1), "append", Some("1")),
            (3, Some(2), "replace", Some("2")), // copied by a rewrite: not trusted
            (4, Some(3), "append", Some("99")), // names another parent: not trusted
            (5, Some(4), "append", Some("4")),
            (6, Some(5), "append", Some("5")),
        ];
        let snaps: Vec<String> = snapshots
            .iter()
            .map(|(id, parent, op, said)| {
                let parent =
                    parent.map_or(String::new(), |p| format!(r#""parent-snapshot-id":{p},"#));
                let said = said.map_or(String::new(), |v| {
                    format!(r#","{LIST_HOLDS_PARENT}":"{v}""#)
                });
                format!(
                    r#"{{"snapshot-id":{id},{parent}"sequence-number":{id},"timestamp-ms":{id},
                    "manifest-list":"/t/m/{id}.avro","summary":{{"operation":"{op}"{said}}},
                    "schema-id":0}}"#
                )
            })
            .collect();
        let json = format!(
            r#"{{"format-version":2,"table-uuid":"9c12d441-03fe-4693-9a96-a0705ddf69c1",
            "location":"/t","last-sequence-number":6,"last-updated-ms":1,
            "last-column-id":1,"current-schema-id":0,
            "schemas":[{{"type":"struct","schema-id":0,"fields":[
              {{"id":1,"name":"x","required":true,"type":"long"}}]}}],
            "default-spec-id":0,"partition-specs":[{{"spec-id":0,"fields":[]}}],
            "last-partition-id":999,"default-sort-order-id":0,
            "sort-orders":[{{"order-id":0,"fields":[]}}],
            "properties":{{}},"current-snapshot-id":6,
            "refs":{{"main":{{"snapshot-id":6,"type":"branch"}}}},
            "snapshots":[{}],"snapshot-log":[],"metadata-log":[]}}"#,
            snaps.join(",")
        );
        let m: TableMetadata = serde_json::from_str(&json).unwrap();
        let sorted = |h: HashSet<i64>| {
            let mut v: Vec<i64> = h.into_iter().collect();
            v.sort();
            v
        };
        let all: HashSet<i64> = (1..=6).collect();
        assert_eq!(sorted(held_by_children(&m, &all)), vec![1, 4, 5]);
        // A child outside the set holds nothing: 5 is held only while 6 is in it.
        let some: HashSet<i64> = (1..=5).collect();
        assert_eq!(sorted(held_by_children(&m, &some)), vec![1, 4]);
    }
}
