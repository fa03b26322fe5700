//! Producing events to tenant topics: `POST /v1/events` when `kafka.brokers` is set, topic
//! creation for new tenants, and `floe dlq replay`.
//!
//! The producer is idempotent with `acks=all`: a record the broker acknowledged is in every
//! in-sync replica, and the client's own retries do not write it twice. Records are keyed by
//! `user_id` (else `event_id`), so one user's events stay in order within a partition. Client
//! retries of an event with the same `event_id` are recognised within the de-duplication window
//! of this process, as on the write-ahead-log path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_catalog::table::{EVENTS_TABLE, kafka_positions};
use floe_catalog::{Catalog, Config, TenantId, TenantKey};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::dedup::{self, Dedup};
use crate::event::{Limits, StoredEvent, parse_event};
use crate::kafka::client::{client_config, kafka_err};
use crate::{Error, Result};

/// Sends events to `kafka.topic_template` topics.
pub struct Producer {
    inner: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    template: String,
    timeout: Duration,
    partitions: i32,
    replication: i32,
    dedup: Arc<Dedup>,
    visibility: Visibility,
}

/// What a produce did: per partition, the highest offset written.
#[derive(Debug, Default)]
pub struct Produced {
    pub stored: usize,
    pub duplicates: usize,
    pub last_offsets: BTreeMap<i32, i64>,
}

impl Producer {
    pub fn new(config: &Config) -> Result<Producer> {
        if config.kafka.brokers.is_empty() {
            return Err(Error::Invalid {
                message: "no Kafka brokers: set kafka.brokers (FLOE_KAFKA_BROKERS)".into(),
            });
        }
        let timeout = config.kafka.produce_timeout_ms.to_string();
        let client = client_config(
            config,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("message.timeout.ms", &timeout),
                ("compression.type", "lz4"),
            ],
        );
        let inner: FutureProducer = client.create().map_err(kafka_err("creating a producer"))?;
        let admin: AdminClient<DefaultClientContext> = client_config(config, &[])
            .create()
            .map_err(kafka_err("creating an admin client"))?;
        Ok(Producer {
            inner,
            admin,
            template: config.kafka.topic_template.clone(),
            timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            partitions: config.kafka.topic_partitions,
            replication: config.kafka.replication_factor,
            dedup: Arc::new(Dedup::new(
                config.ingest.dedup_window_secs,
                config.ingest.dedup_max_ids,
            )),
            visibility: Visibility::new(
                &config.kafka.group,
                Duration::from_millis(config.kafka.visible_poll_ms),
            ),
        })
    }

    /// The topic of a tenant's events.
    pub fn topic(&self, tenant: &TenantId) -> String {
        self.template.replace("{tenant}", tenant.as_str())
    }

    /// Creates the tenant's topic (`kafka.topic_partitions`; 0 turns this off). A topic that
    /// exists already is fine; a broker that refuses (no rights, auto-creation only) is logged.
    pub async fn create_topic(&self, tenant: &TenantId) -> Result<()> {
        if self.partitions <= 0 {
            return Ok(());
        }
        let topic = self.topic(tenant);
        let new = NewTopic::new(
            &topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        let results = self
            .admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(self.timeout)),
            )
            .await
            .map_err(kafka_err("creating a topic"))?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(%topic, partitions = self.partitions, "topic created"),
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    tracing::warn!(topic = %t, error = %code, "could not create the topic; the broker may create it on first use");
                }
            }
        }
        Ok(())
    }

    /// Where the tenant's topic ends now, per partition: a new tenant's table starts reading
    /// there ([`floe_catalog::table::KAFKA_START_PREFIX`]), so that records an earlier tenant
    /// with the same id left in the topic never reach it. Empty when the topic does not exist.
    pub async fn end_offsets(&self, tenant: &TenantId) -> Result<BTreeMap<i32, i64>> {
        let topic = self.topic(tenant);
        let client = self.inner.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let client = client.client();
            let metadata = client
                .fetch_metadata(Some(&topic), timeout)
                .map_err(kafka_err("reading topic metadata"))?;
            let mut out = BTreeMap::new();
            for t in metadata.topics() {
                if t.error().is_some() {
                    continue;
                }
                for p in t.partitions() {
                    let (_, high) = client
                        .fetch_watermarks(&topic, p.id(), timeout)
                        .map_err(kafka_err("reading where a partition ends"))?;
                    out.insert(p.id(), high);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Internal {
            message: format!("reading topic ends: {e}"),
        })?
    }

    /// Events in the tenant's topic that its table has not taken in yet: the topic's end
    /// against the consumer group's positions recorded in the table (where the table's
    /// consumption begins, for partitions it has none of yet).
    pub async fn lag(&self, catalog: &Catalog, tenant: &TenantId) -> Result<u64> {
        let end = self.end_offsets(tenant).await?;
        let table = catalog.load_table(tenant, EVENTS_TABLE).await?;
        let positions = kafka_positions(
            table.metadata(),
            &self.visibility.group,
            &self.topic(tenant),
        )?;
        Ok(end
            .iter()
            .map(|(p, high)| (high - positions.get(p).copied().unwrap_or(0)).max(0) as u64)
            .sum())
    }

    /// Sends events and waits for the broker's acknowledgement of every one. Retries of
    /// already-sent `event_id`s (within the de-duplication window) are not sent again.
    pub async fn send(&self, tenant: &TenantKey, events: Vec<StoredEvent>) -> Result<Produced> {
        let now = chrono::Utc::now().timestamp_micros();
        let dedup::Admission {
            fresh,
            admitted,
            duplicates,
        } = self.dedup.admit_events(tenant, events, now);
        match self.send_all(tenant.id(), &fresh).await {
            Ok(last_offsets) => Ok(Produced {
                stored: fresh.len(),
                duplicates,
                last_offsets,
            }),
            Err(e) => {
                self.dedup.forget(&admitted);
                Err(e)
            }
        }
    }

    async fn send_all(
        &self,
        tenant: &TenantId,
        events: &[StoredEvent],
    ) -> Result<BTreeMap<i32, i64>> {
        let topic = self.topic(tenant);
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let value = to_wire(tenant, e)?;
            let key = e.user_id.clone().unwrap_or_else(|| e.event_id.clone());
            let inner = &self.inner;
            let topic = &topic;
            pending.push(async move {
                let record = FutureRecord::to(topic).key(&key).payload(&value);
                inner
                    .send(record, self.timeout)
                    .await
                    .map_err(|(e, _)| Error::Timeout {
                        message: format!("kafka: producing to {topic}: {e}"),
                    })
            });
        }
        let mut last = BTreeMap::new();
        for r in futures::future::join_all(pending).await {
            let delivery = r?;
            let (p, o) = (delivery.partition, delivery.offset);
            let e = last.entry(p).or_insert(o);
            *e = (*e).max(o);
        }
        Ok(last)
    }

    /// Waits until the tenant's table holds every record up to `last_offsets` (committed by
    /// `floe ingest kafka` of group `kafka.group`); returns the snapshot.
    pub async fn wait_visible(
        &self,
        catalog: &Catalog,
        tenant: &TenantId,
        last_offsets: &BTreeMap<i32, i64>,
        timeout: Duration,
    ) -> Result<Option<i64>> {
        self.visibility
            .wait(catalog, tenant, &self.topic(tenant), last_offsets, timeout)
            .await
    }
}

/// What a table poll saw of a topic: the group's positions and the snapshot holding them, or
/// why the table could not be read.
#[derive(Debug)]
enum Seen {
    Nothing,
    Read {
        positions: BTreeMap<i32, i64>,
        snapshot_id: Option<i64>,
    },
    Failed(String),
}

type Polls = HashMap<(TenantId, String), Arc<watch::Sender<Seen>>>;

/// Waits of `?wait=visible` in Kafka mode. However many requests wait on a tenant, one task
/// polls its table (every `kafka.visible_poll_ms`) and hands each read to all of them; the task
/// ends when the last waiter is gone. A poll that fails does not fail the waiters (their events
/// are in Kafka already): they keep waiting, and a timeout reports the last failure.
pub struct Visibility {
    group: String,
    every: Duration,
    /// (tenant, topic) → the poll in progress. A poll removes itself, under this lock, when it
    /// finds no receiver left, so a waiter either joins a running poll or starts a new one.
    polls: Arc<Mutex<Polls>>,
}

impl Visibility {
    pub fn new(group: &str, every: Duration) -> Visibility {
        Visibility {
            group: group.to_string(),
            every,
            polls: Arc::default(),
        }
    }

    /// Tables being polled now.
    pub fn polls(&self) -> usize {
        self.polls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits until the table of `tenant` holds every record of `topic` up to `last_offsets`;
    /// returns the snapshot that holds them.
    pub async fn wait(
        &self,
        catalog: &Catalog,
        tenant: &TenantId,
        topic: &str,
        last_offsets: &BTreeMap<i32, i64>,
        timeout: Duration,
    ) -> Result<Option<i64>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = self.subscribe(catalog, tenant, topic);
        let mut failure = None;
        loop {
            match &*seen.borrow_and_update() {
                Seen::Read {
                    positions,
                    snapshot_id,
                } if last_offsets
                    .iter()
                    .all(|(p, o)| positions.get(p).is_some_and(|next| next > o)) =>
                {
                    return Ok(*snapshot_id);
                }
                Seen::Failed(why) => failure = Some(why.clone()),
                Seen::Read { .. } => failure = None,
                Seen::Nothing => {}
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => {}
                // The poll ended under a waiter: it cannot, as the waiter holds a receiver.
                Ok(Err(_)) => {
                    return Err(Error::Internal {
                        message: format!("the visibility poll of {topic} ended"),
                    });
                }
                Err(_) => {
                    let last = failure
                        .map(|why| format!(" (the last read of the table failed: {why})"))
                        .unwrap_or_default();
                    return Err(Error::Timeout {
                        message: format!(
                            "events are in Kafka ({topic}) but not yet committed by the \
                             consumer group {:?}: is `floe ingest kafka` running?{last}",
                            self.group
                        ),
                    });
                }
            }
        }
    }

    /// A receiver of the topic's poll, started if none runs.
    fn subscribe(
        &self,
        catalog: &Catalog,
        tenant: &TenantId,
        topic: &str,
    ) -> watch::Receiver<Seen> {
        let key = (tenant.clone(), topic.to_string());
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = polls.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Seen::Nothing);
        let tx = Arc::new(tx);
        polls.insert(key.clone(), tx.clone());
        let catalog = catalog.clone();
        let (group, every, registry) = (self.group.clone(), self.every, self.polls.clone());
        tokio::spawn(async move {
            loop {
                let (tenant, topic) = &key;
                let read = async {
                    let table = catalog.load_table(tenant, EVENTS_TABLE).await?;
                    Ok::<_, Error>(Seen::Read {
                        positions: kafka_positions(table.metadata(), &group, topic)?,
                        snapshot_id: table.metadata().current_snapshot_id(),
                    })
                };
                let seen = read.await.unwrap_or_else(|e| Seen::Failed(e.to_string()));
                tx.send_replace(seen);
                tokio::time::sleep(every).await;
                let mut polls = registry.lock().unwrap_or_else(|p| p.into_inner());
                if tx.receiver_count() == 0 {
                    polls.remove(&key);
                    return;
                }
            }
        });
        rx
    }
}

/// An event as Floe writes it to Kafka: the validated, normalised form (an `event_id` always
/// present, the timestamp in RFC 3339 with microseconds), which validates again unchanged.
pub fn to_wire(tenant: &TenantId, e: &StoredEvent) -> Result<String> {
    let ts = chrono::DateTime::from_timestamp_micros(e.ts)
        .ok_or_else(|| Error::Internal {
            message: format!("timestamp {} out of range", e.ts),
        })?
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let payload = RawValue::from_string(e.payload.clone()).map_err(|err| Error::Internal {
        message: format!("stored payload is not JSON: {err}"),
    })?;
    serde_json::to_string(&serde_json::json!({
        "event_id": e.event_id,
        "tenant_id": tenant.as_str(),
        "type": e.kind,
        "version": e.version,
        "timestamp": ts,
        "user_id": e.user_id,
        "payload": payload,
    }))
    .map_err(|err| Error::Internal {
        message: format!("serialising an event: {err}"),
    })
}

/// What `floe dlq replay` did.
#[derive(Debug, Default)]
pub struct Replayed {
    pub topic: String,
    pub sent: usize,
    /// (line number, why) of lines that still fail validation: not sent.
    pub invalid: Vec<(usize, String)>,
}

/// Validates fixed events and sends the valid ones to the tenant's topic. A line is either a
/// dead letter as `floe sql … 'SELECT * FROM events_dlq'` prints it (its `payload` text is the
/// event) or an event object.
pub async fn replay(producer: &Producer, tenant: &TenantKey, text: &str) -> Result<Replayed> {
    let mut done = Replayed {
        topic: producer.topic(tenant.id()),
        ..Replayed::default()
    };
    let limits = Limits {
        max_event_bytes: usize::MAX,
        max_events: 1,
    };
    let now = chrono::Utc::now().timestamp_micros();
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let event_text = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(m)) if m.contains_key("reason") => {
                match m.get("payload") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    _ => {
                        done.invalid
                            .push((i + 1, "a dead letter without a payload text".into()));
                        continue;
                    }
                }
            }
            _ => line.to_string(),
        };
        // Payloads are checked against their schemas by the worker that reads them back.
        let unchecked = crate::schema::TenantSchemas::none();
        match parse_event(
            i,
            &event_text,
            tenant.id().as_str(),
            now,
            limits,
            &unchecked,
        ) {
            Ok(e) => events.push(e),
            Err(r) => done
                .invalid
                .push((i + 1, format!("{}: {}", r.code, r.message))),
        }
    }
    if done.invalid.is_empty() {
        done.sent = producer.send(tenant, events).await?.stored;
    }
    Ok(done)
}
