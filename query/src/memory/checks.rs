//! Where a plan's expressions are counted: [`SizeChecks`], the physical optimizer's first rule,
//! puts `Counted` nodes (`guard`) into the operators below that evaluate expressions of their
//! own.
//!
//! - Projections and aggregates' arguments: every computed node, with the top checked as a
//!   constant copied into every row ([`guard::counted`]).
//! - Filters, sorts, and joins' keys and filters: the calls of functions, the casts and string
//!   concatenations over them, and the root of each key and of each conjunct that has any
//!   ([`guard::counted_calls`]). Conjuncts without calls or copied constants (below), and
//!   comparisons, `AND`, `OR` and `NOT` below a root, stay as they are, for the rules that
//!   read a predicate's shape (conjuncts pushed into scans, files and row groups pruned by
//!   `column = literal`, dictionaries compared once); a comparison's constant is compared
//!   with each row, not copied into it.
//! - Aggregations' grouping keys and `FILTER (WHERE …)` clauses: as filters' and sort keys.
//! - Everywhere, a constant that a node copies into every row of a batch (a function's
//!   argument beside a column, a `CASE`'s result, one side of `||`, an `IN`'s needle) is
//!   counted as its size times the rows, before the node makes its value
//!   (`guard::copies_counted`).
//!
//! Window functions' arguments are computed by a projection below the window before they get
//! here (`window_args`). Not counted: sort-merge and symmetric hash joins (not planned by
//! Floe's settings).
//!
//! The rule also marks the end of logical planning, during which constant folding runs
//! functions with no pool counting the constants it makes (and copies into the plan): until
//! then, growing functions refuse values larger than a query's SQL may be
//! (`query.max_sql_bytes`), which leaves them to run with the query.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, PhysicalGroupBy};
use datafusion::physical_plan::expressions::Literal;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{
    HashJoinExec, HashJoinExecBuilder, NestedLoopJoinExec, NestedLoopJoinExecBuilder,
};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::sorts::sort::SortExec;

use super::QueryPool;
use super::guard::{counted, counted_calls, counted_key, counted_predicate};

/// The largest literal left bare after an aggregate's first argument, or where a node copies it
/// into every row (`guard::copies_counted`): in an 8,192-row batch, 8 MiB uncounted.
pub(super) const BARE_LITERAL_BYTES: usize = 1 << 10;

/// The rule (see the module comment).
#[derive(Debug)]
pub struct SizeChecks {
    pool: Arc<QueryPool>,
}

impl SizeChecks {
    pub fn for_pool(pool: Arc<QueryPool>) -> SizeChecks {
        SizeChecks { pool }
    }
}

type Plan = Arc<dyn ExecutionPlan>;

impl PhysicalOptimizerRule for SizeChecks {
    fn optimize(&self, plan: Plan, _config: &ConfigOptions) -> Result<Plan> {
        // Logical planning, and its folding of constants, is over.
        self.pool.planned();
        plan.transform_up(|node| {
            let any = node.as_any();
            if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
                self.projection(projection)
            } else if let Some(aggregate) = any.downcast_ref::<AggregateExec>() {
                self.aggregate(aggregate)
            } else if let Some(filter) = any.downcast_ref::<FilterExec>() {
                self.filter(filter)
            } else if let Some(sort) = any.downcast_ref::<SortExec>() {
                self.sort(sort)
            } else if let Some(join) = any.downcast_ref::<HashJoinExec>() {
                self.hash_join(join)
            } else if let Some(join) = any.downcast_ref::<NestedLoopJoinExec>() {
                self.nested_loop_join(join)
            } else {
                Ok(None)
            }
            .map(|rewritten| match rewritten {
                Some(plan) => Transformed::yes(plan),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "size_checks"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl SizeChecks {
    fn projection(&self, projection: &ProjectionExec) -> Result<Option<Plan>> {
        let exprs = projection
            .expr()
            .iter()
            .map(|p| {
                Ok(ProjectionExpr {
                    expr: counted(&p.expr, &self.pool)?,
                    alias: p.alias.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Arc::new(ProjectionExec::try_new(
            exprs,
            projection.input().clone(),
        )?)))
    }

    /// An aggregation evaluates its functions' arguments itself, a constant copied into every
    /// row as a projection would (`string_agg('…300 KB…', ',')` made 600 MB from 2,000 rows):
    /// they are counted as a projection's. Left as they are: a literal number first (`count(1)`
    /// is how `count(*)` is planned) and a literal of at most [`BARE_LITERAL_BYTES`] after it
    /// (functions read their delimiters and fractions from bare literals; `string_agg` refuses
    /// a longer delimiter, as not a literal). Its grouping keys and its functions'
    /// `FILTER (WHERE …)` clauses are evaluated for every batch too: they have their calls
    /// counted as a filter's and a sort's are.
    fn aggregate(&self, aggregate: &AggregateExec) -> Result<Option<Plan>> {
        let functions = self.aggregate_arguments(aggregate)?;
        let mut changed = false;
        let filters = aggregate
            .filter_expr()
            .iter()
            .map(|filter| match filter {
                Some(filter) => {
                    let counted = counted_predicate(filter, &self.pool)?;
                    changed |= counted.transformed;
                    Ok(Some(counted.data))
                }
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let group_by = aggregate.group_expr();
        let keys = group_by
            .expr()
            .iter()
            .map(|(key, name)| {
                let counted = counted_key(key, &self.pool)?;
                changed |= counted.transformed;
                Ok((counted.data, name.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        if !changed {
            return Ok(
                functions.map(|functions| Arc::new(aggregate.with_new_aggr_exprs(functions)) as _)
            );
        }
        let group_by = PhysicalGroupBy::new(
            keys,
            group_by.null_expr().to_vec(),
            group_by.groups().to_vec(),
            group_by.has_grouping_set(),
        );
        let rebuilt = AggregateExec::try_new(
            *aggregate.mode(),
            group_by,
            functions.unwrap_or_else(|| aggregate.aggr_expr().to_vec()),
            filters,
            aggregate.input().clone(),
            aggregate.input_schema(),
        )?
        .with_limit_options(aggregate.limit_options());
        Ok(Some(Arc::new(rebuilt)))
    }

    /// An aggregation's functions with their arguments counted (see [`Self::aggregate`]), if
    /// any is.
    fn aggregate_arguments(
        &self,
        aggregate: &AggregateExec,
    ) -> Result<Option<Vec<Arc<AggregateFunctionExpr>>>> {
        let mut changed = false;
        let mut functions = Vec::with_capacity(aggregate.aggr_expr().len());
        for function in aggregate.aggr_expr() {
            let args = function.expressions();
            let bare = |(i, e): (usize, &Arc<dyn PhysicalExpr>)| {
                e.as_any().downcast_ref::<Literal>().is_some_and(|l| {
                    if i == 0 {
                        l.value().data_type().is_primitive()
                    } else {
                        l.value().size() <= BARE_LITERAL_BYTES
                    }
                })
            };
            if function.is_reversed() || args.iter().enumerate().all(bare) {
                functions.push(function.clone());
                continue;
            }
            let counted_args = args
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    if bare((i, e)) {
                        Ok(e.clone())
                    } else {
                        counted(e, &self.pool)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let order_by = function
                .order_bys()
                .iter()
                .map(|s| s.expr.clone())
                .collect();
            match function.with_new_expressions(counted_args, order_by) {
                Some(rewritten) => {
                    changed = true;
                    functions.push(Arc::new(rewritten));
                }
                None => functions.push(function.clone()),
            }
        }
        Ok(changed.then_some(functions))
    }

    /// `WHERE length(CAST(range(0, 1e8) AS VARCHAR)) > 0` made 3 GB uncounted.
    fn filter(&self, filter: &FilterExec) -> Result<Option<Plan>> {
        let predicate = counted_predicate(filter.predicate(), &self.pool)?;
        if !predicate.transformed {
            return Ok(None);
        }
        let rebuilt = FilterExecBuilder::from(filter)
            .with_predicate(predicate.data)
            .build()?;
        Ok(Some(Arc::new(rebuilt)))
    }

    /// A sort evaluates its keys for every batch it takes, and a top-k for every batch it
    /// compares.
    fn sort(&self, sort: &SortExec) -> Result<Option<Plan>> {
        let mut changed = false;
        let mut keys = Vec::with_capacity(sort.expr().len());
        for key in sort.expr().iter() {
            let expr = counted_calls(&key.expr, &self.pool)?;
            changed |= expr.transformed;
            keys.push(PhysicalSortExpr::new(expr.data, key.options));
        }
        let Some(keys) = LexOrdering::new(keys).filter(|_| changed) else {
            return Ok(None);
        };
        let rebuilt = SortExec::new(keys, sort.input().clone())
            .with_fetch(sort.fetch())
            .with_preserve_partitioning(sort.preserve_partitioning());
        Ok(Some(Arc::new(rebuilt)))
    }

    /// A hash join evaluates its keys on both sides, and its filter on each pair it matched.
    fn hash_join(&self, join: &HashJoinExec) -> Result<Option<Plan>> {
        let mut changed = false;
        let mut on = Vec::with_capacity(join.on().len());
        for (left, right) in join.on() {
            let (left, right) = (
                counted_calls(left, &self.pool)?,
                counted_calls(right, &self.pool)?,
            );
            changed |= left.transformed || right.transformed;
            on.push((left.data, right.data));
        }
        let filter = self.join_filter(join.filter())?;
        if !changed && filter.is_none() {
            return Ok(None);
        }
        let rebuilt = HashJoinExecBuilder::from(join)
            .with_on(on)
            .with_filter(filter.or_else(|| join.filter().cloned()))
            .recompute_properties()
            .build()?;
        Ok(Some(Arc::new(rebuilt)))
    }

    fn nested_loop_join(&self, join: &NestedLoopJoinExec) -> Result<Option<Plan>> {
        let Some(filter) = self.join_filter(join.filter())? else {
            return Ok(None);
        };
        let rebuilt = NestedLoopJoinExecBuilder::from(join)
            .with_filter(Some(filter))
            .build()?;
        Ok(Some(Arc::new(rebuilt)))
    }

    /// A join's filter with its calls counted, if it has any.
    fn join_filter(&self, filter: Option<&JoinFilter>) -> Result<Option<JoinFilter>> {
        let Some(filter) = filter else {
            return Ok(None);
        };
        let expr = counted_predicate(filter.expression(), &self.pool)?;
        Ok(expr.transformed.then(|| {
            JoinFilter::new(
                expr.data,
                filter.column_indices().to_vec(),
                filter.schema().clone(),
            )
        }))
    }
}
