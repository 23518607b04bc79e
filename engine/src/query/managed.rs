//! The tables continuous queries write (`INTO t`, `NOTIFY (TABLE t)`) in every session's
//! `public` schema, next to `logs` and the system tables.
//!
//! A session is made once per connection, but a CQ can create a table at any time, so the
//! schema asks the [`TableStore`] on every lookup instead of registering tables up front;
//! `information_schema` and `pg_catalog` (psql `\dt`) list them the same way.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::continuous::TableStore;

/// Where the managed tables are read from: this node's [`TableStore`] (embedded), or the
/// tables cluster mode shares through Cassandra.
#[async_trait]
pub trait ManagedTables: Send + Sync {
    /// Every table's name.
    fn names(&self) -> Vec<String>;
    /// The columns of table `name` (`updated_at` last).
    fn schema(&self, name: &str) -> Option<SchemaRef>;
    /// Every row of table `name`, now.
    async fn batch(&self, name: &str) -> Result<RecordBatch>;
}

#[async_trait]
impl ManagedTables for TableStore {
    fn names(&self) -> Vec<String> {
        TableStore::names(self)
    }

    fn schema(&self, name: &str) -> Option<SchemaRef> {
        TableStore::schema(self, name)
    }

    async fn batch(&self, name: &str) -> Result<RecordBatch> {
        Ok(TableStore::batch(self, name)?)
    }
}

/// A session's `public` schema: its registered tables, then the managed ones.
pub struct PublicSchema {
    registered: Arc<dyn SchemaProvider>,
    managed: Arc<dyn ManagedTables>,
}

impl PublicSchema {
    /// `registered` (the session's own tables) in front of `managed`.
    pub fn new(registered: Arc<dyn SchemaProvider>, managed: Arc<dyn ManagedTables>) -> Self {
        Self {
            registered,
            managed,
        }
    }
}

impl fmt::Debug for PublicSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicSchema").finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for PublicSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.registered.table_names();
        names.extend(self.managed.names());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.registered.table(name).await? {
            return Ok(Some(t));
        }
        Ok(self.managed.schema(name).map(|schema| {
            Arc::new(ManagedTable {
                name: name.to_string(),
                schema,
                store: Arc::clone(&self.managed),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.registered.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.registered.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.registered.table_exist(name) || self.managed.schema(name).is_some()
    }
}

/// One managed table; a scan reads its rows at that moment.
struct ManagedTable {
    name: String,
    schema: SchemaRef,
    store: Arc<dyn ManagedTables>,
}

impl fmt::Debug for ManagedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedTable")
            .field("name", &self.name)
            .finish()
    }
}

#[async_trait]
impl TableProvider for ManagedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.store.batch(&self.name).await?;
        MemTable::try_new(Arc::clone(&self.schema), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
