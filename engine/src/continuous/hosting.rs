//! Per-query hosting: one CQ in memory ([`HostedCq`]) — its runtime, alert rule and book,
//! NOTIFY channels and events, INTO / NOTIFY TABLE sinks — and what happens to it per
//! batch (outputs → sinks, alerts, notifications) and per checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use super::alerts::{Alert, AlertRule, hex_hash};
use super::checkpoint::Checkpoint;
use super::definitions::CqDefinition;
use super::lifecycle::{AlertBook, Heartbeat, Transition, TransitionKind};
use super::notify::{AlertEvent, Events, Notifier, NotifyChannel};
use super::sink::Sink;
use super::spec::{parse_create, spec_from};
use super::table_store::TableStore;
use super::{CheckpointError, CqError, CqOutput, CqRuntime, StorageError};
use crate::catalog::atomic_write;

/// One CQ in memory.
pub(super) struct HostedCq {
    pub(super) def: CqDefinition,
    pub(super) runtime: CqRuntime,
    pub(super) rule: Option<AlertRule>,
    pub(super) book: AlertBook,
    /// `alert_retention`: resolved alerts older than this are forgotten.
    pub(super) retention: Duration,
    /// The deliverable channels of NOTIFY (WEBHOOK, KAFKA).
    pub(super) channels: Vec<NotifyChannel>,
    /// CREATE OR REPLACE: the old version's channels, told of its `rule_replaced` alerts.
    pub(super) replaced_channels: Vec<NotifyChannel>,
    /// `alert_events` rows of this CQ, shared with the delivery service.
    pub(super) events: Events,
    pub(super) notifier: Arc<Notifier>,
    pub(super) checkpoint_interval: Duration,
    pub(super) last_checkpoint: Instant,
    /// A periodic checkpoint is being written off the CQ task (see [`PendingCheckpoint`]).
    pub(super) writing: bool,
    /// Checkpoints encoded so far, and the number of the one last written: an older one
    /// finishing late must not replace it.
    pub(super) encoded: u64,
    pub(super) written: u64,
    pub(super) last_checkpoint_at: Option<i64>,
    /// The last WAL sequence number fed to (or skipped by) this CQ.
    pub(super) seq: u64,
    /// The `seq` its last checkpoint covers: replay after a restart starts after it.
    pub(super) checkpointed_seq: u64,
    pub(super) last_fired: Option<i64>,
    pub(super) error: Option<String>,
    /// The tables of `INTO` and `NOTIFY (TABLE …)`.
    pub(super) sinks: Vec<Sink>,
    pub(super) tables: Arc<TableStore>,
    /// While a `START FROM` backfill runs: the live entries that arrived meanwhile, fed
    /// after it in sequence order.
    pub(super) backfill_queue: Option<Vec<(String, u64, RecordBatch)>>,
    /// Resumed and re-reading the WAL from where it paused: live entries wait until the
    /// catch-up reaches them (see feed.rs).
    pub(super) catching_up: bool,
}
/// What a hosted CQ keeps beside its runtime, checkpointed in the same file
/// (`checkpoint.rs`: the `host` object of its header).
#[derive(Serialize, Deserialize)]
struct HostState {
    name: String,
    version: u64,
    seq: u64,
    alerts: Vec<Alert>,
    #[serde(default)]
    events: Vec<AlertEvent>,
    /// ABSENT FOR: the last rows per key.
    #[serde(default)]
    heartbeats: BTreeMap<String, Heartbeat>,
}

impl HostedCq {
    pub(super) async fn build(
        def: CqDefinition,
        checkpoint: Option<&[u8]>,
        notifier: &Arc<Notifier>,
        tables: &Arc<TableStore>,
    ) -> Result<Self, CqError> {
        let cq = parse_create(&def.sql_text)?;
        let spec = spec_from(&cq)?;
        let channels = NotifyChannel::from_channels(&cq.notify, notifier.config())?;
        for channel in &channels {
            notifier.check(channel)?;
        }
        // A backfill that did not finish runs again from the start, on fresh state.
        let checkpoint = checkpoint.filter(|_| def.backfill.is_none());
        let (runtime, seq, book, events) = match checkpoint {
            Some(bytes) => {
                let checkpoint = Checkpoint::decode(bytes)?;
                let header: HostState = checkpoint.host()?.ok_or(CheckpointError::NoHostState)?;
                if header.version != def.version {
                    return Err(CheckpointError::OtherVersion {
                        checkpoint: header.version,
                        definition: def.version,
                    }
                    .into());
                }
                let runtime = CqRuntime::restore_from(spec, &checkpoint).await?;
                let book = AlertBook::new(header.alerts, header.heartbeats, def.version);
                let events = header
                    .events
                    .into_iter()
                    .map(|e| (e.event_id.clone(), e))
                    .collect();
                (runtime, header.seq, book, events)
            }
            None => (
                CqRuntime::new(spec).await?,
                def.from_seq.saturating_sub(1),
                AlertBook::default(),
                BTreeMap::new(),
            ),
        };
        let rule = AlertRule::for_runtime(&cq, def.version, &runtime)?;
        let sinks = Sink::for_cq(&cq, &runtime.plan)?;
        let (seq, backfill_queue) = match &def.backfill {
            Some(plan) => (plan.cut, Some(Vec::new())),
            None => (seq, None),
        };
        let last_fired = book.alerts.values().map(|a: &Alert| a.fired_at).max();
        let events: Events = std::sync::Arc::new(Mutex::new(events));
        // At-least-once: what a previous run recorded but did not deliver is sent again.
        notifier.dispatch(&events, &channels, super::now_us());
        Ok(Self {
            channels,
            replaced_channels: Vec::new(),
            events,
            notifier: Arc::clone(notifier),
            checkpoint_interval: cq.checkpoint_interval(),
            def,
            runtime,
            rule,
            book,
            retention: cq.alert_retention(),
            last_checkpoint: Instant::now(),
            writing: false,
            encoded: 0,
            written: 0,
            last_checkpoint_at: None,
            seq,
            checkpointed_seq: seq,
            last_fired,
            error: None,
            sinks,
            tables: Arc::clone(tables),
            backfill_queue,
            catching_up: false,
        })
    }

    /// Creates the tables of INTO and NOTIFY TABLE that are missing; returns the ones it
    /// created.
    pub(super) fn ensure_tables(&self) -> Result<Vec<String>, CqError> {
        let mut created = Vec::new();
        for sink in &self.sinks {
            match self.tables.ensure(&sink.table, &sink.schema) {
                Ok(true) => created.push(sink.table.clone()),
                Ok(false) => {}
                Err(e) => {
                    for t in &created {
                        let _ = self.tables.remove(t);
                    }
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// Upserts this CQ's alert rows into its NOTIFY TABLE tables.
    fn mirror_alerts(&mut self) {
        let now = super::now_us();
        for sink in self.sinks.iter().filter(|s| s.takes_alerts()) {
            if let Err(e) = sink.write_alerts(&self.tables, self.book.alerts.values(), now) {
                tracing::warn!(cq = %self.def.name, table = %sink.table, error = %e, "NOTIFY TABLE failed");
                self.error = Some(e.to_string());
            }
        }
    }

    /// Folds `outputs` into the alerts, then moves the state machine to the watermark, and
    /// records and starts delivery of what notifies.
    pub(super) fn handle(&mut self, outputs: Result<Vec<CqOutput>, CqError>, now_us: i64) {
        let outputs = match outputs {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(cq = %self.def.name, error = %e, "continuous query failed on input");
                self.error = Some(e.to_string());
                return;
            }
        };
        let updated_at = super::now_us();
        // The version of an INTO row change across nodes: the event time the query had
        // reached (the same input gives every node the same), never the wall clock.
        for out in &outputs {
            let version = self
                .runtime
                .watermark()
                .or_else(|| out.window_end.iter().max().copied())
                .or_else(|| out.window_start.iter().max().copied())
                .or(Some(0));
            for sink in &self.sinks {
                if let Err(e) = sink.write_output(&self.tables, out, updated_at, version) {
                    tracing::warn!(cq = %self.def.name, table = %sink.table, error = %e, "INTO failed");
                    self.error = Some(e.to_string());
                }
            }
        }
        let Some(rule) = &self.rule else {
            return;
        };
        let mut transitions = Vec::new();
        for out in &outputs {
            match rule.observe(out, &mut self.book, now_us) {
                Ok(t) => transitions.extend(t),
                Err(e) => self.error = Some(e.to_string()),
            }
        }
        if let Some(w) = self.runtime.watermark() {
            transitions.extend(rule.advance(&mut self.book, w, now_us));
        }
        let fired = transitions
            .iter()
            .filter(|t| t.kind == TransitionKind::Fired)
            .count();
        if fired > 0 {
            tracing::info!(cq = %self.def.name, fired, "alerts fired");
        }
        if transitions.iter().any(Transition::notifies) {
            self.last_fired = Some(now_us);
        }
        self.notify(&transitions, now_us);
        if !outputs.is_empty() || !transitions.is_empty() {
            self.mirror_alerts();
        }
    }

    /// Records and starts delivery of the notifying `transitions`.
    fn notify(&mut self, transitions: &[Transition], now_us: i64) {
        notify_on(
            &self.notifier,
            &self.events,
            &self.channels,
            transitions,
            now_us,
        );
    }

    /// Writes a checkpoint now, on this thread.
    pub(super) fn checkpoint(&mut self, dir: &Path, now_us: i64) -> Result<(), CqError> {
        let pending = self.encode_checkpoint(dir, now_us)?;
        atomic_write(&pending.path, &pending.bytes)
            .map_err(|e| StorageError::write(&pending.path, e))?;
        self.checkpoint_written(&pending);
        Ok(())
    }

    /// Records that `pending` is on disk.
    pub(super) fn checkpoint_written(&mut self, pending: &PendingCheckpoint) {
        self.last_checkpoint_at = Some(pending.at);
        self.checkpointed_seq = pending.seq;
        self.written = pending.number;
    }

    /// Encodes a checkpoint of everything this CQ holds, to be written to `pending.path`
    /// (by [`Self::checkpoint`], or off the CQ task: [`PendingCheckpoint`]).
    pub(super) fn encode_checkpoint(
        &mut self,
        dir: &Path,
        now_us: i64,
    ) -> Result<PendingCheckpoint, CqError> {
        // The tables first: what the checkpoint covers must be in them after a crash.
        self.tables
            .sync(self.sinks.iter().map(|s| s.table.as_str()))?;
        let listed: std::collections::HashSet<&str> = self
            .book
            .alerts
            .values()
            .filter(|a| a.cq_version == self.def.version)
            .map(|a| a.alert_id.as_str())
            .collect();
        super::notify::prune(
            &mut self.events.lock().unwrap_or_else(|p| p.into_inner()),
            &listed,
            self.notifier.config().retention,
            super::now_us(),
        );
        let host = HostState {
            name: self.def.name.clone(),
            version: self.def.version,
            seq: self.seq,
            alerts: self.book.alerts.values().cloned().collect(),
            heartbeats: self.book.heartbeats.clone(),
            events: self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
        };
        let started = Instant::now();
        let bytes = self.runtime.checkpoint_with(Some(&host))?;
        let encoded = started.elapsed();
        // The CQ task is busy meanwhile: a slow encoding delays every rule's next batch.
        if encoded >= Duration::from_millis(100) {
            tracing::info!(
                cq = %self.def.name,
                bytes = bytes.len(),
                encode_ms = encoded.as_millis() as u64,
                "slow continuous-query checkpoint encoding"
            );
        }
        self.last_checkpoint = Instant::now();
        self.encoded += 1;
        Ok(PendingCheckpoint {
            number: self.encoded,
            name: self.def.name.clone(),
            version: self.def.version,
            seq: self.seq,
            at: now_us,
            path: checkpoint_path(dir, &self.def.name),
            bytes,
        })
    }
}

/// An encoded checkpoint on its way to disk. The periodic ones are written off the CQ task
/// (the fsync of a large state must not hold up every rule): the file goes to a temporary
/// name first, and [`super::CqRegistry::commit_checkpoint`] renames it into place under the
/// registry lock, only if the CQ still exists in the same version and no checkpoint encoded
/// after it was written meanwhile. Until then the CQ's `checkpointed_seq`, and with it the WAL it holds,
/// does not move.
#[derive(Debug)]
pub(crate) struct PendingCheckpoint {
    /// Its number among this CQ's checkpoints (`HostedCq::encoded`).
    pub(super) number: u64,
    pub(super) name: String,
    pub(super) version: u64,
    /// The WAL sequence number the state covers.
    pub(super) seq: u64,
    /// The wall clock it was taken at (µs).
    pub(super) at: i64,
    pub(super) path: PathBuf,
    pub(super) bytes: Vec<u8>,
}

impl PendingCheckpoint {
    /// Where the deferred write puts the file before the commit renames it.
    pub(super) fn temp_path(&self) -> PathBuf {
        self.path.with_extension("ckpt.pending")
    }

    /// Writes and syncs the temporary file (no lock held).
    pub(crate) fn write_temp(&self) -> Result<(), CqError> {
        use std::io::Write;
        let tmp = self.temp_path();
        let io = |source| {
            StorageError::write(
                &tmp,
                crate::EngineError::Io {
                    path: tmp.clone(),
                    source,
                },
            )
        };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&self.bytes)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// The event time a CQ has reached (its watermark, else its newest observation), for
/// transitions that no row causes (DROP, REPLACE).
pub(super) fn event_now(live: &HostedCq) -> i64 {
    live.runtime
        .watermark()
        .filter(|w| *w > i64::MIN)
        .or_else(|| live.book.alerts.values().map(|a| a.last_event).max())
        .unwrap_or_default()
}

/// Forgets events of forgotten alerts, except (when `in_flight` may be delivered still)
/// transitions not yet delivered.
pub(super) fn prune_events(events: &Events, alerts: &BTreeMap<String, Alert>, in_flight: bool) {
    events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, e| alerts.contains_key(&e.alert_id) || (in_flight && e.status == "pending"));
}

/// Records the notifying `transitions` as `alert_events` per channel and hands what is due
/// to the delivery service.
pub(super) fn notify_on(
    notifier: &Notifier,
    events: &Events,
    channels: &[NotifyChannel],
    transitions: &[Transition],
    now_us: i64,
) {
    let due = super::notify::record_transitions(transitions, channels, events, now_us);
    if !due.is_empty() {
        notifier.dispatch(events, channels, super::now_us());
    }
}

/// A CQ name may hold any character; its file name is a hash of it.
pub(super) fn checkpoint_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.ckpt", hex_hash(&[name])))
}
