//! Appends merge the table's small manifests once there are enough of them (Iceberg's
//! merge-append, at its default of 100): the manifest list stays short, every file stays live
//! once with the snapshot and sequence numbers of the append that added it, an incremental
//! reader still sees each append's own files and no other, and expiry deletes the manifests
//! merged away but never a data file they named.

use std::collections::BTreeSet;

use floe_catalog::delta::Delta;
use floe_catalog::table::EVENTS_TABLE;

use crate::common::{append_file, events_of, expire_all_but_current, file, open};

/// The number of the file `…/f{n}.parquet`.
fn number(path: &str) -> usize {
    let name = path.rsplit('/').next().unwrap();
    name.trim_start_matches('f')
        .trim_end_matches(".parquet")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn appends_merge_small_manifests_and_every_file_stays_live_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (acme, key, location) = events_of(&catalog, "acme").await;

    // 150 appends of one file each, over three days. Snapshot n (1-based) added f{n}.
    let mut added_by = vec![0];
    for n in 1..=150 {
        let f = file(&location, &format!("f{n}"), 20_000 + (n % 3), 10);
        let out = catalog
            .commit_append(&key, EVENTS_TABLE, vec![f], None)
            .await
            .unwrap();
        added_by.push(out.snapshot_id.unwrap());
    }
    let table = catalog.load_table(&acme, EVENTS_TABLE).await.unwrap();
    let metadata = table.metadata();

    // The 100th append found 99 manifests and merged them with its file into one; the 50
    // after it added one manifest each.
    let list = table
        .manifest_list_reader(metadata.current_snapshot().unwrap())
        .load()
        .await
        .unwrap();
    assert_eq!(list.entries().len(), 51);
    let merging = metadata.snapshot_by_id(added_by[100]).unwrap();
    let summary = &merging.summary().additional_properties;
    assert_eq!(summary["manifests-replaced"], "99");
    assert_eq!(summary["manifests-created"], "1");
    assert!(
        !summary.contains_key("floe.list-holds-parent"),
        "its list is not its parent's plus one manifest"
    );
    assert_eq!(summary["total-data-files"], "100");
    let merged = list
        .entries()
        .iter()
        .find(|m| m.added_snapshot_id == added_by[100])
        .unwrap();
    assert_eq!(
        (merged.added_files_count, merged.existing_files_count),
        (Some(1), Some(99))
    );

    // Every file is live once, with the snapshot that added it and that snapshot's sequence
    // number (what readers order files by and what row lineage would follow).
    let live = catalog.live_entries(&table).await.unwrap();
    let files: BTreeSet<usize> = live.iter().map(|e| number(e.file_path())).collect();
    assert_eq!((live.len(), files.len()), (150, 150));
    for e in &live {
        let n = number(e.file_path());
        let seq = metadata
            .snapshot_by_id(added_by[n])
            .unwrap()
            .sequence_number();
        assert_eq!(e.snapshot_id(), Some(added_by[n]), "f{n}");
        assert_eq!(e.sequence_number(), Some(seq), "f{n}");
        assert_eq!(e.file_sequence_number, Some(seq), "f{n}");
    }

    // A projection's incremental read from the 99th append: the 100th append's own file and
    // those after, not the 99 files its manifest merged.
    let Delta::Changes(delta) = catalog.raw_delta(&acme, Some(added_by[99])).await.unwrap() else {
        panic!("the chain from the 99th append is whole");
    };
    let appended: Vec<usize> = delta.added.iter().map(|f| number(&f.path)).collect();
    assert_eq!(appended, (100..=150).collect::<Vec<_>>());

    // Expiry of every older snapshot deletes the 99 manifests merged away (and the lists),
    // and no data file: every one is still live.
    let report = expire_all_but_current(&catalog, &acme).await;
    assert_eq!(report.snapshots_expired, 149);
    assert_eq!(report.data_bytes_deleted, 0, "{report:?}");
    assert_eq!(
        report.manifests_read, 0,
        "no snapshot deleted a file: {report:?}"
    );
    assert_eq!(report.files_deleted, 99 + 149, "{report:?}");
    let reopened = open(dir.path()).await;
    let table = reopened.load_table(&acme, EVENTS_TABLE).await.unwrap();
    let live = reopened.live_entries(&table).await.unwrap();
    assert_eq!(live.len(), 150);
    for e in &live {
        let path = e.file_path().strip_prefix("file://").unwrap();
        assert!(std::path::Path::new(path).exists(), "{path}");
    }
}

#[tokio::test]
async fn a_merge_drops_the_files_a_compaction_replaced_and_keeps_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (acme, key, location) = events_of(&catalog, "acme").await;
    let append = |n: usize| {
        let (catalog, key, location) = (catalog.clone(), key.clone(), location.clone());
        async move { append_file(&catalog, &key, &location, &format!("f{n}"), 20_000, 10).await }
    };
    // Ten appends compacted into one file: the compaction's manifest names the ten as
    // deleted and its output as added. Then enough appends for one merge, and eleven more.
    for n in 1..=10 {
        append(n).await;
    }
    let removed: Vec<String> = (1..=10)
        .map(|n| format!("{location}/data/day=20000/f{n}.parquet"))
        .collect();
    catalog
        .commit_replace(
            &acme,
            EVENTS_TABLE,
            removed,
            vec![file(&location, "f0", 20_000, 100)],
        )
        .await
        .unwrap();
    for n in 11..=120 {
        append(n).await;
    }
    let table = catalog.load_table(&acme, EVENTS_TABLE).await.unwrap();
    let current = table.metadata().current_snapshot().unwrap();
    let list = table.manifest_list_reader(current).load().await.unwrap();
    // The compaction's manifest and 98 appends' were merged by the 99th append after it; the
    // eleven appends since added one manifest each.
    assert_eq!(list.entries().len(), 12);
    let live = catalog.live_entries(&table).await.unwrap();
    let files: BTreeSet<usize> = live.iter().map(|e| number(e.file_path())).collect();
    assert_eq!(files, BTreeSet::from_iter([0].into_iter().chain(11..=120)));
    assert_eq!(live.len(), files.len());
    let merged = list
        .entries()
        .iter()
        .find(|m| m.existing_files_count.unwrap_or(0) > 0)
        .unwrap();
    assert_eq!(
        merged.deleted_files_count,
        Some(0),
        "the replaced files are named deleted by the compaction's own manifest only"
    );

    // Which expiry reads, merged away from the current list, to free the ten replaced files;
    // then the current list's twelve, all written since, where none of them is live again.
    let report = expire_all_but_current(&catalog, &acme).await;
    assert_eq!(report.manifests_read, 1 + 12, "{report:?}");
    assert_eq!(report.data_bytes_deleted, 10 * 100, "{report:?}");
    for n in 1..=10 {
        let path = format!("{location}/data/day=20000/f{n}.parquet");
        assert!(!std::path::Path::new(path.strip_prefix("file://").unwrap()).exists());
    }
}
