use datafusion::prelude::SessionContext;

use crate::memory::tests::{one_value, session_over_texts};

const MIB: usize = 1 << 20;

/// `sql`'s value from DataFusion's own functions over the same table `t` as `ctx`'s.
async fn datafusions_own(ctx: &SessionContext, sql: &str) -> i64 {
    let plain = SessionContext::new();
    plain
        .register_table("t", ctx.table_provider("t").await.unwrap())
        .unwrap();
    one_value(&plain, sql).await.unwrap()
}

/// Trino's bound: 1,001 characters against 1,000 is 999,999 steps, answered; a row of 1,200
/// against 1,000 is refused with Trino's words, before any step is taken.
#[tokio::test]
async fn a_row_past_trinos_bound_is_refused_with_its_words() {
    let (ctx, _pool) = session_over_texts(64 * MIB, false);
    let at_the_bound = "SELECT CAST(levenshtein(repeat('x', 1001), repeat('y', 1000)) AS BIGINT)";
    assert_eq!(one_value(&ctx, at_the_bound).await.unwrap(), 1001);
    // `s` is `u-{batch}-{row}`: five or six characters, 1,000 or 1,200 repeated.
    let past = "SELECT CAST(max(levenshtein(repeat(s, 200), repeat('y', 1000))) AS BIGINT) FROM t";
    let refused = one_value(&ctx, past).await.unwrap_err().to_string();
    assert!(
        refused.contains("The combined inputs for Levenshtein distance are too large"),
        "{refused}"
    );
}

/// A batch of 32 rows of about a million steps each is computed in pieces; the answers are
/// DataFusion's own.
#[tokio::test]
async fn a_batch_in_pieces_answers_as_one_call() {
    let (ctx, _pool) = session_over_texts(64 * MIB, false);
    let sql = "SELECT CAST(sum(levenshtein(rpad(s, 1000, 'ab'), rpad(reverse(s), 999, 'ba'))) \
               AS BIGINT) FROM t";
    let expected = datafusions_own(&ctx, sql).await;
    assert!(expected > 0);
    assert_eq!(one_value(&ctx, sql).await.unwrap(), expected);
}

/// Once its query has stopped (its time limit, its client gone), a call computes no further
/// piece: a failed query's thread no longer runs on for minutes.
#[tokio::test]
async fn a_stopped_query_computes_no_further_piece() {
    let (ctx, pool) = session_over_texts(64 * MIB, false);
    let sql = "SELECT CAST(sum(levenshtein(rpad(s, 1000, 'ab'), rpad(s, 1000, 'ba'))) AS BIGINT) \
               FROM t";
    pool.stop();
    let refused = one_value(&ctx, sql).await.unwrap_err().to_string();
    assert!(
        refused.contains("levenshtein(…) stopped with its query"),
        "{refused}"
    );
}

/// Each row's own pattern, through every way of writing a regular expression match: the
/// answers are DataFusion's own, in pieces of two patterns.
#[tokio::test]
async fn patterns_from_rows_answer_as_one_call() {
    let (ctx, _pool) = session_over_texts(256 * MIB, false);
    let sql = "SELECT CAST(count(*) FILTER (WHERE s ~ ('^' || s)) \
               + count(*) FILTER (WHERE upper(s) ~* s) \
               + count(*) FILTER (WHERE s !~ (s || 'z')) \
               + count(*) FILTER (WHERE regexp_like(s, substr(s, 3))) \
               + sum(regexp_count(s, substr(s, 1, 3))) \
               + sum(length(regexp_replace(s, substr(s, 2, 2), 'xyz'))) \
               + sum(regexp_instr(s, substr(s, 3))) \
               + sum(cardinality(regexp_match(s, s))) AS BIGINT) FROM t";
    let expected = datafusions_own(&ctx, sql).await;
    assert!(expected > 192 * 4, "{expected}");
    assert_eq!(one_value(&ctx, sql).await.unwrap(), expected);
}

/// The patterns a piece compiles are held in the query's pool: at 40 MiB, two distinct
/// patterns (32 MiB each) do not fit, in an operator or a function; a constant pattern,
/// compiled once, is left as it was.
#[tokio::test]
async fn patterns_from_rows_are_held_in_the_query_memory() {
    let (ctx, pool) = session_over_texts(40 * MIB, false);
    for sql in [
        "SELECT count(*) FROM t WHERE s ~ s",
        "SELECT count(*) FROM t WHERE regexp_like(s, s, 'i')",
        "SELECT CAST(sum(regexp_count(s, s)) AS BIGINT) FROM t",
    ] {
        let refused = one_value(&ctx, sql).await.unwrap_err().to_string();
        assert!(
            refused.contains("the patterns regexp_") && refused.contains("compiles"),
            "{sql}: {refused}"
        );
    }
    let constant = "SELECT count(*) FROM t WHERE s ~ '^u-' AND regexp_count(s, '-') = 2";
    assert_eq!(one_value(&ctx, constant).await.unwrap(), 192);
    pool.stop();
    let (ctx, pool) = session_over_texts(256 * MIB, false);
    pool.stop();
    let refused = one_value(&ctx, "SELECT count(*) FROM t WHERE s ~ s")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("stopped with its query"), "{refused}");
}
