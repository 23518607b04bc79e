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
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};

use crate::catalog::Manifest;
use crate::model::{dead_letters_schema, logs_schema};
use crate::{Engine, EngineError};

const HOUR_US: i64 = 3_600_000_000;

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
    for (i, (hour, batch)) in hours.into_iter().enumerate() {
        let batch = sort_by(&batch, &[3, 0])?;
        let path = format!(
            "logs/{}/{}.parquet",
            partition_dir(hour * HOUR_US, true),
            uuid::Uuid::new_v4()
        );
        let file = engine.cold.write(&path, &batch, 0).await?;
        tracing::debug!(file = %file.path, rows = file.rows, part = i + 1, parts, "flush: wrote cold file");
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
    next.logs.extend(new_logs);
    next.dead_letters.extend(new_dead);
    engine.catalog.commit(&next)?;
    let files = next.logs.len();
    engine.tiers.publish(next);

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
fn partition_dir(ts_us: i64, with_hour: bool) -> String {
    let dt: DateTime<Utc> = DateTime::from_timestamp_micros(ts_us).unwrap_or_default();
    if with_hour {
        dt.format("date=%Y-%m-%d/hour=%H").to_string()
    } else {
        dt.format("date=%Y-%m-%d").to_string()
    }
}

fn split_by_hour(batch: &RecordBatch) -> Result<BTreeMap<i64, RecordBatch>, EngineError> {
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

fn sort_by(batch: &RecordBatch, cols: &[usize]) -> Result<RecordBatch, EngineError> {
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
