//! Projection tables against the SQLite catalog: created with a day partition, refreshed day by
//! day with the `events` snapshot they reflect, fenced against a concurrent refresh, kept by a
//! compaction, never ingested into.

use std::collections::{BTreeSet, HashSet};

use floe_catalog::delta::{Delta, RawDelta};
use floe_catalog::projection::{
    ProjectionCommit, ProjectionOutcome, SourceRef, projection_schema, source_of,
};
use floe_catalog::rewrite::{ReplaceOutcome, RewriteKind, live_entries};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, Error, TenantId};
use iceberg::spec::{PrimitiveType, Type};

use crate::common::{file, open};

fn source(id: i64) -> SourceRef {
    SourceRef {
        snapshot_id: id,
        sequence_number: id,
        committed_at_ms: 1_000 * id,
    }
}

async fn live(catalog: &Catalog, t: &TenantId, table: &str) -> HashSet<String> {
    let table = catalog.load_table(t, table).await.unwrap();
    live_entries(&table)
        .await
        .unwrap()
        .iter()
        .map(|e| e.file_path().rsplit('/').next().unwrap().to_string())
        .collect()
}

fn names(names: &[&str]) -> HashSet<String> {
    names.iter().map(|n| format!("{n}.parquet")).collect()
}

#[tokio::test]
async fn a_projection_is_refreshed_day_by_day_and_records_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let t = TenantId::parse("acme").unwrap();
    let k = catalog
        .create_tenant(&t, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    let long = || Type::Primitive(PrimitiveType::Long);
    let schema = projection_schema(vec![
        ("day", Type::Primitive(PrimitiveType::Date), true),
        ("users", long(), false),
    ])
    .unwrap();

    // A projection table needs a `day` date column; it is created once.
    let no_day = projection_schema(vec![("users", long(), false)]).unwrap();
    assert!(matches!(
        catalog
            .create_projection_table(&t, "bad", no_day, true)
            .await,
        Err(Error::Invalid { .. })
    ));
    assert!(
        catalog
            .create_projection_table(&t, "daily", schema.clone(), true)
            .await
            .unwrap()
    );
    assert!(
        !catalog
            .create_projection_table(&t, "daily", schema, true)
            .await
            .unwrap()
    );
    let location = catalog
        .load_table(&t, "daily")
        .await
        .unwrap()
        .metadata()
        .location()
        .to_string();
    assert_eq!(
        source_of(catalog.load_table(&t, "daily").await.unwrap().metadata()).unwrap(),
        None,
        "never refreshed"
    );

    // The first refresh: days 100 and 101, reflecting events snapshot 1.
    let first = catalog
        .commit_projection(
            &t,
            "daily",
            ProjectionCommit {
                expected_source: None,
                source: source(1),
                days: Some(BTreeSet::from([100, 101])),
                added: vec![
                    file(&location, "a100", 100, 1),
                    file(&location, "a101", 101, 1),
                ],
                redefine: None,
            },
        )
        .await
        .unwrap();
    assert!(matches!(first, ProjectionOutcome::Committed { .. }));
    assert_eq!(live(&catalog, &t, "daily").await, names(&["a100", "a101"]));

    // A refresh that started before it (from no source) is fenced: nothing changes.
    let stale = catalog
        .commit_projection(
            &t,
            "daily",
            ProjectionCommit {
                expected_source: None,
                source: source(2),
                days: Some(BTreeSet::from([101])),
                added: vec![file(&location, "stale", 101, 1)],
                redefine: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(stale, ProjectionOutcome::Fenced { found: Some(1) });
    assert_eq!(live(&catalog, &t, "daily").await, names(&["a100", "a101"]));

    // The next refresh replaces day 101 only; day 100 is kept.
    catalog
        .commit_projection(
            &t,
            "daily",
            ProjectionCommit {
                expected_source: Some(1),
                source: source(2),
                days: Some(BTreeSet::from([101, 102])),
                added: vec![
                    file(&location, "b101", 101, 1),
                    file(&location, "b102", 102, 1),
                ],
                redefine: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        live(&catalog, &t, "daily").await,
        names(&["a100", "b101", "b102"])
    );
    let table = catalog.load_table(&t, "daily").await.unwrap();
    assert_eq!(source_of(table.metadata()).unwrap(), Some(source(2)));
    let summary = &table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .additional_properties;
    assert_eq!(summary["total-records"], "3");

    // A compaction of the projection changes no row: the source it reflects is kept.
    let removed = live_entries(&table)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.file_path().ends_with("a100.parquet"))
        .map(|e| e.file_path().to_string())
        .collect::<Vec<_>>();
    assert_eq!(removed.len(), 1);
    let compacted = catalog
        .commit_replace(&t, "daily", removed, vec![file(&location, "c100", 100, 1)])
        .await
        .unwrap();
    assert!(matches!(compacted, ReplaceOutcome::Committed { .. }));
    let table = catalog.load_table(&t, "daily").await.unwrap();
    assert_eq!(source_of(table.metadata()).unwrap(), Some(source(2)));

    // A whole-table refresh (a rebuild's) replaces every day.
    catalog
        .commit_projection(
            &t,
            "daily",
            ProjectionCommit {
                expected_source: Some(2),
                source: source(3),
                days: None,
                added: vec![file(&location, "all", 100, 3)],
                redefine: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(live(&catalog, &t, "daily").await, names(&["all"]));

    // Events are never written to a projection, and a projection commit never touches events.
    let refused = catalog.commit_append(&k, "daily", vec![], None).await;
    assert!(
        matches!(&refused, Err(Error::Invalid { message }) if message.contains("projection")),
        "{refused:?}"
    );
    let refused = catalog
        .commit_projection(
            &t,
            EVENTS_TABLE,
            ProjectionCommit {
                expected_source: None,
                source: source(4),
                days: None,
                added: vec![],
                redefine: None,
            },
        )
        .await;
    assert!(matches!(refused, Err(Error::Invalid { .. })), "{refused:?}");
}

/// The current snapshot of the tenant's events.
async fn events_at(catalog: &Catalog, t: &TenantId) -> Option<i64> {
    catalog
        .load_table(t, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .current_snapshot_id()
}

fn changes(delta: Delta) -> RawDelta {
    match delta {
        Delta::Changes(changes) => changes,
        Delta::Gap { why } => panic!("a gap: {why}"),
    }
}

#[tokio::test]
async fn the_events_delta_has_appends_not_compactions_and_reopens_what_retention_took() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let t = TenantId::parse("delta").unwrap();
    let k = catalog
        .create_tenant(&t, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    let location = catalog
        .load_table(&t, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .location()
        .to_string();

    // Nothing yet: an empty delta from the start.
    let empty = changes(catalog.raw_delta(&t, None).await.unwrap());
    assert_eq!((empty.to, empty.added.len()), (None, 0));

    // Two appends on days 100 and 101.
    catalog
        .commit_append(&k, EVENTS_TABLE, vec![file(&location, "e1", 100, 10)], None)
        .await
        .unwrap();
    let first = events_at(&catalog, &t).await;
    catalog
        .commit_append(&k, EVENTS_TABLE, vec![file(&location, "e2", 101, 5)], None)
        .await
        .unwrap();
    let all = changes(catalog.raw_delta(&t, None).await.unwrap());
    assert_eq!(
        all.added
            .iter()
            .map(|f| (f.day, f.records))
            .collect::<Vec<_>>(),
        vec![(100, 10), (101, 5)],
        "oldest commit first"
    );
    assert_eq!(all.appended_records, 15);
    // The snapshot log tells the dashboard how many events arrived and when the last did.
    let appended = catalog.appends_since(&t, 0).await.unwrap();
    let last_append = appended.last_append_ms;
    assert_eq!(appended.events, 15);
    assert!(last_append.is_some());
    let since_first = changes(catalog.raw_delta(&t, first).await.unwrap());
    assert_eq!(since_first.added.len(), 1);
    assert_eq!(since_first.added[0].day, 101);
    let at = events_at(&catalog, &t).await;
    // The files of chosen days, whole (what a refresh reads to recompute a day).
    let of_day = |days: &[i32]| {
        let catalog = catalog.clone();
        let (t, days) = (t.clone(), days.iter().copied().collect::<BTreeSet<i32>>());
        async move {
            let files = catalog
                .day_files(&t, at.unwrap(), Some(days))
                .await
                .unwrap();
            files.iter().map(|f| (f.day, f.records)).collect::<Vec<_>>()
        }
    };
    assert_eq!(of_day(&[101]).await, [(101, 5)]);
    assert_eq!(of_day(&[99, 100, 101]).await, [(100, 10), (101, 5)]);
    assert_eq!(of_day(&[102]).await, []);
    assert_eq!(since_first.to, at);

    // A compaction changes no row: nothing to refresh.
    let e2 = live_entries(&catalog.load_table(&t, EVENTS_TABLE).await.unwrap())
        .await
        .unwrap()
        .iter()
        .find(|e| e.file_path().ends_with("e2.parquet"))
        .unwrap()
        .file_path()
        .to_string();
    let compacted = catalog
        .commit_replace(
            &t,
            EVENTS_TABLE,
            vec![e2.clone()],
            vec![file(&location, "c2", 101, 5)],
        )
        .await
        .unwrap();
    assert!(matches!(compacted, ReplaceOutcome::Committed { .. }));
    let after_compaction = changes(catalog.raw_delta(&t, at).await.unwrap());
    assert!(after_compaction.added.is_empty() && after_compaction.reopened.is_empty());
    assert!(after_compaction.first_change_ms.is_some());

    // Retention takes day 100 out: the day is re-opened.
    let e1 = live_entries(&catalog.load_table(&t, EVENTS_TABLE).await.unwrap())
        .await
        .unwrap()
        .iter()
        .find(|e| e.file_path().ends_with("e1.parquet"))
        .unwrap()
        .file_path()
        .to_string();
    let dropped = catalog
        .commit_rewrite(
            &t,
            EVENTS_TABLE,
            RewriteKind::Delete,
            vec![e1],
            vec![],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(dropped, ReplaceOutcome::Committed { .. }));
    let after_retention = changes(catalog.raw_delta(&t, at).await.unwrap());
    assert_eq!(after_retention.reopened, BTreeSet::from([100]));
    assert!(after_retention.added.is_empty());

    // Neither the compaction nor retention appended an event: the figures stand, and a
    // moment after the last append still knows when that was.
    let appended = catalog.appends_since(&t, 0).await.unwrap();
    assert_eq!(
        (appended.events, appended.last_append_ms),
        (15, last_append)
    );
    let later = catalog.appends_since(&t, i64::MAX).await.unwrap();
    assert_eq!((later.events, later.last_append_ms), (0, last_append));

    // A snapshot the table does not know is a gap: recompute everything.
    assert!(matches!(
        catalog.raw_delta(&t, Some(42)).await.unwrap(),
        Delta::Gap { .. }
    ));
}

#[tokio::test]
async fn every_tenant_has_the_built_in_projections_unless_its_settings_switch_them_off() {
    use floe_catalog::TenantSettings;
    use floe_catalog::projection::{
        DAILY_ACTIVE_USERS, REVENUE_BY_DAY, TOP_PAGES, is_projection, parse_switches,
    };
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heard.clone();
    catalog.on_commit(std::sync::Arc::new(move |t: &TenantId, table: &str| {
        h.lock().unwrap().push(format!("{t}.{table}"));
    }));
    let t = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&t, "test").await.unwrap();

    // Created with the tenant: a projection table any reader can find, one file (no
    // partition), not yet reflecting any events.
    assert_eq!(
        catalog.list_tables(&t).await.unwrap(),
        [DAILY_ACTIVE_USERS, EVENTS_TABLE, REVENUE_BY_DAY, TOP_PAGES]
    );
    let dau = catalog.load_table(&t, DAILY_ACTIVE_USERS).await.unwrap();
    assert!(is_projection(dau.metadata()));
    assert!(dau.metadata().default_partition_spec().is_unpartitioned());
    assert_eq!(source_of(dau.metadata()).unwrap(), None);
    let folder = dir
        .path()
        .join("warehouse/acme")
        .join(DAILY_ACTIVE_USERS)
        .join("metadata");
    assert!(folder.exists(), "{folder:?}");

    // A commit tells the hooks which table moved.
    let key = catalog.tenant(&t).await.unwrap().key().unwrap();
    let location = catalog
        .load_table(&t, EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .location()
        .to_string();
    catalog
        .commit_append(&key, EVENTS_TABLE, vec![file(&location, "a", 1, 1)], None)
        .await
        .unwrap();
    assert_eq!(*heard.lock().unwrap(), ["acme.events"]);

    // Switched off: the table and its files are gone, and the setting says so.
    let off = TenantSettings {
        projections: parse_switches(&["daily_active_users=off".into()]).unwrap(),
        ..Default::default()
    };
    let tenant = catalog.set_tenant_settings(&t, off, "test").await.unwrap();
    assert_eq!(tenant.projections_off, [DAILY_ACTIVE_USERS]);
    let without = [EVENTS_TABLE, REVENUE_BY_DAY, TOP_PAGES];
    assert_eq!(catalog.list_tables(&t).await.unwrap(), without);
    assert!(!folder.exists());
    let kept = catalog.ensure_builtin_projections(&t).await.unwrap();
    assert_eq!(kept.len(), 2, "the others stay");
    assert_eq!(catalog.list_tables(&t).await.unwrap(), without);

    // Switched on again: an empty table, to be filled by replay.
    let on = TenantSettings {
        projections: parse_switches(&["daily_active_users=on".into()]).unwrap(),
        ..Default::default()
    };
    let tenant = catalog.set_tenant_settings(&t, on, "test").await.unwrap();
    assert!(tenant.projections_off.is_empty());
    let dau = catalog.load_table(&t, DAILY_ACTIVE_USERS).await.unwrap();
    assert_eq!(source_of(dau.metadata()).unwrap(), None);

    // Unknown names and values are refused, naming what is wrong.
    let e = parse_switches(&["top_page=off".into()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("no built-in projection \"top_page\""),
        "{e}"
    );
    let e = parse_switches(&["daily_active_users=maybe".into()]).unwrap_err();
    assert!(e.to_string().contains("neither on nor off"), "{e}");
}
