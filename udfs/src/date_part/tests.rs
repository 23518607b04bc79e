use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use super::*;

/// A session as LogSphere's: `date_part` replaced, `EXTRACT` planned before DataFusion does.
fn context() -> SessionContext {
    let mut builder = SessionStateBuilder::new().with_default_features();
    if let Some(planners) = builder.expr_planners() {
        planners.insert(0, Arc::new(ExtractPlanner));
    }
    let ctx = SessionContext::new_with_state(builder.build());
    ctx.register_udf(ScalarUDF::new_from_impl(DatePart::new()));
    ctx
}

/// The one value of `sql`, as text, and its type.
async fn value(ctx: &SessionContext, sql: &str) -> (String, DataType) {
    let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let batches = df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let column = batches[0].column(0);
    let text = datafusion::arrow::util::display::array_value_to_string(column, 0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (text, column.data_type().clone())
}

#[tokio::test]
async fn seconds_keep_their_fraction() {
    let ctx = context();
    let cases = [
        (
            "SELECT extract(second FROM TIMESTAMP '2026-01-01 10:00:05.25')",
            "5.25",
        ),
        (
            "SELECT date_part('second', TIMESTAMP '2026-01-01 10:00:05.25')",
            "5.25",
        ),
        (
            "SELECT date_part('seconds', TIMESTAMP '2026-01-01 10:00:05.250123')",
            "5.250123",
        ),
        // Cut to the microsecond, as PostgreSQL keeps timestamps.
        (
            "SELECT extract(second FROM TIMESTAMP '2026-01-01 10:00:05.2501239')",
            "5.250123",
        ),
        (
            "SELECT extract(second FROM TIMESTAMP '2026-01-01 10:00:00')",
            "0.0",
        ),
        (
            "SELECT extract(milliseconds FROM TIMESTAMP '2026-01-01 10:00:05.250123')",
            "5250.123",
        ),
        (
            "SELECT date_part('ms', TIMESTAMP '2026-01-01 10:00:05.25')",
            "5250.0",
        ),
        // A timestamptz in a zone with a half-hour offset: the seconds are the same.
        (
            "SELECT extract(second FROM CAST('2026-01-01T10:00:05.5+05:30' AS TIMESTAMP WITH TIME ZONE))",
            "5.5",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(
            value(&ctx, sql).await,
            (want.to_owned(), DataType::Float64),
            "{sql}"
        );
    }
}

/// Microseconds are already PostgreSQL's whole number; other fields stay DataFusion's.
#[tokio::test]
async fn other_fields_are_datafusions() {
    let ctx = context();
    let cases = [
        (
            "SELECT extract(microseconds FROM TIMESTAMP '2026-01-01 10:00:05.250123')",
            "5250123",
        ),
        (
            "SELECT extract(hour FROM TIMESTAMP '2026-01-01 10:00:05.25')",
            "10",
        ),
        (
            "SELECT date_part('minute', TIMESTAMP '2026-01-01 10:07:05')",
            "7",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(
            value(&ctx, sql).await,
            (want.to_owned(), DataType::Int32),
            "{sql}"
        );
    }
    let (epoch, ty) = value(
        &ctx,
        "SELECT extract(epoch FROM TIMESTAMP '1970-01-01 00:00:01.5')",
    )
    .await;
    assert_eq!((epoch.as_str(), ty), ("1.5", DataType::Float64));
}

#[tokio::test]
async fn a_column_keeps_its_nulls() {
    let ctx = context();
    let sql = "SELECT extract(second FROM t) AS s FROM (VALUES \
               (TIMESTAMP '2026-01-01 10:00:59.999999'), (NULL), (TIMESTAMP '2026-01-01 10:00:01.5')) AS v(t)";
    let batches = ctx
        .sql(sql)
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    let table = pretty_format_batches(&batches)
        .expect("formats")
        .to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines,
        [
            "+-----------+",
            "| s         |",
            "+-----------+",
            "| 59.999999 |",
            "|           |",
            "| 1.5       |",
            "+-----------+",
        ]
    );
}
