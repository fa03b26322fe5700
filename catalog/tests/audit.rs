//! The audit log as a story: records made at once by many writers form one unbroken chain per
//! tenant; two processes publishing at once put each record in the `audit` table exactly once;
//! `verify_audit` walks the table and then what is not yet published, and names the first
//! record changed in storage (a Parquet file rewritten, a database row edited).

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use std::time::Duration;

use floe_catalog::audit::{AUDIT_TABLE, Entry, PLATFORM_CHAIN};
use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, TenantId};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::open;

/// The catalog's SQLite database, opened beside Floe, as someone with the file would.
async fn raw_db(dir: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("catalog.db").display()))
        .await
        .unwrap()
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
}

#[tokio::test]
async fn the_chain_is_whole_published_once_and_a_change_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let other = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&acme, "test").await.unwrap();

    // 40 records written at once from two processes, a third of them without waiting for the
    // disk: one chain, 1..=40, no fork.
    let mut writers = Vec::new();
    for i in 0..40 {
        let c = if i % 2 == 0 {
            catalog.clone()
        } else {
            other.clone()
        };
        writers.push(tokio::spawn(async move {
            let (actor, detail) = (format!("token:{i}"), format!("{{\"n\":{i}}}"));
            if i % 3 == 0 {
                // A third as a query's records are written: committed without waiting for the
                // disk, on a connection of their own, onto the same chain.
                let entry = Entry::new(actor, Some("acme"), "query", detail);
                c.audit_all_unflushed(vec![entry]).await
            } else {
                c.audit(&actor, Some("acme"), "key.create", &detail).await
            }
        }));
    }
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let v = catalog.verify_audit(Some(&acme)).await.unwrap();
    assert_eq!((v.records, v.published, v.broken), (40, 0, None));
    // The tenant's creation is the platform's record.
    let p = catalog.verify_audit(None).await.unwrap();
    assert_eq!((p.records, p.broken), (1, None));

    // Two processes publish at once: each record lands once.
    let (a, b) = tokio::join!(catalog.publish_audit(1000), other.publish_audit(1000));
    let acme_published = a.unwrap() + b.unwrap();
    assert!(acme_published >= 40, "{acme_published}");
    let v = catalog.verify_audit(Some(&acme)).await.unwrap();
    assert_eq!((v.records, v.published, v.broken), (40, 40, None));
    let table = catalog.load_table(&acme, AUDIT_TABLE).await.unwrap();
    let records: u64 = table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties["total-records"]
        .parse()
        .unwrap();
    assert_eq!(records, 40);
    assert!(
        catalog
            .list_tables(&TenantId::parse("acme").unwrap())
            .await
            .unwrap()
            .contains(&AUDIT_TABLE.to_string())
    );
    assert!(dir.path().join("warehouse").join(PLATFORM_CHAIN).exists());

    // More records, not yet published: walked after the table's.
    catalog
        .audit("cli", Some("acme"), "token.revoke", "{}")
        .await
        .unwrap();
    let v = catalog.verify_audit(Some(&acme)).await.unwrap();
    assert_eq!((v.records, v.published, v.broken), (41, 40, None));

    // One record changed in a Parquet file of the table: named, with where it was read.
    let file = table
        .scan()
        .select_all()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap();
    let first = futures::StreamExt::next(&mut Box::pin(file))
        .await
        .unwrap()
        .unwrap();
    let path = first
        .data_file_path
        .strip_prefix("file://")
        .unwrap()
        .to_string();
    let batch = {
        let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        reader.next().unwrap().unwrap()
    };
    let seq_changed = batch
        .column_by_name("seq")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap()
        .value(0);
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let detail_at = batch.schema().index_of("detail").unwrap();
    let mut details: Vec<String> = batch
        .column(detail_at)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .map(|v| v.unwrap().to_string())
        .collect();
    details[0] = "{\"n\":\"nothing to see\"}".into();
    columns[detail_at] = Arc::new(StringArray::from(details));
    let changed = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&changed).unwrap();
    w.close().unwrap();
    std::fs::write(&path, out).unwrap();
    let broken = catalog
        .verify_audit(Some(&acme))
        .await
        .unwrap()
        .broken
        .expect("the change is found");
    assert_eq!(broken.seq, seq_changed, "{broken:?}");
    assert_eq!(broken.place, "audit table");
    assert!(broken.reason.contains("changed"), "{broken:?}");
}

#[tokio::test]
async fn a_row_edited_in_the_database_breaks_the_chain_there() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&acme, "test").await.unwrap();
    for i in 0..5 {
        catalog
            .audit(
                "cli",
                Some("acme"),
                "alert.create",
                &format!("{{\"n\":{i}}}"),
            )
            .await
            .unwrap();
    }
    // Rewriting a record with its hash recomputed does not help: the next one names the old
    // hash.
    let db = raw_db(dir.path()).await;
    let (prev,): (String,) =
        sqlx::query_as("SELECT prev_hash FROM floe_audit WHERE chain = 'acme' AND seq = 3")
            .fetch_one(&db)
            .await
            .unwrap();
    let (at,): (i64,) =
        sqlx::query_as("SELECT at_ms FROM floe_audit WHERE chain = 'acme' AND seq = 3")
            .fetch_one(&db)
            .await
            .unwrap();
    let forged = floe_catalog::audit::link_hash(
        &prev,
        3,
        at,
        "cli",
        Some("acme"),
        "alert.create",
        "{\"n\":99}",
    );
    sqlx::query(
        "UPDATE floe_audit SET detail = '{\"n\":99}', hash = $1 WHERE chain = 'acme' AND seq = 3",
    )
    .bind(&forged)
    .execute(&db)
    .await
    .unwrap();
    let broken = catalog
        .verify_audit(Some(&acme))
        .await
        .unwrap()
        .broken
        .expect("the forgery is found");
    assert_eq!(
        (broken.seq, broken.place),
        (4, "catalog database"),
        "{broken:?}"
    );
    assert!(broken.reason.contains("does not follow"), "{broken:?}");
}

#[tokio::test]
async fn a_deleted_tenants_late_records_are_the_platforms_and_a_cut_tail_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let t = TenantId::parse("gone").unwrap();
    catalog.create_tenant(&t, "test").await.unwrap();
    catalog
        .audit("token:a", Some("gone"), "key.create", "{}")
        .await
        .unwrap();
    catalog.delete_tenant(&t, false, "test").await.unwrap();
    // A record that waited in a queue while the tenant was deleted: the platform's.
    catalog
        .audit("token:a", Some("gone"), "query.end", "{\"late\":true}")
        .await
        .unwrap();
    catalog.create_tenant(&t, "test").await.unwrap();
    let fresh = catalog.verify_audit(Some(&t)).await.unwrap();
    assert_eq!((fresh.records, &fresh.broken), (0, &None), "{fresh:?}");
    let platform = catalog.verify_audit(None).await.unwrap();
    // create, delete, the late record, create again.
    assert_eq!(
        (platform.records, &platform.broken),
        (4, &None),
        "{platform:?}"
    );

    // The newest records cut from the database: the chain's head still names them.
    for i in 0..3 {
        catalog
            .audit(
                "cli",
                Some("gone"),
                "alert.create",
                &format!("{{\"n\":{i}}}"),
            )
            .await
            .unwrap();
    }
    let db = raw_db(dir.path()).await;
    sqlx::query("DELETE FROM floe_audit WHERE chain = 'gone' AND seq = 3")
        .execute(&db)
        .await
        .unwrap();
    let broken = catalog
        .verify_audit(Some(&t))
        .await
        .unwrap()
        .broken
        .expect("the cut is found");
    assert_eq!(broken.seq, 3, "{broken:?}");
    assert!(broken.reason.contains("missing"), "{broken:?}");
}

/// Maintenance deletes nothing it has not recorded: snapshot expiry writes its record in the
/// transaction of its compare-and-swap, orphan removal before it deletes. With the record
/// refused (a trigger on the audit table here, as a full disk or a lost database would), the
/// snapshots and every file stay; once records can be written again, both go, and the chain
/// names them.
#[tokio::test]
async fn maintenance_deletes_nothing_it_has_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    let key = catalog
        .create_tenant(&acme, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    for _ in 0..3 {
        catalog
            .commit_append(&key, EVENTS_TABLE, vec![], None)
            .await
            .unwrap();
    }
    let table_dir = dir.path().join("warehouse").join("acme").join(EVENTS_TABLE);
    let stray = table_dir.join("data").join("stray.parquet");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"written by a commit that never happened").unwrap();
    let policy = ExpirePolicy {
        max_age: Duration::ZERO,
        min_snapshots: 1,
        keep_from_sequence: None,
    };
    let snapshots = |c: Catalog| async move {
        c.load_table(&TenantId::parse("acme").unwrap(), EVENTS_TABLE)
            .await
            .unwrap()
            .metadata()
            .snapshots()
            .count()
    };

    let db = raw_db(dir.path()).await;
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON floe_audit \
         BEGIN SELECT RAISE(ABORT, 'the audit log is refused'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let (kept, files) = (snapshots(catalog.clone()).await, files_under(&table_dir));
    assert!(kept >= 3, "{kept}");
    let refused = catalog
        .expire_snapshots(&acme, EVENTS_TABLE, policy, false)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = catalog
        .remove_orphans(&acme, EVENTS_TABLE, Duration::ZERO, false)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // A reopened catalog (no cached metadata) sees the same table. The refused expiry's new
    // metadata file is written but never swapped in: an orphan for a later run.
    let reopened = open(dir.path()).await;
    assert_eq!(snapshots(reopened).await, kept);
    assert_eq!(files_under(&table_dir), files + 1);
    assert!(stray.exists());

    sqlx::query("DROP TRIGGER refuse")
        .execute(&db)
        .await
        .unwrap();
    let expired = catalog
        .expire_snapshots(&acme, EVENTS_TABLE, policy, false)
        .await
        .unwrap();
    assert_eq!(expired.snapshots_expired, kept - 1);
    assert!(expired.files_deleted > 0, "{expired:?}");
    let orphans = catalog
        .remove_orphans(&acme, EVENTS_TABLE, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(orphans.orphans_deleted, 2, "{orphans:?}"); // the stray, the refused metadata
    assert!(!stray.exists());

    let records: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, actor, detail FROM floe_audit WHERE chain = 'acme' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let detail = |action: &str| -> serde_json::Value {
        let (_, actor, detail) = records.iter().find(|r| r.0 == action).unwrap();
        assert_eq!(actor, "compactor");
        serde_json::from_str(detail).unwrap()
    };
    let expire = detail("maintenance.expire");
    assert_eq!(expire["table"], EVENTS_TABLE);
    assert_eq!(expire["snapshots"], kept - 1);
    assert_eq!(expire["files"], expired.files_deleted);
    let orphaned = detail("maintenance.orphans");
    assert_eq!(orphaned["files"], 2);
    assert_eq!(records.len(), 2, "{records:?}");
    let v = catalog.verify_audit(Some(&acme)).await.unwrap();
    assert_eq!((v.records, v.broken), (2, None));
}
