//! Window functions' arguments computed by a projection below the window.
//!
//! A window evaluates its functions' arguments itself, copying a constant into every row of
//! each batch (`first_value(repeat('x', 1000000)) OVER (PARTITION BY user_id)` over 2,000 rows
//! took 3 GB, counted nowhere), and DataFusion gives most window functions no way to take new
//! expressions once they are planned, where the size checks (`checks`) could count them. So
//! before physical planning, [`WindowArguments`] moves each argument that computes something,
//! and a first argument that is a literal of more than `checks::BARE_LITERAL_BYTES`, into a
//! projection below the window, where the size checks count it as any projection's expression
//! (a constant as copied into every row); the window reads a column instead, and a projection
//! above it hands on what the window did before. Other literals stay: `ntile(4)`,
//! `lag(x, 1, 'default')` and `nth_value(x, 2)` read theirs as literals, and refuse a column.
//!
//! PARTITION BY and ORDER BY expressions that compute something move too: the window and the
//! sort before it evaluated them for every batch, uncounted; they now sort and compare columns.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::alias::AliasGenerator;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::expr::{Alias, WindowFunction};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, Window};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::moved::{Below, computed, if_same, moves, named};

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct WindowArguments;

/// The start of the moved arguments' columns' names.
const MOVED: &str = "__floe_window_argument_";

impl OptimizerRule for WindowArguments {
    fn name(&self) -> &str {
        "floe_window_arguments"
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
        let LogicalPlan::Window(window) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let rewritten = moved(window, config.alias_generator());
        Ok(if_same(plan, rewritten))
    }
}

/// `window` with its functions' arguments and keys computed below it, if any moves.
fn moved(window: &Window, names: &AliasGenerator) -> Result<Option<LogicalPlan>> {
    let input_fields = window.input.schema().fields().len();
    let mut below = Below::new(&window.input, names, MOVED);
    let mut exprs = Vec::with_capacity(window.window_expr.len());
    for (i, expr) in window.window_expr.iter().enumerate() {
        let (call, alias) = named(expr, &window.schema, input_fields + i);
        let Expr::WindowFunction(function) = call else {
            exprs.push(expr.clone());
            continue;
        };
        let params = &function.params;
        if !params.args.iter().enumerate().any(|(p, a)| moves(p, a))
            && !params.partition_by.iter().any(computed)
            && !params.order_by.iter().any(|s| computed(&s.expr))
        {
            exprs.push(expr.clone());
            continue;
        }
        let mut function: WindowFunction = function.as_ref().clone();
        let params = &mut function.params;
        let keys = params.partition_by.iter_mut();
        let keys = keys.chain(params.order_by.iter_mut().map(|s| &mut s.expr));
        let moving = params
            .args
            .iter_mut()
            .enumerate()
            .filter(|(p, a)| moves(*p, a));
        for arg in moving.map(|(_, a)| a).chain(keys.filter(|k| computed(k))) {
            // The same expression in several functions (their shared PARTITION BY) is one
            // column, so that they stay one window with one sort.
            below.take(arg);
        }
        exprs.push(Expr::Alias(Alias {
            expr: Box::new(Expr::WindowFunction(Box::new(function))),
            ..alias
        }));
    }
    if !below.any() {
        return Ok(None);
    }
    let rewritten = Window::try_new(exprs, Arc::new(below.over(window.input.clone())?))?;
    // What the window handed on before: its input's columns and its functions', by name.
    let above = window
        .schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let above = Projection::try_new(above, Arc::new(LogicalPlan::Window(rewritten)))?;
    Ok(Some(LogicalPlan::Projection(above)))
}
