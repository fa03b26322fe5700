//! The values a query's expressions make, held against the query's memory while they live.
//!
//! DataFusion's pool sees operators (sorts, joins, aggregations), not the values expressions
//! make: `s || s` doubles a string, `make_array(x, x, x)` triples an array, and a constant in
//! a projection is copied into every row of each batch (a 1 MiB string, in 8,192 rows, is
//! 8 GiB). Functions that can outgrow their arguments reserve before they run
//! (`functions::bounded`); on top of that, every computed node of a projection's expressions
//! is [`Counted`]:
//! - the value a node made is held in the query's pool until the node above it has made its
//!   own, so that the arguments of one call count together (`make_array(range(…), range(…))`
//!   is refused at the second `range`, before it is made, when the two would not fit), and
//!   with the value made from them (`upper(s)` holds `s` and its copy);
//! - at the top of each expression, a constant is checked before the projection copies it into
//!   every row of the batch (its size times the rows), and a column after it is made; then
//!   given back: the batch travels downstream, where operators and pages count it.
//!
//! An aggregation evaluates its functions' arguments itself, copying a constant into every row
//! the same way: they are counted as a projection's expressions are. Filters, sorts and joins
//! have their calls counted ([`counted_calls`]). Wherever a node copies a constant into every
//! row while its own value is small (`strpos(s, '…1 MB…')`, a `CASE`), the constant is
//! counted as so copied, before the node runs ([`copies_counted`]).
//!
//! `memory::checks::SizeChecks` installs the nodes as the first rule of the physical optimizer,
//! so that they travel with projections and predicates that later rules push into scans.

use std::any::Any;
use std::cell::RefCell;
use std::fmt::{self, Display, Formatter};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::sort_properties::ExprProperties;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::expressions::{
    BinaryExpr, CaseExpr, CastExpr, Column, InListExpr, Literal, TryCastExpr,
};

use super::QueryPool;
use super::checks::BARE_LITERAL_BYTES;

/// Values smaller than this are not counted: the columns of an ordinary batch (8,192 rows of
/// 8 bytes is 64 KiB) stay off the pool's lock, and what goes uncounted per node is small
/// beside any limit.
pub(crate) const COUNTED_FROM: usize = 256 << 10;

thread_local! {
    static HELD: RefCell<Held> = const {
        RefCell::new(Held {
            depth: 0,
            bytes: Vec::new(),
        })
    };
}

/// What the nodes being evaluated on this thread hold.
struct Held {
    /// Counted nodes being evaluated, one inside the other.
    depth: usize,
    /// Bytes held for the values made under them, in the order they were made (a node gives
    /// back what was pushed after it started).
    bytes: Vec<usize>,
}

/// `expr` with its computed nodes counted, and its top checked before a constant is copied
/// into every row (a bare column is left as it is: it makes nothing).
pub(super) fn counted(
    expr: &Arc<dyn PhysicalExpr>,
    pool: &Arc<QueryPool>,
) -> Result<Arc<dyn PhysicalExpr>> {
    let any = expr.as_any();
    if any.is::<Column>() || any.is::<Counted>() {
        return Ok(expr.clone());
    }
    let inner = expr
        .clone()
        .transform_up(|node| {
            let any = node.as_any();
            if any.is::<Column>() || any.is::<Literal>() || any.is::<Counted>() {
                return Ok(Transformed::no(node));
            }
            let node = copies_counted(node, pool)?.data;
            Ok(Transformed::yes(Counted::around(node, pool, Role::Inner)))
        })?
        .data;
    let inner = match inner.as_any().downcast_ref::<Counted>() {
        Some(node) => node.inner.clone(),
        None => inner,
    };
    Ok(Counted::around(inner, pool, Role::Top))
}

/// `expr` (a conjunct of a predicate, a sort or join key) with the nodes that can make large
/// values counted: calls of functions, and casts and string concatenations over them, and the
/// root, which holds what they made until it has made its own value (`s = repeat('a', 9e8)`
/// compares a value that lives until the comparison ends). Comparisons, `AND`, `OR`, `NOT`,
/// columns and literals below the root stay as they are (see `memory::checks`).
pub(super) fn counted_calls(
    expr: &Arc<dyn PhysicalExpr>,
    pool: &Arc<QueryPool>,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    let counted = count_calls(expr, pool)?;
    if !counted.transformed || counted.data.as_any().is::<Counted>() {
        return Ok(counted);
    }
    Ok(Transformed::yes(Counted::around(
        counted.data,
        pool,
        Role::Inner,
    )))
}

/// A grouping key with its calls counted ([`counted_calls`]), its value checked as three times
/// its size: the aggregation makes two more copies of it (each row in Arrow's row format, and
/// the groups' own store) before it checks its memory. Grouping by a 1 MB text over 700 rows
/// took 2 GB before the refusal.
pub(super) fn counted_key(
    expr: &Arc<dyn PhysicalExpr>,
    pool: &Arc<QueryPool>,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    let counted = counted_calls(expr, pool)?;
    let Some(node) = counted.data.as_any().downcast_ref::<Counted>() else {
        return Ok(counted);
    };
    let key = Counted::around(node.inner.clone(), pool, Role::Key);
    Ok(Transformed::yes(key))
}

/// [`counted_calls`] below the root.
fn count_calls(
    expr: &Arc<dyn PhysicalExpr>,
    pool: &Arc<QueryPool>,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    expr.clone().transform_up(|node| {
        let copies = copies_counted(node, pool)?;
        let (node, copied) = (copies.data, copies.transformed);
        let any = node.as_any();
        // A call below is counted already (a constant's count hides what it holds).
        let over_calls = || {
            node.exists(|n| {
                let any = n.as_any();
                Ok(any.is::<ScalarFunctionExpr>() || any.is::<Counted>())
            })
            .unwrap_or(true)
        };
        let makes = any.is::<ScalarFunctionExpr>()
            || ((any.is::<CastExpr>()
                || any.is::<TryCastExpr>()
                || any
                    .downcast_ref::<BinaryExpr>()
                    .is_some_and(|b| *b.op() == Operator::StringConcat))
                && over_calls());
        if !makes {
            return Ok(Transformed::new_transformed(node, copied));
        }
        Ok(Transformed::yes(Counted::around(node, pool, Role::Inner)))
    })
}

/// `node` with the constants it copies into every row of a batch counted as so copied: a
/// literal over [`BARE_LITERAL_BYTES`] (what planning folds is up to `query.max_sql_bytes`)
/// and a counted constant (a value planning did not fold), where [`copies_constant`] says the
/// node copies that child. The copies are held until the node above has made its value (its
/// own count, or the root's). `strpos(s, '…1 MB…')` over 2,000 rows made 2 GB this way, of
/// which the node's value showed nothing.
fn copies_counted(
    node: Arc<dyn PhysicalExpr>,
    pool: &Arc<QueryPool>,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    if !makes_rows(&node) {
        return Ok(Transformed::no(node));
    }
    let mut changed = false;
    let children = node
        .children()
        .into_iter()
        .enumerate()
        .map(|(i, child)| {
            if !copies_constant(&node, i) {
                return child.clone();
            }
            let any = child.as_any();
            if let Some(literal) = any.downcast_ref::<Literal>()
                && literal.value().size() > BARE_LITERAL_BYTES
            {
                changed = true;
                return Counted::around(child.clone(), pool, Role::Copied);
            }
            if let Some(counted) = any.downcast_ref::<Counted>()
                && counted.constant
                && counted.role != Role::Copied
            {
                changed = true;
                return Counted::around(counted.inner.clone(), pool, Role::Copied);
            }
            child.clone()
        })
        .collect::<Vec<_>>();
    if !changed {
        return Ok(Transformed::no(node));
    }
    Ok(Transformed::yes(node.with_new_children(children)?))
}

/// Whether `node` copies its child `child` into every row when that child's value is one
/// constant and another is a column: DataFusion's functions turn constant arguments into
/// arrays as long as a column argument (`strpos`, `coalesce`, `levenshtein`, …; the bounded
/// ones count that copy in their own estimate), a `CASE` copies its constant results into the
/// rows that take them, `||` joins a constant to every row, and `IN` makes a constant needle
/// an array to compare with a list of columns. Comparisons, `LIKE` and an `IN` list's members
/// compare a constant with each row without copying it.
fn copies_constant(node: &Arc<dyn PhysicalExpr>, child: usize) -> bool {
    let any = node.as_any();
    if let Some(call) = any.downcast_ref::<ScalarFunctionExpr>() {
        return !crate::functions::bounded::is_bounded(call.fun());
    }
    any.is::<CaseExpr>()
        || (any.is::<InListExpr>() && child == 0)
        || any
            .downcast_ref::<BinaryExpr>()
            .is_some_and(|b| *b.op() == Operator::StringConcat)
}

/// Whether `expr`'s value is an array of the batch's rows: it reads a column, or calls a
/// volatile function (`random()` is a value per row).
fn makes_rows(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.exists(|node| {
        Ok(match node.as_any().downcast_ref::<Counted>() {
            // A constant's count is a leaf that says it is volatile: look inside instead.
            Some(counted) if counted.constant => makes_rows(&counted.inner),
            // Its child is looked at next.
            Some(_) => false,
            None => node.as_any().is::<Column>() || node.is_volatile_node(),
        })
    })
    .unwrap_or(true)
}

/// A predicate with each conjunct's calls counted ([`counted_calls`]): a conjunct without
/// calls stays bare, for the rules that push conjuncts into scans and prune by them.
pub(super) fn counted_predicate(
    predicate: &Arc<dyn PhysicalExpr>,
    pool: &Arc<QueryPool>,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    let conjuncts = split_conjunction(predicate)
        .into_iter()
        .map(|c| counted_calls(c, pool))
        .collect::<Result<Vec<_>>>()?;
    if !conjuncts.iter().any(|c| c.transformed) {
        return Ok(Transformed::no(predicate.clone()));
    }
    Ok(Transformed::yes(conjunction(
        conjuncts.into_iter().map(|c| c.data),
    )))
}

/// Whether `expr` reads any column of its input.
fn reads_columns(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.exists(|node| Ok(node.as_any().is::<Column>()))
        .unwrap_or(true)
}

/// A node of a projection's expression whose value is counted; see the module comment.
#[derive(Debug)]
pub(crate) struct Counted {
    inner: Arc<dyn PhysicalExpr>,
    pool: Arc<QueryPool>,
    /// A node that reads no column. It says it is volatile and has no children, so that no
    /// later simplification (a scan's, when it opens a file with a predicate) folds it, or
    /// the call inside it, into a bare literal: made there with nothing holding it, kept in the
    /// plan, and copied by a projection into every row unchecked.
    constant: bool,
    role: Role,
}

/// What a [`Counted`] node is in its expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    /// Below the top: its value is held until the node above has made its own.
    Inner,
    /// The expression's top: a constant is checked as copied into every row, and nothing is
    /// held once the value is made.
    Top,
    /// A constant that the node above copies into every row ([`copies_counted`]): held as its
    /// size times the batch's rows.
    Copied,
    /// A grouping key ([`counted_key`]): checked as three times its size.
    Key,
}

impl PhysicalExpr for Counted {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, schema: &Schema) -> Result<DataType> {
        self.inner.data_type(schema)
    }

    fn nullable(&self, schema: &Schema) -> Result<bool> {
        self.inner.nullable(schema)
    }

    fn return_field(&self, schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let entered = Entered::new(&self.pool);
        let made = self.make(batch);
        let (arguments, outermost) = entered.leave();
        // The node's value is taken while its arguments' are still held (both were in memory
        // at once); theirs go back after, as nothing needs them any more.
        let taken = made.as_ref().map_or(Ok(0), |made| self.take(made, batch));
        if arguments > 0 {
            self.pool.give_back(arguments);
        }
        let (made, bytes) = (made?, taken?);
        // Held for the node above; with none (the top, or a node some rule moved out of its
        // expression), given back at once.
        if self.role == Role::Top || outermost {
            self.pool.give_back(bytes);
        } else if bytes > 0 {
            HELD.with(|held| held.borrow_mut().bytes.push(bytes));
        }
        Ok(made)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        // A constant is a leaf: a simplification that folds every node whose children are
        // literals would otherwise fold the call inside it.
        match self.constant {
            true => vec![],
            false => vec![&self.inner],
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        // A constant has no children to replace. Otherwise whether it is a constant follows
        // its new child (a rule may have replaced a column).
        match children.into_iter().next() {
            Some(inner) => Ok(Counted::around(inner, &self.pool, self.role)),
            None => Ok(self),
        }
    }

    fn get_properties(&self, children: &[ExprProperties]) -> Result<ExprProperties> {
        // The same values as its one child's; a constant's, unknown.
        Ok(children
            .first()
            .cloned()
            .unwrap_or_else(ExprProperties::new_unknown))
    }

    fn is_volatile_node(&self) -> bool {
        self.constant || self.inner.is_volatile_node()
    }

    fn placement(&self) -> datafusion::logical_expr::ExpressionPlacement {
        self.inner.placement()
    }

    fn fmt_sql(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// Whether `data_type` is a text or bytes.
fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

/// Whether `data_type` is a text or bytes, or a list, map, struct or dictionary with some in it.
fn holds_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => holds_text(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| holds_text(f.data_type())),
        DataType::Dictionary(_, values) => holds_text(values),
        other => is_text(other),
    }
}

/// A counted node being evaluated on this thread; left when its value is made, or on
/// unwinding (giving back what its arguments held), so that a panic leaves the thread's
/// count as it found it.
struct Entered<'a> {
    pool: &'a QueryPool,
    start: usize,
    left: bool,
}

impl<'a> Entered<'a> {
    fn new(pool: &'a QueryPool) -> Entered<'a> {
        let start = HELD.with(|held| {
            let mut held = held.borrow_mut();
            held.depth += 1;
            held.bytes.len()
        });
        Entered {
            pool,
            start,
            left: false,
        }
    }

    /// The bytes its arguments' values held (still taken), and whether it is the outermost
    /// counted node being evaluated.
    fn leave(mut self) -> (usize, bool) {
        self.left = true;
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            held.depth -= 1;
            (held.bytes.drain(self.start..).sum(), held.depth == 0)
        })
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if !self.left {
            let bytes: usize = HELD.with(|held| {
                let mut held = held.borrow_mut();
                held.depth = held.depth.saturating_sub(1);
                let start = self.start.min(held.bytes.len());
                held.bytes.drain(start..).sum()
            });
            self.pool.give_back(bytes);
        }
    }
}

impl Counted {
    /// `inner` counted against `pool` as `role`.
    fn around(
        inner: Arc<dyn PhysicalExpr>,
        pool: &Arc<QueryPool>,
        role: Role,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(Counted {
            constant: !reads_columns(&inner),
            inner,
            pool: pool.clone(),
            role,
        })
    }

    /// The expression counted.
    pub(crate) fn inner(&self) -> &Arc<dyn PhysicalExpr> {
        &self.inner
    }

    /// The node's value. A cast to text is made here from its argument, so that a copy as
    /// large as the argument is reserved before it is made: `CAST(range(…) AS VARCHAR)`
    /// prints every number, and a list of 8-byte integers takes about as many bytes printed.
    /// A cast to a list (or any nested value) of texts reserves twice that: each element
    /// printed is a view of 16 bytes (`CAST(range(0, 120000000) AS VARCHAR[])` made 1.9 GB
    /// from 960 MB before the check after it); and at least 24 bytes an element of a list
    /// (a list of flags takes a bit an element).
    fn make(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let Some(cast) = self.inner.as_any().downcast_ref::<CastExpr>() else {
            return self.inner.evaluate(batch);
        };
        let times = if is_text(cast.cast_type()) {
            1
        } else if holds_text(cast.cast_type()) {
            2
        } else {
            return self.inner.evaluate(batch);
        };
        let value = cast.expr().evaluate(batch)?;
        let bytes = match &value {
            // A slice of a larger batch (an aggregation's output is handed on in slices): its
            // own rows' bytes.
            ColumnarValue::Array(array) => array
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| array.get_array_memory_size()),
            ColumnarValue::Scalar(value) => value.size(),
        };
        // Each element printed is a view of 16 bytes and its text (up to 8 more out of line):
        // a list of flags is 1 bit an element.
        let listed = crate::functions::bounded::elements(&value, 1);
        let bytes = bytes
            .saturating_mul(times)
            .max(usize::try_from(listed * 24).unwrap_or(usize::MAX));
        let reserved = if bytes < COUNTED_FROM {
            0
        } else {
            let what = format!("a cast to {}", cast.cast_type());
            self.pool.try_take(bytes, &what)?;
            bytes
        };
        let made = value.cast_to(cast.cast_type(), Some(cast.cast_options()));
        if reserved > 0 {
            self.pool.give_back(reserved);
        }
        made
    }

    /// Takes the bytes of `made` (at the top, a constant's as copied into every row of
    /// `batch`) from the pool, unless they are too few to count: the bytes taken.
    fn take(&self, made: &ColumnarValue, batch: &RecordBatch) -> Result<usize> {
        let bytes = match made {
            ColumnarValue::Array(array) => array.get_array_memory_size(),
            ColumnarValue::Scalar(value) if matches!(self.role, Role::Top | Role::Copied) => {
                value.size().saturating_mul(batch.num_rows().max(1))
            }
            ColumnarValue::Scalar(value) => value.size(),
        };
        let bytes = match self.role {
            Role::Key => bytes.saturating_mul(3),
            _ => bytes,
        };
        if bytes < COUNTED_FROM {
            return Ok(0);
        }
        let what = if self.role == Role::Key {
            format!(
                "the value of {} and the aggregation's two copies of it",
                named(self)
            )
        } else if matches!(self.role, Role::Top | Role::Copied) {
            format!(
                "the values of {} in a batch of {} rows",
                named(self),
                batch.num_rows()
            )
        } else {
            format!("the value of {}", named(self))
        };
        self.pool.try_take(bytes, &what)?;
        Ok(bytes)
    }
}

/// The longest text of an expression a refusal quotes.
const NAMED_AT_MOST: usize = 200;

/// `expr` as a refusal quotes it: cut at [`NAMED_AT_MOST`] bytes (and an ellipsis), where
/// formatting stops (a literal of 100,000,000 numbers, printed whole into a refusal, took 20 s
/// and 3 GB). A call formats its arguments whole before writing them: a literal among them is
/// at most what planning folds (`query.max_sql_bytes`), as scans fold no constant counted.
fn named(expr: &dyn Display) -> String {
    struct Cut(String);
    impl fmt::Write for Cut {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if self.0.ends_with('…') {
                return Err(fmt::Error);
            }
            let room = NAMED_AT_MOST.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let end = (0..=room)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            self.0.push_str(&s[..end]);
            self.0.push('…');
            Err(fmt::Error)
        }
    }
    let mut cut = Cut(String::new());
    // An error is where the text was cut.
    let _ = fmt::write(&mut cut, format_args!("{expr}"));
    cut.0
}

impl Display for Counted {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // Plans read as they did: the count is not part of what the expression computes.
        Display::fmt(&self.inner, f)
    }
}

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        self.role == other.role && self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for Counted {}

impl Hash for Counted {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.role.hash(state);
    }
}

#[cfg(test)]
mod tests;
