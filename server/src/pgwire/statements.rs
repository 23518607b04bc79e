//! LogSphere's own SQL statements (continuous queries, alerts, …), recognised in the raw
//! SQL text before the PostgreSQL-dialect parser sees it: that parser rejects them.
//!
//! Both query paths go through here first: a simple query calls [`recognise`] on its whole
//! text, and an extended-protocol Parse calls it on the statement text, stores the result
//! and runs it at Execute. The statements themselves are parsed by `logsphere-sql`; none
//! are wired up yet, so [`recognise`] accepts nothing and [`LogSphereStatement`] has no
//! variants.

use std::sync::Arc;

use pgwire::api::results::{FieldInfo, Response};
use pgwire::error::PgWireResult;

use super::session::Session;

/// A statement only LogSphere understands, parsed from SQL text.
#[derive(Debug, Clone)]
pub(crate) enum LogSphereStatement {}

/// Parses `sql` as one of LogSphere's own statements; `None` means it is ordinary SQL for
/// DataFusion.
pub(crate) fn recognise(sql: &str) -> Option<PgWireResult<LogSphereStatement>> {
    let _ = sql;
    None
}

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
