use super::*;

fn parse_one(sql: &str) -> Statement {
    let mut statements = SqlParser::new().parse(sql).expect("parses");
    assert_eq!(statements.len(), 1, "{sql}");
    statements.remove(0)
}

/// The queries the two parsers must agree on: no whole-query stub, no search-path fragment.
const SAME_AS_DATAFUSION_PG_CATALOG: &[&str] = &[
    "SELECT n.oid, n.* FROM pg_catalog.pg_namespace n",
    "SELECT relname FROM pg_class WHERE relname OPERATOR(pg_catalog.~) '^(logs)$' COLLATE pg_catalog.default",
    "SELECT 'logs'::regclass, 'int4'::regtype",
    "SELECT 1 = ANY('{1,2}'::int[])",
    "SELECT version(), current_user",
    "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE attnum > 0",
    "SELECT (SELECT count(*) FROM pg_namespace) AS n",
    "BEGIN; SELECT 1; COMMIT",
];

#[test]
fn rewrites_as_datafusion_pg_catalog_does() {
    let ours = SqlParser::new();
    let theirs = PostgresCompatibilityParser::new();
    for sql in SAME_AS_DATAFUSION_PG_CATALOG {
        assert_eq!(
            ours.parse(sql).expect("parses"),
            theirs.parse(sql).expect("parses"),
            "{sql}"
        );
    }
}

#[test]
fn abort_is_rollback() {
    assert!(matches!(parse_one("ABORT"), Statement::Rollback { .. }));
}

/// datafusion-pg-catalog's empty stand-in for a query DataFusion cannot run (DBeaver's
/// relation sizes) is still used.
#[test]
fn whole_query_stubs_are_kept() {
    let dbeaver = "select c.oid,pg_catalog.pg_total_relation_size(c.oid) as total_rel_size,pg_catalog.pg_relation_size(c.oid) as rel_size\n     FROM pg_class c\n     WHERE c.relnamespace='public'";
    let statement = parse_one(dbeaver);
    assert!(is_empty_stub(&statement), "{statement}");
    // Next to another statement, only the stubbed one is replaced.
    let both = SqlParser::new()
        .parse(&format!("SELECT 1; {dbeaver}"))
        .expect("parses");
    assert_eq!(both.len(), 2);
    assert!(!is_empty_stub(&both[0]));
    assert!(is_empty_stub(&both[1]));
}

/// Grafana's search-path subquery stays a subquery (datafusion-pg-catalog makes it `''`).
#[test]
fn grafana_search_path_subquery_is_kept() {
    let sql = r#"SELECT quote_ident(table_name) FROM information_schema.tables WHERE quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"#;
    let text = parse_one(sql).to_string();
    assert!(text.contains("current_setting('search_path')"), "{text}");
    let theirs = PostgresCompatibilityParser::new()
        .parse(sql)
        .expect("parses")
        .remove(0)
        .to_string();
    assert!(
        !theirs.contains("current_setting"),
        "the crate changed: {theirs}"
    );
}

#[test]
fn syntax_errors_name_their_place() {
    let err = SqlParser::new()
        .parse("SELECT 1\nFROM t WHERE )")
        .expect_err("not SQL");
    assert!(err.to_string().contains("Line: 2"), "{err}");
}
