//! Committing a topic's batch: its dead letters to `events_dlq`, then its events with the
//! partitions' positions, in one compare-and-swap each.

use std::collections::BTreeMap;

use floe_catalog::table::{
    DLQ_TABLE, EVENTS_TABLE, KafkaBatch, KafkaCommit, KafkaRange, kafka_positions,
};
use floe_catalog::{Catalog, ErrorKind, TenantId};
use iceberg::spec::DataFile;
use parquet::basic::Compression;
use tokio::time::Instant;

use super::buffer::{Batch, DeadLetter};
use crate::event::StoredEvent;
use crate::writer::{write_dead_letters, write_events};
use crate::{Error, Result};

/// What one flush ended with.
pub(crate) enum Flushed {
    Done { records: usize, dead: usize },
    Fenced { stored: BTreeMap<i32, i64> },
    TenantMissing,
}

pub(crate) struct FlushDone {
    pub(crate) topic: String,
    pub(crate) ranges: BTreeMap<i32, KafkaRange>,
    pub(crate) first_at: Option<Instant>,
    pub(crate) oldest_ms: Option<i64>,
    pub(crate) outcome: Flushed,
}

/// Commits a batch: its dead letters, then its events with the positions. Retries failures
/// that a retry can get past, with backoff, until it has an answer.
pub(crate) async fn flush(
    catalog: &Catalog,
    tenant: &TenantId,
    group: &str,
    topic: &str,
    batch: Batch,
    compression: Compression,
) -> Flushed {
    let mut backoff = floe_catalog::retry::Backoff::for_failures();
    let mut dead_done = batch.dead.is_empty();
    let mut files: Option<Vec<DataFile>> = None;
    loop {
        let result: Result<Flushed> = async {
            if !dead_done {
                commit_dead_letters(catalog, tenant, group, topic, &batch, compression).await?;
                dead_done = true;
            }
            if files.is_none() {
                let table = catalog.load_table(tenant, EVENTS_TABLE).await?;
                let events: Vec<&StoredEvent> = batch.events.iter().map(|(_, e)| e).collect();
                files = Some(if events.is_empty() {
                    Vec::new()
                } else {
                    write_events(
                        &table,
                        tenant.as_str(),
                        &events,
                        compression,
                        catalog.written(),
                    )
                    .await?
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
                KafkaCommit::Committed { .. } => {
                    let label = floe_catalog::metrics::tenant(tenant.as_str());
                    metrics::counter!(
                        floe_catalog::metrics::INGEST_COMMITTED_EVENTS,
                        "tenant" => label.clone()
                    )
                    .increment(batch.events.len() as u64);
                    metrics::counter!(
                        floe_catalog::metrics::INGEST_EVENTS,
                        "tenant" => label,
                        "outcome" => "dead_lettered"
                    )
                    .increment(batch.dead.len() as u64);
                    Flushed::Done {
                        records: batch.events.len(),
                        dead: batch.dead.len(),
                    }
                }
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
                let attempt = backoff.attempts() + 1;
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(%tenant, topic, attempt, error = %e, source = ?std::error::Error::source(&e), "commit failed; retrying with backoff");
                }
                backoff.wait().await;
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
    compression: Compression,
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
        let files = write_dead_letters(&table, topic, &rows, compression).await?;
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
