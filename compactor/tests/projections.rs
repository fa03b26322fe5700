//! The built-in projections kept up to date with `events` against the SQLite catalog and a
//! local warehouse: each step commits events (or compacts, or drops a day, or expires history)
//! and refreshes, and every projection's rows must equal what is computed here from every event
//! written so far (each event id counted once a day).

use std::collections::BTreeSet;

use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::projection::{DAILY_ACTIVE_USERS, REVENUE_BY_DAY, TOP_PAGES, parse_switches};
use floe_catalog::rewrite::{RewriteKind, live_entries};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, TenantSettings};
use floe_compactor::projection::Refreshed;
use iceberg::spec::Literal;

use crate::world::{Kind, TABLES, World};

#[tokio::test]
async fn projections_follow_events_through_duplicates_late_days_compaction_retention_and_expiry() {
    let mut w = World::new().await;
    let refresher = w.refresher();

    // Nothing committed yet: nothing to reflect.
    assert_eq!(
        refresher.refresh_tenant(&w.tenant).await.unwrap(),
        Refreshed::default()
    );

    // Day 100: views (one without a user), purchases in two currencies and in none, and an
    // event of another type; then the first view and the first purchase sent again (the same
    // ids, in a later commit). Day 101: two views.
    let first = w.events(&[
        (100, Some("a"), Kind::View(Some("/"))),
        (100, Some("b"), Kind::View(Some("/"))),
        (100, Some("a"), Kind::View(Some("/x"))),
        (100, None, Kind::View(Some("/"))),
        (100, Some("a"), Kind::Buy(Some("EUR"), "12.5")),
        (100, Some("b"), Kind::Buy(None, "3")),
        (100, Some("c"), Kind::Buy(Some("USD"), "19.99")),
        (100, Some("z"), Kind::Other),
        (100, Some("d"), Kind::View(None)),
    ]);
    let again = vec![first[0].clone(), first[4].clone()];
    w.append(first).await;
    w.append(again).await;
    w.views(101, &[(Some("c"), "/"), (Some("a"), "/y")]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(step.full, "never refreshed: computed from all events");
    assert_eq!(step.committed, 3);
    assert_eq!(w.rows().await, w.expected());
    assert!(
        w.rows().await[TOP_PAGES].contains("100|/|3|2"),
        "the resent view counts once"
    );
    assert!(w.rows().await[REVENUE_BY_DAY].contains("100|EUR|1250|1"));
    assert_eq!(w.dau(101).await, "2|5|5");
    let status = w.catalog.projection_status(&w.tenant).await.unwrap();
    let dau = status
        .iter()
        .find(|p| p.name == DAILY_ACTIVE_USERS)
        .unwrap();
    assert_eq!((dau.rows, dau.lag_events, dau.lag_seconds), (2, 0, 0.0));
    for name in TABLES {
        assert_eq!(w.source(name).await, Some(w.events_snapshot().await));
    }

    // Freshness, from metadata: caught up; then one append behind until the next refresh.
    let lag = |w: &World| {
        let (catalog, tenant) = (w.catalog.clone(), w.tenant.clone());
        async move {
            let status = catalog.projection_status(&tenant).await.unwrap();
            assert_eq!(status.len(), 3);
            status
                .iter()
                .map(|p| (p.lag_events, p.lag_seconds > 0.0 || p.lag_events == 0))
                .collect::<BTreeSet<_>>()
        }
    };
    assert_eq!(lag(&w).await, [(0, true)].into());
    w.views(150, &[(Some("x"), "/"), (Some("y"), "/")]).await;
    assert_eq!(lag(&w).await, [(2, true)].into());
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(lag(&w).await, [(0, true)].into());
    assert_eq!(w.rows().await, w.expected());

    // Refreshing again changes nothing and commits nothing.
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((step.committed, step.files_read), (0, 0));

    // After the replay, the last day (101) is kept whole: new events of it are read alone,
    // and a duplicate of an event of an earlier commit still counts once...
    let more = w.events(&[(101, Some("e"), Kind::Buy(Some("EUR"), "0.5"))]);
    let dup = more[0].clone();
    w.append(more).await;
    w.append(vec![dup]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full);
    assert_eq!((step.files_read, step.days_read), (2, 0));
    assert_eq!(w.rows().await, w.expected());
    // ... while of the day before it only the users were kept (for the windows): new events
    // of day 100 have it read whole once, then it is kept whole too.
    w.views(100, &[(Some("e"), "/x")]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(step.days_read, 1);
    assert_eq!(w.rows().await, w.expected());
    w.views(100, &[(Some("f"), "/x")]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((step.files_read, step.days_read), (1, 0));
    assert_eq!(w.rows().await, w.expected());

    // A late event, three days back: its day gets rows, and the windows of the days after it
    // count its user.
    w.views(97, &[(Some("f"), "/"), (None, "/")]).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());
    assert_eq!(w.dau(101).await, "3|7|7");

    // Another process (a refresher with nothing in memory) reads what it needs from events.
    w.views(101, &[(Some("g"), "/")]).await;
    w.views(128, &[(Some("h"), "/")]).await;
    let other = w.refresher();
    let step = other.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full && step.days_read > 0);
    assert_eq!(w.rows().await, w.expected());
    assert_eq!(
        w.dau(128).await,
        "1|1|5",
        "h, and day 101 (a, c, e, g) 27 days back"
    );
    // The first refresher's memory is as of an older source: it does not trust it.
    w.views(128, &[(Some("a"), "/")]).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());

    // A compaction rewrites days 100 and 101 into other files: the same rows, nothing re-read.
    let compactor = floe_compactor::Compactor::new(w.catalog.clone(), Default::default());
    let plan = compactor.plan_table(&w.tenant, EVENTS_TABLE).await.unwrap();
    assert!(!plan.bins.is_empty());
    for bin in &plan.bins {
        assert!(
            compactor
                .run_bin(&w.tenant, EVENTS_TABLE, bin)
                .await
                .unwrap()
                .committed
        );
    }
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((step.files_read, step.days_read, step.committed), (0, 0, 3));
    assert_eq!(w.rows().await, w.expected());

    // Retention drops day 97: its rows go and the windows after it no longer count f.
    let table = w.catalog.load_table(&w.tenant, EVENTS_TABLE).await.unwrap();
    let day97: Vec<String> = live_entries(&table)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.data_file().partition().fields() == [Some(Literal::date(97))])
        .map(|e| e.file_path().to_string())
        .collect();
    assert_eq!(day97.len(), 1, "the file of day 97");
    w.catalog
        .commit_rewrite(
            &w.tenant,
            EVENTS_TABLE,
            RewriteKind::Delete,
            day97,
            vec![],
            None,
        )
        .await
        .unwrap();
    w.written.retain(|e| e.day != 97);
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());
    assert!(
        !w.rows().await[TOP_PAGES]
            .iter()
            .any(|r| r.starts_with("97|"))
    );

    // An erasure refreshes the projections after the user's rows are gone and before the
    // snapshots that held them expire: the refresh after it follows on, nothing recomputed.
    let erasing = floe_compactor::Compactor::new(w.catalog.clone(), Default::default())
        .with_projections(refresher.clone());
    let filter = floe_compactor::RowFilter::new(&["c".to_string()], &[]).unwrap();
    let run = erasing.erase_users(&w.tenant, &filter).await.unwrap();
    assert!(
        run.still_holding.iter().all(Vec::is_empty),
        "{:?}",
        run.still_holding
    );
    w.written.retain(|e| e.user.as_deref() != Some("c"));
    assert_eq!(w.rows().await, w.expected());
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full, "the source outlived the erasure's expiry");
    assert_eq!(w.rows().await, w.expected());

    // An erasure that does not refresh them (another process's) expires the snapshot they
    // reflect: they are behind (to be recomputed) though only a compaction is left after
    // their source in the history, and the next refresh recomputes them.
    let erasing = floe_compactor::Compactor::new(w.catalog.clone(), Default::default());
    let filter = floe_compactor::RowFilter::new(&["d".to_string()], &[]).unwrap();
    erasing.erase_users(&w.tenant, &filter).await.unwrap();
    w.written.retain(|e| e.user.as_deref() != Some("d"));
    let status = w.catalog.projection_status(&w.tenant).await.unwrap();
    assert!(status.iter().all(|p| p.lag_seconds > 0.0), "{status:?}");
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(step.full);
    assert_eq!(w.rows().await, w.expected());

    // The snapshot the projections reflect expires before the next refresh: they cannot
    // follow the changes, and are recomputed from all events.
    w.views(129, &[(Some("i"), "/")]).await;
    w.catalog
        .expire_snapshots(
            &w.tenant,
            EVENTS_TABLE,
            ExpirePolicy::keep_current_only(),
            false,
        )
        .await
        .unwrap();
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(step.full);
    assert_eq!(w.rows().await, w.expected());

    // A rebuild from all events at an older snapshot, then caught up: the same rows.
    let older = w.events_snapshot().await;
    w.views(130, &[(Some("k"), "/")]).await;
    let rebuilt = refresher
        .rebuild(&w.tenant, DAILY_ACTIVE_USERS, Some(older))
        .await
        .unwrap();
    assert!(rebuilt.full && rebuilt.committed >= 1);
    assert_eq!(
        w.source(DAILY_ACTIVE_USERS).await,
        Some(w.events_snapshot().await)
    );
    assert_eq!(w.rows().await, w.expected());
    let e = refresher
        .rebuild(&w.tenant, "nope", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("projection nope"), "{e}");
    let e = refresher
        .rebuild(&w.tenant, TOP_PAGES, Some(42))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("snapshot 42 is not in the history"),
        "{e}"
    );

    // top_pages switched off and on again: recomputed from all events on its own, while the
    // others go on from where they are.
    for on in ["off", "on"] {
        let settings = TenantSettings {
            projections: parse_switches(&[format!("top_pages={on}")]).unwrap(),
            ..Default::default()
        };
        w.catalog
            .set_tenant_settings(&w.tenant, settings, "test")
            .await
            .unwrap();
    }
    assert_eq!(w.source(TOP_PAGES).await, None);
    w.views(129, &[(Some("j"), "/z")]).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());
}

#[tokio::test]
async fn a_refresher_hears_commits_and_refreshes_on_its_own() {
    let mut w = World::new().await;
    let refresher = w.refresher();
    refresher.listen();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(refresher.clone().run(async {
        let _ = stopped.await;
    }));
    w.views(200, &[(Some("a"), "/"), (Some("b"), "/")]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.source(TOP_PAGES).await != Some(w.events_snapshot().await) {
        assert!(
            std::time::Instant::now() < deadline,
            "not refreshed within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(w.rows().await, w.expected());
    stop.send(()).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn a_refresh_takes_the_rows_this_process_just_wrote_instead_of_reading_their_files() {
    let mut w = World::new().await;
    let refresher = w.refresher();
    // Without a refresher listening, nothing is kept: every file is read.
    w.views(100, &[(Some("a"), "/"), (Some("b"), "/x")]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((step.files_read, step.files_kept), (1, 0));
    assert_eq!(w.rows().await, w.expected());

    // Listening, the refresh takes the rows of the files this process wrote since, one append
    // of two days (two files) and one of a copy of an event under its id with another amount
    // (the first copy counts: the files' rows are applied in commit order).
    refresher.listen();
    let more = w.events(&[
        (100, Some("c"), Kind::Buy(Some("EUR"), "2.5")),
        (101, Some("a"), Kind::View(Some("/"))),
    ]);
    let mut dup = more[0].clone();
    dup.kind = Kind::Buy(Some("EUR"), "7000");
    w.append(more).await;
    w.append(vec![dup]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((step.files_read, step.files_kept), (3, 3));
    assert_eq!(
        w.rows().await,
        w.expected(),
        "the same rows as the files hold"
    );
    assert!(w.rows().await[REVENUE_BY_DAY].contains("100|EUR|250|1"));
    assert_eq!(w.catalog.written().bytes(), 0, "taken, not kept on");

    // With `projection.written_rows_bytes = 0` (a process opened with it), nothing is kept
    // even while a refresher listens: the files are read, with the same rows.
    let mut config = w.config.clone();
    config.projection.written_rows_bytes = 0;
    w.catalog = Catalog::open(&config).await.unwrap();
    let refresher = w.refresher();
    refresher.listen();
    w.views(102, &[(Some("d"), "/z")]).await;
    w.views(102, &[(Some("a"), "/z")]).await;
    assert_eq!(w.catalog.written().bytes(), 0);
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    // The two new files, and the earlier days' files the windows of day 102 need (this
    // refresher starts with nothing in memory).
    assert_eq!(step.files_kept, 0);
    assert!(step.files_read >= 2, "{step:?}");
    assert_eq!(w.rows().await, w.expected());
}

#[tokio::test]
async fn a_user_defined_projection_counts_each_event_once_a_day_and_follows_late_days() {
    let mut w = World::new().await;
    let refresher = w.refresher();
    let sql = "SELECT CAST(ts AS DATE) AS day, type, count(*) AS n FROM events GROUP BY 1, 2";
    refresher
        .create_projection(&w.tenant, "by_type", sql, "test")
        .await
        .unwrap();
    let first = w.events(&[
        (100, Some("a"), Kind::View(Some("/"))),
        (100, Some("b"), Kind::Other),
        (101, None, Kind::View(None)),
    ]);
    let again = vec![first[0].clone()];
    w.append(first).await;
    w.append(again).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    let want = |rows: &[&str]| rows.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        w.table_rows("by_type").await,
        want(&[
            "100|PageViewed|1",
            "100|SensorReading|1",
            "101|PageViewed|1"
        ])
    );

    // A late day: only it is recomputed.
    w.views(99, &[(Some("c"), "/"), (Some("d"), "/")]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full);
    assert_eq!(
        w.table_rows("by_type").await,
        want(&[
            "99|PageViewed|2",
            "100|PageViewed|1",
            "100|SensorReading|1",
            "101|PageViewed|1"
        ])
    );
    let status = w.catalog.projection_status(&w.tenant).await.unwrap();
    assert!(
        status
            .iter()
            .any(|p| p.name == "by_type" && p.kind == "sql" && p.lag_events == 0)
    );

    // An erasure leaves the user in no snapshot of a projection that stores user ids (under
    // another name, and sorting before `events`): it is refreshed, then expired in the pass.
    let by_user =
        "SELECT CAST(ts AS DATE) AS day, user_id AS who, count(*) AS n FROM events GROUP BY 1, 2";
    refresher
        .create_projection(&w.tenant, "by_user", by_user, "test")
        .await
        .unwrap();
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(
        w.table_rows("by_user")
            .await
            .iter()
            .any(|r| r.contains("|c|"))
    );
    let erasing = floe_compactor::Compactor::new(w.catalog.clone(), Default::default())
        .with_projections(refresher.clone());
    let filter = floe_compactor::RowFilter::new(&["c".to_string()], &[]).unwrap();
    erasing.erase_users(&w.tenant, &filter).await.unwrap();
    assert!(
        !w.table_rows("by_user")
            .await
            .iter()
            .any(|r| r.contains("|c|"))
    );
    let table = w.catalog.load_table(&w.tenant, "by_user").await.unwrap();
    assert_eq!(
        table.metadata().snapshots().count(),
        1,
        "older snapshots held c"
    );
    w.written.retain(|e| e.user.as_deref() != Some("c"));

    // Rebuilt from all events, and dropped.
    let rebuilt = refresher.rebuild(&w.tenant, "by_type", None).await.unwrap();
    assert!(rebuilt.full);
    assert_eq!(w.table_rows("by_type").await.len(), 4);
    w.catalog
        .drop_defined_projection(&w.tenant, "by_type", "test")
        .await
        .unwrap();
    assert!(
        !w.catalog
            .list_tables(&w.tenant)
            .await
            .unwrap()
            .contains(&"by_type".to_string())
    );

    // Definitions that are not projections are refused, naming why; so are names Floe uses.
    let bad = "SELECT type, count(*) AS n FROM events GROUP BY 1";
    let e = refresher
        .create_projection(&w.tenant, "bad", bad, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs a column `day`"), "{e}");
    let e = refresher
        .create_projection(&w.tenant, "top_pages", sql, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("taken"), "{e}");
}
