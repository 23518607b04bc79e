//! LogSphere's SQL extensions, parsed into typed statements (no I/O).
//!
//! An alert rule in LogSphere is a SQL statement, `CREATE CONTINUOUS QUERY … AS <SELECT>`
//! (see `CONTINUOUS_QUERIES.md`). This crate parses it, and the statements that manage
//! continuous queries (`SHOW`, `DROP`, `ALTER … PAUSE|RESUME`, `EXPLAIN`, `BACKTEST`), with
//! a wrapper parser in the style of DataFusion's `DFParser`: one sqlparser `Parser` with the
//! PostgreSQL dialect, LogSphere's statements recognised by their first words and every
//! other statement handed to DataFusion's parser unchanged, ready for
//! `SessionState::statement_to_plan`.
//!
//! ```
//! use std::time::Duration;
//! use logsphere_sql::{EmitPolicy, Statement, parse_statements};
//!
//! let sql = "CREATE CONTINUOUS QUERY error_burst
//!              WATERMARK INTERVAL '10 seconds'
//!              EMIT ON THRESHOLD
//!              ALERT (SEVERITY 'warning', COOLDOWN '10m')
//!            AS SELECT window_start, source, count(*) AS n
//!               FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
//!               GROUP BY window_start, window_end, source
//!               HAVING count(*) > 100;
//!            SELECT 1";
//! let statements = parse_statements(sql)?;
//! let Statement::CreateContinuousQuery(cq) = &statements[0] else { panic!() };
//! assert_eq!(cq.name.to_string(), "error_burst");
//! assert_eq!(cq.watermark, Duration::from_secs(10));
//! assert_eq!(cq.emit, Some(EmitPolicy::OnThreshold));
//! assert_eq!(cq.alert.as_ref().unwrap().cooldown, Some(Duration::from_secs(600)));
//! assert!(cq.body_sql.starts_with("SELECT window_start"));
//! assert!(matches!(statements[1], Statement::DataFusion(_)));
//!
//! // The wire layer asks first, cheaply, whether the text needs this parser at all.
//! assert!(logsphere_sql::is_logsphere_statement(sql));
//! assert!(!logsphere_sql::is_logsphere_statement("SELECT * FROM logs"));
//! # Ok::<(), logsphere_sql::ParseError>(())
//! ```
//!
//! Errors carry the line and column of the offending token and say what would have been
//! accepted there:
//!
//! ```
//! let err = logsphere_sql::parse_statements("CREATE CONTINUOUS QUERY q ALERT (BOGUS 1) AS SELECT 1").unwrap_err();
//! assert_eq!((err.line, err.column), (1, 34));
//! assert!(err.to_string().starts_with("Expected: alert option (SEVERITY, DEDUP BY,"));
//! ```

mod ast;
mod detect;
mod duration;
mod error;
mod parser;

pub use ast::{
    AlertSpec, AlterAction, CQ_OPTION_NAMES, Channel, CqOptions, CqTarget, CreateContinuousQuery,
    DEFAULT_ALERT_RETENTION, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_EVENT_TIME_COLUMN,
    DEFAULT_WATERMARK, EmitPolicy, For, LateAction, Mode, ShowFilter, StartFrom, Statement,
};
pub use detect::is_logsphere_statement;
pub use duration::{INTERVAL_FORMS, duration_of_expr, parse_duration};
pub use error::ParseError;
pub use parser::parse_statements;

#[cfg(test)]
mod tests;
