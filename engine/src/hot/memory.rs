//! The hot tier: what the WAL holds and Parquet does not yet, as Arrow, in memory.
//!
//! Hot entries and the catalog manifest sit under one lock, so a query's snapshot sees a
//! flush either wholly before or wholly after its commit: no row twice, none missing.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::kernels::aggregate::{max, min};
use arrow::datatypes::TimestampMicrosecondType;

use crate::catalog::Manifest;

/// The records of one WAL entry.
#[derive(Debug)]
pub struct HotEntry {
    /// The entry's WAL sequence number.
    pub seq: u64,
    /// Accepted records (`logs` schema).
    pub logs: RecordBatch,
    /// Rejected records (`dead_letters` schema).
    pub dead_letters: RecordBatch,
    /// Event-time range of `logs`, for pruning (`None` when it has no rows).
    pub ts_range: Option<(i64, i64)>,
    /// Ingest-time range of `dead_letters`.
    pub dl_range: Option<(i64, i64)>,
}

impl HotEntry {
    /// Builds an entry, computing its time ranges.
    pub fn new(seq: u64, logs: RecordBatch, dead_letters: RecordBatch) -> Self {
        let ts_range = time_range(&logs, 0);
        let dl_range = time_range(&dead_letters, 0);
        Self {
            seq,
            logs,
            dead_letters,
            ts_range,
            dl_range,
        }
    }
}

fn time_range(batch: &RecordBatch, col: usize) -> Option<(i64, i64)> {
    if batch.num_rows() == 0 {
        return None;
    }
    let a = batch
        .column(col)
        .as_primitive_opt::<TimestampMicrosecondType>()?;
    Some((min(a)?, max(a)?))
}

#[derive(Debug, Default)]
struct State {
    manifest: Arc<Manifest>,
    hot: BTreeMap<u64, Arc<HotEntry>>,
    hot_rows: usize,
    oldest: Option<Instant>,
}

/// A consistent view of both tiers, taken once per scan.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The committed cold files.
    pub manifest: Arc<Manifest>,
    /// The hot entries above the manifest's horizon, in sequence order.
    pub hot: Vec<Arc<HotEntry>>,
}

/// Both tiers' state, shared by ingest, tiering and queries.
#[derive(Debug, Default)]
pub struct Tiers {
    state: RwLock<State>,
}

impl Tiers {
    /// Starts from a committed manifest and an empty hot buffer.
    pub fn new(manifest: Manifest) -> Self {
        Self {
            state: RwLock::new(State {
                manifest: Arc::new(manifest),
                ..Default::default()
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a durable WAL entry (ignored if the cold tier already holds it).
    pub fn insert(&self, entry: HotEntry) {
        let mut s = self.write();
        if entry.seq <= s.manifest.flushed_seq {
            return;
        }
        s.hot_rows += entry.logs.num_rows() + entry.dead_letters.num_rows();
        s.oldest.get_or_insert_with(Instant::now);
        s.hot.insert(entry.seq, Arc::new(entry));
    }

    /// A consistent snapshot of both tiers.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.read();
        Snapshot {
            manifest: Arc::clone(&s.manifest),
            hot: s.hot.values().cloned().collect(),
        }
    }

    /// Rows in the hot buffer and when its oldest entry arrived.
    pub fn hot_stats(&self) -> (usize, Option<Instant>) {
        let s = self.read();
        (s.hot_rows, s.oldest)
    }

    /// The committed manifest.
    pub fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.read().manifest)
    }

    /// Publishes a committed manifest and drops the hot entries it now covers.
    pub fn publish(&self, manifest: Manifest) {
        let mut s = self.write();
        let horizon = manifest.flushed_seq;
        s.manifest = Arc::new(manifest);
        let keep = s.hot.split_off(&(horizon + 1));
        s.hot = keep;
        s.hot_rows = s
            .hot
            .values()
            .map(|e| e.logs.num_rows() + e.dead_letters.num_rows())
            .sum();
        if s.hot.is_empty() {
            s.oldest = None;
        } else {
            s.oldest = Some(Instant::now());
        }
    }
}

/// The event-time column of `logs` as a slice, for callers that need raw values.
pub fn timestamps(batch: &RecordBatch, col: usize) -> Option<&[i64]> {
    Some(
        batch
            .column(col)
            .as_primitive_opt::<TimestampMicrosecondType>()?
            .values(),
    )
}
