//! The worker loop: records in, batches out, rebalances, backpressure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_catalog::quota::QuotaBook;
use floe_catalog::{Catalog, Config, ErrorKind, TenantId};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::buffer::{Batch, Record, Rules};
use super::client::{client_config, kafka_err};
use super::flush::{FlushDone, Flushed, flush};
use super::metrics::Metrics;
use super::position::{Part, Verdict};
use super::rebalance::{Kafka, Notice, Start, WorkerContext};
use super::stall::StallWatch;
use super::{read_positions, tenant_of};
use crate::event::Limits;
use crate::{Error, Result};

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
    /// The tenant went over an ingest quota: the topic pauses until its bucket is paid back.
    quota_until: Option<Instant>,
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
    pub compression: parquet::basic::Compression,
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
            compression: config.ingest.parquet_compression(),
            limits: Limits {
                max_event_bytes: config.ingest.max_event_bytes,
                max_events: 1,
            },
            stall_rejoin: (config.kafka.stall_rejoin_ms > 0)
                .then(|| Duration::from_millis(config.kafka.stall_rejoin_ms)),
        }
    }
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
    /// Tenants' ingest quotas: a tenant over one has its topic paused (lag grows, nothing
    /// already read is dropped).
    quotas: QuotaBook,
    /// Tenants' event type schemas: a record whose payload fails is dead-lettered.
    schemas: crate::schema::Schemas,
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
            quotas: QuotaBook::new(catalog.clone(), config.quota.clone()),
            schemas: crate::schema::Schemas::new(
                catalog.clone(),
                Duration::from_millis(config.ingest.schema_refresh_ms),
            ),
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

    /// A handle that sets the worker's lag gauges from the brokers' latest high watermarks
    /// (run before each scrape).
    pub fn lag_gauges(&self) -> impl Fn() + Send + Sync + 'static {
        let consumer = self.consumer.clone();
        let metrics = self.metrics.clone();
        move || {
            let high = consumer
                .context()
                .high_watermarks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            metrics.set_lag_gauges(&high)
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
                    {
                        part.seek_ended(seek.id, seek.ok);
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
                let held = state.tenant.is_none()
                    || state.hold_until.is_some_and(|t| now < t)
                    || state.quota_until.is_some_and(|t| now < t);
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
                quota_until: None,
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
                        let wait = if missing { 30 } else { 1 };
                        state.hold_until = Some(Instant::now() + Duration::from_secs(wait));
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
            state.parts.insert(partition, Part::at(next));
        }
        let Some(part) = state.parts.get_mut(&partition) else {
            return 0;
        };
        let expected = match part.verdict(offset) {
            Verdict::Skip => return 0,
            Verdict::SeekTo(to) => {
                tracing::debug!(
                    topic,
                    partition,
                    offset,
                    to,
                    "seeking to the table's position"
                );
                let id = self.seek(topic, partition, to);
                part.seeking(id);
                return 0;
            }
            Verdict::TakeAfterGap { expected } => {
                tracing::warn!(
                    topic,
                    partition,
                    from = expected,
                    to = offset,
                    "offsets missing in the partition; going on past the gap"
                );
                Some(expected)
            }
            Verdict::Take { expected } => expected,
        };
        part.took(offset);
        let schemas = self.schemas.of_or_refuse(&tenant).await;
        let rules = Rules {
            tenant: &tenant,
            limits: self.settings.limits,
            schemas: &schemas,
        };
        let bytes = state.buf.take(partition, offset, expected, record, &rules);
        if let Some(wait) = self.quotas.charge_ingest(&tenant, 1, bytes as u64).await {
            let until = Instant::now() + wait;
            if state.quota_until.is_none_or(|t| t < until) {
                if state.quota_until.is_none_or(|t| t <= Instant::now()) {
                    tracing::info!(%tenant, topic, pause_ms = wait.as_millis() as u64, "tenant over its ingest quota; pausing its topic");
                }
                state.quota_until = Some(until);
            }
        }
        bytes
    }

    /// Seeks a partition to `offset` (`None`: its beginning) on a blocking thread, so that the
    /// loop goes on with other partitions; the outcome comes back through `seeks`. A failed seek
    /// (a partition no longer assigned) is logged; the next record of the partition retries.
    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> u64 {
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
        id
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
            super::metrics::count(&self.metrics.paused, floe_catalog::metrics::KAFKA_PAUSES, 1);
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
            super::metrics::count(&self.metrics.paused, floe_catalog::metrics::KAFKA_PAUSES, 1);
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
                        state.parts.insert(p, Part::assigned(next));
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
                if let Some(tenant) = &state.tenant {
                    self.quotas.tally(tenant, records as u64, dead as u64);
                }
                super::metrics::count(
                    &self.metrics.dead_letters,
                    floe_catalog::metrics::KAFKA_DLQ_RECORDS,
                    dead as u64,
                );
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
                super::metrics::count(&self.metrics.fenced, floe_catalog::metrics::KAFKA_FENCED, 1);
                let parts: HashSet<i32> = done.ranges.keys().copied().collect();
                tracing::info!(topic = %done.topic, partitions = ?parts, "fenced: another worker moved the positions; re-reading from the table");
                state.buf.drop_partitions(&parts);
                state.positions = None;
                for p in parts {
                    // Partitions still ours restart from the table's position.
                    if let Some(part) = state.parts.get_mut(&p) {
                        let next = stored.get(&p).copied();
                        *part = Part::fenced(next, self.seek(&done.topic, p, next));
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
        let compression = self.settings.compression;
        tokio::spawn(async move {
            let ranges = batch.ranges.clone();
            let (first_at, oldest_ms) = (batch.first_at, batch.oldest_ms);
            let outcome = flush(&catalog, &tenant, &group, &topic, batch, compression).await;
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
