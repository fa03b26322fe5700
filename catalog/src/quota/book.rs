//! What one process checks tenants' quotas against: token buckets for ingest, counters for
//! queries, and today's usage, refreshed from the catalog every `quota.refresh_secs` (so that an
//! override set with `floe tenant set` reaches running servers within that time).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rate::{Bucket, RawBody, Shape};
use super::{Quota, Quotas, Usage, today};
use crate::config::QuotaConfig;
use crate::{Catalog, TenantId};

/// How long a request waits for its tenant's first read of quotas (later reads happen in the
/// background).
const FIRST_READ: Duration = Duration::from_secs(2);

/// The state of a tenant's ingest rate, as the `X-RateLimit-*` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events per second (`ingest_events_per_sec`); 0: unlimited.
    pub limit: u64,
    /// Events that may be sent now without waiting.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A request refused by a quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub quota: Quota,
    pub limit: u64,
    /// When a retry can succeed, in seconds.
    pub retry_after_secs: u64,
    pub message: String,
    /// The ingest rate after the refusal (for the headers).
    pub rate: Option<RateLimit>,
}

impl QuotaExceeded {
    /// Counts the refusal in the metrics (`floe_quota_rejections_total`).
    pub fn count(&self, tenant: &TenantId) {
        metrics::counter!(
            crate::metrics::QUOTA_REJECTIONS,
            "tenant" => crate::metrics::tenant(tenant.as_str()),
            "quota" => self.quota.name()
        )
        .increment(1);
    }
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug)]
struct Entry {
    quotas: Quotas,
    fetched: Instant,
    /// A read of the catalog for this entry is under way.
    refreshing: bool,
    events: Bucket,
    bytes: Bucket,
    /// What the tenant's plain and gzip bodies held per byte.
    shapes: [Shape; 2],
    /// Queries started in the last minute.
    started: VecDeque<Instant>,
    running: u64,
    /// The UTC day of `shared` and `unflushed`.
    day: String,
    /// Today's usage as the catalog had it at the last refresh (every process's).
    shared: Usage,
    /// What this process added since.
    unflushed: Usage,
    stored_bytes: u64,
}

impl Entry {
    fn today(&self) -> Usage {
        Usage {
            events: self.shared.events + self.unflushed.events,
            bytes: self.shared.bytes + self.unflushed.bytes,
            queries: self.shared.queries + self.unflushed.queries,
            scanned_bytes: self.shared.scanned_bytes + self.unflushed.scanned_bytes,
        }
    }
}

/// The quotas of every tenant this process serves.
#[derive(Clone)]
pub struct QuotaBook {
    catalog: Catalog,
    defaults: QuotaConfig,
    tenants: Arc<Mutex<HashMap<TenantId, Entry>>>,
    /// One refresh at a time: a burst of requests for a tenant reads the catalog once.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    /// Events accepted and rejected per minute, written with the usage.
    tally: Arc<super::tally::Tally>,
}

impl std::fmt::Debug for QuotaBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaBook")
            .field("defaults", &self.defaults)
            .finish()
    }
}

/// A running query's place in its tenant's `concurrent_queries`; given back when dropped.
#[derive(Debug)]
pub struct QuerySlot {
    tenants: Arc<Mutex<HashMap<TenantId, Entry>>>,
    tenant: TenantId,
}

impl QuerySlot {
    fn with(&self, f: impl FnOnce(&mut Entry)) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = tenants.get_mut(&self.tenant) {
            f(e);
        }
    }

    /// Counts bytes of data files the query reads against `scanned_bytes_per_day`.
    pub fn add_scanned(&self, bytes: u64) {
        self.with(|e| e.unflushed.scanned_bytes += bytes);
    }
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        self.with(|e| e.running = e.running.saturating_sub(1));
    }
}

impl QuotaBook {
    /// The book; with a runtime, a task writes usage to the catalog every `refresh_secs`.
    pub fn new(catalog: Catalog, defaults: QuotaConfig) -> QuotaBook {
        let book = QuotaBook {
            catalog,
            defaults,
            tenants: Default::default(),
            refreshing: Default::default(),
            tally: Default::default(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Holds the state weakly: the task ends with the last handle of the book.
            let weak = Arc::downgrade(&book.tenants);
            let (catalog, defaults, refreshing, tally) = (
                book.catalog.clone(),
                book.defaults.clone(),
                book.refreshing.clone(),
                book.tally.clone(),
            );
            let every = book.refresh_every();
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(tenants) = weak.upgrade() else {
                        return;
                    };
                    let book = QuotaBook {
                        catalog: catalog.clone(),
                        defaults: defaults.clone(),
                        tenants,
                        refreshing: refreshing.clone(),
                        tally: tally.clone(),
                    };
                    book.flush().await;
                    book.refresh_all().await;
                }
            });
        }
        book
    }

    fn refresh_every(&self) -> Duration {
        Duration::from_secs(self.defaults.refresh_secs.max(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Entry>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The quotas in effect for `tenant` (read again when older than `refresh_secs`).
    pub async fn quotas(&self, tenant: &TenantId) -> Quotas {
        self.ensure(tenant).await;
        self.lock()
            .get(tenant)
            .map(|e| e.quotas.clone())
            .unwrap_or_else(|| Quotas::resolve(&self.defaults, &Default::default()))
    }

    /// Makes sure `tenant` has an entry, read again in the background when stale: a request
    /// never waits for the catalog but for a tenant's first (and then for at most
    /// [`FIRST_READ`]; an outage of the catalog must not stop ingest).
    async fn ensure(&self, tenant: &TenantId) {
        let stale = {
            let mut tenants = self.lock();
            match tenants.get_mut(tenant) {
                Some(e) if e.refreshing || e.fetched.elapsed() < self.refresh_every() => return,
                Some(e) => {
                    e.refreshing = true;
                    true
                }
                None => false,
            }
        };
        if stale {
            let book = self.clone();
            let tenant = tenant.clone();
            // Given up like any read left to the background, so that one stuck on a silent
            // connection does not keep the tenant's quotas from being read again.
            let limit = self.catalog.background_read_limit();
            tokio::spawn(async move {
                if tokio::time::timeout(limit, book.refresh(&tenant))
                    .await
                    .is_err()
                {
                    tracing::warn!(tenant = %tenant, after = ?limit, "gave up reading quotas; keeping the last known");
                    if let Some(e) = book.lock().get_mut(&tenant) {
                        e.refreshing = false;
                        e.fetched = Instant::now();
                    }
                }
            });
            return;
        }
        let _one = self.refreshing.lock().await;
        if self.lock().contains_key(tenant) {
            return;
        }
        if tokio::time::timeout(FIRST_READ, self.refresh(tenant))
            .await
            .is_err()
        {
            tracing::warn!(tenant = %tenant, "quota overrides not read in time; the defaults apply until they are");
            let now = Instant::now();
            let defaults = Quotas::resolve(&self.defaults, &Default::default());
            self.lock()
                .entry(tenant.clone())
                .or_insert_with(|| self.entry(defaults, now));
        }
    }

    fn entry(&self, quotas: Quotas, now: Instant) -> Entry {
        let burst = self.defaults.burst_secs;
        Entry {
            events: Bucket::full(quotas.get(Quota::IngestEventsPerSec), burst, now),
            bytes: Bucket::full(quotas.get(Quota::IngestBytesPerSec), burst, now),
            shapes: Default::default(),
            quotas,
            fetched: now,
            refreshing: false,
            started: VecDeque::new(),
            running: 0,
            day: today(),
            shared: Usage::default(),
            unflushed: Usage::default(),
            stored_bytes: 0,
        }
    }

    /// Reads the tenant's overrides, today's usage and stored bytes; what cannot be read
    /// stays as it was.
    async fn refresh(&self, tenant: &TenantId) {
        let day = today();
        let overrides = match self.catalog.find_tenant(tenant).await {
            Ok(t) => Some(t.map(|t| t.quotas).unwrap_or_default()),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "could not read quota overrides; keeping the last known");
                None
            }
        };
        let shared = match self.catalog.usage(tenant, &day).await {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "could not read usage; keeping the last known");
                None
            }
        };
        let quotas = overrides.map(|o| Quotas::resolve(&self.defaults, &o));
        let stored_bytes = match &quotas {
            Some(q) if q.get(Quota::StoredBytes) > 0 => {
                self.catalog.stored_bytes(tenant).await.ok()
            }
            _ => None,
        };
        let now = Instant::now();
        let burst = self.defaults.burst_secs;
        let mut tenants = self.lock();
        let entry = tenants.entry(tenant.clone()).or_insert_with(|| {
            self.entry(
                quotas
                    .clone()
                    .unwrap_or_else(|| Quotas::resolve(&self.defaults, &Default::default())),
                now,
            )
        });
        if let Some(quotas) = quotas {
            // A changed rate starts a full bucket of the new size.
            for (quota, bucket) in [
                (Quota::IngestEventsPerSec, &mut entry.events),
                (Quota::IngestBytesPerSec, &mut entry.bytes),
            ] {
                if entry.quotas.get(quota) != quotas.get(quota) {
                    *bucket = Bucket::full(quotas.get(quota), burst, now);
                }
            }
            entry.quotas = quotas;
        }
        if let Some(shared) = shared {
            if entry.day != day {
                entry.day = day;
            }
            entry.shared = shared;
        }
        if let Some(stored) = stored_bytes {
            entry.stored_bytes = stored;
        }
        entry.fetched = now;
        entry.refreshing = false;
    }

    /// Refuses a request of `tenant` before its events are parsed when it would be refused
    /// after: the tenant stores more than its quota, one of its ingest buckets is empty, or
    /// holds less than [`Shape::MARGIN`] of what a body of this size holds (judged by the
    /// tenant's recent parsed bodies of the same encoding). A tenant sending far past its
    /// rate thus costs the server the reading of its requests, not their parsing and
    /// validation: a bucket that refills continuously is seldom empty, but seldom holds a
    /// whole batch. Nothing is counted.
    pub async fn refuse_ingest_early(
        &self,
        tenant: &TenantId,
        body: RawBody,
    ) -> Result<(), QuotaExceeded> {
        self.ensure(tenant).await;
        let burst = self.defaults.burst_secs;
        let now = Instant::now();
        let mut tenants = self.lock();
        let Some(e) = tenants.get_mut(tenant) else {
            return Ok(());
        };
        if let Some(refused) = stored_exceeded(tenant, e, burst) {
            return Err(refused);
        }
        let expected = e.shapes[usize::from(body.gzip)].expect(body.len);
        // Both quotas are asked: when both refuse, the reply names the one that waits longer
        // (a retry after the shorter wait would be refused by the other).
        let mut refused: Option<(Quota, u64, Asked, Duration)> = None;
        for quota in [Quota::IngestEventsPerSec, Quota::IngestBytesPerSec] {
            let rate = e.quotas.get(quota);
            let (bucket, about) = match quota {
                Quota::IngestEventsPerSec => (&mut e.events, expected.map(|x| x.0)),
                _ => (&mut e.bytes, expected.map(|x| x.1)),
            };
            if rate == 0 {
                continue;
            }
            let asked = if let Some(wait) = bucket.empty(rate, burst, now) {
                Some((Asked::UsedUp, wait))
            } else if let Some(about) = about
                && let Some(wait) = bucket.short_of(about, Shape::MARGIN, rate, burst, now)
            {
                let left = bucket.left();
                Some((Asked::Expected { about, left }, wait))
            } else {
                None
            };
            if let Some((asked, wait)) = asked
                && refused.as_ref().is_none_or(|r| wait > r.3)
            {
                refused = Some((quota, rate, asked, wait));
            }
        }
        match refused {
            Some((quota, rate, asked, wait)) => Err(rate_exceeded(
                tenant,
                quota,
                rate,
                asked,
                wait,
                events_rate(e, burst),
            )),
            None => Ok(()),
        }
    }

    /// Admits `events` events of `bytes` bytes of `tenant`, parsed from `body`, or tells which
    /// quota refuses them. Nothing is counted for a refused request; what its body held per
    /// byte is learned either way.
    pub async fn admit_ingest(
        &self,
        tenant: &TenantId,
        events: u64,
        bytes: u64,
        body: RawBody,
    ) -> Result<Option<RateLimit>, QuotaExceeded> {
        self.ensure(tenant).await;
        let burst = self.defaults.burst_secs;
        let now = Instant::now();
        let mut tenants = self.lock();
        let Some(e) = tenants.get_mut(tenant) else {
            return Ok(None);
        };
        e.shapes[usize::from(body.gzip)].learn(body.len, events, bytes);
        let rate_of = |e: &Entry| events_rate(e, burst);
        if let Some(refused) = stored_exceeded(tenant, e, burst) {
            return Err(refused);
        }
        // Both buckets are asked; when one refuses, what the other took goes back, and when
        // both refuse, the reply names the one that waits longer (a retry after the shorter
        // wait would be refused by the other).
        let mut refused: Option<(Quota, u64, u64, Duration)> = None;
        let mut took: [Option<(&mut Bucket, u64)>; 2] = [None, None];
        let asks = [
            (Quota::IngestEventsPerSec, &mut e.events, events),
            (Quota::IngestBytesPerSec, &mut e.bytes, bytes),
        ];
        for (slot, (quota, bucket, n)) in took.iter_mut().zip(asks) {
            let rate = e.quotas.get(quota);
            if rate == 0 {
                continue;
            }
            match bucket.take(n, rate, burst, now) {
                Ok(()) => *slot = Some((bucket, n)),
                Err(wait) => {
                    if refused.as_ref().is_none_or(|r| wait > r.3) {
                        refused = Some((quota, rate, n, wait));
                    }
                }
            }
        }
        if let Some((quota, rate, n, wait)) = refused {
            for (bucket, n) in took.into_iter().flatten() {
                bucket.give_back(n);
            }
            return Err(rate_exceeded(
                tenant,
                quota,
                rate,
                Asked::Counted(n),
                wait,
                rate_of(e),
            ));
        }
        e.unflushed.events += events;
        e.unflushed.bytes += bytes;
        Ok(rate_of(e))
    }

    /// Counts `events` of `bytes` that a Kafka worker has already read for `tenant` (they are
    /// never dropped), and tells how long the tenant's partitions should pause when that put
    /// it over a quota.
    pub async fn charge_ingest(
        &self,
        tenant: &TenantId,
        events: u64,
        bytes: u64,
    ) -> Option<Duration> {
        self.ensure(tenant).await;
        let burst = self.defaults.burst_secs;
        let now = Instant::now();
        let refresh = self.refresh_every();
        let mut tenants = self.lock();
        let e = tenants.get_mut(tenant)?;
        e.unflushed.events += events;
        e.unflushed.bytes += bytes;
        let stored_limit = e.quotas.get(Quota::StoredBytes);
        let mut wait = (stored_limit > 0 && e.stored_bytes >= stored_limit).then_some(refresh);
        for (quota, bucket, n) in [
            (Quota::IngestEventsPerSec, &mut e.events, events),
            (Quota::IngestBytesPerSec, &mut e.bytes, bytes),
        ] {
            let rate = e.quotas.get(quota);
            if rate == 0 {
                continue;
            }
            if let Some(w) = bucket.charge(n, rate, burst, now) {
                wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
            }
        }
        wait
    }

    /// The ingest rate state of `tenant`, for replies that admitted nothing.
    pub async fn ingest_rate(&self, tenant: &TenantId) -> Option<RateLimit> {
        self.ensure(tenant).await;
        let burst = self.defaults.burst_secs;
        let mut tenants = self.lock();
        let e = tenants.get_mut(tenant)?;
        let limit = e.quotas.get(Quota::IngestEventsPerSec);
        if limit == 0 {
            return None;
        }
        e.events.refill(limit, burst, Instant::now());
        Some(e.events.state(limit, burst))
    }

    /// Starts a query of `tenant`: within `concurrent_queries`, `queries_per_minute` and
    /// `scanned_bytes_per_day`, or the quota that refuses it.
    pub async fn start_query(&self, tenant: &TenantId) -> Result<QuerySlot, QuotaExceeded> {
        self.ensure(tenant).await;
        let now = Instant::now();
        let mut tenants = self.lock();
        let e = tenants.entry(tenant.clone()).or_insert_with(|| {
            self.entry(Quotas::resolve(&self.defaults, &Default::default()), now)
        });
        let refuse = |quota: Quota, limit: u64, retry_after_secs: u64, message: String| {
            Err(QuotaExceeded {
                quota,
                limit,
                retry_after_secs,
                message,
                rate: None,
            })
        };
        let concurrent = e.quotas.get(Quota::ConcurrentQueries);
        if concurrent > 0 && e.running >= concurrent {
            return refuse(
                Quota::ConcurrentQueries,
                concurrent,
                1,
                format!(
                    "Too many queries running for tenant {tenant} (quota concurrent_queries \
                     {concurrent})"
                ),
            );
        }
        let per_minute = e.quotas.get(Quota::QueriesPerMinute);
        while e
            .started
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            e.started.pop_front();
        }
        if per_minute > 0 && e.started.len() as u64 >= per_minute {
            let oldest = e.started.front().copied().unwrap_or(now);
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            return refuse(
                Quota::QueriesPerMinute,
                per_minute,
                wait.as_secs().max(1),
                format!(
                    "Tenant {tenant} started {} queries in the last minute (quota \
                     queries_per_minute {per_minute})",
                    e.started.len()
                ),
            );
        }
        let scanned_limit = e.quotas.get(Quota::ScannedBytesPerDay);
        let scanned = e.today().scanned_bytes;
        if scanned_limit > 0 && scanned >= scanned_limit {
            return refuse(
                Quota::ScannedBytesPerDay,
                scanned_limit,
                seconds_to_midnight(),
                format!(
                    "Tenant {tenant} scanned {scanned} bytes today (quota scanned_bytes_per_day \
                     {scanned_limit}); the count starts again at 00:00 UTC"
                ),
            );
        }
        e.running += 1;
        e.started.push_back(now);
        e.unflushed.queries += 1;
        drop(tenants);
        Ok(QuerySlot {
            tenants: self.tenants.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Reads every known tenant's quotas and usage again, so that an override reaches this
    /// process within `quota.refresh_secs` whether or not the tenant sends anything.
    async fn refresh_all(&self) {
        let tenants: Vec<TenantId> = self.lock().keys().cloned().collect();
        for t in tenants {
            self.refresh(&t).await;
        }
    }

    /// Writes what this process counted to the catalog.
    pub async fn flush(&self) {
        let tenants: Vec<TenantId> = self.lock().keys().cloned().collect();
        for t in tenants {
            self.flush_tenant(&t).await;
        }
        self.tally.flush(&self.catalog).await;
    }

    /// Counts a request's (or a batch's) events, accepted and rejected, for the `rejections`
    /// alert (written to the catalog with the usage).
    pub fn tally(&self, tenant: &TenantId, accepted: u64, rejected: u64) {
        self.tally.add(tenant, accepted, rejected);
    }

    async fn flush_tenant(&self, tenant: &TenantId) {
        let taken = self.lock().get_mut(tenant).map(|e| {
            let delta = std::mem::take(&mut e.unflushed);
            (e.day.clone(), delta)
        });
        let Some((day, delta)) = taken else { return };
        if let Err(e) = self.catalog.add_usage(tenant, &day, delta).await {
            tracing::warn!(tenant = %tenant, error = %e, "could not record usage; keeping it for the next flush");
            if let Some(entry) = self.lock().get_mut(tenant) {
                entry.unflushed.events += delta.events;
                entry.unflushed.bytes += delta.bytes;
                entry.unflushed.queries += delta.queries;
                entry.unflushed.scanned_bytes += delta.scanned_bytes;
            }
            return;
        }
        let mut tenants = self.lock();
        if let Some(entry) = tenants.get_mut(tenant) {
            if entry.day == day {
                entry.shared.events += delta.events;
                entry.shared.bytes += delta.bytes;
                entry.shared.queries += delta.queries;
                entry.shared.scanned_bytes += delta.scanned_bytes;
            }
            let now = today();
            if entry.day != now {
                entry.day = now;
                entry.shared = Usage::default();
            }
        }
    }
}

/// The ingest rate state of a tenant's entry (for the headers), when it has an events quota.
fn events_rate(e: &Entry, burst_secs: u64) -> Option<RateLimit> {
    let limit = e.quotas.get(Quota::IngestEventsPerSec);
    (limit > 0).then(|| e.events.state(limit, burst_secs))
}

/// The refusal of a tenant that stores its quota `stored_bytes` or more.
fn stored_exceeded(tenant: &TenantId, e: &Entry, burst_secs: u64) -> Option<QuotaExceeded> {
    let limit = e.quotas.get(Quota::StoredBytes);
    (limit > 0 && e.stored_bytes >= limit).then(|| QuotaExceeded {
        quota: Quota::StoredBytes,
        limit,
        retry_after_secs: 60,
        message: format!(
            "tenant {tenant} stores {} bytes; its quota stored_bytes is {limit} (retention, \
             erasure or a raised quota frees room)",
            e.stored_bytes
        ),
        rate: events_rate(e, burst_secs),
    })
}

/// What a request refused by a rate quota asked for.
#[derive(Debug, Clone, Copy)]
enum Asked {
    /// Its events (or bytes), counted after parsing.
    Counted(u64),
    /// Unparsed: about this many by its size, with `left` in the bucket.
    Expected { about: f64, left: u64 },
    /// Unparsed: the bucket held less than one.
    UsedUp,
}

/// The refusal of a request over a rate quota.
fn rate_exceeded(
    tenant: &TenantId,
    quota: Quota,
    rate: u64,
    asked: Asked,
    wait: Duration,
    state: Option<RateLimit>,
) -> QuotaExceeded {
    let unit = match quota {
        Quota::IngestBytesPerSec => "bytes",
        _ => "events",
    };
    let request = match asked {
        Asked::Counted(n) => format!("this request of {n} {unit}"),
        Asked::Expected { about, left } => format!(
            "it may send {left} {unit} now, and a request of this size has held about \
             {about:.0} {unit}, so this request"
        ),
        Asked::UsedUp => "its allowance is used up, so this request".to_string(),
    };
    QuotaExceeded {
        quota,
        limit: rate,
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        message: format!(
            "tenant {tenant} is over its quota {quota} ({rate} {unit}/s): {request} was not \
             accepted; retry after the delay in Retry-After"
        ),
        rate: state,
    }
}

fn seconds_to_midnight() -> u64 {
    let now = chrono::Utc::now();
    let tomorrow = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    tomorrow.map_or(3600, |t| (t - now).num_seconds().max(1) as u64)
}
