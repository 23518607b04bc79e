//! System tables whose rows live in memory (`alerts`, `continuous_queries`): each scan
//! takes a fresh snapshot, so a query sees the state at the moment it runs.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

type Snapshot =
    dyn Fn() -> std::result::Result<RecordBatch, arrow::error::ArrowError> + Send + Sync;

/// A table answered from a snapshot function.
pub struct SnapshotTable {
    schema: SchemaRef,
    snapshot: Box<Snapshot>,
}

impl SnapshotTable {
    /// A table of `schema` whose rows are whatever `snapshot` returns at scan time.
    pub fn new(
        schema: SchemaRef,
        snapshot: impl Fn() -> std::result::Result<RecordBatch, arrow::error::ArrowError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            schema,
            snapshot: Box::new(snapshot),
        }
    }
}

impl fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotTable").finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = (self.snapshot)()?;
        MemTable::try_new(Arc::clone(&self.schema), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
