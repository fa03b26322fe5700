//! Snapshot expiry reads the manifest lists it must and no more: one per run of Floe's appends
//! (an append's list holds its parent's), every list of a snapshot that is not one; and of the
//! manifests, only those naming files that a snapshot whose parent expires deleted, and the
//! kept ones written since (where a freed path might be live again). What it deletes is still
//! exactly what only the expired snapshots reached, once.

use std::collections::BTreeSet;

use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, TenantKey};

use crate::common::{append_file, events_of, expire_all_but_current, file, open};

/// The day (since 1970) of every file here.
const DAY: i32 = 20_000;

/// The data files on disk under the table's folder, by name.
fn data_on_disk(table_dir: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![table_dir.join("data")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                out.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The data files live in the current snapshot of `tenant`'s `events`, by name.
async fn live_in_table(catalog: &Catalog, tenant: &floe_catalog::TenantId) -> BTreeSet<String> {
    let table = catalog.load_table(tenant, EVENTS_TABLE).await.unwrap();
    floe_catalog::rewrite::live_entries(&table)
        .await
        .unwrap()
        .iter()
        .map(|e| e.file_path().rsplit('/').next().unwrap().to_string())
        .collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}{i}.parquet")).collect()
}

/// `before` appends of a file each (a0, a1, …), a compaction of them into one file (c), then
/// `after` appends (b0, b1, …).
async fn compacted_between_appends(
    catalog: &Catalog,
    key: &TenantKey,
    location: &str,
    before: usize,
    after: usize,
) {
    for i in 0..before {
        append_file(catalog, key, location, &format!("a{i}"), DAY, 10).await;
    }
    let removed: Vec<String> = (0..before)
        .map(|i| format!("{location}/data/day={DAY}/a{i}.parquet"))
        .collect();
    let compacted = file(location, "c", DAY, 10 * before as u64);
    catalog
        .commit_replace(key.id(), EVENTS_TABLE, removed, vec![compacted])
        .await
        .unwrap();
    for i in 0..after {
        append_file(catalog, key, location, &format!("b{i}"), DAY, 10).await;
    }
}

#[tokio::test]
async fn expiry_reads_one_list_per_run_of_appends_and_deletes_what_only_they_reached() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (acme, key, location) = events_of(&catalog, "acme").await;
    let table_dir = std::path::PathBuf::from(location.strip_prefix("file://").unwrap());

    // Thirty appends, a compaction of them into one file, ten more appends.
    compacted_between_appends(&catalog, &key, &location, 30, 10).await;
    let history = catalog
        .load_table(&acme, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .snapshots()
        .count();
    assert!(history >= 41, "{history}");

    let report = expire_all_but_current(&catalog, &acme).await;
    assert_eq!(report.snapshots_expired, history - 1);
    // Read: the current snapshot's list, and the last append's before the compaction (the
    // compaction is not an append: its parent's list is not held by its own). Every other
    // expired snapshot's list is held by its child's.
    assert_eq!(report.manifest_lists_read, 2, "{report:?}");
    // Read: the compaction's manifest, the one naming deleted files; then, as it frees
    // some, the current snapshot's manifests written since (the compaction's and b0..b9's),
    // where a freed path must not be live again. None of the 30 appends' manifests.
    assert_eq!(report.manifests_read, 1 + 11, "{report:?}");
    // Deleted: the compacted files, and every expired snapshot's list; kept: what the current
    // snapshot reaches.
    let mut expected = names("b", 0..10);
    expected.insert("c.parquet".to_string());
    assert_eq!(data_on_disk(&table_dir), expected);
    let lists = std::fs::read_dir(table_dir.join("metadata"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snap-"))
        .count();
    assert_eq!(lists, 1);

    // The table reads back whole after the expiry: its current files are all there.
    let reopened = open(dir.path()).await;
    assert_eq!(live_in_table(&reopened, &acme).await, expected);
}

#[tokio::test]
async fn a_replaced_file_is_freed_when_the_last_snapshot_holding_it_expires_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (acme, key, location) = events_of(&catalog, "acme").await;
    let table_dir = std::path::PathBuf::from(location.strip_prefix("file://").unwrap());
    // Snapshots 1-5 append a0..a4, snapshot 6 compacts them into c, 7-9 append b0..b2.
    compacted_between_appends(&catalog, &key, &location, 5, 3).await;
    let mut all = names("a", 0..5);
    all.extend(names("b", 0..3));
    all.insert("c.parquet".to_string());
    let keep = |n| ExpirePolicy {
        max_age: std::time::Duration::ZERO,
        min_snapshots: n,
        keep_from_sequence: None,
    };

    // Keeping the newest five keeps snapshot 5, in which a0..a4 are live: nothing is freed.
    let report = catalog
        .expire_snapshots(&acme, EVENTS_TABLE, keep(5), false)
        .await
        .unwrap();
    assert_eq!(report.snapshots_expired, 4);
    assert_eq!(report.data_bytes_deleted, 0, "{report:?}");
    assert_eq!(data_on_disk(&table_dir), all);

    // Keeping only the current one: the compaction's parent goes, so do a0..a4, read from
    // the compaction's own manifest, and checked against the current snapshot's manifests
    // written since (the compaction's and b0..b2's).
    let report = catalog
        .expire_snapshots(&acme, EVENTS_TABLE, keep(1), false)
        .await
        .unwrap();
    assert_eq!(report.snapshots_expired, 4);
    assert_eq!(report.manifests_read, 1 + 4, "{report:?}");
    assert_eq!(report.data_bytes_deleted, 5 * 100, "{report:?}");
    let mut live = names("b", 0..3);
    live.insert("c.parquet".to_string());
    assert_eq!(data_on_disk(&table_dir), live);

    // A later expiry has nothing left to free, and says so.
    for i in 3..5 {
        append_file(&catalog, &key, &location, &format!("b{i}"), DAY, 10).await;
    }
    let report = catalog
        .expire_snapshots(&acme, EVENTS_TABLE, keep(1), false)
        .await
        .unwrap();
    assert_eq!(report.snapshots_expired, 2);
    assert_eq!(report.data_bytes_deleted, 0, "{report:?}");
    assert_eq!(
        report.manifests_read, 0,
        "the compaction's manifest, still listed, is not read again"
    );
}

#[tokio::test]
async fn a_path_added_again_after_its_removal_is_not_freed_while_live() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (acme, key, location) = events_of(&catalog, "acme").await;
    let table_dir = std::path::PathBuf::from(location.strip_prefix("file://").unwrap());
    // a0..a2 compacted into c; then a0's path is appended again, as another engine sharing
    // the catalog may do (Iceberg's `add_files` imports any path), and b0 after it.
    compacted_between_appends(&catalog, &key, &location, 3, 0).await;
    append_file(&catalog, &key, &location, "a0", DAY, 10).await;
    append_file(&catalog, &key, &location, "b0", DAY, 10).await;

    // The compaction's parent expires, so a0..a2 were removed by a snapshot whose parent
    // expires; a0 is live again in the current snapshot and stays.
    let report = expire_all_but_current(&catalog, &acme).await;
    assert_eq!(report.data_bytes_deleted, 2 * 100, "{report:?}");
    let mut live = names("a", 0..1);
    live.extend(names("b", 0..1));
    live.insert("c.parquet".to_string());
    assert_eq!(data_on_disk(&table_dir), live);
    assert_eq!(live_in_table(&catalog, &acme).await, live);
}
