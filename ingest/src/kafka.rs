//! `floe ingest kafka`: a consumer-group member that turns tenant topics into Iceberg commits,
//! exactly once.
//!
//! Kafka's own committed offsets are advisory. The truth is in each tenant table's snapshot
//! summary (`floe.kafka.<group>.<topic>` = partition → next offset), written by the same
//! compare-and-swap that adds the batch's files ([`Catalog::commit_append_kafka`]). A worker
//! keeps, per partition it reads, the offset it expects next:
//!
//! - an assignment starts each partition at the table's position (its beginning when the
//!   table holds none), set in the rebalance callback so that nothing is fetched twice; where
//!   that could not be read, and after a fence, the first record of the partition loads the
//!   table's position; a record below the expected offset is skipped (already committed or
//!   already buffered), a record past it makes the worker seek back to it (Kafka's committed
//!   offset was behind or ahead); after a seek, a record past the position is a real gap
//!   (compacted or transactional offsets) and is accepted;
//! - a batch says, per partition, which position it starts from; the commit checks that the
//!   table still holds exactly that. A worker that lost its partitions in a rebalance (a zombie)
//!   finds another position there and is *fenced*: it drops what it holds of those partitions,
//!   seeks to the table's position and goes on.
//!
//! Records that are not valid events (not UTF-8, not JSON, another tenant, failing validation)
//! go to the tenant's `events_dlq` table in the same flush, before the events commit; that table
//! keeps its own positions, so a replay after a crash does not store a poison record twice.
//!
//! Memory is bounded: a topic whose buffer is full while its previous batch commits is paused,
//! and every partition is paused while the worker holds more than `kafka.max_in_flight_bytes`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use floe_catalog::table::{
    DLQ_TABLE, EVENTS_TABLE, KafkaBatch, KafkaCommit, KafkaRange, kafka_positions,
};
use floe_catalog::{Catalog, Config, ErrorKind, TenantId};
use futures::StreamExt;
use hdrhistogram::Histogram;
use iceberg::spec::DataFile;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::event::{Limits, StoredEvent, parse_event};
use crate::writer::{arrow_schema_of, day_of, write_days, write_events};
use crate::{Error, Result};

/// A record that could not become an event.
#[derive(Debug, Clone)]
struct DeadLetter {
    partition: i32,
    offset: i64,
    reason: String,
    detail: String,
    key: Option<String>,
    payload: String,
    at_us: i64,
}

/// What the worker keeps of a consumed record besides its position.
struct Record {
    /// The record's timestamp (ms since the epoch), when it has one.
    timestamp_ms: Option<i64>,
    key: Option<String>,
    value: Option<Vec<u8>>,
}

/// What a topic's buffer holds, and the positions it covers.
#[derive(Default)]
struct Batch {
    events: Vec<(i32, StoredEvent)>,
    dead: Vec<DeadLetter>,
    ranges: BTreeMap<i32, KafkaRange>,
    bytes: usize,
    first_at: Option<Instant>,
    /// The earliest record timestamp (ms since the epoch) of the batch, when records have one.
    oldest_ms: Option<i64>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn records(&self) -> usize {
        self.events.len() + self.dead.len()
    }

    /// Drops everything of `partitions` (revoked or fenced).
    fn drop_partitions(&mut self, partitions: &HashSet<i32>) {
        self.events.retain(|(p, _)| !partitions.contains(p));
        self.dead.retain(|d| !partitions.contains(&d.partition));
        self.ranges.retain(|p, _| !partitions.contains(p));
        self.bytes = self.events.iter().map(|(_, e)| e.size()).sum::<usize>()
            + self
                .dead
                .iter()
                .map(|d| d.payload.len() + 64)
                .sum::<usize>();
        if self.ranges.is_empty() {
            self.first_at = None;
            self.oldest_ms = None;
        }
    }
}

/// Per partition: the offset expected next, and where a seek to it stands.
#[derive(Debug, Clone, Copy)]
struct Part {
    next: Option<i64>,
    seek: Seek,
}

/// A seek runs off the worker loop; until librdkafka confirms it, records of the partition
/// may still come from the old position and are dropped. After it, the first record is the
/// first the broker has at or past the position: a gap before it is real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seek {
    No,
    Pending(u64),
    Done,
}

/// A seek finished (`ok`) or failed.
struct SeekDone {
    topic: String,
    partition: i32,
    id: u64,
    ok: bool,
}

struct TopicState {
    tenant: Option<TenantId>,
    parts: HashMap<i32, Part>,
    /// The table's positions of the topic, read for the first partition that needed them
    /// since the last assignment, revocation or fence: the others of the same assignment
    /// start from the same read instead of one table load each.
    positions: Option<BTreeMap<i32, i64>>,
    buf: Batch,
    /// Bytes of the batch being committed.
    flushing: Option<usize>,
    paused: bool,
    /// The tenant did not exist at the last commit: the topic waits until then.
    hold_until: Option<Instant>,
}

/// Where an assignment started a partition: `Some(Some(next))` at the table's position,
/// `Some(None)` at the partition's beginning (the table holds none), `None` not positioned
/// (the table could not be read; the first record loads it).
type Start = Option<Option<i64>>;

/// Rebalance notices, handed from librdkafka's callback to the worker loop.
enum Notice {
    /// Partitions with where the assignment started them.
    Assigned(Vec<(String, i32, Start)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: positions assigned partitions at the table's positions, collects
/// rebalances and the brokers' high watermarks.
pub struct WorkerContext {
    /// For reading the tables' positions when partitions are assigned.
    catalog: Catalog,
    group: String,
    pattern: regex::Regex,
    runtime: Option<tokio::runtime::Handle>,
    notices: Mutex<Vec<Notice>>,
    /// Rebalances seen (assignments and revocations).
    rebalances: AtomicU64,
    high_watermarks: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        let mut fresh = HashMap::new();
        for (topic, t) in statistics.topics {
            for (p, s) in t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; offsets < 0 are unknown.
                if p >= 0 && s.hi_offset >= 0 && s.desired {
                    fresh.insert((topic.clone(), p), s.hi_offset);
                }
            }
        }
        // Only what is assigned now: revoked partitions are another worker's lag.
        *self
            .high_watermarks
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

impl WorkerContext {
    /// The table's positions of each topic in `tpl`, keyed by topic (absent: unreadable).
    /// Runs inside librdkafka's rebalance callback, on the thread polling the consumer: the
    /// reads go to a scoped thread that enters the runtime, once per topic.
    fn table_positions(&self, tpl: &TopicPartitionList) -> HashMap<String, BTreeMap<i32, i64>> {
        let Some(runtime) = &self.runtime else {
            return HashMap::new();
        };
        let topics: HashSet<String> = tpl
            .elements()
            .iter()
            .map(|e| e.topic().to_string())
            .collect();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    runtime.block_on(async {
                        // A few reads at a time: an assignment may bring many tenants.
                        let reads = topics.into_iter().filter_map(|topic| {
                            let tenant = tenant_of(&self.pattern, &topic)?;
                            Some(async move {
                                match read_positions(&self.catalog, &self.group, &tenant, &topic)
                                    .await
                                {
                                    Ok(p) => Some((topic, p)),
                                    Err(e) => {
                                        tracing::debug!(%topic, error = %e, "positions not read at assignment");
                                        None
                                    }
                                }
                            })
                        });
                        let out: Vec<_> = futures::stream::iter(reads)
                            .buffer_unordered(16)
                            .collect()
                            .await;
                        out.into_iter().flatten().collect::<HashMap<_, _>>()
                    })
                })
                .join()
                .unwrap_or_default()
        })
    }
}

impl ConsumerContext for WorkerContext {
    /// Assigned partitions start at the table's positions (a partition the table holds
    /// nothing of, at its beginning), never at Kafka's committed offsets, which are advisory:
    /// no record is fetched twice to get there.
    fn rebalance(
        &self,
        base: &rdkafka::consumer::BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr::{
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS,
        };
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let list = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect::<Vec<_>>()
        };
        let (result, notice) = match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positions = self.table_positions(tpl);
                let mut assigned = Vec::new();
                for (topic, p) in list(tpl) {
                    let start = positions.get(&topic).map(|stored| stored.get(&p).copied());
                    if let Some(next) = start {
                        let offset = next.map_or(Offset::Beginning, Offset::Offset);
                        if tpl.set_partition_offset(&topic, p, offset).is_err() {
                            assigned.push((topic, p, None));
                            continue;
                        }
                    }
                    assigned.push((topic, p, start));
                }
                let r = if cooperative {
                    base.incremental_assign(tpl)
                } else {
                    base.assign(tpl)
                };
                (r, Notice::Assigned(assigned))
            }
            // A revocation, or an error after which the assignment cannot be trusted: give
            // the partitions back either way.
            other => {
                if other != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                }
                let r = if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                };
                (r, Notice::Revoked(list(tpl)))
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
        }
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(notice);
    }
}

type Kafka = StreamConsumer<WorkerContext>;

/// Watches for partitions that no member of the group reads.
///
/// A coordinator that drops a member for a missed heartbeat must start a new generation so
/// that the survivors take over its partitions. tansu 0.6 does not: it forgets the member,
/// keeps the generation, and the survivors, whose heartbeats still succeed, never rejoin; the
/// dead member's partitions are read by nobody until some member joins or leaves. No client
/// setting recovers from that, so the worker looks for it. Every half `after`, it asks the
/// brokers for the partitions of the consumed topics it does not own whose records run past
/// the group's committed offset. One whose offset has not moved for `after`, whose tenant
/// exists (a missing tenant's topic is held on purpose) and that has a record to read there
/// (not only transaction markers or aborted records, checked with a group-less consumer) is
/// read by nobody: the worker leaves and rejoins the group. The leave starts a new
/// generation, which assigns every partition to a live member. Rejoins back off (doubling up
/// to 10 minutes) while a stall persists, since then something else is wrong (a member alive
/// but unable to commit).
struct StallWatch {
    after: Duration,
    consumer: Arc<Kafka>,
    pattern: regex::Regex,
    subscription: String,
    catalog: Catalog,
    metrics: Arc<Metrics>,
    /// Settings of the group-less consumer that peeks at a stalled partition.
    peek: ClientConfig,
    /// Partition → (the group's offset, first seen at that offset).
    since: HashMap<(String, i32), (i64, Instant)>,
}

impl StallWatch {
    /// Probes until the worker drops it; a failed rejoin is fatal to the worker.
    async fn run(mut self, fatal: mpsc::UnboundedSender<Error>) {
        let mut next_rejoin = Instant::now();
        let mut backoff = self.after;
        loop {
            tokio::time::sleep(self.after / 2).await;
            let started = Instant::now();
            let rebalances = self.consumer.context().rebalances.load(Ordering::Relaxed);
            let (consumer, pattern) = (self.consumer.clone(), self.pattern.clone());
            let behind = match tokio::task::spawn_blocking(move || {
                probe_behind(&consumer, &pattern)
            })
            .await
            {
                Ok(Ok(behind)) => behind,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "stall probe failed");
                    continue;
                }
                Err(_) => continue,
            };
            if self.consumer.context().rebalances.load(Ordering::Relaxed) != rebalances {
                // Owners changed while probing: what it saw says nothing.
                self.since.clear();
                continue;
            }
            let mut stalled = Vec::new();
            let mut since = HashMap::new();
            for (tp, at) in behind {
                let first = match self.since.get(&tp) {
                    Some(&(o, t)) if o == at => t,
                    _ => started,
                };
                if started.duration_since(first) >= self.after {
                    stalled.push((tp.clone(), at));
                }
                since.insert(tp, (at, first));
            }
            self.since = since;
            let stalled = self.unread(stalled).await;
            if stalled.is_empty() {
                backoff = self.after;
                continue;
            }
            if Instant::now() < next_rejoin {
                continue;
            }
            tracing::warn!(
                partitions = ?stalled,
                secs = self.after.as_secs(),
                "partitions behind the group's offset have had no reader; rejoining the group so that they are assigned"
            );
            self.metrics.rejoins.fetch_add(1, Ordering::Relaxed);
            self.consumer.unsubscribe();
            if let Err(e) = self.consumer.subscribe(&[&self.subscription]) {
                let _ = fatal.send(kafka_err("subscribing again")(e));
                return;
            }
            self.since.clear();
            next_rejoin = Instant::now() + backoff;
            backoff = (backoff * 2).min(Duration::from_secs(600));
        }
    }

    /// Of the stalled partitions, those of existing tenants with a record to read.
    async fn unread(&self, stalled: Vec<((String, i32), i64)>) -> Vec<(String, i32)> {
        let mut exists: HashMap<String, bool> = HashMap::new();
        let mut kept = Vec::new();
        for ((topic, p), at) in stalled {
            if !exists.contains_key(&topic) {
                let found = match tenant_of(&self.pattern, &topic) {
                    Some(tenant) => !matches!(
                        self.catalog.load_table(&tenant, EVENTS_TABLE).await,
                        Err(e) if e.kind() == ErrorKind::NotFound
                    ),
                    None => false,
                };
                exists.insert(topic.clone(), found);
            }
            if exists[&topic] {
                kept.push(((topic, p), at));
            }
        }
        if kept.is_empty() {
            return Vec::new();
        }
        let peek = self.peek.clone();
        match tokio::task::spawn_blocking(move || peek_readable(&peek, &kept)).await {
            Ok(Ok(mut readable)) => {
                readable.sort();
                readable
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "stall probe could not read the partitions");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Partitions of the consumed topics this worker does not own whose records run past the
/// group's committed offset (its start when none), with that offset. Blocking.
fn probe_behind(consumer: &Kafka, pattern: &regex::Regex) -> Result<HashMap<(String, i32), i64>> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(kafka_err("reading topic metadata"))?;
    let own: HashSet<(String, i32)> = consumer
        .assignment()
        .map_err(kafka_err("reading the assignment"))?
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        if t.error().is_some() || !pattern.is_match(t.name()) {
            continue;
        }
        for p in t.partitions() {
            if !own.contains(&(t.name().to_string(), p.id())) {
                tpl.add_partition(t.name(), p.id());
            }
        }
    }
    let mut behind = HashMap::new();
    if tpl.count() == 0 {
        return Ok(behind);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(kafka_err("reading the group's offsets"))?;
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .map_err(kafka_err("reading watermarks"))?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        if high > at {
            behind.insert((e.topic().to_string(), e.partition()), at);
        }
    }
    Ok(behind)
}

/// Of `parts` (partition, offset), those with a committed record at or past the offset,
/// read by a consumer outside any group. Blocking; gives up on a partition after 5 s.
fn peek_readable(
    config: &ClientConfig,
    parts: &[((String, i32), i64)],
) -> Result<Vec<(String, i32)>> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(kafka_err("creating the stall probe's consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), at) in parts {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*at))
            .map_err(kafka_err("assigning the stall probe"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(kafka_err("assigning the stall probe"))?;
    let mut found = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while found.len() < parts.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            found.insert((m.topic().to_string(), m.partition()));
        }
    }
    Ok(found.into_iter().collect())
}

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
    committed: Mutex<HashMap<(String, i32), i64>>,
    /// topic → tenant, for lag per tenant.
    tenants: Mutex<HashMap<String, String>>,
}

impl Metrics {
    fn new() -> Metrics {
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
    fn record_commit(&self, records: usize, ms: u64, age_ms: Option<i64>) {
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
    fn note_position(&self, topic: &str, partition: i32, next: i64) {
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

/// What one flush ended with.
enum Flushed {
    Done { records: usize, dead: usize },
    Fenced { stored: BTreeMap<i32, i64> },
    TenantMissing,
}

struct FlushDone {
    topic: String,
    ranges: BTreeMap<i32, KafkaRange>,
    first_at: Option<Instant>,
    oldest_ms: Option<i64>,
    outcome: Flushed,
}

/// Settings of one worker (from `[kafka]` and `[ingest]`).
#[derive(Clone)]
pub struct WorkerSettings {
    pub group: String,
    pub topic_pattern: String,
    pub flush_interval: Duration,
    pub flush_max_rows: usize,
    pub flush_max_bytes: usize,
    pub max_in_flight_bytes: usize,
    pub zstd_level: i32,
    pub limits: Limits,
    /// See [`StallWatch`]; `None`: off.
    pub stall_rejoin: Option<Duration>,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> WorkerSettings {
        WorkerSettings {
            group: config.kafka.group.clone(),
            topic_pattern: config.kafka.topic_pattern.clone(),
            flush_interval: Duration::from_millis(config.ingest.flush_interval_ms),
            flush_max_rows: config.ingest.flush_max_rows,
            flush_max_bytes: config.ingest.flush_max_bytes,
            max_in_flight_bytes: config.kafka.max_in_flight_bytes,
            zstd_level: config.ingest.zstd_level,
            limits: Limits {
                max_event_bytes: config.ingest.max_event_bytes,
                max_events: 1,
            },
            stall_rejoin: (config.kafka.stall_rejoin_ms > 0)
                .then(|| Duration::from_millis(config.kafka.stall_rejoin_ms)),
        }
    }
}

/// The librdkafka settings shared by Floe's consumers and producers: the brokers, then the
/// user's `kafka.properties` over Floe's defaults.
pub fn client_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// A running `floe ingest kafka` worker.
pub struct Worker {
    catalog: Catalog,
    settings: WorkerSettings,
    consumer: Arc<Kafka>,
    pattern: regex::Regex,
    /// The pattern as librdkafka takes it.
    subscription: String,
    /// Settings of the stall watch's group-less consumer.
    peek: ClientConfig,
    pub metrics: Arc<Metrics>,
    seeks: mpsc::UnboundedSender<SeekDone>,
    seeks_done: Mutex<Option<mpsc::UnboundedReceiver<SeekDone>>>,
    next_seek: AtomicU64,
}

impl Worker {
    pub fn new(catalog: Catalog, config: &Config) -> Result<Worker> {
        if config.kafka.brokers.is_empty() {
            return Err(Error::Invalid {
                message: "no Kafka brokers: set kafka.brokers (--brokers, FLOE_KAFKA_BROKERS)"
                    .into(),
            });
        }
        let settings = WorkerSettings::from_config(config);
        let pattern = regex::Regex::new(&settings.topic_pattern).map_err(|e| Error::Invalid {
            message: format!("kafka.topic_pattern: {e}"),
        })?;
        if pattern.captures_len() < 2 {
            return Err(Error::Invalid {
                message: "kafka.topic_pattern needs a capture group for the tenant id".into(),
            });
        }
        // Prefetch at most a quarter of the in-flight budget per partition queue.
        let queued_kib = (settings.max_in_flight_bytes / 4 / 1024).clamp(1024, 1 << 20);
        let client = client_config(
            config,
            &[
                ("group.id", &settings.group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                // Incremental rebalances: a member joining or leaving moves only the
                // partitions that change owner; the others keep flowing.
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("isolation.level", "read_committed"),
                ("session.timeout.ms", "10000"),
                // A fetch answers after at most this long even when little is new: records
                // reach the buffer sooner (the default 500 ms would add to every latency).
                ("fetch.wait.max.ms", "100"),
                ("heartbeat.interval.ms", "1000"),
                ("topic.metadata.refresh.interval.ms", "5000"),
                ("statistics.interval.ms", "5000"),
                ("queued.max.messages.kbytes", &queued_kib.to_string()),
            ],
        );
        let consumer: Kafka = client
            .create_with_context(WorkerContext {
                catalog: catalog.clone(),
                group: settings.group.clone(),
                pattern: pattern.clone(),
                runtime: tokio::runtime::Handle::try_current().ok(),
                notices: Mutex::new(Vec::new()),
                rebalances: AtomicU64::new(0),
                high_watermarks: Mutex::new(HashMap::new()),
            })
            .map_err(kafka_err("creating the consumer"))?;
        // librdkafka subscribes to every topic matching a pattern that starts with `^`.
        let subscription = if settings.topic_pattern.starts_with('^') {
            settings.topic_pattern.clone()
        } else {
            format!("^{}", settings.topic_pattern)
        };
        consumer
            .subscribe(&[&subscription])
            .map_err(kafka_err("subscribing"))?;
        // It assigns partitions by hand and never joins: the group id only names it.
        let peek_group = format!("{}.stall-probe", settings.group);
        let peek = client_config(
            config,
            &[
                ("group.id", &peek_group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                ("fetch.max.bytes", "1048576"),
                ("queued.max.messages.kbytes", "1024"),
            ],
        );
        let (seeks, seeks_done) = mpsc::unbounded_channel();
        Ok(Worker {
            catalog,
            settings,
            consumer: Arc::new(consumer),
            pattern,
            subscription,
            peek,
            metrics: Arc::new(Metrics::new()),
            seeks,
            seeks_done: Mutex::new(Some(seeks_done)),
            next_seek: AtomicU64::new(1),
        })
    }

    /// The brokers' high watermarks last reported for the assigned partitions.
    pub fn high_watermarks(&self) -> HashMap<(String, i32), i64> {
        self.consumer
            .context()
            .high_watermarks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A handle that renders the worker's metrics.
    pub fn metrics_source(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let consumer = self.consumer.clone();
        let metrics = self.metrics.clone();
        move || {
            let high = consumer
                .context()
                .high_watermarks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            metrics.prometheus(&high)
        }
    }

    /// Consumes until `stop` turns true, then commits what it holds (within `grace`).
    pub async fn run(self, mut stop: watch::Receiver<bool>, grace: Duration) -> Result<()> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<FlushDone>();
        let mut seeks_done = self
            .seeks_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::Internal {
                message: "kafka worker run twice".into(),
            })?;
        let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<Error>();
        let stall_watch = self.settings.stall_rejoin.map(|after| {
            tokio::spawn(
                StallWatch {
                    after,
                    consumer: self.consumer.clone(),
                    pattern: self.pattern.clone(),
                    subscription: self.subscription.clone(),
                    catalog: self.catalog.clone(),
                    metrics: self.metrics.clone(),
                    peek: self.peek.clone(),
                    since: HashMap::new(),
                }
                .run(fatal_tx),
            )
        });
        let mut topics: HashMap<String, TopicState> = HashMap::new();
        let mut all_paused = false;
        let mut last_report = Instant::now();
        let tick = Duration::from_millis(50).min(self.settings.flush_interval);
        tracing::info!(group = %self.settings.group, pattern = %self.settings.topic_pattern, "kafka worker started");
        loop {
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = stop.changed() => continue,
                Some(e) = fatal_rx.recv() => return Err(e),
                Some(seek) = seeks_done.recv() => {
                    if let Some(part) = topics
                        .get_mut(&seek.topic)
                        .and_then(|s| s.parts.get_mut(&seek.partition))
                        && part.seek == Seek::Pending(seek.id)
                    {
                        part.seek = if seek.ok { Seek::Done } else { Seek::No };
                    }
                }
                done = done_rx.recv() => {
                    if let Some(done) = done {
                        self.finished(&mut topics, done);
                    }
                }
                msg = tokio::time::timeout(tick, self.consumer.recv()) => {
                    match msg {
                        Err(_) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "kafka consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Ok(Ok(m)) => {
                            // A rebalance served while polling is applied before its records.
                            self.handle_notices(&mut topics);
                            let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                            let record = Record {
                                timestamp_ms: m.timestamp().to_millis(),
                                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                                value: m.payload().map(|v| v.to_vec()),
                            };
                            drop(m);
                            self.accept(&mut topics, &topic, partition, offset, record)
                                .await;
                        }
                    }
                }
            }
            self.handle_notices(&mut topics);
            // Flush what is due: its deadline passed, or it is full.
            let now = Instant::now();
            for (topic, state) in topics.iter_mut() {
                let Some(first_at) = state.buf.first_at else {
                    continue;
                };
                let due = now >= first_at + self.settings.flush_interval
                    || state.buf.records() >= self.settings.flush_max_rows
                    || state.buf.bytes >= self.settings.flush_max_bytes;
                if due
                    && state.flushing.is_none()
                    && let Some(tenant) = state.tenant.clone()
                {
                    let batch = std::mem::take(&mut state.buf);
                    state.flushing = Some(batch.bytes);
                    self.spawn_flush(tenant, topic.clone(), batch, done_tx.clone());
                }
            }
            // Backpressure: pause a topic whose next batch is full while one commits, and
            // everything past the in-flight budget.
            for (topic, state) in topics.iter_mut() {
                let full = state.flushing.is_some()
                    && (state.buf.bytes >= self.settings.flush_max_bytes
                        || state.buf.records() >= self.settings.flush_max_rows);
                let held = state.tenant.is_none() || state.hold_until.is_some_and(|t| now < t);
                let pause = full || held;
                if pause != state.paused && !all_paused {
                    self.set_paused(topic, pause);
                    state.paused = pause;
                }
            }
            // Buffered plus committing: what this worker holds of the records it read.
            let in_flight: usize = topics
                .values()
                .map(|s| s.buf.bytes + s.flushing.unwrap_or(0))
                .sum();
            let over = in_flight >= self.settings.max_in_flight_bytes;
            let under = in_flight < self.settings.max_in_flight_bytes / 2;
            if over && !all_paused {
                tracing::info!(
                    in_flight,
                    "in-flight budget reached; pausing all partitions"
                );
                self.pause_all(true);
                all_paused = true;
            } else if all_paused && under {
                self.pause_all(false);
                all_paused = false;
                for state in topics.values_mut() {
                    state.paused = false;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                let lag = self.metrics.lag(&self.high_watermarks());
                tracing::info!(
                    committed = self.metrics.records_committed.load(Ordering::Relaxed),
                    commits = self.metrics.commits.load(Ordering::Relaxed),
                    dlq = self.metrics.dead_letters.load(Ordering::Relaxed),
                    fenced = self.metrics.fenced.load(Ordering::Relaxed),
                    in_flight,
                    lag = ?lag,
                    "kafka worker"
                );
            }
        }
        // Shutting down: commit what is buffered, wait for the commits, leave the group.
        if let Some(w) = stall_watch {
            w.abort();
        }
        tracing::info!("kafka worker stopping; committing buffered records");
        let deadline = Instant::now() + grace;
        loop {
            for (topic, state) in topics.iter_mut() {
                if !state.buf.is_empty()
                    && state.flushing.is_none()
                    && let Some(tenant) = state.tenant.clone()
                {
                    let batch = std::mem::take(&mut state.buf);
                    state.flushing = Some(batch.bytes);
                    self.spawn_flush(tenant, topic.clone(), batch, done_tx.clone());
                }
            }
            if topics.values().all(|s| s.flushing.is_none()) {
                break;
            }
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => self.finished(&mut topics, done),
                _ => {
                    tracing::warn!(
                        "grace period over with commits in flight; they are re-read on restart"
                    );
                    break;
                }
            }
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// The state of `topic`, made on first use.
    fn topic_state<'a>(
        &self,
        topics: &'a mut HashMap<String, TopicState>,
        topic: &str,
    ) -> &'a mut TopicState {
        topics.entry(topic.to_string()).or_insert_with(|| {
            let tenant = self.tenant_of(topic);
            match &tenant {
                None => tracing::error!(
                    topic,
                    "topic name holds no valid tenant id; its partitions are paused"
                ),
                Some(t) => {
                    self.metrics
                        .tenants
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(topic.to_string(), t.to_string());
                }
            }
            TopicState {
                tenant,
                parts: HashMap::new(),
                positions: None,
                buf: Batch::default(),
                flushing: None,
                paused: false,
                hold_until: None,
            }
        })
    }

    fn tenant_of(&self, topic: &str) -> Option<TenantId> {
        tenant_of(&self.pattern, topic)
    }

    /// Takes one record into its topic's buffer (or skips it); returns the bytes added.
    async fn accept(
        &self,
        topics: &mut HashMap<String, TopicState>,
        topic: &str,
        partition: i32,
        offset: i64,
        record: Record,
    ) -> usize {
        let Record {
            timestamp_ms,
            key,
            value,
        } = record;
        let state = self.topic_state(topics, topic);
        let Some(tenant) = state.tenant.clone() else {
            return 0;
        };
        // A held topic (its tenant is missing, its table unreadable) drops what still arrives
        // before the pause takes effect: with no position known, the first record after the
        // hold makes the worker seek back to the table's position.
        if state.hold_until.is_some_and(|t| Instant::now() < t) {
            return 0;
        }
        if !state.parts.contains_key(&partition) {
            if state.positions.is_none() {
                match read_positions(&self.catalog, &self.settings.group, &tenant, topic).await {
                    Ok(p) => state.positions = Some(p),
                    Err(e) => {
                        let missing = e.kind() == ErrorKind::NotFound;
                        tracing::warn!(%tenant, topic, error = %e, "cannot read the table's positions; holding the topic");
                        state.hold_until = Some(
                            Instant::now()
                                + if missing {
                                    Duration::from_secs(30)
                                } else {
                                    Duration::from_secs(1)
                                },
                        );
                        return 0;
                    }
                }
            }
            let next = state
                .positions
                .as_ref()
                .and_then(|p| p.get(&partition).copied());
            if let Some(n) = next {
                self.metrics.note_position(topic, partition, n);
            }
            state.parts.insert(
                partition,
                Part {
                    next,
                    seek: Seek::No,
                },
            );
        }
        let Some(part) = state.parts.get_mut(&partition) else {
            return 0;
        };
        if matches!(part.seek, Seek::Pending(_)) {
            return 0;
        }
        match part.next {
            Some(n) if offset < n => return 0,
            Some(n) if offset > n => {
                if part.seek != Seek::Done {
                    tracing::debug!(
                        topic,
                        partition,
                        offset,
                        expected = n,
                        "seeking to the table's position"
                    );
                    part.seek = self.seek(topic, partition, Some(n));
                    return 0;
                }
                tracing::warn!(
                    topic,
                    partition,
                    from = n,
                    to = offset,
                    "offsets missing in the partition; going on past the gap"
                );
            }
            // The table holds nothing of this partition: start from its first record, wherever
            // Kafka's committed offset (advisory) would have started.
            None if part.seek != Seek::Done => {
                part.seek = self.seek(topic, partition, None);
                return 0;
            }
            _ => {}
        }
        part.seek = Seek::No;
        let expected = part.next;
        part.next = Some(offset + 1);
        let buf = &mut state.buf;
        buf.ranges
            .entry(partition)
            .or_insert(KafkaRange {
                expected,
                next: offset + 1,
            })
            .next = offset + 1;
        if buf.first_at.is_none() {
            buf.first_at = Some(Instant::now());
        }
        if let Some(ts) = timestamp_ms {
            buf.oldest_ms = Some(buf.oldest_ms.map_or(ts, |o| o.min(ts)));
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let dead = |reason: &str, detail: String, payload: String| DeadLetter {
            partition,
            offset,
            reason: reason.to_string(),
            detail,
            key: key.clone(),
            payload,
            at_us: now_us,
        };
        let added = match value {
            None => {
                let d = dead("empty", "record has no value".into(), String::new());
                buf.dead.push(d);
                64
            }
            Some(bytes) => match String::from_utf8(bytes) {
                Err(e) => {
                    let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    let size = text.len() + 64;
                    buf.dead
                        .push(dead("not_utf8", format!("record value: {e}"), text));
                    size
                }
                Ok(text) => {
                    match parse_event(0, &text, tenant.as_str(), now_us, self.settings.limits) {
                        Ok(event) => {
                            let size = event.size();
                            buf.events.push((partition, event));
                            size
                        }
                        Err(r) => {
                            let size = text.len() + 64;
                            buf.dead.push(dead(r.code, r.message, text));
                            size
                        }
                    }
                }
            },
        };
        buf.bytes += added;
        added
    }

    /// Seeks a partition to `offset` (`None`: its beginning) on a blocking thread, so that the
    /// loop goes on with other partitions; the outcome comes back through `seeks`. A failed seek
    /// (a partition no longer assigned) is logged; the next record of the partition retries.
    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Seek {
        let id = self.next_seek.fetch_add(1, Ordering::Relaxed);
        let consumer = self.consumer.clone();
        let done = self.seeks.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let to = offset.map_or(Offset::Beginning, Offset::Offset);
            let result = consumer.seek(&topic, partition, to, Duration::from_secs(10));
            if let Err(e) = &result {
                tracing::warn!(%topic, partition, error = %e, "seek failed");
            }
            let _ = done.send(SeekDone {
                topic,
                partition,
                id,
                ok: result.is_ok(),
            });
        });
        Seek::Pending(id)
    }

    fn set_paused(&self, topic: &str, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for e in assignment.elements_for_topic(topic) {
            tpl.add_partition(topic, e.partition());
        }
        if tpl.count() == 0 {
            return;
        }
        let r = if pause {
            self.metrics.paused.fetch_add(1, Ordering::Relaxed);
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::debug!(topic, pause, error = %e, "pause/resume failed");
        }
    }

    fn pause_all(&self, pause: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let r = if pause {
            self.metrics.paused.fetch_add(1, Ordering::Relaxed);
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = r {
            tracing::debug!(pause, error = %e, "pause/resume failed");
        }
    }

    fn handle_notices(&self, topics: &mut HashMap<String, TopicState>) {
        let notices = std::mem::take(
            &mut *self
                .consumer
                .context()
                .notices
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for n in notices {
            let (list, assigned): (Vec<_>, bool) = match n {
                Notice::Assigned(list) => (list, true),
                Notice::Revoked(list) => {
                    (list.into_iter().map(|(t, p)| (t, p, None)).collect(), false)
                }
            };
            tracing::info!(
                partitions = list.len(),
                "partitions {}",
                if assigned { "assigned" } else { "revoked" }
            );
            // Either way the partitions start over: a revoked one's records are the new
            // owner's; nothing buffered before an assignment may mix with what is read from
            // where it starts.
            let mut by_topic: HashMap<String, Vec<(i32, Start)>> = HashMap::new();
            for (topic, p, start) in list {
                by_topic.entry(topic).or_default().push((p, start));
            }
            for (topic, parts) in by_topic {
                if !assigned && !topics.contains_key(&topic) {
                    continue;
                }
                let state = self.topic_state(topics, &topic);
                state.positions = None;
                let ids: HashSet<i32> = parts.iter().map(|(p, _)| *p).collect();
                state.buf.drop_partitions(&ids);
                for (p, start) in parts {
                    state.parts.remove(&p);
                    // The assignment fetches from the table's position (or the beginning):
                    // like after a confirmed seek, the first record is where reading starts.
                    // Notices are handled before the next record is taken, so none read
                    // before the assignment can slip in.
                    if let Some(next) = start {
                        state.parts.insert(
                            p,
                            Part {
                                next,
                                seek: Seek::Done,
                            },
                        );
                        if let Some(n) = next {
                            self.metrics.note_position(&topic, p, n);
                        }
                    }
                }
                if assigned {
                    // An assignment starts unpaused.
                    state.paused = false;
                }
            }
        }
    }

    /// A flush ended: release its bytes, tell Kafka (advisory) or handle a fence.
    fn finished(&self, topics: &mut HashMap<String, TopicState>, done: FlushDone) {
        let Some(state) = topics.get_mut(&done.topic) else {
            return;
        };
        state.flushing = None;
        match done.outcome {
            Flushed::Done { records, dead } => {
                let ms = done.first_at.map_or(0, |t| t.elapsed().as_millis() as u64);
                let age = done
                    .oldest_ms
                    .map(|ts| chrono::Utc::now().timestamp_millis() - ts);
                if records + dead > 0 {
                    self.metrics.record_commit(records + dead, ms, age);
                }
                self.metrics
                    .dead_letters
                    .fetch_add(dead as u64, Ordering::Relaxed);
                let mut tpl = TopicPartitionList::new();
                {
                    let mut committed = self
                        .metrics
                        .committed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    for (p, r) in &done.ranges {
                        committed.insert((done.topic.clone(), *p), r.next);
                        // Only partitions still ours: committing others' offsets would
                        // move a new owner's (advisory) start.
                        if state.parts.contains_key(p) {
                            let _ =
                                tpl.add_partition_offset(&done.topic, *p, Offset::Offset(r.next));
                        }
                    }
                }
                if tpl.count() > 0
                    && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
                {
                    tracing::debug!(error = %e, "advisory offset commit failed");
                }
            }
            Flushed::Fenced { stored } => {
                self.metrics.fenced.fetch_add(1, Ordering::Relaxed);
                let parts: HashSet<i32> = done.ranges.keys().copied().collect();
                tracing::info!(topic = %done.topic, partitions = ?parts, "fenced: another worker moved the positions; re-reading from the table");
                state.buf.drop_partitions(&parts);
                state.positions = None;
                for p in parts {
                    // Partitions still ours restart from the table's position.
                    if let Some(part) = state.parts.get_mut(&p) {
                        let next = stored.get(&p).copied();
                        *part = Part {
                            next,
                            seek: self.seek(&done.topic, p, next),
                        };
                    }
                }
            }
            Flushed::TenantMissing => {
                // Nothing can be stored for a tenant that does not exist: read its records
                // again later (the tenant may be created), without holding up other topics.
                let parts: HashSet<i32> = done.ranges.keys().copied().collect();
                tracing::error!(topic = %done.topic, "tenant does not exist; its records wait in Kafka");
                state.buf.drop_partitions(&parts);
                state.positions = None;
                for p in parts {
                    state.parts.remove(&p);
                }
                state.hold_until = Some(Instant::now() + Duration::from_secs(30));
            }
        }
    }

    fn spawn_flush(
        &self,
        tenant: TenantId,
        topic: String,
        batch: Batch,
        done: mpsc::UnboundedSender<FlushDone>,
    ) {
        let catalog = self.catalog.clone();
        let group = self.settings.group.clone();
        let zstd = self.settings.zstd_level;
        tokio::spawn(async move {
            let ranges = batch.ranges.clone();
            let (first_at, oldest_ms) = (batch.first_at, batch.oldest_ms);
            let outcome = flush(&catalog, &tenant, &group, &topic, batch, zstd).await;
            let _ = done.send(FlushDone {
                topic,
                ranges,
                first_at,
                oldest_ms,
                outcome,
            });
        });
    }
}

/// Commits a batch: its dead letters, then its events with the positions. Retries failures
/// that a retry can get past, with backoff, until it has an answer.
async fn flush(
    catalog: &Catalog,
    tenant: &TenantId,
    group: &str,
    topic: &str,
    batch: Batch,
    zstd: i32,
) -> Flushed {
    let mut attempt = 0u32;
    let mut dead_done = batch.dead.is_empty();
    let mut files: Option<Vec<DataFile>> = None;
    loop {
        let result: Result<Flushed> = async {
            if !dead_done {
                commit_dead_letters(catalog, tenant, group, topic, &batch, zstd).await?;
                dead_done = true;
            }
            if files.is_none() {
                let table = catalog.load_table(tenant, EVENTS_TABLE).await?;
                let events: Vec<&StoredEvent> = batch.events.iter().map(|(_, e)| e).collect();
                files = Some(if events.is_empty() {
                    Vec::new()
                } else {
                    write_events(&table, tenant.as_str(), &events, zstd).await?
                });
            }
            let kafka = KafkaBatch {
                group: group.to_string(),
                topic: topic.to_string(),
                partitions: batch.ranges.clone(),
            };
            let written = files.clone().unwrap_or_default();
            let outcome = catalog
                .commit_append_kafka(tenant, EVENTS_TABLE, written, &kafka)
                .await?;
            Ok(match outcome {
                KafkaCommit::Committed { .. } => Flushed::Done {
                    records: batch.events.len(),
                    dead: batch.dead.len(),
                },
                KafkaCommit::AlreadyCommitted => {
                    tracing::info!(%tenant, topic, partitions = ?batch.ranges.keys().collect::<Vec<_>>(), "batch was already committed (by this worker before a crash, or by the partitions' new owner)");
                    delete_files(catalog, files.take().unwrap_or_default()).await;
                    Flushed::Done {
                        records: 0,
                        dead: 0,
                    }
                }
                KafkaCommit::Fenced { stored } => {
                    delete_files(catalog, files.take().unwrap_or_default()).await;
                    Flushed::Fenced { stored }
                }
            })
        }
        .await;
        match result {
            Ok(f) => return f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                delete_files(catalog, files.take().unwrap_or_default()).await;
                return Flushed::TenantMissing;
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(%tenant, topic, attempt, error = %e, source = ?std::error::Error::source(&e), "commit failed; retrying with backoff");
                }
                let base = 100u64 << attempt.min(6);
                let jitter = rand::random::<u64>() % base;
                tokio::time::sleep(Duration::from_millis((base + jitter).min(10_000))).await;
            }
        }
    }
}

async fn delete_files(catalog: &Catalog, files: Vec<DataFile>) {
    for f in files {
        if let Err(e) = catalog.file_io().delete(f.file_path()).await {
            tracing::debug!(file = f.file_path(), error = %e, "could not delete an unused file");
        }
    }
}

/// Appends the batch's dead letters to `events_dlq`, skipping those the table already holds
/// (its positions say how far it has them).
async fn commit_dead_letters(
    catalog: &Catalog,
    tenant: &TenantId,
    group: &str,
    topic: &str,
    batch: &Batch,
    zstd: i32,
) -> Result<()> {
    catalog.ensure_dlq_table(tenant).await?;
    for _ in 0..100 {
        let table = catalog.load_table(tenant, DLQ_TABLE).await?;
        let stored = kafka_positions(table.metadata(), group, topic)?;
        let rows: Vec<&DeadLetter> = batch
            .dead
            .iter()
            .filter(|d| stored.get(&d.partition).is_none_or(|s| d.offset >= *s))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let partitions = rows
            .iter()
            .filter_map(|d| {
                let next = batch.ranges.get(&d.partition)?.next;
                Some((
                    d.partition,
                    KafkaRange {
                        expected: stored.get(&d.partition).copied(),
                        next,
                    },
                ))
            })
            .collect();
        let files = write_dead_letters(&table, topic, &rows, zstd).await?;
        let kafka = KafkaBatch {
            group: group.to_string(),
            topic: topic.to_string(),
            partitions,
        };
        match catalog
            .commit_append_kafka(tenant, DLQ_TABLE, files.clone(), &kafka)
            .await?
        {
            KafkaCommit::Committed { .. } => return Ok(()),
            // Another worker stored some of them meanwhile: filter again.
            KafkaCommit::AlreadyCommitted | KafkaCommit::Fenced { .. } => {
                delete_files(catalog, files).await;
            }
        }
    }
    Err(Error::Internal {
        message: format!("{tenant}.{DLQ_TABLE}: positions kept moving"),
    })
}

async fn write_dead_letters(
    table: &iceberg::table::Table,
    topic: &str,
    rows: &[&DeadLetter],
    zstd: i32,
) -> Result<Vec<DataFile>> {
    let schema = arrow_schema_of(table)?;
    let mut by_day: BTreeMap<i32, Vec<&DeadLetter>> = BTreeMap::new();
    for d in rows {
        by_day.entry(day_of(d.at_us)).or_default().push(d);
    }
    let mut batches = Vec::new();
    for (day, rows) in by_day {
        let n = rows.len();
        let mut t = StringBuilder::with_capacity(n, n * topic.len());
        let mut p = Int32Builder::with_capacity(n);
        let mut o = Int64Builder::with_capacity(n);
        let mut reason = StringBuilder::new();
        let mut detail = StringBuilder::new();
        let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut key = StringBuilder::new();
        let mut payload = StringBuilder::new();
        for d in rows {
            t.append_value(topic);
            p.append_value(d.partition);
            o.append_value(d.offset);
            reason.append_value(&d.reason);
            detail.append_value(&d.detail);
            at.append_value(d.at_us);
            key.append_option(d.key.as_deref());
            payload.append_value(&d.payload);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(t.finish()),
            Arc::new(p.finish()),
            Arc::new(o.finish()),
            Arc::new(reason.finish()),
            Arc::new(detail.finish()),
            Arc::new(at.finish()),
            Arc::new(key.finish()),
            Arc::new(payload.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::Internal {
            message: format!("building a dead-letter batch: {e}"),
        })?;
        batches.push((day, batch));
    }
    write_days(table, batches, zstd).await
}

/// The positions of `group` in `topic` that the tenant's events table holds (its current
/// snapshot's summary): partition → next offset to read.
async fn read_positions(
    catalog: &Catalog,
    group: &str,
    tenant: &TenantId,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let table = catalog.load_table(tenant, EVENTS_TABLE).await?;
    Ok(kafka_positions(table.metadata(), group, topic)?)
}

/// The tenant a topic belongs to: the pattern's first capture group, when a valid tenant id.
fn tenant_of(pattern: &regex::Regex, topic: &str) -> Option<TenantId> {
    let caps = pattern.captures(topic)?;
    TenantId::parse(caps.get(1)?.as_str()).ok()
}

fn kafka_err(context: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
    move |e| Error::Invalid {
        message: format!("kafka: {context}: {e}"),
    }
}
