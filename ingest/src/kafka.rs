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
//!
//! The module's parts: [`position`] decides, per partition, what to do with each record (a
//! pure state machine); [`buffer`] holds a topic's records until they are committed;
//! [`rebalance`] starts assigned partitions at the tables' positions; [`stall`] notices
//! partitions nobody reads; [`flush`] commits a batch; [`metrics`] counts; [`worker`] runs the
//! loop that ties them together. [`client`] holds the librdkafka settings the producer
//! (`crate::produce`) shares.

use std::collections::BTreeMap;

use floe_catalog::table::{EVENTS_TABLE, kafka_positions};
use floe_catalog::{Catalog, TenantId};

use crate::Result;

mod buffer;
pub mod client;
mod flush;
pub mod metrics;
pub mod position;
mod rebalance;
mod stall;
mod worker;

pub use client::client_config;
pub use metrics::Metrics;
pub use rebalance::WorkerContext;
pub use worker::{Worker, WorkerSettings};

/// The positions of `group` in `topic` that the tenant's events table holds (its current
/// snapshot's summary, or where its reading of the topic begins): partition → next offset.
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
