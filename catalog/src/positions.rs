//! Source positions in snapshot summaries: how far a table holds each source that writes to
//! it (a write-ahead log by sequence number, a Kafka consumer group by offsets per partition),
//! carried from snapshot to snapshot and checked inside every append's compare-and-swap.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{Snapshot, TableMetadata};

use crate::{Error, Result};

/// Snapshot-summary keys holding source positions start with this.
pub const POSITION_PREFIX: &str = "floe.position.";

/// Snapshot-summary keys holding Kafka positions start with this: `floe.kafka.<group>.<topic>`
/// = `{"<partition>": <next offset>, …}` (JSON).
pub const KAFKA_PREFIX: &str = "floe.kafka.";

/// Snapshot-summary keys of a derived table (a projection) naming the source snapshot it
/// reflects start with this (`projection.rs`).
pub const PROJECTION_PREFIX: &str = "floe.projection.";

/// The summary properties every new snapshot carries over from its parent: source positions,
/// and the source snapshot a projection reflects (a compaction of it changes no row).
pub(crate) fn carried_properties(parent: &Snapshot) -> HashMap<String, String> {
    parent
        .summary()
        .additional_properties
        .iter()
        .filter(|(k, _)| {
            k.starts_with(POSITION_PREFIX)
                || k.starts_with(KAFKA_PREFIX)
                || k.starts_with(PROJECTION_PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The summary key of a consumer group's positions in a topic.
pub fn kafka_key(group: &str, topic: &str) -> String {
    format!("{KAFKA_PREFIX}{group}.{topic}")
}

/// The table property holding where the table's Kafka consumption of a topic begins:
/// `floe.kafka.start.<topic>` = `{"<partition>": <offset>, …}` (JSON). Set when a tenant is
/// created in Kafka mode (the topic's end at that moment), so that records left in a topic by
/// an earlier tenant with the same id never reach the new tenant's table.
pub const KAFKA_START_PREFIX: &str = "floe.kafka.start.";

/// The Kafka positions (partition → next offset to read) of `group` in `topic`: those recorded
/// in the table's current snapshot, and for partitions without one, where the table's
/// consumption of the topic begins ([`KAFKA_START_PREFIX`]); empty when there are none.
pub fn kafka_positions(
    metadata: &TableMetadata,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let mut positions = match metadata.current_snapshot().and_then(|s| {
        s.summary()
            .additional_properties
            .get(&kafka_key(group, topic))
    }) {
        Some(raw) => parse_offsets(raw, &kafka_key(group, topic))?,
        None => BTreeMap::new(),
    };
    let start_key = format!("{KAFKA_START_PREFIX}{topic}");
    if let Some(raw) = metadata.properties().get(&start_key) {
        for (p, o) in parse_offsets(raw, &start_key)? {
            positions.entry(p).or_insert(o);
        }
    }
    Ok(positions)
}

/// Parses `{"<partition>": <offset>, …}`.
fn parse_offsets(raw: &str, what: &str) -> Result<BTreeMap<i32, i64>> {
    let parsed: BTreeMap<String, i64> = serde_json::from_str(raw)
        .map_err(|e| Error::internal(format!("{what}: not a map of partition to offset: {e}")))?;
    parsed
        .into_iter()
        .map(|(p, o)| {
            p.parse::<i32>()
                .map(|p| (p, o))
                .map_err(|_| Error::internal(format!("{what}: bad partition {p:?}")))
        })
        .collect()
}

/// The property value of [`KAFKA_START_PREFIX`] for `offsets`.
pub fn kafka_start_property(topic: &str, offsets: &BTreeMap<i32, i64>) -> (String, String) {
    let json: BTreeMap<String, i64> = offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    (
        format!("{KAFKA_START_PREFIX}{topic}"),
        serde_json::to_string(&json).unwrap_or_else(|_| "{}".into()),
    )
}

/// Records of one topic in one commit: per partition, the position the writer believes the
/// table holds (`expected`, `None` when it holds none) and the position after this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBatch {
    pub group: String,
    pub topic: String,
    pub partitions: BTreeMap<i32, KafkaRange>,
}

/// See [`KafkaBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaRange {
    pub expected: Option<i64>,
    pub next: i64,
}

/// A batch's position in its source, checked and recorded by [`Catalog::commit_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// Names the source, e.g. `wal-<uuid>`; the summary key is `floe.position.<source>`.
    pub source: String,
    /// First position in this batch (inclusive).
    pub first: u64,
    /// Last position in this batch (inclusive); recorded in the snapshot summary.
    pub last: u64,
}

/// The position of `source` recorded in the table's current snapshot.
pub fn position_in(metadata: &TableMetadata, source: &str) -> Option<u64> {
    metadata
        .current_snapshot()?
        .summary()
        .additional_properties
        .get(&format!("{POSITION_PREFIX}{source}"))?
        .parse()
        .ok()
}
