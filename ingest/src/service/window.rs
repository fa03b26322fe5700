//! Loading the de-duplication window from the tables after a start, while requests are
//! already accepted.
//!
//! On start the window holds only the ids of the log's uncommitted records; reading the ids
//! the tables received within the window takes seconds at millions of ids (it grows with the
//! window), so it is done in the background. Meanwhile requests are admitted against what the
//! window holds, made durable and acknowledged, and their records (and the replayed ones) are
//! held back from the batchers. Once the tables are read, under the order lock (no admission
//! runs), the load waits until every request admitted so far has its answer from the log,
//! moves the window's ids into the loaded one ([`Dedup::absorb`]: an id found in both is a
//! retry of an event stored before the restart), and lets the held records go to their
//! batchers in log order without those retries. A crash before that replays the same records
//! on the next start, and they are checked the same way.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use floe_catalog::{Catalog, ErrorKind, TenantKey};
use futures::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::spec::Datum;

use super::Ingest;
use crate::dedup::{self, Dedup};
use crate::{Error, Result};

/// What [`Ingest::load_window`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowLoaded {
    /// Ids read from the tables.
    pub ids: usize,
    /// Events of requests admitted during the load (or replayed) that retried events stored
    /// before the restart: left out before their commit.
    pub retries_left_out: usize,
    pub ms: u64,
}

pub(super) async fn load(ingest: &Ingest) -> Result<WindowLoaded> {
    if !ingest.shared.window_loading() {
        return Ok(WindowLoaded::default());
    }
    let started = Instant::now();
    let cfg = &ingest.shared.config;
    let catalog = &ingest.shared.catalog;
    let loaded = Dedup::new(cfg.dedup_window_secs, cfg.dedup_max_ids);
    let now = chrono::Utc::now().timestamp_micros();
    for t in catalog.list_tenants().await? {
        let key = t.key()?;
        match recent_event_ids(catalog, &key, now, cfg.dedup_window_secs).await {
            Ok(keys) => loaded.remember(keys, now),
            // Deleted meanwhile: its records are dropped by its batcher.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let ids = loaded.len();

    let _order = ingest.order.lock().await;
    if !ingest.shared.window_loading() {
        return Ok(WindowLoaded::default());
    }
    // Every request admitted so far is queued in the log (admission enqueues under the order
    // lock): once this barrier is answered, their records are held here...
    if let Ok(barrier) = ingest.wal.enqueue_barrier().await {
        let _ = barrier.await;
    }
    // ...and once they have all finished, none is left to forget its ids (a failed append).
    let drained = ingest.unchecked.write().await;
    let conflicts = ingest
        .dedup
        .absorb(loaded, chrono::Utc::now().timestamp_micros());
    let retries_left_out = ingest.shared.release_held(&conflicts);
    drop(drained);
    let done = WindowLoaded {
        ids,
        retries_left_out,
        ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        ids = done.ids,
        retries_left_out = done.retries_left_out,
        ms = done.ms,
        "de-duplication window loaded from the tables"
    );
    Ok(done)
}

/// [`load`], retried with backoff until it succeeds or the service is dropped.
pub(super) async fn load_until_done(ingest: Ingest) {
    let mut backoff = floe_catalog::retry::Backoff::for_failures();
    loop {
        match load(&ingest).await {
            Ok(_) => return,
            Err(e) => {
                // Only this task holds the service (no batcher runs before the load): it was
                // dropped, and nothing is left to commit.
                if Arc::strong_count(&ingest.shared) <= 1 {
                    return;
                }
                tracing::warn!(
                    error = %e,
                    "loading the de-duplication window failed; commits wait for it; retrying"
                );
                backoff.wait().await;
            }
        }
    }
}

/// Ids of events received within the window, read from the table's files whose
/// `received_at` bounds overlap it.
async fn recent_event_ids(
    catalog: &Catalog,
    tenant: &TenantKey,
    now_us: i64,
    window_secs: u64,
) -> Result<Vec<(dedup::Key, i64)>> {
    let table = catalog
        .load_table(tenant.id(), floe_catalog::table::EVENTS_TABLE)
        .await?;
    if table.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let since = now_us - (window_secs as i64).saturating_mul(1_000_000);
    let scan = table
        .scan()
        .select(["event_id", "received_at"])
        .with_filter(
            Reference::new("received_at")
                .greater_than_or_equal_to(Datum::timestamptz_micros(since)),
        )
        .build()
        .map_err(|source| Error::Iceberg {
            context: "planning the de-duplication scan",
            source: Box::new(source),
        })?;
    let mut stream = scan.to_arrow().await.map_err(|source| Error::Iceberg {
        context: "reading recent event ids",
        source: Box::new(source),
    })?;
    // Ids found twice (a retry stored again past an earlier window) are left to `remember`.
    let mut out = Vec::new();
    while let Some(batch) = stream.try_next().await.map_err(|source| Error::Iceberg {
        context: "reading recent event ids",
        source: Box::new(source),
    })? {
        let ids = batch.column(0).as_string::<i32>();
        let at = batch.column(1).as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let t = at.value(i);
            if t >= since {
                out.push((dedup::key(tenant, ids.value(i)), t));
            }
        }
    }
    Ok(out)
}
