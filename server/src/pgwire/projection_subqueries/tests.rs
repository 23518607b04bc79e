use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use pgwire::error::PgWireError;

use super::*;
use crate::pgwire::parser::SqlParser;

fn rewritten(sql: &str) -> String {
    let mut statements = SqlParser::new().parse(sql).expect("parses");
    statements.remove(0).to_string()
}

#[test]
fn correlated_subqueries_stay_and_lose_a_limit_they_do_not_need() {
    assert_eq!(
        rewritten("SELECT (SELECT count(*) FROM u WHERE u.b = t.a) AS n FROM t"),
        "SELECT (SELECT count(*) FROM u WHERE u.b = t.a) AS n FROM t"
    );
    // pgAdmin's is_inherits.
    assert_eq!(
        rewritten(
            "SELECT (SELECT count(1) FROM pg_inherits WHERE inhrelid=rel.oid LIMIT 1) AS x FROM pg_class rel"
        ),
        "SELECT (SELECT count(1) FROM pg_catalog.pg_inherits WHERE inhrelid = rel.oid) AS x FROM pg_catalog.pg_class rel"
    );
    // Without an aggregate the LIMIT decides which row: it stays.
    assert_eq!(
        rewritten("SELECT (SELECT u.b FROM u WHERE u.b = t.a LIMIT 1) FROM t"),
        "SELECT (SELECT u.b FROM u WHERE u.b = t.a LIMIT 1) FROM t"
    );
}

#[test]
fn uncorrelated_subqueries_get_limit_1() {
    assert_eq!(
        rewritten("SELECT (SELECT b FROM u WHERE u.b > 1), (SELECT b FROM u WHERE b = $1) FROM t"),
        "SELECT (SELECT b FROM u WHERE u.b > 1 LIMIT 1), (SELECT b FROM u WHERE b = $1 LIMIT 1) FROM t"
    );
}

/// `t(a)` = 1, 2, 3 and `u(b)` = 1, 1, 2 in the default schema; the same as `c(x)` and
/// `d(y)` in `pg_catalog`.
async fn context() -> SessionContext {
    let ctx = SessionContext::new();
    for sql in [
        "CREATE TABLE t AS SELECT * FROM (VALUES (1), (2), (3)) AS v(a)",
        "CREATE TABLE u AS SELECT * FROM (VALUES (1), (1), (2)) AS v(b)",
        "CREATE SCHEMA pg_catalog",
        "CREATE TABLE pg_catalog.c AS SELECT * FROM (VALUES (1), (2), (3)) AS v(x)",
        "CREATE TABLE pg_catalog.d AS SELECT * FROM (VALUES (1), (1), (2)) AS v(y)",
    ] {
        ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    ctx
}

async fn settled(ctx: &SessionContext, sql: &str) -> PgWireResult<LogicalPlan> {
    let statement = SqlParser::new().parse(sql).expect("parses").remove(0);
    let state = ctx.state();
    let plan = state
        .statement_to_plan(DFStatement::Statement(Box::new(statement.clone())))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    settle(&state, &statement, plan).await
}

async fn rows(ctx: &SessionContext, plan: LogicalPlan) -> Vec<String> {
    let df = ctx.execute_logical_plan(plan).await.expect("plans");
    let batches = df.collect().await.expect("runs");
    pretty_format_batches(&batches)
        .expect("formats")
        .to_string()
        .lines()
        .skip(3)
        .filter(|l| !l.starts_with('+'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn decorrelated_subqueries_give_their_values() {
    let ctx = context().await;
    let plan = settled(
        &ctx,
        "SELECT a, (SELECT count(*) FROM u WHERE u.b = t.a) AS n FROM t ORDER BY a",
    )
    .await
    .expect("plans");
    assert_eq!(
        rows(&ctx, plan).await,
        ["| 1 | 2 |", "| 2 | 1 |", "| 3 | 0 |"]
    );
}

#[tokio::test]
async fn undecorrelatable_subqueries_over_data_are_refused() {
    let ctx = context().await;
    let err = settled(
        &ctx,
        "SELECT a, (SELECT count(*) FROM u WHERE u.b > t.a) AS n FROM t",
    )
    .await
    .expect_err("DataFusion cannot decorrelate a non-equality");
    let PgWireError::UserError(info) = err else {
        panic!("{err:?}");
    };
    assert_eq!(info.code, "0A000");
    assert!(
        info.message.contains("correlated subquery"),
        "{}",
        info.message
    );
}

#[tokio::test]
async fn undecorrelatable_subqueries_of_catalog_queries_read_null() {
    let ctx = context().await;
    let plan = settled(
        &ctx,
        "SELECT x, (SELECT count(*) FROM pg_catalog.d WHERE d.y > c.x) AS n FROM pg_catalog.c ORDER BY x",
    )
    .await
    .expect("plans");
    assert_eq!(
        rows(&ctx, plan).await,
        ["| 1 |   |", "| 2 |   |", "| 3 |   |"]
    );
}
