//! `logs` and `dead_letters` in Cassandra as DataFusion tables.
//!
//! A scan reads the (bucket, shard) partitions of the buckets that the `buckets` table
//! lists inside the time filter's range, restricting the clustering time column to that
//! range in each. Equality on `source`, `log_level` or `topic` is pushed into the CQL with
//! `ALLOW FILTERING`, which Cassandra 5 accepts when the partition key is fully bound (it
//! filters within the one partition, see `tests::filtered_query`). Every filter is still
//! answered `Inexact`: strict time bounds are read inclusively and DataFusion re-checks.
//! The plan that reads is [`CassandraScanExec`](super::exec::CassandraScanExec).

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue, project_schema};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use scylla::statement::prepared::PreparedStatement;

use super::exec::{CassandraScanExec, Keep, Read};
use super::{Shared, err, prepare};
use crate::EngineError;
use crate::query::tables::{TableKind, TimeRange};

/// Columns whose equality with a string literal is pushed into the CQL (`logs` only).
const PUSHED_EQUALITIES: [&str; 3] = ["source", "log_level", "topic"];

/// How a stored table maps to its model schema.
#[derive(Debug)]
struct TableSpec {
    /// CQL table name.
    table: &'static str,
    /// Model column whose filters select buckets.
    time_field: &'static str,
    /// CQL clustering column holding it.
    time_column: &'static str,
    /// CQL column of each model column, in schema order.
    columns: &'static [&'static str],
}

const LOGS: TableSpec = TableSpec {
    table: "logs",
    time_field: "timestamp",
    time_column: "ts",
    columns: &[
        "ts",
        "log_level",
        "message",
        "source",
        "topic",
        "attributes",
        "ingest_time",
    ],
};

const DEAD_LETTERS: TableSpec = TableSpec {
    table: "dead_letters",
    time_field: "ingest_time",
    time_column: "ingest_time",
    columns: &["ingest_time", "origin", "reason", "raw", "raw_text"],
};

/// A hot table in Cassandra; each scan reads the partitions its time filter allows.
pub struct CassandraTable {
    shared: Arc<Shared>,
    kind: TableKind,
    schema: SchemaRef,
}

impl fmt::Debug for CassandraTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CassandraTable")
            .field("keyspace", &self.shared.keyspace)
            .field("kind", &self.kind)
            .finish()
    }
}

impl CassandraTable {
    pub(super) fn new(shared: Arc<Shared>, kind: TableKind) -> Self {
        let schema = kind.schema();
        Self {
            shared,
            kind,
            schema,
        }
    }

    fn spec(&self) -> &'static TableSpec {
        match self.kind {
            TableKind::Logs => &LOGS,
            TableKind::DeadLetters => &DEAD_LETTERS,
        }
    }

    /// The registered buckets of this table that may hold rows of `range`, ascending.
    async fn buckets(&self, range: TimeRange) -> Result<Vec<i64>, EngineError> {
        let s = &self.shared;
        let cql = format!(
            "SELECT bucket FROM {}.buckets WHERE kind = ? AND bucket >= ? AND bucket <= ?",
            s.keyspace
        );
        let statement = statement(s, &cql).await?;
        let lo = s.layout.bucket(range.lo);
        let hi = s.layout.bucket(range.hi);
        let context = || format!("listing buckets of {}", self.spec().table);
        s.session
            .execute_iter(statement, (self.spec().table, lo, hi))
            .await
            .map_err(|e| err(context(), e))?
            .rows_stream::<(i64,)>()
            .map_err(|e| err(context(), e))?
            .map_ok(|(b,)| b)
            .try_collect()
            .await
            .map_err(|e| err(context(), e))
    }

    /// `column = 'literal'` conjuncts on the columns pushed into the CQL, first per column.
    fn equalities(&self, filters: &[Expr]) -> Vec<(&'static str, String)> {
        let mut found: Vec<(&'static str, String)> = Vec::new();
        if self.kind != TableKind::Logs {
            return found;
        }
        let mut conjuncts = Vec::new();
        for f in filters {
            split_and(f, &mut conjuncts);
        }
        for e in conjuncts {
            if let Some((column, value)) = string_equality(e)
                && !found.iter().any(|(c, _)| *c == column)
            {
                found.push((column, value));
            }
        }
        found
    }
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other),
    }
}

/// `col = 'text'` (either way round) on one of [`PUSHED_EQUALITIES`].
fn string_equality(e: &Expr) -> Option<(&'static str, String)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = e
    else {
        return None;
    };
    let (column, literal) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, v),
        _ => return None,
    };
    let column = PUSHED_EQUALITIES.into_iter().find(|p| *p == column.name)?;
    match literal {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some((column, s.clone())),
        _ => None,
    }
}

/// The prepared statement for `cql`, prepared once and kept (at the read consistency, paged).
/// The cache stays small: one text per projection and set of pushed equalities.
pub(super) async fn statement(
    shared: &Shared,
    cql: &str,
) -> Result<PreparedStatement, EngineError> {
    let cached = shared
        .scan_statements
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(cql)
        .cloned();
    if let Some(p) = cached {
        return Ok(p);
    }
    let mut p = prepare(&shared.session, cql).await?;
    p.set_consistency(shared.read_consistency);
    p.set_page_size(shared.page_size);
    p.set_is_idempotent(true);
    shared
        .scan_statements
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(cql.to_string(), p.clone());
    Ok(p)
}

pub(super) fn external(e: EngineError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for CassandraTable {
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
        // Time bounds and string equalities narrow the CQL; DataFusion re-checks them all.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let outputs = state.config().target_partitions();
        Ok(Arc::new(
            self.plan(projection, filters, limit, Keep::All, outputs)
                .await?,
        ))
    }
}

impl CassandraTable {
    /// The scan of the rows `keep` selects, in at most `outputs` output partitions.
    pub async fn plan(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
        keep: Keep,
        outputs: usize,
    ) -> Result<CassandraScanExec> {
        let spec = self.spec();
        let range = TimeRange::from_filters(filters, spec.time_field);
        let buckets = if range.lo > range.hi {
            Vec::new()
        } else {
            self.buckets(range).await.map_err(external)?
        };
        let schema = project_schema(&self.schema, projection)?;
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut columns: Vec<&str> = indices
            .iter()
            .map(|i| {
                spec.columns
                    .get(*i)
                    .copied()
                    .ok_or_else(|| DataFusionError::Plan(format!("{}: no column {i}", spec.table)))
            })
            .collect::<Result<_>>()?;
        if keep.judges() {
            columns.push(spec.time_column);
            columns.extend(Keep::IDENTITY);
        }
        let equalities = self.equalities(filters);
        let cql = select_cql(&self.shared.keyspace, spec, &columns, &equalities);
        let prepared = statement(&self.shared, &cql).await.map_err(external)?;
        let shards = self.shared.layout.shards;
        let partitions: Vec<(i64, i16)> = buckets
            .iter()
            .flat_map(|b| (0..shards).map(move |s| (*b, s)))
            .collect();
        let outputs = outputs.clamp(1, partitions.len().max(1));
        let read = Read {
            shared: Arc::clone(&self.shared),
            statement: prepared,
            time: (range.lo, range.hi),
            equalities: equalities.into_iter().map(|(_, v)| v).collect(),
            schema: Arc::clone(&schema),
            limit,
            keep,
        };
        Ok(CassandraScanExec::new(
            spec.table, cql, read, buckets, partitions, outputs,
        ))
    }
}

/// `SELECT … WHERE bucket = ? AND shard = ? AND <time> >= ? AND <time> <= ? [AND c = ?]…`.
fn select_cql(
    keyspace: &str,
    spec: &TableSpec,
    columns: &[&str],
    equalities: &[(&str, String)],
) -> String {
    // An empty projection (count(*)) still needs a column to select.
    let selected = if columns.is_empty() {
        spec.time_column.to_string()
    } else {
        columns.join(", ")
    };
    let t = spec.time_column;
    let mut cql = format!(
        "SELECT {selected} FROM {keyspace}.{} WHERE bucket = ? AND shard = ? AND {t} >= ? AND {t} <= ?",
        spec.table
    );
    for (column, _) in equalities {
        cql.push_str(&format!(" AND {column} = ?"));
    }
    if !equalities.is_empty() {
        cql.push_str(" ALLOW FILTERING");
    }
    cql
}
