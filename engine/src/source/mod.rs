//! Where records come from, and how far they have durably come.
//!
//! - [`wal`]: embedded mode. HTTP requests are decoded and appended to the local
//!   write-ahead log; a position is a WAL sequence number.
//! - [`kafka`]: cluster mode. A consumer group reads topics; a position is a Kafka offset
//!   per (topic, partition), kept in Cassandra beside the data ([`ProgressStore`]) and
//!   mirrored to the group's committed offsets for lag tools.
//!
//! Either way a record is decoded once into Arrow ([`crate::ingest`]) and the batch is what
//! the hot store and the continuous queries see.

pub mod kafka;
pub mod wal;

use std::fmt;

use arrow::array::RecordBatch;
use async_trait::async_trait;

use crate::EngineError;

/// One partition of one Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// Topic name (also the `topic` column of its records).
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Decoded records of one partition, in offset order, with their identities.
#[derive(Debug, Clone)]
pub struct SourcedBatch {
    /// Where the records came from.
    pub partition: PartitionId,
    /// Accepted records (`logs` schema).
    pub logs: RecordBatch,
    /// Kafka offset of each row of `logs`.
    pub log_offsets: Vec<i64>,
    /// Rejected records (`dead_letters` schema).
    pub dead_letters: RecordBatch,
    /// Kafka offset of each row of `dead_letters`.
    pub dead_offsets: Vec<i64>,
    /// The offset after the last record of the batch: progress once it is written.
    pub next_offset: i64,
}

/// Ownership of a partition, won by [`ProgressStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionClaim {
    /// The fencing epoch this owner holds; any later claim makes it stale.
    pub epoch: i64,
    /// The first offset not yet durably written (consumption resumes here); `None` when the
    /// partition has no progress yet (start from `auto.offset.reset`).
    pub next_offset: Option<i64>,
}

/// The durable progress of one partition, as [`ProgressStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition.
    pub partition: PartitionId,
    /// First offset not yet written.
    pub next_offset: i64,
    /// Node that last claimed it.
    pub owner: String,
    /// Its fencing epoch.
    pub epoch: i64,
    /// When progress last moved (µs since the epoch).
    pub updated_us: i64,
}

/// Per-partition progress, fenced: only the latest claimer can move it, and only forward.
#[async_trait]
pub trait ProgressStore: Send + Sync + fmt::Debug + 'static {
    /// Takes ownership of `partition` for node `owner`: bumps the fencing epoch with a
    /// compare-and-set and returns it with the offset to resume from.
    async fn claim(
        &self,
        partition: &PartitionId,
        owner: &str,
    ) -> Result<PartitionClaim, EngineError>;

    /// Moves progress to `next_offset` if `epoch` still owns the partition. `Ok(false)`
    /// means another node claimed it since: the caller must stop and drop what it buffered.
    async fn advance(
        &self,
        partition: &PartitionId,
        epoch: i64,
        next_offset: i64,
    ) -> Result<bool, EngineError>;

    /// Every partition's progress in this consumer group.
    async fn list(&self) -> Result<Vec<PartitionProgress>, EngineError>;
}
