use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::error::PgWireError;

use super::*;

fn code_of(e: PgWireError) -> (String, Option<String>) {
    match e {
        PgWireError::UserError(info) => (info.code, info.position),
        other => panic!("expected a user error, got {other:?}"),
    }
}

#[test]
fn syntax_errors_carry_a_position() {
    let sql = "SELECT *\nFROM logs WHERE )";
    let err = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap_err();
    let (code, position) = code_of(syntax_error(&err, sql));
    assert_eq!(code, sqlstate::SYNTAX_ERROR);
    let position: usize = position.expect("a position").parse().unwrap();
    assert!(
        position > 9,
        "position {position} should be on the second line"
    );
}

#[test]
fn planning_errors_map_to_their_sqlstate() {
    let cases = [
        (
            "table 'logsphere.public.nope' not found",
            sqlstate::UNDEFINED_TABLE,
        ),
        (
            "Invalid function 'nope'.\nDid you mean 'now'?",
            sqlstate::UNDEFINED_FUNCTION,
        ),
        (
            "Cannot infer common argument type for comparison Int64 = Utf8",
            sqlstate::DATATYPE_MISMATCH,
        ),
        ("something else entirely", sqlstate::INTERNAL_ERROR),
    ];
    for (message, expected) in cases {
        let info = error_info(&DataFusionError::Plan(message.to_owned()));
        assert_eq!(info.code, expected, "{message}");
    }
}

#[test]
fn wrapped_errors_are_classified_by_their_root() {
    let inner = DataFusionError::Plan("table 'x' not found".to_owned());
    let wrapped = DataFusionError::Context("while planning".to_owned(), Box::new(inner));
    assert_eq!(error_info(&wrapped).code, sqlstate::UNDEFINED_TABLE);
}

#[test]
fn untyped_errors_are_normalised() {
    let mut e = PgWireError::ApiError(Box::new(DataFusionError::Plan(
        "table 't' not found".to_owned(),
    )));
    normalise(&mut e);
    assert_eq!(code_of(e).0, sqlstate::UNDEFINED_TABLE);
}
