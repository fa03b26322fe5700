//! The arguments of aggregates that keep them, computed by a projection below the aggregation.
//!
//! An aggregation evaluates its functions' arguments itself: the guard counts each value as it
//! is made and gives it back once made (`guard`, the top of an expression), and the
//! accumulators then copy it. Those that keep every value they are given (`DISTINCT` ones,
//! `array_agg`, `string_agg`, …: `group_keys::KEEPING`) copy all of it into a store whose
//! buffer doubles as it grows, while the batch of arguments is still alive and counted
//! nowhere. `SELECT count(DISTINCT user_id || repeat('x', 400000)) FROM events` over 2,000
//! events grew the server by 1.48 GB at a 1 GiB limit before the refusal came. The copies of a
//! column are counted before the aggregation makes them (`group_keys::KeysCopied`), and a
//! batch in flight is claimed (`claims`): so before physical planning, [`AggregateArguments`]
//! moves each such argument that computes something (and a first argument that is a literal
//! of more than `checks::BARE_LITERAL_BYTES`), with the ordering those aggregates keep beside
//! their values, into a projection below the aggregation, where the size checks count it as
//! any projection's expression; the aggregate reads a column instead, under its old name.
//! Other aggregates (`sum`, `max`, …) keep nothing of their arguments and stay as they are.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::alias::AliasGenerator;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::group_keys::KEEPING;
use super::moved::{Below, computed, if_same, moves, named};

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct AggregateArguments;

/// The start of the moved arguments' columns' names.
const MOVED: &str = "__floe_aggregate_argument_";

impl OptimizerRule for AggregateArguments {
    fn name(&self) -> &str {
        "floe_aggregate_arguments"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let rewritten = moved(aggregate, config.alias_generator());
        Ok(if_same(plan, rewritten))
    }
}

/// Whether `function` keeps every argument it is given.
fn keeps(function: &AggregateFunction) -> bool {
    function.params.distinct || KEEPING.contains(&function.func.name())
}

/// `aggregate` with the arguments of the aggregates that keep them computed below it, if any
/// moves.
fn moved(aggregate: &Aggregate, names: &AliasGenerator) -> Result<Option<LogicalPlan>> {
    let mut below = Below::new(&aggregate.input, names, MOVED);
    // The aggregates' fields are the schema's last (after the groups, and the grouping id of
    // grouping sets).
    let first = aggregate.schema.fields().len() - aggregate.aggr_expr.len();
    let mut exprs = Vec::with_capacity(aggregate.aggr_expr.len());
    for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
        let (call, alias) = named(expr, &aggregate.schema, first + i);
        let Expr::AggregateFunction(function) = call else {
            exprs.push(expr.clone());
            continue;
        };
        let params = &function.params;
        if !keeps(function)
            || (!params.args.iter().enumerate().any(|(p, a)| moves(p, a))
                && !params.order_by.iter().any(|s| computed(&s.expr)))
        {
            exprs.push(expr.clone());
            continue;
        }
        let mut function: AggregateFunction = function.clone();
        let params = &mut function.params;
        let keys = params.order_by.iter_mut().map(|s| &mut s.expr);
        let moving = params
            .args
            .iter_mut()
            .enumerate()
            .filter(|(p, a)| moves(*p, a))
            .map(|(_, a)| a);
        for arg in moving.chain(keys.filter(|k| computed(k))) {
            below.take(arg);
        }
        exprs.push(Expr::Alias(Alias {
            expr: Box::new(Expr::AggregateFunction(function)),
            ..alias
        }));
    }
    if !below.any() {
        return Ok(None);
    }
    let rewritten = Aggregate::try_new(
        Arc::new(below.over(aggregate.input.clone())?),
        aggregate.group_expr.clone(),
        exprs,
    )?;
    Ok(Some(LogicalPlan::Aggregate(rewritten)))
}

#[cfg(test)]
mod tests;
