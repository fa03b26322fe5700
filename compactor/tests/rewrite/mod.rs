//! A rewrite reads its files in several streams side by side, each sorted, and merges them: the
//! file it writes holds every row once, in `(type, ts)` order, whatever stream read which file,
//! with the Parquet properties of a rewrite.

use crate::world::{US_PER_DAY, World};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use floe_catalog::rewrite::live_entries;
use floe_catalog::table::EVENTS_TABLE;
use floe_compactor::Compactor;
use floe_ingest::event::StoredEvent;

#[tokio::test]
async fn a_rewrite_read_in_several_streams_writes_every_row_once_in_type_and_time_order() {
    let world = World::new().await;
    // Twelve commits on one day, each mixing three types with times that go back and forth,
    // so that no file, and no group of files, is in order on its own.
    let types = ["SensorReading", "PageViewed", "PurchaseMade"];
    let mut ids = Vec::new();
    for commit in 0..12i64 {
        let stored: Vec<StoredEvent> = (0..25i64)
            .map(|i| {
                let n = commit * 25 + i;
                ids.push(format!("e{n}"));
                StoredEvent {
                    event_id: format!("e{n}"),
                    kind: types[(n % 3) as usize].into(),
                    version: 1,
                    ts: 3 * US_PER_DAY + (n * 7_919 % 300) * 1_000_000,
                    received_at: 0,
                    user_id: Some(format!("u{}", n % 5)),
                    payload: "{}".into(),
                    client_id: true,
                }
            })
            .collect();
        world.commit(&stored).await;
    }

    let mut config = world.config.compaction.clone();
    config.read_parallelism = 3;
    let compactor = Compactor::new(world.catalog.clone(), config);
    let plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    assert_eq!(plan.bins.len(), 1, "{plan:?}");
    assert_eq!(plan.bins[0].files.len(), 12, "{plan:?}");
    let done = compactor
        .run_bin(&world.tenant, EVENTS_TABLE, &plan.bins[0])
        .await
        .unwrap();
    assert!(done.committed, "{done:?}");
    assert_eq!(done.files_out, 1, "{done:?}");

    let table = world
        .catalog
        .load_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    let entries = live_entries(&table).await.unwrap();
    assert_eq!(entries.len(), 1);
    let path = entries[0].file_path().strip_prefix("file://").unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
        std::fs::File::open(path).unwrap(),
        64,
    )
    .unwrap();
    let mut rows: Vec<(String, i64, String)> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let (kind, ts, id) = (column("type"), column("ts"), column("event_id"));
        for i in 0..batch.num_rows() {
            rows.push((
                kind.as_string::<i32>().value(i).to_string(),
                ts.as_primitive::<TimestampMicrosecondType>().value(i),
                id.as_string::<i32>().value(i).to_string(),
            ));
        }
    }
    let keys: Vec<(&str, i64)> = rows.iter().map(|(k, t, _)| (k.as_str(), *t)).collect();
    assert!(
        keys.is_sorted(),
        "the rewritten file is not in (type, ts) order: {keys:?}"
    );
    let mut got: Vec<String> = rows.into_iter().map(|(_, _, id)| id).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every row once");

    // Written as a rewrite (`table::FileWriter::Rewrite`), not as ingest: payloads and ids
    // keep their dictionaries, which pay in large files when payloads repeat; `ts`, sorted
    // within each type, is delta-encoded instead.
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    for chunk in reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|g| g.columns())
    {
        let name = chunk.column_path().string();
        if name == "ts" {
            assert!(chunk.dictionary_page_offset().is_none(), "{name}");
            assert!(
                chunk
                    .encodings()
                    .any(|e| e == Encoding::DELTA_BINARY_PACKED),
                "{name}: {:?}",
                chunk.encodings().collect::<Vec<_>>()
            );
        } else {
            assert!(chunk.dictionary_page_offset().is_some(), "{name}");
        }
    }
}

/// Planning reads every manifest of the table, each bin's commit reads the live ones again, and
/// expiry reads those of every snapshot it expires: through the catalog's manifest cache, one
/// process reads each manifest from storage once (a 5,000-commit table read its 5,000 three
/// times and more before: BENCHMARKS.md, compaction).
#[tokio::test]
async fn compaction_and_expiry_read_each_manifest_from_storage_once() {
    let world = World::new().await;
    // Twelve commits over two days: twelve manifests, two bins.
    for commit in 0..12i64 {
        let stored: Vec<StoredEvent> = (0..10i64)
            .map(|i| {
                page_view(
                    format!("m{commit}-{i}"),
                    (3 + i % 2) * US_PER_DAY + commit * 1_000_000,
                )
            })
            .collect();
        world.commit(&stored).await;
    }
    let cache = world.catalog.manifests().clone();
    let before = cache.manifests_read();

    let compactor = Compactor::new(world.catalog.clone(), world.config.compaction.clone());
    let plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    assert_eq!(plan.bins.len(), 2, "{plan:?}");
    assert_eq!(
        cache.manifests_read() - before,
        12,
        "planning reads each manifest"
    );
    for bin in &plan.bins {
        let done = compactor
            .run_bin(&world.tenant, EVENTS_TABLE, bin)
            .await
            .unwrap();
        assert!(done.committed, "{done:?}");
    }
    // Every manifest any snapshot lists, read here without the cache.
    let table = world
        .catalog
        .load_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    let mut distinct = std::collections::HashMap::new();
    for snapshot in table.metadata().snapshots() {
        let list = table.manifest_list_reader(snapshot).load().await.unwrap();
        distinct.extend(
            list.entries()
                .iter()
                .map(|m| (m.manifest_path.clone(), m.clone())),
        );
    }
    assert!(distinct.len() > 12, "{}", distinct.len());
    // The cache decodes on blocking threads and inherits sequence numbers itself: what it makes
    // of each manifest (appends' added entries, compactions' existing and deleted ones) is
    // what iceberg-rust's own reader makes.
    let uncached = floe_catalog::manifests::ManifestCache::new(0);
    for file in distinct.values() {
        let ours = uncached.load(&table, file).await.unwrap();
        let theirs = file.load_manifest(table.file_io()).await.unwrap();
        assert_eq!(*ours, theirs, "{}", file.manifest_path);
    }

    let report = world
        .catalog
        .expire_snapshots(
            &world.tenant,
            EVENTS_TABLE,
            floe_catalog::maintenance::ExpirePolicy::keep_current_only(),
            false,
        )
        .await
        .unwrap();
    assert!(report.snapshots_expired >= 13, "{report:?}");
    assert_eq!(
        cache.manifests_read() - before,
        distinct.len() as u64,
        "manifests read from storage by planning, two commits and expiry, against the \
         distinct manifests of the table's snapshots"
    );
}

/// A `PageViewed` event without a user.
fn page_view(event_id: String, ts: i64) -> StoredEvent {
    StoredEvent {
        event_id,
        kind: "PageViewed".into(),
        version: 1,
        ts,
        received_at: 0,
        user_id: None,
        payload: "{}".into(),
        client_id: true,
    }
}

/// Events of `days` (day numbers), `per_day` of them, in one commit.
async fn commit_days(world: &World, tag: &str, days: &[i64], per_day: i64) {
    let stored: Vec<StoredEvent> = days
        .iter()
        .flat_map(|day| {
            (0..per_day).map(move |i| {
                page_view(format!("{tag}-{day}-{i}"), day * US_PER_DAY + i * 1_000_000)
            })
        })
        .collect();
    world.commit(&stored).await;
}

fn file_exists(path: &str) -> bool {
    std::path::Path::new(path.strip_prefix("file://").unwrap_or(path)).exists()
}

/// Bins are committed together, `compaction.bins_per_commit` at a time: each commit writes one
/// manifest naming every live file of the table, so committing the four bins of a 5,000-commit
/// table one by one wrote 20,000 entries four times (BENCHMARKS.md, compaction). A group lands
/// whole or not at all.
#[tokio::test]
async fn bins_committed_together_land_in_one_snapshot_or_not_at_all() {
    let world = World::new().await;
    // Four commits over days 3, 4 and 5: three partitions of four files, three bins.
    for commit in 0..4 {
        commit_days(&world, &format!("c{commit}"), &[3, 4, 5], 5).await;
    }
    let mut config = world.config.compaction.clone();
    config.bins_per_commit = 2;
    let compactor = Compactor::new(world.catalog.clone(), config);
    let plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    assert_eq!(plan.bins.len(), 3, "{plan:?}");
    let snapshots = |t: &iceberg::table::Table| t.metadata().snapshots().count();
    let table = || world.catalog.load_table(&world.tenant, EVENTS_TABLE);

    // Two bins rewritten, then committed together: one snapshot replaces both bins' inputs.
    let before = snapshots(&table().await.unwrap());
    let first = compactor
        .rewrite_bin(&world.tenant, EVENTS_TABLE, &plan.bins[0])
        .await
        .unwrap();
    let second = compactor
        .rewrite_bin(&world.tenant, EVENTS_TABLE, &plan.bins[1])
        .await
        .unwrap();
    let (done, _) = compactor
        .commit_bins(&world.tenant, EVENTS_TABLE, vec![first, second])
        .await
        .unwrap();
    assert!(done.iter().all(|d| d.committed), "{done:?}");
    let t = table().await.unwrap();
    assert_eq!(snapshots(&t), before + 1, "one snapshot for both bins");
    assert_eq!(
        live_entries(&t).await.unwrap().len(),
        2 + 4,
        "two new files, four left"
    );

    // The third bin is rewritten twice; the first rewrite lands alone, so the second, grouped
    // with a bin whose inputs are all live, names inputs that are gone: neither lands, and the
    // group's new files are deleted, the live bin's inputs left as they were.
    commit_days(&world, "late", &[6], 5).await;
    commit_days(&world, "later", &[6], 5).await;
    let plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    let (third, sixth) = {
        let day = |b: &floe_compactor::Bin| b.files.len();
        assert_eq!(plan.bins.len(), 2, "{plan:?}");
        assert!(
            plan.bins.iter().all(|b| day(b) == 2 || day(b) == 4),
            "{plan:?}"
        );
        let third = plan.bins.iter().find(|b| day(b) == 4).unwrap();
        let sixth = plan.bins.iter().find(|b| day(b) == 2).unwrap();
        (third, sixth)
    };
    let once = compactor
        .rewrite_bin(&world.tenant, EVENTS_TABLE, third)
        .await
        .unwrap();
    let again = compactor
        .rewrite_bin(&world.tenant, EVENTS_TABLE, third)
        .await
        .unwrap();
    let live = compactor
        .rewrite_bin(&world.tenant, EVENTS_TABLE, sixth)
        .await
        .unwrap();
    let written = |r: &floe_compactor::Rewritten| -> Vec<String> { r.written_paths() };
    let doomed: Vec<String> = written(&again).into_iter().chain(written(&live)).collect();
    let (done, _) = compactor
        .commit_bins(&world.tenant, EVENTS_TABLE, vec![once])
        .await
        .unwrap();
    assert!(done[0].committed, "{done:?}");
    let t = table().await.unwrap();
    let (before, live_before) = (snapshots(&t), live_entries(&t).await.unwrap().len());
    let (done, _) = compactor
        .commit_bins(&world.tenant, EVENTS_TABLE, vec![again, live])
        .await
        .unwrap();
    assert!(done.iter().all(|d| !d.committed), "{done:?}");
    let t = table().await.unwrap();
    assert_eq!(snapshots(&t), before, "nothing committed");
    assert_eq!(live_entries(&t).await.unwrap().len(), live_before);
    assert!(
        !doomed.iter().any(|p| file_exists(p)),
        "the dropped group's new files are deleted: {doomed:?}"
    );

    // Through a whole maintenance run: four bins (day 6's two files, left by the dropped group,
    // and days 7 to 9) at three per commit are two snapshots, the second of the one bin left,
    // told in order; every event is there once.
    for commit in 0..3 {
        commit_days(&world, &format!("d{commit}"), &[7, 8, 9], 5).await;
    }
    let before = table().await.unwrap();
    let replaces = |t: &iceberg::table::Table| {
        t.metadata()
            .snapshots()
            .filter(|s| s.summary().operation == iceberg::spec::Operation::Replace)
            .count()
    };
    let mut config = world.config.compaction.clone();
    config.bins_per_commit = 3;
    let compactor = Compactor::new(world.catalog.clone(), config);
    let (mut table_now, mut committed_lines, mut bins_told) =
        (String::new(), Vec::new(), Vec::new());
    let totals = compactor
        .maintain(
            Some(std::slice::from_ref(&world.tenant)),
            "test",
            floe_compactor::maintain::Options { dry_run: false },
            &mut |p| match p {
                floe_compactor::maintain::Progress::Plan { table, .. } => {
                    table_now = table.to_string()
                }
                floe_compactor::maintain::Progress::Committed {
                    bins, committed, ..
                } if table_now == EVENTS_TABLE => committed_lines.push((bins, committed)),
                floe_compactor::maintain::Progress::Bin { index, of, .. }
                    if table_now == EVENTS_TABLE =>
                {
                    bins_told.push((index, of))
                }
                _ => {}
            },
        )
        .await
        .unwrap();
    let events_run = &totals
        .runs
        .iter()
        .find(|(name, _)| name.ends_with(".events"))
        .unwrap()
        .1;
    assert_eq!(events_run.bins_committed, 4, "{events_run:?}");
    assert_eq!(committed_lines, vec![(3, true), (1, true)]);
    assert_eq!(bins_told, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    let after = table().await.unwrap();
    assert_eq!(
        replaces(&after) - replaces(&before),
        2,
        "four bins, three per commit"
    );
    let mut ids = Vec::new();
    for entry in live_entries(&after).await.unwrap() {
        let file = std::fs::File::open(entry.file_path().strip_prefix("file://").unwrap()).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch
                .column(batch.schema().index_of("event_id").unwrap())
                .clone();
            ids.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string()),
            );
        }
    }
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 4 * 3 * 5 + 2 * 5 + 3 * 3 * 5, "every event");
    assert_eq!(distinct.len(), ids.len(), "each once");
}

/// A commit whose metadata swap fails may still have landed: the database applied the swap and
/// lost only its reply. Its new files are therefore kept while the table exists (orphan cleanup
/// takes them if no snapshot reaches them); deleting them could leave the table naming files
/// that are gone. A commit that failed before its swap, or into a table that is gone, took
/// nothing (and no orphan cleanup will ever look there): its files are deleted.
#[tokio::test]
async fn a_commit_whose_swap_failed_keeps_its_files_and_any_other_failure_deletes_them() {
    // A statement run on the catalog's database from a second connection.
    async fn on_catalog_db(world: &World, sql: &str) {
        let db = world.config.data_dir.join("catalog.db");
        let other = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query(sql).execute(&other).await.unwrap();
    }
    let cases = [
        // The tenant deleted between the rewrite and its commit.
        ("the table is gone", None, false),
        // The table cannot be read: the commit fails before its swap.
        (
            "the commit failed before its swap",
            Some("ALTER TABLE iceberg_tables RENAME TO iceberg_tables_gone"),
            false,
        ),
        // The swap itself fails.
        (
            "the swap failed",
            Some(
                "CREATE TRIGGER no_swap BEFORE UPDATE ON iceberg_tables \
                 BEGIN SELECT RAISE(ABORT, 'the swap fails'); END",
            ),
            true,
        ),
    ];
    for (case, sql, kept) in cases {
        let world = World::new().await;
        let (compactor, rewritten) = one_bin_rewritten(&world).await;
        let written = rewritten.written_paths();
        match sql {
            Some(sql) => on_catalog_db(&world, sql).await,
            None => {
                world
                    .catalog
                    .delete_tenant(&world.tenant, false, "test")
                    .await
                    .unwrap();
            }
        }
        let failed = compactor
            .commit_bins(&world.tenant, EVENTS_TABLE, vec![rewritten])
            .await;
        assert!(failed.is_err(), "{case}: the commit cannot have succeeded");
        assert!(
            written.iter().all(|p| file_exists(p) == kept),
            "{case}: the new files are {}: {written:?}",
            if kept { "kept" } else { "deleted" }
        );
    }
}

/// Three commits on one day, planned and its one bin rewritten (not committed).
async fn one_bin_rewritten(world: &World) -> (Compactor, floe_compactor::Rewritten) {
    for commit in 0..3 {
        commit_days(world, &format!("c{commit}"), &[3], 5).await;
    }
    let compactor = Compactor::new(world.catalog.clone(), world.config.compaction.clone());
    let plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    let rewritten = compactor
        .rewrite_bin(&world.tenant, EVENTS_TABLE, &plan.bins[0])
        .await
        .unwrap();
    let written = rewritten.written_paths();
    assert!(!written.is_empty() && written.iter().all(|p| file_exists(p)));
    (compactor, rewritten)
}

/// A bin whose new files do not hold its inputs' rows (a rewrite that lost one) is left out of
/// its group's commit, its new files deleted and its inputs left live; the bins beside it land.
#[tokio::test]
async fn a_bin_whose_files_lack_rows_is_left_out_and_the_others_land() {
    let world = World::new().await;
    for commit in 0..3 {
        commit_days(&world, &format!("c{commit}"), &[3, 4], 5).await;
    }
    let compactor = Compactor::new(world.catalog.clone(), world.config.compaction.clone());
    let mut plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    assert_eq!(plan.bins.len(), 2, "{plan:?}");
    // The first bin claims one row more than its inputs hold, as if its rewrite had lost one.
    plan.bins[0].files[0].rows += 1;
    let mut rewritten = Vec::new();
    for bin in &plan.bins {
        let r = compactor
            .rewrite_bin(&world.tenant, EVENTS_TABLE, bin)
            .await
            .unwrap();
        rewritten.push(r);
    }
    let (short, good) = (rewritten[0].written_paths(), rewritten[1].written_paths());
    let (done, _) = compactor
        .commit_bins(&world.tenant, EVENTS_TABLE, rewritten)
        .await
        .unwrap();
    assert!(!done[0].committed && done[1].committed, "{done:?}");
    assert!(short.iter().all(|p| !file_exists(p)), "{short:?}");

    let t = world
        .catalog
        .load_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    let live: Vec<String> = live_entries(&t)
        .await
        .unwrap()
        .iter()
        .map(|e| e.file_path().to_string())
        .collect();
    assert!(good.iter().all(|p| live.contains(p)), "{live:?}");
    let inputs = plan.bins[0].files.iter().map(|f| &f.path);
    assert!(inputs.clone().all(|p| live.contains(p)), "{live:?}");
    assert_eq!(live.len(), good.len() + inputs.count());
}

/// A rewrite whose sort passes its memory spills into this process' directory under the data
/// directory's `spill`, at most `compaction.spill_total_bytes`: with DataFusion's defaults
/// each rewrite could write up to 100 GB into the system's temporary directory, where a
/// killed compaction left tenants' rows that no erasure reaches.
#[tokio::test]
async fn a_rewrite_spills_into_the_data_directory_at_most_its_total() {
    let world = World::new().await;
    // 48 MB of payloads, against 40 MiB of memory.
    for commit in 0..24i64 {
        let stored: Vec<StoredEvent> = (0..2_000i64)
            .map(|i| StoredEvent {
                payload: format!("{{\"n\":\"{}\"}}", "x".repeat(1_000 + (i as usize % 7))),
                ..page_view(
                    format!("e{commit}-{i}"),
                    3 * US_PER_DAY + (i * 7_919 % 5_000),
                )
            })
            .collect();
        world.commit(&stored).await;
    }
    let root = tempfile::tempdir().unwrap();
    let spill = root.path().join("spill");
    let compactor = |total| {
        let mut config = world.config.compaction.clone();
        config.memory_limit_bytes = 40 << 20;
        config.spill_total_bytes = total;
        Compactor::new(world.catalog.clone(), config)
            .spilling_into(spill.clone())
            .unwrap()
    };
    let plan = compactor(1)
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    assert_eq!(plan.bins.len(), 1, "{plan:?}");
    let refused = compactor(1)
        .run_bin(&world.tenant, EVENTS_TABLE, &plan.bins[0])
        .await
        .expect_err("past the spill total")
        .to_string();
    assert!(
        refused.contains("compaction.spill_total_bytes"),
        "{refused}"
    );
    // The process' own directory, emptied of the rewrite's files as they went.
    let dirs: Vec<_> = std::fs::read_dir(&spill)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(std::fs::read_dir(&dirs[0]).unwrap().count(), 0);
    // With room to spill, the rewrite lands.
    let done = compactor(1 << 30)
        .run_bin(&world.tenant, EVENTS_TABLE, &plan.bins[0])
        .await
        .unwrap();
    assert!(done.committed, "{done:?}");
}
