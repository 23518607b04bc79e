//! Incremental evaluation: accumulators per (window, key), the watermark, emission.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::utils::collect_columns;

use super::groups::{GroupId, GroupTable};
use super::plan::{CqPlan, QueryShape, RowOp};
use super::shared::{SharedEval, ops_key};
use super::{
    CheckpointError, CqError, CqMetrics, CqOutput, CqSpec, EmitPolicy, InputError, OnLate,
    OutputKind, Position,
};

/// Per source partition: how far its event time got, and when it last sent data.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct PartitionState {
    pub max_ts: Option<i64>,
    pub last_seen_us: i64,
    pub position: Option<Position>,
}

/// A running continuous query: feed it batches, collect its output rows.
#[derive(Debug)]
pub struct CqRuntime {
    pub(crate) spec: CqSpec,
    pub(crate) plan: CqPlan,
    pub(crate) emit: EmitPolicy,
    pub(crate) partitions: BTreeMap<String, PartitionState>,
    /// Event-time watermark in µs; `None` before any data or clock.
    pub(crate) watermark: Option<i64>,
    pub(crate) groups: GroupTable,
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
            groups: GroupTable::default(),
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
        self.process_shared(partition, position, batch, now_us, None)
    }

    /// [`Self::process`], reusing what other rules computed over the same `batch`
    /// (`shared.rs`).
    pub(crate) fn process_shared(
        &mut self,
        partition: &str,
        position: Position,
        batch: &RecordBatch,
        now_us: i64,
        shared: Option<&SharedEval>,
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
            QueryShape::Windowed => self.aggregate(batch, &mut out, shared)?,
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

    fn aggregate(
        &mut self,
        batch: &RecordBatch,
        out: &mut Vec<CqOutput>,
        shared: Option<&SharedEval>,
    ) -> Result<(), CqError> {
        let (Some(window), Some(agg)) = (&self.plan.window, &self.plan.agg) else {
            return Ok(());
        };
        // WHERE terms over `logs` columns run before the rows are windowed, so a selective
        // rule copies and groups only the rows it keeps; rules with the same terms filter
        // the batch once between them.
        let base = &self.plan.pre[..self.plan.base_filters];
        let base_key = shared.map(|_| ops_key(base));
        let filtered = match (shared, &base_key) {
            (Some(shared), Some(key)) if !base.is_empty() => shared.batch(key, || {
                apply(base, batch.clone(), Vec::new()).ok().map(|(b, _)| b)
            }),
            _ => None,
        };
        let batch = match filtered {
            Some(b) => b,
            None => apply(base, batch.clone(), Vec::new())?.0,
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let Some(ts) = batch
            .column(window.time_index)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
        else {
            return Err(InputError::EventTimeNotTimestamp.into());
        };
        // One row per (input row, window containing it): the batch itself when each row
        // is in exactly one window (TUMBLE, date_bin) and none lacks an event time.
        let mut starts = Vec::with_capacity(ts.len());
        let one_window_per_row =
            window.spec.size_ns == window.spec.slide_ns && ts.null_count() == 0;
        let mut columns = if one_window_per_row {
            starts.extend(
                ts.values()
                    .iter()
                    .map(|&t| window.spec.last_start(t, 1_000)),
            );
            batch.columns().to_vec()
        } else {
            let mut rows = Vec::with_capacity(ts.len());
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
            batch
                .columns()
                .iter()
                .map(|c| take(c, &indices, None))
                .collect::<Result<Vec<_>, _>>()?
        };
        let len = self.window_len();
        if window.append_columns {
            for (name, shift) in [("window_start", 0), ("window_end", len)] {
                let field = window.schema.field_with_name(name)?;
                let values = Int64Array::from(starts.iter().map(|s| s + shift).collect::<Vec<_>>());
                columns.push(cast(&values, field.data_type())?);
            }
        }
        let windowed = RecordBatch::try_new(Arc::clone(&window.schema), columns)?;
        let (input, ids) = apply(
            &self.plan.pre[self.plan.base_filters..],
            windowed,
            (0..starts.len()).collect(),
        )?;
        if input.num_rows() == 0 {
            return Ok(());
        }
        // When the rows grouped are exactly the filtered batch's, a key over `logs`
        // columns alone (`source`, not `window_start`) is the same array for every rule
        // with the same filter: computed once.
        let same_rows = one_window_per_row && self.plan.pre.len() == self.plan.base_filters;
        let logs_width = batch.num_columns();
        let group_arrays = agg
            .group_exprs
            .iter()
            .map(|e| {
                if let (Some(shared), Some(base_key), true) = (shared, &base_key, same_rows)
                    && collect_columns(e).iter().all(|c| c.index() < logs_width)
                {
                    let key = format!("{base_key}GROUP {e}");
                    let evaluate = || e.evaluate(&batch)?.into_array(batch.num_rows());
                    if let Some(a) = shared.array(&key, || evaluate().ok()) {
                        return Ok(a);
                    }
                }
                e.evaluate(&input)?.into_array(input.num_rows())
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let converter = self
            .converter
            .as_ref()
            .ok_or_else(|| CqError::from(CheckpointError::NoKeyConverter))?;
        let keys = converter.convert_columns(&group_arrays)?;

        // The batch's groups, numbered in order of first sight, then visited sorted by
        // (window start, key) so that which keys an overflow admits is deterministic.
        let mut local: HashMap<(i64, &[u8]), u32> = HashMap::new();
        let mut first: Vec<(i64, usize)> = Vec::new();
        let mut row_group = Vec::with_capacity(ids.len());
        for (j, id) in ids.iter().enumerate() {
            let start = starts[*id];
            let next = first.len() as u32;
            let g = *local.entry((start, keys.row(j).data())).or_insert(next);
            if g == next {
                first.push((start, j));
            }
            row_group.push(g);
        }
        // Rows ordered by group (a counting sort): each group's rows are one slice.
        let mut offsets = vec![0usize; first.len() + 1];
        for &g in &row_group {
            offsets[g as usize + 1] += 1;
        }
        for i in 1..offsets.len() {
            offsets[i] += offsets[i - 1];
        }
        let mut fill = offsets.clone();
        let mut order = vec![0u32; row_group.len()];
        for (j, &g) in row_group.iter().enumerate() {
            order[fill[g as usize]] = j as u32;
            fill[g as usize] += 1;
        }
        let order = UInt32Array::from(order);
        let args = agg
            .aggs
            .iter()
            .map(|(a, filter)| {
                let values = a
                    .expressions()
                    .iter()
                    .map(|e| {
                        let v = e.evaluate(&input)?.into_array(input.num_rows())?;
                        Ok(take(&v, &order, None)?)
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let mask = filter
                    .as_ref()
                    .map(|f| -> datafusion::error::Result<BooleanArray> {
                        let m = f.evaluate(&input)?.into_array(input.num_rows())?;
                        let m = take(&m, &order, None)?;
                        let m = m.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
                            datafusion::error::DataFusionError::Execution(
                                InputError::FilterNotBoolean.to_string(),
                            )
                        })?;
                        // NULL counts as false, as in FILTER (WHERE …).
                        Ok(match m.nulls() {
                            Some(_) => arrow::compute::prep_null_mask_filter(m),
                            None => m.clone(),
                        })
                    })
                    .transpose()?;
                Ok((values, mask))
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;

        let mut visit: Vec<u32> = (0..first.len() as u32).collect();
        visit.sort_by(|&a, &b| {
            let (sa, ja) = first[a as usize];
            let (sb, jb) = first[b as usize];
            (sa, keys.row(ja)).cmp(&(sb, keys.row(jb)))
        });
        let mut touched = Vec::new();
        let mut late_touched = Vec::new();
        for g in visit {
            let (start, j) = first[g as usize];
            let (from, to) = (offsets[g as usize], offsets[g as usize + 1]);
            let n = (to - from) as u64;
            let late = match self.status(start) {
                WindowStatus::Expired => {
                    self.metrics.late_rows_dropped += n;
                    self.metrics.late_rows_beyond_lateness += n;
                    continue;
                }
                WindowStatus::Late if self.spec.on_late == OnLate::Drop => {
                    self.metrics.late_rows_dropped += n;
                    continue;
                }
                WindowStatus::Late => true,
                WindowStatus::Open => false,
            };
            let key = keys.row(j);
            let id = match self.groups.find(start, key.as_ref()) {
                Some(id) => id,
                None => {
                    if self.spec.max_keys.is_some_and(|m| self.groups.len() >= m) {
                        self.metrics.key_overflow_rows += n;
                        continue;
                    }
                    let accs = agg
                        .aggs
                        .iter()
                        .map(|(a, _)| a.create_accumulator())
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    self.groups
                        .insert(start, key.as_ref(), accs.into_boxed_slice())
                }
            };
            if late {
                self.metrics.late_rows_updated += n;
                late_touched.push(id);
            } else {
                touched.push(id);
            }
            let Some(state) = self.groups.get_mut(id) else {
                continue;
            };
            for (acc, (values, mask)) in state.accs.iter_mut().zip(&args) {
                let mut slices: Vec<ArrayRef> =
                    values.iter().map(|v| v.slice(from, to - from)).collect();
                if let Some(mask) = mask {
                    let mask = mask.slice(from, to - from);
                    slices = slices
                        .iter()
                        .map(|v| arrow::compute::filter(v, &mask))
                        .collect::<Result<Vec<_>, _>>()?;
                }
                acc.update_batch(&slices)?;
            }
        }

        out.extend(self.emit_rows(&late_touched, OutputKind::LateUpdate, true)?);
        if self.emit == EmitPolicy::OnThreshold {
            touched.retain(|&id| self.groups.get(id).is_some_and(|g| !g.threshold_fired));
            out.extend(self.emit_rows(&touched, OutputKind::Threshold, false)?);
        }
        Ok(())
    }

    fn close_windows(&mut self, w: i64) -> Result<Vec<CqOutput>, CqError> {
        let len = self.window_len();
        let lateness = micros(self.spec.allowed_lateness);
        // A window closes when `w >= start + len`, i.e. for every start <= w - len.
        let closing = self
            .groups
            .unclosed_before(w.saturating_sub(len).saturating_add(1));
        let out = self.emit_rows(&closing, OutputKind::WindowClose, false)?;
        for &id in &closing {
            self.groups.set_closed(id);
        }
        // Kept while `w < start + len + lateness`, i.e. gone for start <= w - len - lateness.
        self.groups.remove_before(
            w.saturating_sub(len.saturating_add(lateness))
                .saturating_add(1),
        );
        Ok(out.into_iter().collect())
    }

    /// The GROUP BY values of `ids`, decoded from their keys.
    pub(crate) fn group_values(&self, ids: &[GroupId]) -> Result<Vec<ArrayRef>, CqError> {
        let converter = self
            .converter
            .as_ref()
            .ok_or_else(|| CqError::from(CheckpointError::NoKeyConverter))?;
        let parser = converter.parser();
        let rows = ids
            .iter()
            .filter_map(|&id| self.groups.get(id))
            .map(|g| parser.parse(&g.key));
        Ok(converter.convert_rows(rows)?)
    }

    /// Evaluates `ids` and runs HAVING and the SELECT list over them; marks threshold
    /// rows as fired.
    fn emit_rows(
        &mut self,
        ids: &[GroupId],
        kind: OutputKind,
        late: bool,
    ) -> Result<Option<CqOutput>, CqError> {
        let Some(agg) = &self.plan.agg else {
            return Ok(None);
        };
        let ids: Vec<GroupId> = ids
            .iter()
            .copied()
            .filter(|&id| self.groups.get(id).is_some())
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let mut arrays = self.group_values(&ids)?;
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(ids.len()); agg.aggs.len()];
        let mut starts = Vec::with_capacity(ids.len());
        for &id in &ids {
            let Some(g) = self.groups.get_mut(id) else {
                continue;
            };
            starts.push(g.start);
            for (a, acc) in g.accs.iter_mut().enumerate() {
                values[a].push(acc.evaluate()?);
            }
        }
        for (v, field) in values
            .into_iter()
            .zip(agg.schema.fields().iter().skip(agg.group_exprs.len()))
        {
            let array = ScalarValue::iter_to_array(v)?;
            arrays.push(if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type())?
            });
        }
        for (array, field) in arrays.iter_mut().zip(agg.schema.fields()) {
            if array.data_type() != field.data_type() {
                *array = cast(array, field.data_type())?;
            }
        }
        let batch = RecordBatch::try_new(Arc::clone(&agg.schema), arrays)?;
        let (rows, kept) = apply(&self.plan.post, batch, (0..ids.len()).collect())?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let len = self.window_len();
        let window_start: Vec<i64> = kept.iter().map(|&i| starts[i]).collect();
        if kind == OutputKind::Threshold {
            for &i in &kept {
                if let Some(g) = self.groups.get_mut(ids[i]) {
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
    if Arc::ptr_eq(&got, &want) {
        return Ok(());
    }
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
                if !ids.is_empty() {
                    ids = ids
                        .into_iter()
                        .zip(mask.values().iter())
                        .filter_map(|(id, keep)| keep.then_some(id))
                        .collect();
                }
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
