//! Against a real Cassandra: `LOGSPHERE_TEST_CASSANDRA` (host:port) must be set, e.g. by
//! sourcing `target/services/env` after `scripts/services up`. Each test uses its own
//! keyspace and drops it at the end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, AsArray, BinaryBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;

use super::write::{self, WriteMode};
use super::*;
use crate::model::{UTC, dead_letters_schema, logs_schema};

/// 2026-05-28T…: a start that is not on a bucket boundary, with µs digits.
const T0: i64 = 1_780_000_123_456_789;
const MINUTE: i64 = 60_000_000;

fn contact_point() -> String {
    std::env::var("LOGSPHERE_TEST_CASSANDRA").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_TEST_CASSANDRA is not set: start the test services \
             (`scripts/services up`) and `source target/services/env`"
        )
    })
}

fn config(page_size: i32) -> CassandraConfig {
    let mut c = CassandraConfig::new(vec![contact_point()]);
    c.keyspace = format!("it_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    c.ttl = Duration::from_secs(24 * 3600);
    c.shards = 4;
    c.page_size = page_size;
    c.request_timeout = Duration::from_secs(30);
    c
}

async fn drop_keyspace(store: &CassandraStore) {
    let cql = format!("DROP KEYSPACE IF EXISTS {}", store.shared.keyspace);
    store
        .shared
        .session
        .query_unpaged(cql, ())
        .await
        .expect("drop keyspace");
}

/// One log row: (timestamp µs, level, message, source).
type LogRow<'a> = (i64, &'a str, &'a str, &'a str);

fn logs_batch(rows: &[LogRow<'_>], topic: &str) -> RecordBatch {
    let mut ts = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let mut ingest = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let (mut level, mut message, mut source, mut top, mut attrs) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for (i, (t, l, m, s)) in rows.iter().enumerate() {
        ts.append_value(*t);
        level.append_value(l);
        message.append_value(m);
        source.append_value(s);
        top.append_value(topic);
        attrs.append_value(format!("{{\"i\":{i}}}"));
        ingest.append_value(t + 7);
    }
    RecordBatch::try_new(
        logs_schema(),
        vec![
            Arc::new(ts.finish()),
            Arc::new(level.finish()),
            Arc::new(message.finish()),
            Arc::new(source.finish()),
            Arc::new(top.finish()),
            Arc::new(attrs.finish()),
            Arc::new(ingest.finish()),
        ],
    )
    .expect("logs batch")
}

fn dead_batch(ingest_times: &[i64]) -> RecordBatch {
    let mut ingest = TimestampMicrosecondBuilder::new().with_timezone(UTC);
    let (mut origin, mut reason, mut raw, mut raw_text) = (
        StringBuilder::new(),
        StringBuilder::new(),
        BinaryBuilder::new(),
        StringBuilder::new(),
    );
    for (i, t) in ingest_times.iter().enumerate() {
        ingest.append_value(*t);
        origin.append_value("kafka t/0");
        reason.append_value(format!("bad record {i}"));
        raw.append_value([0xff, 0x00, i as u8]);
        raw_text.append_value(format!("\\xff\\x00{i}"));
    }
    RecordBatch::try_new(
        dead_letters_schema(),
        vec![
            Arc::new(ingest.finish()),
            Arc::new(origin.finish()),
            Arc::new(reason.finish()),
            Arc::new(raw.finish()),
            Arc::new(raw_text.finish()),
        ],
    )
    .expect("dead letters batch")
}

/// Logs then dead letters, numbered by consecutive offsets from `first`.
fn sourced(
    topic: &str,
    partition: i32,
    logs: RecordBatch,
    dead: RecordBatch,
    first: i64,
) -> SourcedBatch {
    let n = (logs.num_rows() + dead.num_rows()) as i64;
    let log_offsets: Vec<i64> = (first..).take(logs.num_rows()).collect();
    let dead_offsets: Vec<i64> = (first + logs.num_rows() as i64..first + n).collect();
    SourcedBatch {
        partition: PartitionId {
            topic: topic.into(),
            partition,
        },
        logs,
        log_offsets,
        dead_letters: dead,
        dead_offsets,
        next_offset: first + n,
    }
}

/// 40 rows 70 s apart (over 5 buckets of 10 min); every 4th has source `x`.
fn spread_rows() -> Vec<(i64, String, String, String)> {
    (0..40)
        .map(|i| {
            let source = if i % 4 == 0 { "x" } else { "web-1" };
            (
                T0 + i * 70 * 1_000_000 + i,
                if i % 2 == 0 { "error" } else { "info" }.to_string(),
                format!("m{i}"),
                source.to_string(),
            )
        })
        .collect()
}

fn spread_batch() -> SourcedBatch {
    let rows = spread_rows();
    let rows: Vec<LogRow<'_>> = rows
        .iter()
        .map(|(t, l, m, s)| (*t, l.as_str(), m.as_str(), s.as_str()))
        .collect();
    let logs = logs_batch(&rows, "app");
    let dead = dead_batch(&[T0 + 5, T0 + 20 * MINUTE + 6, T0 + 40 * MINUTE + 7]);
    sourced("app", 3, logs, dead, 1000)
}

async fn context(store: &CassandraStore) -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_table("logs_hot", store.table(TableKind::Logs))
        .expect("register logs_hot");
    ctx.register_table("dead_letters", store.table(TableKind::DeadLetters))
        .expect("register dead_letters");
    ctx
}

async fn query(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn count(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = query(ctx, sql).await;
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// The Cassandra partitions `EXPLAIN` says the scan of `sql` reads.
async fn explained_partitions(ctx: &SessionContext, sql: &str) -> (usize, String) {
    let batches = query(ctx, &format!("EXPLAIN {sql}")).await;
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string();
    let at = text
        .find("partitions=")
        .unwrap_or_else(|| panic!("no partitions= in {text}"));
    let digits: String = text[at + "partitions=".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.parse().expect("partition count"), text)
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("timestamp")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test]
async fn connect_twice_is_idempotent() {
    let c = config(100);
    let (a, b) = tokio::join!(
        CassandraStore::connect(&c, "g"),
        CassandraStore::connect(&c, "g")
    );
    let a = a.expect("first connect");
    b.expect("concurrent connect");
    let again = CassandraStore::connect(&c, "g")
        .await
        .expect("connect again");
    again.ping().await.expect("ping");
    let mut bad = c.clone();
    bad.write_consistency = "LOCAL_QUORAM".into();
    let e = CassandraStore::connect(&bad, "g")
        .await
        .expect_err("bad CL");
    assert!(e.to_string().contains("LOCAL_QUORAM"), "{e}");
    drop_keyspace(&a).await;
}

#[tokio::test]
async fn append_and_read_back() {
    let store = CassandraStore::connect(&config(5000), "g")
        .await
        .expect("connect");
    let batch = spread_batch();
    store.append(&batch).await.expect("append");
    let ctx = context(&store).await;
    assert_eq!(count(&ctx, "SELECT count(*) FROM logs_hot").await, 40);
    assert_eq!(count(&ctx, "SELECT count(*) FROM dead_letters").await, 3);

    let rows = spread_rows();
    for i in [0usize, 13, 39] {
        let sql = format!(
            "SELECT timestamp, log_level, message, source, topic, attributes, ingest_time \
             FROM logs_hot WHERE message = 'm{i}'"
        );
        let b = &query(&ctx, &sql).await[0];
        assert_eq!(b.num_rows(), 1, "{sql}");
        let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), rows[i].0, "µs timestamp of row {i}");
        assert_eq!(b.column(1).as_string::<i32>().value(0), rows[i].1);
        assert_eq!(b.column(3).as_string::<i32>().value(0), rows[i].3);
        assert_eq!(b.column(4).as_string::<i32>().value(0), "app");
        assert_eq!(
            b.column(5).as_string::<i32>().value(0),
            format!("{{\"i\":{i}}}")
        );
        let ingest = b.column(6).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ingest.value(0), rows[i].0 + 7);
        assert_eq!(b.schema().fields(), logs_schema().fields());
    }
    let b = &query(
        &ctx,
        "SELECT ingest_time, origin, reason, raw, raw_text FROM dead_letters \
         WHERE reason = 'bad record 1'",
    )
    .await[0];
    assert_eq!(b.num_rows(), 1);
    let ingest = b.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ingest.value(0), T0 + 20 * MINUTE + 6);
    assert_eq!(b.column(3).as_binary::<i32>().value(0), &[0xff, 0x00, 1]);

    store.append(&batch).await.expect("append again");
    assert_eq!(count(&ctx, "SELECT count(*) FROM logs_hot").await, 40);
    assert_eq!(count(&ctx, "SELECT count(*) FROM dead_letters").await, 3);
    assert_eq!(store.metrics().rows_written.load(Ordering::Relaxed), 80);
    assert_eq!(
        store.metrics().dead_letters_written.load(Ordering::Relaxed),
        6
    );
    drop_keyspace(&store).await;
}

#[tokio::test]
async fn filtered_query() {
    let store = CassandraStore::connect(&config(5000), "g")
        .await
        .expect("connect");
    let batch = spread_batch();
    store.append(&batch).await.expect("append");
    // A second partition, so shards differ between Kafka partitions.
    let other = logs_batch(&[(T0 + MINUTE, "warn", "other", "x")], "app");
    let other = sourced("app", 4, other, dead_batch(&[]), 0);
    store.append(&other).await.expect("append other");
    let ctx = context(&store).await;
    let rows = spread_rows();

    let (lo, hi) = (rows[10].0, rows[20].0);
    let sql = format!(
        "SELECT count(*) FROM logs_hot WHERE timestamp >= '{}' AND timestamp < '{}'",
        rfc3339(lo),
        rfc3339(hi)
    );
    assert_eq!(count(&ctx, &sql).await, 10, "{sql}");
    let between = format!(
        "SELECT count(*) FROM logs_hot WHERE timestamp BETWEEN '{}' AND '{}'",
        rfc3339(lo),
        rfc3339(hi)
    );
    assert_eq!(count(&ctx, &between).await, 11, "{between}");
    let exact = format!(
        "SELECT count(*) FROM logs_hot WHERE timestamp = '{}'",
        rfc3339(rows[7].0)
    );
    assert_eq!(count(&ctx, &exact).await, 1, "{exact}");

    let (filtered, plan) = explained_partitions(&ctx, &sql).await;
    let (all, _) = explained_partitions(&ctx, "SELECT count(*) FROM logs_hot").await;
    assert!(filtered < all, "{filtered} !< {all}:\n{plan}");
    assert_eq!(all, 6 * 4, "6 buckets (T0..T0+46 min) × 4 shards");
    let cast = format!(
        "SELECT count(*) FROM logs_hot WHERE timestamp > CAST('{}' AS TIMESTAMP)",
        rfc3339(hi)
    );
    assert_eq!(count(&ctx, &cast).await, 19, "{cast}");
    assert!(explained_partitions(&ctx, &cast).await.0 < all);

    let expected = rows.iter().filter(|r| r.3 == "x").count() as i64 + 1;
    let by_source = "SELECT count(*) FROM logs_hot WHERE source = 'x'";
    assert_eq!(count(&ctx, by_source).await, expected);
    let (_, plan) = explained_partitions(&ctx, by_source).await;
    assert!(plan.contains("source = ? ALLOW FILTERING"), "{plan}");
    let by_topic = "SELECT count(*) FROM logs_hot WHERE topic = 'app' AND log_level = 'warn'";
    assert_eq!(count(&ctx, by_topic).await, 1);
    let (_, plan) = explained_partitions(&ctx, by_topic).await;
    assert!(plan.contains("topic = ?"), "{plan}");
    let dead = format!(
        "SELECT count(*) FROM dead_letters WHERE ingest_time >= '{}'",
        rfc3339(T0 + 20 * MINUTE)
    );
    assert_eq!(count(&ctx, &dead).await, 2, "{dead}");
    let (dead_partitions, plan) = explained_partitions(&ctx, &dead).await;
    assert_eq!(dead_partitions, 2 * 4, "{plan}");
    let both = format!(
        "SELECT message FROM logs_hot WHERE source = 'x' AND log_level = 'error' \
         AND timestamp >= '{}' ORDER BY message",
        rfc3339(lo)
    );
    let b = &query(&ctx, &both).await;
    let messages: Vec<String> = b
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let want: Vec<String> = rows
        .iter()
        .filter(|r| r.3 == "x" && r.1 == "error" && r.0 >= lo)
        .map(|r| r.2.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(messages, want);
    drop_keyspace(&store).await;
}

#[tokio::test]
async fn progress_is_fenced() {
    let c = config(100);
    let a = CassandraStore::connect(&c, "grp").await.expect("connect a");
    let b = CassandraStore::connect(&c, "grp").await.expect("connect b");
    let p = PartitionId {
        topic: "app".into(),
        partition: 2,
    };
    let claim_a = a.claim(&p, "node-a").await.expect("a claims");
    assert_eq!(
        claim_a,
        PartitionClaim {
            epoch: 1,
            next_offset: None
        }
    );
    assert!(a.advance(&p, claim_a.epoch, 10).await.expect("a advances"));
    let claim_b = b.claim(&p, "node-b").await.expect("b claims");
    assert_eq!(
        claim_b,
        PartitionClaim {
            epoch: 2,
            next_offset: Some(10)
        }
    );
    assert!(!a.advance(&p, claim_a.epoch, 20).await.expect("a fenced"));
    assert!(a.metrics().lwt_conflicts.load(Ordering::Relaxed) >= 1);
    assert!(b.advance(&p, claim_b.epoch, 25).await.expect("b advances"));
    let listed = a.list().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].partition, p);
    assert_eq!(listed[0].owner, "node-b");
    assert_eq!(listed[0].epoch, 2);
    assert_eq!(listed[0].next_offset, 25);
    assert!(listed[0].updated_us > 0);
    let other_group = CassandraStore::connect(&c, "other").await.expect("connect");
    assert!(other_group.list().await.expect("list other").is_empty());
    drop_keyspace(&a).await;
}

#[tokio::test]
async fn racing_claims_both_win_in_turn() {
    let c = config(100);
    let a = CassandraStore::connect(&c, "grp").await.expect("connect a");
    let b = CassandraStore::connect(&c, "grp").await.expect("connect b");
    let p = PartitionId {
        topic: "race".into(),
        partition: 0,
    };
    let (ca, cb) = tokio::join!(a.claim(&p, "node-a"), b.claim(&p, "node-b"));
    let mut epochs = [ca.expect("a claims").epoch, cb.expect("b claims").epoch];
    epochs.sort();
    assert_eq!(epochs, [1, 2]);
    let listed = a.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].epoch, 2);
    assert_eq!(listed[0].next_offset, -1, "never advanced");
    drop_keyspace(&a).await;
}

#[tokio::test]
async fn reads_every_page() {
    let store = CassandraStore::connect(&config(7), "g")
        .await
        .expect("connect");
    let messages: Vec<String> = (0..250).map(|i| format!("p{i}")).collect();
    let rows: Vec<LogRow<'_>> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (T0 + i as i64, "info", m.as_str(), "s"))
        .collect();
    let batch = sourced("paged", 0, logs_batch(&rows, "paged"), dead_batch(&[]), 0);
    store.append(&batch).await.expect("append");
    let ctx = context(&store).await;
    assert_eq!(count(&ctx, "SELECT count(*) FROM logs_hot").await, 250);
    assert_eq!(
        count(&ctx, "SELECT count(DISTINCT message) FROM logs_hot").await,
        250
    );
    let (partitions, plan) = explained_partitions(&ctx, "SELECT * FROM logs_hot").await;
    assert_eq!(partitions, 4, "one bucket × 4 shards:\n{plan}");
    let read = store.metrics().rows_read.load(Ordering::Relaxed);
    assert!(read >= 500);
    let limited = query(&ctx, "SELECT message FROM logs_hot LIMIT 5").await;
    assert_eq!(limited.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
    let read_for_limit = store.metrics().rows_read.load(Ordering::Relaxed) - read;
    assert!(
        read_for_limit <= 4 * 5,
        "the limit stops each scan partition: {read_for_limit}"
    );
    drop_keyspace(&store).await;
}

/// Not an assertion of speed: prints single-row vs batched write rates for `write.rs`.
#[tokio::test]
async fn write_throughput() {
    let store = CassandraStore::connect(&config(5000), "g")
        .await
        .expect("connect");
    let n = 5000;
    let messages: Vec<String> = (0..n)
        .map(|i| format!("request {i} served in {} ms {}", i % 97, "x".repeat(120)))
        .collect();
    let rows: Vec<LogRow<'_>> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (T0 + i as i64 * 5_000, "info", m.as_str(), "web-1"))
        .collect();
    for (mode, partition) in [(WriteMode::Single, 0), (WriteMode::Batched, 1)] {
        let batch = sourced(
            "bench",
            partition,
            logs_batch(&rows, "bench"),
            dead_batch(&[]),
            0,
        );
        let start = Instant::now();
        write::append_with(&store.shared, &batch, mode)
            .await
            .expect("append");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{mode:?}: {n} rows in {secs:.2} s = {:.0} rows/s",
            n as f64 / secs
        );
    }
    let ctx = context(&store).await;
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM logs_hot").await,
        2 * n as i64
    );
    drop_keyspace(&store).await;
}

#[test]
fn time_range_reads_casts_of_string_literals() {
    use arrow::datatypes::{DataType, TimeUnit};
    use datafusion::prelude::{cast, col, lit};

    use crate::query::tables::TimeRange;

    let text = rfc3339(T0);
    let to_ns = DataType::Timestamp(TimeUnit::Nanosecond, None);
    let e = col("timestamp")
        .gt_eq(cast(lit(text.as_str()), to_ns))
        .and(
            col("timestamp").lt(lit(datafusion::common::ScalarValue::TimestampSecond(
                Some(T0 / 1_000_000 + 60),
                None,
            ))),
        );
    let r = TimeRange::from_filters(&[e], "timestamp");
    assert_eq!((r.lo, r.hi), (T0, (T0 / 1_000_000 + 60) * 1_000_000));
}

/// Rows of `kind` a scan keeps under `keep` (no time filter: every bucket).
async fn kept(store: &CassandraStore, kind: TableKind, keep: Keep) -> usize {
    use datafusion::physical_plan::ExecutionPlan;
    use futures::TryStreamExt;
    let plan = store
        .cassandra_table(kind)
        .plan(None, &[], None, keep, 1)
        .await
        .expect("plan");
    let batches: Vec<RecordBatch> = plan
        .execute(0, Arc::new(datafusion::execution::TaskContext::default()))
        .expect("execute")
        .try_collect()
        .await
        .expect("scan");
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn cut(horizon_us: i64, offset: i64) -> Arc<crate::catalog::TierCut> {
    let mut c = crate::catalog::TierCut {
        horizon_us,
        ..Default::default()
    };
    c.offsets.entry("app".into()).or_default().insert(3, offset);
    Arc::new(c)
}

/// A cut covers a row when its time is before the horizon *and* its offset before the
/// partition's: scans keep the rest, and a round moves exactly the difference of two cuts.
#[tokio::test]
async fn cuts_split_rows_by_time_and_offset() {
    let store = CassandraStore::connect(&config(7), "g")
        .await
        .expect("connect");
    // 40 rows, row i at T0 + 70 s × i with offset 1000 + i; dead letters 1040..=1042.
    store.append(&spread_batch()).await.expect("append");
    let first = cut(T0 + 20 * MINUTE, 1020); // covers rows 0..=17 (time) ∩ 0..20 (offset)
    let second = cut(T0 + 60 * MINUTE, 1041); // covers all 40 rows and dead letter 1040
    let logs = TableKind::Logs;
    assert_eq!(kept(&store, logs, Keep::All).await, 40);
    assert_eq!(kept(&store, logs, Keep::Untiered(None)).await, 40);
    assert_eq!(
        kept(&store, logs, Keep::Untiered(Some(Arc::clone(&first)))).await,
        22
    );
    let moving = |from: Option<&Arc<crate::catalog::TierCut>>, to: &Arc<_>| Keep::Moving {
        from: from.cloned(),
        to: Arc::clone(to),
    };
    assert_eq!(kept(&store, logs, moving(None, &first)).await, 18);
    assert_eq!(kept(&store, logs, moving(Some(&first), &second)).await, 22);
    assert_eq!(
        kept(&store, logs, Keep::Untiered(Some(Arc::clone(&second)))).await,
        0
    );
    // A partition the cut does not name is wholly hot.
    let other = Arc::new(crate::catalog::TierCut {
        horizon_us: i64::MAX,
        ..Default::default()
    });
    assert_eq!(kept(&store, logs, Keep::Untiered(Some(other))).await, 40);
    let dead = TableKind::DeadLetters;
    assert_eq!(kept(&store, dead, moving(None, &second)).await, 1);
    assert_eq!(
        kept(&store, dead, Keep::Untiered(Some(Arc::clone(&second)))).await,
        2
    );
    drop_keyspace(&store).await;
}

/// The manifest changes only by compare-and-set on its version, and the tiering lease is
/// held by one node at a time, renewable by its holder.
#[tokio::test]
async fn manifest_and_lease_are_lightweight_transactions() {
    let store = CassandraStore::connect(&config(100), "g")
        .await
        .expect("connect");
    let empty = store.load_manifest().await.expect("load");
    assert_eq!(empty.version, 0);
    let mut first = crate::catalog::Manifest {
        version: 1,
        cut: Some((*cut(T0, 5)).clone()),
        ..Default::default()
    };
    first.logs.push(crate::catalog::ColdFile {
        path: "logs/date=2026-05-28/hour=20/a.parquet".into(),
        min_ts: T0,
        max_ts: T0,
        rows: 1,
        bytes: 10,
        columns: Vec::new(),
    });
    assert!(store.commit_manifest(0, &first).await.expect("commit"));
    let mut rival = first.clone();
    rival.logs.clear();
    assert!(
        !store.commit_manifest(0, &rival).await.expect("commit"),
        "a second first commit loses"
    );
    assert_eq!(store.load_manifest().await.expect("load"), first);
    let mut second = first.clone();
    second.version = 2;
    assert!(store.commit_manifest(1, &second).await.expect("commit"));
    assert!(
        !store.commit_manifest(1, &rival).await.expect("commit"),
        "a commit on a stale version loses"
    );
    assert_eq!(store.load_manifest().await.expect("load").version, 2);
    assert_eq!(
        store.read_manifest().await.expect("read").version,
        2,
        "the plain read sees the committed manifest too"
    );

    assert_eq!(
        store.tiering_lease("a", 30).await.expect("lease"),
        Lease::Mine
    );
    assert_eq!(
        store.tiering_lease("b", 30).await.expect("lease"),
        Lease::Held("a".into())
    );
    assert_eq!(
        store.tiering_lease("a", 30).await.expect("renew"),
        Lease::Mine
    );
    store.release_tiering_lease("b").await.expect("release");
    assert_eq!(
        store.tiering_lease("b", 30).await.expect("lease"),
        Lease::Held("a".into()),
        "only the holder lets go"
    );
    store.release_tiering_lease("a").await.expect("release");
    assert_eq!(
        store.tiering_lease("b", 30).await.expect("lease"),
        Lease::Mine
    );
    drop_keyspace(&store).await;
}

/// `ingest_keys`: one claimant per key, its answer replayed to everyone after it, a key
/// released only by its holder, and an answer recorded even after the claim expired.
#[tokio::test]
async fn ingest_keys_are_claimed_answered_and_released() {
    let store = CassandraStore::connect(&config(100), "g")
        .await
        .expect("connect");
    let lease = Duration::from_secs(30);
    let week = Duration::from_secs(7 * 24 * 3600);
    let answer = r#"{"accepted":3,"rejected":0}"#;
    let claim = |key: &'static str, token: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .claim_ingest_key(key, token, lease)
                .await
                .expect("claim")
        }
    };
    assert_eq!(claim("k1", "t1").await, KeyClaim::Mine);
    assert_eq!(claim("k1", "t2").await, KeyClaim::Held);
    assert_eq!(
        claim("k1", "t1").await,
        KeyClaim::Mine,
        "a claim that applied although its answer was lost is still ours"
    );
    assert_eq!(
        store
            .finish_ingest_key("k1", "t1", answer, week)
            .await
            .expect("finish"),
        KeyFinish::Recorded
    );
    assert_eq!(claim("k1", "t3").await, KeyClaim::Done(answer.into()));

    // Only the holder releases; then another request may claim.
    assert_eq!(claim("k2", "t1").await, KeyClaim::Mine);
    store.release_ingest_key("k2", "t2").await.expect("release");
    assert_eq!(claim("k2", "t2").await, KeyClaim::Held);
    store.release_ingest_key("k2", "t1").await.expect("release");
    assert_eq!(claim("k2", "t2").await, KeyClaim::Mine);
    assert_eq!(
        store
            .finish_ingest_key("k2", "t1", answer, week)
            .await
            .expect("finish"),
        KeyFinish::LeaseLost("t2".into()),
        "a holder whose lease went to another request learns who has it"
    );

    // A claim that expired before its answer was recorded: the answer is recorded anew.
    assert_eq!(
        store
            .finish_ingest_key("k3", "t1", answer, week)
            .await
            .expect("finish"),
        KeyFinish::Recorded
    );
    assert_eq!(claim("k3", "t2").await, KeyClaim::Done(answer.into()));
    drop_keyspace(&store).await;
}
