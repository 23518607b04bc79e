use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::register_window_functions;

const MIN: i64 = 60_000_000;

/// `logs(timestamp, source)` with rows at the given (µs, source) pairs.
fn ctx_with(rows: &[(i64, &str)]) -> Result<SessionContext> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("source", DataType::Utf8, false),
    ]));
    let ts = TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .with_timezone("UTC");
    let src = StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ts), Arc::new(src)])?;
    let ctx = SessionContext::new();
    ctx.register_table(
        "logs",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
    )?;
    register_window_functions(&ctx);
    Ok(ctx)
}

async fn run(ctx: &SessionContext, sql: &str) -> Result<String> {
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(pretty_format_batches(&batches)?.to_string())
}

fn sample() -> Vec<(i64, &'static str)> {
    vec![
        (0, "api"),
        (30 * 1_000_000, "api"),
        (MIN - 1, "db"),
        (MIN, "api"),
        (MIN + 5, "db"),
        (2 * MIN + 59 * 1_000_000, "api"),
    ]
}

#[tokio::test]
async fn tumble_counts_per_window_and_source() -> Result<()> {
    let ctx = ctx_with(&sample())?;
    let text = run(
        &ctx,
        "SELECT window_start, window_end, source, count(*) AS n \
         FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY 1, 2, 3 ORDER BY 1, 3",
    )
    .await?;
    let expected = "\
+----------------------+----------------------+--------+---+
| window_start         | window_end           | source | n |
+----------------------+----------------------+--------+---+
| 1970-01-01T00:00:00Z | 1970-01-01T00:01:00Z | api    | 2 |
| 1970-01-01T00:00:00Z | 1970-01-01T00:01:00Z | db     | 1 |
| 1970-01-01T00:01:00Z | 1970-01-01T00:02:00Z | api    | 1 |
| 1970-01-01T00:01:00Z | 1970-01-01T00:02:00Z | db     | 1 |
| 1970-01-01T00:02:00Z | 1970-01-01T00:03:00Z | api    | 1 |
+----------------------+----------------------+--------+---+";
    assert_eq!(text, expected);
    // Lower-case name, an offset, and the original columns still selectable.
    let text = run(
        &ctx,
        "SELECT window_start, count(*) AS n, max(timestamp) AS last \
         FROM tumble(logs, timestamp, INTERVAL '2 minutes', INTERVAL '1 minute') GROUP BY 1 ORDER BY 1",
    )
    .await?;
    assert!(
        text.contains("| 1969-12-31T23:59:00Z | 3 | 1970-01-01T00:00:59.999999Z |"),
        "{text}"
    );
    assert!(
        text.contains("| 1970-01-01T00:01:00Z | 3 | 1970-01-01T00:02:59Z        |"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn hop_puts_each_row_in_every_window_containing_it() -> Result<()> {
    let ctx = ctx_with(&sample())?;
    // 2-minute windows sliding by 1 minute: a row at minute m is in [m-1, m+1) and [m, m+2).
    let text = run(
        &ctx,
        "SELECT window_start, window_end, count(*) AS n \
         FROM HOP(logs, timestamp, INTERVAL '1 minute', INTERVAL '2 minutes') GROUP BY 1, 2 ORDER BY 1",
    )
    .await?;
    let expected = "\
+----------------------+----------------------+---+
| window_start         | window_end           | n |
+----------------------+----------------------+---+
| 1969-12-31T23:59:00Z | 1970-01-01T00:01:00Z | 3 |
| 1970-01-01T00:00:00Z | 1970-01-01T00:02:00Z | 5 |
| 1970-01-01T00:01:00Z | 1970-01-01T00:03:00Z | 3 |
| 1970-01-01T00:02:00Z | 1970-01-01T00:04:00Z | 1 |
+----------------------+----------------------+---+";
    assert_eq!(text, expected);
    let text = run(&ctx, "SELECT count(*) AS n FROM hop(logs, timestamp, INTERVAL '20 seconds', INTERVAL '1 minute')").await?;
    assert!(text.contains("| 18 |"), "{text}");
    Ok(())
}

#[tokio::test]
async fn hand_computed_counts_over_many_rows() -> Result<()> {
    // 1000 rows, one every 7 s, two sources alternating.
    let rows: Vec<(i64, &str)> = (0..1000)
        .map(|i| (i * 7_000_000, if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    let ctx = ctx_with(&rows)?;
    let batches = ctx
        .sql("SELECT window_start, source, count(*) AS n FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY 1, 2")
        .await?
        .collect()
        .await?;
    let mut got = std::collections::BTreeMap::new();
    for b in &batches {
        let start = b
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap_or_else(|| panic!("{:?}", b.schema()));
        let src = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        let n = b
            .column(2)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            got.insert((start.value(i), src.value(i).to_string()), n.value(i));
        }
    }
    let mut want = std::collections::BTreeMap::new();
    for (t, s) in &rows {
        *want.entry((t - t % MIN, s.to_string())).or_insert(0i64) += 1;
    }
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test]
async fn wrong_arguments_are_explained() -> Result<()> {
    let ctx = ctx_with(&sample())?;
    let cases = [
        (
            "SELECT * FROM TUMBLE(nope, timestamp, INTERVAL '1 minute')",
            "no table named 'nope'",
        ),
        (
            "SELECT * FROM TUMBLE(logs, source, INTERVAL '1 minute')",
            "not a timestamp",
        ),
        (
            "SELECT * FROM TUMBLE(logs, ts, INTERVAL '1 minute')",
            "has no column 'ts'",
        ),
        (
            "SELECT * FROM TUMBLE(logs, timestamp, INTERVAL '1 month')",
            "months",
        ),
        (
            "SELECT * FROM TUMBLE(logs, timestamp, INTERVAL '0 seconds')",
            "must be positive",
        ),
        (
            "SELECT * FROM TUMBLE(logs, timestamp, INTERVAL '-1 minute')",
            "must be positive",
        ),
        ("SELECT * FROM TUMBLE(logs, timestamp, 60)", "INTERVAL"),
        (
            "SELECT * FROM TUMBLE(logs, timestamp)",
            "takes 3 or 4 arguments",
        ),
        (
            "SELECT * FROM HOP(logs, timestamp, INTERVAL '7 seconds', INTERVAL '1 minute')",
            "must divide",
        ),
        (
            "SELECT * FROM HOP(logs, timestamp, INTERVAL '1 minute')",
            "takes 4 or 5 arguments",
        ),
    ];
    for (sql, want) in cases {
        let err = match ctx.sql(sql).await {
            Ok(df) => df.collect().await.map(|_| ()).unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().contains(want), "{sql}: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn resolver_does_not_keep_the_session_alive() {
    let ctx = ctx_with(&sample()).unwrap();
    let weak = ctx.state_weak_ref();
    drop(ctx);
    assert!(weak.upgrade().is_none());
}
