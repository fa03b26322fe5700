//! A query's text as the audit log keeps it: its shape, not its values.
//!
//! The audit log is append-only and hash-chained, so an erasure cannot take a user's id out of
//! it afterwards; the id must never get in. Queries are recorded with every literal replaced by
//! `?` and every comment dropped (as `pg_stat_statements` normalises them): who ran what kind
//! of query against which tables stays visible, the values it looked for do not.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// `sql` without its literals and comments, cut to `max_chars` characters. Text the tokenizer
/// cannot read (an unterminated quote, say) is not recorded at all, only its length: whatever
/// follows the unreadable point could be a value.
pub(crate) fn redact_literals(sql: &str, max_chars: usize) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return format!("(SQL not readable, {} characters)", sql.chars().count());
    };
    let mut out = String::with_capacity(sql.len().min(max_chars));
    for token in &tokens {
        match token {
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => out.push('?'),
            Token::Whitespace(Whitespace::SingleLineComment { .. })
            | Token::Whitespace(Whitespace::MultiLineComment(_)) => out.push(' '),
            other => out.push_str(&other.to_string()),
        }
        if out.len() >= max_chars * 4 {
            break;
        }
    }
    out.chars().take(max_chars).collect()
}

/// An error message without what it quotes: engines quote the offending value (`Cannot cast
/// string 'u-4711' to …`), so every `'…'` becomes `?`; an unclosed quote hides the rest.
pub(crate) fn redact_quoted(message: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(message.len().min(max_chars));
    let mut parts = message.split('\'');
    out.push_str(parts.next().unwrap_or_default());
    while let Some(_quoted) = parts.next() {
        out.push('?');
        match parts.next() {
            Some(after) => out.push_str(after),
            None => break,
        }
    }
    out.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_comments_are_gone_the_shape_stays() {
        let sql = "SELECT type, count(*) FROM events -- for u-4711\n\
                   WHERE user_id = 'u-4711' AND n > 42 AND x IN (E'a\\'b', X'ff', N'zz') \
                   /* ask alice@example.com */ LIMIT 10";
        let kept = redact_literals(sql, 4096);
        assert_eq!(
            kept,
            "SELECT type, count(*) FROM events  \
             WHERE user_id = ? AND n > ? AND x IN (?, ?, ?)   LIMIT ?"
        );
        for secret in ["4711", "alice", "42", "ff", "zz"] {
            assert!(!kept.contains(secret), "{secret} is in {kept}");
        }
    }

    #[test]
    fn quoted_identifiers_stay_and_unreadable_text_is_not_kept() {
        assert_eq!(
            redact_literals(r#"SELECT "user_id" FROM "events""#, 100),
            r#"SELECT "user_id" FROM "events""#
        );
        let unreadable = "SELECT * FROM events WHERE user_id = 'u-4711";
        assert_eq!(
            redact_literals(unreadable, 100),
            "(SQL not readable, 44 characters)"
        );
        assert_eq!(redact_literals("SELECT 1, 2", 8), "SELECT ?");
    }

    #[test]
    fn quoted_values_leave_error_messages() {
        assert_eq!(
            redact_quoted("Cannot cast string 'u-4711' to value of Int64 type", 100),
            "Cannot cast string ? to value of Int64 type"
        );
        assert_eq!(redact_quoted("a 'b' c 'd' e", 100), "a ? c ? e");
        assert_eq!(
            redact_quoted("unclosed 'u-4711 and more", 100),
            "unclosed ?"
        );
        assert_eq!(redact_quoted("no quotes, line 1", 100), "no quotes, line 1");
    }
}
