//! The micro-batcher of one tenant: buffers durable records and commits them as one Iceberg
//! append when the oldest has waited `flush_interval_ms`, or the buffer reaches
//! `flush_max_rows` or `flush_max_bytes`, whichever comes first.

use std::sync::Arc;
use std::time::Duration;

use floe_catalog::metrics as m;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{ErrorKind, SourcePosition, TenantKey};
use futures::FutureExt;
use iceberg::spec::DataFile;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::StoredEvent;
use crate::service::{Shared, Visible};
use crate::wal::Record;
use crate::writer::write_events;
use crate::{Error, Result};

pub(crate) async fn run(
    shared: Arc<Shared>,
    tenant: TenantKey,
    mut rx: mpsc::UnboundedReceiver<Record>,
) {
    let cfg = shared.config.clone();
    let interval = Duration::from_millis(cfg.flush_interval_ms);
    let mut buf: Vec<Record> = Vec::new();
    let mut rows = 0usize;
    let mut bytes = 0usize;
    let mut deadline = Instant::now();
    loop {
        let next = if buf.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                r = rx.recv() => r,
                _ = tokio::time::sleep_until(deadline) => {
                    flush(&shared, &tenant, std::mem::take(&mut buf)).await;
                    rows = 0;
                    bytes = 0;
                    continue;
                }
            }
        };
        let Some(record) = next else {
            if !buf.is_empty() {
                flush(&shared, &tenant, std::mem::take(&mut buf)).await;
            }
            return;
        };
        if buf.is_empty() {
            deadline = Instant::now() + interval;
        }
        rows += record.events.len();
        bytes += record.events.iter().map(|e| e.size()).sum::<usize>();
        buf.push(record);
        if rows >= cfg.flush_max_rows || bytes >= cfg.flush_max_bytes {
            flush(&shared, &tenant, std::mem::take(&mut buf)).await;
            rows = 0;
            bytes = 0;
        }
    }
}

/// Commits `records` exactly once, retrying with backoff until it succeeds. The records stay
/// in the write-ahead log until then, and their buffer permits stay held (backpressure).
async fn flush(shared: &Shared, tenant: &TenantKey, records: Vec<Record>) {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return;
    };
    let position = SourcePosition {
        source: shared.wal_source.clone(),
        first: first.lsn,
        last: last.lsn,
    };
    let lsns: Vec<u64> = records.iter().map(|r| r.lsn).collect();
    let events: Vec<&StoredEvent> = records.iter().flat_map(|r| r.events.iter()).collect();
    if events.is_empty() {
        // Records whose events were all retries of stored ones (left out after a restart):
        // nothing to write, and their positions are passed in log order all the same.
        let visible = Visible {
            lsn: position.last,
            snapshot_id: None,
        };
        shared.committed(tenant, &lsns, visible);
        return;
    }
    // One span for the commit, linked to the appends whose events it makes visible.
    let span = tracing::info_span!(
        "commit",
        tenant = %tenant.id(),
        events = events.len(),
        first_lsn = position.first,
        last_lsn = position.last
    );
    for origin in records.iter().filter_map(|r| r.origin.clone()) {
        span.add_link(origin);
    }
    flush_records(shared, tenant, &events, &position, &lsns)
        .instrument(span)
        .await
}

/// [`flush`] of `records`, within its span.
async fn flush_records(
    shared: &Shared,
    tenant: &TenantKey,
    events: &[&StoredEvent],
    position: &SourcePosition,
    lsns: &[u64],
) {
    let mut files: Option<Vec<DataFile>> = None;
    let mut backoff = floe_catalog::retry::Backoff::for_failures();
    let mut failing = false;
    loop {
        let started = Instant::now();
        // A panic in a writer (a bug, or a library's) must not kill the batcher: the batch
        // would wait in the log until a restart. It is retried like any other failure.
        let attempted =
            std::panic::AssertUnwindSafe(try_flush(shared, tenant, events, position, &mut files))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(Error::Internal {
                        message: format!("commit attempt panicked: {what}"),
                    })
                });
        match attempted {
            Ok((visible, committed_now)) => {
                if failing {
                    tracing::info!(%tenant, "commits recovered");
                }
                tracing::debug!(
                    %tenant, rows = events.len(), lsn = position.last,
                    ms = started.elapsed().as_millis() as u64, "committed"
                );
                if committed_now {
                    count_commit(tenant, events, started.elapsed());
                }
                shared.committed(tenant, lsns, visible);
                return;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The tenant was deleted (and maybe created again: its new table must not
                // get what the old incarnation left uncommitted).
                tracing::error!(%tenant, error = %e, "tenant is gone; dropping its buffered events");
                // Files written for the batch would outlive a purge of the tenant's prefix.
                for f in files.take().unwrap_or_default() {
                    if let Err(e) = shared.catalog.file_io().delete(f.file_path()).await {
                        tracing::warn!(%tenant, file = f.file_path(), error = %e, "could not delete a dropped batch's file");
                    }
                }
                shared.committed(
                    tenant,
                    lsns,
                    Visible {
                        lsn: position.last,
                        snapshot_id: None,
                    },
                );
                return;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(%tenant, error = %e, source = ?std::error::Error::source(&e), "commit failed; retrying with backoff");
                    failing = true;
                }
                // Files written by a failed attempt are kept for the next one unless the
                // failure was in writing them.
                backoff.wait().await;
            }
        }
    }
}

async fn try_flush(
    shared: &Shared,
    tenant: &TenantKey,
    events: &[&StoredEvent],
    position: &SourcePosition,
    files: &mut Option<Vec<DataFile>>,
) -> Result<(Visible, bool)> {
    let catalog = &shared.catalog;
    if files.is_none() {
        let table = catalog.load_table(tenant.id(), EVENTS_TABLE).await?;
        if floe_catalog::tenant::table_incarnation(table.metadata()) != tenant.incarnation() {
            return Err(floe_catalog::Error::IncarnationGone {
                tenant: tenant.to_string(),
                incarnation: tenant.incarnation().to_string(),
            }
            .into());
        }
        // Already committed (a replay after a crash that followed the commit)?
        if let Some(done) = floe_catalog::table::position_in(table.metadata(), &position.source)
            && done >= position.last
        {
            let visible = Visible {
                lsn: position.last,
                snapshot_id: table.metadata().current_snapshot_id(),
            };
            return Ok((visible, false));
        }
        *files = Some(
            write_events(
                &table,
                tenant.id().as_str(),
                events,
                shared.config.parquet_compression(),
                catalog.written(),
            )
            .await?,
        );
    }
    let data_files = files.clone().ok_or_else(|| Error::Internal {
        message: "no files to commit".into(),
    })?;
    let outcome = catalog
        .commit_append(tenant, EVENTS_TABLE, data_files, Some(position))
        .await?;
    if outcome.already_committed {
        tracing::info!(%tenant, lsn = position.last, "batch was already committed; its new files are unreferenced");
    }
    let visible = Visible {
        lsn: position.last,
        snapshot_id: outcome.snapshot_id,
    };
    Ok((visible, !outcome.already_committed))
}

/// Counts a commit this process made in the metrics: its time, the time since its oldest
/// event arrived, and its events.
fn count_commit(tenant: &TenantKey, events: &[&StoredEvent], took: Duration) {
    let label = m::tenant(tenant.id().as_str());
    metrics::histogram!(m::INGEST_COMMIT_SECONDS, "tenant" => label.clone())
        .record(took.as_secs_f64());
    if let Some(oldest) = events.iter().map(|e| e.received_at).min() {
        let age_us = chrono::Utc::now().timestamp_micros() - oldest;
        metrics::histogram!(m::TIME_TO_VISIBLE_SECONDS, "tenant" => label.clone())
            .record(age_us.max(0) as f64 / 1e6);
    }
    metrics::counter!(m::INGEST_COMMITTED_EVENTS, "tenant" => label).increment(events.len() as u64);
}
