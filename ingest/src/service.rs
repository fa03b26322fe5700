//! The ingest service: ties the write-ahead log, de-duplication and the batchers together.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use floe_catalog::config::IngestConfig;
use floe_catalog::tenant::LEGACY_INCARNATION;
use floe_catalog::{Catalog, Config, TenantId, TenantKey};
use opentelemetry::trace::TraceContextExt;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::batcher;
use crate::dedup::{self, Dedup};
use crate::event::StoredEvent;
use crate::wal::{Record, Wal};
use crate::{Error, Result};

mod window;
pub use window::WindowLoaded;

/// A tenant's committed position: every record of the tenant up to `lsn` is queryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Visible {
    pub lsn: u64,
    pub snapshot_id: Option<i64>,
}

/// What [`Ingest::submit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// Events newly stored.
    pub stored: usize,
    /// Events recognised as retries of stored ones.
    pub duplicates: usize,
    /// The log position of the stored events, if any.
    pub lsn: Option<u64>,
    /// Of `stored`, events whose ids were checked only against the requests since the start:
    /// the window was still loading from the tables. Any of them that retries an event stored
    /// before the restart is left out before its commit.
    pub unchecked: usize,
}

/// Per-tenant progress: what was acknowledged and what is committed.
pub(crate) struct TenantProgress {
    pub(crate) acked: AtomicU64,
    pub(crate) committed: watch::Sender<Visible>,
}

/// State shared by the log's sink, the batchers and the request handlers.
pub(crate) struct Shared {
    pub(crate) catalog: Catalog,
    pub(crate) config: IngestConfig,
    pub(crate) wal_source: String,
    pub(crate) wal: OnceLock<Wal>,
    /// Log positions handed to batchers and not yet committed (for log truncation).
    pending: Mutex<BTreeSet<u64>>,
    next_lsn: AtomicU64,
    /// Keyed by incarnation: a tenant created again under an old id shares nothing with the
    /// old one (its batcher drops what the old one left uncommitted).
    tenants: Mutex<HashMap<TenantKey, Arc<TenantProgress>>>,
    batchers: Mutex<HashMap<TenantKey, mpsc::UnboundedSender<Record>>>,
    /// Records held back from the batchers until the de-duplication window is loaded from the
    /// tables (`None` once it is): see [`Ingest::load_window`].
    held: Mutex<Option<Vec<Record>>>,
    flush_runtime: Handle,
}

impl Shared {
    pub(crate) fn tenant(&self, t: &TenantKey) -> Arc<TenantProgress> {
        let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(t.clone())
            .or_insert_with(|| {
                Arc::new(TenantProgress {
                    acked: AtomicU64::new(0),
                    committed: watch::channel(Visible::default()).0,
                })
            })
            .clone()
    }

    /// Hands a durable record to its tenant's batcher, in log order, or holds it while the
    /// de-duplication window is loading.
    fn route(self: &Arc<Self>, record: Record) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.lsn);
        self.next_lsn.fetch_max(record.lsn + 1, Ordering::SeqCst);
        self.tenant(&record.tenant)
            .acked
            .fetch_max(record.lsn, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(h) => h.push(record),
            // Under the lock: a record routed while the held ones are let go waits for them.
            None => self.dispatch(record),
        }
    }

    fn window_loading(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Lets the held records go to their batchers, in log order, without the events whose ids
    /// are in `conflicts` (retries of events stored before the restart). Returns how many
    /// events were left out.
    fn release_held(self: &Arc<Self>, conflicts: &dedup::Conflicts) -> usize {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        for mut record in held.take().unwrap_or_default() {
            let is_retry = |e: &StoredEvent| {
                e.client_id && conflicts.contains(dedup::key(&record.tenant, &e.event_id))
            };
            if !conflicts.is_empty() && record.events.iter().any(is_retry) {
                let kept: Vec<StoredEvent> = record
                    .events
                    .iter()
                    .filter(|e| !is_retry(e))
                    .cloned()
                    .collect();
                dropped += record.events.len() - kept.len();
                // A record left with no event still goes to the batcher: its position is
                // committed in log order with the others of its tenant.
                record.events = Arc::new(kept);
            }
            self.dispatch(record);
        }
        dropped
    }

    fn dispatch(self: &Arc<Self>, record: Record) {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        let tx = batchers.entry(record.tenant.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = self.clone();
            let tenant = record.tenant.clone();
            self.flush_runtime
                .spawn(async move { batcher::run(shared, tenant, rx).await });
            tx
        });
        // The channel is unbounded, but what it holds is bounded by the buffer semaphore,
        // whose permits travel with the records until they are committed.
        if let Err(e) = tx.send(record) {
            tracing::error!(
                lsn = e.0.lsn,
                "batcher stopped; record stays in the log for replay"
            );
        }
    }

    /// Called by a batcher once `lsns` are committed (or found already committed).
    pub(crate) fn committed(&self, tenant: &TenantKey, lsns: &[u64], visible: Visible) {
        self.tenant(tenant).committed.send_if_modified(|v| {
            if visible.lsn > v.lsn {
                *v = visible;
                true
            } else {
                false
            }
        });
        let low_water = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for l in lsns {
                pending.remove(l);
            }
            pending
                .first()
                .copied()
                .unwrap_or_else(|| self.next_lsn.load(Ordering::SeqCst))
        };
        if let Some(wal) = self.wal.get() {
            wal.truncate(low_water);
        }
    }
}

/// The ingest service. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    shared: Arc<Shared>,
    wal: Wal,
    dedup: Arc<Dedup>,
    buffer: Arc<Semaphore>,
    /// Serialises de-duplication with log order: a retry that finds its id already admitted
    /// is acknowledged only after the first copy's log write.
    order: Arc<tokio::sync::Mutex<()>>,
    /// Held (read) by each request admitted while the window is loading, until it has its
    /// answer from the log: the load waits for them before it checks their ids.
    unchecked: Arc<tokio::sync::RwLock<()>>,
}

/// Buffer accounting is in KiB so that large limits fit the semaphore's `u32` permits.
fn kib(bytes: usize) -> u32 {
    (bytes.div_ceil(1024)).min(u32::MAX as usize) as u32
}

impl Ingest {
    /// Opens the write-ahead log, replays what the tables do not hold yet, and starts
    /// accepting; the de-duplication window is loaded from the tables in the background
    /// ([`Ingest::load_window`], retried until it succeeds). Batchers run on `flush_runtime`.
    pub async fn start(catalog: Catalog, config: &Config, flush_runtime: Handle) -> Result<Ingest> {
        Self::start_accepting_loss(catalog, config, flush_runtime, &[]).await
    }

    /// [`Ingest::start`], repairing the damaged log spans that `accept_wal_loss` names
    /// (`SEGMENT@OFFSET`, as the refusal to start printed them); each loss is audited.
    pub async fn start_accepting_loss(
        catalog: Catalog,
        config: &Config,
        flush_runtime: Handle,
        accept_wal_loss: &[String],
    ) -> Result<Ingest> {
        let ingest = Self::open(catalog, config, flush_runtime, accept_wal_loss).await?;
        tokio::spawn(window::load_until_done(ingest.clone()));
        Ok(ingest)
    }

    /// [`Ingest::start_accepting_loss`] without loading the de-duplication window: requests
    /// are accepted, and their records (and the replayed ones) wait for the batchers until
    /// [`Ingest::load_window`] is called.
    pub async fn open(
        catalog: Catalog,
        config: &Config,
        flush_runtime: Handle,
        accept_wal_loss: &[String],
    ) -> Result<Ingest> {
        let cfg = config.ingest.clone();
        let wal_dir = config.wal_dir();
        let (wal_id, recovered) = {
            let (dir, accept) = (wal_dir.clone(), accept_wal_loss.to_vec());
            tokio::task::spawn_blocking(move || Wal::open(&dir, &accept))
                .await
                .map_err(|e| Error::Internal {
                    message: format!("opening the log: {e}"),
                })??
        };
        for d in &recovered.accepted_loss {
            let detail = serde_json::json!({
                "wal": wal_id, "dir": wal_dir.display().to_string(), "damage": d,
            });
            catalog
                .audit("operator", None, "wal.loss_accepted", &detail.to_string())
                .await?;
        }
        let shared = Arc::new(Shared {
            catalog: catalog.clone(),
            config: cfg.clone(),
            wal_source: wal_id.clone(),
            wal: OnceLock::new(),
            pending: Mutex::new(BTreeSet::new()),
            next_lsn: AtomicU64::new(recovered.next_lsn),
            tenants: Mutex::new(HashMap::new()),
            batchers: Mutex::new(HashMap::new()),
            held: Mutex::new(Some(Vec::new())),
            flush_runtime,
        });
        let buffer = Arc::new(Semaphore::new(kib(cfg.max_buffered_bytes) as usize));
        let dedup = Arc::new(Dedup::new(cfg.dedup_window_secs, cfg.dedup_max_ids));
        let now = chrono::Utc::now().timestamp_micros();
        let mut current: HashMap<TenantId, Option<TenantKey>> = HashMap::new();
        for t in catalog.list_tenants().await? {
            let key = t.key()?;
            current.insert(key.id().clone(), Some(key));
        }

        // Replay the log past each tenant's committed position. Records of a tenant that no
        // longer exists, or of an earlier incarnation of its id, are dropped: they belong to
        // a tenant that was deleted, never to the one that has the id now.
        let mut committed: HashMap<TenantKey, Option<u64>> = HashMap::new();
        let (mut replayed, mut dropped) = (0usize, HashMap::<TenantId, usize>::new());
        for record in recovered.records {
            let current = current.get(&record.tenant).cloned().flatten();
            let incarnation = record.incarnation.as_deref().unwrap_or(LEGACY_INCARNATION);
            let Some(tenant) = current.filter(|k| k.incarnation() == incarnation) else {
                *dropped.entry(record.tenant).or_default() += record.events.len();
                continue;
            };
            let done = match committed.get(&tenant) {
                Some(d) => *d,
                None => {
                    let d = catalog
                        .committed_position(tenant.id(), floe_catalog::table::EVENTS_TABLE, &wal_id)
                        .await?;
                    committed.insert(tenant.clone(), d);
                    d
                }
            };
            if done.is_some_and(|d| d >= record.lsn) {
                continue;
            }
            let events = record.events;
            dedup.remember(
                events
                    .iter()
                    .filter(|e| e.client_id)
                    .map(|e| (dedup::key(&tenant, &e.event_id), e.received_at)),
                now,
            );
            let permit = buffer
                .clone()
                .try_acquire_many_owned(kib(events.iter().map(|e| e.size()).sum()))
                .ok();
            replayed += events.len();
            shared.route(Record {
                lsn: record.lsn,
                tenant,
                events: Arc::new(events),
                permit,
                origin: None,
            });
        }
        for (tenant, events) in dropped {
            tracing::warn!(
                %tenant, events,
                "the log holds uncommitted events of a deleted tenant (or of an earlier tenant \
                 with this id); dropping them"
            );
        }
        for (tenant, done) in committed {
            if let Some(d) = done {
                let progress = shared.tenant(&tenant);
                progress.acked.fetch_max(d, Ordering::SeqCst);
                progress.committed.send_if_modified(|v| {
                    let newer = d > v.lsn;
                    if newer {
                        v.lsn = d;
                    }
                    newer
                });
            }
        }
        if replayed > 0 || recovered.truncated_bytes > 0 {
            tracing::info!(
                replayed,
                torn_bytes = recovered.truncated_bytes,
                "write-ahead log recovered"
            );
        }

        // The sink holds the shared state weakly: once the service is dropped, the log's
        // writer thread sees its channel close and stops.
        let sink_shared = Arc::downgrade(&shared);
        let wal = Wal::start(
            &wal_dir,
            wal_id,
            recovered.next_lsn,
            cfg.wal_segment_bytes,
            Box::new(move |r| match sink_shared.upgrade() {
                Some(s) => s.route(r),
                None => tracing::warn!(lsn = r.lsn, "ingest stopped; record stays in the log"),
            }),
        )?;
        let _ = shared.wal.set(wal.clone());
        Ok(Ingest {
            shared,
            wal,
            dedup,
            buffer,
            order: Arc::new(tokio::sync::Mutex::new(())),
            unchecked: Arc::new(tokio::sync::RwLock::new(())),
        })
    }

    /// Reads the ids the tables received within the window, checks the requests admitted
    /// meanwhile against them, and lets the held records go to the batchers. Does nothing once
    /// the window is loaded.
    pub async fn load_window(&self) -> Result<WindowLoaded> {
        window::load(self).await
    }

    pub fn config(&self) -> &IngestConfig {
        &self.shared.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// Makes `events` durable for `tenant`. Returns once they are in the fsynced log.
    pub async fn submit(&self, tenant: &TenantKey, events: Vec<StoredEvent>) -> Result<Submitted> {
        let span = tracing::info_span!("wal append", tenant = %tenant.id(), events = events.len());
        self.submit_inner(tenant, events).instrument(span).await
    }

    async fn submit_inner(
        &self,
        tenant: &TenantKey,
        events: Vec<StoredEvent>,
    ) -> Result<Submitted> {
        let bytes: usize = events.iter().map(|e| e.size()).sum();
        let permit = if events.is_empty() {
            None
        } else {
            let wait = Duration::from_millis(self.shared.config.backpressure_timeout_ms);
            match tokio::time::timeout(wait, self.buffer.clone().acquire_many_owned(kib(bytes)))
                .await
            {
                Ok(Ok(p)) => Some(p),
                _ => {
                    return Err(Error::Overloaded {
                        message: "ingest buffer is full: commits are behind; retry later".into(),
                    });
                }
            }
        };
        let now = chrono::Utc::now().timestamp_micros();
        let (fresh, admitted, duplicates, reply, unchecked) = {
            let _order = self.order.lock().await;
            // Taken under the order lock, which the load holds while it waits for these.
            let unchecked = if self.shared.window_loading() {
                Some(self.unchecked.clone().read_owned().await)
            } else {
                None
            };
            let dedup::Admission {
                fresh,
                admitted,
                duplicates,
            } = self.dedup.admit_events(tenant, events, now);
            let fresh_len = fresh.len();
            // Enqueue while holding the order lock: log order follows admission order.
            let reply = if fresh.is_empty() {
                self.wal.enqueue_barrier().await
            } else {
                // The commit of these events links to this span (when traces are on).
                let origin = tracing::Span::current()
                    .context()
                    .span()
                    .span_context()
                    .clone();
                let origin = origin.is_valid().then_some(origin);
                self.wal
                    .enqueue(tenant.clone(), Arc::new(fresh), permit, origin)
                    .await
            };
            (fresh_len, admitted, duplicates, reply, unchecked)
        };
        let result = match reply {
            Ok(rx) => rx.await.unwrap_or_else(|_| {
                Err(Error::Wal {
                    message: "the write-ahead log has stopped".into(),
                })
            }),
            Err(e) => Err(e),
        };
        let submitted = match result {
            Ok(lsn) => Ok(Submitted {
                stored: fresh,
                duplicates,
                lsn: (fresh > 0).then_some(lsn),
                unchecked: if unchecked.is_some() {
                    admitted.len()
                } else {
                    0
                },
            }),
            Err(e) => {
                self.dedup.forget(&admitted);
                Err(e)
            }
        };
        drop(unchecked);
        submitted
    }

    /// The highest log position acknowledged for `tenant`.
    pub fn acked(&self, tenant: &TenantKey) -> u64 {
        self.shared.tenant(tenant).acked.load(Ordering::SeqCst)
    }

    /// Waits until everything of `tenant` up to `lsn` is committed; returns the snapshot.
    pub async fn wait_visible(&self, tenant: &TenantKey, lsn: u64) -> Result<Visible> {
        let mut rx = self.shared.tenant(tenant).committed.subscribe();
        let wait = Duration::from_millis(self.shared.config.wait_visible_timeout_ms);
        // Copy the value out at once: the watch guard must not live across an await.
        let mut v = *tokio::time::timeout(wait, rx.wait_for(|v| v.lsn >= lsn))
            .await
            .map_err(|_| Error::Timeout {
                message: format!(
                    "events are durable but not yet visible after {} ms",
                    wait.as_millis()
                ),
            })?
            .map_err(|_| Error::Internal {
                message: "progress channel closed".into(),
            })?;
        if v.snapshot_id.is_none() {
            let table = self
                .shared
                .catalog
                .load_table(tenant.id(), floe_catalog::table::EVENTS_TABLE)
                .await?;
            v.snapshot_id = table.metadata().current_snapshot_id();
        }
        Ok(v)
    }

    /// Stops taking records, lets every batcher commit what it holds (up to `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        let senders: Vec<_> = {
            let mut b = self
                .shared
                .batchers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            b.drain().collect()
        };
        drop(senders);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let empty = self
                .shared
                .pending
                .lock()
                .map(|p| p.is_empty())
                .unwrap_or(true);
            if empty || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
