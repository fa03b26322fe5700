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

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::alias::AliasGenerator;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::expr::{Alias, WindowFunction};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, Window};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::checks::BARE_LITERAL_BYTES;

/// The rule (see the module comment).
#[derive(Debug, Default)]
pub struct WindowArguments;

/// The start of the moved arguments' columns' names (numbered by the optimizer, unique in the
/// plan).
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
        // A window this cannot rebuild is planned as it was (its arguments uncounted), rather
        // than failing the query.
        match moved(window, config.alias_generator()).ok().flatten() {
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

/// Whether a window function's argument at `position` is moved below the window.
fn moves(position: usize, arg: &Expr) -> bool {
    match arg {
        Expr::Column(_) => false,
        Expr::Literal(value, _) => position == 0 && value.size() > BARE_LITERAL_BYTES,
        _ => true,
    }
}

/// Whether a PARTITION BY or ORDER BY expression is computed below the window.
fn computed(key: &Expr) -> bool {
    !matches!(key, Expr::Column(_) | Expr::Literal(..))
}

/// `window` with its functions' arguments and keys computed below it, if any moves.
fn moved(window: &Window, names: &AliasGenerator) -> Result<Option<LogicalPlan>> {
    let input_fields = window.input.schema().fields().len();
    let mut below: Vec<Expr> = window
        .input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let mut exprs = Vec::with_capacity(window.window_expr.len());
    // An `Expr`'s hash is its value's: the lock arrow's buffers carry for their memory claim
    // (`memory::claims`) is not part of it.
    #[allow(clippy::mutable_key_type)]
    let mut columns: HashMap<Expr, String> = HashMap::new();
    let mut moved_any = false;
    for (i, expr) in window.window_expr.iter().enumerate() {
        let (call, alias) = match expr {
            Expr::Alias(alias) => (alias.expr.as_ref(), alias.clone()),
            other => {
                let (relation, field) = window.schema.qualified_field(input_fields + i);
                let alias = Alias::new(other.clone(), relation.cloned(), field.name());
                (other, alias)
            }
        };
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
            let column = match columns.get(arg) {
                Some(column) => column.clone(),
                None => {
                    let column = names.next(MOVED);
                    below.push(arg.clone().alias(&column));
                    columns.insert(arg.clone(), column.clone());
                    column
                }
            };
            *arg = Expr::Column(column.as_str().into());
        }
        moved_any = true;
        exprs.push(Expr::Alias(Alias {
            expr: Box::new(Expr::WindowFunction(Box::new(function))),
            ..alias
        }));
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
