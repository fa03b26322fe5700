//! The stall watch: partitions that no member of the group reads.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, ErrorKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::kafka_err;
use super::metrics::Metrics;
use super::rebalance::Kafka;
use super::tenant_of;
use crate::{Error, Result};

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
pub(crate) struct StallWatch {
    pub(crate) after: Duration,
    pub(crate) consumer: Arc<Kafka>,
    pub(crate) pattern: regex::Regex,
    pub(crate) subscription: String,
    pub(crate) catalog: Catalog,
    pub(crate) metrics: Arc<Metrics>,
    /// Settings of the group-less consumer that peeks at a stalled partition.
    pub(crate) peek: ClientConfig,
    /// Partition → (the group's offset, first seen at that offset).
    pub(crate) since: HashMap<(String, i32), (i64, Instant)>,
}

impl StallWatch {
    /// Probes until the worker drops it; a failed rejoin is fatal to the worker.
    pub(crate) async fn run(mut self, fatal: mpsc::UnboundedSender<Error>) {
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
            super::metrics::count(
                &self.metrics.rejoins,
                floe_catalog::metrics::KAFKA_REJOINS,
                1,
            );
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
