//! Projections shared between processes, and redefined: two catalogs opened on one SQLite
//! catalog and warehouse stand for two processes (a server committing events and refreshing,
//! and `floe compactor` polling). Refresh leases keep them from refreshing one projection at
//! once, a dead holder's lease runs out, and the poller finds commits it did not make. A
//! user-defined projection given a new definition keeps serving the old rows until one commit
//! brings in the new rows with the new columns; the old snapshot stays readable.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use floe_catalog::Catalog;
use floe_catalog::projection::{DAILY_ACTIVE_USERS, TOP_PAGES, definition_of};
use floe_compactor::projection::Refresher;
use futures::TryStreamExt;

use crate::world::{self, Kind, World};

/// Waits up to 10 s for `done`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_processes_share_projections_through_refresh_leases_and_polling() {
    let mut w = World::new().await;
    let server = w.refresher();
    // The other process: its own catalog handle (its own commit hooks and caches).
    let other = Catalog::open(&w.config).await.unwrap();
    let compactor = Refresher::new(other.clone(), &w.config);

    w.views(100, &[(Some("a"), "/"), (Some("b"), "/x")]).await;
    let first = server.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(first.committed, 3);
    assert_eq!(w.rows().await, w.expected());

    // While the compactor holds top_pages' lease, the server refreshes the others only.
    let lease = Duration::from_secs(60);
    assert!(
        other
            .take_refresh_lease(&w.tenant, TOP_PAGES, "compactor@elsewhere", lease)
            .await
            .unwrap()
    );
    let held_source = w.source(TOP_PAGES).await;
    w.views(100, &[(Some("c"), "/")]).await;
    let step = server.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(step.committed, 2);
    assert_eq!(
        w.source(TOP_PAGES).await,
        held_source,
        "refreshed under a lease"
    );
    assert_eq!(
        w.source(DAILY_ACTIVE_USERS).await,
        Some(w.events_snapshot().await)
    );
    // A rebuild of it is refused with the reason; a retry can succeed.
    let e = server
        .rebuild(&w.tenant, TOP_PAGES, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refresh lease"), "{e}");

    // Given back, the server's next refresh catches top_pages up.
    other
        .release_refresh_lease(&w.tenant, TOP_PAGES, "compactor@elsewhere")
        .await
        .unwrap();
    server.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.source(TOP_PAGES).await, Some(w.events_snapshot().await));
    assert_eq!(w.rows().await, w.expected());

    // A holder that died: its lease runs out, and the work is taken over.
    assert!(
        other
            .take_refresh_lease(
                &w.tenant,
                TOP_PAGES,
                "compactor@gone",
                Duration::from_millis(50)
            )
            .await
            .unwrap()
    );
    w.views(101, &[(Some("a"), "/")]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.source(TOP_PAGES).await, Some(w.events_snapshot().await));

    // An erasure's refresh waits for a lease held elsewhere instead of leaving the projection
    // behind (its old snapshots, which may hold the users, expire right after).
    assert!(
        other
            .take_refresh_lease(
                &w.tenant,
                TOP_PAGES,
                "compactor@busy",
                Duration::from_millis(300)
            )
            .await
            .unwrap()
    );
    w.views(101, &[(Some("b"), "/")]).await;
    let skipped = server.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(skipped.left_to_others, 1);
    let waited = server.refresh_tenant_wholly(&w.tenant).await.unwrap();
    assert_eq!(waited.left_to_others, 0);
    assert_eq!(w.source(TOP_PAGES).await, Some(w.events_snapshot().await));

    // The compactor polls: commits made by the server's catalog (whose hooks it does not
    // hear) are refreshed by it, with nobody refreshing in the server.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let running = tokio::spawn(compactor.clone().run(until(stopped.clone())));
    let polling = tokio::spawn(compactor.clone().poll(until(stopped)));
    w.views(102, &[(Some("d"), "/"), (Some("e"), "/y")]).await;
    let snapshot = w.events_snapshot().await;
    eventually("the poller refreshes", || async {
        w.source(TOP_PAGES).await == Some(snapshot)
            && w.source(DAILY_ACTIVE_USERS).await == Some(snapshot)
    })
    .await;
    assert_eq!(w.rows().await, w.expected());
    stop.send(true).unwrap();
    running.await.unwrap();
    polling.await.unwrap();
}

/// The rows of the table `name` at snapshot `id`, read through the snapshot's own schema, as
/// text (column names, then values).
async fn rows_at(w: &World, name: &str, id: i64) -> BTreeSet<String> {
    let table = w.catalog.load_table(&w.tenant, name).await.unwrap();
    let batches: Vec<arrow_array::RecordBatch> = table
        .scan()
        .snapshot_id(id)
        .select_all()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut rows = BTreeSet::new();
    for b in batches {
        let names: Vec<&str> = b
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .zip(&names)
                .map(|(c, n)| format!("{n}={}", world::cell(c.as_ref(), i)))
                .collect();
            rows.insert(cells.join("|"));
        }
    }
    rows
}

#[tokio::test]
async fn a_redefined_projection_switches_rows_and_columns_in_one_commit() {
    let mut w = World::new().await;
    let refresher = w.refresher();
    let old = "SELECT CAST(ts AS DATE) AS day, type, count(*) AS n FROM events GROUP BY 1, 2";
    refresher
        .create_projection(&w.tenant, "daily", old, "test")
        .await
        .unwrap();
    let events = w.events(&[
        (100, Some("a"), Kind::View(Some("/"))),
        (100, Some("a"), Kind::Other),
        (100, Some("b"), Kind::View(Some("/x"))),
        (101, None, Kind::View(None)),
    ]);
    w.append(events).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    let before = w.catalog.load_table(&w.tenant, "daily").await.unwrap();
    let old_snapshot = before.metadata().current_snapshot_id().unwrap();
    let old_rows = w.table_rows("daily").await;
    assert_eq!(
        old_rows,
        [
            "100|PageViewed|2",
            "100|SensorReading|1",
            "101|PageViewed|1"
        ]
        .iter()
        .map(|r| r.to_string())
        .collect::<BTreeSet<_>>()
    );
    let n_id = before
        .metadata()
        .current_schema()
        .field_by_name("n")
        .unwrap()
        .id;

    // A definition that is not one is refused, and changes nothing.
    let e = refresher
        .redefine_projection(&w.tenant, "daily", "SELECT count(*) AS n FROM events", "t")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("day"), "{e}");
    let e = refresher
        .redefine_projection(&w.tenant, "nightly", old, "t")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not found") || e.to_string().contains("nightly"),
        "{e}"
    );

    // The new definition is recorded; readers see the old rows until the refresh commits.
    let new = "SELECT CAST(ts AS DATE) AS day, count(DISTINCT user_id) AS users, \
               count(*) AS n FROM events GROUP BY 1";
    refresher
        .redefine_projection(&w.tenant, "daily", new, "test")
        .await
        .unwrap();
    assert_eq!(w.table_rows("daily").await, old_rows);
    let done = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(done.full);

    let after = w.catalog.load_table(&w.tenant, "daily").await.unwrap();
    let schema = after.metadata().current_schema();
    let columns: Vec<&str> = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(columns, ["day", "users", "n"]);
    assert_eq!(
        schema.field_by_name("n").unwrap().id,
        n_id,
        "a kept column keeps its id"
    );
    assert!(schema.field_by_name("users").unwrap().id > before.metadata().last_column_id());
    assert_eq!(definition_of(after.metadata()), Some(new));
    assert_eq!(
        w.table_rows("daily").await,
        ["100|2|3", "101|0|1"]
            .iter()
            .map(|r| r.to_string())
            .collect::<BTreeSet<_>>()
    );

    // The old definition's snapshot is still there, read with its own columns.
    assert_eq!(
        rows_at(&w, "daily", old_snapshot).await,
        [
            "day=100|type=PageViewed|n=2",
            "day=100|type=SensorReading|n=1",
            "day=101|type=PageViewed|n=1"
        ]
        .iter()
        .map(|r| r.to_string())
        .collect::<BTreeSet<_>>()
    );

    // Refreshes go on by the new definition.
    w.views(101, &[(Some("c"), "/")]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full);
    assert!(w.table_rows("daily").await.contains("101|1|2"));
}

#[tokio::test]
async fn a_user_defined_projection_refreshes_within_its_memory_limit() {
    let mut w = World::new().await;
    let mut config = w.config.clone();
    config.projection.memory_limit_bytes = 1;
    let starved = Refresher::new(w.catalog.clone(), &config);
    let sql = "SELECT CAST(ts AS DATE) AS day, user_id, count(*) AS n FROM events GROUP BY 1, 2";
    starved
        .create_projection(&w.tenant, "per_user", sql, "test")
        .await
        .unwrap();
    w.views(
        100,
        &[(Some("a"), "/"), (Some("b"), "/"), (Some("a"), "/x")],
    )
    .await;
    let e = starved.refresh_tenant(&w.tenant).await.unwrap_err();
    assert!(
        e.to_string().contains("projection.memory_limit_bytes"),
        "{e}"
    );
    assert_eq!(w.source("per_user").await, None, "nothing committed");

    // Within the default limit the same refresh commits.
    w.refresher().refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(
        w.table_rows("per_user").await,
        ["100|a|2", "100|b|1"]
            .iter()
            .map(|r| r.to_string())
            .collect::<BTreeSet<_>>()
    );
}
