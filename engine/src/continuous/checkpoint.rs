//! Checkpoints (§5.6): one format for all of a CQ's state.
//!
//! Layout: `LSCQ1`, a little-endian u32 header length, the JSON header, then the open
//! (window, key) states as one Arrow IPC batch of `Accumulator::state()` values. The JSON
//! header holds the runtime's partitions, watermark and counters and, for a CQ the
//! registry hosts, a `host` object with what `hosting.rs` keeps beside the runtime (name,
//! version, the WAL sequence covered, alerts, events, heartbeats), so state and alerts are
//! always written, replaced and read together.
//!
//! Files written before the host state moved into the header (`LSCQF1`, a u64 length, the
//! host JSON, then an `LSCQ1` runtime checkpoint) are still read: [`Checkpoint::decode`]
//! takes the host object from the outer frame, and the next checkpoint rewrites the file in
//! this format.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, new_empty_array};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::common::ScalarValue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::groups::GroupId;
use super::runtime::{CqRuntime, PartitionState};
use super::{CheckpointError, CqError, CqMetrics, CqSpec};

const MAGIC: &[u8] = b"LSCQ1";
/// The older host framing around an `LSCQ1` checkpoint; read, never written.
const LEGACY_HOST_MAGIC: &[u8] = b"LSCQF1";

#[derive(Serialize, Deserialize)]
struct Header {
    body_sql: String,
    watermark: Option<i64>,
    partitions: BTreeMap<String, PartitionState>,
    metrics: CqMetrics,
    threshold_fired: Vec<bool>,
    closed: Vec<bool>,
    /// What the host (the registry) keeps beside the runtime; absent for a bare runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<Box<RawValue>>,
}

fn json(e: serde_json::Error) -> CqError {
    CheckpointError::Json(e).into()
}

/// A decoded checkpoint: the header, and the IPC bytes of the states (not yet read).
pub(crate) struct Checkpoint<'a> {
    header: Header,
    ipc: &'a [u8],
}

impl<'a> Checkpoint<'a> {
    /// Reads the header of a checkpoint file, in this format or the legacy host framing.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, CqError> {
        if let Some(rest) = bytes.strip_prefix(LEGACY_HOST_MAGIC) {
            let (len, rest) = rest
                .split_at_checked(8)
                .ok_or_else(|| CqError::from(CheckpointError::Truncated))?;
            let mut len_bytes = [0u8; 8];
            len_bytes.copy_from_slice(len);
            let len = usize::try_from(u64::from_le_bytes(len_bytes))
                .map_err(|_| CqError::from(CheckpointError::HeaderTooLong))?;
            let (host, inner) = rest
                .split_at_checked(len)
                .ok_or_else(|| CqError::from(CheckpointError::TruncatedHeader))?;
            let host: Box<RawValue> = serde_json::from_slice(host).map_err(json)?;
            let mut checkpoint = Self::decode_runtime(inner)?;
            checkpoint.header.host = Some(host);
            return Ok(checkpoint);
        }
        Self::decode_runtime(bytes)
    }

    fn decode_runtime(bytes: &'a [u8]) -> Result<Self, CqError> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| CqError::from(CheckpointError::NotACheckpoint))?;
        let (len, rest) = rest
            .split_at_checked(4)
            .ok_or_else(|| CqError::from(CheckpointError::Truncated))?;
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let len = usize::try_from(u32::from_le_bytes(len_bytes))
            .map_err(|_| CqError::from(CheckpointError::HeaderTooLong))?;
        let (header, ipc) = rest
            .split_at_checked(len)
            .ok_or_else(|| CqError::from(CheckpointError::TruncatedHeader))?;
        let header: Header = serde_json::from_slice(header).map_err(json)?;
        Ok(Self { header, ipc })
    }

    /// The host's part of the checkpoint (`None`: a bare runtime checkpoint).
    pub(crate) fn host<H: DeserializeOwned>(&self) -> Result<Option<H>, CqError> {
        self.header
            .host
            .as_ref()
            .map(|raw| serde_json::from_str(raw.get()).map_err(json))
            .transpose()
    }
}

impl CqRuntime {
    /// Serializes the state needed to continue exactly where this CQ is.
    ///
    /// Takes `&mut self` because `Accumulator::state` does.
    pub fn checkpoint(&mut self) -> Result<Vec<u8>, CqError> {
        self.checkpoint_with::<()>(None)
    }

    /// [`Self::checkpoint`] with the host's state in the same header ([`Checkpoint::host`]).
    pub(crate) fn checkpoint_with<H: Serialize>(
        &mut self,
        host: Option<&H>,
    ) -> Result<Vec<u8>, CqError> {
        let host = host
            .map(|h| serde_json::value::to_raw_value(h).map_err(json))
            .transpose()?;
        let header = Header {
            body_sql: self.spec.body_sql.clone(),
            watermark: self.watermark,
            partitions: self.partitions.clone(),
            metrics: self.metrics.clone(),
            threshold_fired: Vec::new(),
            closed: Vec::new(),
            host,
        };
        let ids = self.groups.all_sorted();
        let mut header = header;
        for &id in &ids {
            if let Some(g) = self.groups.get(id) {
                header.threshold_fired.push(g.threshold_fired);
                header.closed.push(g.closed);
            }
        }
        let header = serde_json::to_vec(&header).map_err(json)?;
        let len = u32::try_from(header.len())
            .map_err(|_| CqError::from(CheckpointError::HeaderTooLong))?;
        let mut out = MAGIC.to_vec();
        out.extend(len.to_le_bytes());
        out.extend(header);
        if let Some(batch) = self.state_batch(&ids)? {
            let mut writer = StreamWriter::try_new(&mut out, &batch.schema())?;
            writer.write(&batch)?;
            writer.finish()?;
        }
        Ok(out)
    }

    /// Rebuilds a CQ for `spec` from [`checkpoint`](Self::checkpoint) bytes.
    pub async fn restore(spec: CqSpec, bytes: &[u8]) -> Result<Self, CqError> {
        Self::restore_from(spec, &Checkpoint::decode(bytes)?).await
    }

    /// Rebuilds a CQ for `spec` from a decoded checkpoint.
    pub(crate) async fn restore_from(
        spec: CqSpec,
        checkpoint: &Checkpoint<'_>,
    ) -> Result<Self, CqError> {
        let header = &checkpoint.header;
        if header.body_sql != spec.body_sql {
            return Err(CheckpointError::OtherBody.into());
        }
        let mut cq = CqRuntime::new(spec).await?;
        cq.watermark = header.watermark;
        cq.partitions = header.partitions.clone();
        cq.metrics = header.metrics.clone();
        if checkpoint.ipc.is_empty() {
            return Ok(cq);
        }
        let reader = StreamReader::try_new(checkpoint.ipc, None)?;
        let mut offset = 0;
        for batch in reader {
            let batch = batch?;
            cq.load_states(&batch, &header.threshold_fired, &header.closed, offset)?;
            offset += batch.num_rows();
        }
        Ok(cq)
    }

    /// window_start, the group values, then every accumulator's state fields, for `ids`
    /// (every live group, in [`super::groups::GroupTable::all_sorted`] order).
    fn state_batch(&mut self, ids: &[GroupId]) -> Result<Option<RecordBatch>, CqError> {
        let Some(agg) = &self.plan.agg else {
            return Ok(None);
        };
        let groups = agg.group_exprs.len();
        let mut fields = vec![Field::new(
            "window_start",
            arrow::datatypes::DataType::Int64,
            false,
        )];
        for f in agg.schema.fields().iter().take(groups) {
            fields.push(f.as_ref().clone().with_nullable(true));
        }
        for (i, (a, _)) in agg.aggs.iter().enumerate() {
            for f in a.state_fields()? {
                fields.push(Field::new(
                    format!("{i}.{}", f.name()),
                    f.data_type().clone(),
                    true,
                ));
            }
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        let key_columns = self.group_values(ids)?;
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); fields.len() - 1 - groups];
        let mut starts = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(g) = self.groups.get_mut(id) else {
                continue;
            };
            starts.push(g.start);
            let mut c = 0;
            for acc in g.accs.iter_mut() {
                for v in acc.state()? {
                    columns[c].push(v);
                    c += 1;
                }
            }
        }
        arrays.push(Arc::new(Int64Array::from(starts)));
        arrays.extend(key_columns);
        for (values, field) in columns.into_iter().zip(&fields[1 + groups..]) {
            let array = if values.is_empty() {
                new_empty_array(field.data_type())
            } else {
                let a = ScalarValue::iter_to_array(values)?;
                if a.data_type() == field.data_type() {
                    a
                } else {
                    cast(&a, field.data_type())?
                }
            };
            arrays.push(array);
        }
        Ok(Some(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            arrays,
        )?))
    }

    fn load_states(
        &mut self,
        batch: &RecordBatch,
        fired: &[bool],
        closed: &[bool],
        offset: usize,
    ) -> Result<(), CqError> {
        let Some(agg) = &self.plan.agg else {
            return Ok(());
        };
        let converter = self
            .converter
            .as_ref()
            .ok_or_else(|| CqError::from(CheckpointError::NoKeyConverter))?;
        let groups = agg.group_exprs.len();
        let starts = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| CqError::from(CheckpointError::WindowStartColumn))?;
        let group_arrays: Vec<ArrayRef> = (0..groups)
            .map(|c| {
                let a = Arc::clone(batch.column(1 + c));
                let want = agg.schema.field(c).data_type();
                if a.data_type() == want {
                    Ok(a)
                } else {
                    cast(&a, want)
                }
            })
            .collect::<Result<_, _>>()?;
        let keys = converter.convert_columns(&group_arrays)?;
        for row in 0..batch.num_rows() {
            let mut c = 1 + groups;
            let mut accs = Vec::with_capacity(agg.aggs.len());
            for (a, _) in &agg.aggs {
                let mut acc = a.create_accumulator()?;
                let n = a.state_fields()?.len();
                let states: Vec<ArrayRef> =
                    (c..c + n).map(|i| batch.column(i).slice(row, 1)).collect();
                acc.merge_batch(&states)?;
                accs.push(acc);
                c += n;
            }
            let start = starts.value(row);
            let key = keys.row(row);
            let id = match self.groups.find(start, key.as_ref()) {
                Some(id) => id,
                None => self
                    .groups
                    .insert(start, key.as_ref(), accs.into_boxed_slice()),
            };
            let i = offset + row;
            if fired.get(i).copied().unwrap_or(false)
                && let Some(g) = self.groups.get_mut(id)
            {
                g.threshold_fired = true;
            }
            if closed.get(i).copied().unwrap_or(false) {
                self.groups.set_closed(id);
            }
        }
        Ok(())
    }
}

/// `bytes` (this format, with a host object) rewritten in the legacy host framing, as a
/// file of an earlier version would be.
#[cfg(test)]
pub(crate) fn legacy_framing(bytes: &[u8]) -> Vec<u8> {
    let mut checkpoint = Checkpoint::decode(bytes).expect("a checkpoint");
    let host = checkpoint.header.host.take().expect("a host object");
    let header = serde_json::to_vec(&checkpoint.header).expect("JSON");
    let mut out = LEGACY_HOST_MAGIC.to_vec();
    out.extend((host.get().len() as u64).to_le_bytes());
    out.extend(host.get().as_bytes());
    out.extend(MAGIC);
    out.extend((header.len() as u32).to_le_bytes());
    out.extend(header);
    out.extend(checkpoint.ipc);
    out
}
