//! Property tests of the SQL guard, `dialect::translate`: whatever text a client sends (bytes of
//! any kind, soups of SQL tokens, expressions nested or chained thousands deep) is translated or
//! refused with an error, within a time bound, on the stack the server gives query threads;
//! never a panic, a hang or a stack overflow. Whatever it lets through is a read-only query, and
//! the longest chains and deepest nestings it lets through can be planned on that stack too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use floe_catalog::config::QueryConfig;
use floe_query::dialect::{self, Translated};
use floe_query::trino::SQL_STACK_BYTES;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Each case gets this long; none comes near it unless it loops.
const LIMIT: Duration = Duration::from_secs(5);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No regression files in the source tree; a failure prints its (shrunk) input.
        failure_persistence: None,
        // A case that hangs costs LIMIT per shrinking step: stop shrinking after a minute.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

/// The server's limits (`query.max_sql_depth`, `query.max_sql_operators`, `max_sql_bytes`).
fn limits() -> QueryConfig {
    QueryConfig::default()
}

/// What became of one statement.
#[derive(Debug)]
enum Outcome {
    /// Translated, and a read-only query.
    Passed,
    /// Refused with an error.
    Refused,
}

/// Translates `sql` as the server does: on a thread with the query threads' stack, waiting at
/// most [`LIMIT`]; the statement is checked, rendered and dropped on that thread too (each of
/// them walks the tree). A panic or an overrun fails the case (an overrun leaves its thread
/// behind; the test fails anyway); a stack overflow aborts the test binary, which fails too.
fn translate(sql: String) -> Result<Outcome, TestCaseError> {
    let cfg = limits();
    let (tx, rx) = channel();
    let handle = std::thread::Builder::new()
        .stack_size(SQL_STACK_BYTES)
        .spawn(move || {
            let out = match dialect::translate(&sql, cfg.max_sql_depth, cfg.max_sql_operators) {
                Ok(t) => check_passed(&t).map(|()| Outcome::Passed),
                Err(_) => Ok(Outcome::Refused),
            };
            let _ = tx.send(out);
        })
        .map_err(|e| TestCaseError::fail(format!("spawning a thread: {e}")))?;
    match rx.recv_timeout(LIMIT) {
        Ok(out) => {
            let _ = handle.join();
            out.map_err(TestCaseError::fail)
        }
        Err(RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "no answer within {LIMIT:?} (a hang)"
        ))),
        Err(RecvTimeoutError::Disconnected) => {
            let why = match handle.join() {
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
                Ok(()) => "no answer".into(),
            };
            Err(TestCaseError::fail(format!("panicked: {why}")))
        }
    }
}

/// Whatever passes the guard is a query (possibly explained), never anything that changes; and
/// it renders as SQL.
fn check_passed(t: &Translated) -> Result<(), String> {
    fn query(s: &DFStatement) -> bool {
        match s {
            DFStatement::Statement(st) => sql_query(st),
            DFStatement::Explain(e) => query(&e.statement),
            _ => false,
        }
    }
    fn sql_query(st: &Statement) -> bool {
        match st {
            Statement::Query(_) => true,
            Statement::Explain { statement, .. } => sql_query(statement),
            _ => false,
        }
    }
    let text = t.statement.to_string();
    if query(&t.statement) {
        Ok(())
    } else {
        Err(format!("not a query, yet passed: {text}"))
    }
}

const WORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "NULL",
    "LIKE",
    "ILIKE",
    "BETWEEN",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "TRY_CAST",
    "AS",
    "INT",
    "BIGINT",
    "VARCHAR",
    "DOUBLE",
    "INTERVAL",
    "DAY",
    "ARRAY",
    "MAP",
    "ROW",
    "STRUCT",
    "FOR",
    "VERSION",
    "TIMESTAMP",
    "OF",
    "AT",
    "TIME",
    "ZONE",
    "WITH",
    "RECURSIVE",
    "UNION",
    "INTERSECT",
    "EXCEPT",
    "ALL",
    "DISTINCT",
    "VALUES",
    "EXPLAIN",
    "ANALYZE",
    "VERBOSE",
    "INSERT",
    "INTO",
    "DELETE",
    "UPDATE",
    "SET",
    "DROP",
    "TABLE",
    "CREATE",
    "VIEW",
    "EXTERNAL",
    "STORED",
    "LOCATION",
    "COPY",
    "TO",
    "RESET",
    "SHOW",
    "DESCRIBE",
    "USE",
    "PREPARE",
    "EXECUTE",
    "USING",
    "JOIN",
    "LEFT",
    "CROSS",
    "LATERAL",
    "UNNEST",
    "ON",
    "OVER",
    "PARTITION",
    "WINDOW",
    "ROWS",
    "PRECEDING",
    "FILTER",
    "COLLATE",
    "EXISTS",
    "ANY",
    "SOME",
    "TRUE",
    "FALSE",
    "count_if",
    "if",
    "approx_percentile",
    "count",
    "sum",
    "read_parquet",
    "events",
    "t",
    "x",
    "acme",
    "floe",
    "information_schema",
    "\"quoted id\"",
    "\"a\"\"b\"",
    "`tick`",
    "_x1",
];

const SYMBOLS: &[&str] = &[
    "(", ")", ",", ".", ";", "*", "+", "-", "/", "%", "||", "=", "==", "<>", "!=", "<", ">", "<=",
    ">=", "^", "&", "|", "::", "[", "]", "{", "}", ":", "?", "$1", "@", "#", "->", "->>", "=>",
    "~", "!", "--", "/*", "*/", "\n", "'",
];

const LITERALS: &[&str] = &[
    "0",
    "1",
    "-1",
    "42",
    "1.5",
    "1e10",
    "1e999",
    "9223372036854775808",
    "0x1F",
    "'a'",
    "''",
    "'it''s'",
    "E'\\n'",
    "X'00'",
    "N'x'",
    "$$x$$",
    "'2025-11-15 00:00:00 UTC'",
    "'2025-11-15 01:00:00 Europe/Berlin'",
    "'2025-11-15T00:00:00+02:00'",
    "'2025-11-15'",
    "'9999-12-31 23:59:59 +14:00'",
    "'0000-01-01 00:00:00 UTC'",
    "'2025-03-30 02:30:00 Europe/Berlin'",
    "'+275760-09-13 00:00:00 UTC'",
];

/// One token, or occasionally arbitrary text (to land inside strings, comments, names).
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(WORDS).prop_map(str::to_string),
        6 => prop::sample::select(SYMBOLS).prop_map(str::to_string),
        4 => prop::sample::select(LITERALS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Soups of tokens after a plausible start (a query, or a statement the guard must refuse),
/// joined with or without spaces; often short, so that whole statements come out.
fn token_soup() -> impl Strategy<Value = String> {
    let start = prop::sample::select(vec![
        "",
        "SELECT",
        "SELECT * FROM events",
        "SELECT * FROM events FOR",
        "WITH a AS (",
        "EXPLAIN",
        "SELECT count_if(",
        "SELECT if(",
        "SELECT * FROM t FOR TIMESTAMP AS OF TIMESTAMP",
        "SELECT * FROM acme.t FOR VERSION AS OF",
        "SELECT TIMESTAMP",
        "INSERT INTO events",
        "DELETE FROM events",
        "UPDATE events SET",
        "CREATE TABLE x AS SELECT",
        "COPY events TO",
        "SET",
        "EXPLAIN ANALYZE DELETE FROM events",
    ]);
    (
        start,
        prop::collection::vec((token(), any::<bool>()), 0..40),
        any::<bool>(),
    )
        .prop_map(|(start, mut tokens, short)| {
            if short {
                tokens.truncate(2);
            }
            let mut s = start.to_string();
            for (t, space) in tokens {
                if space {
                    s.push(' ');
                }
                s.push_str(&t);
            }
            s
        })
}

/// Shapes that nest or chain one expression, query or name `n` times: (what, the text before,
/// the piece repeated before the core, the core, the piece repeated after it, the text after).
type Shape = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const DEEP: &[Shape] = &[
    ("parentheses", "SELECT ", "(", "1", ")", ""),
    ("subqueries", "SELECT ", "(SELECT ", "1", ")", ""),
    ("functions", "SELECT ", "abs(", "1", ")", ""),
    ("arrays", "SELECT ", "ARRAY[", "1", "]", ""),
    ("array subqueries", "SELECT ", "ARRAY(SELECT ", "1", ")", ""),
    ("brackets", "SELECT ", "[", "1", "]", ""),
    ("negations", "SELECT ", "- ", "1", "", ""),
    ("nots", "SELECT ", "NOT ", "true", "", ""),
    ("not calls", "SELECT ", "NOT (", "true", ")", ""),
    ("minus chains", "SELECT 1", "", "", " - 1", ""),
    ("additions", "SELECT 1", "", "", " + 1", ""),
    ("ands", "SELECT 1 WHERE true", "", "", " AND true", ""),
    ("casts", "SELECT 1", "", "", "::int", ""),
    ("cast calls", "SELECT ", "CAST(", "1", " AS INT)", ""),
    ("casts as functions", "SELECT ", "CAST(", "1", ")", ""),
    ("try casts", "SELECT ", "TRY_CAST(", "1", " AS INT)", ""),
    ("converts", "SELECT ", "CONVERT(", "1", ", INT)", ""),
    (
        "extracts",
        "SELECT ",
        "EXTRACT(YEAR FROM ",
        "ts",
        ")",
        " FROM t",
    ),
    ("ceils", "SELECT ", "CEIL(", "1", ")", ""),
    ("floors", "SELECT ", "FLOOR(", "1", ")", ""),
    ("substrings", "SELECT ", "SUBSTRING(", "'a'", " FROM 1)", ""),
    ("positions", "SELECT ", "POSITION('a' IN ", "'a'", ")", ""),
    (
        "overlays",
        "SELECT ",
        "OVERLAY(",
        "'a'",
        " PLACING 'b' FROM 1)",
        "",
    ),
    (
        "case operands",
        "SELECT ",
        "CASE (",
        "1",
        ") WHEN 1 THEN 1 END",
        "",
    ),
    ("cases", "SELECT ", "CASE WHEN true THEN ", "1", " END", ""),
    (
        "time functions",
        "SELECT ",
        "CURRENT_TIMESTAMP(",
        "1",
        ")",
        "",
    ),
    ("subscripts", "SELECT x", "", "", "[1]", " FROM t"),
    ("is null", "SELECT x", "", "", " IS NULL", " FROM t"),
    ("likes", "SELECT x", "", "", " LIKE 'a'", " FROM t"),
    ("in lists", "SELECT x", "", "", " IN (1)", " FROM t"),
    ("collates", "SELECT x", "", "", " COLLATE c", " FROM t"),
    (
        "at time zone",
        "SELECT ts",
        "",
        "",
        " AT TIME ZONE 'UTC'",
        " FROM t",
    ),
    ("unions", "SELECT 1", "", "", " UNION ALL SELECT 1", ""),
    ("ctes", "", "WITH a AS (", "SELECT 1", ") SELECT 1", ""),
    ("joins", "SELECT * FROM t", "", "", " JOIN t ON true", ""),
    (
        "derived tables",
        "SELECT * FROM ",
        "(SELECT * FROM ",
        "t",
        ")",
        "",
    ),
    ("nested joins", "SELECT * FROM ", "(", "t", ")", ""),
    ("count_if", "SELECT ", "count_if(", "true", ")", ""),
    ("if", "SELECT ", "if(true, ", "1", ")", ""),
    (
        "row types",
        "SELECT CAST(x AS ",
        "ROW(a ",
        "INT",
        ")",
        ") FROM t",
    ),
    (
        "array types",
        "SELECT CAST(x AS ",
        "ARRAY<",
        "INT",
        ">",
        ") FROM t",
    ),
    (
        "struct types",
        "SELECT CAST(x AS ",
        "STRUCT<a ",
        "INT",
        ">",
        ") FROM t",
    ),
    ("typed strings", "SELECT ", "ARRAY<", "INT", ">", " '[]'"),
];

/// `shape` nested `n` deep; `broken` puts a syntax error at its core.
fn deep_sql(shape: &Shape, n: usize, broken: bool) -> String {
    let (_, head, before, core, after, tail) = *shape;
    let core = if broken {
        format!("{core} +")
    } else {
        core.to_string()
    };
    format!("{head}{}{core}{}{tail}", before.repeat(n), after.repeat(n))
}

/// Depths from a few to past what the parser allows and what the text limit allows.
fn depth() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..80, 80usize..2_000, 2_000usize..50_000]
}

/// Statements at most this long in the tests of depth (an eighth of the server's limit, to keep
/// the tests quick; whole megabytes behave the same, only slower).
fn deep_bytes() -> usize {
    limits().max_sql_bytes / 8
}

/// The most times `shape` can repeat within [`deep_bytes`].
fn deepest(shape: &Shape, broken: bool) -> usize {
    let base = deep_sql(shape, 0, broken).len();
    let one = deep_sql(shape, 1, broken).len() - base;
    (deep_bytes() - base) / one.max(1)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_text_is_answered(sql in any::<String>()) {
        translate(sql)?;
    }

    #[test]
    fn arbitrary_bytes_as_text_are_answered(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let sql = String::from_utf8_lossy(&bytes).into_owned();
        translate(sql)?;
    }

    #[test]
    fn token_soups_are_answered(sql in token_soup()) {
        translate(sql)?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn deep_and_long_sql_is_answered(
        shape in prop::sample::select(DEEP),
        n in depth(),
        broken in any::<bool>(),
    ) {
        let sql = deep_sql(&shape, n.min(deepest(&shape, broken)), broken);
        translate(sql)?;
    }
}

/// Every shape, whole and broken, at its deepest within [`deep_bytes`]. Stops at the first
/// failure: a thread that did not answer is still running, and would slow the cases after it.
#[test]
fn every_shape_at_its_deepest_is_answered() {
    for shape in DEEP {
        for broken in [false, true] {
            let n = deepest(shape, broken);
            let sql = deep_sql(shape, n, broken);
            assert!(sql.len() <= deep_bytes());
            if let Err(e) = translate(sql) {
                panic!("{} × {n} (broken: {broken}): {e}", shape.0);
            }
        }
    }
}

/// Plans `sql` with DataFusion as the server does after the guard: on a thread with the query
/// threads' stack, waiting at most [`PLAN_LIMIT`]. `None` when the guard refuses it; whether
/// planning then succeeds does not matter, only that it answers (a stack overflow aborts the
/// test binary).
fn plan(sql: String) -> Result<Option<Result<(), String>>, String> {
    let (tx, rx) = channel();
    let handle = std::thread::Builder::new()
        .stack_size(SQL_STACK_BYTES)
        .spawn(move || {
            let cfg = limits();
            let Ok(t) = dialect::translate(&sql, cfg.max_sql_depth, cfg.max_sql_operators) else {
                let _ = tx.send(None);
                return;
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let planned = runtime.block_on(async move {
                let ctx = SessionContext::new();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("x", DataType::Int64, true),
                    Field::new("s", DataType::Utf8, true),
                    Field::new(
                        "ts",
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                        true,
                    ),
                ]));
                let table = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
                ctx.register_table("t", Arc::new(table)).unwrap();
                ctx.state()
                    .statement_to_plan(t.statement)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            let _ = tx.send(Some(planned));
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(PLAN_LIMIT) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(RecvTimeoutError::Timeout) => Err(format!("no plan within {PLAN_LIMIT:?}")),
        Err(RecvTimeoutError::Disconnected) => Err("panicked while planning".into()),
    }
}

/// Planning is slower than translating; this bounds a shape's plan at the guard's limits.
const PLAN_LIMIT: Duration = Duration::from_secs(10);

/// Whatever the guard lets through can be planned on the query threads' stack, promptly: for
/// every shape, the longest chain or deepest nesting the guard accepts.
#[test]
fn the_deepest_shapes_the_guard_passes_can_be_planned() {
    for shape in DEEP {
        // The largest n the guard accepts (it accepts n = 0, and refusal grows with n).
        let (mut lo, mut hi) = (0, deepest(shape, false) + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match translate(deep_sql(shape, mid, false)) {
                Ok(Outcome::Passed) => lo = mid,
                Ok(Outcome::Refused) => hi = mid,
                Err(e) => panic!("{} × {mid}: {e}", shape.0),
            }
        }
        match plan(deep_sql(shape, lo, false)) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("{} × {lo}: passed, then refused", shape.0),
            Err(e) => panic!("{} × {lo}: {e}", shape.0),
        }
    }
}
