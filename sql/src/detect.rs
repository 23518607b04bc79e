//! Which statements are LogSphere's, decided from their first few words.
//!
//! The parser and the wire layer's [`is_logsphere_statement`] share this one table, so
//! they can never disagree about which path a statement takes.

use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::parser::DIALECT;

/// How many leading words decide (`EXPLAIN ANALYZE CREATE OR REPLACE CONTINUOUS`).
pub(crate) const LEAD_WORDS: usize = 6;

/// The upper-cased spelling of an unquoted word; `None` for anything else, so that
/// `"continuous"` (quoted) never matches.
pub(crate) fn word(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// The first words of a statement as [`is_logsphere_lead`] takes them: upper-cased, `""`
/// for a token that is not an unquoted word.
pub(crate) fn lead_words<'t>(tokens: impl Iterator<Item = &'t Token>) -> Vec<String> {
    tokens
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .take(LEAD_WORDS)
        .map(|t| word(t).unwrap_or_default())
        .collect()
}

/// Whether a statement starting with these words (see [`lead_words`]) is LogSphere's.
pub(crate) fn is_logsphere_lead(words: &[String]) -> bool {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["CREATE", rest @ ..] => creates_cq(rest),
        ["SHOW", "CONTINUOUS" | "ALERTS", ..] | ["SHOW", "CREATE", "CONTINUOUS", ..] => true,
        ["DROP" | "ALTER", "CONTINUOUS", ..] => true,
        ["EXPLAIN", "ANALYZE", rest @ ..] | ["EXPLAIN", rest @ ..] => match rest {
            ["CONTINUOUS", ..] => true,
            ["CREATE", rest @ ..] => creates_cq(rest),
            _ => false,
        },
        ["BACKTEST", ..] => true,
        _ => false,
    }
}

/// `[OR REPLACE] CONTINUOUS` after `CREATE`.
fn creates_cq(after_create: &[&str]) -> bool {
    matches!(
        after_create,
        ["CONTINUOUS", ..] | ["OR", "REPLACE", "CONTINUOUS", ..]
    )
}

/// Whether `sql` contains at least one LogSphere statement (`CREATE CONTINUOUS QUERY`,
/// `SHOW ALERTS`, `BACKTEST`, …), so the whole text should go to [`crate::parse_statements`]
/// rather than straight to DataFusion.
///
/// This looks only at the first words of each `;`-separated statement, after comments.
/// Text that does not even tokenize is left to the ordinary path, which reports the error.
pub fn is_logsphere_statement(sql: &str) -> bool {
    // Almost every query is a plain SELECT; skip tokenizing when no marker word occurs.
    if !["continuous", "alerts", "backtest"]
        .iter()
        .any(|m| contains_ignore_case(sql, m))
    {
        return false;
    }
    let Ok(tokens) = Tokenizer::new(&DIALECT, sql).tokenize_with_location() else {
        return false;
    };
    tokens
        .split(|t| t.token == Token::SemiColon)
        .any(|statement| is_logsphere_lead(&lead_words(statement.iter().map(|t| &t.token))))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}
