use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, max, min};
use datafusion::prelude::{SessionContext, col, lit};

use super::*;
use crate::model::logs_schema;

/// A minute boundary in November 2023.
pub(crate) const BASE: i64 = 28_333_333 * 60_000_000;
pub(crate) const SEC: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Row {
    ts: i64,
    level: &'static str,
    source: &'static str,
    message: String,
}

pub(crate) fn row(ts: i64, level: &'static str, source: &'static str) -> Row {
    Row {
        ts,
        level,
        source,
        message: format!("m{}", ts % 97),
    }
}

pub(crate) fn batch(rows: &[Row]) -> RecordBatch {
    let ts = || {
        TimestampMicrosecondArray::from(rows.iter().map(|r| r.ts).collect::<Vec<_>>())
            .with_timezone("UTC")
    };
    let text = |f: &dyn Fn(&Row) -> String| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    RecordBatch::try_new(
        logs_schema(),
        vec![
            Arc::new(ts()),
            text(&|r| r.level.to_string()),
            text(&|r| r.message.clone()),
            text(&|r| r.source.to_string()),
            text(&|_| "t".to_string()),
            text(&|_| "{}".to_string()),
            Arc::new(ts()),
        ],
    )
    .unwrap()
}

fn pos(seq: u64) -> Position {
    Position::Wal { seq }
}

/// Each row of `batches` as text, sorted: order-insensitive comparison of results.
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| f.value(i).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

fn of_kind(outputs: &[CqOutput], kind: OutputKind) -> Vec<&CqOutput> {
    outputs.iter().filter(|o| o.kind == kind).collect()
}

const SEED_RULE_B: &str = "SELECT window_start, window_end, source, count(*) AS n \
     FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
     GROUP BY window_start, window_end, source HAVING count(*) > 100";

#[tokio::test]
async fn shape_a_filters_critical_rows() {
    let spec = CqSpec::new(
        "SELECT timestamp, source, message FROM logs WHERE log_level IN ('CRITICAL', 'FATAL')",
    );
    let mut cq = CqRuntime::new(spec).await.unwrap();
    assert_eq!(cq.shape(), QueryShape::PerRow);
    let rows = vec![
        row(BASE, "INFO", "api"),
        row(BASE + 1, "CRITICAL", "api"),
        row(BASE + 2, "ERROR", "db"),
        row(BASE + 3, "FATAL", "db"),
    ];
    let out = cq.process("p0", pos(1), &batch(&rows), BASE).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, OutputKind::Row);
    assert_eq!(out[0].rows.num_columns(), 3);
    let got = lines(&[out[0].rows.clone()]);
    assert_eq!(got.len(), 2);
    assert!(got[0].contains("|api|m"), "{got:?}");
    assert!(got[1].contains("|db|m"), "{got:?}");
    assert!(
        cq.process("p0", pos(2), &batch(&rows[..1]), BASE)
            .unwrap()
            .is_empty()
    );
}

/// Feeds `n` ERROR rows per source within the first minute, ten per batch, then a row a
/// minute later that moves the watermark past the window.
async fn seed_rule_b(n: usize, sources: &[&'static str]) -> (Vec<(usize, CqOutput)>, CqRuntime) {
    let mut cq = CqRuntime::new(CqSpec::new(SEED_RULE_B)).await.unwrap();
    assert_eq!(cq.emit_policy(), EmitPolicy::OnThreshold);
    let rows: Vec<Row> = (0..n)
        .flat_map(|i| {
            sources
                .iter()
                .map(move |s| row(BASE + i as i64 * 100_000, "ERROR", s))
        })
        .collect();
    let mut out = Vec::new();
    for (b, chunk) in rows.chunks(10 * sources.len()).enumerate() {
        for o in cq
            .process("p0", pos(b as u64), &batch(chunk), BASE)
            .unwrap()
        {
            out.push((b, o));
        }
    }
    let closer = batch(&[row(BASE + 66 * SEC, "INFO", "api")]);
    for o in cq.process("p0", pos(999), &closer, BASE).unwrap() {
        out.push((usize::MAX, o));
    }
    (out, cq)
}

fn count_of(o: &CqOutput, row: usize) -> i64 {
    let i = o.rows.schema().index_of("n").unwrap();
    o.rows
        .column(i)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(row)
}

#[tokio::test]
async fn seed_rule_b_fires_once_at_the_101st_row_then_closes_with_the_final_count() {
    let (out, _) = seed_rule_b(150, &["api"]).await;
    let threshold: Vec<_> = out
        .iter()
        .filter(|(_, o)| o.kind == OutputKind::Threshold)
        .collect();
    assert_eq!(threshold.len(), 1, "{out:?}");
    let (at, fired) = threshold[0];
    assert_eq!(*at, 10, "the 101st row is in the 11th batch of ten");
    assert_eq!(fired.rows.num_rows(), 1);
    assert_eq!(
        count_of(fired, 0),
        110,
        "the count as of the crossing batch"
    );
    assert_eq!(fired.window_start, vec![BASE]);
    assert_eq!(fired.window_end, vec![BASE + 60 * SEC]);
    let closed: Vec<_> = out
        .iter()
        .filter(|(_, o)| o.kind == OutputKind::WindowClose)
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(
        closed[0].0,
        usize::MAX,
        "closes when the watermark passes the window end"
    );
    assert_eq!(count_of(&closed[0].1, 0), 150);

    let (out, _) = seed_rule_b(99, &["api"]).await;
    assert!(out.is_empty(), "{out:?}");

    let (out, _) = seed_rule_b(150, &["api", "db"]).await;
    let fired: usize = out
        .iter()
        .filter(|(_, o)| o.kind == OutputKind::Threshold)
        .map(|(_, o)| o.rows.num_rows())
        .sum();
    assert_eq!(fired, 2);
    let closed: Vec<_> = out
        .iter()
        .filter(|(_, o)| o.kind == OutputKind::WindowClose)
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(lines(&[closed[0].1.rows.clone()]).len(), 2);
}

#[test]
fn monotone_having_conditions() {
    let c = || count(lit(1));
    assert!(is_monotone(&c().gt(lit(100))));
    assert!(is_monotone(&c().gt_eq(lit(100))));
    assert!(is_monotone(&lit(100).lt(c())));
    assert!(is_monotone(&max(col("x")).gt(lit(5))));
    assert!(is_monotone(&count_distinct(col("x")).gt(lit(3))));
    assert!(is_monotone(&min(col("x")).lt(lit(5))));
    assert!(is_monotone(
        &c().gt(lit(1))
            .and(max(col("x")).gt(lit(5)))
            .or(min(col("x")).lt_eq(lit(0)))
    ));
    assert!(is_monotone(
        &c().gt(lit(1)).and(col("source").eq(lit("api")))
    ));
    assert!(!is_monotone(&c().lt(lit(100))));
    assert!(!is_monotone(&max(col("x")).lt(lit(5))));
    assert!(!is_monotone(&min(col("x")).gt(lit(5))));
    assert!(!is_monotone(&avg(col("x")).gt(lit(5))));
    assert!(!is_monotone(&c().eq(lit(100))));
    assert!(!is_monotone(&c().gt(lit(1)).and(c().lt(lit(9)))));
    assert!(!is_monotone(&c().gt(max(col("x")))));
}

#[tokio::test]
async fn emit_policy_and_shapes_are_checked() {
    let avg_rule = "SELECT window_start, avg(length(message)) AS a FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
                    GROUP BY window_start HAVING avg(length(message)) > 3";
    let cq = CqRuntime::new(CqSpec::new(avg_rule)).await.unwrap();
    assert_eq!(cq.emit_policy(), EmitPolicy::OnWindowClose);
    let mut spec = CqSpec::new(avg_rule);
    spec.emit = Some(EmitPolicy::OnThreshold);
    let err = CqRuntime::new(spec).await.unwrap_err().to_string();
    assert!(err.contains("ON THRESHOLD"), "{err}");
    for (sql, want) in [
        (
            "SELECT source, count(*) FROM logs GROUP BY source",
            "need a window",
        ),
        ("SELECT * FROM logs ORDER BY timestamp", "ORDER BY"),
        (
            "SELECT source, count(*) FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY source",
            "window_start",
        ),
        (
            "SELECT * FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')",
            "needs GROUP BY",
        ),
    ] {
        let err = CqRuntime::new(CqSpec::new(sql))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{sql}: {err}");
    }
}

/// A small deterministic generator, so failures reproduce from the printed seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rows in arrival order, each up to 4 s older than the newest so far (within a 5 s
/// watermark), over several minutes, sources and levels; split into batches, each from
/// one of three partitions.
fn random_stream(rng: &mut Lcg) -> (Vec<Row>, Vec<(String, Vec<Row>)>) {
    let n = 100 + rng.below(400) as usize;
    let mut clock = BASE + rng.below(60) as i64 * SEC;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        clock += rng.below(1_500_000) as i64;
        let ts = clock - rng.below(4 * SEC as u64) as i64;
        let level = ["ERROR", "INFO", "DEBUG"][rng.below(3) as usize];
        let source = ["api", "db", "web"][rng.below(3) as usize];
        rows.push(row(ts, level, source));
    }
    let mut batches = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let len = 1 + rng.below(40) as usize;
        let end = (i + len).min(rows.len());
        batches.push((format!("p{}", rng.below(3)), rows[i..end].to_vec()));
        i = end;
    }
    (rows, batches)
}

fn equivalence_bodies() -> Vec<String> {
    let select = "SELECT window_start, window_end, source, count(*) AS n, \
                  count(*) FILTER (WHERE log_level = 'ERROR') AS errors, min(message) AS first_msg, \
                  max(timestamp) AS last, sum(length(message)) AS bytes, avg(length(message)) AS avg_len";
    let tail =
        "WHERE log_level <> 'DEBUG' GROUP BY window_start, window_end, source HAVING count(*) > 3";
    vec![
        format!("{select} FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') {tail}"),
        format!(
            "{select} FROM HOP(logs, timestamp, INTERVAL '20 seconds', INTERVAL '1 minute') {tail}"
        ),
        "SELECT window_end, upper(source) AS s, count(DISTINCT log_level) AS levels \
         FROM TUMBLE(logs, timestamp, INTERVAL '30 seconds', INTERVAL '7 seconds') \
         GROUP BY window_end, upper(source)"
            .to_string(),
        "SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, count(*) AS n, max(message) AS m \
         FROM logs WHERE log_level = 'ERROR' GROUP BY 1, 2"
            .to_string(),
        "SELECT source, date_bin(INTERVAL '45 seconds', timestamp, TIMESTAMP '2000-01-01T00:00:07Z') AS w, \
         count(*) AS n FROM logs GROUP BY source, date_bin(INTERVAL '45 seconds', timestamp, \
         TIMESTAMP '2000-01-01T00:00:07Z') HAVING count(*) >= 2"
            .to_string(),
    ]
}

async fn batch_answer(body: &str, rows: &[Row]) -> Vec<String> {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(logs_schema(), vec![vec![batch(rows)]]).unwrap();
    ctx.register_table("logs", Arc::new(table)).unwrap();
    logsphere_udfs::register_all(&ctx);
    lines(&ctx.sql(body).await.unwrap().collect().await.unwrap())
}

fn close_spec(body: &str) -> CqSpec {
    let mut spec = CqSpec::new(body);
    spec.emit = Some(EmitPolicy::OnWindowClose);
    spec.idle_timeout = Duration::from_secs(365 * 86_400);
    spec
}

#[tokio::test]
async fn streaming_matches_batch_on_random_streams() {
    for body in equivalence_bodies() {
        for seed in 0..12u64 {
            let mut rng = Lcg(seed * 7919 + 1);
            let (rows, batches) = random_stream(&mut rng);
            let mut cq = CqRuntime::new(close_spec(&body)).await.unwrap();
            let mut out = Vec::new();
            for (seq, (partition, chunk)) in batches.iter().enumerate() {
                out.extend(
                    cq.process(partition, pos(seq as u64), &batch(chunk), BASE)
                        .unwrap(),
                );
            }
            out.extend(cq.finish().unwrap());
            assert!(
                out.iter()
                    .all(|o| o.kind == OutputKind::WindowClose && !o.late)
            );
            assert_eq!(cq.metrics().late_rows_dropped, 0, "seed {seed}");
            let streamed: Vec<RecordBatch> = out.into_iter().map(|o| o.rows).collect();
            let want = batch_answer(&body, &rows).await;
            assert!(!want.is_empty());
            assert_eq!(lines(&streamed), want, "seed {seed}, body {body}");
        }
    }
}

fn late_spec(on_late: OnLate) -> CqSpec {
    let mut spec = CqSpec::new(
        "SELECT window_start, source, count(*) AS n FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
         GROUP BY window_start, source",
    );
    spec.watermark = Duration::ZERO;
    spec.allowed_lateness = Duration::from_secs(30);
    spec.on_late = on_late;
    spec
}

/// Feeds one INFO row for `api` at `BASE + secs`.
fn one(cq: &mut CqRuntime, seq: u64, secs: i64) -> Vec<CqOutput> {
    let rows = [row(BASE + secs * SEC, "INFO", "api")];
    cq.process("p0", pos(seq), &batch(&rows), BASE).unwrap()
}

#[tokio::test]
async fn late_rows_update_within_lateness_and_are_dropped_beyond_it() {
    let mut cq = CqRuntime::new(late_spec(OnLate::Update)).await.unwrap();
    for s in 0..3 {
        assert!(one(&mut cq, 1, s).is_empty());
    }
    let out = one(&mut cq, 2, 61);
    let closed = of_kind(&out, OutputKind::WindowClose);
    assert_eq!(closed.len(), 1);
    assert_eq!(count_of(closed[0], 0), 3);
    // 10 s into a window closed 1 s ago: within the 30 s lateness.
    let out = one(&mut cq, 3, 10);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, OutputKind::LateUpdate);
    assert!(out[0].late);
    assert_eq!(count_of(&out[0], 0), 4);
    assert_eq!(out[0].window_start, vec![BASE]);
    assert_eq!(cq.metrics().late_rows_updated, 1);
    // Watermark at 100 s: the first window's state is gone.
    one(&mut cq, 4, 100);
    let out = one(&mut cq, 5, 20);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(cq.metrics().late_rows_dropped, 1);
    assert_eq!(cq.metrics().late_rows_beyond_lateness, 1);

    let mut cq = CqRuntime::new(late_spec(OnLate::Drop)).await.unwrap();
    one(&mut cq, 1, 0);
    one(&mut cq, 2, 61);
    assert!(one(&mut cq, 3, 10).is_empty());
    assert_eq!(cq.metrics().late_rows_dropped, 1);
    assert_eq!(cq.metrics().late_rows_beyond_lateness, 0);
}

#[tokio::test]
async fn watermark_is_the_slowest_active_partition_with_a_wall_clock_floor() {
    let mut spec = late_spec(OnLate::Drop);
    spec.watermark = Duration::from_secs(5);
    spec.idle_timeout = Duration::from_secs(60);
    spec.max_ingest_delay = Duration::from_secs(10);
    let mut cq = CqRuntime::new(spec).await.unwrap();
    let now = BASE + 100 * SEC;
    cq.process(
        "fast",
        pos(1),
        &batch(&[row(BASE + 90 * SEC, "INFO", "a")]),
        now,
    )
    .unwrap();
    cq.process(
        "slow",
        pos(1),
        &batch(&[row(BASE + 30 * SEC, "INFO", "a")]),
        now,
    )
    .unwrap();
    // The floor: now − (5 s + 10 s).
    assert_eq!(cq.watermark(), Some(now - 15 * SEC));
    // Later, "slow" is idle and "fast" leads.
    cq.process(
        "fast",
        pos(2),
        &batch(&[row(BASE + 200 * SEC, "INFO", "a")]),
        now + 61 * SEC,
    )
    .unwrap();
    assert_eq!(cq.watermark(), Some(BASE + 195 * SEC));
    // All input stops: the wall clock alone closes windows.
    let out = cq.advance(BASE + 400 * SEC).unwrap();
    assert_eq!(cq.watermark(), Some(BASE + 385 * SEC));
    assert_eq!(
        of_kind(&out, OutputKind::WindowClose).len(),
        1,
        "the 200 s window closes"
    );
}

#[tokio::test]
async fn max_keys_caps_state_and_counts_overflow() {
    let mut spec = late_spec(OnLate::Drop);
    spec.max_keys = Some(2);
    let mut cq = CqRuntime::new(spec).await.unwrap();
    let rows = vec![
        row(BASE, "INFO", "a"),
        row(BASE, "INFO", "b"),
        row(BASE, "INFO", "c"),
        row(BASE + 1, "INFO", "c"),
    ];
    cq.process("p0", pos(1), &batch(&rows), BASE).unwrap();
    assert_eq!(cq.live_keys(), 2);
    assert_eq!(cq.metrics().key_overflow_rows, 2);
    assert_eq!(cq.metrics().rows_in, 4);
}

/// Runs `batches` through `cq`, checkpointing and restoring after batch `cut`.
async fn run(
    spec: &CqSpec,
    batches: &[(String, Vec<Row>)],
    cut: Option<usize>,
) -> Vec<(OutputKind, bool, Vec<String>)> {
    let mut cq = CqRuntime::new(spec.clone()).await.unwrap();
    let mut out = Vec::new();
    for (seq, (partition, chunk)) in batches.iter().enumerate() {
        out.extend(
            cq.process(partition, pos(seq as u64), &batch(chunk), BASE)
                .unwrap(),
        );
        if Some(seq) == cut {
            let bytes = cq.checkpoint().unwrap();
            drop(cq);
            cq = CqRuntime::restore(spec.clone(), &bytes).await.unwrap();
            assert_eq!(
                cq.positions()
                    .values()
                    .filter(|p| **p == pos(seq as u64))
                    .count(),
                1
            );
        }
    }
    out.extend(cq.finish().unwrap());
    out.into_iter()
        .map(|o| (o.kind, o.late, lines(&[o.rows])))
        .collect()
}

#[tokio::test]
async fn checkpoint_restore_continue_equals_an_uninterrupted_run() {
    let threshold = {
        let mut s = CqSpec::new(
            "SELECT window_start, source, count(*) AS n, max(timestamp) AS last, avg(length(message)) AS a, \
             count(DISTINCT log_level) AS levels FROM HOP(logs, timestamp, INTERVAL '30 seconds', INTERVAL '1 minute') \
             GROUP BY window_start, source HAVING count(*) > 5",
        );
        s.watermark = Duration::from_secs(2);
        s.allowed_lateness = Duration::from_secs(20);
        s.on_late = OnLate::Update;
        s
    };
    for spec in [close_spec(&equivalence_bodies()[0]), threshold] {
        for seed in 0..6u64 {
            let mut rng = Lcg(seed + 100);
            let (_, batches) = random_stream(&mut rng);
            let whole = run(&spec, &batches, None).await;
            let cut = rng.below(batches.len() as u64) as usize;
            assert_eq!(
                run(&spec, &batches, Some(cut)).await,
                whole,
                "seed {seed}, cut {cut}"
            );
        }
    }
}

#[tokio::test]
async fn restore_refuses_foreign_checkpoints() {
    let mut cq = CqRuntime::new(CqSpec::new(SEED_RULE_B)).await.unwrap();
    cq.process("p0", pos(1), &batch(&[row(BASE, "ERROR", "api")]), BASE)
        .unwrap();
    let bytes = cq.checkpoint().unwrap();
    let other = late_spec(OnLate::Drop);
    let err = CqRuntime::restore(other, &bytes).await.unwrap_err();
    assert!(err.to_string().contains("different query body"), "{err}");
    let err = CqRuntime::restore(CqSpec::new(SEED_RULE_B), b"junk")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a LogSphere CQ checkpoint"),
        "{err}"
    );
    let restored = CqRuntime::restore(CqSpec::new(SEED_RULE_B), &bytes)
        .await
        .unwrap();
    assert_eq!(restored.live_keys(), 1);
    assert_eq!(restored.positions().get("p0"), Some(&pos(1)));
}

#[tokio::test]
async fn engine_sessions_have_the_window_functions_and_feed_the_runtime() {
    use crate::ingest::DecodeOptions;
    use crate::{Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
    let mut body = String::new();
    for i in 0..90 {
        body.push_str(&format!(
            "{{\"ts\":\"2026-11-24T10:{:02}:{:02}Z\",\"level\":\"error\",\"message\":\"m{i}\",\"host\":\"web-{}\"}}\n",
            i / 2,
            (i * 13) % 60,
            i % 3
        ));
    }
    engine
        .ingest(bytes::Bytes::from(body), None, DecodeOptions::default())
        .await
        .unwrap();
    let cq_body = "SELECT window_start, source, count(*) AS n FROM TUMBLE(logs, timestamp, INTERVAL '10 minutes') \
                   GROUP BY window_start, source";
    let ctx = engine.session_context();
    let want = lines(&ctx.sql(cq_body).await.unwrap().collect().await.unwrap());
    assert!(!want.is_empty());
    let all = ctx
        .sql("SELECT * FROM logs")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut cq = CqRuntime::new(close_spec(cq_body)).await.unwrap();
    let mut out = Vec::new();
    for (i, b) in all.iter().enumerate() {
        out.extend(cq.process("wal", pos(i as u64), b, 0).unwrap());
    }
    out.extend(cq.finish().unwrap());
    let got: Vec<RecordBatch> = out.into_iter().map(|o| o.rows).collect();
    assert_eq!(lines(&got), want);
    engine.shutdown().await;
}

/// The `alerts` rows as (alert_id, observation_count, value).
pub(crate) fn alert_rows(queries: &CqRegistry) -> Vec<(String, i64, String)> {
    let b = queries.alerts_batch().unwrap();
    let text = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone()
    };
    let (ids, values) = (text(0), text(13));
    let obs = b
        .column(10)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .clone();
    (0..b.num_rows())
        .map(|i| {
            (
                ids.value(i).to_string(),
                obs.value(i),
                values.value(i).to_string(),
            )
        })
        .collect()
}

pub(crate) fn create_statement(sql: &str) -> logsphere_sql::CreateContinuousQuery {
    match logsphere_sql::parse_statements(sql).unwrap().remove(0) {
        logsphere_sql::Statement::CreateContinuousQuery(cq) => *cq,
        other => panic!("not a CREATE: {other:?}"),
    }
}

#[tokio::test]
async fn registry_replays_to_the_same_alerts_and_skips_seen_entries() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' ALERT (SEVERITY 'warning') \
               AS SELECT window_start, source, count(*) AS n \
               FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
               GROUP BY window_start, window_end, source HAVING count(*) > 100";
    let errors: Vec<Row> = (0..150).map(|i| row(BASE + i, "ERROR", "api")).collect();
    let closer = batch(&[row(BASE + 120 * SEC, "INFO", "api")]);
    let now = BASE + 10 * SEC;
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(
        queries.create(&create_statement(sql), now).await.unwrap(),
        Created::New
    );
    assert!(matches!(
        queries.create(&create_statement(sql), now).await,
        Err(CqError::AlreadyExists(_))
    ));
    queries.process(1, &batch(&errors), now);
    queries.process(1, &batch(&errors), now); // seen: skipped
    let fired = alert_rows(&queries);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].1, 1);
    queries.process(2, &closer, now);
    let closed = alert_rows(&queries);
    assert_eq!((closed[0].0.clone(), closed[0].1), (fired[0].0.clone(), 2));
    drop(queries);

    // "Crash" with only the CREATE's checkpoint: the replay rebuilds the same alert.
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(queries.replay_from(), Some(1));
    assert!(alert_rows(&queries).is_empty());
    queries.process(1, &batch(&errors), now);
    queries.process(2, &closer, now);
    assert_eq!(alert_rows(&queries), closed);

    // After a checkpoint, nothing before it is fed again.
    queries.checkpoint_all(now);
    drop(queries);
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(queries.replay_from(), Some(3));
    assert_eq!(alert_rows(&queries), closed);
    queries.process(1, &batch(&errors), now);
    queries.process(2, &closer, now);
    assert_eq!(alert_rows(&queries), closed);
    drop(queries);

    // A stored definition that no longer builds is listed as FAILED, not fatal.
    let defs = dir.path().join("continuous_queries.json");
    let text = std::fs::read_to_string(&defs).unwrap();
    std::fs::write(&defs, text.replace("FROM TUMBLE", "FROM NOPE")).unwrap();
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    let listed = queries.queries_batch().unwrap();
    let state = listed.column_by_name("state").unwrap();
    let state = state.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(state.value(0), "FAILED");
    assert!(queries.sql_text("burst").unwrap().contains("NOPE"));
    assert!(queries.drop_query("burst", false).unwrap());
    assert!(!queries.drop_query("burst", true).unwrap());
    assert!(matches!(
        queries.drop_query("burst", false),
        Err(CqError::NotFound(_))
    ));
}

#[tokio::test]
async fn registry_reads_checkpoints_of_the_legacy_host_framing() {
    use arrow::array::Array as _;
    let dir = tempfile::tempdir().unwrap();
    let sql = "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' ALERT (SEVERITY 'warning') \
               AS SELECT window_start, source, count(*) AS n \
               FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
               GROUP BY window_start, window_end, source HAVING count(*) > 100";
    let errors: Vec<Row> = (0..150).map(|i| row(BASE + i, "ERROR", "api")).collect();
    let now = BASE + 10 * SEC;
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    queries.create(&create_statement(sql), now).await.unwrap();
    queries.process(1, &batch(&errors), now);
    queries.checkpoint_all(now);
    let fired = alert_rows(&queries);
    assert_eq!(fired.len(), 1);
    drop(queries);

    // The file as an earlier version wrote it: the host header framing the runtime's.
    let path = super::hosting::checkpoint_path(&dir.path().join("continuous"), "burst");
    let current = std::fs::read(&path).unwrap();
    let legacy = super::checkpoint::legacy_framing(&current);
    assert!(legacy.starts_with(b"LSCQF1"));
    std::fs::write(&path, &legacy).unwrap();
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(queries.replay_from(), Some(2));
    assert_eq!(alert_rows(&queries), fired);
    let listed = queries.queries_batch().unwrap();
    let error = listed.column_by_name("error").unwrap();
    assert!(error.is_null(0), "restored, not started fresh");
    // The next checkpoint migrates it to the one format.
    queries.checkpoint_all(now);
    assert!(std::fs::read(&path).unwrap().starts_with(b"LSCQ1"));
    drop(queries);
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(alert_rows(&queries), fired);
}

/// `rows_in` of the CQ `name` in `continuous_queries`.
async fn rows_in(engine: &crate::Engine, name: &str) -> i64 {
    let batches = engine
        .session_context()
        .sql(&format!(
            "SELECT rows_in FROM continuous_queries WHERE name = '{name}'"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

async fn wait_rows_in(engine: &crate::Engine, name: &str, want: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = rows_in(engine, name).await;
        if got == want {
            return;
        }
        assert!(
            got < want && std::time::Instant::now() < deadline,
            "rows_in of {name} is {got}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn ingest_errors(engine: &crate::Engine, n: usize, tag: &str) {
    let body: String = (0..n)
        .map(|i| {
            format!("{{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"message\":\"{tag} {i}\",\"host\":\"h\"}}\n")
        })
        .collect();
    engine
        .ingest(
            bytes::Bytes::from(body),
            None,
            crate::ingest::DecodeOptions::default(),
        )
        .await
        .unwrap();
}

/// A feed of one entry falls behind at once under concurrent ingest: every row still
/// reaches the CQ exactly once, read back from the WAL (small segments, so across several).
/// A paused CQ keeps its position: RESUME feeds it what arrived while it was paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_or_resumed_cq_catches_up_from_the_wal_without_gaps() {
    use crate::{Engine, EngineConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.cq_feed_capacity = 1;
    config.wal_segment_bytes = 16 * 1024;
    let engine = Engine::open(config).await.unwrap();
    let cq = create_statement(
        "CREATE CONTINUOUS QUERY errs AS SELECT timestamp, source, message FROM logs \
         WHERE log_level = 'ERROR'",
    );
    engine
        .continuous()
        .create(&cq, super::now_us())
        .await
        .unwrap();
    let mut senders = Vec::new();
    for t in 0..8 {
        let engine = std::sync::Arc::clone(&engine);
        senders.push(tokio::spawn(async move {
            for r in 0..25 {
                ingest_errors(&engine, 10, &format!("t{t} r{r}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    wait_rows_in(&engine, "errs", 2000).await;
    eprintln!("catch-ups: {}", engine.cq_catch_ups());

    engine
        .continuous()
        .set_state("errs", super::CqState::Paused)
        .unwrap();
    ingest_errors(&engine, 50, "paused").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        rows_in(&engine, "errs").await,
        2000,
        "a paused CQ consumes nothing"
    );
    engine
        .continuous()
        .set_state("errs", super::CqState::Running)
        .unwrap();
    wait_rows_in(&engine, "errs", 2050).await;
    ingest_errors(&engine, 10, "live").await;
    wait_rows_in(&engine, "errs", 2060).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rows_in(&engine, "errs").await, 2060, "nothing twice");
    engine.shutdown().await;
}

/// Rules that filter and group the same way, over windows of other sizes and shapes, fed
/// each batch through one `SharedEval` (as the registry does): each still equals its own
/// batch answer.
#[tokio::test]
async fn rules_sharing_filters_and_keys_match_their_batch_answers() {
    let bodies = [
        "SELECT window_start, source, count(*) AS n FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
         WHERE log_level = 'ERROR' GROUP BY window_start, source",
        "SELECT window_start, source, count(*) AS n, max(message) AS m \
         FROM TUMBLE(logs, timestamp, INTERVAL '30 seconds') \
         WHERE log_level = 'ERROR' GROUP BY window_start, source",
        "SELECT window_start, source, count(*) AS n \
         FROM HOP(logs, timestamp, INTERVAL '20 seconds', INTERVAL '1 minute') \
         WHERE log_level = 'ERROR' GROUP BY window_start, source",
        "SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, upper(source) AS s, count(*) AS n \
         FROM logs WHERE log_level = 'ERROR' GROUP BY 1, 2",
        "SELECT window_start, source, count(*) AS n FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
         WHERE log_level <> 'DEBUG' GROUP BY window_start, source",
    ];
    for seed in 0..6u64 {
        let mut rng = Lcg(seed * 104_729 + 3);
        let (rows, batches) = random_stream(&mut rng);
        let mut cqs = Vec::new();
        for body in bodies {
            cqs.push((
                body,
                CqRuntime::new(close_spec(body)).await.unwrap(),
                Vec::new(),
            ));
        }
        for (seq, (partition, chunk)) in batches.iter().enumerate() {
            let input = batch(chunk);
            let shared = super::shared::SharedEval::default();
            for (_, cq, out) in &mut cqs {
                out.extend(
                    cq.process_shared(partition, pos(seq as u64), &input, BASE, Some(&shared))
                        .unwrap(),
                );
            }
        }
        for (body, mut cq, mut out) in cqs {
            out.extend(cq.finish().unwrap());
            let streamed: Vec<RecordBatch> = out.into_iter().map(|o| o.rows).collect();
            assert_eq!(
                lines(&streamed),
                batch_answer(body, &rows).await,
                "seed {seed}, body {body}"
            );
        }
    }
}

/// A periodic checkpoint written off the CQ task lands only if nothing newer was written
/// meanwhile and the query still exists: a late one neither replaces a newer checkpoint nor
/// brings back a dropped query's file.
#[tokio::test]
async fn deferred_checkpoints_never_replace_newer_ones_nor_revive_dropped_queries() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' ALERT (SEVERITY 'warning') \
               WITH (checkpoint_interval = '1ms') \
               AS SELECT window_start, source, count(*) AS n \
               FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
               GROUP BY window_start, window_end, source HAVING count(*) > 100";
    let errors: Vec<Row> = (0..150).map(|i| row(BASE + i, "ERROR", "api")).collect();
    let now = BASE + 10 * SEC;
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    queries.create(&create_statement(sql), now).await.unwrap();
    let path = super::hosting::checkpoint_path(&dir.path().join("continuous"), "burst");
    std::thread::sleep(Duration::from_millis(5));

    // Written off the task and committed: the file covers entry 1 and the hold moves.
    queries.process(1, &batch(&errors), now);
    let pending = queries.tick_deferred(now);
    assert_eq!(pending.len(), 1);
    assert!(
        queries.tick_deferred(now).is_empty(),
        "one write in flight per query"
    );
    for p in pending {
        let written = p.write_temp();
        queries.commit_checkpoint(p, written);
    }
    let first = std::fs::read(&path).unwrap();
    assert_eq!(queries.replay_from(), Some(2));

    // An older one finishing after a newer synchronous checkpoint is dropped.
    std::thread::sleep(Duration::from_millis(5));
    queries.process(2, &batch(&errors), now);
    let late = queries.tick_deferred(now);
    assert_eq!(late.len(), 1);
    queries.process(3, &batch(&errors), now);
    queries.checkpoint_all(now);
    let newest = std::fs::read(&path).unwrap();
    assert_ne!(newest, first);
    for p in late {
        let written = p.write_temp();
        queries.commit_checkpoint(p, written);
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        newest,
        "not replaced by the older one"
    );
    assert_eq!(queries.replay_from(), Some(4));

    // One finishing after DROP leaves no file behind.
    std::thread::sleep(Duration::from_millis(5));
    let orphan = queries.tick_deferred(now);
    assert_eq!(orphan.len(), 1);
    assert!(queries.drop_query("burst", false).unwrap());
    assert!(!path.exists());
    for p in orphan {
        let written = p.write_temp();
        queries.commit_checkpoint(p, written);
    }
    assert!(
        !path.exists(),
        "a dropped query's checkpoint is not revived"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("continuous"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pending"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");
}

/// Damaged CQ files do not keep the engine from starting: a checkpoint that does not decode
/// is set aside and its CQ starts fresh, saying why; a definitions file that does not parse
/// is set aside and the engine starts without CQs (new ones can be created).
#[tokio::test]
async fn damaged_cq_files_are_set_aside_and_the_registry_opens() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "CREATE CONTINUOUS QUERY burst ALERT \
               AS SELECT * FROM logs WHERE log_level = 'CRITICAL'";
    let now = BASE + 10 * SEC;
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    queries.create(&create_statement(sql), now).await.unwrap();
    queries.process(1, &batch(&[row(BASE, "CRITICAL", "api")]), now);
    queries.checkpoint_all(now);
    drop(queries);
    let set_aside = |prefix: &str| {
        std::fs::read_dir(dir.path().join("continuous"))
            .unwrap()
            .chain(std::fs::read_dir(dir.path()).unwrap())
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(prefix) && n.contains(".corrupt-")
            })
            .count()
    };

    let ckpt = super::hosting::checkpoint_path(&dir.path().join("continuous"), "burst");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    let listed = queries.queries_batch().unwrap();
    let error = listed
        .column_by_name("error")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_string();
    assert!(error.starts_with("checkpoint not restored"), "{error}");
    let ckpt_name = ckpt.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        set_aside(&ckpt_name),
        1,
        "the damaged checkpoint is kept aside"
    );
    drop(queries);

    let defs = dir.path().join("continuous_queries.json");
    std::fs::write(&defs, b"{\"queries\": [{\"name\": \"bur").unwrap();
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(queries.queries_batch().unwrap().num_rows(), 0);
    assert_eq!(set_aside("continuous_queries.json"), 1);
    queries.create(&create_statement(sql), now).await.unwrap();
    assert_eq!(queries.queries_batch().unwrap().num_rows(), 1);
}
