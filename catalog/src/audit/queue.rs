//! A queue of audit records written in batches by one task: for records that are many and
//! must not each cost a transaction on the path that makes them (refused requests, ended
//! queries). Their commits do not wait for the disk (`Catalog::audit_all_unflushed`). Past its
//! bound, records are counted and written as one `audit.unitemised` record with the count:
//! never dropped unsaid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::Entry;
use crate::Catalog;

/// Records written in one transaction at most.
const BATCH: usize = 500;

/// The sending side (cheap to clone).
#[derive(Clone, Debug)]
pub struct AuditQueue {
    queue: mpsc::Sender<Entry>,
    unitemised: Arc<AtomicU64>,
}

impl AuditQueue {
    /// A queue holding at most `bound` records waiting, and the task that writes them (to run
    /// until the process stops; it ends once every sender is gone).
    pub fn new(
        catalog: Catalog,
        bound: usize,
    ) -> (
        AuditQueue,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (queue, rx) = mpsc::channel(bound.max(1));
        let unitemised = Arc::new(AtomicU64::new(0));
        let q = AuditQueue {
            queue,
            unitemised: unitemised.clone(),
        };
        (q, write(catalog, rx, unitemised))
    }

    /// Queues a record (counted as unitemised when the queue is full).
    pub fn record(&self, entry: Entry) {
        if self.queue.try_send(entry).is_err() {
            self.unitemised.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes queued records, a batch per transaction.
async fn write(catalog: Catalog, mut rx: mpsc::Receiver<Entry>, unitemised: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let lost = unitemised.swap(0, Ordering::Relaxed);
        // What the batch stands for, should its write fail: its records and the count it
        // carries.
        let stands_for = batch.len() as u64 + lost;
        if lost > 0 {
            batch.push(Entry::new(
                "floe",
                None,
                "audit.unitemised",
                serde_json::json!({
                    "count": lost,
                    "why": "the audit queue was full (audit.queue) or its write failed",
                })
                .to_string(),
            ));
        }
        let entries = std::mem::take(&mut batch);
        if let Err(e) = catalog.audit_all_unflushed(entries).await {
            // Counted again, so the next batch says how many are missing.
            unitemised.fetch_add(stands_for, Ordering::Relaxed);
            tracing::warn!(error = %e, records = stands_for, "could not write queued audit records");
        }
    }
}
