//! Floe's commit path against the SQLite catalog: positions, conflicts, metadata files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use floe_catalog::table::{EVENTS_TABLE, POSITION_PREFIX};
use floe_catalog::{Catalog, Config, SourcePosition, TenantId};

async fn open(dir: &std::path::Path) -> Catalog {
    let config = Config::load(None, vec![], &[("data_dir", dir.display().to_string())]).unwrap();
    Catalog::open(&config).await.unwrap()
}

fn pos(first: u64, last: u64) -> SourcePosition {
    SourcePosition {
        source: "wal-test".into(),
        first,
        last,
    }
}

#[tokio::test]
async fn positions_make_commits_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let t = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&t, "test").await.unwrap();

    let first = catalog
        .commit_append(&t, EVENTS_TABLE, vec![], Some(&pos(1, 5)))
        .await
        .unwrap();
    assert!(!first.already_committed);
    assert_eq!(
        catalog
            .committed_position(&t, EVENTS_TABLE, "wal-test")
            .await
            .unwrap(),
        Some(5)
    );

    // The same batch again (a replay, or a retry whose first attempt did land): nothing happens.
    let again = catalog
        .commit_append(&t, EVENTS_TABLE, vec![], Some(&pos(1, 5)))
        .await
        .unwrap();
    assert!(again.already_committed);
    assert_eq!(again.snapshot_id, first.snapshot_id);

    // A batch overlapping committed positions is a bug, reported as such.
    assert!(
        catalog
            .commit_append(&t, EVENTS_TABLE, vec![], Some(&pos(4, 8)))
            .await
            .is_err()
    );

    // Another source's position is carried forward by this source's commits.
    let other = SourcePosition {
        source: "wal-other".into(),
        first: 1,
        last: 1,
    };
    catalog
        .commit_append(&t, EVENTS_TABLE, vec![], Some(&other))
        .await
        .unwrap();
    catalog
        .commit_append(&t, EVENTS_TABLE, vec![], Some(&pos(6, 9)))
        .await
        .unwrap();
    let table = catalog.load_table(&t, EVENTS_TABLE).await.unwrap();
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary[&format!("{POSITION_PREFIX}wal-test")], "9");
    assert_eq!(summary[&format!("{POSITION_PREFIX}wal-other")], "1");
    assert_eq!(
        table.metadata().snapshots().count(),
        3,
        "the replay and the overlap added none"
    );
}

#[tokio::test]
async fn racing_catalogs_both_land_and_old_metadata_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path()).await;
    let b = open(dir.path()).await;
    let t = TenantId::parse("race").unwrap();
    a.create_tenant(&t, "test").await.unwrap();

    // Two handles with separate caches commit interleaved: each must notice the other's swap.
    let mut tasks = Vec::new();
    for (name, c) in [("wal-a", a.clone()), ("wal-b", b.clone())] {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 1..=60u64 {
                let p = SourcePosition {
                    source: name.into(),
                    first: i,
                    last: i,
                };
                conflicts += c
                    .commit_append(&t, EVENTS_TABLE, vec![], Some(&p))
                    .await
                    .unwrap()
                    .conflicts;
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let table = a.load_table(&t, EVENTS_TABLE).await.unwrap();
    assert_eq!(
        table.metadata().snapshots().count(),
        120,
        "every commit landed once"
    );
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary[&format!("{POSITION_PREFIX}wal-a")], "60");
    assert_eq!(summary[&format!("{POSITION_PREFIX}wal-b")], "60");

    // Only the current metadata file and the previous 100 are kept.
    let meta = dir.path().join("warehouse/race/events/metadata");
    let files = std::fs::read_dir(meta)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".metadata.json")
        })
        .count();
    assert_eq!(files, 101);
}
