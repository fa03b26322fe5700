//! What changed in a tenant's `events` table since a snapshot: the files appended since, and the
//! days whose rows were taken out (retention, erasure). A projection refresh reads only these,
//! so its cost follows the new commits, not the size of the table.
//!
//! The snapshots after `since` are walked from the current one back through their parents;
//! of each, only the manifests it wrote itself are read (`added_snapshot_id`). By operation:
//! - `append`: its added entries are new files;
//! - `replace` (compaction, or erasure's merge of manifests): the same rows in other files,
//!   nothing to do;
//! - `delete` (retention) and `overwrite` (erasure): the days of the files it removed or added
//!   are re-opened, to be recomputed from the table as it now is.
//!
//! Anything else, or a gap in the chain (`since` expired), is a [`Delta::Gap`]: the caller
//! recomputes from the whole table.

use std::collections::BTreeSet;

use iceberg::spec::{Literal, ManifestStatus, Operation, PrimitiveLiteral};
use iceberg::table::Table;

use crate::manifests::ManifestCache;
use crate::table::EVENTS_TABLE;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// A data file appended to `events` since the snapshot asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaFile {
    pub path: String,
    pub records: u64,
    pub size: u64,
    /// Its day partition (days since 1970-01-01).
    pub day: i32,
    /// The sequence number of the snapshot that added it (files are read in this order).
    pub sequence: i64,
}

/// The changes to `events` between two of its snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelta {
    /// The snapshot the changes lead to (the current one); `None`: the table has none.
    pub to: Option<i64>,
    /// Its sequence number.
    pub to_sequence: i64,
    /// When it was committed (ms since the epoch).
    pub to_committed_ms: i64,
    /// Files appended since, oldest commit first.
    pub added: Vec<DeltaFile>,
    /// Days whose rows were taken out (by retention or erasure): recompute them whole.
    pub reopened: BTreeSet<i32>,
    /// Events appended since.
    pub appended_records: u64,
    /// When the first snapshot after `since` was committed: the age of the oldest change not
    /// yet reflected (`None`: nothing changed).
    pub first_change_ms: Option<i64>,
}

impl RawDelta {
    /// The snapshot the changes lead to, as a projection records its source (`None`: `events`
    /// has no snapshot).
    pub fn source(&self) -> Option<crate::projection::SourceRef> {
        self.to.map(|snapshot_id| crate::projection::SourceRef {
            snapshot_id,
            sequence_number: self.to_sequence,
            committed_at_ms: self.to_committed_ms,
        })
    }
}

/// How far `events` can be followed from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Changes(RawDelta),
    /// `since` is no longer in the table's history, or a snapshot's operation is not one Floe
    /// makes: recompute from the whole table.
    Gap {
        why: String,
    },
}

impl Catalog {
    /// The changes to the tenant's `events` table since snapshot `since` (`None`: since it was
    /// created); see the module comment.
    pub async fn raw_delta(&self, tenant: &TenantId, since: Option<i64>) -> Result<Delta> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            let table = c.load_table(&tenant, EVENTS_TABLE).await?;
            delta_of(&table, c.manifests(), since).await
        })
        .await
    }
}

impl Catalog {
    /// The data files of `events` live at `snapshot` in the given days (days since the epoch;
    /// `None`: all), oldest commit first: what a projection reads to compute those days whole.
    /// Manifests whose day range misses every one of them are not read. An error if the
    /// snapshot has expired.
    pub async fn day_files(
        &self,
        tenant: &TenantId,
        snapshot: i64,
        days: Option<BTreeSet<i32>>,
    ) -> Result<Vec<DeltaFile>> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            let table = c.load_table(&tenant, EVENTS_TABLE).await?;
            files_of_days(&table, c.manifests(), snapshot, days.as_ref()).await
        })
        .await
    }
}

/// A day (an `int`/`date` partition bound: 4 bytes, little-endian, as the spec serialises it).
fn bound_day(bytes: Option<&[u8]>) -> Option<i32> {
    let b: [u8; 4] = bytes?.try_into().ok()?;
    Some(i32::from_le_bytes(b))
}

async fn files_of_days(
    table: &Table,
    cache: &ManifestCache,
    snapshot: i64,
    days: Option<&BTreeSet<i32>>,
) -> Result<Vec<DeltaFile>> {
    if days.is_some_and(|d| d.is_empty()) {
        return Ok(Vec::new());
    }
    let metadata = table.metadata();
    let snap = metadata
        .snapshot_by_id(snapshot)
        .ok_or_else(|| Error::NotFound {
            what: format!("snapshot {snapshot} of {} (expired)", table.identifier()),
        })?;
    let list = table
        .manifest_list_reader(snap)
        .load()
        .await
        .map_err(Error::ice("reading a manifest list"))?;
    let mut wanted = Vec::new();
    for m in list.entries() {
        let range = m
            .partitions
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|summary| {
                let lo = bound_day(summary.lower_bound.as_deref().map(|b| b.as_slice()))?;
                let hi = bound_day(summary.upper_bound.as_deref().map(|b| b.as_slice()))?;
                Some((lo, hi))
            });
        let wanted_days = |(lo, hi): (i32, i32)| {
            days.is_none_or(|days| lo <= hi && days.range(lo..=hi).next().is_some())
        };
        if range.is_none_or(wanted_days) {
            wanted.push(m);
        }
    }
    let manifests = cache
        .load_all(table, wanted)
        .await
        .map_err(Error::ice("reading a manifest"))?;
    let mut files = Vec::new();
    for manifest in &manifests {
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let file = entry.data_file();
            let day = day(file.partition(), file.file_path())?;
            if days.is_none_or(|days| days.contains(&day)) {
                files.push(DeltaFile {
                    path: file.file_path().to_string(),
                    records: file.record_count(),
                    size: file.file_size_in_bytes(),
                    day,
                    sequence: entry.sequence_number().unwrap_or(0),
                });
            }
        }
    }
    files.sort_by(|a, b| (a.sequence, &a.path).cmp(&(b.sequence, &b.path)));
    Ok(files)
}

/// The day partition of a file of `events`.
fn day(partition: &iceberg::spec::Struct, path: &str) -> Result<i32> {
    match partition.fields().first() {
        Some(Some(Literal::Primitive(PrimitiveLiteral::Int(day)))) => Ok(*day),
        _ => Err(Error::internal(format!("{path} has no day partition"))),
    }
}

async fn delta_of(table: &Table, cache: &ManifestCache, since: Option<i64>) -> Result<Delta> {
    let metadata = table.metadata();
    let Some(current) = metadata.current_snapshot() else {
        return Ok(if since.is_none() {
            Delta::Changes(RawDelta {
                to: None,
                to_sequence: 0,
                to_committed_ms: 0,
                added: Vec::new(),
                reopened: BTreeSet::new(),
                appended_records: 0,
                first_change_ms: None,
            })
        } else {
            Delta::Gap {
                why: "events has no snapshot".into(),
            }
        });
    };
    // The chain back to `since`, newest first.
    let mut chain = Vec::new();
    let mut at = Some(current.clone());
    loop {
        let Some(snapshot) = at else {
            if since.is_some() {
                return Ok(Delta::Gap {
                    why: format!("snapshot {since:?} is not an ancestor of the current one"),
                });
            }
            break;
        };
        if Some(snapshot.snapshot_id()) == since {
            break;
        }
        let parent = snapshot.parent_snapshot_id();
        chain.push(snapshot);
        match parent {
            None => at = None,
            Some(id) => match metadata.snapshot_by_id(id) {
                Some(p) => at = Some(p.clone()),
                None => {
                    return Ok(Delta::Gap {
                        why: format!("snapshot {id} has expired"),
                    });
                }
            },
        }
    }
    chain.reverse();
    let mut delta = RawDelta {
        to: Some(current.snapshot_id()),
        to_sequence: current.sequence_number(),
        to_committed_ms: current.timestamp_ms(),
        added: Vec::new(),
        reopened: BTreeSet::new(),
        appended_records: 0,
        first_change_ms: chain.first().map(|s| s.timestamp_ms()),
    };
    for snapshot in &chain {
        let operation = snapshot.summary().operation.clone();
        let reopens = match operation {
            Operation::Append => false,
            Operation::Replace => continue,
            Operation::Delete | Operation::Overwrite => true,
        };
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(Error::ice("reading a manifest list"))?;
        for manifest in list
            .entries()
            .iter()
            .filter(|m| m.added_snapshot_id == snapshot.snapshot_id())
        {
            let manifest = cache
                .load(table, manifest)
                .await
                .map_err(Error::ice("reading a manifest"))?;
            for entry in manifest.entries() {
                let mine = entry.snapshot_id() == Some(snapshot.snapshot_id());
                let file = entry.data_file();
                match (entry.status(), reopens) {
                    (ManifestStatus::Added, false) if mine => {
                        delta.appended_records += file.record_count();
                        delta.added.push(DeltaFile {
                            path: file.file_path().to_string(),
                            records: file.record_count(),
                            size: file.file_size_in_bytes(),
                            day: day(file.partition(), file.file_path())?,
                            sequence: snapshot.sequence_number(),
                        });
                    }
                    (ManifestStatus::Added | ManifestStatus::Deleted, true) if mine => {
                        delta
                            .reopened
                            .insert(day(file.partition(), file.file_path())?);
                    }
                    _ => {}
                }
            }
        }
    }
    // A re-opened day is recomputed whole: its appended files need no reading of their own.
    delta.added.retain(|f| !delta.reopened.contains(&f.day));
    Ok(Delta::Changes(delta))
}
