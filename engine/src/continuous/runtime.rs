//! Incremental evaluation: accumulators per (window, key), the watermark, emission.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::DataType;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::plan::{CqPlan, QueryShape, RowOp};
use super::{
    CqError, CqMetrics, CqOutput, CqSpec, EmitPolicy, InputError, OnLate, OutputKind, Position,
};

/// Per source partition: how far its event time got, and when it last sent data.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct PartitionState {
    pub max_ts: Option<i64>,
    pub last_seen_us: i64,
    pub position: Option<Position>,
}

/// The accumulators of one (window, key).
#[derive(Debug)]
pub(crate) struct GroupState {
    pub values: Vec<ScalarValue>,
    pub accs: Vec<Box<dyn Accumulator>>,
    pub threshold_fired: bool,
    pub closed: bool,
}

pub(crate) type GroupKey = (i64, OwnedRow);

/// A running continuous query: feed it batches, collect its output rows.
#[derive(Debug)]
pub struct CqRuntime {
    pub(crate) spec: CqSpec,
    pub(crate) plan: CqPlan,
    pub(crate) emit: EmitPolicy,
    pub(crate) partitions: BTreeMap<String, PartitionState>,
    /// Event-time watermark in µs; `None` before any data or clock.
    pub(crate) watermark: Option<i64>,
    pub(crate) groups: BTreeMap<GroupKey, GroupState>,
    pub(crate) converter: Option<RowConverter>,
    pub(crate) metrics: CqMetrics,
}

/// Where a window stands relative to the watermark.
enum WindowStatus {
    Open,
    Late,
    Expired,
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl CqRuntime {
    /// Plans `spec.body_sql` and starts with empty state.
    pub async fn new(spec: CqSpec) -> Result<Self, CqError> {
        let plan = CqPlan::new(&spec).await?;
        let emit = plan.emit_policy(spec.emit, &spec.body_sql)?;
        let converter = match &plan.agg {
            Some(agg) => {
                let fields = (0..agg.group_exprs.len())
                    .map(|i| SortField::new(agg.schema.field(i).data_type().clone()))
                    .collect();
                Some(RowConverter::new(fields)?)
            }
            None => None,
        };
        Ok(Self {
            spec,
            plan,
            emit,
            partitions: BTreeMap::new(),
            watermark: None,
            groups: BTreeMap::new(),
            converter,
            metrics: CqMetrics::default(),
        })
    }

    /// Shape A or B.
    pub fn shape(&self) -> QueryShape {
        self.plan.shape
    }

    /// The emit policy in force (requested, or picked from HAVING's monotonicity).
    pub fn emit_policy(&self) -> EmitPolicy {
        self.emit
    }

    /// The event-time watermark in µs since the epoch.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Counters: rows in, late rows, overflow.
    pub fn metrics(&self) -> &CqMetrics {
        &self.metrics
    }

    /// Live (window, key) states.
    pub fn live_keys(&self) -> usize {
        self.groups.len()
    }

    /// The last position seen per partition, to resume consumption after a restore.
    pub fn positions(&self) -> BTreeMap<String, Position> {
        self.partitions
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), p.position.clone()?)))
            .collect()
    }

    /// Feeds one `logs` batch read at `position` of `partition`; `now_us` is the wall clock.
    pub fn process(
        &mut self,
        partition: &str,
        position: Position,
        batch: &RecordBatch,
        now_us: i64,
    ) -> Result<Vec<CqOutput>, CqError> {
        check_logs_schema(batch)?;
        self.metrics.rows_in += batch.num_rows() as u64;
        let max_ts = max_event_time(batch, self.time_index())?;
        let mut out = Vec::new();
        match self.plan.shape {
            QueryShape::PerRow => {
                let (rows, _) = apply(
                    &self.plan.pre,
                    batch.clone(),
                    (0..batch.num_rows()).collect(),
                )?;
                if rows.num_rows() > 0 {
                    out.push(CqOutput {
                        rows,
                        kind: OutputKind::Row,
                        window_start: Vec::new(),
                        window_end: Vec::new(),
                        late: false,
                    });
                }
            }
            QueryShape::Windowed => self.aggregate(batch, &mut out)?,
        }
        let p = self.partitions.entry(partition.to_string()).or_default();
        p.max_ts = p.max_ts.max(max_ts);
        p.last_seen_us = now_us;
        p.position = Some(position);
        out.extend(self.advance(now_us)?);
        Ok(out)
    }

    /// Moves the watermark for wall-clock time `now_us` (a timer tick with no data) and
    /// emits the windows that closed.
    pub fn advance(&mut self, now_us: i64) -> Result<Vec<CqOutput>, CqError> {
        let delay = micros(self.spec.watermark);
        let idle = micros(self.spec.idle_timeout);
        let floor = now_us.saturating_sub(delay.saturating_add(micros(self.spec.max_ingest_delay)));
        let from_partitions = self
            .partitions
            .values()
            .filter(|p| now_us.saturating_sub(p.last_seen_us) < idle)
            .filter_map(|p| p.max_ts.map(|t| t.saturating_sub(delay)))
            .min();
        let w = from_partitions
            .unwrap_or(i64::MIN)
            .max(floor)
            .max(self.watermark.unwrap_or(i64::MIN));
        self.watermark = Some(w);
        self.close_windows(w)
    }

    /// End of input (e.g. a backtest): closes every window.
    pub fn finish(&mut self) -> Result<Vec<CqOutput>, CqError> {
        self.watermark = Some(i64::MAX);
        self.close_windows(i64::MAX)
    }

    fn time_index(&self) -> usize {
        self.plan.window.as_ref().map_or(0, |w| w.time_index)
    }

    fn window_len(&self) -> i64 {
        self.plan
            .window
            .as_ref()
            .map_or(0, |w| w.spec.size_ns / 1_000)
    }

    fn status(&self, start: i64) -> WindowStatus {
        let end = start + self.window_len();
        match self.watermark {
            Some(w) if w >= end.saturating_add(micros(self.spec.allowed_lateness)) => {
                WindowStatus::Expired
            }
            Some(w) if w >= end => WindowStatus::Late,
            _ => WindowStatus::Open,
        }
    }

    fn aggregate(&mut self, batch: &RecordBatch, out: &mut Vec<CqOutput>) -> Result<(), CqError> {
        let (Some(window), Some(agg)) = (&self.plan.window, &self.plan.agg) else {
            return Ok(());
        };
        let Some(ts) = batch
            .column(window.time_index)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
        else {
            return Err(InputError::EventTimeNotTimestamp.into());
        };
        // One row per (input row, window containing it).
        let mut rows = Vec::with_capacity(ts.len());
        let mut starts = Vec::with_capacity(ts.len());
        for i in 0..ts.len() {
            if ts.is_null(i) {
                continue;
            }
            for s in window.spec.starts(ts.value(i), 1_000) {
                rows.push(i as u32);
                starts.push(s);
            }
        }
        let indices = UInt32Array::from(rows);
        let mut columns = batch
            .columns()
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()?;
        let len = self.window_len();
        if window.append_columns {
            for (name, shift) in [("window_start", 0), ("window_end", len)] {
                let field = window.schema.field_with_name(name)?;
                let values = Int64Array::from(starts.iter().map(|s| s + shift).collect::<Vec<_>>());
                columns.push(cast(&values, field.data_type())?);
            }
        }
        let windowed = RecordBatch::try_new(Arc::clone(&window.schema), columns)?;
        let (input, ids) = apply(&self.plan.pre, windowed, (0..starts.len()).collect())?;
        if input.num_rows() == 0 {
            return Ok(());
        }
        let group_arrays = agg
            .group_exprs
            .iter()
            .map(|e| e.evaluate(&input)?.into_array(input.num_rows()))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let converter = self.converter.as_ref().expect("shape B has a converter");
        let keys = converter.convert_columns(&group_arrays)?;
        let mut by_group: BTreeMap<GroupKey, Vec<u32>> = BTreeMap::new();
        for (j, id) in ids.iter().enumerate() {
            by_group
                .entry((starts[*id], keys.row(j).owned()))
                .or_default()
                .push(j as u32);
        }
        let args = agg
            .aggs
            .iter()
            .map(|(a, filter)| {
                let values = a
                    .expressions()
                    .iter()
                    .map(|e| e.evaluate(&input)?.into_array(input.num_rows()))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let mask = filter
                    .as_ref()
                    .map(|f| f.evaluate(&input)?.into_array(input.num_rows()))
                    .transpose()?;
                Ok((values, mask))
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;

        let mut touched = BTreeSet::new();
        let mut late_touched = BTreeSet::new();
        for (key, members) in by_group {
            let n = members.len() as u64;
            match self.status(key.0) {
                WindowStatus::Expired => {
                    self.metrics.late_rows_dropped += n;
                    self.metrics.late_rows_beyond_lateness += n;
                    continue;
                }
                WindowStatus::Late if self.spec.on_late == OnLate::Drop => {
                    self.metrics.late_rows_dropped += n;
                    continue;
                }
                WindowStatus::Late => {
                    self.metrics.late_rows_updated += n;
                    late_touched.insert(key.clone());
                }
                WindowStatus::Open => {
                    touched.insert(key.clone());
                }
            }
            if !self.groups.contains_key(&key) {
                if self.spec.max_keys.is_some_and(|m| self.groups.len() >= m) {
                    self.metrics.key_overflow_rows += n;
                    touched.remove(&key);
                    late_touched.remove(&key);
                    continue;
                }
                let first = members[0] as usize;
                let values = group_arrays
                    .iter()
                    .map(|a| ScalarValue::try_from_array(a, first))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let accs = agg
                    .aggs
                    .iter()
                    .map(|(a, _)| a.create_accumulator())
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                self.groups.insert(
                    key.clone(),
                    GroupState {
                        values,
                        accs,
                        threshold_fired: false,
                        closed: false,
                    },
                );
            }
            let state = self.groups.get_mut(&key).expect("inserted above");
            let members = UInt32Array::from(members);
            for (acc, (values, mask)) in state.accs.iter_mut().zip(&args) {
                let mut taken = values
                    .iter()
                    .map(|v| take(v, &members, None))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(mask) = mask {
                    let mask = take(mask, &members, None)?;
                    let mask = mask
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| CqError::from(InputError::FilterNotBoolean))?;
                    taken = taken
                        .iter()
                        .map(|v| arrow::compute::filter(v, mask))
                        .collect::<Result<Vec<_>, _>>()?;
                }
                acc.update_batch(&taken)?;
            }
        }

        let late: Vec<GroupKey> = late_touched.into_iter().collect();
        out.extend(self.emit_rows(&late, OutputKind::LateUpdate, true)?);
        if self.emit == EmitPolicy::OnThreshold {
            let candidates: Vec<GroupKey> = touched
                .into_iter()
                .filter(|k| self.groups.get(k).is_some_and(|g| !g.threshold_fired))
                .collect();
            out.extend(self.emit_rows(&candidates, OutputKind::Threshold, false)?);
        }
        Ok(())
    }

    fn close_windows(&mut self, w: i64) -> Result<Vec<CqOutput>, CqError> {
        let len = self.window_len();
        let lateness = micros(self.spec.allowed_lateness);
        let closing: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|((start, _), g)| !g.closed && w >= start + len)
            .map(|(k, _)| k.clone())
            .collect();
        let out = self.emit_rows(&closing, OutputKind::WindowClose, false)?;
        for k in &closing {
            if let Some(g) = self.groups.get_mut(k) {
                g.closed = true;
            }
        }
        self.groups
            .retain(|(start, _), _| w < (start + len).saturating_add(lateness));
        Ok(out.into_iter().collect())
    }

    /// Evaluates `keys` and runs HAVING and the SELECT list over them; marks threshold
    /// rows as fired.
    fn emit_rows(
        &mut self,
        keys: &[GroupKey],
        kind: OutputKind,
        late: bool,
    ) -> Result<Option<CqOutput>, CqError> {
        let Some(agg) = &self.plan.agg else {
            return Ok(None);
        };
        if keys.is_empty() {
            return Ok(None);
        }
        let groups = agg.group_exprs.len();
        let mut columns: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(keys.len()); agg.schema.fields().len()];
        for key in keys {
            let g = self.groups.get_mut(key).expect("emitted keys are live");
            for (c, v) in g.values.iter().enumerate() {
                columns[c].push(v.clone());
            }
            for (a, acc) in g.accs.iter_mut().enumerate() {
                columns[groups + a].push(acc.evaluate()?);
            }
        }
        let arrays = columns
            .into_iter()
            .zip(agg.schema.fields())
            .map(|(values, field)| {
                let array = ScalarValue::iter_to_array(values)?;
                if array.data_type() == field.data_type() {
                    Ok(array)
                } else {
                    Ok(cast(&array, field.data_type())?)
                }
            })
            .collect::<Result<Vec<ArrayRef>, CqError>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&agg.schema), arrays)?;
        let (rows, ids) = apply(&self.plan.post, batch, (0..keys.len()).collect())?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let len = self.window_len();
        let window_start: Vec<i64> = ids.iter().map(|&i| keys[i].0).collect();
        if kind == OutputKind::Threshold {
            for &i in &ids {
                if let Some(g) = self.groups.get_mut(&keys[i]) {
                    g.threshold_fired = true;
                }
            }
        }
        Ok(Some(CqOutput {
            rows,
            kind,
            window_end: window_start.iter().map(|s| s + len).collect(),
            window_start,
            late,
        }))
    }
}

/// The runtime evaluates columns by position, so the batch must be shaped like `logs`.
fn check_logs_schema(batch: &RecordBatch) -> Result<(), CqError> {
    let want = crate::model::logs_schema();
    let got = batch.schema();
    let same = got.fields().len() == want.fields().len()
        && got
            .fields()
            .iter()
            .zip(want.fields())
            .all(|(g, w)| g.name() == w.name() && g.data_type() == w.data_type());
    if same {
        Ok(())
    } else {
        Err(InputError::NotLogs(got).into())
    }
}

fn max_event_time(batch: &RecordBatch, index: usize) -> Result<Option<i64>, CqError> {
    let column = batch.column(index);
    let ts = column
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| {
            CqError::from(InputError::ColumnNotTimestamp {
                index,
                data_type: column.data_type().clone(),
            })
        })?;
    Ok(arrow::compute::max(ts))
}

/// Runs row steps over `batch`, keeping `ids` (one per row) aligned with surviving rows.
fn apply(
    ops: &[RowOp],
    mut batch: RecordBatch,
    mut ids: Vec<usize>,
) -> Result<(RecordBatch, Vec<usize>), CqError> {
    for op in ops {
        match op {
            RowOp::Filter(predicate) => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = match mask.data_type() {
                    DataType::Boolean => mask,
                    _ => cast(&mask, &DataType::Boolean)?,
                };
                let mask = mask
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .expect("cast to boolean");
                // NULL counts as false, as in WHERE.
                let mask = match mask.nulls() {
                    Some(_) => arrow::compute::prep_null_mask_filter(mask),
                    None => mask.clone(),
                };
                batch = filter_record_batch(&batch, &mask)?;
                ids = ids
                    .into_iter()
                    .zip(mask.values().iter())
                    .filter_map(|(id, keep)| keep.then_some(id))
                    .collect();
            }
            RowOp::Project(exprs, schema) => {
                let columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch)?.into_array(batch.num_rows()))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let options =
                    arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                batch = RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)?;
            }
        }
    }
    Ok((batch, ids))
}
