//! [`CassandraScanExec`]: reads (bucket, shard) partitions, paged, as Arrow batches.
//!
//! Each output partition reads every n-th Cassandra partition of the scan in turn and
//! streams batches of at most [`BATCH_ROWS`] rows as pages arrive; it stops early once the
//! scan's limit is met or the consumer is gone.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, RecordBatch, RecordBatchOptions, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use tokio::sync::mpsc::Sender;

use super::scan::external;
use super::{CassandraMetrics, Shared, err};
use crate::EngineError;
use crate::catalog::TierCut;

/// Rows per Arrow batch a scan emits, at most.
const BATCH_ROWS: usize = 8192;

/// What every output partition of a scan needs to read its share of Cassandra partitions.
#[derive(Clone)]
pub(super) struct Read {
    pub(super) shared: Arc<Shared>,
    pub(super) statement: PreparedStatement,
    /// Inclusive bounds on the clustering time column.
    pub(super) time: (i64, i64),
    /// Values of the pushed equalities, in CQL order.
    pub(super) equalities: Vec<String>,
    /// The projected output schema.
    pub(super) schema: SchemaRef,
    pub(super) limit: Option<usize>,
    /// Which rows to keep, by their time and Kafka identity.
    pub(super) keep: Keep,
}

/// Which rows a scan keeps, judged by the time and Kafka identity that [`Keep::IDENTITY`]
/// appends to the selected columns (every row when `All`).
#[derive(Debug, Clone)]
pub enum Keep {
    /// Every row (the raw hot table).
    All,
    /// The rows the cold tier does not hold under this cut (`None`: nothing tiered yet).
    Untiered(Option<Arc<TierCut>>),
    /// The rows a tiering round moves: covered by `to` and not by `from`.
    Moving {
        from: Option<Arc<TierCut>>,
        to: Arc<TierCut>,
    },
}

impl Keep {
    /// The columns appended to the selection when rows are judged.
    pub(super) const IDENTITY: [&'static str; 3] = ["topic", "kpart", "koffset"];

    /// Whether the scan must select the time column and [`Self::IDENTITY`] after the
    /// projected ones.
    pub(super) fn judges(&self) -> bool {
        !matches!(self, Self::All | Self::Untiered(None))
    }

    /// Whether the row (projected columns, then time, topic, partition, offset) is kept.
    fn keeps(&self, row: &Row) -> bool {
        if !self.judges() {
            return true;
        }
        let n = row.columns.len();
        let (Some(time), Some(topic), Some(partition), Some(offset)) = (
            row.columns.get(n.wrapping_sub(4)),
            row.columns.get(n.wrapping_sub(3)),
            row.columns.get(n.wrapping_sub(2)),
            row.columns.get(n.wrapping_sub(1)),
        ) else {
            return true;
        };
        let (
            Some(CqlValue::BigInt(time)),
            Some(CqlValue::Text(topic)),
            Some(CqlValue::Int(partition)),
            Some(CqlValue::BigInt(offset)),
        ) = (time, topic, partition, offset)
        else {
            // A row without a Kafka identity was never tiered.
            return !matches!(self, Self::Moving { .. });
        };
        let covered = |cut: &Option<Arc<TierCut>>| {
            cut.as_ref()
                .is_some_and(|c| c.covers(*time, topic, *partition, *offset))
        };
        match self {
            Self::All => true,
            Self::Untiered(cut) => !covered(cut),
            Self::Moving { from, to } => {
                to.covers(*time, topic, *partition, *offset) && !covered(from)
            }
        }
    }
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
    pub(super) fn new(
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
                CassandraMetrics::add(&self.shared.metrics.rows_read, 1);
                if !self.keep.keeps(&row) {
                    continue;
                }
                rows.push(row);
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
            // Columns past the projection are the identity `Keep` judged by.
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
