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
//! A column qualifies only where nothing else reads it (no aggregate argument or projection
//! computed from it) but filters that compare it with literals, which Arrow's kernels answer
//! on a dictionary as on its strings (`dictionary_filters::reads_as_dictionary`), so no other
//! operator meets a dictionary; and only partial aggregates without grouping sets, ordered or
//! distinct aggregates, or a limit.

mod exec;
mod ids;

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::physical_expr::Partitioning;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::{ExecutionPlan, InputOrderMode};

pub use exec::DictionaryGroupsExec;

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
    let mut candidates: Vec<usize> = Vec::new();
    for (e, _) in groups {
        if let Some(c) = e.as_any().downcast_ref::<Column>()
            && input_schema.field(c.index()).data_type() == &DataType::Utf8
            && !read_elsewhere.contains(&c.index())
        {
            candidates.push(c.index());
        } else {
            read_elsewhere.extend(column_indices(e));
        }
    }
    candidates.retain(|c| !read_elsewhere.contains(c));
    candidates.dedup();
    if candidates.is_empty() {
        return Ok(None);
    }
    let Some((input, dictionaries)) = read_as_dictionaries(input, &candidates)? else {
        return Ok(None);
    };
    let is_dictionary: Vec<bool> = groups
        .iter()
        .map(|(e, _)| {
            e.as_any()
                .downcast_ref::<Column>()
                .is_some_and(|c| dictionaries.contains(&c.index()))
        })
        .collect();
    let partitioning: Partitioning = aggregate.properties().partitioning.clone();
    Ok(Some(Arc::new(DictionaryGroupsExec::new(
        input,
        groups.to_vec(),
        is_dictionary,
        aggregate.aggr_expr().to_vec(),
        aggregate.filter_expr().to_vec(),
        aggregate.schema(),
        partitioning,
    ))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scan::{file_scan, per_file_metrics};
    use arrow::array::RecordBatch;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::common::tree_node::{Transformed, TreeNode};
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
        let dir = tempfile::tempdir().unwrap();
        // Strings as Floe's tables declare them (not as views, DataFusion's default for files).
        let mut config = SessionConfig::new().with_target_partitions(2);
        let parquet = &mut config.options_mut().execution.parquet;
        parquet.schema_force_view_types = false;
        parquet.max_row_group_size = rows;
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
            // A computed group.
            "SELECT upper(f), count(*) FROM t GROUP BY 1 ORDER BY 1",
            // A limit DataFusion takes into the aggregate (it stops at the first groups).
            "SELECT f, g, count(*) FROM t GROUP BY f, g ORDER BY f, g LIMIT 20",
        ] {
            let (expected, got, replaced) = both_ways(&ctx, sql).await;
            assert_eq!(got, expected, "{sql}");
            assert_eq!(replaced, 0, "{sql}");
        }
    }

    #[tokio::test]
    async fn many_distinct_strings_are_handed_on_in_pieces_with_the_same_answer() {
        // More distinct `g` per partition than a partial aggregate holds.
        let (_dir, ctx) = table(4 * exec::MAX_GROUPS).await;
        let sql = "SELECT count(*), sum(c), min(g), max(g) FROM \
                   (SELECT g, count(*) AS c FROM t GROUP BY g)";
        let (expected, got, replaced) = both_ways(&ctx, sql).await;
        assert_eq!(got, expected);
        assert!(
            expected.contains(&(4 * exec::MAX_GROUPS).to_string()),
            "{expected}"
        );
        assert_eq!(replaced, 1);
    }
}
