//! Functions whose one call over a batch would run long or keep much, run in pieces of the
//! batch's rows.
//!
//! DataFusion computes a batch's rows in one call, which nothing interrupts and whose working
//! memory no pool sees. Two kinds of call outgrow their arguments that way:
//! - `levenshtein(a, b)` compares every character of one text with every one of the other: two
//!   texts of 120,000 and 60,000 characters are 7 billion steps. Such a query, failed by its
//!   5 s time limit, kept two cores busy for more than ten minutes after (its slot and memory
//!   held all that while). A row past [`MOST_STEPS`] is refused, as Trino refuses it
//!   (`levenshtein_distance`: "The combined inputs for Levenshtein distance are too large"),
//!   and a batch runs in pieces of at most [`PIECE_STEPS`] steps.
//! - A regular expression function whose pattern is a column, not a constant (`regexp_like(s,
//!   p)`, `s ~ p`, `regexp_match`, `regexp_count`, `regexp_instr`, `regexp_replace`; `SIMILAR
//!   TO` takes only a constant), compiles each distinct pattern of the batch and keeps them all until
//!   the call ends: 20,000 patterns of 3 KB grew the server by 2 GB, after the query's time
//!   limit had failed it. A batch runs in pieces of at most [`PIECE_PATTERNS`] distinct
//!   patterns, each reserving [`PATTERN_BYTES`] in the query's pool while it runs.
//!
//! Before each piece, a call looks whether its query has stopped (`QueryPool::stop`: its time
//! limit, its client gone) and computes no further piece if so.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::compute::concat;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF, lit,
};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use super::json::documents;
use super::wrapped::{PoolRef, Run, Wrapped};
use crate::memory::QueryPool;

/// The most steps one row of `levenshtein` may take: Trino's bound, the longer text's
/// characters times the shorter's less one.
pub(crate) const MOST_STEPS: u64 = 1_000_000;

/// The most steps one piece computes before the call looks whether its query has stopped:
/// about 20–40 ms of a core.
const PIECE_STEPS: u64 = 16 << 20;

/// The most distinct patterns one piece compiles.
const PIECE_PATTERNS: usize = 2;

/// What one compiled pattern may take: the regex crate's default limits let a pattern's
/// automata take 10 MiB each way (forwards and, for some searches, backwards), and each search
/// cache 2 MiB.
const PATTERN_BYTES: usize = 32 << 20;

/// The regular expression functions, whose second argument is the pattern.
const PATTERNED: &[&str] = &[
    "regexp_like",
    "regexp_match",
    "regexp_count",
    "regexp_instr",
    "regexp_replace",
];

/// Replaces `levenshtein` in `ctx` by one that counts its steps, and adds the rule that runs the
/// regular expression functions and operators whose pattern is not a constant in pieces
/// ([`RowPatterns`]); all stop with the query of `pool`. Call after `bounded::register`: the
/// rule wraps the instance that one has put in the plan.
pub fn register(ctx: &SessionContext, pool: &Arc<QueryPool>) {
    let state = ctx.state();
    let functions = state.scalar_functions();
    if let Some(inner) = functions.get("levenshtein")
        && !is_pieced(inner)
    {
        ctx.register_udf(pieced(inner, How::Steps, pool));
    }
    let Some(like) = functions.get("regexp_like") else {
        return;
    };
    ctx.add_analyzer_rule(Arc::new(RowPatterns {
        like: Arc::new(pieced(like, How::Patterns, pool)),
        pool: pool.clone(),
    }));
}

fn pieced(inner: &Arc<ScalarUDF>, how: How, pool: &Arc<QueryPool>) -> ScalarUDF {
    ScalarUDF::new_from_impl(Wrapped {
        inner: inner.clone(),
        run: Pieces {
            how,
            pool: PoolRef(pool.clone()),
        },
    })
}

fn is_pieced(function: &ScalarUDF) -> bool {
    function.inner().as_any().is::<Wrapped<Pieces>>()
}

/// What a call's pieces are cut by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum How {
    /// `levenshtein`'s steps.
    Steps,
    /// The distinct patterns of the second argument.
    Patterns,
}

/// How a call runs: its batch in pieces ([`How`]), none once its query has stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Pieces {
    how: How,
    pool: PoolRef,
}

/// Rows `start..end` of a batch, which hold `reserve` bytes while they run.
struct Piece {
    start: usize,
    end: usize,
    reserve: usize,
}

impl Run for Pieces {
    /// A pieced call stays one: `regexp_like` would otherwise become `~`, which runs whole.
    fn simplified(&self) -> bool {
        false
    }

    fn run(&self, inner: &ScalarUDF, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            if self.how == How::Steps {
                steps(&args.args, 1)?;
            }
            return inner.invoke_with_args(args);
        }
        let rows = args.number_rows;
        let pieces = match self.how {
            How::Steps => by_steps(&steps(&args.args, rows)?),
            How::Patterns => match &args.args[1] {
                ColumnarValue::Array(patterns) => by_patterns(patterns)?,
                // One pattern, compiled once.
                ColumnarValue::Scalar(_) => return inner.invoke_with_args(args),
            },
        };
        let mut made: Vec<ArrayRef> = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            let Piece {
                start,
                end,
                reserve,
            } = *piece;
            let pool = &self.pool.0;
            if pool.stopped() {
                return exec_err!(
                    "{}(…) stopped with its query, after {start} of its batch's {rows} rows",
                    inner.name()
                );
            }
            let piece = match pieces.len() {
                1 => args.clone(),
                _ => ScalarFunctionArgs {
                    args: args
                        .args
                        .iter()
                        .map(|a| match a {
                            ColumnarValue::Array(a) => {
                                ColumnarValue::Array(a.slice(start, end - start))
                            }
                            scalar => scalar.clone(),
                        })
                        .collect(),
                    number_rows: end - start,
                    ..args.clone()
                },
            };
            if reserve > 0 {
                pool.try_take(
                    reserve,
                    &format!("the patterns {}(…) compiles", inner.name()),
                )?;
            }
            let value = inner.invoke_with_args(piece);
            if reserve > 0 {
                pool.give_back(reserve);
            }
            made.push(value?.into_array(end - start)?);
        }
        if made.len() == 1 {
            return Ok(ColumnarValue::Array(made.remove(0)));
        }
        let pieces: Vec<&dyn Array> = made.iter().map(|a| a.as_ref()).collect();
        Ok(ColumnarValue::Array(concat(&pieces)?))
    }
}

/// Pieces of at most [`PIECE_STEPS`] steps (a row of more alone).
fn by_steps(steps: &[u64]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let (mut start, mut taken) = (0, 0);
    for (row, &s) in steps.iter().enumerate() {
        if row > start && taken + s > PIECE_STEPS {
            pieces.push(Piece {
                start,
                end: row,
                reserve: 0,
            });
            (start, taken) = (row, 0);
        }
        taken += s;
    }
    pieces.push(Piece {
        start,
        end: steps.len(),
        reserve: 0,
    });
    pieces
}

/// Pieces of at most [`PIECE_PATTERNS`] distinct patterns.
fn by_patterns(patterns: &ArrayRef) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut start = 0;
    for (row, pattern) in documents(patterns)?.enumerate() {
        let Some(pattern) = pattern else { continue };
        if seen.contains(pattern) {
            continue;
        }
        if seen.len() == PIECE_PATTERNS {
            pieces.push(Piece {
                start,
                end: row,
                reserve: seen.len() * PATTERN_BYTES,
            });
            seen.clear();
            start = row;
        }
        seen.insert(pattern);
    }
    pieces.push(Piece {
        start,
        end: patterns.len(),
        reserve: seen.len() * PATTERN_BYTES,
    });
    Ok(pieces)
}

/// The steps of each of `rows` rows of `levenshtein`'s two texts (the longer's characters times
/// the shorter's less one; none when either is empty or null), refused past [`MOST_STEPS`].
fn steps(args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
    let [a, b] = args else {
        return exec_err!("levenshtein takes two texts, given {}", args.len());
    };
    let (a, b) = (characters(a, rows)?, characters(b, rows)?);
    let steps: Vec<u64> = a
        .into_iter()
        .zip(b)
        .map(|(a, b)| a.max(b).saturating_mul(a.min(b).saturating_sub(1)))
        .collect();
    if steps.iter().any(|&s| s > MOST_STEPS) {
        return exec_err!(
            "The combined inputs for Levenshtein distance are too large: a row's texts would \
             take more than {MOST_STEPS} steps (the longer text's characters times the \
             shorter's less one)"
        );
    }
    Ok(steps)
}

/// The characters of the text in each of `rows` rows (0 for null).
fn characters(v: &ColumnarValue, rows: usize) -> Result<Vec<u64>> {
    let count = |t: Option<&str>| t.map_or(0, |t| t.chars().count() as u64);
    if let ColumnarValue::Scalar(s) = v {
        return Ok(vec![count(s.try_as_str().flatten()); rows]);
    }
    Ok(documents(&v.to_array(rows)?)?.map(count).collect())
}

/// An analyzer rule: a regular expression function or operator whose pattern is not a
/// constant calls a pieced instance (`s ~ p`, `s ~* p`, `s !~ p` become `regexp_like`, which
/// DataFusion runs the same way). A constant pattern is left alone: it is
/// compiled once, and the simplifier turns such operators into cheaper ones.
#[derive(Debug)]
struct RowPatterns {
    like: Arc<ScalarUDF>,
    pool: Arc<QueryPool>,
}

/// A regular expression operator (whether it ignores case, whether it is negated).
fn regex_operator(op: Operator) -> Option<(bool, bool)> {
    match op {
        Operator::RegexMatch => Some((false, false)),
        Operator::RegexIMatch => Some((true, false)),
        Operator::RegexNotMatch => Some((false, true)),
        Operator::RegexNotIMatch => Some((true, true)),
        _ => None,
    }
}

/// Whether `expr` matches a pattern that is not a constant, not yet in pieces.
fn patterns_from_rows(expr: &Expr) -> bool {
    let constant = |e: &Expr| matches!(e, Expr::Literal(..));
    match expr {
        Expr::ScalarFunction(call) => {
            PATTERNED.contains(&call.func.name())
                && !is_pieced(&call.func)
                && call.args.get(1).is_some_and(|p| !constant(p))
        }
        Expr::BinaryExpr(b) => regex_operator(b.op).is_some() && !constant(&b.right),
        _ => false,
    }
}

impl RowPatterns {
    fn rewritten(&self, expr: Expr) -> Transformed<Expr> {
        if !patterns_from_rows(&expr) {
            return Transformed::no(expr);
        }
        match expr {
            Expr::ScalarFunction(call) => {
                let func = Arc::new(pieced(&call.func, How::Patterns, &self.pool));
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    func, call.args,
                )))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (insensitive, negated) = regex_operator(op).unwrap_or_default();
                let mut args = vec![*left, *right];
                if insensitive {
                    args.push(lit("i"));
                }
                let call = Expr::ScalarFunction(ScalarFunction::new_udf(self.like.clone(), args));
                Transformed::yes(match negated {
                    true => Expr::Not(Box::new(call)),
                    false => call,
                })
            }
            other => Transformed::no(other),
        }
    }
}

impl AnalyzerRule for RowPatterns {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            // An operator that becomes a call keeps the name the plan above knows it by.
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                // (A name is saved only where it may change: making it formats the expression.)
                if !e.exists(|e| Ok(patterns_from_rows(e)))? {
                    return Ok(Transformed::no(e));
                }
                let name = names.save(&e);
                Ok(e.transform_up(|e| Ok(self.rewritten(e)))?
                    .update_data(|e| name.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "patterns_in_pieces"
    }
}

#[cfg(test)]
mod tests;
