//! Snapshot expiry reads the manifest lists it must and no more: one per run of Floe's appends
//! (an append's list holds its parent's), every list of a snapshot that is not one. What it
//! deletes is still exactly what only the expired snapshots reached.

use std::collections::BTreeSet;

use floe_catalog::TenantId;
use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::table::EVENTS_TABLE;

use crate::common::{file, open};

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

fn names(prefix: &str, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("{prefix}{i}.parquet")).collect()
}

#[tokio::test]
async fn expiry_reads_one_list_per_run_of_appends_and_deletes_what_only_they_reached() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    let key = catalog
        .create_tenant(&acme, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    let location = catalog
        .load_table(&acme, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .location()
        .to_string();
    let table_dir = std::path::PathBuf::from(location.strip_prefix("file://").unwrap());
    let append = |name: String| {
        let (catalog, key, location) = (catalog.clone(), key.clone(), location.clone());
        async move {
            catalog
                .commit_append(
                    &key,
                    EVENTS_TABLE,
                    vec![file(&location, &name, DAY, 10)],
                    None,
                )
                .await
                .unwrap();
        }
    };

    // Thirty appends, a compaction of them into one file, ten more appends.
    for i in 0..30 {
        append(format!("a{i}")).await;
    }
    let removed: Vec<String> = (0..30)
        .map(|i| format!("{location}/data/day={DAY}/a{i}.parquet"))
        .collect();
    catalog
        .commit_replace(
            &acme,
            EVENTS_TABLE,
            removed,
            vec![file(&location, "c", DAY, 300)],
        )
        .await
        .unwrap();
    for i in 0..10 {
        append(format!("b{i}")).await;
    }
    let history = catalog
        .load_table(&acme, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .snapshots()
        .count();
    assert!(history >= 41, "{history}");

    let report = catalog
        .expire_snapshots(
            &acme,
            EVENTS_TABLE,
            ExpirePolicy::keep_current_only(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(report.snapshots_expired, history - 1);
    // Read: the current snapshot's list, and the last append's before the compaction (the
    // compaction is not an append: its parent's list is not held by its own). Every other
    // expired snapshot's list is held by its child's.
    assert_eq!(report.manifest_lists_read, 2, "{report:?}");
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
    let table = reopened.load_table(&acme, EVENTS_TABLE).await.unwrap();
    let live: BTreeSet<String> = floe_catalog::rewrite::live_entries(&table)
        .await
        .unwrap()
        .iter()
        .map(|e| e.file_path().rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(live, expected);
}
