//! [`HotStore::append`](crate::hot::HotStore::append): rows keyed by their Kafka identity.
//!
//! A row's primary key is (bucket, shard, time, topic, partition, offset), so a redelivered
//! batch rewrites the same rows. The key's topic is the Kafka topic of the batch (the
//! decoder sets each row's `topic` column to it). The bucket is registered in `buckets` before any of its
//! rows is written, so a scan that enumerates buckets never misses a written row.
//!
//! Rows of one Cassandra partition go out as unlogged batches of at most
//! [`BATCH_BYTES`]. Measured against the test Cassandra 5 (one node on 2 cores shared
//! with two builds, 5,000 rows of ~190 bytes in one partition, 256 in flight, debug build):
//! single-row concurrent inserts 3,400–4,500 rows/s, per-partition batches 24,000–59,000
//! rows/s over repeated runs
//! (see `tests::write_throughput`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, AsArray, BinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::TimestampMicrosecondType;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{CassandraMetrics, Shared, err, prepare};
use crate::EngineError;
use crate::source::SourcedBatch;

/// Data bytes per unlogged batch, at most: Cassandra fails batches over 50 KiB by default.
const BATCH_BYTES: usize = 40 * 1024;

/// How often a bucket this process keeps writing is registered again, so its marker
/// outlives (by this much) every row written to it.
const REGISTER_REFRESH: Duration = Duration::from_secs(3600);

/// Values of one `logs` row, in the order of the insert's bind markers.
type LogValues<'a> = (
    i64,
    i16,
    i64,
    &'a str,
    i32,
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
);

/// Values of one `dead_letters` row.
type DeadValues<'a> = (
    i64,
    i16,
    i64,
    &'a str,
    i32,
    i64,
    &'a str,
    &'a str,
    &'a [u8],
    &'a str,
);

/// How rows are sent; batches by partition unless measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteMode {
    /// One unlogged batch per Cassandra partition and [`BATCH_BYTES`].
    Batched,
    /// One insert per row, all concurrent.
    #[cfg_attr(not(test), allow(dead_code))]
    Single,
}

/// The prepared writes, and which buckets this process has registered.
pub(super) struct WriteStatements {
    insert_log: PreparedStatement,
    insert_dead: PreparedStatement,
    register_bucket: PreparedStatement,
    consistency: Consistency,
    /// TTL of a bucket marker, in seconds: the rows' TTL plus [`REGISTER_REFRESH`].
    marker_ttl: i32,
    registered: Mutex<HashMap<(&'static str, i64), Instant>>,
}

impl WriteStatements {
    /// Prepares the inserts at `consistency`.
    pub(super) async fn prepare(
        session: &Session,
        ks: &str,
        consistency: Consistency,
        ttl: Duration,
    ) -> Result<Self, EngineError> {
        let insert_log = format!(
            "INSERT INTO {ks}.logs (bucket, shard, ts, topic, kpart, koffset, source, \
             log_level, message, attributes, ingest_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let insert_dead = format!(
            "INSERT INTO {ks}.dead_letters (bucket, shard, ingest_time, topic, kpart, koffset, \
             origin, reason, raw, raw_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        let register = format!("INSERT INTO {ks}.buckets (kind, bucket) VALUES (?, ?) USING TTL ?");
        let marker_ttl = i32::try_from(ttl.as_secs() + REGISTER_REFRESH.as_secs())
            .map_err(|_| err("cassandra.ttl", format!("{ttl:?} is too long")))?;
        let mut statements = Vec::new();
        for cql in [insert_log, insert_dead, register] {
            let mut p = prepare(session, &cql).await?;
            p.set_consistency(consistency);
            p.set_is_idempotent(true);
            statements.push(p);
        }
        let [insert_log, insert_dead, register_bucket] =
            <[PreparedStatement; 3]>::try_from(statements)
                .map_err(|_| err("preparing writes", "statement count"))?;
        Ok(Self {
            insert_log,
            insert_dead,
            register_bucket,
            consistency,
            marker_ttl,
            registered: Mutex::new(HashMap::new()),
        })
    }
}

/// Writes every row of `batch`; Ok only when all are written at the write consistency.
pub(super) async fn append(shared: &Shared, batch: &SourcedBatch) -> Result<(), EngineError> {
    append_with(shared, batch, WriteMode::Batched).await
}

/// [`append`] with an explicit [`WriteMode`].
pub(super) async fn append_with(
    shared: &Shared,
    batch: &SourcedBatch,
    mode: WriteMode,
) -> Result<(), EngineError> {
    let shard = shared.layout.shard(&batch.partition);
    let logs = log_values(shared, batch, shard)?;
    let dead = dead_values(shared, batch, shard)?;
    register(shared, "logs", logs.iter().map(|r| r.1.0)).await?;
    register(shared, "dead_letters", dead.iter().map(|r| r.1.0)).await?;
    let w = &shared.writes;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for rows in chunks(logs, mode) {
        jobs.push(Job::Logs(rows));
    }
    for rows in chunks(dead, mode) {
        jobs.push(Job::Dead(rows));
    }
    // Futures built up front: a `map` closure over `Job<'_>` trips the compiler's
    // higher-ranked lifetime check inside the `Send` future of `append`.
    let writes: Vec<_> = jobs
        .into_iter()
        .map(|job| run(shared, w, job, &batch.partition))
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(shared.max_in_flight)
        .try_collect::<Vec<()>>()
        .await?;
    CassandraMetrics::add(&shared.metrics.rows_written, batch.logs.num_rows());
    CassandraMetrics::add(
        &shared.metrics.dead_letters_written,
        batch.dead_letters.num_rows(),
    );
    Ok(())
}

/// Rows going out in one statement: one Cassandra partition, under [`BATCH_BYTES`].
enum Job<'a> {
    Logs(Vec<LogValues<'a>>),
    Dead(Vec<DeadValues<'a>>),
}

async fn run(
    shared: &Shared,
    w: &WriteStatements,
    job: Job<'_>,
    partition: &crate::source::PartitionId,
) -> Result<(), EngineError> {
    let _permit = shared
        .in_flight
        .acquire()
        .await
        .map_err(|e| err("append", e))?;
    let result = match &job {
        Job::Logs(rows) => send(&shared.session, &w.insert_log, w.consistency, rows).await,
        Job::Dead(rows) => send(&shared.session, &w.insert_dead, w.consistency, rows).await,
    };
    result.map_err(|reason| err(format!("writing rows of {partition}"), reason))
}

/// One insert for one row, an unlogged batch for several.
async fn send<R: SerializeRow>(
    session: &Session,
    insert: &PreparedStatement,
    consistency: Consistency,
    rows: &[R],
) -> Result<(), String> {
    match rows {
        [] => Ok(()),
        [row] => session
            .execute_unpaged(insert, row)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        rows => {
            let mut b = Batch::new(BatchType::Unlogged);
            for _ in rows {
                b.append_statement(insert.clone());
            }
            b.set_consistency(consistency);
            b.set_is_idempotent(true);
            session
                .batch(&b, rows)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

/// Groups `(bytes, values)` rows by bucket (their shard is the batch's) and splits each
/// group at [`BATCH_BYTES`]; in single mode every row is its own chunk.
fn chunks<V: BucketOf>(rows: Vec<(usize, V)>, mode: WriteMode) -> Vec<Vec<V>> {
    if mode == WriteMode::Single {
        return rows.into_iter().map(|(_, v)| vec![v]).collect();
    }
    let mut by_bucket: BTreeMap<i64, Vec<(usize, V)>> = BTreeMap::new();
    for row in rows {
        by_bucket.entry(row.1.bucket()).or_default().push(row);
    }
    let mut out = Vec::new();
    for rows in by_bucket.into_values() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for (size, v) in rows {
            if !chunk.is_empty() && bytes + size > BATCH_BYTES {
                out.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push(v);
        }
        if !chunk.is_empty() {
            out.push(chunk);
        }
    }
    out
}

/// The bucket a row's values put it in (their first value).
trait BucketOf {
    fn bucket(&self) -> i64;
}

impl BucketOf for LogValues<'_> {
    fn bucket(&self) -> i64 {
        self.0
    }
}

impl BucketOf for DeadValues<'_> {
    fn bucket(&self) -> i64 {
        self.0
    }
}

/// Fixed bytes of a row besides its strings: keys, numbers and per-value framing.
const ROW_OVERHEAD: usize = 80;

fn log_values<'a>(
    shared: &Shared,
    batch: &'a SourcedBatch,
    shard: i16,
) -> Result<Vec<(usize, LogValues<'a>)>, EngineError> {
    let b = &batch.logs;
    check_offsets(batch, "logs", b.num_rows(), batch.log_offsets.len())?;
    let ts = micros(b, "timestamp")?;
    let level = strings(b, "log_level")?;
    let message = strings(b, "message")?;
    let source = strings(b, "source")?;
    let attributes = strings(b, "attributes")?;
    let ingest = micros(b, "ingest_time")?;
    let topic = batch.partition.topic.as_str();
    let kpart = batch.partition.partition;
    Ok((0..b.num_rows())
        .map(|i| {
            let t = ts.value(i);
            let v = (
                shared.layout.bucket(t),
                shard,
                t,
                topic,
                kpart,
                batch.log_offsets[i],
                source.value(i),
                level.value(i),
                message.value(i),
                attributes.value(i),
                ingest.value(i),
            );
            let size = ROW_OVERHEAD + topic.len() + v.6.len() + v.7.len() + v.8.len() + v.9.len();
            (size, v)
        })
        .collect())
}

fn dead_values<'a>(
    shared: &Shared,
    batch: &'a SourcedBatch,
    shard: i16,
) -> Result<Vec<(usize, DeadValues<'a>)>, EngineError> {
    let b = &batch.dead_letters;
    check_offsets(
        batch,
        "dead_letters",
        b.num_rows(),
        batch.dead_offsets.len(),
    )?;
    let ingest = micros(b, "ingest_time")?;
    let origin = strings(b, "origin")?;
    let reason = strings(b, "reason")?;
    let raw = binary(b, "raw")?;
    let raw_text = strings(b, "raw_text")?;
    let topic = batch.partition.topic.as_str();
    let kpart = batch.partition.partition;
    Ok((0..b.num_rows())
        .map(|i| {
            let t = ingest.value(i);
            let v = (
                shared.layout.bucket(t),
                shard,
                t,
                topic,
                kpart,
                batch.dead_offsets[i],
                origin.value(i),
                reason.value(i),
                raw.value(i),
                raw_text.value(i),
            );
            let size = ROW_OVERHEAD + topic.len() + v.6.len() + v.7.len() + v.8.len() + v.9.len();
            (size, v)
        })
        .collect())
}

fn check_offsets(
    batch: &SourcedBatch,
    table: &str,
    rows: usize,
    offsets: usize,
) -> Result<(), EngineError> {
    if rows == offsets {
        return Ok(());
    }
    Err(err(
        format!("append to {table} from {}", batch.partition),
        format!("{rows} rows but {offsets} offsets"),
    ))
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, EngineError> {
    b.column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| err("append", format!("batch has no column {name:?}")))
}

fn micros<'a>(
    b: &'a RecordBatch,
    name: &str,
) -> Result<&'a TimestampMicrosecondArray, EngineError> {
    column(b, name)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| err("append", format!("column {name:?} is not a µs timestamp")))
}

fn strings<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a StringArray, EngineError> {
    column(b, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| err("append", format!("column {name:?} is not Utf8")))
}

fn binary<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray, EngineError> {
    column(b, name)?
        .as_binary_opt::<i32>()
        .ok_or_else(|| err("append", format!("column {name:?} is not Binary")))
}

/// Registers the buckets this process has not registered within [`REGISTER_REFRESH`].
async fn register(
    shared: &Shared,
    kind: &'static str,
    buckets: impl Iterator<Item = i64>,
) -> Result<(), EngineError> {
    let w = &shared.writes;
    let buckets: BTreeSet<i64> = buckets.collect();
    let now = Instant::now();
    let todo: Vec<i64> = {
        let registered = w.registered.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .into_iter()
            .filter(|b| {
                registered
                    .get(&(kind, *b))
                    .is_none_or(|at| now.duration_since(*at) >= REGISTER_REFRESH)
            })
            .collect()
    };
    for bucket in &todo {
        shared
            .session
            .execute_unpaged(&w.register_bucket, (kind, *bucket, w.marker_ttl))
            .await
            .map_err(|e| err(format!("registering {kind} bucket {bucket}"), e))?;
    }
    let mut registered = w.registered.lock().unwrap_or_else(|p| p.into_inner());
    if registered.len() > 10_000 {
        registered.retain(|_, at| now.duration_since(*at) < REGISTER_REFRESH);
    }
    for bucket in todo {
        registered.insert((kind, bucket), now);
    }
    Ok(())
}
