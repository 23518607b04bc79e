//! `logs` and `dead_letters` in Cassandra as DataFusion tables.
//!
//! A scan reads the (bucket, shard) partitions of the buckets that the `buckets` table
//! lists inside the time filter's range, restricting the clustering time column to that
//! range in each. Equality on `source`, `log_level` or `topic` is pushed into the CQL with
//! `ALLOW FILTERING`, which Cassandra 5 accepts when the partition key is fully bound (it
//! filters within the one partition, see `tests::filtered_query`). Every filter is still
//! answered `Inexact`: strict time bounds are read inclusively and DataFusion re-checks.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, RecordBatch, RecordBatchOptions, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue, project_schema};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use tokio::sync::mpsc::Sender;

use super::{CassandraMetrics, Shared, err, prepare};
use crate::EngineError;
use crate::query::tables::{TableKind, TimeRange};

/// Rows per Arrow batch a scan emits, at most.
const BATCH_ROWS: usize = 8192;

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
        let schema = match kind {
            TableKind::Logs => crate::model::logs_schema(),
            TableKind::DeadLetters => crate::model::dead_letters_schema(),
        };
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
async fn statement(shared: &Shared, cql: &str) -> Result<PreparedStatement, EngineError> {
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

fn external(e: EngineError) -> DataFusionError {
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
        let columns: Vec<&str> = indices
            .iter()
            .map(|i| {
                spec.columns
                    .get(*i)
                    .copied()
                    .ok_or_else(|| DataFusionError::Plan(format!("{}: no column {i}", spec.table)))
            })
            .collect::<Result<_>>()?;
        let equalities = self.equalities(filters);
        let cql = select_cql(&self.shared.keyspace, spec, &columns, &equalities);
        let prepared = statement(&self.shared, &cql).await.map_err(external)?;
        let shards = self.shared.layout.shards;
        let partitions: Vec<(i64, i16)> = buckets
            .iter()
            .flat_map(|b| (0..shards).map(move |s| (*b, s)))
            .collect();
        let outputs = state
            .config()
            .target_partitions()
            .clamp(1, partitions.len().max(1));
        let read = Read {
            shared: Arc::clone(&self.shared),
            statement: prepared,
            time: (range.lo, range.hi),
            equalities: equalities.into_iter().map(|(_, v)| v).collect(),
            schema: Arc::clone(&schema),
            limit,
        };
        Ok(Arc::new(CassandraScanExec::new(
            spec.table, cql, read, buckets, partitions, outputs,
        )))
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

/// What every output partition of a scan needs to read its share of Cassandra partitions.
#[derive(Clone)]
struct Read {
    shared: Arc<Shared>,
    statement: PreparedStatement,
    /// Inclusive bounds on the clustering time column.
    time: (i64, i64),
    /// Values of the pushed equalities, in CQL order.
    equalities: Vec<String>,
    /// The projected output schema.
    schema: SchemaRef,
    limit: Option<usize>,
}

/// Reads (bucket, shard) partitions of one Cassandra table, paged, as Arrow batches.
pub struct CassandraScanExec {
    table: &'static str,
    cql: String,
    read: Read,
    buckets: Vec<i64>,
    partitions: Vec<(i64, i16)>,
    outputs: usize,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for CassandraScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CassandraScanExec")
            .field("table", &self.table)
            .field("partitions", &self.partitions.len())
            .field("cql", &self.cql)
            .finish()
    }
}

impl CassandraScanExec {
    fn new(
        table: &'static str,
        cql: String,
        read: Read,
        buckets: Vec<i64>,
        partitions: Vec<(i64, i16)>,
        outputs: usize,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&read.schema)),
            Partitioning::UnknownPartitioning(outputs),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            table,
            cql,
            read,
            buckets,
            partitions,
            outputs,
            properties: Arc::new(properties),
        }
    }

    /// Number of Cassandra partitions (buckets × shards) the scan reads.
    pub fn cassandra_partitions(&self) -> usize {
        self.partitions.len()
    }
}

fn micros_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| us.to_string())
}

impl DisplayAs for CassandraScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let shards = self.read.shared.layout.shards;
        write!(
            f,
            "CassandraScanExec: table={}, partitions={} ({} buckets x {} shards)",
            self.table,
            self.partitions.len(),
            self.buckets.len(),
            shards
        )?;
        if let (Some(first), Some(last)) = (self.buckets.first(), self.buckets.last()) {
            write!(
                f,
                ", buckets={}..={}",
                micros_text(*first),
                micros_text(*last)
            )?;
        }
        if !matches!(t, DisplayFormatType::TreeRender) {
            write!(f, ", cql={}", self.cql)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for CassandraScanExec {
    fn name(&self) -> &str {
        "CassandraScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let share: Vec<(i64, i16)> = self
            .partitions
            .iter()
            .skip(partition)
            .step_by(self.outputs)
            .copied()
            .collect();
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.read.schema), 2);
        let tx = builder.tx();
        let read = self.read.clone();
        builder.spawn(async move { read.run(share, tx).await });
        Ok(builder.build())
    }
}

impl Read {
    /// Reads `partitions` in turn, sending batches of at most [`BATCH_ROWS`] rows.
    async fn run(self, partitions: Vec<(i64, i16)>, tx: Sender<Result<RecordBatch>>) -> Result<()> {
        let mut rows = Rows::new(&self.schema);
        let mut sent = 0usize;
        let limit = self.limit.unwrap_or(usize::MAX);
        for (bucket, shard) in partitions {
            let mut stream = self.partition(bucket, shard).await.map_err(external)?;
            while let Some(row) = stream.next().await {
                let row = row.map_err(|e| {
                    external(err(format!("reading partition ({bucket}, {shard})"), e))
                })?;
                rows.push(row);
                CassandraMetrics::add(&self.shared.metrics.rows_read, 1);
                let done = sent + rows.len() >= limit;
                if rows.len() >= BATCH_ROWS || done {
                    sent += rows.len();
                    let batch = rows.finish(&self.schema)?;
                    if tx.send(Ok(batch)).await.is_err() || done {
                        return Ok(()); // the consumer is gone, or the limit is met
                    }
                }
            }
        }
        if rows.len() > 0 {
            let batch = rows.finish(&self.schema)?;
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(())
    }

    /// The rows of one (bucket, shard) partition, paged.
    async fn partition(
        &self,
        bucket: i64,
        shard: i16,
    ) -> Result<
        impl futures::Stream<Item = Result<Row, scylla::errors::NextRowError>> + use<>,
        EngineError,
    > {
        let mut values = vec![
            CqlValue::BigInt(bucket),
            CqlValue::SmallInt(shard),
            CqlValue::BigInt(self.time.0),
            CqlValue::BigInt(self.time.1),
        ];
        values.extend(self.equalities.iter().cloned().map(CqlValue::Text));
        let context = || format!("reading partition ({bucket}, {shard})");
        self.shared
            .session
            .execute_iter(self.statement.clone(), values)
            .await
            .map_err(|e| err(context(), e))?
            .rows_stream::<Row>()
            .map_err(|e| err(context(), e))
    }
}

/// Arrow builders for the projected columns of scanned rows.
struct Rows {
    columns: Vec<Column>,
    len: usize,
}

enum Column {
    Micros(TimestampMicrosecondBuilder, DataType),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
}

impl Rows {
    fn new(schema: &SchemaRef) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(..) => {
                    Column::Micros(TimestampMicrosecondBuilder::new(), f.data_type().clone())
                }
                DataType::Binary => Column::Bytes(BinaryBuilder::new()),
                _ => Column::Text(StringBuilder::new()),
            })
            .collect();
        Self { columns, len: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Appends one row; a missing value becomes the type's empty value (columns are
    /// non-null in the model, and every write sets them all).
    fn push(&mut self, row: Row) {
        self.len += 1;
        for (column, value) in self.columns.iter_mut().zip(row.columns) {
            match (column, value) {
                (Column::Micros(b, _), Some(CqlValue::BigInt(v))) => b.append_value(v),
                (Column::Micros(b, _), _) => b.append_value(0),
                (Column::Text(b), Some(CqlValue::Text(v) | CqlValue::Ascii(v))) => {
                    b.append_value(v)
                }
                (Column::Text(b), _) => b.append_value(""),
                (Column::Bytes(b), Some(CqlValue::Blob(v))) => b.append_value(v),
                (Column::Bytes(b), _) => b.append_value([]),
            }
        }
    }

    /// The rows so far as a batch; the builders start over.
    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| -> Result<ArrayRef> {
                Ok(match c {
                    Column::Micros(b, t) => Arc::new(b.finish().with_data_type(t.clone())),
                    Column::Text(b) => Arc::new(b.finish()),
                    Column::Bytes(b) => Arc::new(b.finish()),
                })
            })
            .collect::<Result<_>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(self.len));
        self.len = 0;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            arrays,
            &options,
        )?)
    }
}
