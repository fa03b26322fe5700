//! Floe's commit path against the SQLite catalog: positions, conflicts, metadata files.

use floe_catalog::table::{EVENTS_TABLE, POSITION_PREFIX};
use floe_catalog::{SourcePosition, TenantId};

use crate::common::{append_file, events_of, open};

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
    let k = catalog
        .create_tenant(&t, "test")
        .await
        .unwrap()
        .key()
        .unwrap();

    let first = catalog
        .commit_append(&k, EVENTS_TABLE, vec![], Some(&pos(1, 5)))
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
        .commit_append(&k, EVENTS_TABLE, vec![], Some(&pos(1, 5)))
        .await
        .unwrap();
    assert!(again.already_committed);
    assert_eq!(again.snapshot_id, first.snapshot_id);

    // A batch overlapping committed positions is a bug, reported as such.
    assert!(
        catalog
            .commit_append(&k, EVENTS_TABLE, vec![], Some(&pos(4, 8)))
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
        .commit_append(&k, EVENTS_TABLE, vec![], Some(&other))
        .await
        .unwrap();
    catalog
        .commit_append(&k, EVENTS_TABLE, vec![], Some(&pos(6, 9)))
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
async fn a_tenant_created_again_is_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let t = TenantId::parse("again").unwrap();
    let first = catalog
        .create_tenant(&t, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    catalog
        .commit_append(&first, EVENTS_TABLE, vec![], Some(&pos(1, 1)))
        .await
        .unwrap();

    // Deleted and created again: a new incarnation, with a table that knows it.
    catalog.delete_tenant(&t, true, "test").await.unwrap();
    let second = catalog
        .create_tenant(&t, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    assert_eq!(first.id(), second.id());
    assert_ne!(first.incarnation(), second.incarnation());
    assert_eq!(catalog.tenant_key(&t).await.unwrap(), Some(second.clone()));

    // A batch the first incarnation left uncommitted (a writer that had not yet heard of the
    // deletion) is refused by the new table, inside the compare-and-swap loop: it would
    // otherwise land there, since the new table holds no positions to skip it by.
    let err = catalog
        .commit_append(&first, EVENTS_TABLE, vec![], Some(&pos(2, 2)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), floe_catalog::ErrorKind::NotFound, "{err}");
    assert!(matches!(err, floe_catalog::Error::IncarnationGone { .. }));
    let table = catalog.load_table(&t, EVENTS_TABLE).await.unwrap();
    assert!(table.metadata().current_snapshot().is_none());

    // The new incarnation commits from position 1 again: its table never saw the old log.
    let done = catalog
        .commit_append(&second, EVENTS_TABLE, vec![], Some(&pos(1, 1)))
        .await
        .unwrap();
    assert!(!done.already_committed);
}

#[tokio::test]
async fn racing_catalogs_both_land_and_old_metadata_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path()).await;
    let b = open(dir.path()).await;
    let t = TenantId::parse("race").unwrap();
    let k = a.create_tenant(&t, "test").await.unwrap().key().unwrap();

    // Two handles with separate caches commit interleaved: each must notice the other's swap.
    let mut tasks = Vec::new();
    for (name, c) in [("wal-a", a.clone()), ("wal-b", b.clone())] {
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 1..=60u64 {
                let p = SourcePosition {
                    source: name.into(),
                    first: i,
                    last: i,
                };
                conflicts += c
                    .commit_append(&k, EVENTS_TABLE, vec![], Some(&p))
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

#[tokio::test]
async fn kafka_positions_fence_zombies_and_skip_replays() {
    use floe_catalog::table::{KafkaBatch, KafkaCommit, KafkaRange, kafka_positions};
    use std::collections::BTreeMap;

    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let t = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&t, "test").await.unwrap();
    let batch = |group: &str, parts: &[(i32, Option<i64>, i64)]| KafkaBatch {
        group: group.into(),
        topic: "tenant-acme.events".into(),
        partitions: parts
            .iter()
            .map(|&(p, expected, next)| (p, KafkaRange { expected, next }))
            .collect(),
    };
    let commit = |b: KafkaBatch| {
        let catalog = catalog.clone();
        let t = t.clone();
        async move {
            catalog
                .commit_append_kafka(&t, EVENTS_TABLE, vec![], &b)
                .await
                .unwrap()
        }
    };
    let stored = |group: &'static str| {
        let catalog = catalog.clone();
        let t = t.clone();
        async move {
            let table = catalog.load_table(&t, EVENTS_TABLE).await.unwrap();
            kafka_positions(table.metadata(), group, "tenant-acme.events").unwrap()
        }
    };

    let first = commit(batch("g", &[(0, None, 10), (1, None, 5)])).await;
    assert!(matches!(first, KafkaCommit::Committed { .. }), "{first:?}");
    assert_eq!(stored("g").await, BTreeMap::from([(0, 10), (1, 5)]));

    // A worker that read from the start again (a replay after a crash): already in.
    assert_eq!(
        commit(batch("g", &[(0, None, 7)])).await,
        KafkaCommit::AlreadyCommitted
    );
    // A zombie whose batch reaches past what the table holds, from a stale start: fenced.
    assert_eq!(
        commit(batch("g", &[(0, None, 12)])).await,
        KafkaCommit::Fenced {
            stored: BTreeMap::from([(0, 10), (1, 5)])
        }
    );
    // A start past the table's position would skip records: fenced too.
    assert!(matches!(
        commit(batch("g", &[(1, Some(8), 9)])).await,
        KafkaCommit::Fenced { .. }
    ));
    // The owner goes on from the table's position.
    assert!(matches!(
        commit(batch("g", &[(0, Some(10), 20)])).await,
        KafkaCommit::Committed { .. }
    ));
    // Partly committed (partition 1 is, partition 0 is not): fenced, nothing lands.
    assert!(matches!(
        commit(batch("g", &[(0, Some(20), 25), (1, Some(3), 5)])).await,
        KafkaCommit::Fenced { .. }
    ));
    assert_eq!(stored("g").await, BTreeMap::from([(0, 20), (1, 5)]));

    // Another consumer group keeps positions of its own, carried by every commit.
    assert!(matches!(
        commit(batch("h", &[(0, None, 3)])).await,
        KafkaCommit::Committed { .. }
    ));
    assert_eq!(stored("g").await, BTreeMap::from([(0, 20), (1, 5)]));
    assert_eq!(stored("h").await, BTreeMap::from([(0, 3)]));
    let snapshots = catalog
        .load_table(&t, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .snapshots()
        .count();
    assert_eq!(
        snapshots, 3,
        "only the three committed batches made snapshots"
    );
}

#[tokio::test]
async fn a_copied_data_folder_leaves_the_originals_tables_alone() {
    let original = tempfile::tempdir().unwrap();
    let catalog = open(original.path()).await;
    let (tenant, key, location) = events_of(&catalog, "copied").await;
    append_file(&catalog, &key, &location, "f1", 20000, 10).await;
    append_file(&catalog, &key, &location, "f2", 20000, 10).await;

    // A copy of the whole folder: its catalog still names the original's files, since Iceberg
    // locations are absolute.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", original.path().display()))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    let copied = open(copy.path()).await;

    // The copy refuses to read or maintain them (expiry would delete the original's files)...
    let err = copied.load_table(&tenant, EVENTS_TABLE).await.unwrap_err();
    assert!(matches!(err, floe_catalog::Error::Config { .. }), "{err}");
    assert!(err.to_string().contains(&location), "{err}");
    // (A query's session lists the tables' metadata files and reads each: refused the same.)
    let located = copied.table_locations(&tenant).await.unwrap();
    let (name, at) = located.into_iter().next().unwrap();
    let err = copied.load_table_at(&tenant, &name, at).await.unwrap_err();
    assert!(matches!(err, floe_catalog::Error::Config { .. }), "{err}");
    let err = copied
        .expire_snapshots(
            &tenant,
            EVENTS_TABLE,
            floe_catalog::maintenance::ExpirePolicy::keep_current_only(),
            false,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, floe_catalog::Error::Config { .. }), "{err}");
    let err = copied
        .commit_append(&key, EVENTS_TABLE, vec![], None)
        .await
        .unwrap_err();
    assert!(matches!(err, floe_catalog::Error::Config { .. }), "{err}");

    // ...and the original keeps every snapshot and file.
    let table = catalog.load_table(&tenant, EVENTS_TABLE).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 2);
    let first = format!("{location}/data/day=20000/f1.parquet");
    assert!(std::path::Path::new(first.strip_prefix("file://").unwrap()).exists());
}

/// A query's session asks the database once for every table's metadata file, then reads each
/// file (kept per location): what it loads is what `load_table` loads, and a commit moves it.
#[tokio::test]
async fn one_question_gives_every_tables_current_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (tenant, key, location) = events_of(&catalog, "located").await;
    let (other, _, elsewhere) = events_of(&catalog, "elsewhere").await;
    append_file(&catalog, &key, &location, "f1", 20000, 10).await;

    let located = catalog.table_locations(&tenant).await.unwrap();
    let names: Vec<String> = located.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, catalog.list_tables(&tenant).await.unwrap());
    let folder = |events: &str| format!("{}/", events.rsplit_once('/').unwrap().0);
    assert!(
        located
            .iter()
            .all(|(_, l)| l.starts_with(&folder(&location)))
    );
    let first = located
        .iter()
        .find(|(n, _)| n == EVENTS_TABLE)
        .map(|(_, l)| l.clone())
        .unwrap();
    let loaded = catalog.load_table(&tenant, EVENTS_TABLE).await.unwrap();
    assert_eq!(loaded.metadata_location(), Some(first.as_str()));

    append_file(&catalog, &key, &location, "f2", 20000, 10).await;
    let located = catalog.table_locations(&tenant).await.unwrap();
    let (_, second) = located.iter().find(|(n, _)| n == EVENTS_TABLE).unwrap();
    assert_ne!(*second, first);
    let at = catalog
        .load_table_at(&tenant, EVENTS_TABLE, second.clone())
        .await
        .unwrap();
    let now = catalog.load_table(&tenant, EVENTS_TABLE).await.unwrap();
    assert_eq!(at.metadata().snapshots().count(), 2);
    assert_eq!(
        at.metadata().current_snapshot_id(),
        now.metadata().current_snapshot_id()
    );
    // The other tenant's tables are its own.
    let theirs = catalog.table_locations(&other).await.unwrap();
    assert!(!theirs.is_empty());
    assert!(
        theirs
            .iter()
            .all(|(_, l)| l.starts_with(&folder(&elsewhere)))
    );
}
