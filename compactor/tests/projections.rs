//! `daily_active_users` kept up to date with `events` against the SQLite catalog and a local
//! warehouse: each step commits events (or compacts, or drops a day, or expires history) and
//! refreshes, and the table's rows must equal the counts computed here from every event written
//! so far.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use floe_catalog::config::ProjectionConfig;
use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::projection::{DAILY_ACTIVE_USERS, source_of};
use floe_catalog::rewrite::{RewriteKind, live_entries};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, Config, TenantId, TenantKey};
use floe_compactor::projection::{Refreshed, Refresher};
use floe_ingest::event::StoredEvent;
use iceberg::spec::Literal;

const US_PER_DAY: i64 = 86_400_000_000;

struct World {
    catalog: Catalog,
    tenant: TenantId,
    key: TenantKey,
    /// Every event written and not dropped: (day, user).
    written: Vec<(i32, Option<String>)>,
    next_id: u64,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::load(
            None,
            vec![],
            &[("data_dir", dir.path().display().to_string())],
        )
        .unwrap();
        let catalog = Catalog::open(&config).await.unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let key = catalog
            .create_tenant(&tenant, "test")
            .await
            .unwrap()
            .key()
            .unwrap();
        World {
            catalog,
            tenant,
            key,
            written: Vec::new(),
            next_id: 0,
            _dir: dir,
        }
    }

    fn refresher(&self) -> Refresher {
        Refresher::new(self.catalog.clone(), ProjectionConfig::default())
    }

    /// Commits one append of events: (day, user), `None` for an event without a user.
    /// `resend` repeats the last event's id (a duplicate of it).
    async fn append(&mut self, events: &[(i32, Option<&str>)]) {
        let stored: Vec<StoredEvent> = events
            .iter()
            .map(|(day, user)| {
                self.next_id += 1;
                self.written.push((*day, user.map(str::to_string)));
                StoredEvent {
                    event_id: format!("e{}", self.next_id),
                    kind: "PageViewed".into(),
                    version: 1,
                    ts: *day as i64 * US_PER_DAY + 3_600_000_000,
                    received_at: 0,
                    user_id: user.map(str::to_string),
                    payload: "{}".into(),
                    client_id: true,
                }
            })
            .collect();
        let table = self
            .catalog
            .load_table(&self.tenant, EVENTS_TABLE)
            .await
            .unwrap();
        let refs: Vec<&StoredEvent> = stored.iter().collect();
        let files = floe_ingest::writer::write_events(&table, "acme", &refs, 3)
            .await
            .unwrap();
        self.catalog
            .commit_append(&self.key, EVENTS_TABLE, files, None)
            .await
            .unwrap();
    }

    /// The rows the table must hold: per day with events, distinct users that day and over the
    /// 7 and 28 days ending on it.
    fn expected(&self) -> BTreeMap<i32, [i64; 3]> {
        let days: BTreeSet<i32> = self.written.iter().map(|(d, _)| *d).collect();
        let users_in = |from: i32, to: i32| {
            self.written
                .iter()
                .filter(|(d, u)| (from..=to).contains(d) && u.is_some())
                .map(|(_, u)| u.clone())
                .collect::<BTreeSet<_>>()
                .len() as i64
        };
        days.into_iter()
            .map(|d| (d, [users_in(d, d), users_in(d - 6, d), users_in(d - 27, d)]))
            .collect()
    }

    /// The table's rows, read through DataFusion-free Parquet reading of its live files.
    async fn rows(&self) -> BTreeMap<i32, [i64; 3]> {
        let table = self
            .catalog
            .load_table(&self.tenant, DAILY_ACTIVE_USERS)
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for entry in live_entries(&table).await.unwrap() {
            let path = entry
                .file_path()
                .strip_prefix("file://")
                .unwrap()
                .to_string();
            let file = std::fs::File::open(path).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let day = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow_array::Date32Array>()
                    .unwrap();
                let long = |i: usize| {
                    batch
                        .column(i)
                        .as_any()
                        .downcast_ref::<arrow_array::Int64Array>()
                        .unwrap()
                        .clone()
                };
                let (a, b, c) = (long(1), long(2), long(3));
                for i in 0..batch.num_rows() {
                    out.insert(day.value(i), [a.value(i), b.value(i), c.value(i)]);
                }
            }
        }
        out
    }

    async fn events_snapshot(&self) -> i64 {
        let t = self
            .catalog
            .load_table(&self.tenant, EVENTS_TABLE)
            .await
            .unwrap();
        t.metadata().current_snapshot_id().unwrap()
    }

    async fn source(&self) -> Option<i64> {
        let t = self
            .catalog
            .load_table(&self.tenant, DAILY_ACTIVE_USERS)
            .await
            .unwrap();
        source_of(t.metadata()).unwrap().map(|s| s.snapshot_id)
    }
}

#[tokio::test]
async fn daily_active_users_follow_events_through_late_days_compaction_retention_and_expiry() {
    let mut w = World::new().await;
    let refresher = w.refresher();

    // Nothing committed yet: nothing to reflect.
    assert_eq!(
        refresher.refresh_tenant(&w.tenant).await.unwrap(),
        Refreshed::default()
    );

    // Day 100: a, b, a again, an event without a user; day 101: c and a.
    w.append(&[
        (100, Some("a")),
        (100, Some("b")),
        (100, Some("a")),
        (100, None),
    ])
    .await;
    w.append(&[(101, Some("c")), (101, Some("a"))]).await;
    let first = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(first.full, "never refreshed: computed from all events");
    assert_eq!(first.committed, 1);
    assert_eq!(w.rows().await, w.expected());
    assert_eq!(w.rows().await[&101], [2, 3, 3]);
    assert_eq!(w.source().await, Some(w.events_snapshot().await));

    // Refreshing again changes nothing and commits nothing.
    let again = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((again.committed, again.files_read), (0, 0));

    // New events of a day kept in memory: only the new file is read.
    w.append(&[(101, Some("d"))]).await;
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full);
    assert_eq!((step.files_read, step.days_read), (1, 0));
    assert_eq!(w.rows().await, w.expected());

    // A late event, three days back: its day gets a row, and the windows of the days after it
    // count its user.
    w.append(&[(97, Some("e")), (97, None)]).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());
    assert_eq!(w.rows().await[&101], [3, 5, 5]);

    // Another process (a refresher with nothing in memory) reads what it needs from events.
    w.append(&[(101, Some("f")), (128, Some("g"))]).await;
    let other = w.refresher();
    let step = other.refresh_tenant(&w.tenant).await.unwrap();
    assert!(!step.full && step.days_read > 0);
    assert_eq!(w.rows().await, w.expected());
    assert_eq!(
        w.rows().await[&128],
        [1, 1, 5],
        "day 101 (a, c, d, f) is 27 days back: inside"
    );
    // The first refresher's memory is as of an older source: it does not trust it.
    w.append(&[(128, Some("a"))]).await;
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());

    // A compaction rewrites day 100 and 101 into other files: the same rows, nothing re-read.
    let table = w.catalog.load_table(&w.tenant, EVENTS_TABLE).await.unwrap();
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
    drop(table);
    let step = refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!((step.files_read, step.days_read, step.committed), (0, 0, 1));
    assert_eq!(w.rows().await, w.expected());

    // Retention drops day 97: its row goes and the windows after it no longer count e.
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
        .commit_rewrite(&w.tenant, EVENTS_TABLE, RewriteKind::Delete, day97, vec![])
        .await
        .unwrap();
    w.written.retain(|(d, _)| *d != 97);
    refresher.refresh_tenant(&w.tenant).await.unwrap();
    assert_eq!(w.rows().await, w.expected());
    assert!(!w.rows().await.contains_key(&97));

    // The snapshot the projection reflects expires before the next refresh: it cannot follow
    // the changes, and recomputes from all events.
    w.append(&[(129, Some("h"))]).await;
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
    w.append(&[(200, Some("a")), (200, Some("b"))]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while w.source().await != Some(w.events_snapshot().await) {
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
