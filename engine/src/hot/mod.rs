//! The hot tier: recent records, before tiering moves them to Parquet.
//!
//! - [`memory`]: embedded mode. The WAL's entries as Arrow batches in memory, rebuilt from
//!   the WAL on restart; ordered by WAL sequence number.
//! - [`cassandra`]: cluster mode. Rows in Apache Cassandra, partitioned by (time bucket,
//!   shard), written idempotently by their Kafka identity, expiring by TTL.
//!
//! Both serve SQL through [`HotStore::table`], so `logs_hot`, `logs` and `dead_letters`
//! are the same tables in both modes.

pub mod cassandra;
pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;

pub use memory::{HotEntry, Snapshot, Tiers, timestamps};

use crate::EngineError;
use crate::query::tables::TableKind;
use crate::source::SourcedBatch;

/// A hot store: appends durable batches, and serves them to SQL.
#[async_trait]
pub trait HotStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes the batch's rows so that a read at the store's consistency sees them; must be
    /// idempotent by each row's identity (a redelivered batch changes nothing).
    async fn append(&self, batch: &SourcedBatch) -> Result<(), EngineError>;

    /// The hot rows of `kind` as a DataFusion table; time filters select what is read.
    fn table(&self, kind: TableKind) -> Arc<dyn TableProvider>;
}
