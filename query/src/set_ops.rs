//! `INTERSECT` and `EXCEPT` with both sides made distinct.
//!
//! DataFusion plans `a INTERSECT b` as `distinct(a)` semi-joined with `b`, and `EXCEPT` as the
//! anti-join: the left side is made distinct, the right side is probed row by row. A semi or
//! anti join only asks whether a row of the left has a match on the right, so the right side's
//! duplicates change nothing but the work: "viewers who bought" probed 2.5 million purchases
//! (hashed, sent between partitions, looked up) to find 5,000 buyers. [`DistinctProbe`] groups
//! the right side by the join's columns first, as the left side already is (and as Trino plans
//! set operations: an aggregation of both sides); Floe's dictionary grouping then reads the
//! right side's column straight from the Parquet dictionaries (`groups`).
//!
//! Only the joins that set operations make are touched: semi or anti, every column compared
//! with nulls equal to each other (`NullEquality::NullEqualsNull`, which no `IN` or `EXISTS`
//! gives), no other condition, plain columns on the right.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{NullEquality, Result};
use datafusion::logical_expr::{Aggregate, Expr, Join, JoinType, LogicalPlan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct DistinctProbe;

impl OptimizerRule for DistinctProbe {
    fn name(&self) -> &str {
        "floe_distinct_probe"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let set_operation = matches!(join.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
            && join.null_equality == NullEquality::NullEqualsNull
            && join.filter.is_none()
            && !join.null_aware
            && !join.on.is_empty();
        let keys: Vec<Expr> = join.on.iter().map(|(_, right)| right.clone()).collect();
        if !set_operation
            || !keys.iter().all(|k| matches!(k, Expr::Column(_)))
            || distinct_by(&join.right, &keys)
        {
            return Ok(Transformed::no(plan));
        }
        let right = Aggregate::try_new(join.right.clone(), keys, vec![])?;
        Ok(Transformed::yes(LogicalPlan::Join(Join {
            right: Arc::new(LogicalPlan::Aggregate(right)),
            ..join.clone()
        })))
    }
}

/// Whether `plan` is already a grouping by `keys` alone.
fn distinct_by(plan: &LogicalPlan, keys: &[Expr]) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.aggr_expr.is_empty() && a.group_expr == keys,
        LogicalPlan::Distinct(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    /// The answer to `sql` and its plan, with the rule and without it.
    async fn both_ways(sql: &str) -> [(String, String); 2] {
        let setup = "CREATE TABLE t AS SELECT * FROM (VALUES \
                     ('a', 1), ('a', 1), ('b', 2), (NULL, 3), (NULL, 3), ('c', NULL)) AS v(s, n)";
        let mut out = Vec::new();
        for with_rule in [false, true] {
            let state = datafusion::execution::SessionStateBuilder::new().with_default_features();
            let state = match with_rule {
                true => state.with_optimizer_rule(Arc::new(DistinctProbe)),
                false => state,
            };
            let ctx = SessionContext::new_with_state(state.build());
            ctx.sql(setup).await.unwrap().collect().await.unwrap();
            let df = ctx.sql(sql).await.unwrap();
            let plan = format!(
                "{}",
                df.clone().into_optimized_plan().unwrap().display_indent()
            );
            let rows = pretty_format_batches(&df.collect().await.unwrap())
                .unwrap()
                .to_string();
            out.push((rows, plan));
        }
        [out.remove(0), out.remove(0)]
    }

    #[tokio::test]
    async fn set_operations_answer_the_same_with_the_probe_side_made_distinct() {
        for sql in [
            "SELECT s FROM t INTERSECT SELECT s FROM t WHERE n <> 2 ORDER BY 1",
            "SELECT s, n FROM t INTERSECT SELECT s, n FROM t WHERE n IS NULL OR n < 3 ORDER BY 1, 2",
            "SELECT s FROM t EXCEPT SELECT s FROM t WHERE n = 1 ORDER BY 1",
            "SELECT count(*) FROM (SELECT s FROM t INTERSECT SELECT s FROM t)",
            "SELECT s FROM t INTERSECT ALL SELECT s FROM t WHERE n > 1 ORDER BY 1",
        ] {
            let [(plain, plain_plan), (ours, our_plan)] = both_ways(sql).await;
            assert_eq!(ours, plain, "{sql}");
            // One grouping more, on the probe side, whatever the optimizer's passes.
            let groupings = |p: &str| p.matches("Aggregate: groupBy").count();
            assert_eq!(
                groupings(&our_plan),
                groupings(&plain_plan) + 1,
                "{sql}\n{plain_plan}\n{our_plan}"
            );
        }
    }

    #[tokio::test]
    async fn joins_that_are_not_set_operations_are_left_alone() {
        for sql in [
            "SELECT s FROM t WHERE s IN (SELECT s FROM t WHERE n = 1) ORDER BY 1",
            "SELECT s FROM t WHERE s NOT IN (SELECT s FROM t WHERE n = 1) ORDER BY 1",
            "SELECT s FROM t a WHERE EXISTS (SELECT 1 FROM t b WHERE a.s = b.s AND b.n > a.n) ORDER BY 1",
        ] {
            let [(plain, plain_plan), (ours, our_plan)] = both_ways(sql).await;
            assert_eq!(ours, plain, "{sql}");
            assert_eq!(our_plan, plain_plan, "{sql}");
        }
    }
}
