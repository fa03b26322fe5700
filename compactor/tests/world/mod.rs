//! A tenant with a refresher over the SQLite catalog and a local warehouse, for the projection
//! tests: events committed by day, user and kind, what every built-in projection must hold
//! computed from them, and what the projection tables hold, as text rows.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use arrow_array::Array;
use floe_catalog::projection::{DAILY_ACTIVE_USERS, REVENUE_BY_DAY, TOP_PAGES, source_of};
use floe_catalog::rewrite::live_entries;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, Config, TenantId, TenantKey};
use floe_compactor::projection::Refresher;
use floe_ingest::event::StoredEvent;

pub const US_PER_DAY: i64 = 86_400_000_000;

/// What an event is, for the projections.
#[derive(Clone, Debug)]
pub enum Kind {
    View(Option<&'static str>),
    Buy(Option<&'static str>, &'static str),
    Other,
}

/// An event: its id, day, user and kind.
#[derive(Clone, Debug)]
pub struct Ev {
    pub id: String,
    pub day: i32,
    pub user: Option<String>,
    pub kind: Kind,
}

/// A row of any projection, as text: days as days since the epoch, amounts in hundredths.
pub type Rows = BTreeMap<&'static str, BTreeSet<String>>;

pub const TABLES: [&str; 3] = [DAILY_ACTIVE_USERS, REVENUE_BY_DAY, TOP_PAGES];

pub struct World {
    pub catalog: Catalog,
    /// The configuration the catalog was opened with (a second process opens it too).
    pub config: Config,
    pub tenant: TenantId,
    pub key: TenantKey,
    /// Every event written and not dropped, in commit order.
    pub written: Vec<Ev>,
    pub next_id: u64,
    pub _dir: tempfile::TempDir,
}

impl World {
    pub async fn new() -> World {
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
            config,
            tenant,
            key,
            written: Vec::new(),
            next_id: 0,
            _dir: dir,
        }
    }

    pub fn refresher(&self) -> Refresher {
        Refresher::new(self.catalog.clone(), &self.config)
    }

    /// New events: (day, user, kind), each with a new id.
    pub fn events(&mut self, spec: &[(i32, Option<&str>, Kind)]) -> Vec<Ev> {
        spec.iter()
            .map(|(day, user, kind)| {
                self.next_id += 1;
                Ev {
                    id: format!("e{}", self.next_id),
                    day: *day,
                    user: user.map(str::to_string),
                    kind: kind.clone(),
                }
            })
            .collect()
    }

    /// Commits one append of `events`.
    pub async fn append(&mut self, events: Vec<Ev>) {
        let stored: Vec<StoredEvent> = events
            .iter()
            .map(|e| {
                let (kind, payload) = match &e.kind {
                    Kind::View(page) => ("PageViewed", serde_json::json!({ "page": page })),
                    Kind::Buy(currency, amount) => (
                        "PurchaseMade",
                        serde_json::json!({
                            "currency": currency,
                            "amount": serde_json::from_str::<serde_json::Value>(amount).unwrap(),
                        }),
                    ),
                    Kind::Other => ("SensorReading", serde_json::json!({ "page": "/no" })),
                };
                StoredEvent {
                    event_id: e.id.clone(),
                    kind: kind.into(),
                    version: 1,
                    ts: e.day as i64 * US_PER_DAY + 3_600_000_000,
                    received_at: 0,
                    user_id: e.user.clone(),
                    payload: payload.to_string(),
                    client_id: true,
                }
            })
            .collect();
        self.written.extend(events);
        self.commit(&stored).await;
    }

    /// Commits one append of events as stored.
    pub async fn commit(&self, stored: &[StoredEvent]) {
        let table = self
            .catalog
            .load_table(&self.tenant, EVENTS_TABLE)
            .await
            .unwrap();
        let refs: Vec<&StoredEvent> = stored.iter().collect();
        let files = floe_ingest::writer::write_events(
            &table,
            "acme",
            &refs,
            parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(3).unwrap()),
            self.catalog.written(),
        )
        .await
        .unwrap();
        self.catalog
            .commit_append(&self.key, EVENTS_TABLE, files, None)
            .await
            .unwrap();
    }

    /// Views of pages by users on a day.
    pub async fn views(&mut self, day: i32, spec: &[(Option<&str>, &'static str)]) {
        let spec: Vec<_> = spec
            .iter()
            .map(|(u, p)| (day, *u, Kind::View(Some(*p))))
            .collect();
        let events = self.events(&spec);
        self.append(events).await;
    }

    /// What every projection must hold.
    pub fn expected(&self) -> Rows {
        let mut out: Rows = TABLES.iter().map(|t| (*t, BTreeSet::new())).collect();
        let days: BTreeSet<i32> = self.written.iter().map(|e| e.day).collect();
        let users_in = |from: i32, to: i32| {
            self.written
                .iter()
                .filter(|e| (from..=to).contains(&e.day))
                .filter_map(|e| e.user.clone())
                .collect::<BTreeSet<_>>()
                .len()
        };
        for d in &days {
            let [a, b, c] = [users_in(*d, *d), users_in(d - 6, *d), users_in(d - 27, *d)];
            out.get_mut(DAILY_ACTIVE_USERS)
                .unwrap()
                .insert(format!("{d}|{a}|{b}|{c}"));
        }
        // Each (day, id) once: the first copy.
        let mut seen = BTreeSet::new();
        let once: Vec<&Ev> = self
            .written
            .iter()
            .filter(|e| seen.insert((e.day, e.id.clone())))
            .collect();
        // By (day, currency or page): (cents, orders), (views, visitors).
        type By<'a, T> = BTreeMap<(i32, Option<&'a str>), T>;
        let mut revenue: By<(Option<i128>, u64)> = BTreeMap::new();
        let mut pages: By<(u64, BTreeSet<String>)> = BTreeMap::new();
        for e in once {
            match &e.kind {
                Kind::Buy(currency, amount) => {
                    let r = revenue.entry((e.day, *currency)).or_default();
                    let cents = (amount.parse::<f64>().unwrap() * 100.0).round() as i128;
                    r.0 = Some(r.0.unwrap_or(0) + cents);
                    r.1 += 1;
                }
                Kind::View(page) => {
                    let p = pages.entry((e.day, *page)).or_default();
                    p.0 += 1;
                    p.1.extend(e.user.clone());
                }
                Kind::Other => {}
            }
        }
        let text = |s: Option<&str>| s.unwrap_or("NULL").to_string();
        for ((d, c), (cents, orders)) in revenue {
            let cents = cents.map_or("NULL".into(), |c| c.to_string());
            out.get_mut(REVENUE_BY_DAY)
                .unwrap()
                .insert(format!("{d}|{}|{cents}|{orders}", text(c)));
        }
        for ((d, p), (views, visitors)) in pages {
            out.get_mut(TOP_PAGES).unwrap().insert(format!(
                "{d}|{}|{views}|{}",
                text(p),
                visitors.len()
            ));
        }
        out
    }

    /// What every built-in projection holds.
    pub async fn rows(&self) -> Rows {
        let mut out = Rows::new();
        for name in TABLES {
            out.insert(name, self.table_rows(name).await);
        }
        out
    }

    /// What a projection holds, read from the Parquet files of its current snapshot.
    pub async fn table_rows(&self, name: &str) -> BTreeSet<String> {
        let table = self.catalog.load_table(&self.tenant, name).await.unwrap();
        let mut rows = BTreeSet::new();
        {
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
                    for i in 0..batch.num_rows() {
                        let cells: Vec<String> = batch
                            .columns()
                            .iter()
                            .map(|c| cell(c.as_ref(), i))
                            .collect();
                        assert!(rows.insert(cells.join("|")), "a row twice in {name}");
                    }
                }
            }
        }
        rows
    }

    pub async fn events_snapshot(&self) -> i64 {
        let t = self
            .catalog
            .load_table(&self.tenant, EVENTS_TABLE)
            .await
            .unwrap();
        t.metadata().current_snapshot_id().unwrap()
    }

    pub async fn source(&self, name: &str) -> Option<i64> {
        let t = self.catalog.load_table(&self.tenant, name).await.unwrap();
        source_of(t.metadata()).unwrap().map(|s| s.snapshot_id)
    }

    /// The `daily_active_users` row of a day: users, over 7 days, over 28 days.
    pub async fn dau(&self, day: i32) -> String {
        let rows = self.rows().await;
        rows[DAILY_ACTIVE_USERS]
            .iter()
            .find(|r| r.starts_with(&format!("{day}|")))
            .map(|r| r.split_once('|').unwrap().1.to_string())
            .unwrap_or_default()
    }
}

/// One cell as text: dates as days since the epoch, decimals in hundredths.
pub fn cell(array: &dyn Array, i: usize) -> String {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Decimal128Type, Int64Type};
    if array.is_null(i) {
        return "NULL".into();
    }
    if let Some(a) = array.as_primitive_opt::<Date32Type>() {
        return a.value(i).to_string();
    }
    if let Some(a) = array.as_primitive_opt::<Int64Type>() {
        return a.value(i).to_string();
    }
    if let Some(a) = array.as_primitive_opt::<Decimal128Type>() {
        return a.value(i).to_string();
    }
    if let Some(a) = array.as_string_opt::<i32>() {
        return a.value(i).to_string();
    }
    panic!("unexpected column type {:?}", array.data_type())
}
