//! In-memory stand-ins for the hot store and the progress store, faithful to their
//! contracts: rows keyed by identity (rewrites counted), progress fenced by epoch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

use crate::EngineError;
use crate::hot::HotStore;
use crate::query::tables::TableKind;
use crate::source::{PartitionClaim, PartitionId, PartitionProgress, ProgressStore, SourcedBatch};

/// A record's identity: (topic, partition, offset).
pub type Identity = (String, i32, i64);

/// A stored `logs` row.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub topic: String,
    pub message: String,
    pub attributes: serde_json::Value,
}

/// What the fake hot store holds.
#[derive(Debug, Default)]
pub struct HotRows {
    pub logs: HashMap<Identity, LogRow>,
    /// Dead letters by identity: their reason.
    pub dead: HashMap<Identity, String>,
    /// How many times each identity was written.
    pub writes: HashMap<Identity, usize>,
    /// Every successful append: partition and first offset.
    pub appends: Vec<(PartitionId, i64)>,
    /// The most records one append carried.
    pub largest_append: usize,
}

/// A hot store in memory that can be told to fail for a while.
#[derive(Debug, Default)]
pub struct FakeHot {
    rows: Mutex<HotRows>,
    fail_until: Mutex<Option<Instant>>,
}

impl FakeHot {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every append fails for `d` from now ("Cassandra down").
    pub fn fail_for(&self, d: Duration) {
        *self.fail_until.lock().unwrap() = Some(Instant::now() + d);
    }

    pub fn with_rows<T>(&self, f: impl FnOnce(&HotRows) -> T) -> T {
        f(&self.rows.lock().unwrap())
    }

    /// Successful appends to `p` so far.
    pub fn appends_to(&self, p: &PartitionId) -> usize {
        self.with_rows(|r| r.appends.iter().filter(|(q, _)| q == p).count())
    }
}

#[async_trait]
impl HotStore for FakeHot {
    async fn append(&self, batch: &SourcedBatch) -> Result<(), EngineError> {
        if self
            .fail_until
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t)
        {
            return Err(EngineError::Cassandra {
                context: "fake append".into(),
                reason: "down".into(),
            });
        }
        let p = &batch.partition;
        let mut rows = self.rows.lock().unwrap();
        let logs = &batch.logs;
        let topic = logs.column(4).as_string::<i32>();
        let message = logs.column(2).as_string::<i32>();
        let attributes = logs.column(5).as_string::<i32>();
        assert_eq!(logs.num_rows(), batch.log_offsets.len());
        for (i, offset) in batch.log_offsets.iter().enumerate() {
            let id = (p.topic.clone(), p.partition, *offset);
            let row = LogRow {
                topic: topic.value(i).to_string(),
                message: message.value(i).to_string(),
                attributes: serde_json::from_str(attributes.value(i)).unwrap(),
            };
            rows.logs.insert(id.clone(), row);
            *rows.writes.entry(id).or_default() += 1;
        }
        let reason = batch.dead_letters.column(2).as_string::<i32>();
        assert_eq!(batch.dead_letters.num_rows(), batch.dead_offsets.len());
        for (i, offset) in batch.dead_offsets.iter().enumerate() {
            let id = (p.topic.clone(), p.partition, *offset);
            rows.dead.insert(id.clone(), reason.value(i).to_string());
            *rows.writes.entry(id).or_default() += 1;
        }
        let first = batch
            .log_offsets
            .iter()
            .chain(&batch.dead_offsets)
            .min()
            .copied()
            .unwrap_or(batch.next_offset);
        rows.appends.push((p.clone(), first));
        let records = batch.log_offsets.len() + batch.dead_offsets.len();
        rows.largest_append = rows.largest_append.max(records);
        Ok(())
    }

    fn table(&self, kind: TableKind) -> Arc<dyn TableProvider> {
        Arc::new(MemTable::try_new(kind.schema(), vec![vec![]]).unwrap())
    }
}

#[derive(Debug, Clone, Default)]
struct Progress {
    next_offset: Option<i64>,
    owner: String,
    epoch: i64,
    updated_us: i64,
}

/// A progress store in memory with the fencing semantics of the Cassandra one.
#[derive(Debug, Default)]
pub struct FakeProgress {
    rows: Mutex<HashMap<PartitionId, Progress>>,
}

impl FakeProgress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// What a new owner's claim does: the current owner is fenced.
    pub fn bump_epoch(&self, p: &PartitionId, owner: &str) {
        let mut rows = self.rows.lock().unwrap();
        let row = rows.entry(p.clone()).or_default();
        row.epoch += 1;
        row.owner = owner.into();
    }

    pub fn next_offset(&self, p: &PartitionId) -> Option<i64> {
        self.rows.lock().unwrap().get(p).and_then(|r| r.next_offset)
    }

    pub fn epoch(&self, p: &PartitionId) -> i64 {
        self.rows.lock().unwrap().get(p).map_or(0, |r| r.epoch)
    }
}

#[async_trait]
impl ProgressStore for FakeProgress {
    async fn claim(&self, p: &PartitionId, owner: &str) -> Result<PartitionClaim, EngineError> {
        let mut rows = self.rows.lock().unwrap();
        let row = rows.entry(p.clone()).or_default();
        row.epoch += 1;
        row.owner = owner.into();
        Ok(PartitionClaim {
            epoch: row.epoch,
            next_offset: row.next_offset,
        })
    }

    async fn advance(&self, p: &PartitionId, epoch: i64, next: i64) -> Result<bool, EngineError> {
        let mut rows = self.rows.lock().unwrap();
        let Some(row) = rows.get_mut(p) else {
            return Ok(false);
        };
        if row.epoch != epoch {
            return Ok(false);
        }
        assert!(
            row.next_offset.is_none_or(|n| next >= n),
            "progress of {p} moved backwards: {:?} -> {next}",
            row.next_offset
        );
        row.next_offset = Some(next);
        row.updated_us = chrono::Utc::now().timestamp_micros();
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<PartitionProgress>, EngineError> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .iter()
            .filter_map(|(p, r)| {
                Some(PartitionProgress {
                    partition: p.clone(),
                    next_offset: r.next_offset?,
                    owner: r.owner.clone(),
                    epoch: r.epoch,
                    updated_us: r.updated_us,
                })
            })
            .collect())
    }
}
