//! Figures of one worker: counters it logs every few seconds, and the same figures recorded
//! through the `metrics` facade for `/metrics` (names in `floe_catalog::metrics`; the
//! `floe_kafka_*` names are this worker's own).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use floe_catalog::metrics as m;

/// Figures of one worker.
pub struct Metrics {
    pub records_committed: AtomicU64,
    pub commits: AtomicU64,
    pub dead_letters: AtomicU64,
    pub fenced: AtomicU64,
    pub paused: AtomicU64,
    pub rejoins: AtomicU64,
    /// Per (topic, partition): the position committed to the table, as this worker knows it.
    pub(crate) committed: Mutex<HashMap<(String, i32), i64>>,
    /// topic → tenant, for lag per tenant.
    pub(crate) tenants: Mutex<HashMap<String, String>>,
    /// The lag series set at the last scrape: those gone since (partitions revoked) are set
    /// to 0, so that no worker keeps showing a lag that is another's now.
    shown: Mutex<Shown>,
}

/// Tenant labels, and (tenant label, partition) pairs, of the lag series last set.
type Shown = (BTreeSet<String>, BTreeSet<(String, i32)>);

/// A counter of the worker: kept for its log line and recorded for `/metrics`.
pub(crate) fn count(counter: &AtomicU64, name: &'static str, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(name).increment(n);
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            records_committed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            rejoins: AtomicU64::new(0),
            committed: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            shown: Mutex::new(Default::default()),
        }
    }

    /// A batch committed: `ms` from its first record's arrival, `age_ms` from its oldest
    /// record's timestamp (absent when records carry none).
    pub(crate) fn record_commit(&self, records: usize, ms: u64, age_ms: Option<i64>) {
        count(&self.commits, m::KAFKA_COMMITS, 1);
        count(
            &self.records_committed,
            m::KAFKA_RECORDS_COMMITTED,
            records as u64,
        );
        metrics::histogram!(m::KAFKA_RECORDS_PER_COMMIT).record(records as f64);
        metrics::histogram!(m::KAFKA_COMMIT_SECONDS).record(ms as f64 / 1000.0);
        if let Some(age) = age_ms {
            // Clocks of other hosts may be ahead: a negative age counts as none.
            metrics::histogram!(m::KAFKA_VISIBLE_SECONDS).record(age.max(0) as f64 / 1000.0);
        }
    }

    /// The table's position of a partition, as this worker last knew it (for the lag).
    pub(crate) fn note_position(&self, topic: &str, partition: i32, next: i64) {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((topic.to_string(), partition), next);
    }

    /// Records behind the brokers' high watermarks, per tenant (assigned partitions only).
    pub fn lag(&self, high: &HashMap<(String, i32), i64>) -> BTreeMap<String, i64> {
        let committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for ((topic, p), hi) in high {
            let Some(tenant) = tenants.get(topic) else {
                continue;
            };
            let done = committed.get(&(topic.clone(), *p)).copied().unwrap_or(0);
            *out.entry(tenant.clone()).or_insert(0) += (hi - done).max(0);
        }
        out
    }

    /// Sets the lag gauges from the brokers' high watermarks: per tenant, and per tenant and
    /// partition (assigned partitions only; a series of a partition no longer assigned reads 0).
    pub fn set_lag_gauges(&self, high: &HashMap<(String, i32), i64>) {
        // Tenants past the label cap share one label: their lags add up.
        let mut per_tenant: BTreeMap<String, i64> = BTreeMap::new();
        for (tenant, lag) in self.lag(high) {
            *per_tenant.entry(m::tenant(&tenant)).or_default() += lag;
        }
        let mut per_partition: BTreeMap<(String, i32), i64> = BTreeMap::new();
        {
            let committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
            let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            for ((topic, p), hi) in high {
                let Some(tenant) = tenants.get(topic) else {
                    continue;
                };
                let done = committed.get(&(topic.clone(), *p)).copied().unwrap_or(0);
                *per_partition.entry((m::tenant(tenant), *p)).or_default() += (hi - done).max(0);
            }
        }
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for gone in shown.0.difference(&per_tenant.keys().cloned().collect()) {
            metrics::gauge!(m::KAFKA_CONSUMER_LAG, "tenant" => gone.clone()).set(0.0);
        }
        for (tenant, partition) in shown.1.difference(&per_partition.keys().cloned().collect()) {
            metrics::gauge!(
                m::KAFKA_PARTITION_LAG,
                "tenant" => tenant.clone(),
                "partition" => partition.to_string()
            )
            .set(0.0);
        }
        *shown = (
            per_tenant.keys().cloned().collect(),
            per_partition.keys().cloned().collect(),
        );
        for (tenant, lag) in per_tenant {
            metrics::gauge!(m::KAFKA_CONSUMER_LAG, "tenant" => tenant).set(lag as f64);
        }
        for ((tenant, partition), lag) in per_partition {
            metrics::gauge!(
                m::KAFKA_PARTITION_LAG,
                "tenant" => tenant,
                "partition" => partition.to_string()
            )
            .set(lag as f64);
        }
    }
}
