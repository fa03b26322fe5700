//! Session statements: what a Trino client sends besides queries (`USE`, `SET SESSION`,
//! `RESET SESSION`, `SHOW CATALOGS|SCHEMAS|TABLES|COLUMNS`, `DESCRIBE`, and prepared statements
//! as clients such as SQLAlchemy use them). They are told apart by the parsed statement (or,
//! for Trino's own forms sqlparser does not know, by its tokens), never by splitting the text
//! on white space; a comment, a quoted name or a lower-case keyword changes nothing.
//!
//! Prepared statements travel in headers, as Trino's protocol has them: `PREPARE name FROM …`
//! answers `X-Trino-Added-Prepare`, the client sends the text back in
//! `X-Trino-Prepared-Statement` with each request, and `EXECUTE name USING a, b` binds the
//! literals to the statement's `?` placeholders (tokens, so a `?` inside a string stays).

use axum::http::HeaderMap;
use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Set, ShowStatementOptions, Statement, Use, Value as SqlValue,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use floe_catalog::TenantId;
use serde_json::{Value, json};

use super::error::{CATALOG_NOT_FOUND, NOT_FOUND, QueryError, SCHEMA_NOT_FOUND, SYNTAX_ERROR};

/// What a statement is to the protocol layer.
#[derive(Debug, PartialEq)]
pub enum Session {
    /// Answered without the engine.
    Answer(Answer),
    /// Run this statement instead (a prepared statement with its parameters bound, or a
    /// `SHOW`/`DESCRIBE` as a query of `information_schema`).
    Run(String),
    /// Run the statement as it is.
    Plain,
}

/// A result made here: headers for the client, and optionally one varchar column of rows.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    pub headers: Vec<(&'static str, String)>,
    pub column: Option<&'static str>,
    pub rows: Vec<Value>,
}

impl Answer {
    fn headers(headers: Vec<(&'static str, String)>) -> Session {
        Session::Answer(Answer {
            headers,
            ..Answer::default()
        })
    }

    fn rows(column: &'static str, rows: &[&str]) -> Session {
        Session::Answer(Answer {
            headers: Vec::new(),
            column: Some(column),
            rows: rows.iter().map(|r| json!([r])).collect(),
        })
    }
}

/// What `sql` is, for the caller's `tenant` (the only schema there is).
pub fn classify(sql: &str, tenant: &TenantId, headers: &HeaderMap) -> Result<Session, QueryError> {
    let dialect = GenericDialect {};
    let Ok(all) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        // The engine reports what does not tokenize.
        return Ok(Session::Plain);
    };
    let tokens: Vec<&TokenWithSpan> = all.iter().filter(|t| significant(&t.token)).collect();
    let words: Vec<String> = tokens.iter().take(3).map(|t| keyword(&t.token)).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["PREPARE", _, "FROM"] => {
            let name = plain_text(&tokens[1].token);
            let body = tokens.get(3).map(|t| &sql[offset(sql, t.span.start)..]);
            let body = body.map(str::trim).unwrap_or_default();
            return Ok(Answer::headers(vec![(
                "x-trino-added-prepare",
                format!("{name}={}", percent_encode(body)),
            )]));
        }
        ["DEALLOCATE", "PREPARE", _] => {
            let name = plain_text(&tokens[2].token);
            return Ok(Answer::headers(vec![("x-trino-deallocated-prepare", name)]));
        }
        ["RESET", "SESSION", _] => {
            let name = text_from(sql, &tokens[2..]);
            return Ok(Answer::headers(vec![("x-trino-clear-session", name)]));
        }
        ["SHOW", "CATALOGS", ..] => {
            return Ok(Answer::rows("Catalog", &[floe_catalog::CATALOG_NAME]));
        }
        ["EXECUTE", "IMMEDIATE", _] => {
            let Token::SingleQuotedString(text) = &tokens[2].token else {
                return Err(QueryError::new(
                    SYNTAX_ERROR,
                    "EXECUTE IMMEDIATE needs a quoted statement",
                ));
            };
            return bind(text, &tokens[3..]).map(Session::Run);
        }
        ["EXECUTE", _, ..] => {
            let name = plain_text(&tokens[1].token);
            let text = prepared_text(headers, &name).ok_or_else(|| {
                QueryError::new(NOT_FOUND, format!("Prepared statement not found: {name}"))
            })?;
            return bind(&text, &tokens[2..]).map(Session::Run);
        }
        _ => {}
    }
    let Ok(mut parsed) = Parser::parse_sql(&dialect, sql) else {
        return Ok(Session::Plain);
    };
    if parsed.len() != 1 {
        return Ok(Session::Plain);
    }
    let schema = tenant.as_str();
    match parsed.remove(0) {
        Statement::Use(Use::Object(name) | Use::Schema(name)) => {
            let parts = parts(&name);
            let (catalog, target) = match parts.as_slice() {
                [s] => (floe_catalog::CATALOG_NAME, s.as_str()),
                [c, s] => (c.as_str(), s.as_str()),
                _ => ("", ""),
            };
            if catalog != floe_catalog::CATALOG_NAME || target != schema {
                return Err(QueryError::new(
                    SCHEMA_NOT_FOUND,
                    format!("Schema '{name}' does not exist"),
                ));
            }
            Ok(Answer::headers(vec![
                ("x-trino-set-catalog", catalog.to_string()),
                ("x-trino-set-schema", target.to_string()),
            ]))
        }
        Statement::Use(Use::Catalog(name)) => {
            if parts(&name) != [floe_catalog::CATALOG_NAME] {
                return Err(QueryError::new(
                    CATALOG_NOT_FOUND,
                    format!("Catalog '{name}' does not exist"),
                ));
            }
            Ok(Answer::headers(vec![(
                "x-trino-set-catalog",
                floe_catalog::CATALOG_NAME.to_string(),
            )]))
        }
        Statement::Set(Set::SingleAssignment {
            scope: Some(_),
            variable,
            values,
            ..
        }) if words.get(1) == Some(&"SESSION") => {
            let value = values
                .iter()
                .map(|v| match v {
                    Expr::Value(v) => match &v.value {
                        SqlValue::SingleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            Ok(Answer::headers(vec![(
                "x-trino-set-session",
                format!("{variable}={value}"),
            )]))
        }
        Statement::ShowSchemas { .. } => {
            Ok(Answer::rows("Schema", &[schema, "information_schema"]))
        }
        Statement::ShowTables { show_options, .. } => {
            if let Some(target) = parent(&show_options)
                && parts(target).last().map(String::as_str) != Some(schema)
            {
                return Err(QueryError::new(
                    SCHEMA_NOT_FOUND,
                    format!("Schema '{target}' does not exist"),
                ));
            }
            Ok(Session::Run(format!(
                "SELECT table_name AS \"Table\" FROM information_schema.tables \
                 WHERE table_schema = '{schema}' ORDER BY 1"
            )))
        }
        Statement::ShowColumns { show_options, .. } => match parent(&show_options) {
            Some(table) => Ok(Session::Run(columns_query(table, schema))),
            None => Ok(Session::Plain),
        },
        Statement::ExplainTable { table_name, .. } => {
            Ok(Session::Run(columns_query(&table_name, schema)))
        }
        _ => Ok(Session::Plain),
    }
}

/// `SHOW COLUMNS` / `DESCRIBE` of `table` as a query of `information_schema`, in Trino's shape.
/// A schema named in the statement is used as given: `information_schema` holds only the
/// caller's tenant, so another schema's columns come back empty.
fn columns_query(table: &ObjectName, schema: &str) -> String {
    let parts = parts(table);
    let name = parts
        .last()
        .cloned()
        .unwrap_or_default()
        .replace('\'', "''");
    let schema = match parts.len() {
        0 | 1 => schema.to_string(),
        n => parts[n - 2].replace('\'', "''"),
    };
    format!(
        "SELECT column_name AS \"Column\", data_type AS \"Type\", '' AS \"Extra\", \
         '' AS \"Comment\" FROM information_schema.columns \
         WHERE table_schema = '{schema}' AND table_name = '{name}' ORDER BY ordinal_position"
    )
}

fn parent(options: &ShowStatementOptions) -> Option<&ObjectName> {
    options.show_in.as_ref()?.parent_name.as_ref()
}

/// The parts of a name as written (quotes removed).
fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
        .collect()
}

fn significant(t: &Token) -> bool {
    !matches!(t, Token::Whitespace(_) | Token::EOF)
}

/// A word token in upper case (for matching keywords), or its text.
fn keyword(t: &Token) -> String {
    match t {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        other => other.to_string(),
    }
}

/// A name token as written, without quotes.
fn plain_text(t: &Token) -> String {
    match t {
        Token::Word(w) => w.value.clone(),
        other => other.to_string(),
    }
}

/// The source text from the first of `tokens` to the end, trimmed.
fn text_from(sql: &str, tokens: &[&TokenWithSpan]) -> String {
    tokens
        .first()
        .map(|t| sql[offset(sql, t.span.start)..].trim().to_string())
        .unwrap_or_default()
}

/// The byte offset of a tokenizer location (1-based line and character column).
fn offset(sql: &str, at: Location) -> usize {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if line == at.line && column == at.column {
            return i;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    sql.len()
}

/// The text of prepared statement `name` from the client's `X-Trino-Prepared-Statement`
/// headers (`name=urlencoded text`, comma-separated).
fn prepared_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("x-trino-prepared-statement")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// `text` with each `?` placeholder replaced by the next parameter of `using` (the tokens
/// after the statement name: `USING a, b, …`, or nothing).
fn bind(text: &str, using: &[&TokenWithSpan]) -> Result<String, QueryError> {
    let args = match using.split_first() {
        None => Vec::new(),
        Some((first, rest)) if keyword(&first.token) == "USING" => split_args(rest),
        Some(_) => {
            return Err(QueryError::new(
                SYNTAX_ERROR,
                "expected USING after the statement",
            ));
        }
    };
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize()
        .map_err(|e| QueryError::new(SYNTAX_ERROR, e.to_string()))?;
    let mut args = args.into_iter();
    let mut out = String::with_capacity(text.len());
    for t in &tokens {
        match t {
            Token::Placeholder(p) if p == "?" => {
                let arg = args.next().ok_or_else(|| {
                    QueryError::new(SYNTAX_ERROR, "fewer parameters than placeholders")
                })?;
                out.push('(');
                out.push_str(&arg);
                out.push(')');
            }
            other => out.push_str(&render(other)),
        }
    }
    if args.next().is_some() {
        return Err(QueryError::new(
            SYNTAX_ERROR,
            "more parameters than placeholders",
        ));
    }
    Ok(out)
}

/// Parameters separated by commas outside parentheses, each as SQL text.
fn split_args(tokens: &[&TokenWithSpan]) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut depth = 0i32;
    for t in tokens {
        match &t.token {
            Token::Comma if depth == 0 => {
                args.push(std::mem::take(&mut current));
                continue;
            }
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&render(&t.token));
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}

/// A token as SQL text, with quotes inside literals and quoted names escaped again.
fn render(t: &Token) -> String {
    match t {
        Token::SingleQuotedString(s) => format!("'{}'", s.replace('\'', "''")),
        Token::Word(w) if w.quote_style == Some('"') => {
            format!("\"{}\"", w.value.replace('"', "\"\""))
        }
        other => other.to_string(),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b == b'%'
            && i + 3 <= bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn run(sql: &str) -> Session {
        classify(sql, &tenant(), &HeaderMap::new()).unwrap()
    }

    fn headers_of(sql: &str) -> Vec<(&'static str, String)> {
        match run(sql) {
            Session::Answer(a) => a.headers,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn use_and_session_properties_whatever_the_spelling() {
        let want = vec![
            ("x-trino-set-catalog", "floe".to_string()),
            ("x-trino-set-schema", "acme".to_string()),
        ];
        assert_eq!(headers_of("USE floe.acme"), want);
        assert_eq!(headers_of("use  /* here */ \"acme\""), want);
        assert_eq!(headers_of("USE\n  floe.\"acme\";"), want);
        let other = classify("USE floe.other", &tenant(), &HeaderMap::new()).unwrap_err();
        assert_eq!(other.code, SCHEMA_NOT_FOUND);
        assert_eq!(
            headers_of("SET SESSION query_max_run_time = '10m'"),
            vec![("x-trino-set-session", "query_max_run_time=10m".into())]
        );
        assert_eq!(
            headers_of("reset session query_max_run_time"),
            vec![("x-trino-clear-session", "query_max_run_time".into())]
        );
        // A comment in front of a query keeps it a query.
        assert_eq!(run("/* USE floe.acme */ SELECT 1"), Session::Plain);
        // Engine SET is not a session statement (the guard refuses it later).
        assert_eq!(run("SET x = 1"), Session::Plain);
    }

    #[test]
    fn show_and_describe() {
        match run("show catalogs") {
            Session::Answer(a) => assert_eq!(a.rows, vec![json!(["floe"])]),
            other => panic!("{other:?}"),
        }
        match run("SHOW SCHEMAS FROM floe") {
            Session::Answer(a) => assert_eq!(a.rows.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(run("SHOW TABLES"), Session::Run(q) if q.contains("information_schema.tables"))
        );
        assert!(matches!(run("SHOW TABLES FROM floe.acme"), Session::Run(_)));
        assert_eq!(
            classify("SHOW TABLES FROM other", &tenant(), &HeaderMap::new())
                .unwrap_err()
                .code,
            SCHEMA_NOT_FOUND
        );
        for sql in [
            "DESCRIBE events",
            "DESC acme.events",
            "SHOW COLUMNS FROM events",
        ] {
            assert!(
                matches!(run(sql), Session::Run(q) if q.contains("table_name = 'events'")),
                "{sql}"
            );
        }
    }

    #[test]
    fn prepared_statements_bind_parameters_outside_quotes_only() {
        let added = headers_of("PREPARE q1 FROM SELECT '?', ? FROM t WHERE a = ?");
        assert_eq!(added[0].0, "x-trino-added-prepare");
        let mut headers = HeaderMap::new();
        headers.insert("x-trino-prepared-statement", added[0].1.parse().unwrap());
        let bound = classify("EXECUTE q1 USING 'x,y', f(1, 2)", &tenant(), &headers).unwrap();
        assert_eq!(
            bound,
            Session::Run("SELECT '?', ('x,y') FROM t WHERE a = (f ( 1 , 2 ))".into())
        );
        assert_eq!(
            classify("EXECUTE q1 USING 1", &tenant(), &headers)
                .unwrap_err()
                .message,
            "fewer parameters than placeholders"
        );
        assert_eq!(
            classify("EXECUTE nope", &tenant(), &headers)
                .unwrap_err()
                .code,
            NOT_FOUND
        );
        assert_eq!(
            run("EXECUTE IMMEDIATE 'SELECT ? || ''it''''s''' USING 'a''b'"),
            Session::Run("SELECT ('a''b') || 'it''s'".into())
        );
        assert_eq!(
            headers_of("deallocate prepare q1"),
            vec![("x-trino-deallocated-prepare", "q1".into())]
        );
    }

    #[test]
    fn prepared_text_round_trips_through_the_header_encoding() {
        let text = "SELECT \"a b\" FROM t WHERE x = ? AND y = '100%'";
        assert_eq!(percent_decode(&percent_encode(text)), text);
    }
}
