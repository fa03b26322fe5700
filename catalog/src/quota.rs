//! Tenants' quotas: their names, their values (the `[quota]` defaults with each tenant's
//! overrides), the daily usage kept in the catalog database, and (in [`book`]) what one process
//! checks them against.
//!
//! Rates (ingest events and bytes per second, queries per minute) and concurrent queries are
//! counted by each process for what it serves; daily amounts (bytes scanned) and stored bytes
//! are shared through the catalog, so every process of a deployment sees the same total within
//! `quota.refresh_secs`.

pub mod book;
mod rate;
pub mod tally;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::QuotaConfig;
use crate::{Catalog, Error, Result, TenantId};

pub use book::{QuerySlot, QuotaBook, QuotaExceeded, RateLimit};
pub use rate::RawBody;

/// A quota's name, as `floe tenant set T --quota NAME=VALUE` and error messages spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    IngestEventsPerSec,
    IngestBytesPerSec,
    ConcurrentQueries,
    QueriesPerMinute,
    ScannedBytesPerDay,
    StoredBytes,
}

impl Quota {
    pub const ALL: [Quota; 6] = [
        Quota::IngestEventsPerSec,
        Quota::IngestBytesPerSec,
        Quota::ConcurrentQueries,
        Quota::QueriesPerMinute,
        Quota::ScannedBytesPerDay,
        Quota::StoredBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Quota::IngestEventsPerSec => "ingest_events_per_sec",
            Quota::IngestBytesPerSec => "ingest_bytes_per_sec",
            Quota::ConcurrentQueries => "concurrent_queries",
            Quota::QueriesPerMinute => "queries_per_minute",
            Quota::ScannedBytesPerDay => "scanned_bytes_per_day",
            Quota::StoredBytes => "stored_bytes",
        }
    }

    pub fn parse(name: &str) -> Option<Quota> {
        Quota::ALL.into_iter().find(|q| q.name() == name)
    }

    fn default_of(self, d: &QuotaConfig) -> u64 {
        match self {
            Quota::IngestEventsPerSec => d.ingest_events_per_sec,
            Quota::IngestBytesPerSec => d.ingest_bytes_per_sec,
            Quota::ConcurrentQueries => d.concurrent_queries,
            Quota::QueriesPerMinute => d.queries_per_minute,
            Quota::ScannedBytesPerDay => d.scanned_bytes_per_day,
            Quota::StoredBytes => d.stored_bytes,
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Refuses a name that is no quota.
pub fn check_name(name: &str) -> Result<Quota> {
    Quota::parse(name).ok_or_else(|| {
        Error::invalid(format!(
            "unknown quota {name:?}; quotas are {}",
            Quota::ALL.map(Quota::name).join(", ")
        ))
    })
}

/// Parses `NAME=VALUE` items (`VALUE` a number, a size such as `10MiB`, or `default` to clear
/// the override).
pub fn parse_overrides(items: &[String]) -> Result<BTreeMap<String, Option<u64>>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("--quota {item:?}: expected NAME=VALUE")))?;
        let quota = check_name(name.trim())?;
        let value = match value.trim() {
            "default" => None,
            v => Some(
                crate::config::parse_size(v)
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "--quota {item:?}: expected a number (0 for unlimited), a size such as \
                     10MiB, or `default`"
                        ))
                    })? as u64,
            ),
        };
        out.insert(quota.name().to_string(), value);
    }
    Ok(out)
}

/// A tenant's quotas in effect (0: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quotas {
    values: BTreeMap<&'static str, u64>,
    /// Which values are the tenant's own (the others are the defaults).
    overridden: Vec<&'static str>,
}

impl Quotas {
    pub fn resolve(defaults: &QuotaConfig, overrides: &BTreeMap<String, u64>) -> Quotas {
        let mut values = BTreeMap::new();
        let mut overridden = Vec::new();
        for q in Quota::ALL {
            let v = match overrides.get(q.name()) {
                Some(v) => {
                    overridden.push(q.name());
                    *v
                }
                None => q.default_of(defaults),
            };
            values.insert(q.name(), v);
        }
        Quotas { values, overridden }
    }

    pub fn get(&self, quota: Quota) -> u64 {
        self.values.get(quota.name()).copied().unwrap_or(0)
    }

    pub fn is_override(&self, quota: Quota) -> bool {
        self.overridden.contains(&quota.name())
    }
}

/// What a tenant used on one UTC day, as the catalog has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub events: u64,
    pub bytes: u64,
    pub queries: u64,
    pub scanned_bytes: u64,
}

impl Usage {
    fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

/// Today's UTC day, as usage rows name it.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

impl Catalog {
    /// Adds `delta` to `tenant`'s usage of `day`.
    pub async fn add_usage(&self, tenant: &TenantId, day: &str, delta: Usage) -> Result<()> {
        if delta.is_empty() {
            return Ok(());
        }
        let (tenant, day) = (tenant.clone(), day.to_string());
        self.on_io(move |c| async move {
            sqlx::query(
                "INSERT INTO floe_usage (tenant, day, events, bytes, queries, scanned_bytes) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant, day) DO UPDATE SET \
                 events = floe_usage.events + excluded.events, \
                 bytes = floe_usage.bytes + excluded.bytes, \
                 queries = floe_usage.queries + excluded.queries, \
                 scanned_bytes = floe_usage.scanned_bytes + excluded.scanned_bytes",
            )
            .bind(tenant.as_str())
            .bind(&day)
            .bind(delta.events as i64)
            .bind(delta.bytes as i64)
            .bind(delta.queries as i64)
            .bind(delta.scanned_bytes as i64)
            .execute(&c.db)
            .await
            .map_err(Error::db("record usage"))?;
            Ok(())
        })
        .await
    }

    /// `tenant`'s usage of `day`.
    pub async fn usage(&self, tenant: &TenantId, day: &str) -> Result<Usage> {
        let (tenant, day) = (tenant.clone(), day.to_string());
        self.on_io(move |c| async move {
            let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
                "SELECT events, bytes, queries, scanned_bytes FROM floe_usage \
                 WHERE tenant = $1 AND day = $2",
            )
            .bind(tenant.as_str())
            .bind(&day)
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("read usage"))?;
            Ok(row.map_or_else(Usage::default, |(e, b, q, s)| Usage {
                events: e as u64,
                bytes: b as u64,
                queries: q as u64,
                scanned_bytes: s as u64,
            }))
        })
        .await
    }

    /// Bytes of data files in the current snapshots of `tenant`'s tables.
    pub async fn stored_bytes(&self, tenant: &TenantId) -> Result<u64> {
        let mut total = 0u64;
        for name in self.list_tables(tenant).await? {
            let table = match self.load_table(tenant, &name).await {
                Ok(t) => t,
                // Dropped between the listing and the load.
                Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(snapshot) = table.metadata().current_snapshot() {
                total += snapshot
                    .summary()
                    .additional_properties
                    .get("total-files-size")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_unknown_names_are_refused() {
        let o = parse_overrides(&[
            "ingest_events_per_sec=1000".into(),
            "stored_bytes=10MiB".into(),
            "queries_per_minute=default".into(),
        ])
        .unwrap();
        assert_eq!(o["ingest_events_per_sec"], Some(1000));
        assert_eq!(o["stored_bytes"], Some(10 << 20));
        assert_eq!(o["queries_per_minute"], None);
        for bad in [
            "events=1",
            "ingest_events_per_sec",
            "stored_bytes=-1",
            "stored_bytes=x",
        ] {
            let e = parse_overrides(&[bad.to_string()]).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{bad}: {e}");
        }
    }

    #[test]
    fn overrides_replace_defaults_one_by_one() {
        let defaults = QuotaConfig::default();
        let q = Quotas::resolve(
            &defaults,
            &BTreeMap::from([("concurrent_queries".to_string(), 2)]),
        );
        assert_eq!(q.get(Quota::ConcurrentQueries), 2);
        assert!(q.is_override(Quota::ConcurrentQueries));
        assert_eq!(
            q.get(Quota::IngestEventsPerSec),
            defaults.ingest_events_per_sec
        );
        assert!(!q.is_override(Quota::IngestEventsPerSec));
    }
}
