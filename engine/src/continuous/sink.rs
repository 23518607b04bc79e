//! Where a CQ's rows go besides `alerts`: `INTO t` (its output rows) and `NOTIFY (TABLE t)`
//! (its alert rows), both upserted into a [`TableStore`] table (CONTINUOUS_QUERIES.md §5.5).
//!
//! Upsert keys are facts of the input, so a replay after a restart meets the same keys:
//! - shape B (`INTO`): the window start and every non-window GROUP BY key, which must
//!   therefore all be in the SELECT list;
//! - shape A (`INTO`): the whole output row, so identical output rows are one row (add a
//!   distinguishing column such as `ingest_time` to keep them apart);
//! - `NOTIFY (TABLE t)`: the `alert_id`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::sql::sqlparser::ast::ObjectName;
use logsphere_sql::{Channel, CreateContinuousQuery};

use super::alerts::Alert;
use super::plan::{CqPlan, RowOp};
use super::system_tables::{alerts_batch, alerts_schema};
use super::table_store::{TableStore, table_schema};
use super::{CqError, CqOutput, QueryShape};

/// Names a managed table may not take: the engine's own tables.
pub const RESERVED_TABLES: [&str; 7] = [
    "logs",
    "logs_hot",
    "logs_cold",
    "dead_letters",
    "alerts",
    "alert_events",
    "continuous_queries",
];

/// How rows map to upsert keys.
#[derive(Debug)]
enum Key {
    /// Shape B: window start plus these output columns.
    Window(Vec<usize>, RowConverter),
    /// Shape A: the whole row.
    Row(RowConverter),
    /// Alert rows: `alert_id`.
    AlertId,
}

/// One table a CQ writes.
#[derive(Debug)]
pub(crate) struct Sink {
    pub table: String,
    pub schema: SchemaRef,
    key: Key,
}

/// The table `name` names, normalised as DataFusion does (unquoted → lower case), in the
/// public schema.
fn table_name(name: &ObjectName, clause: &str) -> Result<String, CqError> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            let id = p.as_ident().ok_or_else(|| {
                CqError::Table(format!("{clause} {name}: not a plain table name"))
            })?;
            Ok(if id.quote_style.is_some() {
                id.value.clone()
            } else {
                id.value.to_lowercase()
            })
        })
        .collect::<Result<_, CqError>>()?;
    match parts.as_slice() {
        [t] => Ok(t.clone()),
        [s, t] if s == "public" => Ok(t.clone()),
        _ => Err(CqError::Table(format!(
            "{clause} {name}: LogSphere tables live in the public schema; write {clause} <table>"
        ))),
    }
}

fn reserved(name: &str, clause: &str) -> Result<(), CqError> {
    if RESERVED_TABLES.contains(&name) {
        return Err(CqError::TableExists(format!(
            "{clause} {name}: \"{name}\" is a LogSphere system table; choose another name"
        )));
    }
    Ok(())
}

/// Output columns (indices) holding each GROUP BY key that is not the window; an error
/// names a key the SELECT list leaves out.
fn group_key_columns(plan: &CqPlan) -> Result<Vec<usize>, String> {
    let Some(agg) = &plan.agg else {
        return Ok(Vec::new());
    };
    let groups = agg.group_exprs.len();
    // For each column of the current step: the group key it carries, if any.
    let mut carries: Vec<Option<usize>> = (0..agg.schema.fields().len())
        .map(|i| (i < groups).then_some(i))
        .collect();
    for op in &plan.post {
        if let RowOp::Project(exprs, _) = op {
            carries = exprs
                .iter()
                .map(|e| {
                    e.downcast_ref::<Column>()
                        .and_then(|c| carries.get(c.index()).copied().flatten())
                })
                .collect();
        }
    }
    let mut columns = Vec::new();
    for (g, e) in agg.group_exprs.iter().enumerate() {
        let is_window = match e.downcast_ref::<Column>() {
            Some(c) => c.name() == "window_start" || c.name() == "window_end",
            None => e
                .downcast_ref::<ScalarFunctionExpr>()
                .is_some_and(|f| f.name() == "date_bin"),
        };
        if is_window {
            continue;
        }
        match carries.iter().position(|c| *c == Some(g)) {
            Some(i) => columns.push(i),
            None => return Err(agg.schema.field(g).name().clone()),
        }
    }
    Ok(columns)
}

fn converter(schema: &SchemaRef, columns: &[usize]) -> Result<RowConverter, CqError> {
    Ok(RowConverter::new(
        columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?)
}

impl Sink {
    /// The sinks of `cq` (INTO first, then each NOTIFY TABLE other than `alerts`, which is
    /// the system table itself), checked against the body's plan.
    pub(crate) fn for_cq(cq: &CreateContinuousQuery, plan: &CqPlan) -> Result<Vec<Self>, CqError> {
        let mut sinks = Vec::new();
        let output = plan.output_schema();
        if let Some(into) = &cq.into {
            let table = table_name(into, "INTO")?;
            reserved(&table, "INTO")?;
            if output.fields().iter().any(|f| {
                f.name()
                    .eq_ignore_ascii_case(super::table_store::UPDATED_AT)
            }) {
                return Err(CqError::Table(format!(
                    "INTO {table}: the SELECT outputs a column named updated_at, which INTO adds \
                     itself; rename it"
                )));
            }
            let key = match plan.shape() {
                QueryShape::Windowed => {
                    let columns = group_key_columns(plan).map_err(|missing| {
                        CqError::Table(format!(
                            "INTO {table}: rows are upserted by (window, GROUP BY keys), so the \
                             SELECT list must include the GROUP BY key `{missing}`"
                        ))
                    })?;
                    let conv = converter(&output, &columns)?;
                    Key::Window(columns, conv)
                }
                QueryShape::PerRow => {
                    let all: Vec<usize> = (0..output.fields().len()).collect();
                    Key::Row(converter(&output, &all)?)
                }
            };
            sinks.push(Sink {
                schema: table_schema(&output),
                table,
                key,
            });
        }
        for channel in &cq.notify {
            let Channel::Table(name) = channel else {
                continue;
            };
            let table = table_name(name, "NOTIFY TABLE")?;
            if table == "alerts" {
                continue;
            }
            reserved(&table, "NOTIFY TABLE")?;
            if cq.alert.is_none() {
                return Err(CqError::Table(format!(
                    "NOTIFY (TABLE {table}) copies alert rows, but the query has no ALERT clause"
                )));
            }
            if sinks.iter().any(|s: &Sink| s.table == table) {
                return Err(CqError::Table(format!(
                    "table \"{table}\" is named twice (INTO and NOTIFY TABLE take different rows)"
                )));
            }
            sinks.push(Sink {
                schema: table_schema(&alerts_schema()),
                table,
                key: Key::AlertId,
            });
        }
        Ok(sinks)
    }

    /// True for `NOTIFY (TABLE …)`, which copies alert rows.
    pub(crate) fn takes_alerts(&self) -> bool {
        matches!(self.key, Key::AlertId)
    }

    /// Upserts one batch of CQ output rows (INTO sinks only); `version` orders the changes
    /// of a row across nodes in cluster mode (the query's event-time watermark).
    pub(crate) fn write_output(
        &self,
        store: &TableStore,
        out: &CqOutput,
        updated_at: i64,
        version: Option<i64>,
    ) -> Result<(), CqError> {
        let rows = &out.rows;
        let keys: Vec<Vec<u8>> = match &self.key {
            Key::AlertId => return Ok(()),
            Key::Row(conv) => {
                let encoded = conv.convert_columns(rows.columns())?;
                (0..rows.num_rows())
                    .map(|i| encoded.row(i).as_ref().to_vec())
                    .collect()
            }
            Key::Window(columns, conv) => {
                let cols: Vec<_> = columns
                    .iter()
                    .map(|&i| Arc::clone(rows.column(i)))
                    .collect();
                let encoded = conv.convert_columns(&cols)?;
                (0..rows.num_rows())
                    .map(|i| {
                        let start = out.window_start.get(i).copied().unwrap_or(i64::MIN);
                        let mut k = start.to_be_bytes().to_vec();
                        k.extend_from_slice(encoded.row(i).as_ref());
                        k
                    })
                    .collect()
            }
        };
        store.upsert_versioned(&self.table, &keys, rows, updated_at, version)
    }

    /// Upserts the current rows of `alerts` (NOTIFY TABLE sinks only).
    pub(crate) fn write_alerts<'a>(
        &self,
        store: &TableStore,
        alerts: impl Iterator<Item = &'a Alert>,
        updated_at: i64,
    ) -> Result<(), CqError> {
        if !self.takes_alerts() {
            return Ok(());
        }
        let alerts: Vec<&Alert> = alerts.collect();
        if alerts.is_empty() {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = alerts
            .iter()
            .map(|a| a.alert_id.as_bytes().to_vec())
            .collect();
        let batch: RecordBatch = alerts_batch(alerts.into_iter())?;
        store.upsert(&self.table, &keys, &batch, updated_at)
    }
}
