use datafusion::execution::memory_pool::MemoryPool;

use super::*;
use crate::memory::tests::query_session;

const MIB: usize = 1 << 20;

use crate::memory::tests::one_value as one;

/// Windows whose aggregates hand out values that grow with the rows: a running list (the n-th
/// row gets n numbers), a list every row of the partition shares, a running text. Over `{n}`
/// rows.
const GROWING: [&str; 3] = [
    "SELECT CAST(max(cardinality(a)) AS BIGINT) FROM \
     (SELECT array_agg(x) OVER (ORDER BY x) AS a FROM unnest(range(0, {n})) AS t(x))",
    "SELECT CAST(max(cardinality(a)) AS BIGINT) FROM \
     (SELECT array_agg(x) OVER (PARTITION BY x % 2) AS a FROM unnest(range(0, {n})) AS t(x))",
    "SELECT CAST(max(length(s)) AS BIGINT) FROM (SELECT string_agg(CAST(x AS VARCHAR), ',') \
     OVER (ORDER BY x ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS s \
     FROM unnest(range(0, {n})) AS t(x))",
];

#[tokio::test]
async fn values_a_window_hands_out_count_with_their_copies() -> Result<()> {
    for template in GROWING {
        // 20,000 rows: gigabytes of values (the running list alone 1.6 GB, each row's list of
        // the shared one 1.6 GB), refused as they are made. Before, the window made a batch's
        // values and their copy uncounted, and the refusal, if any, came after, elsewhere.
        let sql = template.replace("{n}", "20000");
        let (ctx, pool) = query_session(64 * MIB);
        let e = one(&ctx, &sql).await.expect_err("refused").to_string();
        assert!(
            e.contains(WHAT) && e.contains("query.memory_limit_bytes"),
            "{sql}: {e}"
        );
        drop(ctx);
        assert_eq!(pool.reserved(), 0, "{sql}: nothing stays held");

        // 1,000 rows (a few MB of values): the query runs, and what the window took went back.
        let sql = template.replace("{n}", "1000");
        let (ctx, pool) = query_session(64 * MIB);
        assert!(one(&ctx, &sql).await? > 0, "{sql}");
        assert!(
            pool.peak().load(std::sync::atomic::Ordering::Relaxed) > 0,
            "{sql}: the values were counted"
        );
        assert_eq!(pool.reserved(), 0, "{sql}: given back after each batch");
    }
    Ok(())
}

#[tokio::test]
async fn numbers_a_window_hands_out_are_not_counted() -> Result<()> {
    // A sum every row of the partition shares is as wide as the rows that hold it: nothing
    // grows, and a window over 200,000 rows runs in 8 MiB as it did (its value's fixed part
    // counted for each row would be 12.8 MB).
    let (ctx, pool) = query_session(8 * MIB);
    let sql = "SELECT max(s) FROM (SELECT sum(x) OVER () AS s \
               FROM unnest(range(0, 200000)) AS t(x))";
    assert_eq!(one(&ctx, sql).await?, 199_999 * 200_000 / 2);
    drop(ctx);
    assert_eq!(pool.reserved(), 0);
    Ok(())
}

#[tokio::test]
async fn aggregates_outside_windows_are_planned_as_they_were() -> Result<()> {
    let (ctx, _pool) = query_session(64 * MIB);
    let plan = ctx
        .sql(
            "SELECT array_agg(x) OVER (ORDER BY x), (SELECT count(*) FROM unnest(range(0, 3))) \
             FROM unnest(range(0, 3)) AS t(x)",
        )
        .await?
        .into_optimized_plan()?;
    let mut in_window = 0;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                match e {
                    Expr::WindowFunction(w) => {
                        let WindowFunctionDefinition::AggregateUDF(f) = &w.fun else {
                            unreachable!("array_agg is an aggregate")
                        };
                        assert!(super::super::copies::in_window(f).is_none(), "{f:?}");
                        in_window += 1;
                    }
                    Expr::AggregateFunction(a) => {
                        assert!(super::super::copies::in_window(&a.func).is_some(), "{a:?}")
                    }
                    _ => {}
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
        })
    })?;
    assert_eq!(in_window, 1);
    Ok(())
}
