//! `logs`, `logs_hot`, `logs_cold` and `dead_letters` as DataFusion tables over both tiers.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{
    Between, BinaryExpr, Cast, Expr, Operator, TableProviderFilterPushDown, TryCast,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use crate::catalog::ColdFile;
use crate::cluster::runtime::Cluster;
use crate::cold::ColdStore;
use crate::hot::cassandra::Keep;
use crate::hot::{HotEntry, Tiers};

/// Which stored table a provider reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `logs`: the log records.
    Logs,
    /// `dead_letters`: the records that could not become rows.
    DeadLetters,
}

impl TableKind {
    /// The Arrow schema of this table, the same in every tier and mode.
    pub fn schema(self) -> SchemaRef {
        match self {
            Self::Logs => crate::model::logs_schema(),
            Self::DeadLetters => crate::model::dead_letters_schema(),
        }
    }
}

/// Which tiers a provider reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierScope {
    /// Both: the hot entries above the horizon and the committed cold files.
    Both,
    /// Only the hot buffer.
    Hot,
    /// Only the committed Parquet files.
    Cold,
}

/// A table over the tiers; each scan takes one consistent snapshot of them.
pub struct TierTable {
    kind: TableKind,
    scope: TierScope,
    schema: SchemaRef,
    tiers: Arc<Tiers>,
    cold: ColdStore,
    /// Cluster mode: the hot tier is Cassandra's, cut by the manifest's [`TierCut`].
    cluster: Option<Arc<Cluster>>,
}

impl fmt::Debug for TierTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierTable")
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .finish()
    }
}

impl TierTable {
    /// A provider for `kind` over `scope`.
    pub fn new(kind: TableKind, scope: TierScope, tiers: Arc<Tiers>, cold: ColdStore) -> Self {
        let schema = kind.schema();
        Self {
            kind,
            scope,
            schema,
            tiers,
            cold,
            cluster: None,
        }
    }

    /// A provider whose hot tier is the cluster's Cassandra, not the local buffer.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Cluster mode: Cassandra's rows the snapshot's cut leaves hot.
    async fn cluster_hot_plan(
        &self,
        cluster: &Cluster,
        state: &dyn Session,
        manifest: &crate::catalog::Manifest,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let store = cluster.store().ok_or_else(|| {
            datafusion::error::DataFusionError::External(
                format!(
                    "the Cassandra hot tier is not connected yet: {}",
                    cluster.ready().err().unwrap_or_default()
                )
                .into(),
            )
        })?;
        let keep = Keep::Untiered(manifest.cut.clone().map(Arc::new));
        let exec = store
            .cassandra_table(self.kind)
            .plan(
                projection,
                filters,
                limit,
                keep,
                state.config().target_partitions(),
            )
            .await?;
        Ok(Arc::new(exec))
    }

    /// The column time filters prune on.
    fn time_column(&self) -> &'static str {
        match self.kind {
            TableKind::Logs => "timestamp",
            TableKind::DeadLetters => "ingest_time",
        }
    }

    async fn cold_plan(
        &self,
        state: &dyn Session,
        files: &[&ColdFile],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        scan_cold_files(
            state,
            &self.cold,
            files,
            Arc::clone(&self.schema),
            projection,
            filters,
            limit,
        )
        .await
    }
}

/// A scan of the cold `files`, read as `schema`.
pub(crate) async fn scan_cold_files(
    state: &dyn Session,
    cold: &ColdStore,
    files: &[&ColdFile],
    schema: SchemaRef,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    cold.register(state.runtime_env());
    let urls = files
        .iter()
        .map(|f| cold.file_url(&f.path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)?
        .scan(state, projection, filters, limit)
        .await
}

#[async_trait]
impl TableProvider for TierTable {
    fn schema(&self) -> SchemaRef {
        match self.promotes() {
            true => crate::fields::table_schema(&self.tiers.manifest().fields),
            false => Arc::clone(&self.schema),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune hot entries, cold files and row groups; DataFusion still applies them.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(cluster) = &self.cluster
            && !cluster.catalog_loaded()
        {
            // The first scans after a start read the manifest themselves rather than
            // answer with an empty cold tier.
            let store = cluster.store().ok_or_else(|| {
                datafusion::error::DataFusionError::External(
                    format!(
                        "the cold manifest is in Cassandra, which is not connected yet: {}",
                        cluster.ready().err().unwrap_or_default()
                    )
                    .into(),
                )
            })?;
            let m = store
                .read_manifest()
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            if m.version > self.tiers.manifest().version {
                self.tiers.publish(m);
            }
            cluster.set_catalog_loaded();
        }
        let snapshot = self.tiers.snapshot();
        let range = TimeRange::from_filters(filters, self.time_column());
        if self.promotes() && !snapshot.manifest.fields.is_empty() {
            return self
                .promoted_scan(state, &snapshot, range, projection, filters, limit)
                .await;
        }
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if let (Some(cluster), true) = (&self.cluster, self.scope != TierScope::Cold) {
            inputs.push(
                self.cluster_hot_plan(
                    cluster,
                    state,
                    &snapshot.manifest,
                    projection,
                    filters,
                    limit,
                )
                .await?,
            );
        } else if self.scope != TierScope::Cold {
            let batches: Vec<_> = snapshot
                .hot
                .iter()
                .filter(|e| range.overlaps(self.entry_range(e)))
                .map(|e| match self.kind {
                    TableKind::Logs => e.logs.clone(),
                    TableKind::DeadLetters => e.dead_letters.clone(),
                })
                .filter(|b| b.num_rows() > 0)
                .collect();
            if !batches.is_empty() {
                let partitions = split_partitions(batches, state.config().target_partitions());
                let mem = MemorySourceConfig::try_new_exec(
                    &partitions,
                    Arc::clone(&self.schema),
                    projection.cloned(),
                )?;
                inputs.push(mem);
            }
        }
        if self.scope != TierScope::Hot {
            let files = match self.kind {
                TableKind::Logs => &snapshot.manifest.logs,
                TableKind::DeadLetters => &snapshot.manifest.dead_letters,
            };
            let files: Vec<&ColdFile> = files
                .iter()
                .filter(|f| range.overlaps(Some((f.min_ts, f.max_ts))))
                .collect();
            if !files.is_empty() {
                inputs.push(
                    self.cold_plan(state, &files, projection, filters, limit)
                        .await?,
                );
            }
        }
        if inputs.is_empty() {
            let schema = datafusion::common::project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(inputs)
    }
}

impl TierTable {
    /// Whether this table shows promoted fields: `logs` in embedded mode (cluster mode
    /// keeps the fixed schema; its tiering does not promote).
    fn promotes(&self) -> bool {
        self.kind == TableKind::Logs && self.cluster.is_none()
    }

    /// The promoted field `name` of this table and its table-level type, if it is one.
    pub fn promoted_field(&self, name: &str) -> Option<crate::fields::FieldType> {
        if !self.promotes() {
            return None;
        }
        let manifest = self.tiers.manifest();
        manifest
            .fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.kind)
    }

    /// A scan of `logs` whose schema has the registry's fields (`query/promoted.rs`).
    async fn promoted_scan(
        &self,
        state: &dyn Session,
        snapshot: &crate::hot::Snapshot,
        range: TimeRange,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        use super::promoted::{Wanted, cold_plans, hot_plan};
        let registry = &snapshot.manifest.fields;
        let schema = crate::fields::table_schema(registry);
        let fixed = crate::model::logs_schema().fields().len();
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        let wanted = projection
            .iter()
            .map(|i| match i.checked_sub(fixed) {
                None => Ok(Wanted::Fixed(*i)),
                Some(p) => registry.get(p).map(Wanted::Promoted).ok_or_else(|| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "column {i} of logs is gone from the field registry"
                    ))
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if self.scope != TierScope::Cold {
            let batches: Vec<_> = snapshot
                .hot
                .iter()
                .filter(|e| range.overlaps(self.entry_range(e)))
                .map(|e| e.logs.clone())
                .filter(|b| b.num_rows() > 0)
                .collect();
            if !batches.is_empty() {
                let partitions = split_partitions(batches, state.config().target_partitions());
                inputs.push(hot_plan(state, &partitions, &wanted)?);
            }
        }
        if self.scope != TierScope::Hot {
            let files: Vec<&ColdFile> = snapshot
                .manifest
                .logs
                .iter()
                .filter(|f| range.overlaps(Some((f.min_ts, f.max_ts))))
                .collect();
            if !files.is_empty() {
                inputs
                    .extend(cold_plans(state, &self.cold, &files, &wanted, filters, limit).await?);
            }
        }
        match inputs.len() {
            0 => {
                let schema = datafusion::common::project_schema(&schema, Some(projection))?;
                Ok(Arc::new(EmptyExec::new(schema)))
            }
            1 => Ok(inputs.remove(0)),
            _ => UnionExec::try_new(inputs),
        }
    }

    fn entry_range(&self, e: &HotEntry) -> Option<(i64, i64)> {
        match self.kind {
            TableKind::Logs => e.ts_range,
            TableKind::DeadLetters => e.dl_range,
        }
    }
}

/// Spreads batches over at most `n` partitions so hot scans use every core.
fn split_partitions(
    batches: Vec<arrow::array::RecordBatch>,
    n: usize,
) -> Vec<Vec<arrow::array::RecordBatch>> {
    let n = n.clamp(1, batches.len().max(1));
    let mut parts = vec![Vec::new(); n];
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % n].push(b);
    }
    parts
}

/// The closed interval `[lo, hi]` (µs) that filters on the time column allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub lo: i64,
    pub hi: i64,
}

impl TimeRange {
    const ALL: TimeRange = TimeRange {
        lo: i64::MIN,
        hi: i64::MAX,
    };

    /// Intersects what every conjunct of every filter says about `column`.
    pub fn from_filters(filters: &[Expr], column: &str) -> Self {
        let mut r = Self::ALL;
        for f in filters {
            r.narrow(f, column);
        }
        r
    }

    fn overlaps(&self, range: Option<(i64, i64)>) -> bool {
        match range {
            Some((min, max)) => min <= self.hi && max >= self.lo,
            None => true,
        }
    }

    fn narrow(&mut self, e: &Expr, column: &str) {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                self.narrow(left, column);
                self.narrow(right, column);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, v) = match (
                    is_column(left, column),
                    micros(right),
                    is_column(right, column),
                    micros(left),
                ) {
                    (true, Some(v), _, _) => (*op, v),
                    (_, _, true, Some(v)) => match op.swap() {
                        Some(op) => (op, v),
                        None => return,
                    },
                    _ => return,
                };
                match op {
                    Operator::Eq => {
                        self.lo = self.lo.max(v);
                        self.hi = self.hi.min(v);
                    }
                    // Strict bounds are kept inclusive: literals in other units were
                    // rounded to µs, and pruning must only ever keep too much.
                    Operator::Gt | Operator::GtEq => self.lo = self.lo.max(v),
                    Operator::Lt | Operator::LtEq => self.hi = self.hi.min(v),
                    _ => {}
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_column(expr, column) => {
                if let Some(v) = micros(low) {
                    self.lo = self.lo.max(v);
                }
                if let Some(v) = micros(high) {
                    self.hi = self.hi.min(v);
                }
            }
            _ => {}
        }
    }
}

fn is_column(e: &Expr, column: &str) -> bool {
    matches!(e, Expr::Column(c) if c.name == column)
}

/// A timestamp literal in microseconds, or a cast of a literal (e.g. of a string) to a
/// timestamp that the optimizer left unfolded.
fn micros(e: &Expr) -> Option<i64> {
    let v = match e {
        Expr::Literal(v, _) => v.clone(),
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field })
            if matches!(field.data_type(), DataType::Timestamp(..)) =>
        {
            let Expr::Literal(v, _) = expr.as_ref() else {
                return None;
            };
            v.cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None))
                .ok()?
        }
        _ => return None,
    };
    match &v {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        _ => None,
    }
}
