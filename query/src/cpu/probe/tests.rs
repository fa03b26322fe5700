//! A nested loop join probing in slices gives the same rows, and its steps end.

use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::*;
use crate::cpu::{CpuShare, share};

fn context(partitions: usize, rows: i64) -> SessionContext {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let schema = Arc::new(Schema::new(vec![
        Field::new("v", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let v: Vec<i64> = (0..rows).collect();
    let s: Vec<String> = v
        .iter()
        .map(|i| format!("x{}", "x".repeat((i % 13) as usize)))
        .collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(v)),
            Arc::new(StringArray::from(s)),
        ],
    )
    .unwrap();
    ctx.register_batch("t", batch).unwrap();
    ctx
}

async fn rows(ctx: &SessionContext, sql: &str, sliced: bool) -> String {
    let df = ctx.sql(sql).await.unwrap();
    let task = Arc::new(df.task_ctx());
    let mut plan = df.create_physical_plan().await.unwrap();
    if sliced {
        let share_ = CpuShare::new(1, Duration::from_secs(1), Duration::from_micros(200));
        plan = share(plan, &share_.tenant("a")).unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("ProbeInSlices"), "{shown}");
    }
    let batches = datafusion::physical_plan::collect(plan, task)
        .await
        .unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_probing_in_slices_gives_the_same_rows() {
    // Slices of one row up to whole batches (the slice is tiny, so sizes change all the time),
    // for every kind of join that keeps state per probe batch.
    let ctx = context(2, 3_000);
    for join in ["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"] {
        let sql = format!(
            "SELECT a.v, b.v FROM t a {join} (SELECT * FROM t WHERE v < 40) b \
             ON a.v % 97 = b.v * 2 + length(b.s) - length(a.s) ORDER BY 1, 2"
        );
        let (plain, sliced) = (rows(&ctx, &sql, false).await, rows(&ctx, &sql, true).await);
        assert!(plain.lines().count() > 10, "{join}: {plain}");
        assert_eq!(plain, sliced, "{join}");
    }
}

#[test]
fn a_nested_loop_join_under_a_selective_filter_comes_back_between_slices() {
    // 20,000 x 20,000 pairs, none matching: the join's one poll used to run through a whole
    // probe batch (20,000 x 8,192 filter rows) before anything could stop it. With one
    // partition the join runs in the caller's own poll, so a timer can fire only when that
    // poll comes back.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = runtime.block_on(async {
        let ctx = context(1, 20_000);
        let df = ctx
            .sql("SELECT count(*) FROM t a, t b WHERE regexp_like(a.s || b.s, 'x+y')")
            .await
            .unwrap();
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.unwrap();
        let cpu = CpuShare::new(1, Duration::from_secs(1), Duration::from_millis(5));
        let plan = share(plan, &cpu.tenant("a")).unwrap();
        let mut stream = datafusion::physical_plan::execute_stream(plan, task).unwrap();
        let started = Instant::now();
        let stopped = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(stopped.is_err(), "the join finished: make it slower");
        started
    });
    drop(runtime);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
}
