//! Grouping by low-cardinality string columns without turning their Parquet dictionaries back
//! into a string per row.
//!
//! `SELECT type, count(*) FROM events GROUP BY type` spends most of its time on strings: the
//! Parquet reader copies every row's `type` out of the file's dictionary, and the partial
//! aggregate hashes and compares each of them. [`DictionaryGroups`], a physical optimizer rule
//! run after DataFusion's own, finds partial aggregates that group by string columns read
//! straight from Floe's scan (through filters, repartitions and projections that leave those
//! columns alone) and
//! - has the scan read those columns as dictionaries (`scan::dictionaries`): keys and the
//!   file's dictionary, as Parquet stores them;
//! - puts [`DictionaryGroupsExec`] in the aggregate's place: it numbers each dictionary value
//!   once (`ids::StringIds`), groups by the numbers with DataFusion's own grouping and
//!   accumulators, and turns the numbers back into strings when it hands the groups on. Its
//!   output is the replaced aggregate's, so the final aggregate above is unchanged.
//!
//! A group may also be computed from one string column alone, deterministically, as a string:
//! `GROUP BY json_extract_scalar(payload, '$.page')`. The scan then reads `payload` as a
//! dictionary too, and the page is computed once per dictionary value (once per distinct
//! string where a file keeps the column without a dictionary), not once per row.
//!
//! A column qualifies only where nothing else reads it (no aggregate argument or projection
//! computed from it) but filters that compare it with literals, which Arrow's kernels answer
//! on a dictionary as on its strings (`dictionary_filters::reads_as_dictionary`), so no other
//! operator meets a dictionary; and only partial aggregates without grouping sets, ordered or
//! distinct aggregates, or a limit. As DataFusion's own partial aggregate does, one that finds
//! nearly a group per row in its first rows hands the rest on ungrouped (`exec::Probe`).

mod exec;
mod ids;

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::{ExecutionPlan, InputOrderMode};

pub use exec::DictionaryGroupsExec;
use ids::StringIds;

use crate::dictionary_reads::{column_indices, read_as_dictionaries, rewrite_each};

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct DictionaryGroups;

impl PhysicalOptimizerRule for DictionaryGroups {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_each(plan, &rewrite)
    }

    fn name(&self) -> &str {
        "floe_dictionary_groups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with its partial aggregate grouping dictionaries, if it is one that can.
fn rewrite(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(aggregate) = node.as_any().downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    let plain = *aggregate.mode() == AggregateMode::Partial
        && !aggregate.group_expr().has_grouping_set()
        && aggregate.limit_options().is_none()
        && *aggregate.input_order_mode() == InputOrderMode::Linear
        && aggregate.aggr_expr().iter().all(|a| {
            a.groups_accumulator_supported() && a.order_bys().is_empty() && !a.is_distinct()
        });
    if !plain {
        return Ok(None);
    }
    let input = aggregate.input();
    let input_schema = input.schema();
    // Columns the aggregates read keep their type.
    let mut read_elsewhere: Vec<usize> = Vec::new();
    for a in aggregate.aggr_expr() {
        for e in a.expressions() {
            read_elsewhere.extend(column_indices(&e));
        }
    }
    for f in aggregate.filter_expr().iter().flatten() {
        read_elsewhere.extend(column_indices(f));
    }
    let groups = aggregate.group_expr().expr();
    // The string column each group reads, if its key can be found once per string.
    let strings: Vec<Option<Column>> = groups
        .iter()
        .map(|(e, _)| strings_read(e, &input_schema))
        .collect::<Result<_>>()?;
    for ((e, _), column) in groups.iter().zip(&strings) {
        if column.is_none() {
            read_elsewhere.extend(column_indices(e));
        }
    }
    let mut candidates: Vec<usize> = strings.iter().flatten().map(|c| c.index()).collect();
    candidates.retain(|c| !read_elsewhere.contains(c));
    candidates.sort_unstable();
    candidates.dedup();
    if candidates.is_empty() {
        return Ok(None);
    }
    let Some((input, dictionaries)) = read_as_dictionaries(input, &candidates)? else {
        return Ok(None);
    };
    let mut keys = Vec::with_capacity(groups.len());
    let mut is_dictionary = Vec::with_capacity(groups.len());
    let mut values = Vec::with_capacity(groups.len());
    for ((e, name), column) in groups.iter().zip(&strings) {
        match column
            .as_ref()
            .filter(|c| dictionaries.contains(&c.index()))
        {
            Some(column) => {
                let column: Arc<dyn PhysicalExpr> = Arc::new(column.clone());
                values.push(match e.as_any().is::<Column>() {
                    true => None,
                    false => Some(of_strings(e)?),
                });
                keys.push((column, name.clone()));
                is_dictionary.push(true);
            }
            None => {
                keys.push((e.clone(), name.clone()));
                is_dictionary.push(false);
                values.push(None);
            }
        }
    }
    let partitioning: Partitioning = aggregate.properties().partitioning.clone();
    Ok(Some(Arc::new(DictionaryGroupsExec::new(
        input,
        keys,
        is_dictionary,
        values,
        aggregate.aggr_expr().to_vec(),
        aggregate.filter_expr().to_vec(),
        aggregate.schema(),
        partitioning,
    ))))
}

/// The string column `expr` (a group expression) reads, when its key can be found once per
/// distinct string of that column: the column itself, or an expression of that column alone
/// whose value is a string (of any string type) and depends on nothing else
/// (`json_extract_scalar(payload, '$.page')`, not `random()`).
fn strings_read(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Column>> {
    let columns = collect_columns(expr);
    let (1, Some(column)) = (columns.len(), columns.into_iter().next()) else {
        return Ok(None);
    };
    if schema.field(column.index()).data_type() != &DataType::Utf8 {
        return Ok(None);
    }
    let by_value = expr.as_any().is::<Column>()
        || (!is_volatile(expr)
            && matches!(
                expr.data_type(schema)?,
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            ));
    Ok(by_value.then_some(column))
}

/// `expr` (see [`strings_read`]) over the one column of `StringIds::strings_schema`.
fn of_strings(expr: &Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    let strings = StringIds::strings_schema();
    let name = strings.field(0).name().clone();
    Ok(expr
        .clone()
        .transform(|node| {
            Ok(match node.as_any().is::<Column>() {
                true => Transformed::yes(Arc::new(Column::new(&name, 0)) as Arc<dyn PhysicalExpr>),
                false => Transformed::no(node),
            })
        })?
        .data)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scan::{file_scan, per_file_metrics};
    use arrow::array::RecordBatch;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    /// Four Parquet files of `t(f, g, n)`: `f` of few values and some nulls, `g` of
    /// `distinct` values in all, `n` a number.
    pub(crate) async fn table(distinct: usize) -> (tempfile::TempDir, SessionContext) {
        table_of_row_groups(distinct, 1024 * 1024).await
    }

    /// [`table`] whose files hold row groups of `rows` rows.
    pub(crate) async fn table_of_row_groups(
        distinct: usize,
        rows: usize,
    ) -> (tempfile::TempDir, SessionContext) {
        table_written(distinct, rows, true).await
    }

    /// [`table`] whose files keep no dictionary of any column (as ingest keeps `payload`).
    async fn table_without_dictionaries(distinct: usize) -> (tempfile::TempDir, SessionContext) {
        table_written(distinct, 1024 * 1024, false).await
    }

    async fn table_written(
        distinct: usize,
        rows: usize,
        dictionaries: bool,
    ) -> (tempfile::TempDir, SessionContext) {
        let dir = tempfile::tempdir().unwrap();
        // Strings as Floe's tables declare them (not as views, DataFusion's default for files).
        let mut config = SessionConfig::new().with_target_partitions(2);
        let parquet = &mut config.options_mut().execution.parquet;
        parquet.schema_force_view_types = false;
        parquet.max_row_group_size = rows;
        parquet.dictionary_enabled = Some(dictionaries);
        let ctx = SessionContext::new_with_config(config);
        let per_file = distinct / 4;
        for i in 0..4 {
            let path = dir.path().join(format!("{i}.parquet"));
            ctx.sql(&format!(
                "SELECT CASE WHEN x % 7 = 0 THEN NULL ELSE 'type' || (x % 3) END AS f, \
                 'g' || (x + {i} * {per_file}) AS g, x AS n \
                 FROM (SELECT unnest(range(0, {per_file})) AS x)"
            ))
            .await
            .unwrap()
            .write_parquet(path.to_str().unwrap(), DataFrameWriteOptions::new(), None)
            .await
            .unwrap();
        }
        ctx.register_parquet(
            "t",
            dir.path().to_str().unwrap(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
        (dir, ctx)
    }

    fn count(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
        let mut n = 0;
        plan.apply(|node| {
            n += usize::from(node.name() == name);
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        n
    }

    /// Columns the plan's scans read as dictionaries.
    pub(crate) fn dictionaries_read(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut n = 0;
        plan.apply(|node| {
            if file_scan(node.as_ref()).is_some() {
                n += node
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| matches!(f.data_type(), DataType::Dictionary(..)))
                    .count();
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        n
    }

    /// A query run as DataFusion plans it and with a rule of ours.
    pub(crate) struct Ran {
        pub expected: String,
        pub got: String,
        /// Both plans after they ran (with their metrics).
        pub plain: Arc<dyn ExecutionPlan>,
        pub ours: Arc<dyn ExecutionPlan>,
    }

    /// `sql` answered as DataFusion plans it and with `rule` applied to the plan.
    pub(crate) async fn run_both_ways(
        ctx: &SessionContext,
        sql: &str,
        rule: &dyn PhysicalOptimizerRule,
    ) -> Ran {
        let plan = || async {
            ctx.sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap()
        };
        let plain = plan().await;
        // As Floe's scan hands it over: each file with a source of its own. (Planned again: a
        // plan's runtime filters, a TopK's bound, keep what one run of it found.)
        let ours = plan()
            .await
            .transform_up(|node| Ok(Transformed::yes(per_file_metrics(node))))
            .unwrap()
            .data;
        let ours = rule.optimize(ours, &ConfigOptions::default()).unwrap();
        let show = |batches: Vec<RecordBatch>| pretty_format_batches(&batches).unwrap().to_string();
        let expected = show(collect(plain.clone(), ctx.task_ctx()).await.unwrap());
        let got = show(collect(ours.clone(), ctx.task_ctx()).await.unwrap());
        Ran {
            expected,
            got,
            plain,
            ours,
        }
    }

    /// The answer to `sql` as DataFusion plans it and with the rule, and how many partial
    /// aggregates the rule replaced (checked to match the scans' dictionary columns).
    async fn both_ways(ctx: &SessionContext, sql: &str) -> (String, String, usize) {
        let ran = run_both_ways(ctx, sql, &DictionaryGroups).await;
        let replaced = count(&ran.ours, "DictionaryGroupsExec");
        assert_eq!(replaced > 0, dictionaries_read(&ran.ours) > 0, "{sql}");
        // A scan that reads dictionaries hands on a file's strings kept without one as their
        // own dictionary.
        ran.ours
            .apply(|node| {
                if let Some(config) = file_scan(node.as_ref())
                    && node
                        .schema()
                        .fields()
                        .iter()
                        .any(|f| matches!(f.data_type(), DataType::Dictionary(..)))
                {
                    assert!(config.expr_adapter_factory.is_some(), "{sql}");
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
        (ran.expected, ran.got, replaced)
    }

    #[tokio::test]
    async fn groups_by_dictionaries_answer_as_datafusion_does() {
        let (_dir, ctx) = table(4_000).await;
        let counted = |plan: &Arc<dyn ExecutionPlan>| {
            datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string()
                .contains("rows counted per key")
        };
        for (sql, counting) in [
            ("SELECT f, count(*) FROM t GROUP BY f ORDER BY f", true),
            (
                "SELECT f, count(*), count(n) FROM t GROUP BY f ORDER BY f",
                false,
            ),
            (
                "SELECT f, g, count(*) FROM t GROUP BY f, g ORDER BY f, g",
                false,
            ),
        ] {
            let ran = run_both_ways(&ctx, sql, &DictionaryGroups).await;
            assert_eq!(counted(&ran.ours), counting, "{sql}");
        }
        for sql in [
            "SELECT f, count(*), sum(n), min(n), max(n), avg(n) FROM t GROUP BY f ORDER BY f",
            // Two dictionary columns, one of many values.
            "SELECT f, g, count(*) FROM t GROUP BY f, g ORDER BY f, g",
            "SELECT count(*) FROM (SELECT g FROM t GROUP BY g)",
            // DataFusion groups by (f, n) first.
            "SELECT f, count(DISTINCT n) FROM t GROUP BY f ORDER BY f",
            // A filter on another column, in the scan and above it.
            "SELECT f, count(*) FROM t WHERE n > 100 GROUP BY f ORDER BY f",
            // An aggregate's own filter, and a group column that is not a dictionary.
            "SELECT f, n % 2 AS odd, count(*) FILTER (WHERE n > 10) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
            // Rows counted per key (`count(*)` alone), nulls and a filter included.
            "SELECT f, count(*) FROM t GROUP BY f ORDER BY f",
            "SELECT f, count(*), count(1) AS c FROM t WHERE n > 100 GROUP BY f ORDER BY f",
            "SELECT g, count(n) AS c FROM t GROUP BY g ORDER BY c DESC, g LIMIT 5",
            "SELECT g, count(*) AS c FROM t GROUP BY g ORDER BY c DESC, g LIMIT 5",
            "SELECT count(*), sum(c), min(g), max(g) FROM (SELECT g, count(*) AS c FROM t GROUP BY g)",
            // Counts of a column (nulls not counted) go through the accumulators.
            "SELECT f, count(*), count(n) FROM t GROUP BY f ORDER BY f",
            // Filtered on by comparisons with literals (a dictionary answers them).
            "SELECT f, count(*) FROM t WHERE f <> 'type1' GROUP BY f ORDER BY f",
            "SELECT f, g, count(*) FROM t WHERE f IN ('type0', 'type2') OR f IS NULL \
             GROUP BY f, g ORDER BY f, g",
        ] {
            let (expected, got, replaced) = both_ways(&ctx, sql).await;
            assert_eq!(got, expected, "{sql}");
            assert_eq!(replaced, 1, "{sql}");
        }
    }

    #[tokio::test]
    async fn a_column_read_by_anything_else_keeps_its_strings() {
        let (_dir, ctx) = table(400).await;
        for sql in [
            // Filtered on by a function: the filter must meet strings.
            "SELECT f, count(*) FROM t WHERE upper(f) <> 'TYPE1' GROUP BY f ORDER BY f",
            "SELECT f, count(*) FROM t WHERE f LIKE 'type_' GROUP BY f ORDER BY f",
            // An aggregate reads it.
            "SELECT f, max(f), count(*) FROM t GROUP BY f ORDER BY f",
            // Computed groups whose key is not a string of one column alone: a number, two
            // columns, a value that changes from row to row.
            "SELECT length(f), count(*) FROM t GROUP BY 1 ORDER BY 1",
            "SELECT f || g, count(*) FROM t GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
            "SELECT count(*) FROM (SELECT f || CAST(random() AS VARCHAR) FROM t GROUP BY 1)",
            // A computed group whose column an aggregate reads.
            "SELECT upper(f), max(f), count(*) FROM t GROUP BY 1 ORDER BY 1",
            // A limit DataFusion takes into the aggregate (it stops at the first groups).
            "SELECT f, g, count(*) FROM t GROUP BY f, g ORDER BY f, g LIMIT 20",
        ] {
            let (expected, got, replaced) = both_ways(&ctx, sql).await;
            assert_eq!(got, expected, "{sql}");
            assert_eq!(replaced, 0, "{sql}");
        }
    }

    /// `GROUP BY json_extract_scalar(payload, '$.page')` computes the page once per dictionary
    /// value of `payload`, not once per row.
    #[tokio::test]
    async fn a_group_computed_from_one_string_column_is_computed_once_per_string() {
        let (_dir, ctx) = table(4_000).await;
        let (_plain_dir, plain) = table_without_dictionaries(4_000).await;
        crate::functions::register(&ctx);
        crate::functions::register(&plain);
        for (ctx, sql) in [&ctx, &plain].into_iter().flat_map(|ctx| {
            [
            "SELECT upper(f), count(*) FROM t GROUP BY 1 ORDER BY 1",
            "SELECT coalesce(f, 'none') AS k, count(*), sum(n) FROM t GROUP BY 1 ORDER BY 1",
            // Many strings with few values, and many values handed on in pieces.
            "SELECT substr(g, 1, 3) AS k, count(*), min(n) FROM t GROUP BY 1 ORDER BY 1",
            "SELECT count(*), sum(c), min(k), max(k) FROM              (SELECT g || '!' AS k, count(*) AS c FROM t GROUP BY 1)",
            // The same column as it is and computed.
            "SELECT f, upper(f), count(*) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
            // Floe's JSON extractor, over documents built from the strings.
            "SELECT json_extract_scalar('{\"k\": \"' || f || '\"}', '$.k') AS k, count(*) \
             FROM t GROUP BY 1 ORDER BY 1",
            // Filtered on another column, and on the one grouped.
            "SELECT upper(g) AS k, count(*) FROM t WHERE n % 3 = 0 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
            "SELECT lower(f) AS k, count(*) FROM t WHERE f <> 'type1' GROUP BY 1 ORDER BY 1",
            ]
            .map(move |sql| (ctx, sql))
        }) {
            let (expected, got, replaced) = both_ways(ctx, sql).await;
            assert_eq!(got, expected, "{sql}");
            assert_eq!(replaced, 1, "{sql}");
        }
    }

    #[tokio::test]
    async fn many_distinct_strings_are_handed_on_in_pieces_with_the_same_answer() {
        // More distinct `g` per partition than a partial aggregate holds, and more rows than
        // DataFusion's probe reads before it hands rows on as groups of their own.
        let (_dir, ctx) = table(4 * exec::MAX_GROUPS).await;
        let (_plain_dir, plain) = table_without_dictionaries(4 * exec::MAX_GROUPS).await;
        for ctx in [&ctx, &plain] {
            for sql in [
                "SELECT count(*), sum(c), min(g), max(g) FROM \
                 (SELECT g, count(*) AS c FROM t GROUP BY g)",
                "SELECT count(*), sum(c), min(k), max(k) FROM \
                 (SELECT upper(g) AS k, count(*) AS c FROM t GROUP BY 1)",
                "SELECT count(*), sum(c), sum(s) FROM \
                 (SELECT substr(g, 2) AS k, count(*) AS c, sum(n) AS s FROM t GROUP BY 1)",
            ] {
                let (expected, got, replaced) = both_ways(ctx, sql).await;
                assert_eq!(got, expected, "{sql}");
                assert!(
                    expected.contains(&(4 * exec::MAX_GROUPS).to_string()),
                    "{expected}"
                );
                assert_eq!(replaced, 1, "{sql}");
            }
        }
    }

    /// Past DataFusion's probe (`skip_partial_aggregation_probe_*`), a grouping that made
    /// nearly a group per row hands rows on as groups of their own; one of few groups goes on
    /// grouping.
    #[tokio::test]
    async fn rows_of_distinct_strings_are_handed_on_without_grouping() {
        let (_dir, ctx) = table(4 * exec::MAX_GROUPS).await;
        let mut handed_on = Vec::new();
        for sql in [
            "SELECT count(*), sum(c) FROM (SELECT g, count(*) AS c FROM t GROUP BY g)",
            "SELECT count(*), sum(c), max(k) FROM (SELECT upper(g) AS k, count(*) AS c, \
             sum(n) AS s FROM t GROUP BY 1)",
            "SELECT f, count(*) FROM t GROUP BY f ORDER BY f",
        ] {
            let ran = run_both_ways(&ctx, sql, &DictionaryGroups).await;
            assert_eq!(ran.got, ran.expected, "{sql}");
            ran.ours
                .apply(|node| {
                    if node.name() == "DictionaryGroupsExec" {
                        let metrics = node.metrics().unwrap();
                        let skipped = metrics.sum_by_name("skipped_aggregation_rows");
                        handed_on.push(skipped.map_or(0, |m| m.as_usize()));
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
                .unwrap();
        }
        // The first 100,000 rows of each partition (131,072 of them, in batches of 8,192)
        // grouped, the rest handed on.
        assert_eq!(
            handed_on[0],
            2 * (4 * exec::MAX_GROUPS / 2 - 13 * 8192),
            "{handed_on:?}"
        );
        assert_eq!(handed_on[1], handed_on[0]);
        assert_eq!(handed_on[2], 0);
    }
}
