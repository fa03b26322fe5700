//! Functions whose values can outgrow their arguments, bounded by the query's memory.
//!
//! DataFusion's memory pool sees operators (sorts, joins, aggregations), not the values scalar
//! functions make: `range(0, 400000000)` or `repeat('x', 1500000000)` would allocate gigabytes
//! that no pool counts. Each such function is wrapped: before it runs, the size of what it will
//! make is estimated from its arguments and reserved in the query's pool (refused with
//! `ResourcesExhausted` past the query's or the tenant's memory); a function that grows with its
//! inputs (`||`, `concat`, …) reserves their sum, so a value doubled through subqueries is stopped
//! before the step that would cross the limit is made; after it runs, the size of what it made is
//! checked the same way. The reservation ends when the function returns: the value then travels
//! in a batch that the pages count (see `trino::query`).
//!
//! Every other function is wrapped too, its value taken to be no larger than its arguments
//! ([`Growth::Unlisted`]): most copy what they are given (`split_part`, `substr_index`,
//! `array_slice`, `greatest`), and DataFusion first copies their constant arguments into arrays.
//! Checked only after it ran, `split_part` of a 900 MB text grew the server by 3.4 GB at the
//! 1 GiB limit.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{ColumnarValue, Expr, LogicalPlan, ScalarFunctionArgs, ScalarUDF};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use super::wrapped::{PoolRef, Run, Wrapped};
use crate::memory::QueryPool;
use crate::memory::guard::COUNTED_FROM;
use sizes::*;
pub(crate) use sizes::{elements, total_length};

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `range`/`generate_series(start, stop[, step])` (`inclusive` for the latter).
    Range { inclusive: bool },
    /// `repeat(text, n)`.
    Repeat,
    /// `lpad`/`rpad(text, n[, fill])`: `n` characters.
    Pad,
    /// `array_repeat(element, n)`: per copy the element's bytes and [`REPEATED_ELEMENT_BYTES`],
    /// and for a list, [`REPEATED_ELEMENT_BYTES`] per element of it as well.
    ArrayRepeat,
    /// `array_resize(array, n[, value])`.
    ArrayResize,
    /// `replace(text, from, to)`: each match of `from` becomes `to`.
    Replace,
    /// `regexp_replace(text, pattern, to[, flags])`: at most one match per position.
    RegexpReplace,
    /// Grows with its inputs (`concat`, `array_concat`, `upper`, …): at least the sum of their
    /// sizes (exact for concatenation), reserved before it runs and checked again after.
    /// `copies`: DataFusion first copies a constant argument beside a column into an array of
    /// the batch's rows (`make_scalar_function`), so that constant is counted twice.
    WithInputs { copies: bool },
    /// `string_to_array(text, delimiter)`: the text, and per element an offset and a list
    /// position; at most one element per byte of text over the delimiter's length.
    Split,
    /// `translate(text, from, to)`: DataFusion copies the text into an array of the batch's
    /// rows (even a constant), builds each row's result in a buffer that doubles, copies it
    /// out and into the result's buffer (about six times the text); unless all three are ASCII,
    /// each row is first split into characters, 32 bytes each (two vectors of string slices,
    /// reused from row to row).
    Translate,
    /// `concat_ws(separator, text, …)`: the texts, and the separator between each two of them
    /// in every row. Counted once a row, 30 texts joined by 1 MB made 1.45 GB over 50 rows
    /// before the check after.
    Separated,
    /// `array_to_string(list, separator[, null text])`: each element written out (up to
    /// [`ELEMENT_TEXT_BYTES`] for a number, its own bytes for a text) with the separator after
    /// it, four times over (buffers that double). `array_to_string(range(0, 100000), repeat('x', 5000))` made 500 MB from 800 KB.
    ListJoined,
    /// `regexp_match(text, pattern[, flags])`: the text each group captures, up to the whole
    /// text for each group (groups nest: `((((a*))))`), written into a list whose buffer
    /// doubles. 100 nested groups over a 4 MB text grew the server by 674 MiB.
    Captures,
    /// `to_char`/`date_format(value, format)` and `format_datetime(value, pattern)`: each row
    /// writes the format out, up to [`FORMATTED_BYTES`] per byte of it. `copies`: the format
    /// is first copied into every row beside a column (`format_datetime`). `to_char(ts,
    /// repeat('%c', 20000))` over 2,000 rows made 960 MB before any check.
    Format { copies: bool },
    /// `json_extract(text, path)`: the value found is parsed into a tree before it is written
    /// out again, up to [`TREE_BYTES`] per byte of its text, one row at a time; then the texts
    /// it writes (and a constant text first copied into every row beside a column path). `json_extract` of a list of 50 million numbers (100 MB of text) grew the
    /// server by 2.8 GB at a 1 GiB limit.
    Tree,
    /// Any function not in [`BOUNDED`]: a value no larger than its arguments together, unless of
    /// a fixed width (a number, a time, a truth: `fixed_width`, set per call from its type), made
    /// after each constant argument is copied into an array (of the batch's rows, or of one row
    /// when every argument is a constant, and then the value is copied back into a constant).
    Unlisted { fixed_width: bool },
    /// Compares its arrays' elements in Arrow's row format (`array_distinct`, `array_union`,
    /// `array_intersect`, `array_except`, `array_has_any`, `array_has_all`): every element is
    /// encoded into a row (about its own size again), and DataFusion keeps a list of the rows
    /// and a hash set of them, [`ROW_BYTES`] per element. `array_distinct(range(0, 1e8))`
    /// took 5 GB from 800 MB of input. `scalar_once`: a constant argument beside a column is
    /// converted once (`array_has_any`, `array_has_all`), not copied into every row.
    Rows { scalar_once: bool },
    /// `arrays_zip(list, …)`: each row's lists padded to its longest, so every list takes the
    /// longest's length; its elements copied, and each padding element a null of its list's
    /// element type ([`padded_bytes`]), into buffers that double. `arrays_zip(range(0, 10000000), [1], …)`
    /// with 20 lists made 1.6 GB from 80 MB of input before the check after it.
    Zipped,
    /// `array_positions(list, element)`: up to one position per element, each collected as
    /// an `Option<u64>` into a vector that doubles, all rows' vectors kept until the lists are
    /// built from them in a builder that doubles too ([`POSITION_BYTES`]). Over a list of
    /// truths (a bit each) that is 384 bits an element.
    Positions,
}

/// What `array_repeat` makes per element besides the element's bytes: DataFusion lists the
/// index of each copy (8 bytes, in a vector and again in the array made from it), then takes
/// the copies by those indices (an offset, or a view of 16 bytes that shares the text). A
/// list is repeated by the index of each of its elements the same way:
/// `flatten(array_repeat(range(0, 1000), 100000))` grew the server by 1.5 GB at 1 GiB.
/// `array_repeat(user_id, 100000)` over 2,000 rows, 6-byte texts counted as 6 bytes an
/// element, grew the server by 2.3 GB at a 1 GiB limit before the next function was refused.
const REPEATED_ELEMENT_BYTES: u128 = 32;

/// The most a list element other than a text takes written out: a 64-bit number's 20
/// characters, a double's 24 (`-1.2345678901234567e-308`).
const ELEMENT_TEXT_BYTES: u128 = 24;

/// The most a byte of a date's format writes: `%+` (two bytes) is an instant of 32
/// (`2001-07-08T00:34:60.026490+09:30`), `%c` 24; a pattern letter of `format_datetime` at
/// most 9 (`EEEE`, a day's name).
const FORMATTED_BYTES: u128 = 16;

/// What a parsed JSON value may take per byte of its text: a number in a list is one byte and
/// a comma, parsed into a value of 32 bytes in a vector that may be half empty.
const TREE_BYTES: u128 = 32;

/// What a function comparing elements as rows keeps per element besides the encoded rows: a
/// row reference (24 bytes) in a list, and one in a hash set that may be half empty.
const ROW_BYTES: u128 = 80;

/// What `array_positions` may hold per element of its list: the position as an `Option<u64>`
/// (16 bytes) in a vector that may be half empty, then 8 bytes in a builder that may be too.
const POSITION_BYTES: u128 = 48;

/// What `array_positions` holds per row besides: the row's slot among the vectors (24 bytes),
/// a vector of at least four positions once one matches (64), the list's offset in a builder
/// that doubles (8), and its validity.
const POSITIONS_ROW_BYTES: u128 = 112;

const BOUNDED: &[(&str, Growth)] = &[
    ("range", Growth::Range { inclusive: false }),
    ("generate_series", Growth::Range { inclusive: true }),
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("regexp_match", Growth::Captures),
    ("concat", Growth::WithInputs { copies: false }),
    (super::concat::NAME, Growth::WithInputs { copies: false }),
    ("concat_ws", Growth::Separated),
    ("array_concat", Growth::WithInputs { copies: true }),
    ("make_array", Growth::WithInputs { copies: true }),
    ("map", Growth::WithInputs { copies: false }),
    ("array_append", Growth::WithInputs { copies: true }),
    ("array_prepend", Growth::WithInputs { copies: true }),
    ("array_union", Growth::Rows { scalar_once: false }),
    ("array_intersect", Growth::Rows { scalar_once: false }),
    ("array_except", Growth::Rows { scalar_once: false }),
    ("array_distinct", Growth::Rows { scalar_once: false }),
    ("array_has_any", Growth::Rows { scalar_once: true }),
    ("array_has_all", Growth::Rows { scalar_once: true }),
    ("flatten", Growth::WithInputs { copies: false }),
    ("string_to_array", Growth::Split),
    ("translate", Growth::Translate),
    ("json_extract", Growth::Tree),
    ("to_char", Growth::Format { copies: false }),
    ("format_datetime", Growth::Format { copies: true }),
    ("overlay", Growth::WithInputs { copies: true }),
    ("upper", Growth::WithInputs { copies: false }),
    ("lower", Growth::WithInputs { copies: false }),
    ("initcap", Growth::WithInputs { copies: false }),
    ("reverse", Growth::WithInputs { copies: false }),
    ("encode", Growth::WithInputs { copies: false }),
    ("array_to_string", Growth::ListJoined),
    ("arrays_zip", Growth::Zipped),
    ("array_positions", Growth::Positions),
    // Copies of their input, whole or nearly: made from a value still held, each doubled what
    // the query held before the check after it (`array_reverse(range(0, 120000000))` grew the
    // server by 2.8 GB at the 1 GiB default).
    ("array_reverse", Growth::WithInputs { copies: true }),
    ("array_sort", Growth::WithInputs { copies: true }),
    ("array_replace", Growth::WithInputs { copies: true }),
    ("array_replace_n", Growth::WithInputs { copies: true }),
    ("array_replace_all", Growth::WithInputs { copies: true }),
    ("array_remove", Growth::WithInputs { copies: true }),
    ("array_remove_n", Growth::WithInputs { copies: true }),
    ("array_remove_all", Growth::WithInputs { copies: true }),
    ("array_pop_back", Growth::WithInputs { copies: true }),
    ("array_pop_front", Growth::WithInputs { copies: true }),
    ("substr", Growth::WithInputs { copies: false }),
    ("left", Growth::WithInputs { copies: false }),
    ("right", Growth::WithInputs { copies: false }),
    ("btrim", Growth::WithInputs { copies: false }),
    ("ltrim", Growth::WithInputs { copies: false }),
    ("rtrim", Growth::WithInputs { copies: false }),
];

/// Replaces the functions of [`BOUNDED`] in `ctx` by bounded ones drawing on `pool`; while
/// the query is planned, they make no value over `folded_at_most` bytes (see `memory::guard`).
/// Calls that DataFusion's planners of syntax build with their own instances of these functions
/// (`OVERLAY(… PLACING …)`, `[…]` array literals, `||` between arrays, `MAP {…}`) are turned
/// into calls of the session's ([`SessionInstances`]).
pub fn register(ctx: &SessionContext, pool: &Arc<QueryPool>, folded_at_most: usize) {
    let state = ctx.state();
    let functions = state.scalar_functions();
    let mut bounded = HashMap::new();
    let unlisted = functions
        .iter()
        // A function once, under its own name (the registry lists its aliases too).
        // An asynchronous function is planned by its type: it stays as it is.
        .filter(|(key, f)| {
            key.as_str() == f.name()
                && !BOUNDED.iter().any(|(n, _)| n == key)
                && f.as_async().is_none()
        })
        .map(|(key, _)| (key.as_str(), Growth::Unlisted { fixed_width: false }));
    for (name, growth) in BOUNDED.iter().copied().chain(unlisted) {
        let Some(inner) = functions.get(name) else {
            continue;
        };
        // Already wrapped (a registry shared between sessions): wrap the original only.
        if is_bounded(inner) {
            continue;
        }
        let function = ScalarUDF::new_from_impl(Wrapped {
            inner: inner.clone(),
            run: Bounded {
                growth,
                pool: PoolRef(pool.clone()),
                folded_at_most,
            },
        });
        bounded.insert(name.to_string(), Arc::new(function.clone()));
        ctx.register_udf(function);
    }
    // Each name stays with the function it named: a wrapper is registered with its aliases,
    // and an alias may be another function's name (DataFusion's `map_extract` is also
    // `element_at`, a name Floe's own `element_at` took over).
    let now = ctx.state();
    for (key, original) in functions {
        let Some(wrapper) = bounded.get(original.name()) else {
            continue;
        };
        if wraps(wrapper, original)
            && now
                .scalar_functions()
                .get(key)
                .is_some_and(|named| **named != **wrapper)
        {
            ctx.register_udf((**wrapper).clone());
        }
    }
    ctx.add_analyzer_rule(Arc::new(SessionInstances { bounded }));
}

/// Whether `function` is one of [`BOUNDED`], wrapped: its estimate counts the constants it
/// copies into every row.
pub(crate) fn is_bounded(function: &ScalarUDF) -> bool {
    function.inner().as_any().is::<Wrapped<Bounded>>()
}

/// Whether `bounded` (a session's instance) wraps `function`.
fn wraps(bounded: &ScalarUDF, function: &ScalarUDF) -> bool {
    bounded
        .inner()
        .as_any()
        .downcast_ref::<Wrapped<Bounded>>()
        .is_some_and(|b| *b.inner == *function)
}

/// `array_has([a, b, …], x)` (how `x = ANY([a, b, …])` is planned) with DataFusion's own
/// `make_array` as its haystack: the simplifier makes it `x IN (a, b, …)` only for that
/// instance (and the two differ on nulls), so no array is made.
/// Only `make_array`: any other haystack (`x = ANY(range(…))`) stays bounded.
fn haystack_unwrapped(mut call: ScalarFunction) -> (ScalarFunction, bool) {
    let mut changed = false;
    if let Some(Expr::ScalarFunction(haystack)) = call.args.first_mut()
        && let Some(bounded) = haystack
            .func
            .inner()
            .as_any()
            .downcast_ref::<Wrapped<Bounded>>()
        && bounded.inner.name() == "make_array"
    {
        haystack.func = bounded.inner.clone();
        changed = true;
    }
    (call, changed)
}

/// An analyzer rule: every call of a function of [`BOUNDED`] calls the session's bounded
/// instance, whatever instance the plan was built with.
#[derive(Debug)]
struct SessionInstances {
    bounded: HashMap<String, Arc<ScalarUDF>>,
}

impl AnalyzerRule for SessionInstances {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let calls = |expr: Expr| {
            expr.transform_up(|expr| match expr {
                Expr::ScalarFunction(call) => {
                    let (call, unwrapped) = match call.func.name() {
                        "array_has" => haystack_unwrapped(call),
                        _ => (call, false),
                    };
                    match self.bounded.get(call.func.name()) {
                        // Only a call of the function the session's wraps: another wrapper of
                        // it (`pieces`) stays.
                        Some(session) if wraps(session, &call.func) => {
                            Ok(Transformed::yes(Expr::ScalarFunction(
                                ScalarFunction::new_udf(session.clone(), call.args),
                            )))
                        }
                        _ => Ok(Transformed::new_transformed(
                            Expr::ScalarFunction(call),
                            unwrapped,
                        )),
                    }
                }
                other => Ok(Transformed::no(other)),
            })
        };
        plan.transform_up_with_subqueries(|node| node.map_expressions(calls))
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "bounded_functions"
    }
}

/// How a growing function's calls run: their output reserved in the query's pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bounded {
    growth: Growth,
    pool: PoolRef,
    /// The largest value made while the query is planned (constant folding).
    folded_at_most: usize,
}

impl Run for Bounded {
    /// A function not listed takes its rewrites (some must: `coalesce`, `now()`); a listed one
    /// keeps its call, bounded (`concat_ws('', …)` would become DataFusion's own `concat`).
    fn simplified(&self) -> bool {
        matches!(self.growth, Growth::Unlisted { .. })
    }

    fn run(&self, inner: &ScalarUDF, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let pool = &self.pool.0;
        let name = inner.name();
        let growth = match self.growth {
            Growth::Unlisted { .. } => Growth::Unlisted {
                fixed_width: fixed_width(args.return_field.data_type()),
            },
            growth => growth,
        };
        let held = estimate(growth, &args.args, args.number_rows)?;
        // Constant folding copies what it makes into the plan, where no pool counts it: a
        // large value is refused there, and the planner leaves the call to the running query.
        let planning = pool.planning();
        if planning && held > self.folded_at_most {
            return Err(not_folded(name, held, self.folded_at_most));
        }
        // A few bytes are not worth the budget's lock (and a tenant past its share would be
        // refused even nothing).
        let taken = if held >= COUNTED_FROM {
            pool.try_take(held, &format!("{name}(…)"))?;
            held
        } else {
            0
        };
        let made = inner.invoke_with_args(args);
        if taken > 0 {
            pool.give_back(taken);
        }
        let made = made?;
        let size = match &made {
            ColumnarValue::Array(a) => a.get_array_memory_size(),
            ColumnarValue::Scalar(s) => s.size(),
        };
        if planning && size > self.folded_at_most {
            return Err(not_folded(name, size, self.folded_at_most));
        }
        if size > held && size >= COUNTED_FROM {
            pool.try_take(size, &format!("the value of {name}(…)"))?;
            pool.give_back(size);
        }
        Ok(made)
    }
}

/// The refusal of a value too large to fold into a plan (the planner then keeps the call).
fn not_folded(name: &str, bytes: usize, limit: usize) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::ResourcesExhausted(format!(
        "{name}(…) would make {bytes} bytes while the query is planned, more than \
         query.max_sql_bytes ({limit}); it runs with the query instead"
    ))
}

/// Bytes `growth` will make from `args` (an upper bound where it can be known; for functions that
/// grow with their inputs, the sum of the inputs, which the check after the run completes).
fn estimate(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<usize> {
    let batch_rows = rows;
    // Scalars only: the function runs once.
    let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        1
    } else {
        rows
    };
    let mut total: u128 = 0;
    match growth {
        Growth::Range { inclusive } => {
            let (start, stop, step) = match args.len() {
                1 => (None, &args[0], None),
                2 => (Some(&args[0]), &args[1], None),
                _ => (Some(&args[0]), &args[1], Some(&args[2])),
            };
            let stop = instants(stop, rows)?;
            let start = match start {
                Some(s) => instants(s, rows)?,
                None => vec![Some(0); rows],
            };
            let step = match step {
                Some(s) => steps(s, rows)?,
                None => vec![Some(1); rows],
            };
            for i in 0..rows {
                if let (Some(a), Some(b), Some(s)) = (start[i], stop[i], step[i])
                    && s != 0
                {
                    let span = (b as i128 - a as i128) / s as i128;
                    let n = span.max(0) as u128 + u128::from(inclusive);
                    total += n * 8;
                }
            }
        }
        Growth::Repeat => {
            let text = lengths(&args[0], rows)?;
            let times = ints(&args[1], rows)?;
            for i in 0..rows {
                total += text[i] as u128 * times[i].unwrap_or(0).max(0) as u128;
            }
        }
        Growth::Pad => {
            let n = ints(&args[1], rows)?;
            for v in n.into_iter().flatten() {
                // A character is at most 4 bytes.
                total += v.max(0) as u128 * 4;
            }
        }
        Growth::ArrayRepeat | Growth::ArrayResize => {
            let element = match growth {
                Growth::ArrayRepeat => lengths(&args[0], rows)?,
                _ => vec![8; rows],
            };
            let made = match growth {
                Growth::ArrayRepeat => {
                    let listed = elements(&args[0], rows) / rows.max(1) as u128;
                    REPEATED_ELEMENT_BYTES * (1 + listed)
                }
                _ => 0,
            };
            let n = ints(&args[1], rows)?;
            for i in 0..rows {
                total += (element[i].max(1) as u128 + made) * n[i].unwrap_or(0).max(0) as u128;
            }
        }
        Growth::Replace | Growth::RegexpReplace => {
            let text = lengths(&args[0], rows)?;
            let from = lengths(&args[1], rows)?;
            let to = lengths(&args[2], rows)?;
            for i in 0..rows {
                let matches = match growth {
                    Growth::Replace => text[i] / from[i].max(1) + 1,
                    _ => text[i] + 1,
                };
                total += text[i] as u128 + matches as u128 * to[i] as u128;
            }
        }
        Growth::WithInputs { copies } => {
            // A value that doubles itself step by step is refused before the step that would
            // cross the limit is made, not after.
            for a in args {
                let copied = copies && rows > 1 && matches!(a, ColumnarValue::Scalar(_));
                total += total_length(a, rows)? * (1 + u128::from(copied));
            }
        }
        Growth::Unlisted { fixed_width } => {
            let mut given = 0;
            for a in args {
                let size = total_length(a, rows)?;
                given += size;
                if matches!(a, ColumnarValue::Scalar(_)) {
                    total += size;
                }
            }
            if !fixed_width {
                let constant = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
                total += given * (1 + u128::from(constant && !args.is_empty()));
            }
        }
        Growth::Rows { scalar_once } => {
            for a in args {
                let rows = match a {
                    ColumnarValue::Scalar(_) if scalar_once => 1,
                    _ => rows,
                };
                total += total_length(a, rows)? * 2 + elements(a, rows) * ROW_BYTES;
            }
        }
        Growth::Zipped => {
            // DataFusion first copies a constant list beside a column into every row; then
            // each list's elements are copied, and the padding made for each row.
            let mut longest = vec![0; rows];
            let mut per_element = 0;
            for a in args {
                // Copied row by row into buffers that double: up to twice their size.
                let copied = rows > 1 && matches!(a, ColumnarValue::Scalar(_));
                total += total_length(a, rows)? * (2 + u128::from(copied));
                for (l, n) in longest.iter_mut().zip(list_lengths(a, rows)?) {
                    *l = n.max(*l);
                }
                if let DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) =
                    a.data_type()
                {
                    per_element += padded_bytes(f.data_type());
                }
                // Per row and list: its offsets and whether it is null, as DataFusion reads
                // them.
                total += rows as u128 * 9;
            }
            // Per row: the zipped list's offset, and whether it is null (twice).
            total += longest.iter().sum::<u128>() * per_element * 2 + rows as u128 * 6;
        }
        Growth::Positions => {
            for a in args {
                let copied = rows > 1 && matches!(a, ColumnarValue::Scalar(_));
                total += total_length(a, rows)? * (1 + u128::from(copied));
            }
            total += elements(&args[0], rows) * POSITION_BYTES + rows as u128 * POSITIONS_ROW_BYTES;
        }
        Growth::Split => {
            let text = lengths(&args[0], rows)?;
            let delimiter = lengths(&args[1], rows)?;
            for i in 0..rows {
                let elements = text[i] / delimiter[i].max(1) + 1;
                total += text[i] as u128 + elements as u128 * 8;
            }
        }
        Growth::Captures => {
            let text = lengths(&args[0], rows)?;
            let groups = groups(&args[1], rows)?;
            for i in 0..rows {
                total += text[i] as u128 * (groups[i] + 1) * 2;
            }
        }
        Growth::Separated => {
            for a in &args[1..] {
                total += total_length(a, rows)?;
            }
            let separators = args.len().saturating_sub(2) as u128;
            total += total_length(&args[0], rows)? * separators;
        }
        Growth::ListJoined => {
            let copied = rows > 1 && matches!(args[0], ColumnarValue::Scalar(_));
            let longest = |a: Option<&ColumnarValue>| -> Result<u128> {
                Ok(match a {
                    Some(a) => lengths(a, rows)?.into_iter().max().unwrap_or(0) as u128,
                    None => 0,
                })
            };
            let per_element = ELEMENT_TEXT_BYTES + longest(args.get(1))? + longest(args.get(2))?;
            // Each row is written into a string that doubles, then copied into the result's
            // buffer, which doubles too: up to four times the text at once (500 MB written
            // took 1.2–1.4 GB).
            total += total_length(&args[0], rows)? * (1 + u128::from(copied))
                + elements(&args[0], rows) * per_element * 4;
        }
        Growth::Format { copies } => {
            let copied = copies && rows > 1 && matches!(args[1], ColumnarValue::Scalar(_));
            total += total_length(&args[1], rows)? * (FORMATTED_BYTES + u128::from(copied));
        }
        Growth::Tree => {
            // One tree at a time: the longest text's. A constant text beside a column path is
            // first copied into every row.
            let longest = lengths(&args[0], rows)?.into_iter().max().unwrap_or(0);
            let copied = rows > 1 && matches!(args[0], ColumnarValue::Scalar(_));
            total += longest as u128 * TREE_BYTES
                + total_length(&args[0], rows)? * (1 + u128::from(copied));
        }
        Growth::Translate => {
            // Made for every row of the batch, even from scalars.
            let text = total_length(&args[0], batch_rows)?;
            // Byte by byte when the text, `from` and `to` are all ASCII (the last two
            // constants); otherwise each row is split into characters, in vectors reused row
            // after row.
            let constant_ascii = |v: &ColumnarValue| {
                matches!(v, ColumnarValue::Scalar(s)
                    if s.try_as_str().flatten().is_some_and(str::is_ascii))
            };
            let by_bytes = ascii(&args[0])? && constant_ascii(&args[1]) && constant_ascii(&args[2]);
            let longest = if by_bytes {
                0
            } else {
                lengths(&args[0], rows)?.into_iter().max().unwrap_or(0)
            };
            total += text * 6 + longest as u128 * 32;
        }
    }
    Ok(usize::try_from(total).unwrap_or(usize::MAX))
}

mod sizes;
#[cfg(test)]
mod tests;
