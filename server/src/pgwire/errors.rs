//! DataFusion, parser and LogSphere errors as PostgreSQL `ErrorResponse`s with a SQLSTATE.
//!
//! Clients branch on the SQLSTATE (`err.code()` in tokio-postgres, `SQLState` in JDBC), so
//! every error that leaves the server goes through [`error_info`] or one of the constructors
//! here; pgwire's own fallback would send `XX000` for all of them.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use pgwire::error::{ErrorInfo, PgWireError};

/// SQLSTATE codes used by LogSphere (PostgreSQL appendix A).
pub(crate) mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const DUPLICATE_CURSOR: &str = "42P03";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// An `ERROR`-severity error with `code` and `message`.
pub(crate) fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// The error for a statement that would change the server's data, files or catalog.
pub(crate) fn read_only(what: &str) -> PgWireError {
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate::READ_ONLY_SQL_TRANSACTION.to_owned(),
        format!(
            "LogSphere is read-only over SQL: {what} is not allowed; ingest logs over HTTP or Kafka"
        ),
    );
    info.hint = Some("the PostgreSQL port answers queries (SELECT, SHOW, EXPLAIN) only".to_owned());
    PgWireError::UserError(Box::new(info))
}

/// A SQL parse error, with the error cursor (1-based character offset into `sql`) when the
/// parser reported a line and column.
pub(crate) fn syntax_error(err: &ParserError, sql: &str) -> PgWireError {
    let text = match err {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s.clone(),
        ParserError::RecursionLimitExceeded => "statement is nested too deeply".to_owned(),
    };
    let (message, position) = split_location(&text, sql);
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate::SYNTAX_ERROR.to_owned(),
        format!("syntax error: {message}"),
    );
    info.position = position.map(|p| p.to_string());
    PgWireError::UserError(Box::new(info))
}

/// Splits sqlparser's `"... at Line: L, Column: C"` suffix off `text` and turns it into a
/// character position in `sql`.
fn split_location(text: &str, sql: &str) -> (String, Option<usize>) {
    let Some(at) = text.rfind(" at Line: ") else {
        return (text.to_owned(), None);
    };
    let location = &text[at + " at Line: ".len()..];
    let mut parts = location.split(", Column: ");
    let line = parts.next().and_then(|l| l.trim().parse::<usize>().ok());
    let column = parts.next().and_then(|c| c.trim().parse::<usize>().ok());
    let (Some(line), Some(column)) = (line, column) else {
        return (text.to_owned(), None);
    };
    if line == 0 || column == 0 {
        return (text[..at].to_owned(), None);
    }
    let preceding: usize = sql
        .split('\n')
        .take(line - 1)
        .map(|l| l.chars().count() + 1)
        .sum();
    (text[..at].to_owned(), Some(preceding + column))
}

/// A PostgreSQL error raised inside a SQL function (`set_config` refusing a value), carried
/// through DataFusion with its SQLSTATE.
#[derive(Debug)]
pub(crate) struct SqlStateError {
    pub(crate) code: String,
    pub(crate) message: String,
}

impl std::fmt::Display for SqlStateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlStateError {}

/// Maps any DataFusion error to a PostgreSQL error with the closest SQLSTATE.
pub(crate) fn error_info(err: &DataFusionError) -> ErrorInfo {
    let root = err.find_root();
    if let DataFusionError::External(e) = root
        && let Some(e) = e.downcast_ref::<SqlStateError>()
    {
        return ErrorInfo::new("ERROR".to_owned(), e.code.clone(), e.message.clone());
    }
    let message = root.message().into_owned();
    let code = sqlstate_of(root, &message);
    ErrorInfo::new("ERROR".to_owned(), code.to_owned(), message)
}

/// [`error_info`] as a `PgWireError`.
pub(crate) fn datafusion_error(err: &DataFusionError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(err)))
}

fn sqlstate_of(root: &DataFusionError, message: &str) -> &'static str {
    use datafusion::arrow::error::ArrowError;
    use datafusion::common::SchemaError;
    match root {
        DataFusionError::SQL(..) => sqlstate::SYNTAX_ERROR,
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            SchemaError::FieldNotFound { .. } => sqlstate::UNDEFINED_COLUMN,
            SchemaError::AmbiguousReference { .. } => sqlstate::AMBIGUOUS_COLUMN,
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => sqlstate::DUPLICATE_COLUMN,
        },
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero => sqlstate::DIVISION_BY_ZERO,
            ArrowError::CastError(_) | ArrowError::ParseError(_) | ArrowError::ComputeError(_) => {
                sqlstate::DATA_EXCEPTION
            }
            ArrowError::InvalidArgumentError(_) => sqlstate::DATA_EXCEPTION,
            _ => sqlstate::INTERNAL_ERROR,
        },
        DataFusionError::NotImplemented(_) => sqlstate::FEATURE_NOT_SUPPORTED,
        DataFusionError::ResourcesExhausted(_) => sqlstate::OUT_OF_MEMORY,
        DataFusionError::Configuration(_) => sqlstate::INVALID_PARAMETER_VALUE,
        DataFusionError::Plan(_) | DataFusionError::Execution(_) => classify_message(message),
        DataFusionError::External(e)
            if e.downcast_ref::<logsphere_udfs::pg_datetime::FormatError>()
                .is_some() =>
        {
            sqlstate::INVALID_DATETIME_FORMAT
        }
        _ => sqlstate::INTERNAL_ERROR,
    }
}

/// DataFusion reports most planning failures as `Plan(String)`; the wording is the only
/// signal of what went wrong.
fn classify_message(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.starts_with("unrecognized configuration parameter") {
        sqlstate::UNDEFINED_OBJECT
    } else if m.starts_with(super::unknown_literals::INVALID_INPUT) {
        sqlstate::INVALID_TEXT_REPRESENTATION
    } else if m.starts_with("permission denied") {
        sqlstate::INSUFFICIENT_PRIVILEGE
    } else if m.starts_with("table '") && m.contains("' not found") {
        sqlstate::UNDEFINED_TABLE
    } else if (m.contains("table function '") && m.contains("not found"))
        || m.starts_with("invalid function '")
    {
        sqlstate::UNDEFINED_FUNCTION
    } else if m.contains("column '") && m.contains("not found") {
        sqlstate::UNDEFINED_COLUMN
    } else if m.contains("no function matches")
        || (m.contains("function '") && m.contains("failed to match"))
    {
        sqlstate::UNDEFINED_FUNCTION
    } else if m.contains("cannot infer common")
        || m.contains("coerc")
        || m.contains("unsupported cast")
        || m.contains("cannot be cast")
        || m.contains("type mismatch")
        || (m.contains("does not support") && m.contains("type"))
    {
        sqlstate::DATATYPE_MISMATCH
    } else if m.contains("divide by zero") || m.contains("division by zero") {
        sqlstate::DIVISION_BY_ZERO
    } else if m.contains("cast") {
        sqlstate::DATA_EXCEPTION
    } else if m.contains("not supported") || m.contains("unsupported") {
        sqlstate::FEATURE_NOT_SUPPORTED
    } else {
        sqlstate::INTERNAL_ERROR
    }
}

/// Rewrites errors that reached pgwire untyped (a `DataFusionError` boxed as `ApiError`,
/// e.g. from a result stream that failed half-way) into their SQLSTATE form.
pub(crate) fn normalise(error: &mut PgWireError) {
    if let PgWireError::ApiError(inner) = error {
        let mapped = if let Some(df) = inner.downcast_ref::<DataFusionError>() {
            Some(error_info(df))
        } else if let Some(arrow) = inner.downcast_ref::<datafusion::arrow::error::ArrowError>() {
            let df = DataFusionError::ArrowError(Box::new(clone_arrow_error(arrow)), None);
            Some(error_info(&df))
        } else {
            None
        };
        let info = mapped.unwrap_or_else(|| {
            ErrorInfo::new(
                "ERROR".to_owned(),
                sqlstate::INTERNAL_ERROR.to_owned(),
                inner.to_string(),
            )
        });
        *error = PgWireError::UserError(Box::new(info));
    }
}

fn clone_arrow_error(
    e: &datafusion::arrow::error::ArrowError,
) -> datafusion::arrow::error::ArrowError {
    use datafusion::arrow::error::ArrowError;
    match e {
        ArrowError::DivideByZero => ArrowError::DivideByZero,
        ArrowError::CastError(s) => ArrowError::CastError(s.clone()),
        ArrowError::ParseError(s) => ArrowError::ParseError(s.clone()),
        ArrowError::ComputeError(s) => ArrowError::ComputeError(s.clone()),
        ArrowError::InvalidArgumentError(s) => ArrowError::InvalidArgumentError(s.clone()),
        other => ArrowError::ExternalError(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests;
