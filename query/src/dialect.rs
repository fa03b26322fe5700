//! Trino's SQL where it differs from DataFusion's, and the read-only guard.
//!
//! A statement goes through three steps before DataFusion plans it:
//! 1. A pass over the tokens rewrites what the parser cannot take: time travel
//!    (`t FOR VERSION AS OF 42`, `t FOR TIMESTAMP AS OF TIMESTAMP '… UTC'`) becomes a reference to
//!    a table registered at that snapshot (`"t@v42"`, `"t@t<millis>"`), and a timestamp literal
//!    with a zone becomes a `TIMESTAMP WITH TIME ZONE` cast of the same instant.
//! 2. The parsed statement is classified: queries (`SELECT`, `WITH`, `VALUES`, `EXPLAIN` of a
//!    query) pass; everything else is refused by its kind, before planning.
//! 3. Trino functions with a different shape are rewritten in the tree (`count_if`, `if`,
//!    `approx_percentile`); the rest are UDFs (`functions.rs`).

use std::ops::ControlFlow;
use std::str::FromStr;

use arrow::array::timezone::Tz;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use datafusion::sql::parser::{DFParser, DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, SetExpr, Statement, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::{Error, functions};

/// A snapshot of a table that the statement reads, registered under `name` before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The table as named (without schema).
    pub table: String,
    /// The schema, when the statement named one.
    pub schema: Option<String>,
    pub at: AsOf,
    /// The name the rewritten statement uses for it.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// `FOR VERSION AS OF <snapshot id>`.
    Version(i64),
    /// `FOR TIMESTAMP AS OF <instant>`, in milliseconds since the epoch: the snapshot current then.
    Timestamp(i64),
}

/// A statement ready for DataFusion's planner.
#[derive(Debug)]
pub struct Translated {
    pub statement: DFStatement,
    pub snapshots: Vec<SnapshotRef>,
}

/// Translates one Trino statement. `max_depth` bounds the parser's recursion and `max_operators`
/// the operators, set operations and joins (each one level of the expression or query tree,
/// which later passes walk recursively; see `adds_a_level`), so deeply nested or very long
/// expressions are refused rather than exhausting the stack.
pub fn translate(sql: &str, max_depth: usize, max_operators: usize) -> Result<Translated, Error> {
    let (sql, snapshots) = rewrite_tokens(sql, max_depth, max_operators)?;
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql.as_str())
        .with_dialect(&dialect)
        .with_recursion_limit(max_depth)
        .build()
        .and_then(|mut p: DFParser| p.parse_statements())
        .map_err(|e| Error::Syntax(clean_parser_error(&e.to_string())))?;
    if statements.len() != 1 {
        return Err(Error::Syntax(format!(
            "expected exactly one statement, found {}",
            statements.len()
        )));
    }
    let mut statement = statements
        .pop_front()
        .ok_or_else(|| Error::Syntax("expected exactly one statement, found none".to_string()))?;
    guard(&statement)?;
    if let Some(query) = sql_statement_mut(&mut statement) {
        let mut rewriter = Rewriter;
        if let ControlFlow::Break(e) = query.visit(&mut rewriter) {
            return Err(e);
        }
    }
    Ok(Translated {
        statement,
        snapshots,
    })
}

fn clean_parser_error(message: &str) -> String {
    let m = message
        .trim_start_matches("SQL error: ")
        .trim_start_matches("ParserError(\"")
        .trim_end_matches("\")");
    if m.to_ascii_lowercase().contains("recursion") {
        "SQL is nested too deeply".to_string()
    } else {
        m.to_string()
    }
}

/// The sqlparser statement inside `s`, through any `EXPLAIN`.
fn sql_statement_mut(s: &mut DFStatement) -> Option<&mut Statement> {
    match s {
        DFStatement::Statement(st) => Some(st.as_mut()),
        DFStatement::Explain(e) => sql_statement_mut(e.statement.as_mut()),
        _ => None,
    }
}

/// Refuses every statement that is not a read-only query.
fn guard(s: &DFStatement) -> Result<(), Error> {
    let denied = |what: &str| Err(Error::Denied(format!("Access Denied: Cannot {what}")));
    match s {
        DFStatement::Statement(st) => guard_sql(st),
        DFStatement::Explain(e) => guard(&e.statement),
        DFStatement::CreateExternalTable(_) => denied("create external tables"),
        DFStatement::CopyTo(_) => denied("copy data"),
        DFStatement::Reset(_) => denied("reset engine options"),
    }
}

fn guard_sql(st: &Statement) -> Result<(), Error> {
    let denied = |what: &str| Err(Error::Denied(format!("Access Denied: Cannot {what}")));
    match st {
        Statement::Query(q) => guard_query_body(&q.body),
        Statement::Explain { statement, .. } => guard_sql(statement),
        Statement::Insert(_) => denied("insert into tables"),
        Statement::Update { .. } => denied("update tables"),
        Statement::Delete(_) => denied("delete from tables"),
        Statement::Merge { .. } => denied("merge into tables"),
        Statement::Truncate { .. } => denied("truncate tables"),
        Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } | Statement::Unload { .. } => {
            denied("copy data")
        }
        Statement::Set(_) => denied("set engine options (use SET SESSION)"),
        Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateIndex(_)
        | Statement::AlterTable { .. }
        | Statement::Drop { .. }
        | Statement::DropFunction { .. } => denied("change the schema (DDL)"),
        other => {
            let kind = other
                .to_string()
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase();
            Err(Error::NotSupported(format!(
                "{kind} statements are not supported; Floe runs read-only queries"
            )))
        }
    }
}

/// `SELECT ... INTO` and data-changing statements nested in a query are refused too.
fn guard_query_body(body: &SetExpr) -> Result<(), Error> {
    match body {
        SetExpr::Select(s) if s.into.is_some() => Err(Error::Denied(
            "Access Denied: Cannot create tables (SELECT INTO)".to_string(),
        )),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => Err(
            Error::Denied("Access Denied: Cannot change data".to_string()),
        ),
        SetExpr::SetOperation { left, right, .. } => {
            guard_query_body(left)?;
            guard_query_body(right)
        }
        SetExpr::Query(q) => guard_query_body(&q.body),
        _ => Ok(()),
    }
}

/// Rewrites Trino-only function shapes and refuses table functions and file or URL reads.
struct Rewriter;

impl VisitorMut for Rewriter {
    type Break = Error;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Error> {
        let refuse = |m: &str| ControlFlow::Break(Error::NotSupported(m.to_string()));
        match factor {
            TableFactor::Table { name, args, .. } => {
                if args.is_some() {
                    return refuse("table functions are not supported");
                }
                let path_like = name.0.iter().any(|part| match part {
                    ObjectNamePart::Identifier(id) => {
                        id.quote_style == Some('\'')
                            || id.value.contains('/')
                            || id.value.contains("://")
                    }
                    _ => true,
                });
                if path_like {
                    return refuse("reading files or URLs is not supported; query tables by name");
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. } => ControlFlow::Continue(()),
            _ => refuse("this kind of table reference is not supported"),
        }
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Error> {
        // `a || b` is a function call, so that what it makes is bounded like any function's
        // (`functions/concat.rs`).
        if let Expr::BinaryOp {
            op: BinaryOperator::StringConcat,
            ..
        } = expr
        {
            let Expr::BinaryOp { left, right, .. } =
                std::mem::replace(expr, Expr::value(Value::Null))
            else {
                unreachable!("matched above")
            };
            let mut call = match parse_expr(&format!("{}(NULL, NULL)", functions::concat::NAME)) {
                Ok(e) => e,
                Err(e) => return ControlFlow::Break(e),
            };
            if let Expr::Function(f) = &mut call
                && let FunctionArguments::List(list) = &mut f.args
            {
                list.args = vec![
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(*left)),
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(*right)),
                ];
            }
            *expr = call;
            return ControlFlow::Continue(());
        }
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        // As Trino: a window hands the one value of a filtered aggregate to every row of its
        // frame, the rows filtered out included, and `memory::window_values` counts a value's
        // copies by the rows the aggregate was given.
        if f.filter.is_some() && f.over.is_some() {
            return ControlFlow::Break(Error::NotSupported(
                "FILTER is not yet supported for window functions".to_string(),
            ));
        }
        let name = f.name.to_string().to_ascii_lowercase();
        match name.as_str() {
            // approx_percentile(x, p) is DataFusion's approx_percentile_cont(x, p).
            "approx_percentile" => {
                f.name = ObjectName::from(vec![Ident::new("approx_percentile_cont")]);
            }
            // count_if(c) counts the rows where c is true: count(CASE WHEN c THEN 1 END).
            "count_if" => {
                let FunctionArguments::List(list) = &mut f.args else {
                    return ControlFlow::Break(Error::Syntax(
                        "count_if takes one boolean argument".into(),
                    ));
                };
                let [FunctionArg::Unnamed(FunctionArgExpr::Expr(cond))] = list.args.as_mut_slice()
                else {
                    return ControlFlow::Break(Error::Syntax(
                        "count_if takes one boolean argument".into(),
                    ));
                };
                match parse_expr(&format!("CASE WHEN ({cond}) THEN 1 END")) {
                    Ok(e) => *cond = e,
                    Err(e) => return ControlFlow::Break(e),
                }
                f.name = ObjectName::from(vec![Ident::new("count")]);
            }
            // if(c, a[, b]) is CASE WHEN c THEN a ELSE b END.
            "if" => {
                let args: Vec<String> = match &f.args {
                    FunctionArguments::List(list) => {
                        list.args.iter().map(ToString::to_string).collect()
                    }
                    _ => Vec::new(),
                };
                let text = match args.as_slice() {
                    [c, a] => format!("CASE WHEN ({c}) THEN ({a}) END"),
                    [c, a, b] => format!("CASE WHEN ({c}) THEN ({a}) ELSE ({b}) END"),
                    _ => {
                        return ControlFlow::Break(Error::Syntax(
                            "if takes two or three arguments".into(),
                        ));
                    }
                };
                match parse_expr(&text) {
                    Ok(e) => *expr = e,
                    Err(e) => return ControlFlow::Break(e),
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn parse_expr(text: &str) -> Result<Expr, Error> {
    DFParser::parse_sql_into_expr(text)
        .map(|e| e.expr)
        .map_err(|e| Error::Syntax(e.to_string()))
}

/// The token pass: time travel and zoned timestamp literals.
fn rewrite_tokens(
    sql: &str,
    max_depth: usize,
    max_operators: usize,
) -> Result<(String, Vec<SnapshotRef>), Error> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax(e.to_string()))?;
    let operators = tokens.iter().filter(|t| adds_a_level(&t.token)).count();
    if operators > max_operators {
        return Err(Error::Syntax(format!(
            "SQL has {operators} operators; the limit is {max_operators} (query.max_sql_operators)"
        )));
    }
    // Indices of the tokens that are not whitespace.
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_) | Token::EOF))
        .collect();
    check_nesting(&tokens, &sig, max_depth)?;
    let offsets = LineOffsets::new(sql);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut snapshots = Vec::new();
    let word = |k: usize, kw: Keyword| {
        sig.get(k)
            .is_some_and(|&i| matches!(&tokens[i].token, Token::Word(w) if w.keyword == kw))
    };
    let mut k = 0;
    while k < sig.len() {
        // <name> FOR VERSION|TIMESTAMP AS OF <value>
        if word(k, Keyword::FOR)
            && (word(k + 1, Keyword::VERSION) || word(k + 1, Keyword::TIMESTAMP))
            && word(k + 2, Keyword::AS)
            && word(k + 3, Keyword::OF)
            && k > 0
        {
            let Some((name_parts, name_last)) = table_name_before(&tokens, &sig, k) else {
                return Err(Error::Syntax(
                    "FOR ... AS OF must follow a table name".into(),
                ));
            };
            let (at, end) = if word(k + 1, Keyword::VERSION) {
                match sig.get(k + 4).map(|&i| &tokens[i].token) {
                    Some(Token::Number(n, _)) => {
                        let id = n.parse::<i64>().map_err(|_| {
                            Error::InvalidArgument(format!("invalid snapshot id {n}"))
                        })?;
                        (AsOf::Version(id), k + 4)
                    }
                    _ => {
                        return Err(Error::NotSupported(
                            "FOR VERSION AS OF takes a snapshot id (a number)".into(),
                        ));
                    }
                }
            } else {
                let lit = if word(k + 4, Keyword::TIMESTAMP) {
                    k + 5
                } else {
                    k + 4
                };
                match sig.get(lit).map(|&i| &tokens[i].token) {
                    Some(Token::SingleQuotedString(s)) => {
                        let t = parse_timestamp(s, true)?.ok_or_else(|| {
                            Error::InvalidArgument(format!("invalid timestamp '{s}'"))
                        })?;
                        (AsOf::Timestamp(t.timestamp_millis()), lit)
                    }
                    _ => {
                        return Err(Error::NotSupported(
                            "FOR TIMESTAMP AS OF takes a timestamp literal, e.g. \
                             TIMESTAMP '2025-11-15 00:00:00 UTC'"
                                .into(),
                        ));
                    }
                }
            };
            let table = name_parts.last().cloned().unwrap_or_default();
            let schema = (name_parts.len() >= 2).then(|| name_parts[name_parts.len() - 2].clone());
            let name = match at {
                AsOf::Version(v) => format!("{table}@v{v}"),
                AsOf::Timestamp(ms) => format!("{table}@t{ms}"),
            };
            let last = &tokens[sig[name_last]];
            edits.push((
                offsets.byte(sql, last.span.start),
                offsets.byte(sql, tokens[sig[end]].span.end),
                format!("\"{}\"", name.replace('"', "\"\"")),
            ));
            snapshots.push(SnapshotRef {
                table,
                schema,
                at,
                name,
            });
            k = end + 1;
            continue;
        }
        // TIMESTAMP '<datetime> <zone>'
        if word(k, Keyword::TIMESTAMP)
            && let Some(Token::SingleQuotedString(s)) = sig.get(k + 1).map(|&i| &tokens[i].token)
            && let Some(t) = parse_timestamp(s, false)?
        {
            edits.push((
                offsets.byte(sql, tokens[sig[k]].span.start),
                offsets.byte(sql, tokens[sig[k + 1]].span.end),
                format!(
                    "CAST('{}' AS TIMESTAMP(6) WITH TIME ZONE)",
                    t.format("%Y-%m-%dT%H:%M:%S%.6fZ")
                ),
            ));
            k += 2;
            continue;
        }
        k += 1;
    }
    if edits.is_empty() {
        return Ok((sql.to_string(), snapshots));
    }
    let mut out = String::with_capacity(sql.len() + 64);
    let mut at = 0;
    for (start, end, text) in edits {
        out.push_str(&sql[at..start]);
        out.push_str(&text);
        at = end;
    }
    out.push_str(&sql[at..]);
    Ok((out, snapshots))
}

/// Whether `token` is an operator: binary, postfix (`::` casts, `[…]` subscripts, `IS`, `IN`,
/// `LIKE`, `AT TIME ZONE`, `COLLATE`, …), a set operation or a join. Each one adds a level to
/// the expression or query tree, which the planner and optimizer walk recursively: a chain of
/// 20,000 `IS NULL`s, `::bigint`s or `UNION ALL SELECT`s overflowed the query thread's stack.
fn adds_a_level(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::IS
                | Keyword::IN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::RLIKE
                | Keyword::REGEXP
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::DIV
                | Keyword::OVERLAPS
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::MINUS
                | Keyword::JOIN
        ),
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Caret
        | Token::Ampersand
        | Token::Pipe
        | Token::DoubleColon
        | Token::LBracket
        | Token::RArrow
        | Token::Sharp
        | Token::DoubleSharp
        | Token::Tilde
        | Token::TildeAsterisk
        | Token::ExclamationMarkTilde
        | Token::ExclamationMarkTildeAsterisk
        | Token::DoubleTilde
        | Token::DoubleTildeAsterisk
        | Token::ExclamationMarkDoubleTilde
        | Token::ExclamationMarkDoubleTildeAsterisk
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Overlap
        | Token::ExclamationMark
        | Token::DoubleExclamationMark
        | Token::AtSign
        | Token::CaretAt
        | Token::PGSquareRoot
        | Token::PGCubeRoot
        | Token::Arrow
        | Token::LongArrow
        | Token::HashArrow
        | Token::HashLongArrow
        | Token::AtDashAt
        | Token::QuestionMarkDash
        | Token::AmpersandLeftAngleBracket
        | Token::AmpersandRightAngleBracket
        | Token::AmpersandLeftAngleBracketVerticalBar
        | Token::VerticalBarAmpersandRightAngleBracket
        | Token::TwoWayArrow
        | Token::LeftAngleBracketCaret
        | Token::RightAngleBracketCaret
        | Token::QuestionMarkSharp
        | Token::QuestionMarkDashVerticalBar
        | Token::QuestionMarkDoubleVerticalBar
        | Token::TildeEqual
        | Token::ShiftLeftVerticalBar
        | Token::VerticalBarShiftRight
        | Token::VerticalBarRightAngleBracket
        | Token::AtArrow
        | Token::ArrowAt
        | Token::HashMinus
        | Token::AtQuestion
        | Token::AtAt
        | Token::Question
        | Token::QuestionAnd
        | Token::QuestionPipe
        | Token::CustomBinaryOperator(_) => true,
        _ => false,
    }
}

/// Keywords before a bracket whose content is worked through twice, so that nesting them
/// doubles the work per level:
/// - special forms (`CAST(x AS t)`, `ARRAY[…]`, `EXTRACT(…)`, `NOT (…)`, …), which sqlparser,
///   when one fails, parses again from the start as a plain function call or subscript
///   (`Parser::parse_prefix`): 25 nested `CAST(` around a typo took minutes, and stopping at
///   the recursion limit counts as failing;
/// - `AS (` and `MATERIALIZED (`, the body of a common table expression, which DataFusion plans
///   twice: 20 `WITH`s nested in one another took a second to plan, 61 did not finish.
const READ_TWICE: &[Keyword] = &[
    Keyword::AS,
    Keyword::MATERIALIZED,
    Keyword::ARRAY,
    Keyword::CASE,
    Keyword::CAST,
    Keyword::TRY_CAST,
    Keyword::SAFE_CAST,
    Keyword::CONVERT,
    Keyword::TRY_CONVERT,
    Keyword::EXTRACT,
    Keyword::CEIL,
    Keyword::FLOOR,
    Keyword::POSITION,
    Keyword::SUBSTR,
    Keyword::SUBSTRING,
    Keyword::OVERLAY,
    Keyword::NOT,
    Keyword::CURRENT_CATALOG,
    Keyword::CURRENT_USER,
    Keyword::SESSION_USER,
    Keyword::USER,
    Keyword::CURRENT_TIMESTAMP,
    Keyword::CURRENT_TIME,
    Keyword::CURRENT_DATE,
    Keyword::LOCALTIME,
    Keyword::LOCALTIMESTAMP,
    Keyword::MAP,
    Keyword::MATCH,
    Keyword::LAMBDA,
    Keyword::PRIOR,
    Keyword::CIRCLE,
    Keyword::BOX,
    Keyword::PATH,
    Keyword::LINE,
    Keyword::LSEG,
    Keyword::POINT,
    Keyword::POLYGON,
];

/// Refuses, before the parser sees them, statements that would make parsing or planning work
/// far more than linearly (see [`READ_TWICE`]):
/// - brackets and `CASE … END` nested deeper than `max_depth` (each is at least one level of
///   the parser's recursion, so these would be refused anyway, but only after the parser has
///   retried every enclosing form that failed with them);
/// - too much re-reading: a token costs 2^d reads, d being how many [`READ_TWICE`] brackets hold
///   it, and the total may be at most four reads per token (or 65,536 for short statements).
fn check_nesting(tokens: &[TokenWithSpan], sig: &[usize], max_depth: usize) -> Result<(), Error> {
    /// An open bracket (whether a [`READ_TWICE`] keyword stands before it), or an open `CASE`.
    enum Open {
        Bracket { read_twice: bool },
        Case,
    }
    let too_deep = |what: &str| {
        Err(Error::Syntax(format!(
            "SQL is nested too deeply ({what}; query.max_sql_depth is {max_depth})"
        )))
    };
    let mut open: Vec<Open> = Vec::new();
    let mut doubling = 0u32;
    let mut reads: u64 = 0;
    for (n, &i) in sig.iter().enumerate() {
        match &tokens[i].token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                let read_twice = n > 0
                    && matches!(&tokens[sig[n - 1]].token,
                        Token::Word(w) if READ_TWICE.contains(&w.keyword));
                open.push(Open::Bracket { read_twice });
                doubling += u32::from(read_twice);
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if let Some(Open::Bracket { read_twice }) = open.last() {
                    doubling -= u32::from(*read_twice);
                    open.pop();
                }
            }
            Token::Word(w) if w.keyword == Keyword::CASE => open.push(Open::Case),
            Token::Word(w) if w.keyword == Keyword::END => {
                if let Some(Open::Case) = open.last() {
                    open.pop();
                }
            }
            _ => {}
        }
        if open.len() > max_depth {
            return too_deep("brackets or CASE expressions");
        }
        reads = reads.saturating_add(1u64 << doubling.min(63));
    }
    if reads > (sig.len() as u64).saturating_mul(4).max(1 << 16) {
        return too_deep(
            "CAST(...), ARRAY[...], NOT (...), WITH ... AS (...) and the like inside one another",
        );
    }
    Ok(())
}

/// The dotted name that ends right before `sig[k]`: its parts, and the `sig` index of its last.
fn table_name_before(
    tokens: &[TokenWithSpan],
    sig: &[usize],
    k: usize,
) -> Option<(Vec<String>, usize)> {
    let last = k.checked_sub(1)?;
    let mut parts = Vec::new();
    let mut j = last;
    loop {
        match &tokens[sig[j]].token {
            Token::Word(w) => parts.push(w.value.clone()),
            _ => return None,
        }
        if j >= 2 && matches!(tokens[sig[j - 1]].token, Token::Period) {
            j -= 2;
        } else {
            break;
        }
    }
    parts.reverse();
    Some((parts, last))
}

/// Byte offsets of the starts of lines, to turn token locations (line, char column) into bytes.
struct LineOffsets(Vec<usize>);

impl LineOffsets {
    fn new(sql: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        LineOffsets(starts)
    }

    fn byte(&self, sql: &str, loc: datafusion::sql::sqlparser::tokenizer::Location) -> usize {
        let line_start = self
            .0
            .get((loc.line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(sql.len());
        sql[line_start..]
            .char_indices()
            .nth((loc.column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| line_start + i)
    }
}

/// Parses a Trino timestamp literal. With a zone (`UTC`, `Europe/Berlin`, `+02:00`, `Z`) it is an
/// instant; without one it is `None` unless `naive_as_utc` (then it is read as UTC).
pub fn parse_timestamp(s: &str, naive_as_utc: bool) -> Result<Option<DateTime<Utc>>, Error> {
    let s = s.trim();
    let naive = |t: &str| -> Option<NaiveDateTime> {
        let t = t.trim().replacen('T', " ", 1);
        for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
            if let Ok(v) = NaiveDateTime::parse_from_str(&t, f) {
                return Some(v);
            }
        }
        chrono::NaiveDate::parse_from_str(&t, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    };
    // A zone name or offset after a space.
    if let Some((dt, zone)) = s.rsplit_once(' ')
        && let Some(local) = naive(dt)
    {
        let zone = if zone == "Z" { "UTC" } else { zone };
        if let Ok(tz) = Tz::from_str(zone) {
            return match tz.from_local_datetime(&local).earliest() {
                Some(t) => Ok(Some(t.with_timezone(&Utc))),
                None => Err(Error::InvalidArgument(format!(
                    "'{s}' does not exist in zone {zone}"
                ))),
            };
        }
    }
    // An offset or Z attached to the time.
    let attached = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&attached) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(&attached, f) {
            return Ok(Some(t.with_timezone(&Utc)));
        }
    }
    if naive_as_utc && let Some(local) = naive(s) {
        return Ok(Some(Utc.from_utc_datetime(&local)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> String {
        match translate(sql, 64, 1000) {
            Err(e @ (Error::Denied(_) | Error::NotSupported(_))) => e.to_string(),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn read_only_statements_pass() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "VALUES (1), (2)",
            "EXPLAIN SELECT * FROM events",
            "SELECT 1 UNION ALL SELECT 2",
        ] {
            translate(sql, 64, 1000).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn everything_else_is_refused_by_kind() {
        assert!(refused("INSERT INTO events VALUES (1)").contains("insert"));
        assert!(refused("DELETE FROM events").contains("delete"));
        assert!(refused("UPDATE events SET type = 'x'").contains("update"));
        assert!(refused("DROP TABLE events").contains("DDL"));
        assert!(refused("CREATE TABLE x (a int)").contains("DDL"));
        assert!(refused("CREATE VIEW v AS SELECT 1").contains("DDL"));
        assert!(refused("COPY events TO '/tmp/x.parquet'").contains("copy"));
        assert!(
            refused("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'")
                .contains("external")
        );
        assert!(refused("SET datafusion.execution.batch_size = 1").contains("SET SESSION"));
        assert!(refused("EXPLAIN DELETE FROM events").contains("delete"));
        assert!(
            refused("SELECT * FROM read_parquet('/etc/x.parquet')").contains("table functions")
        );
        assert!(refused("SELECT * FROM '/etc/passwd'").contains("files or URLs"));
        assert!(refused("SELECT * FROM 'https://example.com/x.csv'").contains("files or URLs"));
        assert!(refused("SELECT 1 INTO t2").contains("SELECT INTO"));
    }

    #[test]
    fn a_filtered_aggregate_in_a_window_is_refused_as_trino_refuses_it() {
        let sql = "SELECT array_agg(x) FILTER (WHERE x < 3) OVER () FROM t";
        assert!(refused(sql).contains("FILTER is not yet supported for window functions"));
        translate("SELECT array_agg(x) FILTER (WHERE x < 3) FROM t", 64, 1000).unwrap();
        translate("SELECT array_agg(x) OVER () FROM t", 64, 1000).unwrap();
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_crash() {
        let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        match translate(&deep, 64, 1000) {
            Err(Error::Syntax(m)) => assert!(m.contains("nested too deeply"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_expressions_are_refused() {
        let long = format!("SELECT {}", vec!["1"; 1500].join(" + "));
        match translate(&long, 64, 1000) {
            Err(Error::Syntax(m)) => assert!(m.contains("max_sql_operators"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Operators inside strings do not count.
        translate(&format!("SELECT '{}'", "+".repeat(5000)), 64, 1000).unwrap();
    }

    #[test]
    fn trino_functions_are_reshaped() {
        let t = translate(
            "SELECT count_if(x > 1), if(x > 1, 'a', 'b'), approx_percentile(x, 0.5) FROM t",
            64,
            1000,
        )
        .unwrap();
        let text = t.statement.to_string();
        assert!(
            text.contains("count(CASE WHEN (x > 1) THEN 1 END)"),
            "{text}"
        );
        assert!(
            text.contains("CASE WHEN (x > 1) THEN ('a') ELSE ('b') END"),
            "{text}"
        );
        assert!(text.contains("approx_percentile_cont(x, 0.5)"), "{text}");
    }

    #[test]
    fn zoned_timestamp_literals_become_instants() {
        let t = translate(
            "SELECT * FROM events WHERE ts >= TIMESTAMP '2025-11-15 01:00:00 Europe/Berlin' \
             AND ts < TIMESTAMP '2025-11-16 00:00:00 UTC' AND x = 'TIMESTAMP ''a'''",
            64,
            1000,
        )
        .unwrap();
        let text = t.statement.to_string();
        assert!(
            text.contains("CAST('2025-11-15T00:00:00.000000Z' AS TIMESTAMP(6) WITH TIME ZONE)"),
            "{text}"
        );
        assert!(
            text.contains("CAST('2025-11-16T00:00:00.000000Z' AS TIMESTAMP(6) WITH TIME ZONE)"),
            "{text}"
        );
        // A naive literal stays as written.
        let t = translate("SELECT TIMESTAMP '2025-11-15 00:00:00'", 64, 1000).unwrap();
        assert!(
            t.statement
                .to_string()
                .contains("TIMESTAMP '2025-11-15 00:00:00'")
        );
    }

    #[test]
    fn time_travel_names_a_snapshot_table() {
        let t = translate(
            "SELECT count(*) FROM acme.events FOR VERSION AS OF 123 AS e \
             JOIN events FOR TIMESTAMP AS OF TIMESTAMP '2025-11-15 00:00:00 UTC' f ON true",
            64,
            1000,
        )
        .unwrap();
        assert_eq!(
            t.snapshots,
            vec![
                SnapshotRef {
                    table: "events".into(),
                    schema: Some("acme".into()),
                    at: AsOf::Version(123),
                    name: "events@v123".into()
                },
                SnapshotRef {
                    table: "events".into(),
                    schema: None,
                    at: AsOf::Timestamp(1_763_164_800_000),
                    name: "events@t1763164800000".into()
                },
            ]
        );
        let text = t.statement.to_string();
        assert!(text.contains("acme.\"events@v123\" AS e"), "{text}");
        assert!(text.contains("\"events@t1763164800000\" f"), "{text}");
    }

    #[test]
    fn timestamp_literals() {
        let p = |s: &str| parse_timestamp(s, false).unwrap().map(|t| t.to_rfc3339());
        assert_eq!(
            p("2025-11-15 00:00:00 UTC").as_deref(),
            Some("2025-11-15T00:00:00+00:00")
        );
        assert_eq!(
            p("2025-11-15 00:00:00.5 +02:00").as_deref(),
            Some("2025-11-14T22:00:00.500+00:00")
        );
        assert_eq!(
            p("2025-11-15T00:00:00Z").as_deref(),
            Some("2025-11-15T00:00:00+00:00")
        );
        assert_eq!(
            p("2025-11-15 00:00:00-05:00").as_deref(),
            Some("2025-11-15T05:00:00+00:00")
        );
        assert_eq!(p("2025-11-15 00:00:00"), None);
        assert!(parse_timestamp("2025-11-15", true).unwrap().is_some());
    }
}
