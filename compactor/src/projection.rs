//! Keeping each tenant's projections (read models) up to date with its `events`.
//!
//! After every commit to a tenant's `events` made in this process (a catalog commit hook), the
//! tenant is marked; [`Refresher::run`] refreshes marked tenants one at a time, at most once
//! per `projection.min_interval_ms` each, so commits arriving meanwhile are reflected together.
//! On start it refreshes every tenant once (commits made while it was down).
//!
//! A refresh reads what changed since the snapshot of `events` the projection records
//! ([`floe_catalog::delta`]): files appended since are read (only their `user_id` column) into
//! the days kept in memory ([`users`]); days re-opened by retention or erasure, and days not in
//! memory, are read whole from `events` as it is now. The rows of every day the change can
//! reach are recomputed from those days, and the table is rewritten in one commit fenced on
//! the recorded source: if another process refreshed it meanwhile, the days kept are dropped
//! and the refresh starts again from the new source. If the recorded snapshot is no longer in
//! the history of `events` (expired), the projection is recomputed from all of `events`.
//!
//! The cost of a refresh follows the new files, not the size of their days: a day's users
//! are read once, then kept.

pub mod day;
mod defined;
mod files;
mod replay;
mod rows;
mod sharing;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use floe_catalog::config::ProjectionConfig;
use floe_catalog::delta::{Delta, DeltaFile};
use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::projection::{
    Defined, ProjectionCommit, ProjectionOutcome, Redefinition, SourceRef, source_of,
};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Catalog, Config, TenantId};

use crate::{Error, Result};
use rows::Computed;

/// A projection being refreshed.
struct Target {
    name: &'static str,
    computed: Computed,
    table: iceberg::table::Table,
}

/// Attempts of one refresh lost to other refreshes of the same projection before it gives up
/// (the tenant stays marked). With refresh leases, losing at all means a lease ran out under
/// a slow holder, so a few attempts are plenty.
const FENCED_ATTEMPTS: u32 = 3;

/// What one refresh of a tenant did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// The `events` snapshot the projections now reflect (`None`: `events` has none).
    pub source: Option<i64>,
    /// Projections committed.
    pub committed: usize,
    /// Files of `events` read: appended ones, and the files of days read whole.
    pub files_read: usize,
    /// Of those, the files whose rows this process kept when it wrote them (not read from
    /// storage: `projection.written_rows_bytes`).
    pub files_kept: usize,
    /// Days with events read whole from `events` (not in memory, or re-opened).
    pub days_read: usize,
    /// The whole projection was recomputed (never refreshed, or its source expired).
    pub full: bool,
    /// Projections left to another process, which held their refresh lease.
    pub left_to_others: usize,
}

impl Refreshed {
    fn add(&mut self, other: Refreshed) {
        self.source = other.source.or(self.source);
        self.committed += other.committed;
        self.files_read += other.files_read;
        self.files_kept += other.files_kept;
        self.days_read += other.days_read;
        self.full |= other.full;
        self.left_to_others += other.left_to_others;
    }
}

/// Where a refresh's rows go: a projection table, and the definition they follow if it is new
/// (with the schema the table gets with it).
struct Out<'a> {
    name: &'a str,
    table: &'a iceberg::table::Table,
    redefine: Option<(Redefinition, iceberg::spec::Schema)>,
}

impl<'a> Out<'a> {
    fn of(name: &'a str, table: &'a iceberg::table::Table) -> Out<'a> {
        Out {
            name,
            table,
            redefine: None,
        }
    }
}

/// Refreshes projections; cheap to clone (clones share their state).
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    /// Who holds the refresh leases this refresher takes.
    holder: String,
    config: ProjectionConfig,
    /// The SQL guard's limits, for user-defined projections (`query.max_sql_*`).
    limits: floe_query::projection::Limits,
    /// Where user-defined projections' refreshes spill: this process' directory under it
    /// (`<data_dir>/spill`, `floe_query::spill`).
    spill_root: PathBuf,
    /// Tenants with commits not yet reflected.
    marked: Mutex<BTreeSet<String>>,
    /// Tenants with commits their projections do not reflect yet: when the first and the last
    /// of those were marked (the projection lag metric, see [`Refresher::lag_gauges`]).
    pending: Mutex<BTreeMap<String, (Instant, Instant)>>,
    /// Tenants whose pending commits were all reflected since the start (their lag reads 0).
    caught_up: Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    /// Days kept between refreshes (one refresh at a time uses it).
    cache: tokio::sync::Mutex<day::Cache>,
}

impl Refresher {
    pub fn new(catalog: Catalog, config: &Config) -> Refresher {
        let budget = config.projection.state_cache_bytes;
        Refresher {
            inner: Arc::new(Inner {
                catalog,
                holder: floe_catalog::lease::holder_name("refresher"),
                config: config.projection.clone(),
                limits: floe_query::projection::Limits {
                    max_depth: config.query.max_sql_depth,
                    max_operators: config.query.max_sql_operators,
                    max_sql_bytes: config.query.max_sql_bytes,
                },
                spill_root: config.spill_dir(),
                marked: Mutex::new(BTreeSet::new()),
                pending: Mutex::new(BTreeMap::new()),
                caught_up: Mutex::new(BTreeSet::new()),
                wake: tokio::sync::Notify::new(),
                cache: tokio::sync::Mutex::new(day::Cache::new(budget)),
            }),
        }
    }

    /// Marks tenants after each commit to their `events` made through this catalog.
    pub fn listen(&self) {
        // The files this process appends are read back by the next refresh: it takes their
        // rows from memory instead, when they are still there.
        self.inner.catalog.written().want(&day::COLUMNS);
        let weak = Arc::downgrade(&self.inner);
        self.inner
            .catalog
            .on_commit(Arc::new(move |tenant: &TenantId, table: &str| {
                if table != EVENTS_TABLE {
                    return;
                }
                if let Some(inner) = weak.upgrade() {
                    inner.mark(tenant.as_str());
                }
            }));
    }

    /// Marks a tenant to be refreshed.
    pub fn mark(&self, tenant: &TenantId) {
        self.inner.mark(tenant.as_str());
    }

    /// Sets `floe_projection_lag_seconds` of each tenant with a label of its own: how long
    /// its oldest commit not reflected by its projections has waited (0 when none waits).
    /// Run before each scrape, so that a refresher that is stuck shows a growing lag.
    pub fn lag_gauges(&self) {
        use floe_catalog::metrics as m;
        let mut lags: BTreeMap<String, f64> = lock(&self.inner.caught_up)
            .iter()
            .map(|t| (t.clone(), 0.0))
            .collect();
        for (t, (first, _)) in lock(&self.inner.pending).iter() {
            lags.insert(t.clone(), first.elapsed().as_secs_f64());
        }
        for (tenant, secs) in lags {
            let label = m::tenant(&tenant);
            if label != m::OTHER_TENANTS {
                metrics::gauge!(m::PROJECTION_LAG_SECONDS, "tenant" => label).set(secs);
            }
        }
    }

    /// Refreshes marked tenants until `stop` completes; every tenant once at the start.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        match self.inner.catalog.list_tenants().await {
            Ok(tenants) => tenants.iter().for_each(|t| self.inner.mark(&t.id)),
            Err(e) => tracing::warn!(error = %e, "could not list tenants to refresh"),
        }
        let min_interval = Duration::from_millis(self.inner.config.min_interval_ms);
        let mut last: BTreeMap<String, Instant> = BTreeMap::new();
        let mut failed: BTreeMap<String, Instant> = BTreeMap::new();
        let retry_after = Duration::from_millis(self.inner.config.retry_after_ms);
        loop {
            let marked = std::mem::take(&mut *lock(&self.inner.marked));
            let mut waiting = Vec::new();
            for tenant in marked {
                let due = last.get(&tenant).map(|t| *t + min_interval);
                let retry = failed.get(&tenant).map(|t| *t + retry_after);
                let not_before = due.max(retry);
                if not_before.is_some_and(|t| t > Instant::now()) {
                    waiting.push(tenant);
                    continue;
                }
                let started = Instant::now();
                last.insert(tenant.clone(), started);
                let Ok(id) = TenantId::parse(&tenant) else {
                    continue;
                };
                let refresh = self.refresh_tenant(&id);
                tokio::select! {
                    _ = &mut stop => return,
                    done = refresh => match done {
                        Ok(r) => {
                            failed.remove(&tenant);
                            tracing::debug!(%tenant, ?r, "projections refreshed");
                            if r.left_to_others == 0 {
                                self.inner.reflected(&tenant, Some(started));
                            }
                        }
                        Err(e) if e.kind() == floe_catalog::ErrorKind::NotFound => {
                            // The tenant was deleted.
                            self.inner.cache.lock().await.forget(&tenant);
                            self.inner.reflected(&tenant, None);
                        }
                        Err(e) => {
                            tracing::warn!(%tenant, error = %e, "projection refresh failed; retrying");
                            failed.insert(tenant.clone(), Instant::now());
                            waiting.push(tenant);
                        }
                    }
                }
            }
            let next = {
                let mut marked = lock(&self.inner.marked);
                marked.extend(waiting);
                let wait_until = marked
                    .iter()
                    .filter_map(|t| {
                        let due = last.get(t).map(|l| *l + min_interval);
                        let retry = failed.get(t).map(|f| *f + retry_after);
                        due.max(retry)
                    })
                    .min();
                (marked.is_empty(), wait_until)
            };
            match next {
                (true, _) => {
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = self.inner.wake.notified() => {}
                    }
                }
                (false, until) => {
                    let until = until.unwrap_or_else(Instant::now);
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep_until(until.into()) => {}
                    }
                }
            }
        }
    }

    /// Brings the tenant's projections up to date with its `events` as they are now.
    ///
    /// Projections whose refresh lease another process holds are left to it; the tenant stays
    /// marked, so what this process committed is reflected once the lease is free.
    pub async fn refresh_tenant(&self, tenant: &TenantId) -> Result<Refreshed> {
        let catalog = &self.inner.catalog;
        let builtins = catalog.ensure_builtin_projections(tenant).await?;
        let names: Vec<&'static str> = builtins.iter().map(|b| b.name).collect();
        let defined = catalog.defined_projections(tenant).await?;
        if names.is_empty() && defined.is_empty() {
            return Ok(Refreshed::default());
        }
        // One refresh at a time: the days kept are shared by all tenants.
        let mut cache = self.inner.cache.lock().await;
        let all = names
            .iter()
            .copied()
            .chain(defined.iter().map(|d| d.name.as_str()));
        let held = self.hold(tenant, all).await?;
        let names: Vec<&'static str> = names.into_iter().filter(|n| held.has(n)).collect();
        let defined: Vec<Defined> = defined.into_iter().filter(|d| held.has(&d.name)).collect();
        if held.skipped > 0 {
            self.inner.mark(tenant.as_str());
        }
        let skipped = held.skipped;
        let done = self
            .refresh_held(tenant, &names, &defined, &mut cache)
            .await;
        self.release(tenant, held).await;
        done.map(|d| Refreshed {
            left_to_others: skipped,
            ..d
        })
    }

    /// [`Refresher::refresh_tenant`], waiting (up to `projection.lease_secs`) for projections
    /// another process is refreshing, until this process has refreshed every one: an erasure
    /// must see each projection follow it before it expires the snapshots that held the users.
    pub async fn refresh_tenant_wholly(&self, tenant: &TenantId) -> Result<Refreshed> {
        let config = &self.inner.config;
        let deadline = Instant::now() + Duration::from_secs(config.lease_secs);
        let pause = Duration::from_millis(config.min_interval_ms.max(50));
        loop {
            let done = self.refresh_tenant(tenant).await?;
            if done.left_to_others == 0 {
                return Ok(done);
            }
            if Instant::now() >= deadline {
                return Err(Error::KeptChanging {
                    table: format!("{tenant} projections"),
                    what: "other processes kept their refresh leases",
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn refresh_held(
        &self,
        tenant: &TenantId,
        names: &[&'static str],
        defined: &[Defined],
        cache: &mut day::Cache,
    ) -> Result<Refreshed> {
        if names.is_empty() && defined.is_empty() {
            return Ok(Refreshed::default());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.refresh_once(tenant, names, defined, cache).await;
            cache.shrink();
            match outcome {
                Ok(Some(done)) => return Ok(done),
                Ok(None) if attempt < FENCED_ATTEMPTS => {
                    tracing::debug!(%tenant, "another refresh committed first; starting again");
                }
                Ok(None) => {
                    self.inner.mark(tenant.as_str());
                    return Err(Error::KeptChanging {
                        table: format!("{tenant} projections"),
                        what: "other refreshes kept committing first",
                    });
                }
                Err(e) => {
                    cache.forget(tenant.as_str());
                    return Err(e);
                }
            }
        }
    }

    /// One refresh of the projections `names`; `None`: one was fenced by another refresh.
    ///
    /// Projections reflecting the same source are refreshed together from one delta. Normally
    /// all do; one just switched on (no source) is recomputed on its own, without the days
    /// kept (they stay with the others' source).
    async fn refresh_once(
        &self,
        tenant: &TenantId,
        names: &[&'static str],
        defined: &[Defined],
        cache: &mut day::Cache,
    ) -> Result<Option<Refreshed>> {
        let catalog = &self.inner.catalog;
        let mut groups: BTreeMap<Option<i64>, Vec<Target>> = BTreeMap::new();
        for name in names {
            let Some(computed) = Computed::of(name) else {
                continue;
            };
            let table = catalog.load_table(tenant, name).await?;
            let source = source_of(table.metadata())?.map(|s| s.snapshot_id);
            groups.entry(source).or_default().push(Target {
                name,
                computed,
                table,
            });
        }
        let kept_as_of = cache.tenant(tenant.as_str()).as_of;
        let main = if groups.contains_key(&kept_as_of) {
            kept_as_of
        } else {
            groups
                .iter()
                .max_by_key(|(_, targets)| targets.len())
                .and_then(|(source, _)| *source)
        };
        let mut done = Refreshed::default();
        for (source, targets) in groups {
            let shared = source == main;
            let mut days = if shared {
                cache.take(tenant.as_str())
            } else {
                day::TenantDays::default()
            };
            let outcome = self
                .refresh_group(tenant, source, &targets, &mut days)
                .await;
            if shared {
                let touched: Vec<i32> = days.days.keys().copied().collect();
                cache.put(tenant.as_str(), days);
                cache.touch(tenant.as_str(), touched);
            }
            match outcome? {
                Some(group) => done.add(group),
                None => {
                    cache.forget(tenant.as_str());
                    return Ok(None);
                }
            }
        }
        for d in defined {
            match self.refresh_defined(tenant, d, None).await? {
                Some(one) => done.add(one),
                None => return Ok(None),
            }
        }
        Ok(Some(done))
    }

    /// Refreshes projections that all reflect `source`, from the changes to `events` since,
    /// with `kept` the days kept (trusted only if as of `source`); `None`: fenced.
    async fn refresh_group(
        &self,
        tenant: &TenantId,
        source: Option<i64>,
        targets: &[Target],
        kept: &mut day::TenantDays,
    ) -> Result<Option<Refreshed>> {
        let catalog = &self.inner.catalog;
        let store = catalog.data_store();
        let (to, added, reopened, full) = match catalog.raw_delta(tenant, source).await? {
            Delta::Changes(d) => {
                let Some(to) = up_to(&d, source) else {
                    return Ok(Some(Refreshed {
                        source: d.to,
                        ..Refreshed::default()
                    }));
                };
                (to, d.added, d.reopened, source.is_none())
            }
            Delta::Gap { why } => {
                tracing::info!(%tenant, why, "recomputing projections from all events");
                let events = catalog.load_table(tenant, EVENTS_TABLE).await?;
                let Some(current) = events.metadata().current_snapshot() else {
                    return Ok(Some(Refreshed::default()));
                };
                (SourceRef::of(current), Vec::new(), BTreeSet::new(), true)
            }
        };
        if full {
            kept.days.clear();
            kept.as_of = None;
            let Some((done, window)) = self.replay(tenant, source, to, targets).await? else {
                return Ok(None);
            };
            kept.days = window;
            kept.as_of = Some(to.snapshot_id);
            return Ok(Some(done));
        }
        let mut done = Refreshed {
            source: Some(to.snapshot_id),
            ..Refreshed::default()
        };
        if kept.as_of != source {
            kept.days.clear();
        }
        kept.as_of = None; // Until the days reach `to`.
        // Re-opened days are read again whole; so are days kept with their users only, when
        // new rows come for them.
        for d in reopened.iter().chain(added.iter().map(|f| &f.day)) {
            if reopened.contains(d) || kept.days.get(d).is_some_and(|k| k.partial) {
                kept.days.remove(d);
            }
        }
        // The days that changed; each projection recomputes the days its rows can change in.
        let touched: BTreeSet<i32> = added
            .iter()
            .map(|f| f.day)
            .chain(reopened.iter().copied())
            .collect();
        let own = |computed: Computed| -> BTreeSet<i32> {
            touched
                .iter()
                .flat_map(|d| *d..=*d + computed.reach())
                .collect()
        };
        let needed: BTreeSet<i32> = targets
            .iter()
            .flat_map(|t| {
                let back = t.computed.looks_back();
                own(t.computed).into_iter().flat_map(move |d| d - back..=d)
            })
            .collect();
        // Days kept are as of `source`: apply what was appended to them since. Days not kept
        // are read whole as of `to` (which includes what was appended).
        let missing: BTreeSet<i32> = needed
            .iter()
            .filter(|d| !kept.days.contains_key(d))
            .copied()
            .collect();
        let appended: Vec<DeltaFile> = added
            .into_iter()
            .filter(|f| kept.days.contains_key(&f.day))
            .collect();
        if !appended.is_empty() {
            done.files_kept +=
                day::apply_files(store, catalog.written(), &appended, &mut kept.days).await?;
            done.files_read += appended.len();
        }
        if !missing.is_empty() {
            let files = catalog
                .day_files(tenant, to.snapshot_id, Some(missing.clone()))
                .await?;
            done.files_read += files.len();
            let mut read: BTreeMap<i32, day::Day> =
                missing.iter().map(|d| (*d, day::Day::default())).collect();
            done.files_kept +=
                day::apply_files(store, catalog.written(), &files, &mut read).await?;
            done.days_read += read.values().filter(|d| d.events > 0).count();
            kept.days.extend(read);
        }
        kept.as_of = Some(to.snapshot_id);

        for target in targets {
            let own = own(target.computed);
            let schema = files::arrow_schema(&target.table)?;
            let rows = target.computed.rows(&kept.days, &own, schema)?;
            let committed = self
                .commit(
                    tenant,
                    Out::of(target.name, &target.table),
                    vec![rows],
                    Some(own),
                    source,
                    to,
                )
                .await;
            match committed {
                Ok(true) => done.committed += 1,
                Ok(false) => {
                    kept.as_of = None;
                    return Ok(None);
                }
                Err(e) => {
                    kept.as_of = None;
                    return Err(e);
                }
            }
        }
        Ok(Some(done))
    }

    /// Commits `rows` as the rows of the days `days` of a projection (`None`: all its rows),
    /// fenced on `expected` and recording `to`; `false`: fenced (nothing committed).
    async fn commit(
        &self,
        tenant: &TenantId,
        out: Out<'_>,
        rows: Vec<RecordBatch>,
        days: Option<BTreeSet<i32>>,
        expected: Option<i64>,
        to: SourceRef,
    ) -> Result<bool> {
        let catalog = &self.inner.catalog;
        let Out {
            name,
            table,
            redefine,
        } = out;
        let schema = match &redefine {
            Some((_, schema)) => Arc::new(schema.clone()),
            None => table.metadata().current_schema().clone(),
        };
        let arrow = files::arrow_of(&schema)?;
        let rows = concat_batches(&arrow, &rows)
            .map_err(|e| Error::Invalid(format!("rows of {name}: {e}")))?;
        let whole = days.is_none();
        let changed = days.clone().unwrap_or_default();
        let added = files::files_for(table, &schema, catalog, rows, &changed, whole).await?;
        let paths: Vec<String> = added.iter().map(|f| f.file_path().to_string()).collect();
        let partitioned = !table.metadata().default_partition_spec().is_unpartitioned();
        let commit = ProjectionCommit {
            expected_source: expected,
            source: to,
            // A table of one file replaces it whole either way.
            days: days.filter(|_| partitioned),
            added,
            redefine,
        };
        match catalog.commit_projection(tenant, name, commit).await {
            Ok(ProjectionOutcome::Committed { .. }) => {
                self.expire(tenant, name).await;
                Ok(true)
            }
            Ok(ProjectionOutcome::Fenced { .. } | ProjectionOutcome::KeptLosing { .. }) => {
                self.delete(&paths).await;
                Ok(false)
            }
            Err(e) => {
                crate::after_failed_commit(catalog, tenant, name, &paths, &e).await;
                Err(e.into())
            }
        }
    }

    /// Expires the projection's snapshots past `projection.snapshot_max_age_secs` once there
    /// are enough of them to be worth a commit (a refresh commits every few hundred ms on a
    /// busy tenant, and each snapshot kept makes every commit's metadata file bigger).
    async fn expire(&self, tenant: &TenantId, table: &str) {
        let catalog = &self.inner.catalog;
        let max_age = Duration::from_secs(self.inner.config.snapshot_max_age_secs);
        let Ok(t) = catalog.load_table(tenant, table).await else {
            return;
        };
        let oldest_kept = chrono::Utc::now().timestamp_millis() - max_age.as_millis() as i64;
        let old = t
            .metadata()
            .snapshots()
            .filter(|s| s.timestamp_ms() < oldest_kept)
            .count();
        let keep = self.inner.config.keep_snapshots as usize;
        if old < keep {
            return;
        }
        let policy = ExpirePolicy {
            max_age,
            min_snapshots: keep,
            keep_from_sequence: None,
        };
        if let Err(e) = catalog.expire_snapshots(tenant, table, policy, false).await {
            tracing::warn!(%tenant, table, error = %e, "could not expire projection snapshots");
        }
    }

    async fn delete(&self, paths: &[String]) {
        crate::delete_uncommitted(&self.inner.catalog, paths).await;
    }
}

/// Where a delta leads, unless that is where the projection already is (or `events` has no
/// snapshot): nothing to do then.
fn up_to(delta: &floe_catalog::delta::RawDelta, source: Option<i64>) -> Option<SourceRef> {
    delta.source().filter(|to| Some(to.snapshot_id) != source)
}

impl Inner {
    fn mark(&self, tenant: &str) {
        lock(&self.marked).insert(tenant.to_string());
        let now = Instant::now();
        lock(&self.pending)
            .entry(tenant.to_string())
            .or_insert((now, now))
            .1 = now;
        self.wake.notify_one();
    }

    /// The tenant's projections reflect every commit marked before `started` (`None`: the
    /// tenant is gone); a commit marked since is still pending, from its mark.
    fn reflected(&self, tenant: &str, started: Option<Instant>) {
        let mut pending = lock(&self.pending);
        match (pending.get_mut(tenant), started) {
            (Some((first, last)), Some(started)) if *last > started => *first = *last,
            (_, started) => {
                pending.remove(tenant);
                if started.is_some() {
                    lock(&self.caught_up).insert(tenant.to_string());
                } else {
                    lock(&self.caught_up).remove(tenant);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
