//! The continuous-query runtime core (CONTINUOUS_QUERIES.md §5, §7 "Streaming execution").
//!
//! A CQ body is planned once by DataFusion and taken apart (`plan.rs`) into row-level
//! filters and projections, plus, for windowed aggregates, the window (`TUMBLE`/`HOP`
//! in FROM, or `date_bin` in GROUP BY), the group and aggregate expressions and HAVING.
//! Each ingested `logs` batch is then pushed through DataFusion `PhysicalExpr`s and
//! `Accumulator`s kept per (window, group key) (`runtime.rs`); nothing pulls a
//! long-running `ExecutionPlan`. See `continuous.md` beside this file.
//!
//! Time follows the event-time watermark: per source partition `max(ts) − watermark`, the
//! minimum over partitions seen within `idle_timeout`, floored at
//! `now − (watermark + max_ingest_delay)` so windows close even when input stops.
//!
//! ```no_run
//! # async fn demo(batch: arrow::array::RecordBatch) -> Result<(), logsphere_engine::continuous::CqError> {
//! use logsphere_engine::continuous::{CqRuntime, CqSpec, Position};
//! let spec = CqSpec::new(
//!     "SELECT window_start, source, count(*) AS n FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
//!      WHERE log_level = 'ERROR' GROUP BY window_start, source HAVING count(*) > 100",
//! );
//! let mut cq = CqRuntime::new(spec).await?;
//! let now_us = 0;
//! for out in cq.process("kafka-0", Position::Wal { seq: 1 }, &batch, now_us)? {
//!     println!("{:?} {:?}", out.kind, out.rows);
//! }
//! let saved = cq.checkpoint()?;
//! # Ok(()) }
//! ```
//!
//! In the embedded engine, [`CqRegistry`] (`registry.rs`) keeps the definitions,
//! feeds every durable WAL entry to each running CQ from one task ([`run`]), checkpoints
//! them, and turns output rows into alerts (`alerts.rs`).

use std::time::Duration;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

mod alerts;
mod backfill;
mod backtest;
mod checkpoint;
mod cluster;
mod ddl;
mod definitions;
mod error;
pub(crate) mod feed;
mod groups;
mod hosting;
mod lifecycle;
mod notify;
mod plan;
mod registry;
mod runtime;
mod shared;
mod sink;
mod spec;
mod system_tables;
mod table_store;

pub use alerts::Alert;
pub use backfill::{BackfillPlan, start_from_us};
pub(crate) use backfill::{Hours, conclude as conclude_backfill, feed_hours, hour_of};
pub use backtest::{backtest, explain};
pub use cluster::{GENERATION_SHIFT, LocalDefinition, SharedTable, parse_definition};
pub use ddl::Created;
pub use definitions::{CqDefinition, CqState};
pub use error::{CheckpointError, CqError, InputError, StorageError};
pub use notify::{AlertEvent, Claim, DeliveryClaims, NotifyConfig};
pub use plan::{CqPlan, QueryShape, is_monotone};
pub use registry::CqRegistry;
pub use runtime::CqRuntime;
pub use sink::RESERVED_TABLES;
pub use spec::spec_from;
pub use system_tables::{
    alert_events_schema, alerts_batch, alerts_schema, backtest_schema, explain_schema,
    queries_schema,
};
pub use table_store::{
    SharedRows, TableStore, UPDATED_AT, describe as describe_columns, json_lines, rows_from_json,
    schema_from_hex, schema_hex, table_schema,
};

pub(crate) use backfill::{BackfillInput, run as run_backfill};

/// One durable WAL entry's `logs` rows, on their way to the CQ task.
pub(crate) type CqInput = (u64, RecordBatch);

/// Wall-clock µs since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads WAL entries `from..=through` back from disk, calling the callback with each
/// entry's sequence number and `logs` rows (entries without rows are skipped).
pub(crate) type WalReader = std::sync::Arc<
    dyn Fn(u64, u64, &mut dyn FnMut(u64, &RecordBatch)) -> Result<(), String> + Send + Sync,
>;

/// At most this many rows are fed to the CQs in one drain of the feed *(design)*.
const DRAIN_MAX_ROWS: usize = 64 * 1024;

/// The CQ task: feeds WAL entries in sequence order and ticks the wall clock every 250 ms
/// so windows close and checkpoints are written when input stops. Runs off the WAL thread.
/// When the feed falls behind (or a CQ resumes) it catches up from the WAL (feed.rs).
pub(crate) async fn run(
    queries: std::sync::Arc<CqRegistry>,
    feed: std::sync::Arc<feed::Feed>,
    mut input: tokio::sync::mpsc::Receiver<CqInput>,
    read: WalReader,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            entry = input.recv() => match entry {
                Some(first) => {
                    // Whatever queued meanwhile goes in the same call (see `process_entries`).
                    let mut rows = first.1.num_rows();
                    let mut entries = vec![first];
                    while rows < DRAIN_MAX_ROWS {
                        match input.try_recv() {
                            Ok(next) => {
                                rows += next.1.num_rows();
                                entries.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    queries.process_entries(&entries, now_us(), false);
                }
                None => break,
            },
            _ = feed.wanted() => catch_up(&queries, &feed, &mut input, &read).await,
            _ = tick.tick() => {
                // Due checkpoints are encoded under the registry lock but written (and
                // fsynced) on a blocking thread, so a large one does not hold up the rules.
                let pending = queries.tick_deferred(now_us());
                if !pending.is_empty() {
                    let q = std::sync::Arc::clone(&queries);
                    tokio::task::spawn_blocking(move || {
                        for p in pending {
                            let written = p.write_temp();
                            q.commit_checkpoint(p, written);
                        }
                    });
                }
            }
        }
    }
}

/// Drains what the feed sent before it stopped sending, then reads the rest from the WAL
/// until the feed is live again. Each entry's clock is its ingest time, as in the replay on
/// open, so the wall-clock floor behaves as it did when the entry arrived.
async fn catch_up(
    queries: &std::sync::Arc<CqRegistry>,
    feed: &std::sync::Arc<feed::Feed>,
    input: &mut tokio::sync::mpsc::Receiver<CqInput>,
    read: &WalReader,
) {
    while let Ok((seq, batch)) = input.try_recv() {
        queries.process(seq, &batch, now_us());
    }
    let (q, f, r) = (
        std::sync::Arc::clone(queries),
        std::sync::Arc::clone(feed),
        std::sync::Arc::clone(read),
    );
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let mut done = None;
        let mut entries = 0u64;
        loop {
            match f.next(done, || q.caught_up(None)) {
                feed::Next::Live => return Ok(entries),
                feed::Next::Read { from, through } => {
                    tracing::info!(from, through, "continuous queries catching up from the WAL");
                    r(from, through, &mut |seq, batch| {
                        entries += 1;
                        let clock = max_ingest_time(batch).unwrap_or_else(now_us);
                        q.process_caught_up(seq, batch, clock);
                    })
                    .map_err(|e| format!("reading WAL entries {from}..={through}: {e}"))?;
                    done = Some(through);
                }
            }
        }
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match result {
        Ok(entries) => tracing::info!(
            entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "continuous queries caught up; live again"
        ),
        Err(e) => {
            // Not silently: the CQs that were catching up say so in their `error` column.
            tracing::error!(error = %e, "continuous query catch-up failed; going live");
            feed.give_up(|| queries.caught_up(Some(&e)));
        }
    }
}

/// The newest `ingest_time` in a `logs` batch: the wall clock when it was ingested, used
/// as the clock while replaying it into continuous queries.
pub(crate) fn max_ingest_time(logs: &RecordBatch) -> Option<i64> {
    let column = logs.column_by_name("ingest_time")?;
    let column = column
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()?;
    arrow::compute::max(column)
}

/// What `ON LATE` does with a row that arrives after its window closed but within the
/// allowed lateness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum OnLate {
    /// Count it in `late_rows_dropped` (the default).
    #[default]
    Drop,
    /// Fold it into the kept window state and emit a corrected row flagged late.
    Update,
}

/// When a windowed CQ emits (§5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmitPolicy {
    /// Once per (window, key) when the window closes.
    OnWindowClose,
    /// Once when a monotone HAVING first becomes true, then the final row at close.
    OnThreshold,
}

/// A continuous query as the runtime needs it; the DDL parser produces one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqSpec {
    /// The SELECT, over the table `logs`.
    pub body_sql: String,
    /// `WATERMARK`: how far behind a partition's newest event the watermark trails.
    pub watermark: Duration,
    /// `ALLOWED LATENESS`: how long closed windows keep their state for late rows.
    pub allowed_lateness: Duration,
    /// `ON LATE`.
    pub on_late: OnLate,
    /// `EMIT`; `None` picks ON THRESHOLD for monotone HAVING, else ON WINDOW CLOSE.
    pub emit: Option<EmitPolicy>,
    /// `max_keys`: cap on live (window, key) states.
    pub max_keys: Option<usize>,
    /// A partition silent this long (wall clock) no longer holds the watermark back.
    pub idle_timeout: Duration,
    /// Upper bound on ingest delay, for the wall-clock watermark floor.
    pub max_ingest_delay: Duration,
}

impl CqSpec {
    /// A spec with the design defaults of §9: 5 s watermark, no lateness, drop late rows.
    pub fn new(body_sql: impl Into<String>) -> Self {
        Self {
            body_sql: body_sql.into(),
            watermark: Duration::from_secs(5),
            allowed_lateness: Duration::ZERO,
            on_late: OnLate::Drop,
            emit: None,
            max_keys: None,
            idle_timeout: Duration::from_secs(60),
            max_ingest_delay: Duration::from_secs(300),
        }
    }
}

/// Where an input batch came from, saved in checkpoints to resume consumption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// A WAL sequence number.
    Wal { seq: u64 },
    /// A Kafka offset.
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

/// Why an output row was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A shape A match.
    Row,
    /// ON THRESHOLD: HAVING just became true in an open window.
    Threshold,
    /// The final row of a window, at close.
    WindowClose,
    /// A corrected row after late data (ON LATE UPDATE).
    LateUpdate,
}

/// Rows emitted by a CQ, all of one kind.
#[derive(Debug, Clone)]
pub struct CqOutput {
    /// Rows in the SELECT's output schema.
    pub rows: RecordBatch,
    /// Why these rows were emitted.
    pub kind: OutputKind,
    /// Per row: window start in µs since the epoch (empty for shape A).
    pub window_start: Vec<i64>,
    /// Per row: window end in µs since the epoch (empty for shape A).
    pub window_end: Vec<i64>,
    /// True when the rows reflect data that arrived after the window closed.
    pub late: bool,
}

/// Counters a CQ reports (rows are never silently lost, §5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CqMetrics {
    /// Input rows seen.
    pub rows_in: u64,
    /// (row, window) pairs for closed windows dropped by ON LATE DROP or because the
    /// window's state was already gone (beyond the allowed lateness).
    pub late_rows_dropped: u64,
    /// The part of `late_rows_dropped` that was beyond the allowed lateness.
    pub late_rows_beyond_lateness: u64,
    /// (row, window) pairs folded into a closed window by ON LATE UPDATE.
    pub late_rows_updated: u64,
    /// (row, window) pairs not aggregated because `max_keys` states were live.
    pub key_overflow_rows: u64,
}

#[cfg(test)]
mod sinks_tests;
#[cfg(test)]
mod tests;
