//! Rebalances: librdkafka's callback starts assigned partitions at the tables' positions
//! (never at Kafka's committed offsets, which are advisory) and hands the worker loop a
//! notice of what changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use floe_catalog::Catalog;
use futures::StreamExt;
use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{read_positions, tenant_of};

/// Where an assignment started a partition: `Some(Some(next))` at the table's position,
/// `Some(None)` at the partition's beginning (the table holds none), `None` not positioned
/// (the table could not be read; the first record loads it).
pub(crate) type Start = Option<Option<i64>>;

/// Rebalance notices, handed from librdkafka's callback to the worker loop.
pub(crate) enum Notice {
    /// Partitions with where the assignment started them.
    Assigned(Vec<(String, i32, Start)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: positions assigned partitions at the table's positions, collects
/// rebalances and the brokers' high watermarks.
pub struct WorkerContext {
    /// For reading the tables' positions when partitions are assigned.
    pub(crate) catalog: Catalog,
    pub(crate) group: String,
    pub(crate) pattern: regex::Regex,
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    pub(crate) notices: Mutex<Vec<Notice>>,
    /// Rebalances seen (assignments and revocations).
    pub(crate) rebalances: AtomicU64,
    pub(crate) high_watermarks: Mutex<HashMap<(String, i32), i64>>,
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

pub(crate) type Kafka = StreamConsumer<WorkerContext>;
