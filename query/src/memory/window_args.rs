//! Window functions' arguments computed by a projection below the window.
//!
//! A window evaluates its functions' arguments itself, copying a constant into every row of
//! each batch (`first_value(repeat('x', 1000000)) OVER (PARTITION BY user_id)` over 2,000 rows
//! took 3 GB, counted nowhere), and DataFusion gives most window functions no way to take new
//! expressions once they are planned, where the size checks (`checks`) could count them. So
//! before physical planning, [`WindowArguments`] moves each argument that computes something,
//! or is a literal of more than `checks::BARE_LITERAL_BYTES`, into a projection below the
//! window, where the size checks count it as any projection's expression (a constant as copied
//! into every row); the window reads a column instead, and a projection above it hands on what
//! the window did before. Small literals stay: `ntile(4)` and `lag(x, 1, 0)` read theirs as
//! literals.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::expr::{Alias, WindowFunction};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, Window};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::checks::BARE_LITERAL_BYTES;

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct WindowArguments;

/// The names of the moved arguments' columns, numbered from 0 in each window.
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
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Window(window) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match moved(window)? {
            Some(rewritten)
                if rewritten
                    .schema()
                    .logically_equivalent_names_and_types(plan.schema()) =>
            {
                Ok(Transformed::yes(rewritten))
            }
            _ => Ok(Transformed::no(plan)),
        }
    }
}

/// Whether a window function's argument is moved below the window.
fn moves(arg: &Expr) -> bool {
    match arg {
        Expr::Column(_) => false,
        Expr::Literal(value, _) => value.size() > BARE_LITERAL_BYTES,
        _ => true,
    }
}

/// `window` with its functions' arguments computed below it, if any moves.
fn moved(window: &Window) -> Result<Option<LogicalPlan>> {
    let input_fields = window.input.schema().fields().len();
    let mut below: Vec<Expr> = window
        .input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let mut exprs = Vec::with_capacity(window.window_expr.len());
    let mut moved_any = false;
    for (i, expr) in window.window_expr.iter().enumerate() {
        let (call, name) = match expr {
            Expr::Alias(Alias { expr, name, .. }) => (expr.as_ref(), name.clone()),
            other => (other, window.schema.field(input_fields + i).name().clone()),
        };
        let Expr::WindowFunction(function) = call else {
            exprs.push(expr.clone());
            continue;
        };
        if !function.params.args.iter().any(moves) {
            exprs.push(expr.clone());
            continue;
        }
        let mut function: WindowFunction = function.as_ref().clone();
        for arg in function.params.args.iter_mut().filter(|a| moves(a)) {
            let column = format!("{MOVED}{}", below.len() - input_fields);
            below.push(arg.clone().alias(&column));
            *arg = Expr::Column(column.as_str().into());
        }
        moved_any = true;
        exprs.push(Expr::WindowFunction(Box::new(function)).alias(name));
    }
    if !moved_any {
        return Ok(None);
    }
    let below = Projection::try_new(below, window.input.clone())?;
    let rewritten = Window::try_new(exprs, Arc::new(LogicalPlan::Projection(below)))?;
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
