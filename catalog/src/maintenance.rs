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
use iceberg::spec::{ManifestFile, Operation, SnapshotRef, TableMetadata};
use iceberg::table::Table;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::audit::{AUDIT_TABLE, Entry, MAINTENANCE_ACTOR};
use crate::manifests::ManifestCache;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

mod expire;

pub use expire::{ExpirePolicy, ExpireReport};

/// Manifest lists read at once.
const READ_CONCURRENCY: usize = 16;

/// Times a local folder being deleted is listed again when a writer added files meanwhile.
const FOLDER_ROUNDS: usize = 5;

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
    /// The manifests listed (those not skipped), as their lists name them.
    listed: Vec<ManifestFile>,
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
    /// warehouse, the folder); how many objects. A writer that was still at work in the folder
    /// (a refresh of a tenant being purged) may add files meanwhile: on a local warehouse the
    /// folder then cannot be removed, and the folder is listed again (a writer's commit into a
    /// table that is gone deletes its own files: `floe_compactor::after_failed_commit`).
    pub(crate) async fn delete_objects_under(&self, location: &str) -> Result<usize> {
        let prefix = self.object_key(location)?;
        let mut deleted = 0;
        for round in 1.. {
            deleted += self.delete_listed(&prefix).await?;
            if self.data_store.store.is_some() {
                break;
            }
            // A local warehouse keeps empty folders; remove them too.
            let dir = std::path::Path::new("/").join(&prefix);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                        && round < FOLDER_ROUNDS =>
                {
                    tokio::time::sleep(Duration::from_millis(50 * round as u64)).await;
                }
                Err(e) => return Err(Error::io(dir.display().to_string())(e)),
            }
        }
        Ok(deleted)
    }

    /// Lists and deletes the objects under `prefix` page by page, until a listing is empty;
    /// how many objects.
    async fn delete_listed(&self, prefix: &str) -> Result<usize> {
        let store = self.data_store.object_store();
        let mut deleted = 0;
        // Page by page keeps memory flat for any tenant size.
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
                return Ok(deleted);
            }
            deleted += page.len();
            self.delete_keys(&page).await?;
        }
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
    let mut out = listed(table, snapshots, read_elsewhere, skip).await?;
    let loaded = cache
        .load_all(table, &out.listed)
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

/// The manifest lists and manifests `snapshots` reach, without reading the manifests (see
/// [`reach`]).
async fn listed(
    table: &Table,
    snapshots: &[SnapshotRef],
    read_elsewhere: &HashSet<i64>,
    skip: &HashSet<String>,
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
    while let Some(list) = lists.next().await {
        for m in list? {
            if !skip.contains(&m.manifest_path) && out.manifests.insert(m.manifest_path.clone()) {
                out.listed.push(m);
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

/// Table metadata of `snapshots` (id, parent, sequence number, timestamp in ms, and the members
/// of its summary after the operation, e.g. `"operation":"append"`) whose current one is
/// `current`: for unit tests.
#[cfg(test)]
pub(crate) fn test_metadata(
    snapshots: &[(i64, Option<i64>, i64, i64, String)],
    current: i64,
) -> TableMetadata {
    let snaps: Vec<String> = snapshots
        .iter()
        .map(|(id, parent, seq, ts, summary)| {
            let parent = parent.map_or(String::new(), |p| format!(r#""parent-snapshot-id":{p},"#));
            format!(
                r#"{{"snapshot-id":{id},{parent}"sequence-number":{seq},"timestamp-ms":{ts},
                "manifest-list":"/t/m/{id}.avro","summary":{{{summary}}},"schema-id":0}}"#
            )
        })
        .collect();
    let last = snapshots.iter().map(|s| s.2).max().unwrap_or(0);
    let json = format!(
        r#"{{"format-version":2,"table-uuid":"9c12d441-03fe-4693-9a96-a0705ddf69c1",
        "location":"/t","last-sequence-number":{last},"last-updated-ms":1,
        "last-column-id":1,"current-schema-id":0,
        "schemas":[{{"type":"struct","schema-id":0,"fields":[
          {{"id":1,"name":"x","required":true,"type":"long"}}]}}],
        "default-spec-id":0,"partition-specs":[{{"spec-id":0,"fields":[]}}],
        "last-partition-id":999,"default-sort-order-id":0,
        "sort-orders":[{{"order-id":0,"fields":[]}}],
        "properties":{{}},"current-snapshot-id":{current},
        "refs":{{"main":{{"snapshot-id":{current},"type":"branch"}}}},
        "snapshots":[{}],"snapshot-log":[],"metadata-log":[]}}"#,
        snaps.join(",")
    );
    match serde_json::from_str(&json) {
        Ok(m) => m,
        Err(e) => panic!("test metadata: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let snapshots: Vec<_> = snapshots
            .iter()
            .map(|(id, parent, op, said)| {
                let said = said.map_or(String::new(), |v| {
                    format!(r#","{LIST_HOLDS_PARENT}":"{v}""#)
                });
                (
                    *id,
                    *parent,
                    *id,
                    *id,
                    format!(r#""operation":"{op}"{said}"#),
                )
            })
            .collect();
        let m = test_metadata(&snapshots, 6);
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
