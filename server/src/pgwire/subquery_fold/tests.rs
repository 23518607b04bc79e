use datafusion::arrow::util::pretty::pretty_format_batches;

use super::*;

/// A session with `t(a)` = 1, 2, NULL and `u(b)` = 2, 3, NULL.
async fn context() -> SessionContext {
    let ctx = SessionContext::new();
    ctx.sql("CREATE TABLE t AS SELECT * FROM (VALUES (1), (2), (NULL)) AS v(a)")
        .await
        .expect("t");
    ctx.sql("CREATE TABLE u AS SELECT * FROM (VALUES (2), (3), (NULL)) AS v(b)")
        .await
        .expect("u");
    ctx
}

async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
    ctx.state()
        .create_logical_plan(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `sql` folded and run, as the lines of its table.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let folded = fold(ctx, plan(ctx, sql).await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let df = ctx
        .execute_logical_plan(folded)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches = df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    pretty_format_batches(&batches)
        .expect("formats")
        .to_string()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn subqueries_left(plan: &LogicalPlan) -> usize {
    let mut n = 0;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if matches!(e, Expr::InSubquery(_) | Expr::Exists(_)) {
                    n += 1;
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    n
}

#[tokio::test]
async fn in_and_not_in_keep_three_valued_logic() {
    let ctx = context().await;
    let sql = "SELECT a, a IN (SELECT b FROM u) AS i, a NOT IN (SELECT b FROM u) AS n, \
               a NOT IN (SELECT b FROM u WHERE b IS NOT NULL) AS m FROM t ORDER BY a";
    assert_eq!(
        rows(&ctx, sql).await,
        [
            "+---+------+-------+-------+",
            "| a | i    | n     | m     |",
            "+---+------+-------+-------+",
            "| 1 |      |       | true  |",
            "| 2 | true | false | false |",
            "|   |      |       |       |",
            "+---+------+-------+-------+",
        ]
    );
}

#[tokio::test]
async fn an_empty_result_is_false_for_in_and_true_for_not_in() {
    let ctx = context().await;
    let sql = "SELECT a IN (SELECT b FROM u WHERE b > 9) AS i, \
               a NOT IN (SELECT b FROM u WHERE b > 9) AS n FROM t WHERE a IS NULL";
    assert_eq!(
        rows(&ctx, sql).await,
        [
            "+-------+------+",
            "| i     | n    |",
            "+-------+------+",
            "| false | true |",
            "+-------+------+",
        ]
    );
}

/// Grafana's shape: inside a CASE, in the SELECT list and in ORDER BY.
#[tokio::test]
async fn folds_inside_case_and_order_by() {
    let ctx = context().await;
    let sql = "SELECT CASE WHEN a IN (SELECT b FROM u) THEN 'on' ELSE 'off' END AS p FROM t \
               WHERE a IS NOT NULL \
               ORDER BY CASE WHEN a IN (SELECT b FROM u) THEN 0 ELSE 1 END, a";
    assert_eq!(
        rows(&ctx, sql).await,
        [
            "+-----+", "| p   |", "+-----+", "| on  |", "| off |", "+-----+"
        ]
    );
}

#[tokio::test]
async fn folds_exists_and_nested_subqueries() {
    let ctx = context().await;
    let sql = "SELECT EXISTS (SELECT 1 FROM u WHERE b = 3) AS e, \
               NOT EXISTS (SELECT 1 FROM u WHERE b = 4) AS ne, \
               2 IN (SELECT b FROM u WHERE CASE WHEN b IN (SELECT a FROM t) THEN true END) AS nested";
    assert_eq!(
        rows(&ctx, sql).await,
        [
            "+------+------+--------+",
            "| e    | ne   | nested |",
            "+------+------+--------+",
            "| true | true | true   |",
            "+------+------+--------+",
        ]
    );
}

/// A top-level condition of WHERE is DataFusion's semi-join; a correlated subquery is not
/// foldable.
#[tokio::test]
async fn leaves_where_conditions_and_correlated_subqueries() {
    let ctx = context().await;
    let where_condition = plan(
        &ctx,
        "SELECT a FROM t WHERE a IN (SELECT b FROM u) AND a > 0",
    )
    .await;
    let folded = fold(&ctx, where_condition).await.expect("folds");
    assert_eq!(subqueries_left(&folded), 1);

    let correlated = plan(
        &ctx,
        "SELECT a, a IN (SELECT b FROM u WHERE u.b = t.a) FROM t",
    )
    .await;
    let folded = fold(&ctx, correlated).await.expect("folds");
    assert_eq!(subqueries_left(&folded), 1);

    // Inside an OR of a WHERE it is folded.
    let or = plan(
        &ctx,
        "SELECT a FROM t WHERE a IN (SELECT b FROM u) OR a = 1",
    )
    .await;
    let folded = fold(&ctx, or).await.expect("folds");
    assert_eq!(subqueries_left(&folded), 0);
}

#[tokio::test]
async fn more_values_than_the_limit_are_left_alone() {
    let ctx = context().await;
    let sql = format!(
        "SELECT a IN (SELECT value FROM generate_series(1, {})) FROM t",
        MAX_VALUES + 1
    );
    let folded = fold(&ctx, plan(&ctx, &sql).await).await.expect("folds");
    assert_eq!(subqueries_left(&folded), 1);
    let sql = format!(
        "SELECT a IN (SELECT value FROM generate_series(1, {})) AS i FROM t ORDER BY a",
        MAX_VALUES
    );
    assert_eq!(rows(&ctx, &sql).await[3], "| true |");
}
