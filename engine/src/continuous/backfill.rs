//! `START FROM EARLIEST | TIMESTAMP '…'`: a new CQ first consumes the stored logs, then the
//! live feed (CONTINUOUS_QUERIES.md §4.1, §5.7). See "START FROM" in `continuous.md`.
//!
//! The cut is a WAL sequence number `cut`, fixed at CREATE under the registry lock: the
//! backfill reads exactly the entries `seq <= cut` (the cold files committed then, and the
//! hot entries `wal_from..=cut`), and the live feed only the entries above it. Entries
//! that arrive during the backfill are queued and fed after it, in sequence order, so the
//! runtime sees history in event-time order and then the live stream, each row once.
//! The plan is stored with the definition until the backfill is done, so a restart runs it
//! again from the start (upserts and deterministic alert ids make that harmless).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use logsphere_sql::{CreateContinuousQuery, StartFrom};
use serde::{Deserialize, Serialize};

use super::CqError;
use crate::catalog::{ColdFile, Manifest};
use crate::cold::ColdStore;
use crate::hot::{HotEntry, Tiers};
use crate::query::tables::{TableKind, TierScope, TierTable};

const HOUR_US: i64 = 3_600_000_000;

/// What a `START FROM` backfill reads, stored with the definition until it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillPlan {
    /// Event time (µs since the epoch) the backfill starts at; `i64::MIN` for EARLIEST.
    pub from_us: i64,
    /// The cold files committed at CREATE with rows at or after `from_us`.
    pub files: Vec<ColdFile>,
    /// The WAL entries `wal_from..=cut` were hot at CREATE; they are read from the WAL
    /// (held until the backfill is done).
    pub wal_from: u64,
    /// The last WAL entry the backfill covers; the live feed starts after it.
    pub cut: u64,
}

impl BackfillPlan {
    /// The plan for a CQ starting at `from_us`, over `manifest` and the hot entries up to
    /// `cut`.
    pub(crate) fn new(from_us: i64, manifest: &Manifest, cut: u64) -> Self {
        Self {
            from_us,
            files: manifest
                .logs
                .iter()
                .filter(|f| f.max_ts >= from_us)
                .cloned()
                .collect(),
            wal_from: manifest.flushed_seq + 1,
            cut,
        }
    }

    /// True when WAL entry `seq` is one the backfill reads from the WAL.
    pub(crate) fn reads_wal_entry(&self, seq: u64) -> bool {
        (self.wal_from..=self.cut).contains(&seq)
    }
}

/// The event time `START FROM` names: `None` for NOW (no backfill), `i64::MIN` for
/// EARLIEST, else the timestamp evaluated by DataFusion, in µs since the epoch.
pub async fn start_from_us(cq: &CreateContinuousQuery) -> Result<Option<i64>, CqError> {
    let expr = match &cq.start_from {
        StartFrom::Now => return Ok(None),
        StartFrom::Earliest => return Ok(Some(i64::MIN)),
        StartFrom::Timestamp(e) => e,
    };
    let bad = |why: String| CqError::Unsupported {
        sql: cq.body_sql.clone(),
        reason: format!("START FROM {expr}: {why}"),
    };
    let ctx = SessionContext::new();
    let batches = ctx
        .sql(&format!("SELECT to_timestamp_micros({expr})"))
        .await
        .map_err(|e| bad(e.to_string()))?
        .collect()
        .await
        .map_err(|e| bad(e.to_string()))?;
    let column = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| {
            arrow::compute::cast(
                b.column(0),
                &arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Microsecond,
                    None,
                ),
            )
        })
        .transpose()?;
    column
        .as_ref()
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .filter(|c| c.is_valid(0))
        .map(|c| Some(c.value(0)))
        .ok_or_else(|| bad("not a timestamp".into()))
}

/// Where a backfill reads: the plan's cold files and the hot entries it names.
pub(crate) struct BackfillInput {
    pub plan: BackfillPlan,
    /// `(seq, logs)` of the WAL entries `plan.wal_from..=plan.cut`.
    pub hot: Vec<(u64, RecordBatch)>,
    pub cold: ColdStore,
}

/// Runs the backfill of CQ `name` (version `version`) through `queries`, then switches it
/// to the live feed. Logs progress (rows, rows/s, event time reached) every 5 s.
pub(crate) async fn run(
    queries: Arc<super::CqRegistry>,
    name: String,
    version: u64,
    input: BackfillInput,
    stopped: impl Fn() -> bool,
) {
    let started = Instant::now();
    let result = feed(&queries, &name, version, &input, &stopped, started).await;
    conclude(&queries, &name, version, result, started, &stopped);
}

/// Logs how a backfill ended and switches the query to the live feed (its error, if any,
/// in the query's `error`).
pub(crate) fn conclude(
    queries: &super::CqRegistry,
    name: &str,
    version: u64,
    result: Result<u64, CqError>,
    started: Instant,
    stopped: &impl Fn() -> bool,
) {
    let error = match result {
        Ok(rows) => {
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(cq = %name, rows, elapsed_s = secs, rows_per_s = rate(rows, secs),
                "backfill done; continuing with the live feed");
            None
        }
        Err(e) => {
            tracing::error!(cq = %name, error = %e, "backfill failed; continuing with the live feed");
            Some(format!("backfill incomplete: {e}"))
        }
    };
    if !stopped() {
        queries.finish_backfill(name, version, error, super::now_us());
    }
}

fn rate(rows: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (rows as f64 / secs) as u64
    } else {
        rows
    }
}

/// Feeds every stored row at or after the start, one event-time hour at a time (a cold
/// file never spans two hours), sorted by event time. Returns the rows fed.
async fn feed(
    queries: &super::CqRegistry,
    name: &str,
    version: u64,
    input: &BackfillInput,
    stopped: &impl Fn() -> bool,
    started: Instant,
) -> Result<u64, CqError> {
    let plan = &input.plan;
    let manifest = Manifest {
        flushed_seq: plan.wal_from.saturating_sub(1),
        logs: plan.files.clone(),
        ..Manifest::default()
    };
    let tiers = Arc::new(Tiers::new(manifest));
    let empty = RecordBatch::new_empty(crate::model::dead_letters_schema());
    let mut hours: BTreeSet<i64> = plan.files.iter().map(|f| hour_of(f.min_ts)).collect();
    for (seq, logs) in &input.hot {
        if let Some(ts) = crate::hot::timestamps(logs, 0) {
            hours.extend(ts.iter().map(|t| hour_of(*t)));
        }
        tiers.insert(HotEntry::new(*seq, logs.clone(), empty.clone()));
    }
    let ctx = SessionContext::new();
    let table = TierTable::new(TableKind::Logs, TierScope::Both, tiers, input.cold.clone());
    ctx.register_table("logs", Arc::new(table))?;
    let input = Hours {
        hours,
        from_us: plan.from_us,
        filter: String::new(),
    };
    feed_hours(queries, name, version, &ctx, &input, stopped, started).await
}

/// What [`feed_hours`] reads: the event-time hours that hold rows, the start, and an extra
/// SQL condition (` AND …`) on `logs`.
pub(crate) struct Hours {
    pub hours: BTreeSet<i64>,
    pub from_us: i64,
    pub filter: String,
}

/// The event-time hour (µs / 1 h) of `us`.
pub(crate) fn hour_of(us: i64) -> i64 {
    us.div_euclid(HOUR_US)
}

/// Feeds the rows of `logs` in `ctx` at or after the start, hour by hour in event-time
/// order, to the backfill of `name`; logs progress every 5 s. Returns the rows fed.
pub(crate) async fn feed_hours(
    queries: &super::CqRegistry,
    name: &str,
    version: u64,
    ctx: &SessionContext,
    input: &Hours,
    stopped: &impl Fn() -> bool,
    started: Instant,
) -> Result<u64, CqError> {
    let (mut rows, mut clock, mut last_log) = (0u64, input.from_us, Instant::now());
    for &hour in &input.hours {
        let lo = (hour * HOUR_US).max(input.from_us);
        let hi = hour * HOUR_US + HOUR_US;
        if hi <= input.from_us {
            continue;
        }
        let sql = format!(
            "SELECT * FROM logs WHERE timestamp >= to_timestamp_micros({lo}) \
             AND timestamp < to_timestamp_micros({hi}){} ORDER BY timestamp",
            input.filter
        );
        let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            if stopped() {
                return Ok(rows);
            }
            let batch = crate::model::fixed_logs_columns(&batch)?;
            if let Some(ts) = crate::hot::timestamps(&batch, 0)
                && let Some(max) = ts.iter().max()
            {
                clock = clock.max(*max);
            }
            if !queries.feed_backfill(name, version, &batch, clock)? {
                tracing::info!(cq = %name, "backfill stopped: the query was dropped or replaced");
                return Ok(rows);
            }
            rows += batch.num_rows() as u64;
            if last_log.elapsed().as_secs() >= 5 {
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(cq = %name, rows, rows_per_s = rate(rows, secs),
                    reached_us = clock, "backfill progress");
                last_log = Instant::now();
            }
        }
    }
    Ok(rows)
}
