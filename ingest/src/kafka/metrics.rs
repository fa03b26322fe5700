//! Figures of one worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Figures of one worker, in the shape a metrics endpoint exposes
/// (see [`Metrics::prometheus`]).
pub struct Metrics {
    pub records_committed: AtomicU64,
    pub commits: AtomicU64,
    pub dead_letters: AtomicU64,
    pub fenced: AtomicU64,
    pub paused: AtomicU64,
    pub rejoins: AtomicU64,
    records_per_commit: Mutex<Histogram<u64>>,
    commit_ms: Mutex<Histogram<u64>>,
    /// Record timestamp of a batch's oldest record to its commit.
    visible_ms: Mutex<Histogram<u64>>,
    /// Per (topic, partition): the position committed to the table, as this worker knows it.
    pub(crate) committed: Mutex<HashMap<(String, i32), i64>>,
    /// topic → tenant, for lag per tenant.
    pub(crate) tenants: Mutex<HashMap<String, String>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let hist = || Mutex::new(Histogram::new_with_bounds(1, 3_600_000, 2).expect("bounds"));
        Metrics {
            records_committed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            paused: AtomicU64::new(0),
            rejoins: AtomicU64::new(0),
            records_per_commit: hist(),
            commit_ms: hist(),
            visible_ms: hist(),
            committed: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// A batch committed: `ms` from its first record's arrival, `age_ms` from its oldest
    /// record's timestamp (absent when records carry none).
    pub(crate) fn record_commit(&self, records: usize, ms: u64, age_ms: Option<i64>) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.records_committed
            .fetch_add(records as u64, Ordering::Relaxed);
        if let Ok(mut h) = self.records_per_commit.lock() {
            let _ = h.record(records.max(1) as u64);
        }
        if let Ok(mut h) = self.commit_ms.lock() {
            let _ = h.record(ms.max(1));
        }
        if let Some(age) = age_ms
            && let Ok(mut h) = self.visible_ms.lock()
        {
            // Clocks of other hosts may be ahead: a negative age counts as the least.
            let _ = h.record(age.clamp(1, 3_600_000) as u64);
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

    /// The figures in Prometheus' text format.
    pub fn prometheus(&self, high: &HashMap<(String, i32), i64>) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            "floe_kafka_records_committed_total",
            "Records committed to tables (events and dead letters).",
            self.records_committed.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "floe_kafka_commits_total",
            "Table commits.",
            self.commits.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "floe_kafka_dlq_records_total",
            "Records sent to events_dlq.",
            self.dead_letters.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "floe_kafka_fenced_total",
            "Batches refused because another worker moved the partitions' positions.",
            self.fenced.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "floe_kafka_pauses_total",
            "Times partitions were paused for backpressure.",
            self.paused.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "floe_kafka_rejoins_total",
            "Times the worker rejoined the group because partitions had no reader.",
            self.rejoins.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP floe_kafka_consumer_lag Records behind the high watermark, per tenant.\n\
             # TYPE floe_kafka_consumer_lag gauge"
        );
        for (tenant, lag) in self.lag(high) {
            let _ = writeln!(s, "floe_kafka_consumer_lag{{tenant=\"{tenant}\"}} {lag}");
        }
        for (name, help, h) in [
            (
                "floe_kafka_records_per_commit",
                "Records per table commit.",
                &self.records_per_commit,
            ),
            (
                "floe_kafka_commit_ms",
                "Milliseconds from a batch's first record to its commit.",
                &self.commit_ms,
            ),
            (
                "floe_kafka_visible_ms",
                "Milliseconds from the timestamp of a batch's oldest record (its producer's, or \
                 the broker's on LogAppendTime topics) to the commit that made it queryable.",
                &self.visible_ms,
            ),
        ] {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} summary");
            for q in [0.5, 0.9, 0.99] {
                let _ = writeln!(s, "{name}{{quantile=\"{q}\"}} {}", h.value_at_quantile(q));
            }
            let _ = writeln!(s, "{name}_count {}", h.len());
        }
        s
    }
}
