//! Query memory: each query's pool (`query.memory_limit_bytes`) draws from one budget that all
//! running queries share (`query.memory_total_bytes`), split fairly between tenants.
//!
//! The rule of the shared budget: a tenant may always grow up to its share (the budget divided
//! by the tenants that have queries running); past its share it may borrow what nobody else is
//! waiting for. A query that finds the budget held by others waits (up to `query.memory_wait_ms`,
//! on its own thread: see `trino::query`) while the tenants over their share are refused any
//! further growth, fail or spill, and give memory back. Whoever is refused gets DataFusion's
//! `ResourcesExhausted`, which the protocol answers as `EXCEEDED_MEMORY_LIMIT`.
//!
//! Memory that DataFusion does not account for is brought under the same pools by the engine:
//! values made by functions (`functions::bounded`), the values expressions make ([`guard`], put
//! into plans by [`checks`]), the copies aggregates make when they finish ([`copies`]) and of
//! the grouping keys and kept values they are given ([`group_keys`], with the arguments they
//! keep computed below them: [`aggregate_args`]), the values windows' aggregates hand out
//! ([`window_values`]), batches in flight ([`claims`]), and the pages a client has not fetched
//! yet.

pub mod aggregate_args;
pub mod checks;
pub mod claims;
pub mod copies;
pub mod group_keys;
pub mod guard;
mod moved;
pub mod unnest_pieces;
pub mod window_args;
pub mod window_values;

/// A session whose memory is `pool`: window functions' arguments computed below their windows
/// ([`window_args`]), and the arguments aggregates keep below their aggregations
/// ([`aggregate_args`]), and the values their aggregates hand out counted ([`window_values`]), its
/// physical optimizer with the size checks first ([`checks`]) and
/// `unnest`'s input cut into pieces last ([`unnest_pieces`]), the pool in its configuration
/// for the plans it runs ([`claims::held`]), the rest of `builder` as it is. Its context then
/// needs [`bound_functions`]. The pool serves one plan: the size checks end its planning.
pub fn with_size_checks(
    mut builder: datafusion::execution::session_state::SessionStateBuilder,
    pool: &Arc<QueryPool>,
) -> datafusion::execution::session_state::SessionStateBuilder {
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    builder
        .config()
        .get_or_insert_with(Default::default)
        .set_extension(pool.clone());
    builder
        .with_optimizer_rule(Arc::new(window_args::WindowArguments))
        .with_optimizer_rule(Arc::new(aggregate_args::AggregateArguments))
        .with_optimizer_rule(Arc::new(window_values::WindowValues))
        .with_physical_optimizer_rules(
            std::iter::once(Arc::new(checks::SizeChecks::for_pool(pool.clone())) as Arc<_>)
                .chain(PhysicalOptimizer::new().rules)
                .chain(std::iter::once(
                    Arc::new(unnest_pieces::UnnestPieces) as Arc<_>
                ))
                .collect(),
        )
}

/// The growing functions of `ctx` bounded by `pool`, folding no value over `folded_at_most`
/// bytes while planning (`functions::bounded`), the calls whose steps or compiled patterns
/// outgrow their arguments run in pieces that stop with the query (`functions::pieces`), and
/// its aggregates counted with their copies ([`copies`]).
pub fn bound_functions(
    ctx: &datafusion::prelude::SessionContext,
    pool: &Arc<QueryPool>,
    folded_at_most: usize,
) {
    crate::functions::bounded::register(ctx, pool, folded_at_most);
    crate::functions::pieces::register(ctx, pool);
    copies::register(ctx);
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};

/// The memory all queries of a process share.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    total: usize,
    wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    used: usize,
    tenants: HashMap<String, TenantUse>,
}

#[derive(Debug, Default)]
struct TenantUse {
    used: usize,
    /// Query pools alive: the tenant counts for the shares while it has one.
    queries: usize,
    /// Queries of the tenant waiting for memory.
    waiting: usize,
}

impl State {
    fn share(&self, total: usize) -> usize {
        let active = self.tenants.values().filter(|t| t.queries > 0).count();
        total / active.max(1)
    }

    /// Whether another tenant than `tenant` waits for memory.
    fn others_wait(&self, tenant: &str) -> bool {
        self.tenants
            .iter()
            .any(|(name, t)| name != tenant && t.waiting > 0)
    }
}

impl Budget {
    pub fn new(total: usize, wait: Duration) -> Budget {
        Budget {
            inner: Arc::new(Shared {
                total,
                wait,
                state: Mutex::new(State::default()),
                freed: Condvar::new(),
            }),
        }
    }

    /// The pool of one query of `tenant`, which may hold `limit` bytes at most.
    pub fn query_pool(&self, tenant: &str, limit: usize) -> Arc<QueryPool> {
        self.pool_limited_by(tenant, limit, "query.memory_limit_bytes")
    }

    /// A pool of `tenant` that may hold `limit` bytes at most, the setting named `key`.
    pub fn pool_limited_by(&self, tenant: &str, limit: usize, key: &'static str) -> Arc<QueryPool> {
        self.inner
            .lock()
            .tenants
            .entry(tenant.to_string())
            .or_default()
            .queries += 1;
        Arc::new(QueryPool {
            budget: self.inner.clone(),
            tenant: tenant.to_string(),
            limit,
            key,
            used: AtomicUsize::new(0),
            peak: Arc::default(),
            planning: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
        })
    }

    /// Bytes held by all queries.
    pub fn used(&self) -> usize {
        self.inner.lock().used
    }

    /// Bytes held by `tenant`'s queries.
    pub fn used_by(&self, tenant: &str) -> usize {
        self.inner.lock().tenants.get(tenant).map_or(0, |t| t.used)
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes` for `tenant`, waiting for others to give memory back when the budget is
    /// held by tenants over their share.
    fn take(&self, tenant: &str, bytes: usize) -> Result<()> {
        let until = Instant::now() + self.wait;
        // Declared before the lock so that the CPU slot is taken again after the lock is gone.
        let mut aside = None;
        let mut state = self.lock();
        let mut waiting = false;
        let outcome = loop {
            let share = state.share(self.total);
            let mine = state.tenants.get(tenant).map_or(0, |t| t.used);
            let fits = state.used + bytes <= self.total;
            let within_share = mine + bytes <= share;
            if fits && (within_share || !state.others_wait(tenant)) {
                break Ok(());
            }
            if !within_share {
                break Err(exhausted(format!(
                    "Query exceeded the memory its tenant may hold while other tenants' queries \
                     run: {share} bytes of query.memory_total_bytes ({}), shared by the tenants \
                     with queries running",
                    self.total
                )));
            }
            let now = Instant::now();
            if now >= until {
                break Err(exhausted(format!(
                    "Query found the server's query memory (query.memory_total_bytes, {} \
                     bytes) in use for {:?}; retry when fewer queries run",
                    self.total, self.wait
                )));
            }
            if !waiting {
                waiting = true;
                state.tenants.entry(tenant.to_string()).or_default().waiting += 1;
                aside = Some(crate::cpu::StepAside::new());
            }
            state = self
                .freed
                .wait_timeout(state, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        if waiting && let Some(t) = state.tenants.get_mut(tenant) {
            t.waiting -= 1;
        }
        if outcome.is_ok() {
            state.used += bytes;
            state.tenants.entry(tenant.to_string()).or_default().used += bytes;
        }
        drop(state);
        drop(aside);
        outcome
    }

    /// Takes `bytes` whatever the budget (DataFusion's infallible `grow`).
    fn force(&self, tenant: &str, bytes: usize) {
        let mut state = self.lock();
        state.used += bytes;
        state.tenants.entry(tenant.to_string()).or_default().used += bytes;
    }

    fn give_back(&self, tenant: &str, bytes: usize) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(bytes);
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.used = t.used.saturating_sub(bytes);
        }
        drop(state);
        self.freed.notify_all();
    }
}

fn exhausted(message: String) -> DataFusionError {
    DataFusionError::ResourcesExhausted(message)
}

/// The part of a query's limit (one in this many) that operators able to spill leave to what
/// cannot: the values expressions make, batches in flight, pages not fetched.
const SPILL_HEADROOM: usize = 8;

/// One query's memory: at most its limit, drawn from the shared [`Budget`].
#[derive(Debug)]
pub struct QueryPool {
    budget: Arc<Shared>,
    tenant: String,
    limit: usize,
    /// The setting `limit` comes from, named when it refuses.
    key: &'static str,
    used: AtomicUsize,
    /// The most it has held at once (Trino's `peakMemoryBytes`), kept past the pool.
    peak: Arc<AtomicU64>,
    /// Until the physical plan is made: constants are being folded (see `guard`).
    planning: AtomicBool,
    /// The query has stopped (its time limit, its client gone, an error): functions that run
    /// long calls in pieces run no further piece (`functions::pieces`).
    stopped: AtomicBool,
}

impl QueryPool {
    /// Whether the query is still being planned logically (constant folding runs functions
    /// with nothing counting what they make; see `guard`).
    pub fn planning(&self) -> bool {
        self.planning.load(Ordering::Relaxed)
    }

    /// Logical planning is over: values are made while the query runs, counted.
    pub fn planned(&self) {
        self.planning.store(false, Ordering::Relaxed);
    }

    /// The query has stopped: its work ends at its next yield, and long calls at their next
    /// piece ([`QueryPool::stopped`]).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether [`QueryPool::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` that no DataFusion operator accounts for (a value being made, a page
    /// waiting for its client); refused like an operator's reservation.
    pub fn try_take(&self, bytes: usize, what: &str) -> Result<()> {
        self.try_take_within(self.limit, bytes, what)
    }

    /// [`QueryPool::try_take`], refused past `limit` (at most the query's own).
    fn try_take_within(&self, limit: usize, bytes: usize, what: &str) -> Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(bytes) > limit {
            return Err(exhausted(format!(
                "Query exceeded the per-query memory limit of {} bytes \
                 ({}): {what} needs {bytes} bytes, {used} already held",
                self.limit, self.key
            )));
        }
        self.budget.take(&self.tenant, bytes)?;
        self.held_more(bytes);
        Ok(())
    }

    /// Takes `bytes` whatever the limits: memory that is in use already (DataFusion's
    /// infallible `grow`, a value claimed when it was made: `claims`).
    pub fn force(&self, bytes: usize) {
        self.held_more(bytes);
        self.budget.force(&self.tenant, bytes);
    }

    fn held_more(&self, bytes: usize) {
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now as u64, Ordering::Relaxed);
    }

    /// The most the query has held at once, as it grows (it outlives the pool).
    pub fn peak(&self) -> Arc<AtomicU64> {
        self.peak.clone()
    }

    /// The most the query may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Gives back bytes taken with [`QueryPool::try_take`] or [`QueryPool::force`].
    pub fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.budget.give_back(&self.tenant, bytes);
    }
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        let left = self.used.swap(0, Ordering::Relaxed);
        let mut state = self.budget.lock();
        state.used = state.used.saturating_sub(left);
        let gone = match state.tenants.get_mut(&self.tenant) {
            Some(t) => {
                t.used = t.used.saturating_sub(left);
                t.queries = t.queries.saturating_sub(1);
                t.queries == 0 && t.waiting == 0 && t.used == 0
            }
            None => false,
        };
        if gone {
            state.tenants.remove(&self.tenant);
        }
        drop(state);
        // One tenant fewer: the others' shares grew.
        self.budget.freed.notify_all();
    }
}

impl MemoryPool for QueryPool {
    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.force(additional);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.give_back(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let consumer = reservation.consumer();
        // An operator that can spill does so when refused, and goes on: it stops short of the
        // limit by `SPILL_HEADROOM`, so that the values and batches counted beside it (which
        // cannot spill) find room, rather than failing the query while it could have spilled.
        let limit = match consumer.can_spill() {
            true => self.limit - self.limit / SPILL_HEADROOM,
            false => self.limit,
        };
        self.try_take_within(limit, additional, consumer.name())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A session as a query's: its pool of `limit` bytes (on a budget of four times that),
    /// the size checks and the bounded functions (folding at most 1 MiB).
    pub(crate) fn query_session(
        limit: usize,
    ) -> (datafusion::prelude::SessionContext, Arc<QueryPool>) {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        use datafusion::execution::session_state::SessionStateBuilder;
        let pool = Budget::new(4 * limit, Duration::ZERO).query_pool("t", limit);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()
            .unwrap();
        let state = SessionStateBuilder::new()
            .with_runtime_env(runtime)
            .with_default_features();
        let ctx = datafusion::prelude::SessionContext::new_with_state(
            with_size_checks(state, &pool).build(),
        );
        bound_functions(&ctx, &pool, MIB);
        (ctx, pool)
    }

    /// Runs `sql` as a query runs (`claims::held`): its one value, a 64-bit integer.
    pub(crate) async fn one_value(
        ctx: &datafusion::prelude::SessionContext,
        sql: &str,
    ) -> Result<i64> {
        use arrow::array::AsArray;
        let df = ctx.sql(sql).await?;
        let task = Arc::new(df.task_ctx());
        let plan = claims::held(df.create_physical_plan().await?)?;
        let batches = datafusion::physical_plan::collect(plan, task).await?;
        Ok(batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0))
    }

    /// A [`query_session`] whose table `t` holds six batches of 32 rows: `s`, a short text
    /// (`u-{batch}-{row}`), and with `wide`, `w`, a text of 1 MiB (about 32 MiB a batch).
    pub(crate) fn session_over_texts(
        limit: usize,
        wide: bool,
    ) -> (datafusion::prelude::SessionContext, Arc<QueryPool>) {
        use arrow::array::{ArrayRef, StringArray};
        use arrow::record_batch::RecordBatch;
        let (ctx, pool) = query_session(limit);
        let batches = (0..6)
            .map(|b| {
                let s: ArrayRef = Arc::new(StringArray::from_iter_values(
                    (0..32).map(|i| format!("u-{b}-{i}")),
                ));
                let w: ArrayRef = Arc::new(StringArray::from_iter_values(
                    (0..32).map(|i| format!("{b}-{i}-{}", "x".repeat(MIB))),
                ));
                let columns = match wide {
                    true => vec![("s", s), ("w", w)],
                    false => vec![("s", s)],
                };
                RecordBatch::try_from_iter(columns).unwrap()
            })
            .collect::<Vec<_>>();
        let table =
            datafusion::datasource::MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        (ctx, pool)
    }

    #[test]
    fn a_query_stops_at_its_own_limit() {
        let budget = Budget::new(100 * MIB, Duration::ZERO);
        let pool = budget.query_pool("a", 10 * MIB);
        pool.try_take(8 * MIB, "x").unwrap();
        let e = pool.try_take(4 * MIB, "x").unwrap_err();
        assert!(e.to_string().contains("query.memory_limit_bytes"), "{e}");
        pool.give_back(8 * MIB);
        pool.try_take(10 * MIB, "x").unwrap();
        drop(pool);
        assert_eq!(budget.used(), 0, "a dropped pool gives everything back");
    }

    #[test]
    fn operators_that_spill_leave_room_for_what_cannot() {
        use datafusion::execution::memory_pool::MemoryConsumer;
        let budget = Budget::new(100 * MIB, Duration::ZERO);
        let pool: Arc<dyn MemoryPool> = budget.query_pool("a", 16 * MIB);
        let sort = MemoryConsumer::new("sort")
            .with_can_spill(true)
            .register(&pool);
        let value = MemoryConsumer::new("value").register(&pool);
        // The sort is refused (and spills) at 14 MiB, seven eighths of the limit ...
        sort.try_grow(14 * MIB).unwrap();
        let e = sort.try_grow(MIB).unwrap_err();
        assert!(e.to_string().contains("query.memory_limit_bytes"), "{e}");
        // ... where a value that cannot spill still finds room, up to the limit.
        value.try_grow(2 * MIB).unwrap();
        value.try_grow(1).unwrap_err();
    }

    #[test]
    fn a_lone_tenant_may_use_the_whole_budget_but_not_more() {
        let budget = Budget::new(30 * MIB, Duration::ZERO);
        let pools: Vec<_> = (0..4).map(|_| budget.query_pool("a", 10 * MIB)).collect();
        for p in &pools[..3] {
            p.try_take(10 * MIB, "x").unwrap();
        }
        let e = pools[3].try_take(MIB, "x").unwrap_err();
        assert!(e.to_string().contains("query.memory_total_bytes"), "{e}");
    }

    #[test]
    fn a_tenant_over_its_share_is_refused_while_another_waits_and_the_other_then_gets_memory() {
        let budget = Budget::new(40 * MIB, Duration::from_secs(5));
        let hog: Vec<_> = (0..4).map(|_| budget.query_pool("hog", 10 * MIB)).collect();
        for p in &hog {
            p.try_take(10 * MIB, "x").unwrap();
        }
        assert_eq!(budget.used_by("hog"), 40 * MIB);
        // b arrives: the budget is full, b is within its share (20 MiB): b waits.
        let b = budget.query_pool("b", 10 * MIB);
        let waiter = std::thread::spawn(move || {
            let r = b.try_take(8 * MIB, "x");
            (r.is_ok(), b)
        });
        while budget
            .inner
            .lock()
            .tenants
            .get("b")
            .map_or(0, |t| t.waiting)
            == 0
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // While b waits, the hog may not grow, even by a byte freed elsewhere.
        hog[0].give_back(MIB);
        let e = hog[0].try_take(MIB, "x").unwrap_err();
        assert!(e.to_string().contains("other tenants"), "{e}");
        // A hog query that ends gives b its memory.
        drop(hog.into_iter().next());
        let (ok, b) = waiter.join().unwrap();
        assert!(ok, "b got memory once the hog gave some back");
        assert_eq!(budget.used_by("b"), 8 * MIB);
        drop(b);
    }

    #[test]
    fn a_waiting_query_gives_up_after_the_wait() {
        let budget = Budget::new(20 * MIB, Duration::from_millis(50));
        let hog = budget.query_pool("hog", 20 * MIB);
        hog.try_take(20 * MIB, "x").unwrap();
        let b = budget.query_pool("b", 10 * MIB);
        let e = b.try_take(MIB, "x").unwrap_err();
        assert!(e.to_string().contains("retry"), "{e}");
        assert_eq!(budget.inner.lock().tenants["b"].waiting, 0);
    }
}
