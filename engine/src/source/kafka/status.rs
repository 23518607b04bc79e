//! What the source reports: per-partition progress and lag, and counters for metrics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::source::{PartitionClaim, PartitionId};

/// Counters of the Kafka source since it started (`paused_partitions` is a gauge).
#[derive(Debug, Default)]
pub struct KafkaMetrics {
    /// Records read from Kafka (including ones read again after a rebalance).
    pub records_consumed: AtomicU64,
    /// Rows of `logs` written to the hot store.
    pub records_written: AtomicU64,
    /// Records that became dead letters (written to the hot store).
    pub dead_letters: AtomicU64,
    /// Batches written to the hot store with their progress advanced.
    pub batches_written: AtomicU64,
    /// Failed hot-store or progress writes that were retried.
    pub write_retries: AtomicU64,
    /// Partitions this node stopped writing because another owner claimed them.
    pub fenced: AtomicU64,
    /// Non-empty assignments and revocations delivered by the consumer group.
    pub rebalances: AtomicU64,
    /// Partitions paused right now because their writes are failing (a gauge).
    pub paused_partitions: AtomicU64,
}

/// One partition this node owns, as `status()` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: PartitionId,
    /// The fencing epoch this node holds (`-1` while the claim is in progress).
    pub epoch: i64,
    /// Durable progress: the first offset not yet written (`-1` before any is known).
    pub next_offset: i64,
    /// The partition's end as the consumer last saw it (last stable offset).
    pub high_watermark: Option<i64>,
    /// Records behind: `high_watermark - next_offset`.
    pub lag_records: Option<i64>,
    /// Seconds between now and the Kafka timestamp of the first record not yet written
    /// (while it is still unfetched, of the last batch written); `0` when caught up.
    pub lag_seconds: Option<f64>,
    /// Whether fetching is paused because writes are failing.
    pub paused: bool,
}

/// Sentinel for "no value" in the atomics below.
const NONE: i64 = i64::MIN;

/// The live state of one partition task, shared with `status()`.
#[derive(Debug)]
pub(super) struct PartitionState {
    epoch: AtomicI64,
    next_offset: AtomicI64,
    /// Kafka timestamp (ms) of the first record read but not yet written.
    pending_since_ms: AtomicI64,
    /// Kafka timestamp (ms) of the first record of the last batch written.
    written_since_ms: AtomicI64,
    paused: AtomicBool,
    /// Another owner claimed the partition: it is no longer this node's.
    fenced: AtomicBool,
}

impl PartitionState {
    pub(super) fn new() -> Self {
        Self {
            epoch: AtomicI64::new(-1),
            next_offset: AtomicI64::new(-1),
            pending_since_ms: AtomicI64::new(NONE),
            written_since_ms: AtomicI64::new(NONE),
            paused: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
        }
    }

    pub(super) fn claimed(&self, claim: &PartitionClaim) {
        self.epoch.store(claim.epoch, Ordering::Relaxed);
        self.next_offset
            .store(claim.next_offset.unwrap_or(-1), Ordering::Relaxed);
    }

    /// The batch read so far is in the hot store: nothing read waits any more.
    pub(super) fn appended(&self) {
        let first = self.pending_since_ms.swap(NONE, Ordering::Relaxed);
        if first != NONE {
            self.written_since_ms.store(first, Ordering::Relaxed);
        }
    }

    /// Durable progress moved to `next_offset`.
    pub(super) fn advanced(&self, next_offset: i64) {
        self.next_offset.store(next_offset, Ordering::Relaxed);
    }

    /// Notes the timestamp of the first record of a new batch (lag in seconds).
    pub(super) fn pending_since(&self, timestamp_ms: Option<i64>) {
        self.pending_since_ms
            .store(timestamp_ms.unwrap_or(NONE), Ordering::Relaxed);
    }

    pub(super) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub(super) fn set_fenced(&self) {
        self.fenced.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The status row, given the partition's latest known end and the time now (ms).
    pub(super) fn status(
        &self,
        partition: PartitionId,
        high_watermark: Option<i64>,
        now_ms: i64,
    ) -> PartitionStatus {
        let next_offset = self.next_offset.load(Ordering::Relaxed);
        let known = |v: i64| (v >= 0).then_some(v);
        let lag_records = match (high_watermark, known(next_offset)) {
            (Some(hw), Some(next)) => Some((hw - next).max(0)),
            _ => None,
        };
        let since = |ms: i64| Some((now_ms - ms).max(0) as f64 / 1000.0);
        let pending = self.pending_since_ms.load(Ordering::Relaxed);
        let written = self.written_since_ms.load(Ordering::Relaxed);
        let lag_seconds = match lag_records {
            _ if pending != NONE => since(pending),
            Some(0) => Some(0.0),
            // Behind, but the next records are not fetched yet: they are at least as old
            // as the last batch written was.
            Some(_) if written != NONE => since(written),
            _ => None,
        };
        PartitionStatus {
            partition,
            epoch: self.epoch.load(Ordering::Relaxed),
            next_offset,
            high_watermark,
            lag_records,
            lag_seconds,
            paused: self.is_paused(),
        }
    }
}
