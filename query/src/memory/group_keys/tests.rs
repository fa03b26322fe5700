use datafusion::execution::memory_pool::MemoryPool;
use datafusion::prelude::SessionContext;

use super::*;
use crate::memory::claims::held;

const MIB: usize = 1 << 20;

/// `t`: six batches of 32 rows, `s` short texts and `w` texts of 1 MiB (about 32 MiB a batch).
fn session(limit: usize) -> (SessionContext, Arc<QueryPool>) {
    crate::memory::tests::session_over_texts(limit, true)
}

use crate::memory::tests::one_value as count;

/// Keys made by a projection below the aggregation, keys read as they are stored, values
/// that `DISTINCT` aggregates keep (two of them: not planned as a grouping), and values they
/// keep that the aggregation computed itself before `aggregate_args` moved them below it.
const DISTINCT: [&str; 5] = [
    "SELECT count(*) FROM (SELECT DISTINCT s || repeat('x', 1000000) AS k FROM t)",
    "SELECT count(*) FROM (SELECT DISTINCT w FROM t)",
    "SELECT count(DISTINCT w) + count(DISTINCT s) - 192 FROM t",
    "SELECT count(DISTINCT s || repeat('x', 1000000)) FROM t",
    "SELECT CAST(cardinality(array_agg(s || repeat('x', 1000000))) AS BIGINT) FROM t",
];

#[tokio::test]
async fn columns_an_aggregation_keeps_count_with_their_copies() -> Result<()> {
    for sql in DISTINCT {
        // Each batch's keys (32 MiB) fit an 80 MiB limit, and the aggregation's two copies of
        // them beside the batch do not: refused before they are made. Before, the
        // aggregation made them and was refused after, spilling.
        let (ctx, pool) = session(80 * MIB);
        let e = count(&ctx, sql).await.expect_err("refused").to_string();
        assert!(
            e.contains("copies of its grouping keys") && e.contains("query.memory_limit_bytes"),
            "{sql}: {e}"
        );
        drop(ctx);
        assert_eq!(pool.reserved(), 0, "{sql}: nothing stays held");

        // Under a limit that holds them, the query runs, and what each batch took went back.
        let (ctx, pool) = session(1 << 30);
        assert_eq!(count(&ctx, sql).await?, 6 * 32, "{sql}");
        assert!(
            pool.peak().load(std::sync::atomic::Ordering::Relaxed) >= 3 * 32 * 1_000_000,
            "{sql}: a batch counted with its two copies"
        );
        // (`t`'s own batches, claimed as they were read, live as long as the session.)
        drop(ctx);
        assert_eq!(pool.reserved(), 0, "{sql}");
    }
    Ok(())
}

#[tokio::test]
async fn small_batches_and_keys_computed_by_the_aggregation_are_left_alone() -> Result<()> {
    // Short keys: batches under the claimed size take nothing, and the plan runs as before.
    let (ctx, pool) = session(1 << 30);
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM (SELECT DISTINCT s FROM t)").await?,
        6 * 32
    );
    assert!(pool.peak().load(std::sync::atomic::Ordering::Relaxed) < CLAIMED_FROM as u64);
    // A key the aggregation computes is checked by the guard (three times, `counted_key`),
    // not here as well: `KeysCopied` is only put below aggregations that group by columns.
    let df = ctx
        .sql("SELECT count(*) FROM t GROUP BY s || repeat('x', 1000000)")
        .await?;
    let plan = held(df.create_physical_plan().await?)?;
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string();
    let partial = shown
        .lines()
        .position(|l| l.contains("mode=Partial"))
        .expect("a partial aggregation");
    assert!(
        !shown
            .lines()
            .nth(partial + 1)
            .unwrap()
            .contains("KeysCopied"),
        "{shown}"
    );
    Ok(())
}
