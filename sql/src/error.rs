//! The crate's one error type: what went wrong, and where in the SQL text.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Location;

/// A statement that does not parse, with the 1-based position of the offending token.
///
/// Displays like sqlparser's errors:
/// `Expected: alert option (…), found: BOGUS at Line: 1, Column: 53`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", position(*line, *column))]
pub struct ParseError {
    /// 1-based line of the offending token; 0 when the position is unknown.
    pub line: u64,
    /// 1-based column (in characters) of the offending token; 0 when unknown.
    pub column: u64,
    /// What was wrong and, where it helps, what would work instead.
    pub message: String,
}

fn position(line: u64, column: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" at Line: {line}, Column: {column}")
    }
}

impl ParseError {
    /// An error at `location`.
    pub(crate) fn at(location: Location, message: impl Into<String>) -> Self {
        Self {
            line: location.line,
            column: location.column,
            message: message.into(),
        }
    }
}

/// sqlparser appends ` at Line: L, Column: C` to its messages; split it back out.
impl From<ParserError> for ParseError {
    fn from(err: ParserError) -> Self {
        let text = match err {
            ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
            ParserError::RecursionLimitExceeded => {
                "statement nested too deeply (recursion limit exceeded)".to_owned()
            }
        };
        split_location(&text)
    }
}

/// DataFusion wraps sqlparser's error (and sometimes a diagnostic around that); unwrap to
/// the positioned message.
impl From<DataFusionError> for ParseError {
    fn from(err: DataFusionError) -> Self {
        match err {
            DataFusionError::SQL(inner, extra) => {
                let mut err = ParseError::from(*inner);
                if let Some(extra) = extra {
                    err.message.push_str(&extra);
                }
                err
            }
            DataFusionError::Diagnostic(_, inner) => ParseError::from(*inner),
            other => split_location(&other.strip_backtrace()),
        }
    }
}

fn split_location(text: &str) -> ParseError {
    if let Some(at) = text.rfind(" at Line: ") {
        let mut numbers = text[at + " at Line: ".len()..].split(", Column: ");
        let line = numbers.next().and_then(|n| n.trim().parse().ok());
        let column = numbers.next().and_then(|n| n.trim().parse().ok());
        if let (Some(line), Some(column)) = (line, column) {
            return ParseError {
                line,
                column,
                message: text[..at].to_owned(),
            };
        }
    }
    ParseError {
        line: 0,
        column: 0,
        message: text.to_owned(),
    }
}
