//! Expressions a node evaluated itself, moved into a projection below it: what `window_args`
//! and `aggregate_args` share. The node then reads a column of that projection, where the size
//! checks (`checks`) count each value as any projection's.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::alias::AliasGenerator;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};

use super::checks::BARE_LITERAL_BYTES;

/// Whether a function's argument at `position` is moved below its node: anything computed,
/// and a first argument that is a literal of more than `checks::BARE_LITERAL_BYTES` (copied
/// into every row). Later literals stay: `ntile(4)`, `lag(x, 1, 'default')`, `string_agg`'s
/// separator and `percentile_cont`'s fraction read theirs as literals, and refuse a column.
pub(super) fn moves(position: usize, arg: &Expr) -> bool {
    match arg {
        Expr::Column(_) => false,
        Expr::Literal(value, _) => position == 0 && value.size() > BARE_LITERAL_BYTES,
        _ => true,
    }
}

/// Whether a key (PARTITION BY, ORDER BY) is computed: it moves below its node.
pub(super) fn computed(key: &Expr) -> bool {
    !matches!(key, Expr::Column(_) | Expr::Literal(..))
}

/// A node's expression `expr`, the `index`-th field of the node's `schema`: the call inside it,
/// and the alias under which the rebuilt call keeps the name it was handed on under.
pub(super) fn named<'e>(expr: &'e Expr, schema: &DFSchema, index: usize) -> (&'e Expr, Alias) {
    match expr {
        Expr::Alias(alias) => (alias.expr.as_ref(), alias.clone()),
        other => {
            let (relation, field) = schema.qualified_field(index);
            (
                other,
                Alias::new(other.clone(), relation.cloned(), field.name()),
            )
        }
    }
}

/// The projection being made below a node: its input's columns, then the moved expressions.
pub(super) struct Below<'a> {
    exprs: Vec<Expr>,
    // An `Expr`'s hash is its value's: the lock arrow's buffers carry for their memory claim
    // (`memory::claims`) is not part of it.
    #[allow(clippy::mutable_key_type)]
    columns: HashMap<Expr, String>,
    names: &'a AliasGenerator,
    /// The start of the moved expressions' columns' names (numbered by the optimizer, unique
    /// in the plan).
    prefix: &'static str,
}

impl<'a> Below<'a> {
    pub(super) fn new(
        input: &LogicalPlan,
        names: &'a AliasGenerator,
        prefix: &'static str,
    ) -> Self {
        Below {
            exprs: input
                .schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect(),
            columns: HashMap::new(),
            names,
            prefix,
        }
    }

    /// Moves `expr` into the projection and makes it a column of it. The same expression
    /// twice (an argument and its ordering, several functions' shared PARTITION BY) is one
    /// column.
    pub(super) fn take(&mut self, expr: &mut Expr) {
        let column = match self.columns.get(expr) {
            Some(column) => column.clone(),
            None => {
                let column = self.names.next(self.prefix);
                self.exprs.push(expr.clone().alias(&column));
                self.columns.insert(expr.clone(), column.clone());
                column
            }
        };
        *expr = Expr::Column(column.as_str().into());
    }

    /// Whether anything moved.
    pub(super) fn any(&self) -> bool {
        !self.columns.is_empty()
    }

    /// The projection over `input`.
    pub(super) fn over(self, input: Arc<LogicalPlan>) -> Result<LogicalPlan> {
        Ok(LogicalPlan::Projection(Projection::try_new(
            self.exprs, input,
        )?))
    }
}

/// `rewritten` in place of `plan` if it was made and hands on what `plan` did, by name and
/// type; otherwise `plan` as it was (its expressions counted only as their node makes them),
/// rather than failing the query.
pub(super) fn if_same(
    plan: LogicalPlan,
    rewritten: Result<Option<LogicalPlan>>,
) -> Transformed<LogicalPlan> {
    match rewritten.ok().flatten() {
        Some(rewritten)
            if rewritten
                .schema()
                .logically_equivalent_names_and_types(plan.schema()) =>
        {
            Transformed::yes(rewritten)
        }
        _ => Transformed::no(plan),
    }
}
