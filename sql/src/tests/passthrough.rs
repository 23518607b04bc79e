//! Statements that are not LogSphere's reach DataFusion exactly as DataFusion parses them.

use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use super::{create, one};
use crate::{Statement, parse_statements};

fn datafusion(sql: &str) -> DFStatement {
    match one(sql) {
        Statement::DataFusion(statement) => *statement,
        other => panic!("expected a DataFusion statement, got {other:?}"),
    }
}

fn as_datafusion_parses(sql: &str) -> DFStatement {
    DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
        .unwrap()
        .pop_front()
        .unwrap()
}

#[test]
fn plain_statements_pass_through_unchanged() {
    for sql in [
        "SELECT 1",
        "SELECT timestamp, source FROM logs WHERE log_level = 'ERROR' ORDER BY timestamp DESC LIMIT 10",
        "SELECT window_start, count(*) FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY 1",
        "SET x = 1",
        "SET TIME ZONE 'UTC'",
        "SHOW TABLES",
        "SHOW search_path",
        "EXPLAIN SELECT * FROM logs",
        "CREATE TABLE t (a INT)",
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp/t'",
        "DROP TABLE t",
        "SELECT 'CREATE CONTINUOUS QUERY' AS text",
        "SELECT continuous FROM alerts",
    ] {
        assert_eq!(datafusion(sql), as_datafusion_parses(sql), "{sql}");
    }
    assert!(matches!(datafusion("SELECT 1"), DFStatement::Statement(_)));
    assert!(matches!(
        datafusion("EXPLAIN SELECT 1"),
        DFStatement::Explain(_)
    ));
}

#[test]
fn mixed_scripts_keep_their_order() {
    let statements = parse_statements(
        ";; SET x = 1; CREATE CONTINUOUS QUERY q AS SELECT * FROM logs; SELECT 2;\n-- done\n",
    )
    .unwrap();
    assert_eq!(statements.len(), 3);
    assert!(matches!(statements[0], Statement::DataFusion(_)));
    assert!(matches!(statements[1], Statement::CreateContinuousQuery(_)));
    assert!(matches!(statements[2], Statement::DataFusion(_)));
    assert!(parse_statements("").unwrap().is_empty());
    assert!(parse_statements("  -- nothing\n ; ").unwrap().is_empty());
}

#[test]
fn a_quoted_continuous_is_an_identifier() {
    // `"continuous"` is a quoted name, not the keyword: sqlparser decides what this is.
    assert!(parse_statements("DROP \"continuous\" QUERY q").is_err());
    let cq = create("CREATE CONTINUOUS QUERY q EVENT TIME \"Time\" AS SELECT \"Time\" FROM logs");
    assert_eq!(cq.event_time.value, "Time");
}

#[test]
fn datafusion_errors_keep_their_position() {
    let err = parse_statements("SELECT 1;\nSELECT * FROM logs WHERE ) x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Expected: an expression, found: ) at Line: 2, Column: 26"
    );
}
