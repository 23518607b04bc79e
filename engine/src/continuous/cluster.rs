//! What cluster mode needs of the registry (see `cluster/continuous.rs`): definitions
//! built at the version the shared catalog gives them, checkpoints only at the feeder's
//! cuts, catch-up after a restart, the alerts to share, and delivery claims.
//!
//! Positions in cluster mode are `generation << 32 | n`: the feeder numbers the batches it
//! feeds after cut `generation` from 1, and at each cut feeds every CQ an empty batch at
//! `(generation + 1) << 32` and checkpoints them all. A checkpoint is thus always at a cut,
//! whose Kafka offsets the feeder wrote down before it, and replay after a restart can
//! number the records between two cuts again without matching the old batch boundaries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use logsphere_sql::CreateContinuousQuery;

use super::alerts::Alert;
use super::ddl::SharedVersion;
use super::definitions::CqState;
use super::notify::DeliveryClaims;
use super::registry::CqRegistry;
use super::{CqError, Created};

/// Low bits of a cluster position: the batch within a generation.
pub const GENERATION_SHIFT: u32 = 32;

/// A table a continuous query writes, as cluster mode shares it.
#[derive(Debug, Clone)]
pub struct SharedTable {
    pub table: String,
    /// The table's columns, `updated_at` last.
    pub schema: arrow::datatypes::SchemaRef,
    /// `NOTIFY (TABLE …)` (alert rows) rather than `INTO` (output rows).
    pub alerts: bool,
    /// The query writing it.
    pub cq_name: String,
}

/// A definition as this node runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDefinition {
    pub version: u64,
    pub state: CqState,
}

impl CqRegistry {
    /// Cluster mode: no timed per-CQ checkpoints (see the module docs), and every position
    /// a CQ was restored at is a cut.
    pub fn enter_cluster_mode(&self) {
        self.cut_checkpoints.store(true, Ordering::Relaxed);
        self.tables.share_changes();
        let mut inner = self.lock();
        let mut top = 0;
        for live in inner.live.values_mut() {
            let low = live.seq & ((1u64 << GENERATION_SHIFT) - 1);
            if low != 0 {
                // Only a CQ created between two cuts is checkpointed off a cut: at creation,
                // with no rows in its state. It replays from the cut before, and the rows
                // ingested before its creation are not fed to it (`ingested_since`).
                let down = (live.seq >> GENERATION_SHIFT) << GENERATION_SHIFT;
                live.seq = down;
                live.checkpointed_seq = down;
            }
            top = top.max(live.seq);
        }
        inner.last_seq = top;
    }

    /// Whether any continuous query is defined (running or paused).
    pub fn has_queries(&self) -> bool {
        !self.lock().live.is_empty()
    }

    /// The generation each CQ's restored state is at (the cut its checkpoint is at).
    pub fn generations(&self) -> BTreeMap<String, u64> {
        self.lock()
            .live
            .iter()
            .map(|(name, l)| (name.clone(), l.checkpointed_seq >> GENERATION_SHIFT))
            .collect()
    }

    /// Marks every running CQ as catching up: the 250 ms tick does not move their clocks
    /// while the feeder replays old records (their ingest time is the clock then).
    pub fn start_catch_up(&self) {
        for live in self.lock().live.values_mut() {
            if live.def.state == CqState::Running {
                live.catching_up = true;
            }
        }
    }

    /// Feeds the rows of one Kafka partition at `seq` (see the module docs).
    pub fn process_partition(
        &self,
        partition: &str,
        seq: u64,
        batch: &arrow::array::RecordBatch,
        now_us: i64,
    ) {
        self.process_from(partition, &[(seq, batch.clone())], now_us, true);
    }

    /// A cut: every running CQ moves to `generation << 32` and all are checkpointed.
    pub fn cut(&self, generation: u64, now_us: i64) {
        let seq = generation << GENERATION_SHIFT;
        let empty = arrow::array::RecordBatch::new_empty(crate::model::logs_schema());
        self.process_from("cut", &[(seq, empty)], now_us, true);
        self.checkpoint_every(now_us);
    }

    /// The definitions this node runs: name → version and state.
    pub fn local_definitions(&self) -> BTreeMap<String, LocalDefinition> {
        let inner = self.lock();
        inner
            .live
            .values()
            .map(|l| (&l.def.name, l.def.version, l.def.state))
            .chain(
                inner
                    .failed
                    .values()
                    .map(|(d, _)| (&d.name, d.version, d.state)),
            )
            .map(|(n, version, state)| (n.clone(), LocalDefinition { version, state }))
            .collect()
    }

    /// Builds `cq` at the cluster's `version` (replacing an older local version).
    pub async fn create_shared(
        &self,
        cq: &CreateContinuousQuery,
        version: u64,
        created_at: i64,
    ) -> Result<Created, CqError> {
        let shared = SharedVersion {
            version,
            created_at,
        };
        self.create_with_history(cq, super::now_us(), None, Some(shared))
            .await
    }

    /// Pauses or resumes `name` without re-reading from where it paused: in cluster mode a
    /// resumed query continues with the live stream.
    pub fn set_state_live(&self, name: &str, state: CqState) -> Result<(), CqError> {
        self.store_state(name, state, false).map(|_| ())
    }

    /// Each query's row of `continuous_queries` as one JSON object (what a node reports to
    /// the others): name → line.
    pub fn progress_lines(&self) -> BTreeMap<String, String> {
        use arrow::array::{Array, StringArray};
        let rows = match self.queries_batch() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the continuous queries");
                return BTreeMap::new();
            }
        };
        let lines = match super::json_lines(&rows) {
            Ok(lines) => lines,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode the continuous queries");
                return BTreeMap::new();
            }
        };
        let Some(names) = rows
            .column_by_name("name")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        else {
            return BTreeMap::new();
        };
        (0..names.len())
            .map(|i| names.value(i).to_string())
            .zip(lines)
            .collect()
    }

    /// Resumes `name` as catching up (in one step, so no wall-clock tick moves its clock
    /// first): the feeder is about to read again what arrived while it was paused.
    pub fn resume_replaying(&self, name: &str) -> Result<(), CqError> {
        self.store_state(name, CqState::Running, true).map(|_| ())
    }

    /// Every alert this node knows (its CQs' books and those of dropped CQs).
    pub fn alerts_snapshot(&self) -> Vec<Alert> {
        let inner = self.lock();
        inner
            .live
            .values()
            .flat_map(|l| l.book.alerts.values())
            .chain(inner.dropped.values())
            .cloned()
            .collect()
    }

    /// The `START FROM` backfills this node has to run: (name, version, start in µs,
    /// creation time in µs — the backfill reads what was ingested before it).
    pub fn backfills_to_run(&self) -> Vec<(String, u64, i64, i64)> {
        self.lock()
            .live
            .values()
            .filter(|l| l.backfill_queue.is_some())
            .filter_map(|l| {
                let plan = l.def.backfill.as_ref()?;
                Some((
                    l.def.name.clone(),
                    l.def.version,
                    plan.from_us,
                    l.def.created_at,
                ))
            })
            .collect()
    }

    /// The tables the running query `name` writes: (table, columns, whether it takes alert
    /// rows (`NOTIFY (TABLE …)`) rather than output rows (`INTO`)).
    pub fn tables_of(&self, name: &str) -> Vec<SharedTable> {
        self.lock()
            .live
            .get(name)
            .map(|l| {
                l.sinks
                    .iter()
                    .map(|s| SharedTable {
                        table: s.table.clone(),
                        schema: Arc::clone(&s.schema),
                        alerts: s.takes_alerts(),
                        cq_name: name.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The tables every running query writes (see [`CqRegistry::tables_of`]).
    pub fn all_tables(&self) -> Vec<SharedTable> {
        let names: Vec<String> = self.lock().live.keys().cloned().collect();
        names.iter().flat_map(|n| self.tables_of(n)).collect()
    }

    /// Deliveries ask `claims` first, so each event is sent by one node.
    pub fn set_delivery_claims(&self, claims: Arc<dyn DeliveryClaims>) {
        self.notifier.set_claims(claims);
    }
}

/// The rows of `batch` ingested at or after `at` (µs): `None` when there are none.
pub(super) fn ingested_since(
    batch: &arrow::array::RecordBatch,
    at: i64,
) -> Option<std::borrow::Cow<'_, arrow::array::RecordBatch>> {
    use arrow::array::{Array, TimestampMicrosecondArray};
    use std::borrow::Cow;
    let Some(times) = batch
        .column_by_name("ingest_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
    else {
        return Some(Cow::Borrowed(batch));
    };
    let min = arrow::compute::min(times).unwrap_or(i64::MIN);
    if min >= at || times.null_count() == times.len() {
        return Some(Cow::Borrowed(batch));
    }
    let keep: arrow::array::BooleanArray = times
        .iter()
        .map(|t| Some(t.is_none_or(|t| t >= at)))
        .collect();
    let kept = arrow::compute::filter_record_batch(batch, &keep).ok()?;
    (kept.num_rows() > 0).then_some(Cow::Owned(kept))
}

/// Parses a definition as the shared catalog stores it (its `CREATE` text).
pub fn parse_definition(sql: &str) -> Result<CreateContinuousQuery, CqError> {
    super::spec::parse_create(sql)
}
