//! A query's life: started on threads of its own, answered page by page, reaped when its client
//! stops fetching.
//!
//! Each query plans and runs on its own thread with a small runtime (one worker per partition),
//! away from the threads that serve HTTP and from other queries: a plan step that does not
//! yield for seconds (a big nested-loop join) delays nobody else, and the OS shares the cores.
//! Batches come back through a bounded channel, so a client that reads slowly holds at most two
//! batches in memory; when the client goes away (or a limit stops the query), the channel
//! closes and the work stops at its next yield. The tenant's slot is given back only when the
//! thread's work has stopped and the query is gone (its last page fetched, cancelled, or
//! reaped): results waiting for their client hold it.
//!
//! Batches waiting for their client are held in the query's memory pool until their rows are
//! rendered; a page renders only what fits in it (a batch larger than a page is sliced, its
//! rest kept for the next page). A client that never fetches therefore holds at most the
//! query's memory and one of its tenant's slots. The time limit is a timer on the query's own
//! runtime, whether or not the client fetches; a query is reaped once its client has not
//! fetched for `query.abandoned_after_secs` or [`REAP_AFTER_DEADLINE`] after its time limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_plan::ExecutionPlan;
use floe_catalog::metrics as m;
use floe_catalog::quota::QuerySlot;
use floe_catalog::{TenantId, TenantKey};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::error::{
    EXCEEDED_ROW_LIMIT, NOT_SUPPORTED, QueryError, SERVER_RESOURCES_EXHAUSTED, time_limit,
};
use super::history::{Described, History, Scanned, scanned};
use super::session::Answer;
use super::values::{Progress, column, json_rows, stats};
use super::{Queries, TrinoState, info_uri};
use crate::cpu::SlotTimes;
use crate::memory::QueryPool;
use crate::{Engine, Error, Scope};

/// Stack of query threads: parsing and planning walk expression trees recursively, to the
/// depth `query.max_sql_depth` and `query.max_sql_operators` allow. Unoptimised builds (tests
/// run with `cargo test`) make frames several times larger, so they reserve more (address
/// space; only what is touched becomes memory).
pub const SQL_STACK_BYTES: usize = if cfg!(debug_assertions) {
    128 << 20
} else {
    16 << 20
};

/// A page holds at most `query.page_rows` rows, or about this many bytes.
const PAGE_BYTES: usize = 1 << 20;

/// A query past its time limit is dropped this long after it, fetched or not.
const REAP_AFTER_DEADLINE: Duration = Duration::from_secs(10);

/// What the thread running a plan sends: the schema first, then the batches.
pub(crate) enum Produced {
    Schema(SchemaRef),
    /// A batch, and its bytes held in the query's pool until its page is made.
    Batch(RecordBatch, MemoryReservation),
}

/// Where a query's pages come from.
enum Source {
    /// The plan running on its thread; `None` once it ended or was stopped. Dropping it stops
    /// the thread's work.
    Engine(Option<mpsc::Receiver<Result<Produced, Error>>>),
    /// A result made without the engine (session statements).
    Ready(Answer),
    /// Refused before it ran (limits, permissions).
    Failed(QueryError),
}

/// A query between `POST /v1/statement` and its last page.
pub(crate) struct Run {
    /// The incarnation that ran it: a tenant created again under the id cannot read it.
    pub tenant: TenantKey,
    source: Source,
    /// The columns, once the plan has produced its schema.
    columns: Option<Value>,
    /// The token the next GET must carry; the previous page is kept for a retried GET.
    pub token: u64,
    pub last_page: Option<Page>,
    rows: u64,
    deadline: Instant,
    pub touched: Instant,
    /// Fires when the query's thread has given its tenant slot back.
    released: Option<oneshot::Receiver<()>>,
    /// Set when the query's timer stopped its work.
    timed_out: Arc<AtomicBool>,
    /// The rows of a batch that did not fit on the last page, still held in the query's pool.
    pending: Option<(RecordBatch, MemoryReservation)>,
    /// The tenant's place in `concurrent_queries`, shared with the query's thread: given back
    /// once the work has stopped *and* the query is gone (last page fetched, cancelled or
    /// reaped). Results waiting for their client hold it.
    slot: Option<Arc<QuerySlot>>,
    started: Instant,
    /// Set once the query's end is counted in the metrics.
    ended: bool,
    /// What `GET /v1/query/{id}` shows of it, and where it goes once the query ended.
    described: Option<(Described, Arc<History>)>,
    /// Bytes its plan reads, once planned.
    scanned: Scanned,
    /// Its failure's message and Trino error name.
    error: Option<(String, String)>,
    /// Its steps' time at the query CPU slots, once it runs on the engine.
    times: Option<Arc<SlotTimes>>,
    /// The most its pool has held at once, once it is planned (`QueryPool::peak`).
    peak_memory: Arc<OnceLock<Arc<AtomicU64>>>,
}

impl Run {
    /// Counts the query's end in the metrics (once): `finished`, `failed` or `cancelled`.
    fn end(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let tenant = m::tenant(self.tenant.id().as_str());
        metrics::counter!(m::QUERIES, "tenant" => tenant.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(m::QUERY_SECONDS, "outcome" => outcome)
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!(m::QUERY_ROWS, "tenant" => tenant).increment(self.rows);
        if let Some((mut described, history)) = self.described.take() {
            described.state = match outcome {
                "finished" => "FINISHED",
                "failed" => "FAILED",
                _ => "CANCELED",
            };
            described.ended_at_ms = Some(chrono::Utc::now().timestamp_millis());
            described.rows = self.rows;
            described.scanned_bytes = scanned(&self.scanned);
            described.error = self.error.take();
            described.progress = self.progress();
            history.keep(described);
        }
    }

    /// Describes the query (its SQL text `sql`) while it runs and, once ended, in `history`.
    pub fn describe(&mut self, described: Described, history: Arc<History>) {
        self.described = Some((described, history));
    }

    /// What `GET /v1/query/{id}` shows of it now (`None`: not described).
    pub fn description(&self) -> Option<Described> {
        let (d, _) = self.described.as_ref()?;
        let mut d = d.clone();
        d.state = if self.token == 0 { "QUEUED" } else { "RUNNING" };
        d.rows = self.rows;
        d.scanned_bytes = scanned(&self.scanned);
        d.progress = self.progress();
        Some(d)
    }

    /// Its figures so far, as `stats` reports them.
    fn progress(&self) -> Progress {
        Progress {
            rows: self.rows,
            bytes: scanned(&self.scanned),
            elapsed: self.started.elapsed(),
            cpu: self.times.as_ref().map_or(Duration::ZERO, |t| t.held()),
            waited: self.times.as_ref().map_or(Duration::ZERO, |t| t.waited()),
            peak_memory: self
                .peak_memory
                .get()
                .map_or(0, |peak| peak.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Run {
    /// A query gone before its last page was made was cancelled (or reaped).
    fn drop(&mut self) {
        self.end("cancelled");
    }
}

/// A page of `QueryResults` and the session headers that go with it.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Run {
    fn new(tenant: TenantKey, source: Source, deadline: Instant) -> Run {
        Run {
            tenant,
            source,
            columns: None,
            token: 0,
            last_page: None,
            rows: 0,
            deadline,
            touched: Instant::now(),
            released: None,
            timed_out: Arc::new(AtomicBool::new(false)),
            pending: None,
            slot: None,
            started: Instant::now(),
            ended: false,
            described: None,
            scanned: Scanned::default(),
            error: None,
            times: None,
            peak_memory: Arc::default(),
        }
    }

    /// A query answered without the engine.
    pub fn answered(tenant: TenantKey, answer: Answer, deadline: Instant) -> Run {
        Run::new(tenant, Source::Ready(answer), deadline)
    }

    /// A query refused before it ran.
    pub fn failed(tenant: TenantKey, error: QueryError, deadline: Instant) -> Run {
        Run::new(tenant, Source::Failed(error), deadline)
    }
}

/// What the engine runs for one query.
pub(crate) struct Plan {
    pub engine: Engine,
    pub tenant: TenantId,
    pub scope: Scope,
    pub time_zone: String,
    pub sql: String,
    pub threads: usize,
    /// The query's span (the parent of its plan's and execution's).
    pub span: tracing::Span,
}

/// Starts `plan` on a thread of its own, holding `slot` until its work has stopped and the
/// query is gone.
pub(crate) fn start(tenant: TenantKey, plan: Plan, slot: QuerySlot, deadline: Instant) -> Run {
    let (tx, rx) = mpsc::channel::<Result<Produced, Error>>(2);
    let (released_tx, released) = oneshot::channel::<()>();
    let watch = tx.clone();
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer_fired = timed_out.clone();
    let slot = Arc::new(slot);
    let scanned = slot.clone();
    let total = Scanned::default();
    let counted = total.clone();
    let peak_memory = Arc::<OnceLock<Arc<AtomicU64>>>::default();
    let peak_seen = peak_memory.clone();
    // The query's pool, told when the query stops, so that long calls end at their next piece
    // (not kept alive by this: it goes with the plan).
    let stop_pool = Arc::<OnceLock<Weak<QueryPool>>>::default();
    let stop_seen = stop_pool.clone();
    let kept = slot.clone();
    let Plan {
        engine,
        tenant: plan_tenant,
        scope,
        time_zone,
        sql,
        threads,
        span,
    } = plan;
    let cpu = engine.cpu().tenant(plan_tenant.as_str());
    let times = cpu.times();
    let plan_cpu = cpu.clone();
    let work = async move {
        let started = async {
            let ctx = engine
                .session_scoped(&plan_tenant, scope, &time_zone)
                .await?;
            let df = engine.plan(&ctx, &plan_tenant, &sql).await?;
            if let Some(pool) = ctx.state_ref().read().config().get_extension::<QueryPool>() {
                let _ = peak_seen.set(pool.peak());
                let _ = stop_seen.set(Arc::downgrade(&pool));
            }
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let task = Arc::new(df.task_ctx());
            let physical = df.create_physical_plan().await?;
            let bytes = file_bytes(&physical);
            scanned.add_scanned(bytes);
            counted.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(
                m::QUERY_SCANNED_BYTES,
                "tenant" => m::tenant(plan_tenant.as_str())
            )
            .increment(bytes);
            let physical = crate::memory::claims::held(physical)?;
            let physical = crate::cpu::share(physical, &plan_cpu)?;
            let stream = datafusion::physical_plan::execute_stream(physical, task)?;
            let pages = MemoryConsumer::new("pages not yet fetched")
                .register(&ctx.runtime_env().memory_pool);
            Ok::<_, Error>((schema, stream, pages))
        }
        .instrument(tracing::info_span!("plan"));
        let (mut stream, pages) = match started.await {
            Ok((schema, stream, pages)) => {
                if tx.send(Ok(Produced::Schema(schema))).await.is_err() {
                    return;
                }
                (stream, pages)
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        async {
            while let Some(next) = stream.next().await {
                let item = next.map_err(Error::DataFusion).and_then(|batch| {
                    // A batch this large is held by its claim already (the plan's nodes hand
                    // their batches on `held`): not counted twice.
                    let bytes = match batch.get_array_memory_size() {
                        b if b >= crate::memory::claims::CLAIMED_FROM => 0,
                        b => b,
                    };
                    pages.try_grow(bytes).map_err(Error::DataFusion)?;
                    Ok(Produced::Batch(batch, pages.split(bytes)))
                });
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
        .instrument(tracing::info_span!("execute"))
        .await
    };
    // Planning the query and handing its batches on take the tenant's CPU share too.
    let work = cpu.run(work.instrument(span));
    let spawned = std::thread::Builder::new()
        .name("floe-query".into())
        .stack_size(SQL_STACK_BYTES)
        .spawn(move || {
            crate::cpu::query_thread();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("floe-query-worker")
                .on_thread_start(crate::cpu::query_thread)
                .thread_stack_size(SQL_STACK_BYTES)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a query runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                // A panic in the plan's work (an operator's bug, or a size no check foresaw)
                // fails the query, as an error its client reads, instead of ending its results
                // early as if they were complete.
                let panicked = tokio::select! {
                    _ = watch.closed() => None,
                    done = std::panic::AssertUnwindSafe(work).catch_unwind() => done.err(),
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        timer_fired.store(true, Ordering::Relaxed);
                        None
                    }
                };
                if let Some(panic) = panicked {
                    let what = panic_message(panic.as_ref());
                    tracing::error!(panic = %what, "a query's work panicked; the query fails");
                    let failed = Err(Error::DataFusion(
                        datafusion::error::DataFusionError::Execution(format!(
                            "the query failed on an internal error ({what}); the server and \
                             other queries are unaffected"
                        )),
                    ));
                    // (Pages the client has not fetched may fill the queue: not past the
                    // limit, and then the client reads the time limit's error, not an end.)
                    if tokio::time::timeout_at(deadline.into(), watch.send(failed))
                        .await
                        .is_err()
                    {
                        timer_fired.store(true, Ordering::Relaxed);
                    }
                }
            });
            if let Some(pool) = stop_pool.get().and_then(Weak::upgrade) {
                pool.stop();
            }
            // Waits for the workers' current steps to end; only then is the slot given back,
            // so that the tenant's limit counts work that is really still running.
            drop(runtime);
            drop(slot);
            let _ = released_tx.send(());
        });
    match spawned {
        Ok(_) => {
            let mut run = Run::new(tenant, Source::Engine(Some(rx)), deadline);
            run.released = Some(released);
            run.timed_out = timed_out;
            run.slot = Some(kept);
            run.scanned = total;
            run.times = Some(times);
            run.peak_memory = peak_memory;
            run
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not start a query thread");
            Run::failed(
                tenant,
                QueryError::new(SERVER_RESOURCES_EXHAUSTED, "could not start a query thread"),
                deadline,
            )
        }
    }
}

/// Waits, until `deadline` at most, for a query's thread to give its tenant slot back. Called
/// once the work has ended by itself (finished or failed), when that takes milliseconds: a
/// client that sees the end and sends its next query at once must not find the slot still
/// taken. A query stopped by a limit is answered at once instead; its slot comes back when its
/// work reaches its next yield.
async fn slot_back(released: Option<oneshot::Receiver<()>>, deadline: Instant) {
    if let Some(released) = released {
        let _ = tokio::time::timeout_at(deadline.into(), released).await;
    }
}

/// The first reply to `POST /v1/statement`: queued, rows to come from `nextUri` (as Trino
/// answers; the JavaScript client reads rows only from `nextUri` pages).
pub(crate) fn queued(id: &str, base: &str) -> Value {
    json!({
        "id": id,
        "infoUri": info_uri(base, id),
        "nextUri": format!("{base}/v1/statement/executing/{id}/0"),
        "stats": stats("QUEUED", &Progress::default()),
        "warnings": [],
    })
}

/// The next page of `run`, advancing its token; removes a query that ended.
pub(crate) async fn page(st: &TrinoState, run: &mut Run, id: &str, base: &str) -> Page {
    run.touched = Instant::now();
    let (done, page) = match std::mem::replace(&mut run.source, Source::Engine(None)) {
        Source::Failed(e) => (true, failed(e, id, base, &run.progress())),
        Source::Ready(answer) => {
            let progress = Progress {
                rows: answer.rows.len() as u64,
                ..run.progress()
            };
            let mut body = json!({
                "id": id, "infoUri": info_uri(base, id),
                "stats": stats("FINISHED", &progress), "warnings": [],
            });
            if let Some(name) = answer.column {
                body["columns"] = json!([column(&Field::new(name, DataType::Utf8, false))]);
                body["data"] = Value::Array(answer.rows);
            }
            let page = Page {
                body,
                headers: answer.headers,
            };
            (true, page)
        }
        Source::Engine(batches) => {
            run.source = Source::Engine(batches);
            engine_page(st, run, id, base).await
        }
    };
    if done {
        if let Some(rows) = page.body.get("data").and_then(Value::as_array)
            && run.rows == 0
        {
            // An answer made without the engine counts its rows here.
            run.rows = rows.len() as u64;
        }
        let failed = match page.body.get("error") {
            Some(e) => {
                let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                run.error = Some((text("message"), text("errorName")));
                true
            }
            None => false,
        };
        run.end(if failed { "failed" } else { "finished" });
        if let Ok(mut q) = st.queries.lock() {
            q.remove(id);
        }
    } else {
        run.token += 1;
    }
    run.last_page = Some(page.clone());
    page
}

fn failed(e: QueryError, id: &str, base: &str, progress: &Progress) -> Page {
    Page {
        body: e.into_results(id, base, progress),
        headers: Vec::new(),
    }
}

/// Pulls rows from the running plan until a page is full; `true` when the query ended.
async fn engine_page(st: &TrinoState, run: &mut Run, id: &str, base: &str) -> (bool, Page) {
    let (page_rows, max_rows, timeout_secs) = {
        let cfg = st.engine.config();
        (cfg.page_rows, cfg.max_result_rows, cfg.timeout_secs)
    };
    let mut data: Vec<Value> = Vec::new();
    let mut bytes = 0usize;
    let mut failure = None;
    let mut finished = false;
    while run.columns.is_none() || (data.len() < page_rows && bytes < PAGE_BYTES) {
        let next = match run.pending.take() {
            Some((batch, held)) => Ok(Some(Ok(Produced::Batch(batch, held)))),
            None => {
                let Source::Engine(Some(batches)) = &mut run.source else {
                    finished = true;
                    break;
                };
                tokio::time::timeout_at(run.deadline.into(), batches.recv()).await
            }
        };
        match next {
            Err(_) => {
                failure = Some(time_limit(timeout_secs));
                break;
            }
            Ok(None) if run.timed_out.load(Ordering::Relaxed) => {
                failure = Some(time_limit(timeout_secs));
                break;
            }
            Ok(None) => {
                run.source = Source::Engine(None);
                finished = true;
                slot_back(run.released.take(), run.deadline).await;
                if run.columns.is_none() {
                    failure = Some(QueryError::new(
                        NOT_SUPPORTED,
                        "the query ended before producing a schema",
                    ));
                }
                break;
            }
            Ok(Some(Err(e))) => {
                failure = Some(QueryError::from_query(&e));
                // The work stops on its own after an error: wait for its slot as for an end.
                run.source = Source::Engine(None);
                slot_back(run.released.take(), run.deadline).await;
                break;
            }
            Ok(Some(Ok(Produced::Schema(schema)))) => {
                run.columns = Some(Value::Array(
                    schema.fields().iter().map(|f| column(f)).collect(),
                ));
            }
            Ok(Some(Ok(Produced::Batch(batch, held)))) => {
                // Only what fits on this page is rendered; the rest waits for the next one.
                let n = batch.num_rows();
                let size = batch.get_array_memory_size().max(1);
                let room = PAGE_BYTES.saturating_sub(bytes);
                let fit = if size <= room {
                    n
                } else {
                    (n * room / size).max(1)
                };
                let take = fit.min(page_rows - data.len()).min(n);
                if take < n {
                    run.pending = Some((batch.slice(take, n - take), held));
                }
                run.rows += take as u64;
                if run.rows > max_rows {
                    failure = Some(QueryError::new(
                        EXCEEDED_ROW_LIMIT,
                        format!("Query returned more than the limit of {max_rows} rows"),
                    ));
                    break;
                }
                bytes += size * take / n.max(1);
                data.extend(json_rows(&batch.slice(0, take)));
            }
        }
    }
    if let Some(f) = failure {
        // Dropping the receiver stops the work.
        run.source = Source::Engine(None);
        run.pending = None;
        return (true, failed(f, id, base, &run.progress()));
    }
    let state = if finished { "FINISHED" } else { "RUNNING" };
    let mut body = json!({
        "id": id,
        "infoUri": info_uri(base, id),
        "columns": run.columns,
        "stats": stats(state, &run.progress()),
        "warnings": [],
    });
    if !data.is_empty() {
        body["data"] = Value::Array(data);
    }
    if !finished {
        body["nextUri"] = json!(format!(
            "{base}/v1/statement/executing/{id}/{}",
            run.token + 1
        ));
    }
    (
        finished,
        Page {
            body,
            headers: Vec::new(),
        },
    )
}

/// Bytes of the data files a plan reads (as listed, before row groups are pruned): what
/// `scanned_bytes_per_day` counts.
fn file_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut total = 0u64;
    let _ = plan.apply(|node| {
        if let Some(scan) = crate::scan::file_scan(node.as_ref()) {
            for group in &scan.file_groups {
                for file in group.files() {
                    total += file.object_meta.size;
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    total
}

/// Drops queries whose clients stopped fetching for `idle` (their work stops with them).
pub(crate) fn reap(queries: &Queries, idle: Duration) {
    if let Ok(mut q) = queries.lock() {
        let now = Instant::now();
        q.retain(|_, run| match run.try_lock() {
            // Untouched for the idle time, or its time limit long past (its work stopped at
            // the limit; what it still holds is given back).
            Ok(r) => r.touched.elapsed() < idle && now < r.deadline + REAP_AFTER_DEADLINE,
            Err(_) => true,
        });
    }
}

/// The text of a caught panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}
