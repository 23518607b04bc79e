//! The continuous queries of one engine ([`CqRegistry`]): the hosted CQs under one lock,
//! opening them from the definitions file and their checkpoints, and driving them — WAL
//! entries (live, caught up, replayed), backfill batches, the 250 ms tick, checkpoints and
//! the WAL hold. CREATE / DROP / ALTER are in `ddl.rs`, the system tables in
//! `system_tables.rs`, one CQ's hosting in `hosting.rs`.
//!
//! Definitions live in `<data_dir>/continuous_queries.json` (`definitions.rs`); each CQ's
//! checkpoint (the runtime state, the WAL sequence it covers and the CQ's alerts, together
//! in one file so they always agree) in `<data_dir>/continuous/<hash of name>.ckpt`. Both
//! are replaced atomically. After a restart each CQ is restored from its checkpoint and the
//! WAL entries after it are replayed; alerts are upserted by their deterministic id, so a
//! replay cannot add a second row for the same alert.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arrow::array::RecordBatch;
use logsphere_sql::CreateContinuousQuery;

use super::alerts::Alert;
use super::backfill::BackfillPlan;
use super::definitions::{CqDefinition, CqState, DefinitionsFile};
use super::hosting::{HostedCq, PendingCheckpoint, checkpoint_path, prune_events};
use super::notify::{Events, Notifier, NotifyChannel, NotifyConfig};
use super::shared::SharedEval;
use super::spec::parse_create;
use super::table_store::TableStore;
use super::{CqError, Position, StorageError};

#[derive(Default)]
pub(super) struct Inner {
    pub(super) live: BTreeMap<String, HostedCq>,
    /// Stored definitions that cannot be built (e.g. after an upgrade), with the reason:
    /// kept, listed as FAILED, and removable with DROP, instead of stopping the engine.
    pub(super) failed: BTreeMap<String, (CqDefinition, String)>,
    /// The highest WAL sequence number seen by the CQ task.
    pub(super) last_seq: u64,
    /// Alerts of dropped CQs (resolved `rule_dropped`), kept for their retention.
    pub(super) dropped: BTreeMap<String, Alert>,
    /// `alert_events` of dropped CQs, still shared with the delivery service.
    pub(super) dropped_events: Events,
    /// The channels of CQs dropped since the start, so their `rule_dropped` notices are
    /// retried (not after a restart: the channel configuration went with the definition).
    pub(super) dropped_channels: Vec<NotifyChannel>,
}

/// The engine's continuous queries.
pub struct CqRegistry {
    pub(super) defs_path: PathBuf,
    pub(super) ckpt_dir: PathBuf,
    pub(super) tables: Arc<TableStore>,
    pub(super) inner: Mutex<Inner>,
    /// Told the first WAL sequence number a restart would replay, whenever it may change.
    pub(super) wal_hold: OnceLock<WalHold>,
    /// The NOTIFY delivery service shared by every CQ.
    pub(super) notifier: Arc<Notifier>,
    pub(super) feed: OnceLock<std::sync::Arc<super::feed::Feed>>,
    /// Cluster mode: checkpoints are written only at the feeder's cuts
    /// (`CqRegistry::cut`), never per CQ on the timer, so every checkpoint is at a
    /// position whose Kafka offsets the feeder recorded.
    pub(super) cut_checkpoints: std::sync::atomic::AtomicBool,
}

type WalHold = Box<dyn Fn(Option<u64>) + Send + Sync>;

/// Threads the CQs of one drain run on: the machine's cores.
static PARALLELISM: OnceLock<usize> = OnceLock::new();

/// Below this many (row, CQ) pairs a drain runs on the calling thread: starting threads
/// would cost more than it saves *(design)*.
const PARALLEL_MIN_WORK: usize = 20_000;

/// Feeds one batch read at WAL `seq` to `live` and folds its outputs in; `shared` holds what
/// the other rules fed the same batch computed.
fn feed_one(
    live: &mut HostedCq,
    partition: &str,
    seq: u64,
    batch: &RecordBatch,
    now_us: i64,
    shared: Option<&SharedEval>,
    since: Option<i64>,
) {
    if batch.num_rows() == 0 {
        return;
    }
    // Cluster mode: a node that joins replays records from before a rule was created; the
    // rule sees only those ingested since (as on the node where it was created).
    let since_creation;
    let (batch, shared) = match since.map(|at| super::cluster::ingested_since(batch, at)) {
        None => (batch, shared),
        Some(None) => return,
        Some(Some(std::borrow::Cow::Borrowed(b))) => (b, shared),
        Some(Some(std::borrow::Cow::Owned(b))) => {
            since_creation = b;
            // Shared results were computed over the whole batch.
            (&since_creation, None)
        }
    };
    let outputs =
        live.runtime
            .process_shared(partition, Position::Wal { seq }, batch, now_us, shared);
    // `handle` also advances the alert state machine to the batch's watermark, as
    // BACKTEST and the WAL replay on open do, not only on the next 250 ms tick;
    // otherwise whether a later match folds into the old alert or fires a new one
    // would depend on ingest speed.
    live.handle(outputs, now_us);
}

/// Fixes a `START FROM` backfill: given the start (µs) and the last WAL sequence number fed
/// to CQs, the plan whose `cut` is at least that number.
pub(crate) type History<'a> = dyn Fn(i64, u64) -> Result<BackfillPlan, CqError> + Send + Sync + 'a;

impl std::fmt::Debug for CqRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqRegistry")
            .field("defs_path", &self.defs_path)
            .finish()
    }
}

impl CqRegistry {
    /// [`Self::open_with`] the default NOTIFY delivery settings.
    pub async fn open(data_dir: &Path) -> Result<Self, CqError> {
        Self::open_with(data_dir, &NotifyConfig::default()).await
    }

    /// Loads the definitions in `data_dir` and restores each CQ from its checkpoint. A CQ
    /// that cannot be restored starts fresh and reports why in its `error` column. Starts
    /// the NOTIFY delivery service with `notify`.
    pub async fn open_with(data_dir: &Path, notify: &NotifyConfig) -> Result<Self, CqError> {
        let notifier = Arc::new(Notifier::new(notify));
        let defs_path = data_dir.join("continuous_queries.json");
        let ckpt_dir = data_dir.join("continuous");
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| StorageError::io(&ckpt_dir, e))?;
        let tables = Arc::new(TableStore::open(data_dir)?);
        let file = DefinitionsFile::load(&defs_path)?;
        let mut inner = Inner {
            dropped: file
                .dropped_alerts
                .into_iter()
                .map(|a| (a.alert_id.clone(), a))
                .collect(),
            dropped_events: Arc::new(Mutex::new(
                file.dropped_events
                    .into_iter()
                    .map(|e| (e.event_id.clone(), e))
                    .collect(),
            )),
            ..Inner::default()
        };
        for def in file.queries {
            let path = checkpoint_path(&ckpt_dir, &def.name);
            let checkpoint = match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(StorageError::io(&path, e)),
            };
            let live = match HostedCq::build(def.clone(), checkpoint.as_deref(), &notifier, &tables)
                .await
            {
                Ok(live) => live,
                Err(e) if checkpoint.is_some() => {
                    // Kept for whoever investigates; the next checkpoint takes its place.
                    let aside = super::definitions::set_aside(&path).map_or_else(
                        |io| format!("(not set aside: {io})"),
                        |p| p.display().to_string(),
                    );
                    tracing::warn!(cq = %def.name, error = %e, set_aside = %aside, "cannot restore checkpoint; starting fresh");
                    match HostedCq::build(def.clone(), None, &notifier, &tables).await {
                        Ok(mut live) => {
                            live.error = Some(format!("checkpoint not restored: {e}"));
                            live
                        }
                        Err(e) => {
                            tracing::error!(cq = %def.name, error = %e, "continuous query cannot be built; listed as FAILED");
                            inner.failed.insert(def.name.clone(), (def, e.to_string()));
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(cq = %def.name, error = %e, "continuous query cannot be built; listed as FAILED");
                    inner.failed.insert(def.name.clone(), (def, e.to_string()));
                    continue;
                }
            };
            if let Err(e) = live.ensure_tables() {
                tracing::error!(cq = %def.name, error = %e, "continuous query cannot write its tables; listed as FAILED");
                inner.failed.insert(def.name.clone(), (def, e.to_string()));
                continue;
            }
            inner.last_seq = inner.last_seq.max(live.seq);
            inner.live.insert(def.name.clone(), live);
        }
        Ok(Self {
            defs_path,
            ckpt_dir,
            tables,
            inner: Mutex::new(inner),
            wal_hold: OnceLock::new(),
            notifier,
            feed: OnceLock::new(),
            cut_checkpoints: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lowest WAL sequence number a restart would replay into some CQ (`None`: no
    /// CQs): the WAL must keep entries from here on.
    pub fn replay_from(&self) -> Option<u64> {
        Self::first_needed(&self.lock())
    }

    fn first_needed(inner: &Inner) -> Option<u64> {
        inner
            .live
            .values()
            .map(|l| match &l.def.backfill {
                Some(plan) => plan.wal_from.min(l.checkpointed_seq + 1),
                None => l.checkpointed_seq + 1,
            })
            .min()
    }

    /// The managed tables (INTO, NOTIFY TABLE), for queries.
    pub fn tables(&self) -> &Arc<TableStore> {
        &self.tables
    }

    /// The backfills that did not finish before the last shutdown: `(name, version, plan)`.
    pub(crate) fn pending_backfills(&self) -> Vec<(String, u64, BackfillPlan)> {
        self.lock()
            .live
            .values()
            .filter_map(|l| Some((l.def.name.clone(), l.def.version, l.def.backfill.clone()?)))
            .collect()
    }

    /// Sets what keeps the WAL entries a restart would replay, and calls it once now.
    pub(crate) fn set_wal_hold(&self, hold: WalHold) {
        let _ = self.wal_hold.set(hold);
        self.update_hold(&self.lock());
    }

    pub(super) fn update_hold(&self, inner: &Inner) {
        if let Some(hold) = self.wal_hold.get() {
            hold(Self::first_needed(inner));
        }
    }

    pub(super) fn save_definitions(&self, inner: &Inner) -> Result<(), CqError> {
        DefinitionsFile {
            queries: inner
                .live
                .values()
                .map(|l| l.def.clone())
                .chain(inner.failed.values().map(|(d, _)| d.clone()))
                .collect(),
            dropped_alerts: inner.dropped.values().cloned().collect(),
            dropped_events: inner
                .dropped_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
        }
        .store(&self.defs_path)
    }

    /// Connects the feed that RESUME rewinds.
    pub(crate) fn set_feed(&self, feed: std::sync::Arc<super::feed::Feed>) {
        let _ = self.feed.set(feed);
    }

    /// The feed is live again: resumed CQs take live entries from now on. With `error`
    /// (the catch-up failed), the CQs that were catching up record it.
    pub(crate) fn caught_up(&self, error: Option<&str>) {
        for live in self.lock().live.values_mut() {
            if live.def.state == CqState::Running
                && let Some(e) = error
            {
                live.error = Some(format!("WAL entries skipped: {e}"));
            }
            live.catching_up = false;
        }
    }

    /// The parsed definition of `name` and its version (for BACKTEST and EXPLAIN by name).
    pub fn definition(&self, name: &str) -> Result<(CreateContinuousQuery, u64), CqError> {
        let (text, version) = {
            let inner = self.lock();
            (inner
                .live
                .get(name)
                .map(|l| (l.def.sql_text.clone(), l.def.version)))
            .or_else(|| {
                inner
                    .failed
                    .get(name)
                    .map(|(d, _)| (d.sql_text.clone(), d.version))
            })
            .ok_or_else(|| CqError::NotFound(name.to_string()))?
        };
        Ok((parse_create(&text)?, version))
    }

    /// The `CREATE` text of `name`, as written.
    pub fn sql_text(&self, name: &str) -> Result<String, CqError> {
        let inner = self.lock();
        (inner.live.get(name).map(|l| l.def.sql_text.clone()))
            .or_else(|| inner.failed.get(name).map(|(d, _)| d.sql_text.clone()))
            .ok_or_else(|| CqError::NotFound(name.to_string()))
    }

    /// Feeds one durable WAL entry's `logs` rows to every running CQ that has not seen it.
    /// A paused CQ keeps its position (and its WAL hold), so RESUME continues from it.
    pub fn process(&self, seq: u64, batch: &RecordBatch, now_us: i64) {
        self.process_entries(&[(seq, batch.clone())], now_us, false);
    }

    /// Like [`Self::process`], for an entry read back from the WAL by a catch-up, which also
    /// feeds resumed CQs re-reading from where they paused.
    pub(crate) fn process_caught_up(&self, seq: u64, batch: &RecordBatch, now_us: i64) {
        self.process_entries(&[(seq, batch.clone())], now_us, true);
    }

    /// Feeds consecutive durable WAL entries (in sequence order) to every running CQ.
    ///
    /// A CQ that has seen none of them gets their rows as one batch: under load the CQ task
    /// takes what queued while it was busy in one go, so the per-batch cost of each rule is
    /// paid once per drain instead of once per request. The CQs run on up to
    /// [`PARALLELISM`] threads: each owns its state, so nothing is shared but the input.
    pub(crate) fn process_entries(
        &self,
        entries: &[(u64, RecordBatch)],
        now_us: i64,
        from_wal: bool,
    ) {
        self.process_from("wal", entries, now_us, from_wal);
    }

    /// [`Self::process_entries`] for entries of the source partition `partition` (its own
    /// watermark): cluster mode feeds each Kafka partition's records under its name.
    pub(crate) fn process_from(
        &self,
        partition: &str,
        entries: &[(u64, RecordBatch)],
        now_us: i64,
        from_wal: bool,
    ) {
        let Some(&(last, _)) = entries.last() else {
            return;
        };
        let first = entries[0].0;
        let combined = match entries {
            [(_, one)] => Some(one.clone()),
            _ => {
                let schema = entries[0].1.schema();
                arrow::compute::concat_batches(&schema, entries.iter().map(|(_, b)| b)).ok()
            }
        };
        let mut inner = self.lock();
        inner.last_seq = inner.last_seq.max(last);
        let mut running: Vec<&mut HostedCq> = inner
            .live
            .values_mut()
            .filter(|l| l.def.state == CqState::Running && (from_wal || !l.catching_up))
            .collect();
        // The rules fed the same batch share filters and keys over it.
        let shared = SharedEval::default();
        let per_entry: Vec<SharedEval> = entries.iter().map(|_| SharedEval::default()).collect();
        let cluster = self
            .cut_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed);
        let work = |live: &mut HostedCq| match &combined {
            Some(batch) if live.seq < first && live.backfill_queue.is_none() => {
                live.seq = last;
                let since = cluster.then_some(live.def.created_at);
                feed_one(live, partition, last, batch, now_us, Some(&shared), since);
            }
            _ => {
                for ((seq, batch), shared) in entries.iter().zip(&per_entry) {
                    if *seq <= live.seq {
                        continue;
                    }
                    live.seq = *seq;
                    if let Some(queue) = &mut live.backfill_queue {
                        if batch.num_rows() > 0 {
                            queue.push((partition.to_string(), *seq, batch.clone()));
                        }
                        continue;
                    }
                    let since = cluster.then_some(live.def.created_at);
                    feed_one(live, partition, *seq, batch, now_us, Some(shared), since);
                }
            }
        };
        let rows: usize = entries.iter().map(|(_, b)| b.num_rows()).sum();
        let threads = PARALLELISM
            .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .to_owned()
            .min(running.len());
        if threads <= 1 || rows.saturating_mul(running.len()) < PARALLEL_MIN_WORK {
            running.into_iter().for_each(work);
            return;
        }
        let per_thread = running.len().div_ceil(threads);
        std::thread::scope(|s| {
            let mut chunks = running.chunks_mut(per_thread);
            let mine = chunks.next();
            for chunk in chunks {
                s.spawn(|| chunk.iter_mut().for_each(|l| work(l)));
            }
            if let Some(chunk) = mine {
                chunk.iter_mut().for_each(|l| work(l));
            }
        });
    }

    /// Feeds one batch of stored rows to the backfill of `name`; `false` when that backfill
    /// is no longer wanted (the CQ was dropped or replaced).
    pub(crate) fn feed_backfill(
        &self,
        name: &str,
        version: u64,
        batch: &RecordBatch,
        clock_us: i64,
    ) -> Result<bool, CqError> {
        let mut inner = self.lock();
        let Some(live) = inner.live.get_mut(name) else {
            return Ok(false);
        };
        let Some(plan) = live
            .def
            .backfill
            .as_ref()
            .filter(|_| live.def.version == version)
        else {
            return Ok(false);
        };
        let position = Position::Wal { seq: plan.cut };
        let outputs = live.runtime.process("wal", position, batch, clock_us)?;
        live.handle(Ok(outputs), clock_us);
        Ok(true)
    }

    /// Ends the backfill of `name`: feeds the live entries queued meanwhile, checkpoints,
    /// and only then removes the plan from the stored definition (a crash before that runs
    /// the backfill again).
    pub(crate) fn finish_backfill(
        &self,
        name: &str,
        version: u64,
        error: Option<String>,
        now_us: i64,
    ) {
        let dir = self.ckpt_dir.clone();
        let mut inner = self.lock();
        let Some(live) = inner
            .live
            .get_mut(name)
            .filter(|l| l.def.version == version)
        else {
            return;
        };
        let cluster = self
            .cut_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed);
        let queue = live.backfill_queue.take().unwrap_or_default();
        for (partition, seq, batch) in queue {
            let clock = super::max_ingest_time(&batch).unwrap_or(now_us);
            // Cluster mode: the live records queued meanwhile, under their partitions, from
            // the query's creation on (the backfill read those before it).
            let since = cluster.then_some(live.def.created_at);
            feed_one(live, &partition, seq, &batch, clock, None, since);
        }
        if let Some(e) = error {
            live.error = Some(e);
        }
        if cluster {
            // Checkpoints are taken at the feeder's cuts only: the next cut checkpoints the
            // state and then drops the plan (`checkpoint_every`); a crash before that runs
            // the backfill again.
            return;
        }
        let plan = live.def.backfill.take();
        if let Err(e) = live.checkpoint(&dir, now_us) {
            tracing::warn!(cq = %name, error = %e, "checkpoint after backfill failed; a restart backfills again");
            live.error = Some(e.to_string());
            live.def.backfill = plan;
            return;
        }
        if let Err(e) = self.save_definitions(&inner) {
            tracing::warn!(cq = %name, error = %e, "cannot store the finished backfill; a restart backfills again");
            if let Some(l) = inner.live.get_mut(name) {
                l.error = Some(e.to_string());
                l.def.backfill = plan;
            }
        }
        self.update_hold(&inner);
    }

    /// A timer tick: moves watermarks on the wall clock (closing windows, resolving and
    /// opening alerts), forgets alerts past their retention and writes due checkpoints.
    pub fn tick(&self, now_us: i64) {
        for pending in self.tick_deferred(now_us) {
            let written = pending.write_temp();
            self.commit_checkpoint(pending, written);
        }
    }

    /// [`Self::tick`], returning the due checkpoints encoded but not written: the CQ task
    /// writes them on a blocking thread and hands each to [`Self::commit_checkpoint`].
    pub(crate) fn tick_deferred(&self, now_us: i64) -> Vec<PendingCheckpoint> {
        let dir = self.ckpt_dir.clone();
        let mut pending = Vec::new();
        let mut inner = self.lock();
        for live in inner.live.values_mut() {
            // Retries and re-queued failures come due here, and events a full queue left.
            self.notifier.dispatch(&live.events, &live.channels, now_us);
            // A backfill moves its own event-time clock and is checkpointed when done.
            if live.backfill_queue.is_some() {
                continue;
            }
            // A catching-up CQ's clock is its entries' ingest time, not the wall clock.
            if live.def.state == CqState::Running && !live.catching_up {
                let outputs = live.runtime.advance(now_us);
                live.handle(outputs, now_us);
            }
            let retention = i64::try_from(live.retention.as_micros()).unwrap_or(i64::MAX);
            if live.book.prune(retention, now_us) > 0 {
                prune_events(&live.events, &live.book.alerts, true);
            }
            let timed = !self
                .cut_checkpoints
                .load(std::sync::atomic::Ordering::Relaxed);
            if timed && live.last_checkpoint.elapsed() >= live.checkpoint_interval && !live.writing
            {
                match live.encode_checkpoint(&dir, now_us) {
                    Ok(p) => {
                        live.writing = true;
                        pending.push(p);
                    }
                    Err(e) => {
                        tracing::warn!(cq = %live.def.name, error = %e, "checkpoint failed");
                        live.error = Some(e.to_string());
                    }
                }
            }
        }
        let retention =
            i64::try_from(logsphere_sql::DEFAULT_ALERT_RETENTION.as_micros()).unwrap_or(i64::MAX);
        if !inner.dropped_channels.is_empty() {
            self.notifier
                .dispatch(&inner.dropped_events, &inner.dropped_channels, now_us);
        }
        let before = inner.dropped.len();
        inner.dropped.retain(|_, a| {
            a.resolved_at
                .is_none_or(|r| r.saturating_add(retention) >= now_us)
        });
        if inner.dropped.len() != before {
            // A dropped CQ's undelivered events are not retried (its channels are gone).
            prune_events(&inner.dropped_events, &inner.dropped, false);
        }
        self.update_hold(&inner);
        pending
    }

    /// Puts a checkpoint written by [`PendingCheckpoint::write_temp`] in place, unless the
    /// CQ was dropped or replaced, or a newer checkpoint was written meanwhile (then the
    /// temporary file goes).
    pub(crate) fn commit_checkpoint(
        &self,
        pending: PendingCheckpoint,
        written: Result<(), CqError>,
    ) {
        let mut inner = self.lock();
        let tmp = pending.temp_path();
        let Some(live) = inner
            .live
            .get_mut(&pending.name)
            .filter(|l| l.def.version == pending.version)
        else {
            let _ = std::fs::remove_file(&tmp);
            return;
        };
        live.writing = false;
        let result = written.and_then(|()| {
            if pending.number < live.written {
                let _ = std::fs::remove_file(&tmp);
                return Ok(());
            }
            std::fs::rename(&tmp, &pending.path)
                .and_then(|()| {
                    let dir = pending.path.parent().unwrap_or(Path::new("."));
                    std::fs::File::open(dir).and_then(|d| d.sync_all())
                })
                .map_err(|source| {
                    StorageError::write(
                        &pending.path,
                        crate::EngineError::Io {
                            path: pending.path.clone(),
                            source,
                        },
                    )
                })?;
            live.checkpoint_written(&pending);
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(cq = %pending.name, error = %e, "checkpoint failed");
            live.error = Some(e.to_string());
            let _ = std::fs::remove_file(&tmp);
        }
        self.update_hold(&inner);
    }

    /// Checkpoints every CQ now (on shutdown, so a clean restart replays nothing). In
    /// cluster mode only the feeder's cuts checkpoint (`cluster.rs`): a checkpoint between
    /// two cuts would be at a position a restart cannot seek Kafka to.
    pub fn checkpoint_all(&self, now_us: i64) {
        if self
            .cut_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        self.checkpoint_every(now_us);
    }

    pub(super) fn checkpoint_every(&self, now_us: i64) {
        let dir = self.ckpt_dir.clone();
        let mut inner = self.lock();
        let mut backfills_done = false;
        for live in inner.live.values_mut() {
            if live.backfill_queue.is_some() {
                // Its definition still holds the backfill plan: a restart runs it again.
                continue;
            }
            if let Err(e) = live.checkpoint(&dir, now_us) {
                tracing::warn!(cq = %live.def.name, error = %e, "checkpoint failed");
                live.error = Some(e.to_string());
            } else if live.def.backfill.take().is_some() {
                // A cluster backfill that finished since the last cut is in this checkpoint.
                backfills_done = true;
            }
        }
        if backfills_done && let Err(e) = self.save_definitions(&inner) {
            tracing::warn!(error = %e, "cannot store the finished backfills; a restart backfills again");
        }
        self.update_hold(&inner);
    }
}
