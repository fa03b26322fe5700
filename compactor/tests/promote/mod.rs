//! Promoted properties, told as a story: a tenant's purchases are stored with `amount` only in
//! the payload; a schema then promotes `amount`, which becomes a typed column of `events`
//! through schema evolution (files written before read it as null); the purchases written after
//! carry it; Floe's own scan reads the table with its two schemas; `backfill` fills the old
//! files by a replace commit; the per-type view reads the column.

use crate::world::{Kind, World};
use floe_catalog::schema::Compatibility;
use floe_catalog::table::EVENTS_TABLE;
use floe_compactor::Compactor;
use floe_query::Engine;
use serde_json::json;

async fn sql(engine: &Engine, world: &World, sql: &str) -> String {
    let (_, batches) = engine
        .sql(&world.tenant, floe_query::Scope::AllTables, sql)
        .await
        .unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_promoted_property_becomes_a_column_filled_from_then_on_and_by_backfill() {
    let mut world = World::new().await;
    let before = world.events(&[
        (1, Some("u1"), Kind::Buy(Some("EUR"), "10.5")),
        (1, Some("u2"), Kind::Buy(Some("USD"), "20")),
    ]);
    world.append(before).await;

    // Promote `amount` (a number) and `currency` (a string).
    let schema = json!({
        "type": "object",
        "properties": {
            "amount": {"type": "number", "x-floe-promote": true},
            "currency": {"type": "string", "x-floe-promote": true}
        }
    });
    world
        .catalog
        .register_schema(&world.tenant, "PurchaseMade", 1, schema, None, "test")
        .await
        .unwrap();
    let table = world
        .catalog
        .load_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    let evolved = table.metadata().current_schema();
    assert_eq!(evolved.field_by_name("amount").unwrap().id, 9);
    assert_eq!(evolved.field_by_name("currency").unwrap().id, 10);
    assert_eq!(table.metadata().schemas_iter().len(), 2);

    let after = world.events(&[(1, Some("u3"), Kind::Buy(Some("EUR"), "30.25"))]);
    world.append(after).await;
    let views = world.events(&[(2, Some("u1"), Kind::View(Some("/home")))]);
    world.append(views).await;

    let engine = Engine::new(world.catalog.clone(), world.config.query.clone());
    let read = "SELECT event_id, type, amount, currency FROM events ORDER BY event_id";
    let got = sql(&engine, &world, read).await;
    for row in [
        "| e1       | PurchaseMade |        |          |",
        "| e2       | PurchaseMade |        |          |",
        "| e3       | PurchaseMade | 30.25  | EUR      |",
        "| e4       | PageViewed   |        |          |",
    ] {
        assert!(got.contains(row), "{row} not in\n{got}");
    }
    // Two schemas, and still Floe's own Parquet scan (not iceberg-datafusion's).
    let plan = sql(&engine, &world, "EXPLAIN SELECT sum(amount) FROM events").await;
    assert!(
        plan.contains("DataSourceExec") && plan.contains("file_type=parquet"),
        "{plan}"
    );

    // Backfill rewrites the one file written before the promotion, and only it.
    let compactor = Compactor::new(world.catalog.clone(), world.config.compaction.clone());
    let done = compactor
        .backfill_promoted(&world.tenant, "amount")
        .await
        .unwrap();
    assert_eq!(
        (done.files_in, done.rows, done.bins_left),
        (1, 2, 0),
        "{done:?}"
    );
    let got = sql(&engine, &world, read).await;
    for row in [
        "| e1       | PurchaseMade | 10.5   | EUR      |",
        "| e2       | PurchaseMade | 20.0   | USD      |",
        "| e3       | PurchaseMade | 30.25  | EUR      |",
        "| e4       | PageViewed   |        |          |",
    ] {
        assert!(got.contains(row), "{row} not in\n{got}");
    }
    let again = compactor
        .backfill_promoted(&world.tenant, "currency")
        .await
        .unwrap();
    assert_eq!(again.files_in, 0, "{again:?}");

    // The view reads the column.
    let got = sql(
        &engine,
        &world,
        "SELECT currency, sum(amount) AS total FROM purchase_made GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert!(got.contains("| EUR      | 40.75 |"), "{got}");
    assert!(got.contains("| USD      | 20.0  |"), "{got}");

    // Refused: a column that is not promoted; a property promoted as another type.
    let e = compactor
        .backfill_promoted(&world.tenant, "page")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("promoted: amount, currency"), "{e}");
    let as_text = json!({"properties": {"amount": {"type": "string", "x-floe-promote": true}}});
    let e = world
        .catalog
        .register_schema(
            &world.tenant,
            "PurchaseMade",
            2,
            as_text,
            Some(Compatibility::None),
            "test",
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot be promoted as string"),
        "{e}"
    );
    assert_eq!(
        world
            .catalog
            .schemas(&world.tenant, None)
            .await
            .unwrap()
            .len(),
        1,
        "nothing registered"
    );
}

/// A compaction planned before a promotion and run after it writes the new column, filled:
/// whether an input lacks a column is judged against the schema the rewrite writes with.
#[tokio::test]
async fn a_compaction_planned_before_a_promotion_fills_the_column_it_writes() {
    let mut world = World::new().await;
    for amount in ["1.5", "2.5"] {
        let one = world.events(&[(1, Some("u1"), Kind::Buy(Some("EUR"), amount))]);
        world.append(one).await;
    }
    let compactor = Compactor::new(world.catalog.clone(), world.config.compaction.clone());
    let plan = compactor
        .plan_table(&world.tenant, EVENTS_TABLE)
        .await
        .unwrap();
    assert_eq!(plan.bins.len(), 1, "{plan:?}");

    let schema = json!({"properties": {"amount": {"type": "number", "x-floe-promote": true}}});
    world
        .catalog
        .register_schema(&world.tenant, "PurchaseMade", 1, schema, None, "test")
        .await
        .unwrap();
    let done = compactor
        .run_bin(&world.tenant, EVENTS_TABLE, &plan.bins[0])
        .await
        .unwrap();
    assert!(done.committed, "{done:?}");
    let engine = Engine::new(world.catalog.clone(), world.config.query.clone());
    let got = sql(
        &engine,
        &world,
        "SELECT sum(amount) AS s, count(*) AS n FROM events",
    )
    .await;
    assert!(got.contains("| 4.0 | 2 |"), "{got}");
    // And so nothing is left to backfill.
    let left = compactor
        .backfill_promoted(&world.tenant, "amount")
        .await
        .unwrap();
    assert_eq!(left.files_in, 0, "{left:?}");
}
