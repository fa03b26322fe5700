//! What a refresh keeps between commits: for each day of a tenant's `events`, what the built-in
//! projections are computed from (its distinct users, the event ids counted, page views and
//! visitors, revenue and orders by currency), derived from the table at one snapshot. The
//! cache is shared by all tenants and bounded in bytes (`projection.state_cache_bytes`): past
//! the bound, the days used least recently are dropped and read again from `events` when a
//! refresh needs them.
//!
//! Duplicates count once: a row whose event id was already counted that day adds nothing to
//! views, orders or revenue (distinct users need no such care). Rows are applied in the order
//! of the commits that added them, so the first copy is the one counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use floe_catalog::delta::DeltaFile;
use floe_catalog::storage::DataStore;
use floe_catalog::written::Written;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde_json::value::RawValue;

use crate::{Error, Result};

/// The columns of `events` a refresh reads.
pub const COLUMNS: [&str; 4] = ["event_id", "type", "user_id", "payload"];
/// Files read at once when loading days (applied in order all the same).
const READ_CONCURRENCY: usize = 4;
/// Bytes one entry of a set or map costs, beyond its own (the table's slack and control).
const ENTRY_OVERHEAD: u64 = 8;

/// The event type whose `payload.page` `top_pages` counts.
pub const PAGE_VIEWED: &str = "PageViewed";
/// The event type whose `payload.amount` and `payload.currency` `revenue_by_day` sums.
pub const PURCHASE_MADE: &str = "PurchaseMade";

/// A set of hashes (of users, of event ids). They are hashed again to find their place with
/// foldhash rather than SipHash, which over values already uniform cost 3–4 % of the server's
/// CPU under ingest.
pub type Hashes<T> = HashSet<T, RandomlySeeded>;

/// foldhash seeded from the system's random source (through std's `RandomState`): the seed all
/// sets share once per process, each set's own when it is made. foldhash's own default seeds
/// from the address-space layout only (its `std` feature, which adds the clock, would rebuild
/// everything above hashbrown): ids chosen to crowd one place of a set would have to beat
/// random keys, as with SipHash.
#[derive(Clone, Debug)]
pub struct RandomlySeeded(foldhash::fast::SeedableRandomState);

impl Default for RandomlySeeded {
    fn default() -> Self {
        static SHARED: OnceLock<foldhash::SharedSeed> = OnceLock::new();
        let random = || std::hash::RandomState::new().hash_one(0u8);
        let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(random()));
        RandomlySeeded(foldhash::fast::SeedableRandomState::with_seed(
            random(),
            shared,
        ))
    }
}

impl BuildHasher for RandomlySeeded {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// Views and distinct visitors of one page on one day.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Page {
    pub views: u64,
    pub visitors: Hashes<u128>,
}

/// Revenue and orders of one currency on one day.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    /// The sum of the amounts, in hundredths.
    pub cents: i128,
    /// Orders with an amount (none: the revenue is NULL, as SQL's `sum` says).
    pub priced: u64,
    pub orders: u64,
}

/// One day of a tenant's events, as the projections see it.
#[derive(Debug, Default, Clone)]
pub struct Day {
    /// Rows of `events` (duplicates included).
    pub events: u64,
    /// Distinct non-null `user_id`s, hashed.
    pub users: Hashes<u128>,
    /// Event ids counted, hashed.
    pub ids: Hashes<u64>,
    /// By `payload.page` (NULL is a page of its own).
    pub pages: HashMap<Option<String>, Page>,
    /// By `payload.currency` (NULL is a currency of its own).
    pub revenue: HashMap<Option<String>, Money>,
    /// Only the users are kept (a replay keeps no more of the days a window still reaches):
    /// enough for the windows of later days, not for new rows of its own.
    pub partial: bool,
    /// When a refresh last used it (for dropping the least recently used).
    used: u64,
}

impl Day {
    fn bytes(&self) -> u64 {
        let set = |n: usize, each: u64| n as u64 * (each + ENTRY_OVERHEAD);
        let pages: u64 = self
            .pages
            .iter()
            .map(|(p, v)| {
                64 + p.as_ref().map_or(0, |p| p.len() as u64) + set(v.visitors.capacity(), 16)
            })
            .sum();
        let revenue: u64 = self
            .revenue
            .keys()
            .map(|c| 64 + c.as_ref().map_or(0, |c| c.len() as u64))
            .sum();
        128 + set(self.users.capacity(), 16) + set(self.ids.capacity(), 8) + pages + revenue
    }

    /// Drops all but the users (what a window over later days still needs).
    pub fn keep_users_only(&mut self) {
        self.ids = Hashes::default();
        self.pages = HashMap::new();
        self.revenue = HashMap::new();
        self.partial = true;
    }

    /// Counts one row of `events` (of this day).
    fn apply(&mut self, row: &EventRow) {
        self.events += 1;
        if let Some(user) = row.user {
            self.users.insert(user);
        }
        if !self.ids.insert(row.id) {
            return; // A duplicate: counted already.
        }
        match &row.kind {
            Kind::Page(page) => {
                let p = self.pages.entry(page.clone()).or_default();
                p.views += 1;
                if let Some(user) = row.user {
                    p.visitors.insert(user);
                }
            }
            Kind::Purchase { currency, cents } => {
                let m = self.revenue.entry(currency.clone()).or_default();
                m.orders += 1;
                if let Some(c) = cents {
                    m.cents += c;
                    m.priced += 1;
                }
            }
            Kind::Other => {}
        }
    }
}

/// What a row of `events` adds to its day.
#[derive(Debug, Clone, PartialEq)]
struct EventRow {
    id: u64,
    user: Option<u128>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Page(Option<String>),
    Purchase {
        currency: Option<String>,
        cents: Option<i128>,
    },
    Other,
}

/// The days of one tenant, as of one `events` snapshot.
#[derive(Debug, Default)]
pub struct TenantDays {
    /// The `events` snapshot these days reflect (`None`: nothing kept).
    pub as_of: Option<i64>,
    pub days: BTreeMap<i32, Day>,
}

/// The days of every tenant, bounded in bytes.
#[derive(Debug)]
pub struct Cache {
    tenants: HashMap<String, TenantDays>,
    budget: u64,
    tick: u64,
}

impl Cache {
    pub fn new(budget: u64) -> Cache {
        Cache {
            tenants: HashMap::new(),
            budget,
            tick: 0,
        }
    }

    /// A tenant's days; they are valid only if `as_of` is the snapshot the caller expects.
    pub fn tenant(&mut self, tenant: &str) -> &mut TenantDays {
        self.tenants.entry(tenant.to_string()).or_default()
    }

    /// Takes a tenant's days out (to work on them while the cache is shared); `put` them back.
    pub fn take(&mut self, tenant: &str) -> TenantDays {
        self.tenants.remove(tenant).unwrap_or_default()
    }

    pub fn put(&mut self, tenant: &str, days: TenantDays) {
        self.tenants.insert(tenant.to_string(), days);
    }

    /// Forgets a tenant's days (its projection moved elsewhere, or a refresh failed).
    pub fn forget(&mut self, tenant: &str) {
        self.tenants.remove(tenant);
    }

    /// Marks days of a tenant as used now.
    pub fn touch(&mut self, tenant: &str, days: impl IntoIterator<Item = i32>) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(t) = self.tenants.get_mut(tenant) {
            for d in days {
                if let Some(day) = t.days.get_mut(&d) {
                    day.used = tick;
                }
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.tenants
            .values()
            .flat_map(|t| t.days.values())
            .map(Day::bytes)
            .sum()
    }

    /// Drops the least recently used days until the cache fits its budget.
    pub fn shrink(&mut self) {
        let mut bytes = self.bytes();
        if bytes <= self.budget {
            return;
        }
        let mut order: Vec<(u64, String, i32, u64)> = self
            .tenants
            .iter()
            .flat_map(|(t, days)| {
                days.days
                    .iter()
                    .map(move |(d, day)| (day.used, t.clone(), *d, day.bytes()))
            })
            .collect();
        order.sort();
        for (_, tenant, day, size) in order {
            if bytes <= self.budget {
                break;
            }
            if let Some(t) = self.tenants.get_mut(&tenant) {
                t.days.remove(&day);
            }
            bytes -= size;
        }
        self.tenants.retain(|_, t| !t.days.is_empty());
    }
}

/// Applies the rows of `files` (in their order: oldest commit first) to `days`: the rows this
/// process kept of a file it just wrote (`written`), or else those read from the file. Returns
/// how many files' rows were kept (not read).
pub async fn apply_files(
    store: &DataStore,
    written: &Written,
    files: &[DeltaFile],
    days: &mut BTreeMap<i32, Day>,
) -> Result<usize> {
    let object_store = store.object_store();
    // Owned inputs: a closure over borrowed ones would make this future not `Send`.
    let files: Vec<DeltaFile> = files.to_vec();
    let reads = files.into_iter().map(|f| {
        let object_store = object_store.clone();
        let key = store.key(&f.path).ok_or_else(|| {
            Error::Invalid(format!(
                "{} is outside the warehouse ({})",
                f.path, store.url
            ))
        });
        let (day, size) = (f.day, f.size);
        let kept = written
            .take(&f.path)
            .filter(|rows| rows.num_rows() as u64 == f.records);
        let path = f.path;
        async move {
            let rows = match kept {
                Some(batch) => {
                    let mut rows = Vec::new();
                    rows_of(&batch, &mut rows)
                        .map_err(|e| Error::Invalid(format!("rows kept of {path}: {e}")))?;
                    (rows, true)
                }
                None => (
                    read_file(object_store, Path::from(key?), size).await?,
                    false,
                ),
            };
            Ok::<_, Error>((day, rows))
        }
    });
    let mut stream = futures::stream::iter(reads).buffered(READ_CONCURRENCY);
    let mut from_memory = 0;
    while let Some((day, (rows, kept))) = stream.try_next().await? {
        from_memory += usize::from(kept);
        let day = days.entry(day).or_default();
        for row in &rows {
            day.apply(row);
        }
    }
    Ok(from_memory)
}

/// What each row of one Parquet file of `events` adds to its day.
async fn read_file(
    store: Arc<dyn object_store::ObjectStore>,
    location: Path,
    size: u64,
) -> Result<Vec<EventRow>> {
    let failed = |e: &dyn std::fmt::Display| Error::Storage {
        action: "reading",
        object: location.to_string(),
        message: e.to_string(),
    };
    let reader = ParquetObjectReader::new(store, location.clone()).with_file_size(size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| failed(&e))?;
    let mask = ProjectionMask::columns(builder.metadata().file_metadata().schema_descr(), COLUMNS);
    let mut stream = builder
        .with_projection(mask)
        .build()
        .map_err(|e| failed(&e))?;
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| failed(&e))?;
        rows_of(&batch, &mut rows).map_err(|e| failed(&e))?;
    }
    Ok(rows)
}

/// A text column of `batch` (any string type), or `None` if the file has no such column.
fn text(batch: &RecordBatch, name: &str) -> std::result::Result<Option<ArrayRef>, String> {
    batch
        .column_by_name(name)
        .map(|c| cast(c, &DataType::Utf8).map_err(|e| format!("{name}: {e}")))
        .transpose()
}

fn rows_of(batch: &RecordBatch, out: &mut Vec<EventRow>) -> std::result::Result<(), String> {
    let [ids, types, users, payloads] = COLUMNS.map(|c| text(batch, c));
    let (ids, types, users, payloads) = (ids?, types?, users?, payloads?);
    let ids = ids.ok_or("no event_id column")?;
    let (ids, types, users, payloads) = (
        ids.as_string::<i32>(),
        types.as_ref().map(|a| a.as_string::<i32>()),
        users.as_ref().map(|a| a.as_string::<i32>()),
        payloads.as_ref().map(|a| a.as_string::<i32>()),
    );
    fn value(a: Option<&StringArray>, i: usize) -> Option<&str> {
        a.filter(|a| a.is_valid(i)).map(|a| a.value(i))
    }
    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let kind = match value(types, i) {
            Some(PAGE_VIEWED) => {
                let [page, _, _] = read_fields(value(payloads, i));
                Kind::Page(field_text(page))
            }
            Some(PURCHASE_MADE) => {
                let [_, currency, amount] = read_fields(value(payloads, i));
                Kind::Purchase {
                    currency: field_text(currency),
                    cents: amount.as_ref().and_then(cents),
                }
            }
            _ => Kind::Other,
        };
        out.push(EventRow {
            id: id_hash(ids.value(i)),
            user: value(users, i).map(user_hash),
            kind,
        });
    }
    Ok(())
}

/// The payload's `page`, `currency` and `amount` (each `None` when missing, or when the payload
/// is not a JSON object). Read in one pass, the rest of the payload skipped; through the
/// payload's tree when a key repeats (its last value counts).
fn read_fields(payload: Option<&str>) -> [Option<serde_json::Value>; 3] {
    #[derive(serde::Deserialize)]
    struct Fields<'a> {
        #[serde(borrow)]
        page: Option<&'a RawValue>,
        #[serde(borrow)]
        currency: Option<&'a RawValue>,
        #[serde(borrow)]
        amount: Option<&'a RawValue>,
    }
    let Some(text) = payload.filter(|p| p.trim_start().starts_with('{')) else {
        return [None, None, None];
    };
    match serde_json::from_str::<Fields>(text) {
        Ok(f) => [f.page, f.currency, f.amount]
            .map(|raw| raw.and_then(|r| serde_json::from_str(r.get()).ok())),
        Err(_) => {
            let tree = serde_json::from_str::<serde_json::Value>(text).ok();
            ["page", "currency", "amount"].map(|k| tree.as_ref()?.get(k).cloned())
        }
    }
}

/// A payload field as SQL's `payload->>'field'` reads it: a string as it is, any other value as
/// its JSON text, a missing field or JSON `null` as NULL.
fn field_text(field: Option<serde_json::Value>) -> Option<String> {
    match field? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// An amount in hundredths, rounded half away from zero (as a cast to `decimal(38,2)`): a JSON
/// number or a string holding one; anything else has no amount.
fn cents(amount: &serde_json::Value) -> Option<i128> {
    let text = match amount {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    decimal_cents(&text)
}

/// `text` (`-12.345`, `7`, `1e3`) in hundredths, exactly when it has at most two decimals.
fn decimal_cents(text: &str) -> Option<i128> {
    if text.contains(['e', 'E']) {
        let v: f64 = text.parse().ok()?;
        return v.is_finite().then(|| (v * 100.0).round() as i128);
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let f = fraction.as_bytes();
    let digit = |i: usize| f.get(i).map_or(0, |b| (b - b'0') as i128);
    let mut cents = whole.checked_mul(100)? + digit(0) * 10 + digit(1);
    if digit(2) >= 5 {
        cents += 1;
    }
    Some(if negative { -cents } else { cents })
}

/// The hash a user is kept as: 128 bits, so two users colliding is not a practical concern.
pub fn user_hash(user_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(user_id.as_bytes())
}

/// The hash an event id is kept as (64 bits: among ten million ids of a day, a collision has a
/// chance of about three in a million).
pub(super) fn id_hash(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_set_of_hashes_is_seeded_at_random() {
        // Two sets place the same value apart: neither seed is fixed (one chance in 2^64 of a
        // false failure).
        let (a, b) = (RandomlySeeded::default(), RandomlySeeded::default());
        assert_ne!(a.hash_one(17u128), b.hash_one(17u128));
        let mut set = Hashes::default();
        assert!(set.insert(17u128) && !set.insert(17u128));
    }

    fn day(users: &[&str], used: u64) -> Day {
        Day {
            events: users.len() as u64,
            users: users.iter().map(|u| user_hash(u)).collect(),
            used,
            ..Day::default()
        }
    }

    #[test]
    fn the_least_recently_used_days_are_dropped_first_and_only_past_the_budget() {
        let one = day(&["a", "b", "c"], 0).bytes();
        let mut cache = Cache::new(2 * one);
        for (tenant, d) in [("acme", 1), ("acme", 2), ("beta", 1)] {
            cache
                .tenant(tenant)
                .days
                .insert(d, day(&["a", "b", "c"], 0));
            cache.touch(tenant, [d]);
        }
        cache.touch("acme", [1]);
        cache.shrink();
        let acme: Vec<i32> = cache.tenant("acme").days.keys().copied().collect();
        // acme's day 2 was used least recently; acme's day 1 was used again last.
        assert_eq!(acme, [1]);
        assert_eq!(cache.tenant("beta").days.len(), 1);
        assert!(cache.bytes() <= 2 * one);
    }

    #[test]
    fn amounts_are_hundredths_rounded_half_away_from_zero() {
        for (text, want) in [
            ("12.5", Some(1250)),
            ("19.99", Some(1999)),
            ("7", Some(700)),
            ("-0.125", Some(-13)),
            ("0.004", Some(0)),
            (".5", Some(50)),
            ("1e3", Some(100_000)),
            ("1.2.3", None),
            ("", None),
            ("abc", None),
        ] {
            assert_eq!(decimal_cents(text), want, "{text}");
        }
        assert_eq!(cents(&serde_json::json!(19.99)), Some(1999));
        assert_eq!(cents(&serde_json::json!("3.10")), Some(310));
        assert_eq!(cents(&serde_json::json!(true)), None);
    }

    #[test]
    fn a_duplicate_adds_a_row_but_no_view_order_or_revenue() {
        let mut d = Day::default();
        let page = |id: &str, user: &str, page: &str| EventRow {
            id: id_hash(id),
            user: Some(user_hash(user)),
            kind: Kind::Page(Some(page.into())),
        };
        let buy = |id: &str, cents: i128| EventRow {
            id: id_hash(id),
            user: None,
            kind: Kind::Purchase {
                currency: Some("EUR".into()),
                cents: Some(cents),
            },
        };
        for row in [
            page("1", "a", "/"),
            page("1", "a", "/"),
            page("2", "b", "/"),
            buy("3", 500),
            buy("3", 500),
        ] {
            d.apply(&row);
        }
        assert_eq!(d.events, 5);
        assert_eq!(d.pages[&Some("/".to_string())].views, 2);
        assert_eq!(d.pages[&Some("/".to_string())].visitors.len(), 2);
        let eur = d.revenue[&Some("EUR".to_string())];
        assert_eq!((eur.cents, eur.orders, eur.priced), (500, 1, 1));
    }

    #[test]
    fn payload_fields_read_as_sql_reads_them() {
        let text = |payload: &str| read_fields(Some(payload)).map(field_text);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            text(r#"{"page": "/a", "n": 5, "currency": null, "amount": {"k": [1, 2]}}"#),
            [s("/a"), None, s(r#"{"k":[1,2]}"#)]
        );
        assert_eq!(
            text(r#"{"page":5,"currency":"EU\u0052"}"#),
            [s("5"), s("EUR"), None]
        );
        // A repeated key: its last value, as the payload's tree reads it.
        assert_eq!(
            text(r#"{"page":"/a","x":1,"page":"/b"}"#),
            [s("/b"), None, None]
        );
        assert_eq!(text(r#"["/a","EUR",1]"#), [None, None, None]);
        assert_eq!(text("not json"), [None, None, None]);
        assert_eq!(read_fields(None), [None, None, None]);
        let [_, _, amount] = read_fields(Some(r#"{"amount":"12.345 "}"#));
        assert_eq!(amount.as_ref().and_then(cents), Some(1235));
    }
}
