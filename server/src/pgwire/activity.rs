//! The session views and functions of PostgreSQL's statistics collector, over the live
//! connections: `pg_catalog.pg_stat_activity` (one row per connection: pid, user,
//! application_name, client address, state, current or last query), `pg_catalog.pg_cursors`
//! (this connection's open cursors), `pg_backend_pid()` and `pg_cancel_backend(pid)`.
//!
//! datafusion-pg-catalog has none of them; the connection's `pg_catalog` schema is wrapped
//! in [`SessionViews`], which adds the two tables and delegates everything else.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, BooleanBuilder, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{SchemaProvider, Session as CatalogSession, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, TableType, Volatility, create_udf};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{Expr, SessionContext};

use super::backend::{Backend, Backends};
use super::cursor::Cursors;
use super::session::{SharedVars, lock};

/// Replaces the connection's `pg_catalog` schema with one that also has `pg_stat_activity`
/// and `pg_cursors`, and registers the backend functions.
pub(crate) fn install(
    ctx: &SessionContext,
    catalog: &str,
    backend: &Arc<Backend>,
    backends: &Arc<Backends>,
    cursors: &Arc<Cursors>,
    vars: &SharedVars,
) -> Result<()> {
    let catalog = ctx.catalog(catalog).ok_or_else(|| {
        DataFusionError::Configuration(format!("catalog {catalog} is not registered"))
    })?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Configuration("pg_catalog is not installed".to_owned()))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(SessionViews {
            inner,
            backends: Arc::clone(backends),
            cursors: Arc::clone(cursors),
        }),
    )?;
    ctx.register_udf(backend_pid_udf(Arc::clone(backend)));
    ctx.register_udf(cancel_backend_udf(Arc::clone(backends), Arc::clone(vars)));
    Ok(())
}

/// `pg_catalog` plus the session views.
#[derive(Debug)]
struct SessionViews {
    inner: Arc<dyn SchemaProvider>,
    backends: Arc<Backends>,
    cursors: Arc<Cursors>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors").finish_non_exhaustive()
    }
}

const VIEWS: [&str; 2] = ["pg_stat_activity", "pg_cursors"];

#[async_trait]
impl SchemaProvider for SessionViews {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.extend(VIEWS.iter().map(|v| (*v).to_owned()));
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match name.to_ascii_lowercase().as_str() {
            "pg_stat_activity" => Ok(Some(Arc::new(LiveTable {
                schema: activity_schema(),
                rows: Rows::Activity(Arc::clone(&self.backends)),
            }))),
            "pg_cursors" => Ok(Some(Arc::new(LiveTable {
                schema: cursors_schema(),
                rows: Rows::Cursors(Arc::clone(&self.cursors)),
            }))),
            _ => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        VIEWS.contains(&name.to_ascii_lowercase().as_str()) || self.inner.table_exist(name)
    }
}

fn timestamptz() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn activity_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("datid", DataType::Int32, true),
        text("datname"),
        Field::new("pid", DataType::Int32, false),
        Field::new("leader_pid", DataType::Int32, true),
        Field::new("usesysid", DataType::Int32, true),
        text("usename"),
        text("application_name"),
        text("client_addr"),
        text("client_hostname"),
        Field::new("client_port", DataType::Int32, true),
        Field::new("backend_start", timestamptz(), true),
        Field::new("xact_start", timestamptz(), true),
        Field::new("query_start", timestamptz(), true),
        Field::new("state_change", timestamptz(), true),
        text("wait_event_type"),
        text("wait_event"),
        text("state"),
        text("backend_xid"),
        text("backend_xmin"),
        Field::new("query_id", DataType::Int64, true),
        text("query"),
        text("backend_type"),
    ]))
}

fn cursors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("statement", DataType::Utf8, false),
        Field::new("is_holdable", DataType::Boolean, false),
        Field::new("is_binary", DataType::Boolean, false),
        Field::new("is_scrollable", DataType::Boolean, false),
        Field::new("creation_time", timestamptz(), false),
    ]))
}

#[derive(Debug)]
enum Rows {
    Activity(Arc<Backends>),
    Cursors(Arc<Cursors>),
}

/// A table computed from the server's state each time it is scanned.
#[derive(Debug)]
struct LiveTable {
    schema: SchemaRef,
    rows: Rows,
}

impl LiveTable {
    fn batch(&self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = match &self.rows {
            Rows::Activity(backends) => {
                let rows = backends.activity();
                let n = rows.len();
                let text = |f: &dyn Fn(usize) -> Option<String>| -> ArrayRef {
                    Arc::new((0..n).map(f).collect::<StringArray>())
                };
                let nulls_i32 = || -> ArrayRef { Arc::new(Int32Array::from(vec![None; n])) };
                let ts = |f: &dyn Fn(usize) -> Option<i64>| -> ArrayRef {
                    Arc::new(
                        (0..n)
                            .map(f)
                            .collect::<TimestampMicrosecondArray>()
                            .with_timezone("UTC"),
                    )
                };
                vec![
                    nulls_i32(),
                    text(&|_| Some(super::connection::CATALOG.to_owned())),
                    Arc::new(rows.iter().map(|r| r.pid).collect::<Int32Array>()),
                    nulls_i32(),
                    nulls_i32(),
                    text(&|i| Some(rows[i].user.clone())),
                    text(&|i| Some(rows[i].application_name.clone())),
                    text(&|i| Some(rows[i].client_addr.clone())),
                    text(&|_| None),
                    Arc::new(
                        rows.iter()
                            .map(|r| Some(r.client_port))
                            .collect::<Int32Array>(),
                    ),
                    ts(&|i| Some(rows[i].backend_start.timestamp_micros())),
                    ts(&|_| None),
                    ts(&|i| rows[i].query_start.map(|t| t.timestamp_micros())),
                    ts(&|i| Some(rows[i].state_change.timestamp_micros())),
                    text(&|_| None),
                    text(&|_| None),
                    text(&|i| Some(rows[i].state.to_owned())),
                    text(&|_| None),
                    text(&|_| None),
                    Arc::new(Int64Array::from(vec![None; n])),
                    text(&|i| Some(rows[i].query.clone())),
                    text(&|_| Some("client backend".to_owned())),
                ]
            }
            Rows::Cursors(cursors) => {
                let rows = cursors.list();
                let flag = |f: &dyn Fn(usize) -> bool| -> ArrayRef {
                    Arc::new(
                        (0..rows.len())
                            .map(|i| Some(f(i)))
                            .collect::<BooleanArray>(),
                    )
                };
                vec![
                    Arc::new(
                        rows.iter()
                            .map(|r| Some(r.name.clone()))
                            .collect::<StringArray>(),
                    ),
                    Arc::new(
                        rows.iter()
                            .map(|r| Some(r.statement.clone()))
                            .collect::<StringArray>(),
                    ),
                    flag(&|i| rows[i].is_holdable),
                    flag(&|i| rows[i].is_binary),
                    flag(&|i| rows[i].is_scrollable),
                    Arc::new(
                        rows.iter()
                            .map(|r| Some(r.creation_time.timestamp_micros()))
                            .collect::<TimestampMicrosecondArray>()
                            .with_timezone("UTC"),
                    ),
                ]
            }
        };
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![vec![self.batch()?]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// `pg_backend_pid()`: the process id this connection was given in BackendKeyData.
fn backend_pid_udf(backend: Arc<Backend>) -> ScalarUDF {
    create_udf(
        "pg_backend_pid",
        vec![],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Int32(Some(backend.pid())),
            ))
        }),
    )
}

/// `pg_cancel_backend(pid)`: cancels that connection's running statement, if it belongs
/// to the same user (as PostgreSQL allows without pg_signal_backend); true if found.
fn cancel_backend_udf(backends: Arc<Backends>, vars: SharedVars) -> ScalarUDF {
    create_udf(
        "pg_cancel_backend",
        vec![DataType::Int64],
        DataType::Boolean,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| {
            let user = lock(&vars)
                .get("session_authorization")
                .unwrap_or("")
                .to_owned();
            let pids = ColumnarValue::values_to_arrays(args)?;
            let pids = pids
                .first()
                .and_then(|a| a.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(|| {
                    DataFusionError::Plan("pg_cancel_backend expects an integer pid".to_owned())
                })?;
            let mut out = BooleanBuilder::with_capacity(pids.len());
            for pid in pids.iter() {
                match pid.and_then(|p| i32::try_from(p).ok()) {
                    Some(pid) => out.append_value(backends.cancel_pid(pid, &user)?),
                    None => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// Qualifies the session views when a query names them without `pg_catalog.` (as
/// datafusion-pg-catalog does for the catalog tables it knows).
pub(crate) fn qualify_views(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
    let _ = datafusion::sql::sqlparser::ast::visit_relations_mut(statement, |name| {
        if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice()
            && VIEWS.iter().any(|v| v.eq_ignore_ascii_case(&ident.value))
        {
            *name = ObjectName(vec![
                ObjectNamePart::Identifier(Ident::new("pg_catalog")),
                name.0[0].clone(),
            ]);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}
