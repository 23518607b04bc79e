//! A table that is the union of others with the same schema: in cluster mode `logs` is the
//! Cassandra hot tier plus the cold Parquet files, as `logs` is hot plus cold embedded.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;

/// The rows of every part, in no particular order. Filters are offered to each part and
/// always re-checked above it (`Inexact`), so a part that ignores one stays correct.
pub struct UnionTable {
    schema: SchemaRef,
    parts: Vec<Arc<dyn TableProvider>>,
}

impl UnionTable {
    /// A union of `parts`, which must all have `schema`.
    pub fn new(schema: SchemaRef, parts: Vec<Arc<dyn TableProvider>>) -> Self {
        Self { schema, parts }
    }
}

impl fmt::Debug for UnionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnionTable")
            .field("parts", &self.parts.len())
            .finish()
    }
}

#[async_trait]
impl TableProvider for UnionTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut plans = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            // A part gets only the filters it can use; the rest are applied above the union.
            let refs: Vec<&Expr> = filters.iter().collect();
            let support = part.supports_filters_pushdown(&refs)?;
            let usable: Vec<Expr> = filters
                .iter()
                .zip(support)
                .filter(|(_, s)| *s != TableProviderFilterPushDown::Unsupported)
                .map(|(f, _)| f.clone())
                .collect();
            // DataFusion passes a limit only when no filter is left to apply above the scan.
            let part_limit = filters.is_empty().then_some(limit).flatten();
            plans.push(part.scan(state, projection, &usable, part_limit).await?);
        }
        UnionExec::try_new(plans)
    }
}
