use datafusion::prelude::SessionContext;

use super::*;

/// `t`: six batches of 32 rows of short texts `s`.
fn session() -> SessionContext {
    crate::memory::tests::session_over_texts(1 << 30, false).0
}

/// The optimized logical plan of `sql`, one node a line.
async fn plan(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.into_optimized_plan().unwrap();
    plan.display_indent()
        .to_string()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn kept_arguments_that_compute_are_computed_below_the_aggregation() {
    let ctx = session();
    for sql in [
        "SELECT count(DISTINCT s || repeat('x', 1000)) FROM t",
        "SELECT array_agg(upper(s) ORDER BY lower(s)) FROM t",
        "SELECT string_agg(upper(s), ',') FROM t GROUP BY length(s)",
    ] {
        let lines = plan(&ctx, sql).await;
        let aggregate = lines
            .iter()
            .position(|l| l.trim_start().starts_with("Aggregate:"))
            .unwrap_or_else(|| panic!("{sql}: {lines:#?}"));
        assert!(
            lines[aggregate].contains(MOVED),
            "{sql}: the aggregate reads a column\n{lines:#?}"
        );
        assert!(
            lines[aggregate..]
                .iter()
                .any(|l| l.contains("Projection:") && l.contains(MOVED)),
            "{sql}: computed below it\n{lines:#?}"
        );
    }
    // The same expression as an argument and its ordering is one column.
    let lines = plan(&ctx, "SELECT array_agg(upper(s) ORDER BY upper(s)) FROM t").await;
    let made = lines
        .concat()
        .matches(" AS __floe_aggregate_argument_")
        .count();
    assert_eq!(made, 1, "{lines:#?}");
}

#[tokio::test]
async fn what_keeps_nothing_and_what_is_a_column_stay_as_they_are() {
    let ctx = session();
    for sql in [
        // Keeps nothing of its arguments.
        "SELECT sum(length(s)), max(upper(s)) FROM t",
        // Columns, and literals after the first argument (a separator).
        "SELECT count(DISTINCT s), string_agg(s, repeat(',', 2)) FROM t",
    ] {
        let lines = plan(&ctx, sql).await;
        assert!(!lines.concat().contains(MOVED), "{sql}\n{lines:#?}");
    }
}

#[tokio::test]
async fn the_answers_and_their_names_are_those_of_the_query_as_written() {
    let ctx = session();
    let df = ctx
        .sql("SELECT count(DISTINCT upper(s)), count(DISTINCT s) AS c FROM t")
        .await
        .unwrap();
    let names: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["count(DISTINCT upper(t.s))", "c"]);
    let rows = df.collect().await.unwrap();
    let shown = arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    assert!(shown.contains("| 192 "), "{shown}");
}
