use arrow::compute::concat_batches;
use arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

use super::*;

/// A session as a query's (its pool, the size checks, the bounded functions), with `unnest`
/// cut into pieces.
fn session() -> SessionContext {
    limited(1 << 30)
}

fn limited(limit: usize) -> SessionContext {
    crate::memory::tests::query_session(limit).0
}

/// The batches `sql` answers with.
async fn batches(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches.into_iter().filter(|b| b.num_rows() > 0).collect()
}

fn printed(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

#[tokio::test]
async fn a_long_list_unnests_in_batches_of_the_session_size() {
    let ctx = session();
    let plan = batches(
        &ctx,
        "EXPLAIN SELECT x FROM unnest(range(0, 100000)) AS t(x)",
    )
    .await;
    assert!(printed(&plan).contains("PiecesExec"), "{}", printed(&plan));
    let made = batches(&ctx, "SELECT x FROM unnest(range(0, 100000)) AS t(x)").await;
    assert!(made.len() >= 13, "{} batches", made.len());
    assert!(made.iter().all(|b| b.num_rows() <= 8192));
    let all = concat_batches(&made[0].schema(), &made).unwrap();
    let x = all.column(0).as_primitive::<arrow::datatypes::Int64Type>();
    assert!(
        x.values().iter().copied().eq(0..100000),
        "every element, in order"
    );
}

#[tokio::test]
async fn a_rows_other_columns_copied_into_its_rows_cut_it_into_smaller_pieces() {
    // A 1 MB string beside 50 elements: about 8 rows a piece, not 50 MB in one batch.
    let ctx = session();
    let sql = "SELECT s, unnest(r) AS x FROM (SELECT repeat('y', 1000000) AS s, range(0, 50) AS r)";
    let made = batches(&ctx, sql).await;
    assert_eq!(made.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
    let widest = made.iter().map(|b| b.num_rows()).max().unwrap();
    assert!(
        widest <= PIECE_BYTES / 1_000_000,
        "{widest} rows in a batch"
    );
}

#[tokio::test]
async fn pieces_unnest_into_the_same_rows_as_the_whole_batch() {
    let cut = session();
    let whole = SessionContext::new();
    for sql in [
        // Two lists side by side: the shorter padded with nulls up to the longer.
        "SELECT unnest(a) AS x, unnest(b) AS y FROM (SELECT range(0, 20000) AS a, range(0, 5) AS b)",
        "SELECT unnest(b) AS y, unnest(a) AS x FROM (SELECT range(0, 5) AS b, range(3, 17003) AS a)",
        // Rows of every length, grouped into pieces and cut within.
        "SELECT n, unnest(range(0, n * 40)) AS x FROM (SELECT unnest(range(0, 300)) AS n)",
        // Null and empty lists beside long ones, and alone.
        "SELECT k, unnest(CASE WHEN k % 3 = 0 THEN NULL WHEN k % 3 = 1 THEN range(0, 0) \
         ELSE range(0, 10000) END) AS x FROM unnest(range(0, 7)) AS t(k)",
        "SELECT k, unnest(CASE WHEN k % 2 = 0 THEN NULL ELSE range(0, 9000) END) AS x, \
         unnest(range(0, k * 2000)) AS y FROM unnest(range(0, 6)) AS t(k)",
        // Unnested twice (depth 2): rows stay whole.
        "SELECT unnest(unnest(make_array(range(0, 10000), range(5, 9)))) AS x",
        // Text elements and a text beside them.
        "SELECT s, unnest(string_to_array(repeat('ab,', 30000), ',')) AS x \
         FROM (SELECT repeat('z', 500) AS s)",
    ] {
        // The same rows (their order may differ where the plan repartitions).
        let rows = |batches: Vec<RecordBatch>| {
            let mut lines: Vec<String> = printed(&batches).lines().map(String::from).collect();
            lines.sort();
            lines
        };
        let (a, b) = (
            rows(batches(&cut, sql).await),
            rows(batches(&whole, sql).await),
        );
        assert!(a.len() > 5, "{sql}");
        assert_eq!(a, b, "{sql}");
    }
}
