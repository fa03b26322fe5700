//! A rewrite reads its files in several streams side by side, each sorted, and merges them: the
//! file it writes holds every row once, in `(type, ts)` order, whatever stream read which file.

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
}
