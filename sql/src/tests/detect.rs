//! The wire layer's cheap check agrees with the parser.

use crate::{Statement, is_logsphere_statement, parse_statements};

#[test]
fn logsphere_statements_are_recognised() {
    for sql in [
        "CREATE CONTINUOUS QUERY q AS SELECT 1",
        "create or replace continuous query q as select 1",
        "  -- a rule\n  CREATE /* inline */ CONTINUOUS QUERY q AS SELECT 1",
        "SHOW CONTINUOUS QUERIES",
        "SHOW CREATE CONTINUOUS QUERY q",
        "SHOW ALERTS",
        "DROP CONTINUOUS QUERY q",
        "ALTER CONTINUOUS QUERY q PAUSE",
        "EXPLAIN CONTINUOUS QUERY q",
        "EXPLAIN CREATE CONTINUOUS QUERY q AS SELECT 1",
        "EXPLAIN ANALYZE CONTINUOUS QUERY q",
        "BACKTEST CONTINUOUS QUERY q FROM now() TO now()",
        "SELECT 1; SHOW ALERTS",
    ] {
        assert!(is_logsphere_statement(sql), "{sql}");
    }
}

#[test]
fn everything_else_is_not() {
    for sql in [
        "SELECT * FROM logs",
        "SELECT 'CREATE CONTINUOUS QUERY'",
        "SELECT continuous FROM t; SELECT alerts FROM t",
        "-- SHOW ALERTS\nSELECT 1",
        "CREATE TABLE continuous (a INT)",
        "SHOW alerts_enabled",
        "EXPLAIN SELECT backtest FROM t",
        "SHOW \"ALERTS\"",
        "SELECT 'unterminated",
        "",
    ] {
        assert!(!is_logsphere_statement(sql), "{sql}");
    }
}

#[test]
fn recognised_text_parses_to_a_logsphere_statement() {
    let sql = "SHOW CONTINUOUS QUERIES; SELECT 1";
    assert!(is_logsphere_statement(sql));
    let statements = parse_statements(sql).unwrap();
    assert!(matches!(
        statements[0],
        Statement::ShowContinuousQueries { .. }
    ));
}
