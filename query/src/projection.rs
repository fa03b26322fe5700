//! User-defined projections: checking a definition (read-only SQL over `events` whose output
//! has a `day` column that is one of its `GROUP BY` keys, derived from `ts`) and running it over
//! one day's events.
//!
//! Because `day` is a grouping key derived from the event time, every output row belongs to
//! exactly one day and is computed from that day's events only: a refresh recomputes the days
//! that changed, each from its own events, and replaces their rows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::disk_manager::DiskManager;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};

use crate::memory::{self, Budget, QueryPool};
use crate::{Error, Result, dialect, functions};

/// The only table a projection reads.
pub const EVENTS: &str = "events";
/// The column every projection's output has: the UTC day of the event time.
pub const DAY: &str = "day";

/// Limits of the SQL guard for definitions (as for queries).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_operators: usize,
    /// The largest value a function may fold into the plan while it is planned
    /// (`query.max_sql_bytes`, as for queries).
    pub max_sql_bytes: usize,
}

/// A session whose only table is `events` (with `schema`), in UTC, its memory from `pool`,
/// with a query's memory checks: growing functions bounded and the values of projections and
/// aggregates' arguments counted (`memory`). A run's pool serves one run. Checking a
/// definition runs nothing: its pool (`None`) keeps large values out of any plan made. A run
/// spills through `spill`.
fn session(
    schema: SchemaRef,
    rows: Option<SendableRecordBatchStream>,
    pool: Option<Arc<QueryPool>>,
    spill: Option<Arc<DiskManager>>,
    limits: Limits,
) -> Result<SessionContext> {
    let mut cfg = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(1);
    cfg.options_mut().execution.time_zone = Some("UTC".to_string());
    let pool = pool.unwrap_or_else(|| {
        let limit = limits.max_sql_bytes;
        Budget::new(limit, Duration::ZERO).pool_limited_by("", limit, "query.max_sql_bytes")
    });
    let mut runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool.clone())
        .build()?;
    if let Some(spill) = spill {
        runtime.disk_manager = spill;
    }
    let runtime = Arc::new(runtime);
    let state = SessionStateBuilder::new()
        .with_config(cfg)
        .with_runtime_env(runtime)
        .with_default_features();
    let ctx = SessionContext::new_with_state(memory::with_size_checks(state, &pool).build());
    functions::register(&ctx);
    memory::bound_functions(&ctx, &pool, limits.max_sql_bytes);
    match rows {
        Some(rows) => {
            let once: Arc<dyn PartitionStream> = Arc::new(Once {
                schema: schema.clone(),
                rows: Mutex::new(Some(rows)),
            });
            ctx.register_table(
                EVENTS,
                Arc::new(StreamingTable::try_new(schema, vec![once])?),
            )?
        }
        None => ctx.register_table(EVENTS, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?,
    };
    Ok(ctx)
}

/// The events of a run, read once as they come (never all held at once).
struct Once {
    schema: SchemaRef,
    rows: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once").finish_non_exhaustive()
    }
}

impl PartitionStream for Once {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = match self.rows.lock() {
            Ok(mut rows) => rows.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        taken.unwrap_or_else(|| {
            let twice = DataFusionError::Internal("a projection's events read twice".into());
            Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async move { Err(twice) }),
            ))
        })
    }
}

fn refuse(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

/// Checks a definition against `events` (with `schema`); its output columns.
pub async fn check(sql: &str, schema: SchemaRef, limits: Limits) -> Result<SchemaRef> {
    let ctx = session(schema, None, None, None, limits)?;
    let plan = plan(&ctx, sql, limits).await?;
    let mut aggregates = Vec::new();
    let mut problem: Option<String> = None;
    plan.apply(|node| {
        let found = match node {
            LogicalPlan::Join(_) => Some("joins are not allowed: each day is computed from its own events".into()),
            LogicalPlan::Window(_) => Some("window functions are not allowed".into()),
            LogicalPlan::Limit(_) => Some("LIMIT is not allowed: a projection keeps every group".into()),
            LogicalPlan::Union(_) => Some("UNION is not allowed".into()),
            LogicalPlan::Subquery(_) | LogicalPlan::RecursiveQuery(_) => {
                Some("subqueries are not allowed".into())
            }
            LogicalPlan::Aggregate(a) => {
                aggregates.push(a.clone());
                None
            }
            _ => None,
        };
        if found.is_none() {
            node.apply_expressions(|e| {
                e.apply(|e| {
                    let volatility = match e {
                        Expr::ScalarFunction(f) => Some((f.name().to_string(), f.func.signature().volatility)),
                        Expr::AggregateFunction(f) => Some((f.func.name().to_string(), f.func.signature().volatility)),
                        Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                            problem = Some("subqueries are not allowed".into());
                            return Ok(TreeNodeRecursion::Stop);
                        }
                        _ => None,
                    };
                    if let Some((name, v)) = volatility
                        && v != Volatility::Immutable
                    {
                        problem = Some(format!(
                            "non-deterministic function {name}(): a projection must give the same rows every time it is computed"
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
        }
        if let Some(f) = found {
            problem = Some(f);
        }
        Ok(if problem.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if let Some(p) = problem {
        return Err(refuse(p));
    }
    let needs_day = || {
        refuse(format!(
            "the output needs a column `{DAY}` that is a GROUP BY key derived from ts, \
             e.g. SELECT CAST(ts AS DATE) AS {DAY}, … GROUP BY 1"
        ))
    };
    let [aggregate] = aggregates.as_slice() else {
        return Err(if aggregates.is_empty() {
            needs_day()
        } else {
            refuse("one GROUP BY only: nested aggregations are not allowed")
        });
    };
    // The keys that are the day of ts, by the name the aggregate gives them.
    let day_keys: Vec<String> = aggregate
        .group_expr
        .iter()
        .filter(|g| is_day_of_ts(g))
        .map(|g| g.schema_name().to_string())
        .collect();
    let output = plan.schema();
    let day = output
        .fields()
        .iter()
        .position(|f| f.name() == DAY)
        .ok_or_else(needs_day)?;
    if output.field(day).data_type() != &DataType::Date32 {
        return Err(needs_day());
    }
    // Follow `day` down to the aggregate's output through projections, sorts and filters.
    let mut node = &plan;
    let mut name = output.field(day).name().clone();
    loop {
        match node {
            LogicalPlan::Aggregate(_) => break,
            LogicalPlan::Projection(p) => {
                let expr = p
                    .expr
                    .iter()
                    .zip(p.schema.fields())
                    .find(|(_, f)| f.name() == &name)
                    .map(|(e, _)| e.clone().unalias())
                    .ok_or_else(needs_day)?;
                match expr {
                    Expr::Column(c) => name = c.name,
                    _ => return Err(needs_day()),
                }
                node = p.input.as_ref();
            }
            LogicalPlan::Sort(s) => node = s.input.as_ref(),
            LogicalPlan::Filter(f) => node = f.input.as_ref(),
            LogicalPlan::SubqueryAlias(s) => node = s.input.as_ref(),
            _ => return Err(needs_day()),
        }
    }
    if !day_keys.contains(&name) {
        return Err(needs_day());
    }
    for f in output.fields() {
        if matches!(
            f.data_type(),
            DataType::List(_) | DataType::LargeList(_) | DataType::Struct(_) | DataType::Map(_, _)
        ) {
            return Err(refuse(format!(
                "column {} is a {}: a projection's columns are plain values",
                f.name(),
                f.data_type()
            )));
        }
    }
    Ok(Arc::new(output.as_arrow().clone()))
}

/// Whether a grouping key is the UTC day of `ts`: `CAST(ts AS DATE)` or `to_date(ts)`.
fn is_day_of_ts(e: &Expr) -> bool {
    let is_ts = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "ts");
    match e.clone().unalias() {
        Expr::Cast(c) => c.data_type == DataType::Date32 && is_ts(&c.expr),
        Expr::TryCast(c) => c.data_type == DataType::Date32 && is_ts(&c.expr),
        Expr::ScalarFunction(f) => f.name() == "to_date" && f.args.len() == 1 && is_ts(&f.args[0]),
        _ => false,
    }
}

/// The logical plan of a definition, read-only and reading only `events`.
async fn plan(ctx: &SessionContext, sql: &str, limits: Limits) -> Result<LogicalPlan> {
    let translated = dialect::translate(sql, limits.max_depth, limits.max_operators)?;
    if !translated.snapshots.is_empty() {
        return Err(refuse(
            "time travel is not allowed: a projection reads the current events",
        ));
    }
    let state = ctx.state();
    for reference in state.resolve_table_references(&translated.statement)? {
        if reference.to_string() != EVENTS {
            return Err(refuse(format!(
                "a projection may read only `{EVENTS}` (found {reference})"
            )));
        }
    }
    let plan = state.statement_to_plan(translated.statement).await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)?;
    Ok(plan)
}

/// The memory of one day's run of a definition: `limit` bytes (`projection.memory_limit_bytes`,
/// named in its refusals) for `tenant`, from a budget of its own. A pool serves one run: its
/// plan's folding of constants ends when the plan is made (`memory::checks`).
pub fn run_pool(tenant: &str, limit: usize) -> Arc<QueryPool> {
    Budget::new(limit, Duration::ZERO).pool_limited_by(
        tenant,
        limit,
        "projection.memory_limit_bytes",
    )
}

/// Runs a checked definition over `rows` of `events` (whole days), read as they come, with
/// its memory from `pool` (the values its functions and expressions make included): past it,
/// aggregations spill to disk through `spill` where they can, and the run fails with
/// `ResourcesExhausted` where they cannot.
pub async fn run(
    sql: &str,
    rows: SendableRecordBatchStream,
    pool: Arc<QueryPool>,
    spill: Arc<DiskManager>,
    limits: Limits,
) -> Result<Vec<RecordBatch>> {
    let ctx = session(rows.schema(), Some(rows), Some(pool), Some(spill), limits)?;
    let plan = plan(&ctx, sql, limits).await?;
    let df = ctx.execute_logical_plan(plan).await?;
    Ok(memory::claims::collect(df).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    /// `run` over `batches`, with `memory` bytes and room to spill.
    async fn run_in(
        sql: &str,
        batches: Vec<RecordBatch>,
        memory: usize,
    ) -> Result<Vec<RecordBatch>> {
        let spill = crate::spill::manager(None, 1 << 30).unwrap();
        run(sql, stream(batches), run_pool("t", memory), spill, LIMITS).await
    }

    fn events() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("ts", ts, false),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("payload", DataType::Utf8, false),
        ]))
    }

    const LIMITS: Limits = Limits {
        max_depth: 64,
        max_operators: 1000,
        max_sql_bytes: 1 << 20,
    };

    async fn refused(sql: &str) -> String {
        match check(sql, events(), LIMITS).await {
            Ok(s) => panic!("accepted {sql}: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_grouping_by_the_day_of_ts_is_a_projection() {
        let ok = check(
            "SELECT CAST(ts AS DATE) AS day, date_trunc('hour', ts) AS hour, \
             json_extract_scalar(payload, '$.country') AS country, count(*) AS purchases \
             FROM events WHERE type = 'PurchaseMade' GROUP BY 1, 2, 3",
            events(),
            LIMITS,
        )
        .await
        .unwrap();
        let names: Vec<&str> = ok.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["day", "hour", "country", "purchases"]);
        check(
            "SELECT to_date(ts) AS day, count(DISTINCT user_id) AS users FROM events \
             GROUP BY to_date(ts) HAVING count(*) > 1 ORDER BY day",
            events(),
            LIMITS,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn definitions_are_refused_naming_the_problem() {
        for (sql, reason) in [
            (
                "SELECT CAST(now() AS DATE) AS day, count(*) FROM events GROUP BY 1",
                "non-deterministic function now()",
            ),
            (
                "SELECT CAST(ts AS DATE) AS day, sum(random()) FROM events GROUP BY 1",
                "non-deterministic function random()",
            ),
            (
                "SELECT type, count(*) FROM events GROUP BY 1",
                "needs a column `day`",
            ),
            (
                "SELECT CAST(received_at AS DATE) AS day FROM events GROUP BY 1",
                "received_at",
            ),
            (
                "SELECT CAST(ts AS DATE) AS day, count(*) FROM top_pages GROUP BY 1",
                "may read only `events` (found top_pages)",
            ),
            (
                "SELECT CAST(ts AS DATE) AS day, count(*) FROM other.events GROUP BY 1",
                "may read only `events` (found other.events)",
            ),
            (
                "SELECT CAST(ts AS DATE) AS day, count(*) FROM events GROUP BY 1 LIMIT 3",
                "LIMIT is not allowed",
            ),
            (
                "SELECT CAST(ts AS DATE) AS day, count(*) OVER () FROM events",
                "window functions",
            ),
            (
                "SELECT CAST(a.ts AS DATE) AS day, count(*) FROM events a JOIN events b ON a.event_id = b.event_id GROUP BY 1",
                "joins are not allowed",
            ),
            (
                "SELECT CAST(ts AS DATE) AS day FROM events",
                "needs a column `day`",
            ),
            (
                "SELECT 'x' AS day, count(*) FROM events GROUP BY 1",
                "needs a column `day`",
            ),
            ("DELETE FROM events", ""),
        ] {
            let e = refused(sql).await;
            assert!(e.contains(reason), "{sql}: {e}");
        }
    }

    #[tokio::test]
    async fn a_definition_runs_over_the_rows_it_is_given() {
        use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
        let day = 86_400_000_000i64;
        let batch = RecordBatch::try_new(
            events(),
            vec![
                Arc::new(StringArray::from(vec!["1", "2", "3"])),
                Arc::new(StringArray::from(vec!["A", "A", "B"])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![day * 100, day * 100 + 5, day * 101])
                        .with_timezone("+00:00"),
                ),
                Arc::new(StringArray::from(vec![Some("u"), None, Some("v")])),
                Arc::new(StringArray::from(vec!["{}", "{}", "{}"])),
            ],
        )
        .unwrap();
        let sql = "SELECT CAST(ts AS DATE) AS day, type, count(*) AS n FROM events GROUP BY 1, 2 ORDER BY 1";
        let out = run_in(sql, vec![batch], 64 << 20).await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        assert!(text.contains("| 1970-04-11 | A    | 2 |"), "{text}");
        assert!(text.contains("| 1970-04-12 | B    | 1 |"), "{text}");
    }

    fn stream(batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(
            events(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }

    /// `n` events of type A on 1970-01-01, each with its own id, user and payload.
    fn one_day(n: usize) -> RecordBatch {
        use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};
        let ids: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
        RecordBatch::try_new(
            events(),
            vec![
                Arc::new(StringArray::from(ids.clone())),
                Arc::new(StringArray::from(vec!["A"; n])),
                Arc::new(TimestampMicrosecondArray::from(vec![0i64; n]).with_timezone("+00:00")),
                Arc::new(StringArray::from(ids.clone())),
                Arc::new(StringArray::from(ids)),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_run_takes_its_memory_from_the_pool_it_is_given() {
        let n = 20_000;
        let batch = one_day(n);
        let sql =
            "SELECT CAST(ts AS DATE) AS day, user_id, count(*) AS n FROM events GROUP BY 1, 2";
        let e = run_in(sql, vec![batch.clone()], 64 << 10)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Resources exhausted"), "{e}");
        let out = run_in(sql, vec![batch], 256 << 20).await.unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), n);
    }

    #[tokio::test]
    async fn a_definition_makes_no_value_larger_than_its_memory() {
        // A tenant's admin defines the projection, and the server checks and runs it: before,
        // each run made the values of its expressions with nothing counting them (+1.9 GB and
        // +1.4 GB of the server's RSS). Checking only plans: it accepts the definition.
        let batch = one_day(100);
        let sql = "SELECT CAST(ts AS DATE) AS day, max(length(repeat('x', 1500000000))) AS n \
                   FROM events GROUP BY 1";
        let columns = check(sql, events(), LIMITS).await.unwrap();
        assert_eq!(columns.fields().len(), 2);
        let e = run_in(sql, vec![batch.clone()], 64 << 20)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("repeat(…) needs 1500000000 bytes"),
            "{e}"
        );
        let sql = "SELECT CAST(ts AS DATE) AS day, max(length(repeat(event_id, 200000))) AS n \
                   FROM events GROUP BY 1";
        let e = run_in(sql, vec![batch], 64 << 20).await.unwrap_err();
        assert!(
            e.to_string().contains("projection.memory_limit_bytes"),
            "{e}"
        );
    }
}
