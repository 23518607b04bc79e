//! LogSphere's own SQL statements (continuous queries, alerts, …), recognised in the raw
//! SQL text before the PostgreSQL-dialect parser sees it: that parser rejects them.
//!
//! Both query paths go through here first: a simple query calls [`recognise`] on its whole
//! text, and an extended-protocol Parse calls it on the statement text, stores the result
//! and runs it at Execute. The statements themselves are parsed by `logsphere-sql`.
//! Continuous queries do not run yet: a well-formed statement is refused with
//! `0A000 feature_not_supported`, a malformed one with `42601` and its line and column, so a
//! client learns which of the two it is; [`LogSphereStatement`] gets its variants when the
//! continuous-query runtime is wired in.

use std::sync::Arc;

use pgwire::api::results::{FieldInfo, Response};
use pgwire::error::PgWireResult;

use super::errors::user_error;
use super::session::Session;

/// A statement only LogSphere understands, parsed from SQL text.
#[derive(Debug, Clone)]
pub(crate) enum LogSphereStatement {}

/// Parses `sql` as one of LogSphere's own statements; `None` means it is ordinary SQL for
/// DataFusion.
pub(crate) fn recognise(sql: &str) -> Option<PgWireResult<LogSphereStatement>> {
    if !logsphere_sql::is_logsphere_statement(sql) {
        return None;
    }
    Some(match logsphere_sql::parse_statements(sql) {
        Err(e) => Err(user_error(SYNTAX_ERROR, e.to_string())),
        Ok(statements) => {
            let what = statements
                .iter()
                .find_map(describe)
                .unwrap_or("this statement");
            Err(user_error(
                FEATURE_NOT_SUPPORTED,
                format!(
                    "{what} parsed, but continuous queries cannot run in this LogSphere build yet; \
                     run the query's SELECT directly to see what it would find"
                ),
            ))
        }
    })
}

fn describe(s: &logsphere_sql::Statement) -> Option<&'static str> {
    use logsphere_sql::Statement as S;
    Some(match s {
        S::DataFusion(_) => return None,
        S::CreateContinuousQuery(_) => "CREATE CONTINUOUS QUERY",
        S::ShowContinuousQueries { .. } => "SHOW CONTINUOUS QUERIES",
        S::ShowCreateContinuousQuery { .. } => "SHOW CREATE CONTINUOUS QUERY",
        S::ShowAlerts { .. } => "SHOW ALERTS",
        S::DropContinuousQuery { .. } => "DROP CONTINUOUS QUERY",
        S::AlterContinuousQuery { .. } => "ALTER CONTINUOUS QUERY",
        S::ExplainContinuousQuery(_) => "EXPLAIN CONTINUOUS QUERY",
        S::Backtest { .. } => "BACKTEST",
    })
}

const SYNTAX_ERROR: &str = "42601";
const FEATURE_NOT_SUPPORTED: &str = "0A000";

impl LogSphereStatement {
    /// The columns the statement returns (for Describe); empty for a command.
    pub(crate) fn result_fields(&self) -> Vec<FieldInfo> {
        match *self {}
    }

    /// Runs the statement in `session`.
    pub(crate) async fn execute(&self, session: &Arc<Session>) -> PgWireResult<Response> {
        let _ = session;
        match *self {}
    }
}
