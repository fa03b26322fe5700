//! Filtering low-cardinality string columns on their Parquet dictionaries.
//!
//! `SELECT count(*) FROM events WHERE user_id = 'u-42'` spent most of its scan turning every
//! row's `user_id` out of the file's dictionary into a string of its own, only for the filter
//! to compare it and drop it. Arrow's comparison kernels take a dictionary as it is: they
//! compare the literal with each dictionary value once and pick each row's answer by its key.
//! [`DictionaryFilters`], a physical optimizer rule run after DataFusion's own, finds filters
//! that read a string column of Floe's scan only in such comparisons and hand it no further
//! (the filter's projection drops it), and has the scan read that column as a dictionary
//! (`dictionary_reads::read_as_dictionaries`, the same rebuild the grouping over dictionaries uses).
//!
//! What "only in such comparisons" means is [`reads_as_dictionary`]: the column compared with
//! a string literal (`=`, `<>`, `<`, `<=`, `>`, `>=`), tested against a list of string
//! literals, or for null, under `AND`, `OR` and `NOT`. Anything else that reads the column (a
//! function, a cast, `LIKE`, a comparison with another column, a runtime filter of a join)
//! keeps its strings.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::{
    BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

use crate::dictionary_compare::{DictionaryComparison, is_comparison};
use crate::dictionary_reads::{read_as_dictionaries, rewrite_each};
use crate::memory::guard::Counted;

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct DictionaryFilters {
    /// The query's memory pool, which the dictionaries the comparisons keep are counted in
    /// (`None`: counted nowhere, only capped).
    pool: Option<Arc<dyn MemoryPool>>,
}

impl DictionaryFilters {
    /// The rule for a query whose memory is `pool`.
    pub fn for_pool(pool: Arc<dyn MemoryPool>) -> DictionaryFilters {
        DictionaryFilters { pool: Some(pool) }
    }
}

impl PhysicalOptimizerRule for DictionaryFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        rewrite_each(plan, &|node| rewrite(node, self.pool.as_ref()))
    }

    fn name(&self) -> &str {
        "floe_dictionary_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` over a scan reading its filtered string columns as dictionaries, if it is a filter
/// that can take them so.
fn rewrite(
    node: &Arc<dyn ExecutionPlan>,
    pool: Option<&Arc<dyn MemoryPool>>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = node.as_any().downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    // Columns handed on above the filter keep their type.
    let Some(handed_on) = filter.projection() else {
        return Ok(None);
    };
    let input = filter.input().schema();
    let predicate = filter.predicate();
    let mut candidates: Vec<usize> = collect_columns(predicate)
        .iter()
        .map(|c| c.index())
        .filter(|&i| input.field(i).data_type() == &DataType::Utf8 && !handed_on.contains(&i))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates.retain(|&i| reads_as_dictionary(predicate, &|c| c.index() == i));
    if candidates.is_empty() {
        return Ok(None);
    }
    let Some((child, read)) = read_as_dictionaries(filter.input(), &candidates)? else {
        return Ok(None);
    };
    // Its comparisons with literals answered once per dictionary (`dictionary_compare`).
    let predicate = predicate
        .clone()
        .transform_up(|e| {
            let read_here = collect_columns(&e)
                .iter()
                .all(|c| read.contains(&c.index()));
            Ok(match read_here {
                true => match DictionaryComparison::over(&e, pool) {
                    Some(per_dictionary) => Transformed::yes(per_dictionary),
                    None => Transformed::no(e),
                },
                false => Transformed::no(e),
            })
        })?
        .data;
    let rebuilt = FilterExecBuilder::from(filter)
        .with_input(child.clone())
        .with_predicate(predicate)
        .build()?;
    // DataFusion reads `column = literal` as making the column constant, and an order of the
    // input led by it as an order of what follows; the nodes above were planned on that order.
    if rebuilt.properties().output_ordering() != node.properties().output_ordering() {
        return Ok(Some(node.clone().with_new_children(vec![child])?));
    }
    Ok(Some(Arc::new(rebuilt)))
}

/// Whether `expr` reads the columns `target` picks only where a dictionary of strings answers
/// as its strings do (see the module comment). An expression that does not read them at all
/// qualifies.
pub(crate) fn reads_as_dictionary(
    expr: &Arc<dyn PhysicalExpr>,
    target: &dyn Fn(&Column) -> bool,
) -> bool {
    let is_target =
        |e: &Arc<dyn PhysicalExpr>| e.as_any().downcast_ref::<Column>().is_some_and(target);
    let any = expr.as_any();
    // A conjunct with a call is counted at its root (`memory::guard`): its comparisons are
    // below it.
    if let Some(counted) = any.downcast_ref::<Counted>() {
        return reads_as_dictionary(counted.inner(), target);
    }
    if let Some(binary) = any.downcast_ref::<BinaryExpr>() {
        let (left, right) = (binary.left(), binary.right());
        match binary.op() {
            Operator::And | Operator::Or => {
                return reads_as_dictionary(left, target) && reads_as_dictionary(right, target);
            }
            op if is_comparison(op)
                && ((is_target(left) && is_string_literal(right))
                    || (is_string_literal(left) && is_target(right))) =>
            {
                return true;
            }
            _ => {}
        }
    } else if let Some(not) = any.downcast_ref::<NotExpr>() {
        return reads_as_dictionary(not.arg(), target);
    } else if let Some(list) = any.downcast_ref::<InListExpr>() {
        if is_target(list.expr()) && list.list().iter().all(is_string_literal) {
            return true;
        }
    } else if let Some(null) = any.downcast_ref::<IsNullExpr>() {
        if is_target(null.arg()) {
            return true;
        }
    } else if let Some(not_null) = any.downcast_ref::<IsNotNullExpr>()
        && is_target(not_null.arg())
    {
        return true;
    }
    collect_columns(expr).iter().all(|c| !target(c))
}

fn is_string_literal(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.as_any()
        .downcast_ref::<Literal>()
        .is_some_and(|l| matches!(l.value(), ScalarValue::Utf8(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::tests::{dictionaries_read, run_both_ways, table, table_of_row_groups};
    use crate::scan::file_scan;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};

    /// Rows the plan's scans handed on: the rows of the row groups their statistics did not
    /// skip (the scans do not filter rows themselves).
    fn rows_scanned(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut rows = 0;
        plan.apply(|node| {
            if file_scan(node.as_ref()).is_some() {
                rows += node.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        rows
    }

    /// Whether a filter of the plan compares through `DictionaryComparison`.
    fn per_dictionary(plan: &Arc<dyn ExecutionPlan>) -> bool {
        let mut found = false;
        plan.apply(|node| {
            if let Some(filter) = node.as_any().downcast_ref::<FilterExec>() {
                filter.predicate().apply(|e| {
                    found |= e.as_any().is::<DictionaryComparison>();
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    #[tokio::test]
    async fn filters_compare_dictionaries_and_answer_as_datafusion_does() {
        // Row groups of 500 rows, `g` ascending in each file: lookups of `g` skip some.
        let (_dir, ctx) = table_of_row_groups(8_000, 500).await;
        for sql in [
            "SELECT count(*), sum(n) FROM t WHERE f = 'type1'",
            "SELECT count(*), sum(n) FROM t WHERE 'type1' = f",
            "SELECT count(*), sum(n) FROM t WHERE f <> 'type1'",
            "SELECT count(*), sum(n) FROM t WHERE f < 'type1' OR f >= 'type2'",
            "SELECT count(*), sum(n) FROM t WHERE f IN ('type0', 'type2', 'none')",
            "SELECT count(*), sum(n) FROM t WHERE f NOT IN ('type0')",
            "SELECT count(*), sum(n) FROM t WHERE f IS NULL",
            "SELECT count(*), sum(n) FROM t WHERE NOT (f IS NOT NULL AND f = 'type2')",
            // With a condition on another column, and on two string columns.
            "SELECT count(*), sum(n) FROM t WHERE f = 'type1' AND n % 5 = 0",
            "SELECT count(*), sum(n) FROM t WHERE f = 'type1' AND g > 'g3'",
            // Lookups the row groups' bounds answer in part, or whole.
            "SELECT count(*), sum(n) FROM t WHERE g = 'g1500'",
            "SELECT count(*), sum(n) FROM t WHERE g IN ('g2', 'g7777')",
            "SELECT count(*), sum(n) FROM t WHERE f = 'zzz'",
        ] {
            let ran = run_both_ways(&ctx, sql, &DictionaryFilters::default()).await;
            assert_eq!(ran.got, ran.expected, "{sql}");
            assert!(dictionaries_read(&ran.ours) >= 1, "{sql}");
            // The scan skips the same row groups by their statistics.
            assert_eq!(rows_scanned(&ran.ours), rows_scanned(&ran.plain), "{sql}");
            // Comparisons with a literal are answered once per dictionary (DataFusion makes
            // a short IN list equalities under OR); IS NULL is not a comparison.
            assert_eq!(
                per_dictionary(&ran.ours),
                !sql.ends_with("IS NULL"),
                "{sql}"
            );
        }
        // (And the bounds do skip some.)
        let ran = run_both_ways(
            &ctx,
            "SELECT count(*) FROM t WHERE g = 'g1500'",
            &DictionaryFilters::default(),
        )
        .await;
        assert!(
            rows_scanned(&ran.ours) < 8_000,
            "{}",
            rows_scanned(&ran.ours)
        );
    }

    #[tokio::test]
    async fn a_column_handed_on_or_read_otherwise_keeps_its_strings() {
        let (_dir, ctx) = table(400).await;
        for sql in [
            // Handed on above the filter.
            "SELECT f, n FROM t WHERE f = 'type1' ORDER BY n",
            // Read by a function, by LIKE, compared with another column.
            "SELECT count(*) FROM t WHERE upper(f) = 'TYPE1'",
            "SELECT count(*) FROM t WHERE f LIKE 'type1%'",
            "SELECT count(*) FROM t WHERE f = g",
            "SELECT count(*) FROM t WHERE f = 'type1' OR length(f) > 5",
        ] {
            let ran = run_both_ways(&ctx, sql, &DictionaryFilters::default()).await;
            assert_eq!(ran.got, ran.expected, "{sql}");
            assert_eq!(dictionaries_read(&ran.ours), 0, "{sql}");
        }
    }
}
