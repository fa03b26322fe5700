use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array};
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::prelude::SessionContext;

use super::*;
use crate::memory::Budget;

const MIB: usize = 1 << 20;

/// A session as a query's (`memory::tests::query_session`); `t` holds 2,000 rows.
fn session(limit: usize) -> (SessionContext, Arc<QueryPool>) {
    let (ctx, pool) = crate::memory::tests::query_session(limit);
    let n: ArrayRef = Arc::new(Int64Array::from_iter_values(0..2000));
    let batch = RecordBatch::try_from_iter([("n", n)]).unwrap();
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    (ctx, pool)
}

async fn first_value(ctx: &SessionContext, sql: &str) -> Result<String> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    Ok(arrow::util::display::array_value_to_string(
        batch.column(0),
        0,
    )?)
}

fn refused(result: Result<String>) -> String {
    let e = result.expect_err("refused").to_string();
    assert!(e.contains("query.memory_limit_bytes"), "{e}");
    e
}

#[tokio::test]
async fn a_constant_is_refused_before_it_is_copied_into_every_row() {
    // 100 KB in each of 2,000 rows: 200 MB, made by the projection from one folded
    // constant (before, made whole and only then, if at all, checked).
    let (ctx, pool) = session(64 * MIB);
    let e = refused(
        first_value(
            &ctx,
            "SELECT max(length(s)) FROM (SELECT repeat('x', 100000) AS s FROM t)",
        )
        .await,
    );
    assert!(e.contains("2000 rows"), "{e}");
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    // Within the limit, it runs.
    let (ctx, _) = session(64 * MIB);
    let sql = "SELECT max(length(s)) FROM (SELECT repeat('x', 1000) AS s FROM t)";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "1000");
}

#[tokio::test]
async fn the_arguments_of_one_call_count_together_and_with_its_value() {
    // Each range is 24 MB, under the limit; the two together are not: refused at the
    // second, before it is made (before, each was given back as it returned).
    let (ctx, pool) = session(40 * MIB);
    let sql = "SELECT cardinality(array_intersect(range(0, 3000000), range(1, 3000001)))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("range(…) needs 24000000 bytes, 24"), "{e}");
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    // A value made from a held argument counts with it, before it is made: 24 MB held, and
    // its copy into an array, the slice and its copy back into a constant reserved (before:
    // `the value of array_slice(…)`, refused once the slice existed).
    let (ctx, _) = session(40 * MIB);
    let sql = "SELECT cardinality(array_slice(range(0, 3000000), 2, 2900000))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("array_slice(…) needs 72001224 bytes"), "{e}");
    // A function that copies its argument reserves the copy before it makes it, while the
    // argument is held (before, `the value of array_reverse(…)`: refused once both existed).
    for sql in [
        "SELECT cardinality(array_reverse(range(0, 3000000)))",
        "SELECT cardinality(array_sort(range(0, 3000000)))",
        "SELECT length(ltrim(repeat('a', 30000000), 'b'))",
        "SELECT length(substr(repeat('a', 30000000), 2))",
        "SELECT length(left(repeat('a', 30000000), 29000000))",
    ] {
        let (ctx, pool) = session(40 * MIB);
        let e = refused(first_value(&ctx, sql).await);
        let call = &sql[sql.find("(").unwrap() + 1..sql.find("(r").unwrap()];
        assert!(e.contains(&format!("{call}(…) needs")), "{sql}: {e}");
        assert_eq!(pool.reserved(), 0, "nothing stays held");
    }
    // Compared as rows, 1,000,000 elements a side take about 190 MB (before, uncounted).
    let (ctx, _) = session(40 * MIB);
    let sql = "SELECT cardinality(array_intersect(range(0, 1000000), range(1, 1000001)))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("array_intersect(…) needs"), "{e}");
    let sql = "SELECT cardinality(array_intersect(range(0, 100000), range(1, 100001)))";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "99999");
}

#[tokio::test]
async fn a_value_is_reserved_before_it_is_made_whatever_syntax_planned_it() {
    // `OVERLAY … PLACING` and `[…]` are planned by DataFusion's planners of syntax, with
    // their own instances of `overlay` and `make_array`: they run bounded too, refused
    // before their value is made (before, made and only then refused as "the value of").
    let (ctx, pool) = session(40 * MIB);
    let sql = "SELECT length(overlay(repeat('a', 10) placing repeat('b', 25000000) from 2))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("overlay(…) needs 25000"), "{e}");
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    let (ctx, _) = session(40 * MIB);
    let sql = "SELECT cardinality([range(0, 2000000), range(1, 2000001)])";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("make_array(…) needs"), "{e}");
    // A cast to text reserves its argument's size before it prints every number.
    let (ctx, pool) = session(40 * MIB);
    let sql = "SELECT length(CAST(range(0, 3000000) AS VARCHAR))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("a cast to"), "{e}");
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    // A cast to a list of texts reserves twice its argument's size, each number printed into
    // a view of 16 bytes (before: 48 MB made from 24 MB, then refused as "the value of").
    let (ctx, pool) = session(40 * MIB);
    let sql = "SELECT cardinality(CAST(range(0, 3000000) AS VARCHAR[]))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("a cast to List("), "{e}");
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    // Flags are a bit each, their texts a view of 16 bytes: counted by the elements.
    let (ctx, _) = session(40 * MIB);
    let sql = "SELECT cardinality(CAST(CAST(range(0, 3000000) AS BOOLEAN[]) AS VARCHAR[]))";
    let e = refused(first_value(&ctx, sql).await);
    assert!(e.contains("a cast to List("), "{e}");
    // Within the limit, each runs.
    let (ctx, _) = session(40 * MIB);
    let sql = "SELECT length(overlay(repeat('a', 10) placing repeat('b', 1000000) from 2))";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "1000001");
    let sql = "SELECT cardinality([range(0, 1000000), range(1, 1000001)])";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "2000000");
    let sql = "SELECT length(CAST(range(0, 100000) AS VARCHAR))";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "688890");
    let sql = "SELECT cardinality(CAST(range(0, 100000) AS VARCHAR[]))";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "100000");
}

#[tokio::test]
async fn any_of_an_array_literal_stays_a_list_of_alternatives() {
    // `x = ANY([a, b])` is simplified into `x IN (a, b)` only with DataFusion's own
    // `make_array`: with the bounded one it stayed an array search, which answers false
    // where `IN` answers null (`NOT` then kept every row).
    let (ctx, _) = session(64 * MIB);
    let sql = "SELECT count(*) FROM t WHERE NOT (n = ANY([n + 1, CAST(NULL AS BIGINT)]))";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "0");
    let sql = "SELECT count(*) FROM t WHERE n = ANY([n, n + 1])";
    assert_eq!(first_value(&ctx, sql).await.unwrap(), "2000");
}

#[tokio::test]
async fn an_aggregate_counts_the_copies_it_makes_when_it_finishes() {
    // 15 MB joined into one string (16 MiB of capacity), copied twice as it finishes:
    // refused by the aggregation's own reservation (before, it ran and made 50 MB).
    let (ctx, pool) = session(40 * MIB);
    let sql = |rows| {
        format!(
            "SELECT length(string_agg(s, ',')) FROM \
             (SELECT repeat('y', 1000) AS s FROM unnest(range(0, {rows})))"
        )
    };
    refused(first_value(&ctx, &sql(15000)).await);
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    // An aggregate's constant argument is copied into every row, as a projection's is:
    // 300 KB in 2,000 rows (before, 600 MB made and aggregated).
    let (ctx, pool) = session(64 * MIB);
    let wide = "x".repeat(300_000);
    for sql in [
        format!("SELECT length(max('{wide}')) FROM t"),
        "SELECT length(string_agg(repeat('y', 300000), ',')) FROM t".to_string(),
    ] {
        let e = refused(first_value(&ctx, &sql).await);
        assert!(e.contains("2000 rows"), "{e}");
    }
    // Small, but copied into every row of 2,000,000 (2 GB): unnested in batches of 8,192 rows
    // (`unnest_pieces`), refused as the aggregate's copies grow.
    let many = "SELECT length(string_agg(repeat('y', 1000), ',')) FROM unnest(range(0, 2000000))";
    refused(first_value(&ctx, many).await);
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    let (ctx, _) = session(40 * MIB);
    assert_eq!(first_value(&ctx, &sql(5000)).await.unwrap(), "5004999");
}

#[tokio::test]
async fn filters_sorts_and_joins_count_the_values_their_calls_make() {
    // 3,000,000 numbers (24 MB) printed as text: in a projection, the cast reserves its
    // argument's size with the argument held (48 MB, refused under 40 MiB). In a filter, a
    // sort's key or a join's filter nothing was counted: each ran (the range reserved
    // while it was made, then gave it back) and printed 23 MB more.
    let cast = |n: &str| format!("length(CAST(range(0, {n}) AS VARCHAR))");
    let queries = |n: &str| {
        [
            format!("SELECT count(*) FROM t WHERE {} > 0", cast(n)),
            format!("SELECT n FROM t ORDER BY {} + n LIMIT 1", cast(n)),
            // 2,000 matched pairs, each with its own range: 4,000,000 numbers together.
            format!(
                "SELECT count(*) FROM t a JOIN t b ON a.n = b.n AND {} > 0",
                cast(&format!("{n} / 1500 + a.n - b.n"))
            ),
        ]
    };
    for sql in queries("3000000") {
        let (ctx, pool) = session(40 * MIB);
        let e = refused(first_value(&ctx, &sql).await);
        assert!(e.contains("a cast to"), "{sql}: {e}");
        assert_eq!(pool.reserved(), 0, "{sql}: nothing stays held");
    }
    // Within the limit, each runs as before.
    let (ctx, _) = session(40 * MIB);
    let answers = ["2000", "0", "2000"];
    for (sql, answer) in queries("150000").iter().zip(answers) {
        assert_eq!(first_value(&ctx, sql).await.unwrap(), answer, "{sql}");
    }
}

#[tokio::test]
async fn a_constant_a_node_copies_into_every_row_is_counted_before_it_is_copied() {
    // 100 KB in each of 2,000 rows is 200 MB: `strpos` makes its constant argument an array
    // beside a column, a `CASE` copies its result into the rows that take it, `IN` its needle
    // beside a list of columns. Each node's own value is small (a number or a flag per row),
    // so before, nothing was counted, in an aggregate's arguments, a filter, an aggregate's
    // `FILTER` or a grouping key; the constant planning leaves (2 MB, over the 1 MiB folded)
    // neither.
    let queries = |text: &str| {
        let n = "CAST(n AS VARCHAR)";
        [
            format!("SELECT sum(strpos({n}, {text})) FROM t"),
            format!("SELECT count(*) FROM t WHERE strpos({n}, {text}) > 0"),
            format!("SELECT max(length(CASE WHEN n >= 0 THEN {text} END)) FROM t"),
            format!("SELECT count(*) FROM t WHERE {text} IN ({n}, 'a', 'b', 'c', 'd')"),
            format!("SELECT count(*) FILTER (WHERE strpos({n}, {text}) > 0) FROM t"),
            format!("SELECT count(*) FROM t GROUP BY strpos({n}, {text})"),
        ]
    };
    for text in ["repeat('x', 100000)", "repeat('x', 2000000)"] {
        for sql in queries(text) {
            let (ctx, pool) = session(64 * MIB);
            let e = refused(first_value(&ctx, &sql).await);
            // `strpos` counts the copy itself (`functions::bounded`), the others here.
            assert!(
                e.contains("2000 rows") || e.contains("strpos(…) needs"),
                "{sql}: {e}"
            );
            assert_eq!(pool.reserved(), 0, "{sql}: nothing stays held");
        }
    }
    // 2 KB in each row (4 MB): each answers as before.
    let (ctx, _) = session(64 * MIB);
    let answers = ["0", "0", "2000", "0", "0", "2000"];
    for (sql, answer) in queries("repeat('x', 2000)").iter().zip(answers) {
        assert_eq!(first_value(&ctx, sql).await.unwrap(), answer, "{sql}");
    }
}

#[tokio::test]
async fn a_window_functions_arguments_are_counted_below_it() {
    // A constant copied by the window into each of 2,000 rows: 100 KB folded into a
    // literal (200 MB), or 2 MB left to run with the query (4 GB). Before, counted nowhere:
    // the first ran.
    for sql in [
        "SELECT max(length(v)) FROM \
         (SELECT first_value(repeat('x', 100000)) OVER (ORDER BY n) AS v FROM t)",
        "SELECT max(length(v)) FROM \
         (SELECT last_value(repeat('x', 2000000)) OVER (ORDER BY n) AS v FROM t)",
        // A key the window's sort evaluated: 48 MB of numbers printed per batch (before,
        // uncounted, it ran).
        "SELECT max(r) FROM (SELECT row_number() OVER \
         (PARTITION BY CAST(range(0, 3000 + n % 2) AS VARCHAR)) AS r FROM t)",
    ] {
        let (ctx, pool) = session(64 * MIB);
        let e = refused(first_value(&ctx, sql).await);
        assert!(
            e.contains("2000 rows") || e.contains("a cast to"),
            "{sql}: {e}"
        );
        assert_eq!(pool.reserved(), 0, "{sql}: nothing stays held");
    }
    // Within the limit, windows answer as before, with the literals they read as literals
    // (`ntile`'s, `lag`'s offset and default) where they were.
    let (ctx, _) = session(64 * MIB);
    // A default over 1 KiB stays a literal too (a column there is refused).
    let lag_default = format!(
        "SELECT max(length(v)) FROM (SELECT lag(CAST(n AS VARCHAR), 1, '{}') \
         OVER (ORDER BY n) AS v FROM t)",
        "d".repeat(1500)
    );
    for (sql, answer) in [
        (
            "SELECT max(length(v)) FROM \
             (SELECT first_value(repeat('x', 1000)) OVER (ORDER BY n) AS v FROM t)",
            "1000",
        ),
        (
            "SELECT sum(v) FROM (SELECT lag(n * 2, 1, 0) OVER (ORDER BY n) AS v FROM t)",
            "3994002",
        ),
        (
            "SELECT max(q) FROM (SELECT ntile(4) OVER (ORDER BY n) AS q FROM t)",
            "4",
        ),
        (lag_default.as_str(), "1500"),
        // Keys computed below the window: shared by two functions, one window still.
        (
            "SELECT max(a + b) FROM (SELECT row_number() OVER (PARTITION BY n % 2) AS a, \
             count(*) OVER (PARTITION BY n % 2) AS b FROM t)",
            "2000",
        ),
        (
            "SELECT max(r) FROM (SELECT rank() OVER (ORDER BY n % 10) AS r FROM t)",
            "1801",
        ),
        (
            "SELECT max(r) FROM (SELECT row_number() OVER \
             (PARTITION BY CAST(range(0, 3 + n % 2) AS VARCHAR)) AS r FROM t)",
            "1000",
        ),
        (
            "SELECT max(s) FROM \
             (SELECT n, sum(n + 1) OVER (PARTITION BY n % 2) AS s FROM t)",
            "1001000",
        ),
    ] {
        assert_eq!(first_value(&ctx, sql).await.unwrap(), answer, "{sql}");
    }
}

#[test]
fn a_predicate_keeps_its_shape_around_counted_calls() {
    // Conjuncts, comparisons and bare columns stay as they are, for the rules that split
    // predicates, prune files by `column = literal` and compare dictionaries.
    use datafusion::physical_plan::expressions::lit;
    let pool = Budget::new(64 * MIB, Duration::ZERO).query_pool("t", 16 * MIB);
    let n: Arc<dyn PhysicalExpr> = Arc::new(Column::new("n", 0));
    let compared = Arc::new(BinaryExpr::new(n.clone(), Operator::Eq, lit(5i64))) as _;
    let unchanged = counted_predicate(&compared, &pool).unwrap();
    assert!(!unchanged.transformed);
    let text = Arc::new(CastExpr::new(n.clone(), DataType::Utf8, None)) as _;
    assert!(
        !counted_calls(&text, &pool).unwrap().transformed,
        "a cast of a column"
    );
    let call = length_of(text);
    let positive = Arc::new(BinaryExpr::new(call, Operator::Gt, lit(0i32))) as _;
    let both =
        Arc::new(BinaryExpr::new(compared, Operator::And, positive)) as Arc<dyn PhysicalExpr>;
    let rewritten = counted_predicate(&both, &pool).unwrap();
    assert!(rewritten.transformed);
    let and = rewritten
        .data
        .as_any()
        .downcast_ref::<BinaryExpr>()
        .expect("AND bare");
    assert!(and.left().as_any().is::<BinaryExpr>(), "n = 5 bare");
    // The conjunct with a call is held at its root, the call counted below it.
    assert_counted_comparison(and.right());
}

/// `expr` is a comparison counted at its root, whose left side is a call, counted.
fn assert_counted_comparison(expr: &Arc<dyn PhysicalExpr>) {
    let root = expr.as_any().downcast_ref::<Counted>();
    let root = root.unwrap_or_else(|| panic!("root not counted: {expr}"));
    let compared = root.inner.as_any().downcast_ref::<BinaryExpr>();
    let compared = compared.unwrap_or_else(|| panic!("comparison lost: {expr}"));
    let call = compared.left().as_any().downcast_ref::<Counted>();
    let call = call.unwrap_or_else(|| panic!("call not counted: {expr}"));
    assert!(
        call.inner.as_any().is::<ScalarFunctionExpr>(),
        "call folded: {expr}"
    );
}

#[tokio::test]
async fn folding_leaves_large_values_to_the_running_query() {
    let (ctx, pool) = session(64 * MIB);
    let large = "SELECT length(repeat('x', 10000000))";
    let plan = ctx.sql(large).await.unwrap().into_optimized_plan().unwrap();
    assert!(computed(&plan).contains("repeat"), "not folded: {plan}");
    assert!(pool.planning());
    assert_eq!(first_value(&ctx, large).await.unwrap(), "10000000");
    assert!(!pool.planning(), "planned once the physical plan is made");
    // A small value is folded as before.
    let (ctx, _) = session(64 * MIB);
    let small = ctx.sql("SELECT length(repeat('x', 10))").await.unwrap();
    let plan = small.into_optimized_plan().unwrap();
    assert!(!computed(&plan).contains("repeat"), "folded: {plan}");
}

#[test]
fn a_constant_stays_counted_through_a_scans_simplification() {
    // A scan opening a file with a predicate simplifies its pushed projection: a constant
    // folded there into a bare literal would be copied into every row unchecked.
    use datafusion::physical_expr::simplifier::PhysicalExprSimplifier;
    use datafusion::physical_plan::expressions::{BinaryExpr, lit};
    let pool = Budget::new(64 * MIB, Duration::ZERO).query_pool("t", 16 * MIB);
    let schema = Schema::new(vec![arrow::datatypes::Field::new(
        "n",
        DataType::Int64,
        false,
    )]);
    let constant: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        lit(1i64),
        datafusion::logical_expr::Operator::Plus,
        lit(2i64),
    ));
    let top = counted(&constant, &pool).unwrap();
    let simplified = PhysicalExprSimplifier::new(&schema).simplify(top).unwrap();
    assert!(simplified.as_any().is::<Counted>(), "{simplified}");
    // An expression of a column is not held back: it is an array anyway.
    let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new("n", 0));
    let of_column = Arc::new(BinaryExpr::new(
        column,
        datafusion::logical_expr::Operator::Plus,
        lit(2i64),
    )) as Arc<dyn PhysicalExpr>;
    assert!(!counted(&of_column, &pool).unwrap().is_volatile_node());
    // The same in a predicate: a constant call is left to the filter, counted.
    let text = Arc::new(CastExpr::new(lit(1i64), DataType::Utf8, None)) as _;
    let positive = Arc::new(BinaryExpr::new(
        length_of(text),
        datafusion::logical_expr::Operator::Gt,
        lit(0i32),
    )) as Arc<dyn PhysicalExpr>;
    let predicate = counted_predicate(&positive, &pool).unwrap().data;
    let simplified = PhysicalExprSimplifier::new(&schema)
        .simplify(predicate)
        .unwrap();
    assert_counted_comparison(&simplified);
}

/// `character_length(expr)` over a table of one column `n`.
fn length_of(expr: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
    let ctx = SessionContext::new();
    let length = ctx.state().scalar_functions()["character_length"].clone();
    let schema = Schema::new(vec![arrow::datatypes::Field::new(
        "n",
        DataType::Int64,
        false,
    )]);
    let options = Arc::new(datafusion::common::config::ConfigOptions::default());
    Arc::new(ScalarFunctionExpr::try_new(length, vec![expr], &schema, options).unwrap())
}

#[test]
fn a_refusal_quotes_a_large_constant_cut_short() {
    // A million numbers: printed whole, about 7 MB of text (100 million took 20 s and
    // 3 GB of the server's memory, in a refusal).
    let numbers = arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(
        [Some((0..1_000_000).map(Some))],
    );
    let literal = Literal::new(datafusion::common::ScalarValue::List(Arc::new(numbers)));
    let quoted = named(&literal);
    assert!(quoted.len() <= NAMED_AT_MOST + '…'.len_utf8(), "{quoted}");
    assert!(
        quoted.starts_with("[0, 1, 2") && quoted.ends_with('…'),
        "{quoted}"
    );
    assert_eq!(
        named(&"é".repeat(150)).len(),
        200 + '…'.len_utf8(),
        "cut between characters"
    );
    assert_eq!(named(&"short"), "short");
}

/// What the plan's top projection computes (its first expression, less its name).
fn computed(plan: &datafusion::logical_expr::LogicalPlan) -> String {
    let text = plan.display_indent().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.split(" AS ").next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_grouping_key_is_checked_with_the_copies_the_aggregation_keeps() {
    // 15 KB keys in 2,000 rows: 30 MB, and the aggregation's row format and store of them
    // 30 MB each, under 64 MiB one by one but not together: refused when the key is made
    // (before, by the aggregation, once it had copied them).
    let (ctx, pool) = session(64 * MIB);
    let sql = |width: usize| {
        format!("SELECT count(*) FROM t GROUP BY CAST(n AS VARCHAR) || repeat('x', {width})")
    };
    let e = refused(first_value(&ctx, &sql(15000)).await);
    assert!(e.contains("two copies"), "{e}");
    assert_eq!(pool.reserved(), 0, "nothing stays held");
    let (ctx, _) = session(64 * MIB);
    let groups = ctx.sql(&sql(5000)).await.unwrap().count().await.unwrap();
    assert_eq!(groups, 2000);
}
