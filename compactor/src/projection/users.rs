//! What a refresh keeps between commits: for each day of a tenant's `events`, its distinct
//! users (as 128-bit hashes of `user_id`) and how many rows it has, derived from the table at
//! one snapshot. The cache is shared by all tenants and bounded in bytes
//! (`projection.state_cache_bytes`): past the bound, the days used least recently are
//! dropped and read again from `events` when a refresh needs them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use floe_catalog::delta::DeltaFile;
use floe_catalog::storage::DataStore;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use crate::{Error, Result};

/// The column of `events` naming the user.
const USER_ID: &str = "user_id";
/// Files read at once when loading days.
const READ_CONCURRENCY: usize = 8;
/// Bytes a distinct user costs in a day's set (the hash, and the set's own overhead).
const BYTES_PER_USER: u64 = 24;

/// The users of one file, or of one day.
#[derive(Debug, Default, Clone)]
pub struct Day {
    /// Rows of `events` (any user, or none).
    pub events: u64,
    /// Distinct non-null `user_id`s, hashed.
    pub users: HashSet<u128>,
    /// When a refresh last used it (for dropping the least recently used).
    used: u64,
}

impl Day {
    fn bytes(&self) -> u64 {
        64 + self.users.capacity() as u64 * BYTES_PER_USER
    }

    pub fn add(&mut self, other: Day) {
        self.events += other.events;
        self.users.extend(other.users);
    }
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

/// Reads the users of `files`, by day. `days` lists days to return even without files (as
/// empty): days known to have no events.
pub async fn read_days(
    store: &DataStore,
    files: &[DeltaFile],
    days: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, Day>> {
    let mut out: BTreeMap<i32, Day> = days.iter().map(|d| (*d, Day::default())).collect();
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
        async move { Ok::<_, Error>((day, read_file(object_store, Path::from(key?), size).await?)) }
    });
    let mut stream = futures::stream::iter(reads).buffer_unordered(READ_CONCURRENCY);
    while let Some((day, users)) = stream.try_next().await? {
        out.entry(day).or_default().add(users);
    }
    Ok(out)
}

/// The rows and distinct users of one Parquet file of `events`, reading only `user_id`.
async fn read_file(
    store: Arc<dyn object_store::ObjectStore>,
    location: Path,
    size: u64,
) -> Result<Day> {
    let failed = |e: &dyn std::fmt::Display| Error::Storage {
        action: "reading",
        object: location.to_string(),
        message: e.to_string(),
    };
    let reader = ParquetObjectReader::new(store, location.clone()).with_file_size(size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| failed(&e))?;
    let mask =
        ProjectionMask::columns(builder.metadata().file_metadata().schema_descr(), [USER_ID]);
    let mut stream = builder
        .with_projection(mask)
        .build()
        .map_err(|e| failed(&e))?;
    let mut day = Day::default();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| failed(&e))?;
        day.events += batch.num_rows() as u64;
        let Some(column) = batch.column_by_name(USER_ID) else {
            continue;
        };
        let column = cast(column, &DataType::Utf8).map_err(|e| failed(&e))?;
        let ids = column.as_string::<i32>();
        day.users.reserve(ids.len() - ids.null_count());
        for id in ids.iter().flatten() {
            day.users.insert(user_hash(id));
        }
    }
    Ok(day)
}

/// The hash a user is kept as: 128 bits, so two users colliding is not a practical concern.
pub fn user_hash(user_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(user_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(users: &[&str], used: u64) -> Day {
        Day {
            events: users.len() as u64,
            users: users.iter().map(|u| user_hash(u)).collect(),
            used,
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
}
