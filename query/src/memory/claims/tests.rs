use std::time::Duration;

use arrow::array::{ArrayRef, StringArray};
use datafusion::prelude::SessionContext;

use super::*;
use crate::memory::Budget;

const MIB: usize = 1 << 20;

/// `t`: six batches of 32 short texts, `s`.
fn session(limit: usize) -> (SessionContext, Arc<QueryPool>) {
    crate::memory::tests::session_over_texts(limit, false)
}

/// Each batch's value: 32 rows of 1 MB, about 32 MiB.
const WIDE: &str = "SELECT s || repeat('x', 1000000) AS w FROM t";

/// A batch of `rows` texts of 1 MiB.
fn wide_batch(rows: usize) -> RecordBatch {
    let w: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..rows).map(|_| "x".repeat(MIB)),
    ));
    RecordBatch::try_from_iter([("w", w)]).unwrap()
}

fn claims_of(pool: &Arc<QueryPool>) -> Claims {
    Claims {
        pool: Arc::downgrade(pool),
    }
}

#[test]
fn a_claimed_batch_counts_until_its_last_slice_is_dropped() {
    let budget = Budget::new(1 << 30, Duration::ZERO);
    let pool = budget.query_pool("a", 1 << 30);
    let batch = wide_batch(20);
    claims_of(&pool).claim(&batch);
    assert!(pool.reserved() >= 20 * MIB, "{}", pool.reserved());
    assert_eq!(
        budget.used_by("a"),
        pool.reserved(),
        "the budget sees the claim"
    );
    // Claimed again (handed on unchanged by the next node): counted once.
    let once = pool.reserved();
    claims_of(&pool).claim(&batch);
    assert_eq!(pool.reserved(), once);
    let slice = batch.slice(3, 2);
    drop(batch);
    assert_eq!(
        pool.reserved(),
        once,
        "a slice keeps the buffers, and the claim"
    );
    drop(slice);
    assert_eq!(pool.reserved(), 0);
    assert_eq!(budget.used_by("a"), 0);
    // A small batch is not claimed.
    let small = wide_batch(CLAIMED_FROM / MIB / 2);
    claims_of(&pool).claim(&small);
    assert_eq!(pool.reserved(), 0);
}

#[test]
fn a_batch_that_outlives_its_query_holds_nothing() {
    let budget = Budget::new(1 << 30, Duration::ZERO);
    let pool = budget.query_pool("a", 1 << 30);
    let array = wide_batch(20);
    claims_of(&pool).claim(&array);
    drop(pool);
    assert_eq!(budget.used(), 0, "the query's end gave its claims back");
    drop(array);
    assert_eq!(
        budget.used(),
        0,
        "and the claim's own end gives nothing twice"
    );
}

/// `sql`'s batches, through [`held`] nodes.
async fn held_stream(ctx: &SessionContext, sql: &str) -> Result<SendableRecordBatchStream> {
    let df = ctx.sql(sql).await?;
    let task = Arc::new(df.task_ctx());
    let plan = held(df.create_physical_plan().await?)?;
    datafusion::physical_plan::execute_stream(plan, task)
}

#[tokio::test]
async fn values_handed_on_count_while_they_are_held() -> Result<()> {
    // Six batches of about 32 MiB each, under a 100 MiB limit. Each is within the limit when
    // it is made; kept together (as `collect` keeps them), the fourth is refused. Before,
    // each was given back once made, and all six (192 MiB) were kept uncounted.
    let (ctx, pool) = session(100 * MIB);
    let e = collect(ctx.sql(WIDE).await?)
        .await
        .expect_err("refused")
        .to_string();
    assert!(e.contains("query.memory_limit_bytes"), "{e}");
    drop(ctx);
    assert_eq!(pool.reserved(), 0, "nothing stays held");

    // Read one at a time, each dropped before the next: all six pass, and each counts while
    // it is held.
    let (ctx, pool) = session(100 * MIB);
    let mut stream = held_stream(&ctx, WIDE).await?;
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        // The batch's buffers: 32 rows of 1 MB.
        assert!(pool.reserved() >= 32 * 1_000_000, "{}", pool.reserved());
        rows += batch.num_rows();
    }
    assert_eq!(rows, 6 * 32);
    assert_eq!(pool.reserved(), 0, "every batch dropped, nothing held");
    Ok(())
}

#[tokio::test]
async fn a_constant_made_into_rows_is_claimed_as_its_rows() -> Result<()> {
    // 1 MB in each of 32 rows: the projection's array of it counts while it is held (the
    // guard checked it, as made from a constant, and gave it back).
    let (ctx, pool) = session(100 * MIB);
    let sql = "SELECT repeat('y', 1000000) AS w FROM t";
    let mut stream = held_stream(&ctx, sql).await?;
    let batch = stream.next().await.expect("a batch")?;
    assert!(pool.reserved() >= 32 * 1_000_000, "{}", pool.reserved());
    drop(batch);
    drop(stream);
    assert_eq!(pool.reserved(), 0);
    Ok(())
}
