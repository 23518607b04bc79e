//! Tiering: moving the hot buffer into Parquet and advancing the horizon.
//!
//! A flush takes a snapshot of the hot entries up to sequence `S`, writes them as Parquet
//! files partitioned by hour (rows sorted by source, then timestamp), makes the files
//! durable, and only then commits a manifest naming them with `flushed_seq = S`. The hot
//! entries `<= S` are dropped in the same step as the manifest is published, and WAL
//! segments wholly `<= S` are deleted afterwards. A crash before the commit leaves files
//! nobody names (removed at start) and the WAL still holding every entry; a crash after it
//! leaves WAL entries the horizon skips. Either way `count(*)` is exactly right.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};

use crate::catalog::Manifest;
use crate::model::{UTC, dead_letters_schema, logs_schema, ts_type};
use crate::{Engine, EngineError};

pub(crate) const HOUR_US: i64 = 3_600_000_000;

/// Flushes everything in the hot buffer; returns the number of rows moved.
pub async fn flush(engine: &Engine) -> Result<u64, EngineError> {
    let _guard = engine.flush_lock.lock().await;
    let started = Instant::now();
    let snapshot = engine.tiers.snapshot();
    let Some(last) = snapshot.hot.last() else {
        return Ok(0);
    };
    let horizon = last.seq;
    let logs: Vec<&RecordBatch> = snapshot
        .hot
        .iter()
        .map(|e| &e.logs)
        .filter(|b| b.num_rows() > 0)
        .collect();
    let dead: Vec<&RecordBatch> = snapshot
        .hot
        .iter()
        .map(|e| &e.dead_letters)
        .filter(|b| b.num_rows() > 0)
        .collect();
    let logs = concat_batches(&logs_schema(), logs)?;
    let dead = concat_batches(&dead_letters_schema(), dead)?;
    let rows = (logs.num_rows() + dead.num_rows()) as u64;

    let mut new_logs = Vec::new();
    let hours = split_by_hour(&logs)?;
    let parts = hours.len();
    // Promotion decides per file; the registry grows as the files do, so `max_promoted`
    // holds across the files of one flush too.
    let mut registry = engine.tiers.manifest().fields.clone();
    let mut mixed: Vec<Vec<String>> = Vec::new();
    for (i, (hour, batch)) in hours.into_iter().enumerate() {
        let batch = sort_by(&batch, &[3, 0])?;
        let path = format!(
            "logs/{}/{}.parquet",
            partition_dir(hour * HOUR_US, true),
            uuid::Uuid::new_v4()
        );
        let shredded = crate::fields::shred(&batch, &engine.config().fields, &registry)?;
        crate::fields::register(&mut registry, &shredded.columns, &shredded.mixed, 0);
        mixed.push(shredded.mixed);
        let mut file = engine.cold.write(&path, &shredded.batch, 0).await?;
        file.columns = shredded.columns;
        tracing::debug!(file = %file.path, rows = file.rows, promoted = file.columns.len(), part = i + 1, parts, "flush: wrote cold file");
        new_logs.push(file);
    }
    let mut new_dead = Vec::new();
    if dead.num_rows() > 0 {
        let batch = sort_by(&dead, &[0])?;
        let first = first_ts(&batch);
        let path = format!(
            "dead_letters/{}/{}.parquet",
            partition_dir(first, false),
            uuid::Uuid::new_v4()
        );
        new_dead.push(engine.cold.write(&path, &batch, 0).await?);
    }
    let written_files = (new_logs.len() + new_dead.len()) as u64;
    let written_bytes: u64 = new_logs.iter().chain(&new_dead).map(|f| f.bytes).sum();
    if let Some(pause) = engine.config().fault_flush_pause {
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "fault injection: pausing before the flush commit"
        );
        tokio::time::sleep(pause).await;
    }

    let old = engine.tiers.manifest();
    let mut next: Manifest = (*old).clone();
    next.version += 1;
    next.flushed_seq = horizon;
    let now_us = Utc::now().timestamp_micros();
    for (f, mixed) in new_logs.iter().zip(&mixed) {
        crate::fields::register(&mut next.fields, &f.columns, mixed, now_us);
    }
    next.logs.extend(new_logs);
    next.dead_letters.extend(new_dead);
    engine.catalog.commit(&next)?;
    let files = next.logs.len();
    engine.tiers.publish(next);
    engine
        .tiering_metrics()
        .succeeded(rows, written_files, written_bytes);

    // Keys first: once the segments are gone, the key file is what remembers them.
    engine.persist_keys(horizon)?;
    let deleted = engine
        .wal
        .delete_segments(engine.wal_deletable_through(horizon))?;
    let m = engine.metrics();
    m.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    m.flushed_rows
        .fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        rows,
        horizon,
        hour_partitions = parts,
        cold_files = files,
        wal_segments_deleted = deleted,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "flushed hot buffer to Parquet"
    );
    Ok(rows)
}

/// Runs until `stop`: flushes when the hot buffer is old or large enough.
/// Holds the engine only weakly between checks, so dropping the engine ends it.
pub async fn run_flusher(
    engine: Weak<Engine>,
    wanted: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = wanted.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let Some(e) = engine.upgrade() else { return };
        if e.stopped() {
            return;
        }
        let (rows, oldest) = e.tiers.hot_stats();
        let due = rows >= e.config().flush_max_rows
            || oldest.is_some_and(|t| t.elapsed() >= e.config().flush_interval);
        if !due {
            crate::compaction::tick(&e).await;
            continue;
        }
        match flush(&e).await {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                crate::compaction::tick(&e).await;
            }
            Err(err) => {
                e.metrics()
                    .flush_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                e.tiering_metrics().failed(&err);
                tracing::error!(error = %err, retry_in_s = backoff.as_secs(), "flush failed; the WAL keeps every record, retrying");
                drop(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

fn first_ts(batch: &RecordBatch) -> i64 {
    batch
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .first()
        .copied()
        .unwrap_or(0)
}

/// `date=YYYY-MM-DD/hour=HH` (or only the date) for a time in µs.
pub(crate) fn partition_dir(ts_us: i64, with_hour: bool) -> String {
    let dt: DateTime<Utc> = DateTime::from_timestamp_micros(ts_us).unwrap_or_default();
    if with_hour {
        dt.format("date=%Y-%m-%d/hour=%H").to_string()
    } else {
        dt.format("date=%Y-%m-%d").to_string()
    }
}

pub(crate) fn split_by_hour(
    batch: &RecordBatch,
) -> Result<BTreeMap<i64, RecordBatch>, EngineError> {
    let ts = batch
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values();
    let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, t) in ts.iter().enumerate() {
        groups
            .entry(t.div_euclid(HOUR_US))
            .or_default()
            .push(i as u32);
    }
    let mut out = BTreeMap::new();
    if groups.len() == 1 {
        if let Some((hour, _)) = groups.into_iter().next() {
            out.insert(hour, batch.clone());
        }
        return Ok(out);
    }
    for (hour, idx) in groups {
        out.insert(hour, take_record_batch(batch, &UInt32Array::from(idx))?);
    }
    Ok(out)
}

pub(crate) fn sort_by(batch: &RecordBatch, cols: &[usize]) -> Result<RecordBatch, EngineError> {
    let keys: Vec<SortColumn> = cols
        .iter()
        .map(|c| SortColumn {
            values: Arc::clone(batch.column(*c)),
            options: None,
        })
        .collect();
    let idx = lexsort_to_indices(&keys, None)?;
    Ok(take_record_batch(batch, &idx)?)
}

/// Tiering counters and state (both modes), for `/metrics` and the `tiering` table.
#[derive(Debug, Default)]
pub struct TieringMetrics {
    /// Rounds (flushes) committed.
    pub rounds: AtomicU64,
    /// Rows moved to the cold tier.
    pub rows: AtomicU64,
    /// Files written.
    pub files: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Rounds that failed (they are retried).
    pub failures: AtomicU64,
    /// Cluster: rounds skipped or delayed because another node held the lease.
    pub lease_busy: AtomicU64,
    /// µs since the epoch of the last committed round (0: none yet).
    pub last_round_us: AtomicI64,
    /// The last error, while the last round failed.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl TieringMetrics {
    /// Records a committed round.
    pub fn succeeded(&self, rows: u64, files: u64, bytes: u64) {
        self.rounds.fetch_add(1, Relaxed);
        self.rows.fetch_add(rows, Relaxed);
        self.files.fetch_add(files, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.last_round_us
            .store(chrono::Utc::now().timestamp_micros(), Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records a failed round.
    pub fn failed(&self, e: &EngineError) {
        self.failures.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

/// The `tiering` table: one row, the committed manifest and what rounds did.
pub fn tiering_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new("horizon", ts_type(), true),
        Field::new("flushed_seq", DataType::Int64, false),
        Field::new("cold_files", DataType::Int64, false),
        Field::new("cold_rows", DataType::Int64, false),
        Field::new("cold_bytes", DataType::Int64, false),
        Field::new("rounds", DataType::Int64, false),
        Field::new("rows_moved", DataType::Int64, false),
        Field::new("failures", DataType::Int64, false),
        Field::new("lease_busy", DataType::Int64, false),
        Field::new("last_round", ts_type(), true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("offsets", DataType::Utf8, true),
    ]))
}

/// The `tiering` row for `manifest` and `m`.
pub fn tiering_batch(
    manifest: &Manifest,
    m: &TieringMetrics,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let files = manifest.logs.iter().chain(&manifest.dead_letters);
    let (count, rows, bytes) = files.fold((0i64, 0i64, 0i64), |(c, r, b), f| {
        (c + 1, r + f.rows as i64, b + f.bytes as i64)
    });
    let int = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v])) };
    let ts = |v: Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone(UTC))
    };
    let last = m.last_round_us.load(Relaxed);
    let error = m
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let offsets = manifest
        .cut
        .as_ref()
        .and_then(|c| serde_json::to_string(&c.offsets).ok());
    RecordBatch::try_new(
        tiering_schema(),
        vec![
            int(manifest.version as i64),
            ts(manifest.cut.as_ref().map(|c| c.horizon_us)),
            int(manifest.flushed_seq as i64),
            int(count),
            int(rows),
            int(bytes),
            int(m.rounds.load(Relaxed) as i64),
            int(m.rows.load(Relaxed) as i64),
            int(m.failures.load(Relaxed) as i64),
            int(m.lease_busy.load(Relaxed) as i64),
            ts((last > 0).then_some(last)),
            Arc::new(StringArray::from(vec![error])),
            Arc::new(StringArray::from(vec![offsets])),
        ],
    )
}
