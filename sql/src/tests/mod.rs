//! Unit tests of the parser, by area.

mod detect;
mod duration;
mod errors;
mod examples;
mod management;
mod passthrough;

use crate::{CreateContinuousQuery, Statement, parse_statements};

/// Parses `sql`, which must be exactly one statement.
fn one(sql: &str) -> Statement {
    let mut statements = parse_statements(sql).unwrap_or_else(|e| panic!("{e}\n{sql}"));
    assert_eq!(statements.len(), 1, "{statements:?}");
    statements.remove(0)
}

/// Parses `sql`, which must be exactly one `CREATE CONTINUOUS QUERY`.
fn create(sql: &str) -> CreateContinuousQuery {
    match one(sql) {
        Statement::CreateContinuousQuery(cq) => *cq,
        other => panic!("expected CREATE CONTINUOUS QUERY, got {other:?}"),
    }
}

/// The error `sql` fails with.
fn error(sql: &str) -> crate::ParseError {
    match parse_statements(sql) {
        Ok(statements) => panic!("expected an error, parsed {statements:?}"),
        Err(e) => e,
    }
}
