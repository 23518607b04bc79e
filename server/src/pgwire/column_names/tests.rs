use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::*;

fn names(sql: &str, width: usize) -> Option<Vec<Option<String>>> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    output_names(&statements.remove(0), width)
}

fn some(names: &[&str]) -> Option<Vec<Option<String>>> {
    Some(names.iter().map(|n| Some((*n).to_owned())).collect())
}

#[test]
fn functions_are_named_after_the_function() {
    assert_eq!(
        names(
            "SELECT COUNT(*), min(logs.timestamp), now(), pg_catalog.current_setting('TimeZone') FROM logs",
            4
        ),
        some(&["count", "min", "now", "current_setting"])
    );
}

#[test]
fn unnamed_expressions_are_question_column() {
    assert_eq!(
        names("SELECT 1 + 1, 'a', x IS NULL FROM t", 3),
        some(&["?column?", "?column?", "?column?"])
    );
}

#[test]
fn columns_casts_and_keywords() {
    assert_eq!(
        names(
            r#"SELECT x, t.y, "MiXed", x::text, 1::int, CASE WHEN x THEN 1 END, (x), CAST(NULL AS timestamptz) FROM t"#,
            8
        ),
        some(&["x", "y", "MiXed", "x", "int4", "case", "x", "timestamptz"])
    );
}

#[test]
fn aliases_keep_datafusions_name() {
    assert_eq!(
        names("SELECT count(*) AS n, x FROM t", 2),
        Some(vec![None, Some("x".to_owned())])
    );
}

#[test]
fn wildcards_are_matched_from_both_ends() {
    assert_eq!(
        names("SELECT count(x), *, now() FROM t", 5),
        Some(vec![
            Some("count".to_owned()),
            None,
            None,
            None,
            Some("now".to_owned())
        ])
    );
    assert_eq!(names("SELECT 1, 2, 3", 2), None);
    assert_eq!(names("SELECT a, *, b FROM t", 1), None);
}

#[test]
fn set_operations_take_the_left_names() {
    assert_eq!(
        names(
            "SELECT max(x) FROM t UNION ALL SELECT min(x) AS m FROM t",
            1
        ),
        some(&["max"])
    );
    assert_eq!(names("SHOW TIME ZONE", 1), None);
}

#[test]
fn a_repeated_column_keeps_its_own_name() {
    // datafusion-pg-catalog aliases the first of two `oid` columns `__alias_oid`.
    assert_eq!(
        names("SELECT n.oid AS __alias_oid, n.* FROM pg_namespace n", 5),
        Some(vec![Some("oid".to_owned()), None, None, None, None])
    );
    assert_eq!(
        names("SELECT n.oid AS __alias_x FROM pg_namespace n", 1),
        Some(vec![None])
    );
}
