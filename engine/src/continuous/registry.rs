//! The continuous queries of one engine: their definitions, running state and alerts.
//!
//! Definitions live in `<data_dir>/continuous_queries.json`; each CQ's checkpoint (the
//! runtime state, the WAL sequence it covers and the CQ's alerts, together in one file so
//! they always agree) in `<data_dir>/continuous/<hash of name>.ckpt`. Both are replaced
//! atomically. After a restart each CQ is restored from its checkpoint and the WAL entries
//! after it are replayed; alerts are upserted by their deterministic id, so a replay cannot
//! add a second row for the same alert.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use logsphere_sql::{CreateContinuousQuery, Statement};
use serde::{Deserialize, Serialize};

use super::alerts::{Alert, AlertRule, alerts_batch, body_with_severity, hex_hash};
use super::backfill::BackfillPlan;
use super::lifecycle::{AlertBook, Heartbeat, Transition, TransitionKind};
use super::notify::{AlertEvent, Events, Notifier, NotifyChannel, NotifyConfig, events_batch};
use super::sink::Sink;
use super::table_store::TableStore;
use super::{ContinuousQuery, CqError, CqOutput, CqSpec, EmitPolicy, OnLate, Position};
use crate::catalog::atomic_write;

/// Whether a CQ consumes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CqState {
    Running,
    Paused,
}

impl CqState {
    fn as_str(self) -> &'static str {
        match self {
            CqState::Running => "RUNNING",
            CqState::Paused => "PAUSED",
        }
    }
}

/// A stored continuous-query definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CqDefinition {
    pub name: String,
    /// 1, bumped by `CREATE OR REPLACE`.
    pub version: u64,
    /// The statement as written, for `SHOW CREATE` and to rebuild the CQ on restart.
    pub sql_text: String,
    pub state: CqState,
    /// Wall-clock µs of the `CREATE`.
    pub created_at: i64,
    /// The first WAL sequence number the CQ reads.
    pub from_seq: u64,
    /// `START FROM` before NOW: what the backfill reads, kept until it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillPlan>,
}

/// The definitions, and the alerts of dropped CQs: in one file, so a DROP that removes a
/// definition and keeps its (now resolved) alerts is one atomic replace.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DefinitionsFile {
    queries: Vec<CqDefinition>,
    #[serde(default)]
    dropped_alerts: Vec<Alert>,
    #[serde(default)]
    dropped_events: Vec<AlertEvent>,
}

/// What `CREATE CONTINUOUS QUERY` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Replaced,
    /// `IF NOT EXISTS` and the name was taken: nothing changed.
    Exists,
}

/// One CQ in memory.
struct LiveCq {
    def: CqDefinition,
    runtime: ContinuousQuery,
    rule: Option<AlertRule>,
    book: AlertBook,
    /// `alert_retention`: resolved alerts older than this are forgotten.
    retention: Duration,
    /// The deliverable channels of NOTIFY (WEBHOOK, KAFKA).
    channels: Vec<NotifyChannel>,
    /// CREATE OR REPLACE: the old version's channels, told of its `rule_replaced` alerts.
    replaced_channels: Vec<NotifyChannel>,
    /// `alert_events` rows of this CQ, shared with the delivery service.
    events: Events,
    notifier: Arc<Notifier>,
    checkpoint_interval: Duration,
    last_checkpoint: Instant,
    last_checkpoint_at: Option<i64>,
    /// The last WAL sequence number fed to (or skipped by) this CQ.
    seq: u64,
    /// The `seq` its last checkpoint covers: replay after a restart starts after it.
    checkpointed_seq: u64,
    last_fired: Option<i64>,
    error: Option<String>,
    /// The tables of `INTO` and `NOTIFY (TABLE …)`.
    sinks: Vec<Sink>,
    tables: Arc<TableStore>,
    /// While a `START FROM` backfill runs: the live entries that arrived meanwhile, fed
    /// after it in sequence order.
    backfill_queue: Option<Vec<(u64, RecordBatch)>>,
    /// Resumed and re-reading the WAL from where it paused: live entries wait until the
    /// catch-up reaches them (see feed.rs).
    catching_up: bool,
}

#[derive(Default)]
struct Inner {
    live: BTreeMap<String, LiveCq>,
    /// Stored definitions that cannot be built (e.g. after an upgrade), with the reason:
    /// kept, listed as FAILED, and removable with DROP, instead of stopping the engine.
    failed: BTreeMap<String, (CqDefinition, String)>,
    /// The highest WAL sequence number seen by the CQ task.
    last_seq: u64,
    /// Alerts of dropped CQs (resolved `rule_dropped`), kept for their retention.
    dropped: BTreeMap<String, Alert>,
    /// `alert_events` of dropped CQs, still shared with the delivery service.
    dropped_events: Events,
    /// The channels of CQs dropped since the start, so their `rule_dropped` notices are
    /// retried (not after a restart: the channel configuration went with the definition).
    dropped_channels: Vec<NotifyChannel>,
}

/// The engine's continuous queries.
pub struct ContinuousQueries {
    defs_path: PathBuf,
    ckpt_dir: PathBuf,
    tables: Arc<TableStore>,
    inner: Mutex<Inner>,
    /// Told the first WAL sequence number a restart would replay, whenever it may change.
    wal_hold: OnceLock<WalHold>,
    /// The NOTIFY delivery service shared by every CQ.
    notifier: Arc<Notifier>,
    feed: OnceLock<std::sync::Arc<super::feed::Feed>>,
}

type WalHold = Box<dyn Fn(Option<u64>) + Send + Sync>;

/// Fixes a `START FROM` backfill: given the start (µs) and the last WAL sequence number fed
/// to CQs, the plan whose `cut` is at least that number.
pub(crate) type History<'a> = dyn Fn(i64, u64) -> Result<BackfillPlan, CqError> + Send + Sync + 'a;

impl std::fmt::Debug for ContinuousQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousQueries")
            .field("defs_path", &self.defs_path)
            .finish()
    }
}

fn storage(path: &Path, e: impl std::fmt::Display) -> CqError {
    CqError::Storage(format!("{}: {e}", path.display()))
}

/// The `CREATE CONTINUOUS QUERY` in `sql_text`.
fn parse_create(sql_text: &str) -> Result<CreateContinuousQuery, CqError> {
    let statements =
        logsphere_sql::parse_statements(sql_text).map_err(|e| CqError::Storage(e.to_string()))?;
    match statements.into_iter().next() {
        Some(Statement::CreateContinuousQuery(cq)) => Ok(*cq),
        _ => Err(CqError::Storage(
            "stored definition is not a CREATE CONTINUOUS QUERY".into(),
        )),
    }
}

/// The runtime spec for a parsed `CREATE`, refusing what v1 cannot run yet.
pub fn spec_from(cq: &CreateContinuousQuery) -> Result<CqSpec, CqError> {
    let unsupported = |what: &str| {
        Err(CqError::Unsupported {
            sql: cq.body_sql.clone(),
            reason: format!("{what} is not supported yet"),
        })
    };
    if cq.processing_time {
        return unsupported("PROCESSING TIME");
    }
    if cq.mode != logsphere_sql::Mode::Active {
        return unsupported("MODE SHADOW");
    }
    if !cq.event_time.value.eq_ignore_ascii_case("timestamp") {
        return unsupported("EVENT TIME other than `timestamp`");
    }
    // A SEVERITY expression runs as a hidden output column of the body.
    let body = body_with_severity(cq)?.unwrap_or_else(|| cq.body_sql.clone());
    let mut spec = CqSpec::new(body);
    spec.watermark = cq.watermark;
    spec.allowed_lateness = cq.allowed_lateness;
    spec.on_late = match cq.on_late {
        logsphere_sql::LateAction::Drop => OnLate::Drop,
        logsphere_sql::LateAction::Update => OnLate::Update,
        logsphere_sql::LateAction::Recompute => {
            return unsupported(
                "ON LATE RECOMPUTE (use ON LATE UPDATE: it corrects the window, and an INTO row, in memory within ALLOWED LATENESS)",
            );
        }
        logsphere_sql::LateAction::Into(_) => return unsupported("ON LATE INTO"),
    };
    spec.emit = match cq.emit {
        // §5.3: a materialised row is written once, when its window is final.
        None if cq.into.is_some() => Some(EmitPolicy::OnWindowClose),
        None => None,
        Some(logsphere_sql::EmitPolicy::OnThreshold) => Some(EmitPolicy::OnThreshold),
        Some(logsphere_sql::EmitPolicy::OnWindowClose) => Some(EmitPolicy::OnWindowClose),
        Some(logsphere_sql::EmitPolicy::OnUpdate) => return unsupported("EMIT ON UPDATE"),
        Some(logsphere_sql::EmitPolicy::Every(_)) => return unsupported("EMIT EVERY"),
    };
    spec.max_keys = cq
        .max_keys()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if let Some(d) = cq.idle_timeout() {
        spec.idle_timeout = d;
    }
    if let Some(d) = cq.max_ingest_delay() {
        spec.max_ingest_delay = d;
    }
    Ok(spec)
}

/// Checkpoint file header (followed by the runtime's checkpoint bytes).
#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
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

const CKPT_MAGIC: &[u8] = b"LSCQF1";

impl LiveCq {
    async fn build(
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
                let (header, state) = decode_checkpoint(bytes)?;
                if header.version != def.version {
                    return Err(CqError::Checkpoint(format!(
                        "checkpoint is of version {}, the definition is version {}",
                        header.version, def.version
                    )));
                }
                let runtime = ContinuousQuery::restore(spec, state).await?;
                let book = AlertBook::new(header.alerts, header.heartbeats, def.version);
                let events = header
                    .events
                    .into_iter()
                    .map(|e| (e.event_id.clone(), e))
                    .collect();
                (runtime, header.seq, book, events)
            }
            None => (
                ContinuousQuery::new(spec).await?,
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
    fn ensure_tables(&self) -> Result<Vec<String>, CqError> {
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
    fn handle(&mut self, outputs: Result<Vec<CqOutput>, CqError>, now_us: i64) {
        let outputs = match outputs {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(cq = %self.def.name, error = %e, "continuous query failed on input");
                self.error = Some(e.to_string());
                return;
            }
        };
        let updated_at = super::now_us();
        for out in &outputs {
            for sink in &self.sinks {
                if let Err(e) = sink.write_output(&self.tables, out, updated_at) {
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

    fn checkpoint(&mut self, dir: &Path, now_us: i64) -> Result<(), CqError> {
        // The tables first: what the checkpoint covers must be in them after a crash.
        self.tables
            .sync(self.sinks.iter().map(|s| s.table.as_str()))?;
        let state = self.runtime.checkpoint()?;
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
        let header = CheckpointHeader {
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
        let header = serde_json::to_vec(&header).map_err(|e| CqError::Checkpoint(e.to_string()))?;
        let mut bytes = CKPT_MAGIC.to_vec();
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header);
        bytes.extend(state);
        let path = checkpoint_path(dir, &self.def.name);
        atomic_write(&path, &bytes).map_err(|e| storage(&path, e))?;
        self.last_checkpoint = Instant::now();
        self.last_checkpoint_at = Some(now_us);
        self.checkpointed_seq = self.seq;
        Ok(())
    }
}

/// The event time a CQ has reached (its watermark, else its newest observation), for
/// transitions that no row causes (DROP, REPLACE).
fn event_now(live: &LiveCq) -> i64 {
    live.runtime
        .watermark()
        .filter(|w| *w > i64::MIN)
        .or_else(|| live.book.alerts.values().map(|a| a.last_event).max())
        .unwrap_or_default()
}

/// Forgets events of forgotten alerts, except (when `in_flight` may be delivered still)
/// transitions not yet delivered.
fn prune_events(events: &Events, alerts: &BTreeMap<String, Alert>, in_flight: bool) {
    events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, e| alerts.contains_key(&e.alert_id) || (in_flight && e.status == "pending"));
}

/// Records the notifying `transitions` as `alert_events` per channel and hands what is due
/// to the delivery service.
fn notify_on(
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

fn decode_checkpoint(bytes: &[u8]) -> Result<(CheckpointHeader, &[u8]), CqError> {
    let bad = |what: &str| CqError::Checkpoint(format!("checkpoint file: {what}"));
    let rest = bytes
        .strip_prefix(CKPT_MAGIC)
        .ok_or_else(|| bad("not a LogSphere CQ checkpoint"))?;
    let (len, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
    let len = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes")))
        .map_err(|_| bad("header too long"))?;
    let (header, state) = rest
        .split_at_checked(len)
        .ok_or_else(|| bad("truncated header"))?;
    let header = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    Ok((header, state))
}

/// A CQ name may hold any character; its file name is a hash of it.
fn checkpoint_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.ckpt", hex_hash(&[name])))
}

impl ContinuousQueries {
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
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| storage(&ckpt_dir, e))?;
        let tables = Arc::new(TableStore::open(data_dir)?);
        let file: DefinitionsFile = match std::fs::read(&defs_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| storage(&defs_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DefinitionsFile::default(),
            Err(e) => return Err(storage(&defs_path, e)),
        };
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
                Err(e) => return Err(storage(&path, e)),
            };
            let live = match LiveCq::build(def.clone(), checkpoint.as_deref(), &notifier, &tables)
                .await
            {
                Ok(live) => live,
                Err(e) if checkpoint.is_some() => {
                    tracing::warn!(cq = %def.name, error = %e, "cannot restore checkpoint; starting fresh");
                    match LiveCq::build(def.clone(), None, &notifier, &tables).await {
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
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
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

    fn update_hold(&self, inner: &Inner) {
        if let Some(hold) = self.wal_hold.get() {
            hold(Self::first_needed(inner));
        }
    }

    fn save_definitions(&self, inner: &Inner) -> Result<(), CqError> {
        let file = DefinitionsFile {
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
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| storage(&self.defs_path, e))?;
        atomic_write(&self.defs_path, &bytes).map_err(|e| storage(&self.defs_path, e))
    }

    /// `CREATE [OR REPLACE] CONTINUOUS QUERY [IF NOT EXISTS]`: validates the body by
    /// building the runtime, then stores the definition. `START FROM` other than NOW needs
    /// the stored logs: see [`Self::create_with_history`].
    pub async fn create(
        &self,
        cq: &CreateContinuousQuery,
        now_us: i64,
    ) -> Result<Created, CqError> {
        self.create_with_history(cq, now_us, None).await
    }

    /// [`Self::create`] with `history`, which, called under the registry lock with the start
    /// (µs) and the last WAL sequence number fed to CQs, fixes what a `START FROM`
    /// backfill reads. The caller then runs the backfill ([`super::backfill::run`]).
    pub(crate) async fn create_with_history(
        &self,
        cq: &CreateContinuousQuery,
        now_us: i64,
        history: Option<&History<'_>>,
    ) -> Result<Created, CqError> {
        let start = super::backfill::start_from_us(cq).await?;
        if start.is_some() && history.is_none() {
            return Err(CqError::Unsupported {
                sql: cq.body_sql.clone(),
                reason: "START FROM needs the engine's stored logs".into(),
            });
        }
        let name = cq.name.to_string();
        let existing = {
            let inner = self.lock();
            (inner.live.get(&name).map(|l| l.def.version))
                .or_else(|| inner.failed.get(&name).map(|(d, _)| d.version))
        };
        if existing.is_some() {
            if cq.if_not_exists {
                return Ok(Created::Exists);
            }
            if !cq.or_replace {
                return Err(CqError::AlreadyExists(name));
            }
        }
        let def = CqDefinition {
            name: name.clone(),
            version: existing.map_or(1, |v| v + 1),
            sql_text: cq.sql_text.clone(),
            state: CqState::Running,
            created_at: now_us,
            from_seq: 0,
            backfill: None,
        };
        let mut live = LiveCq::build(def, None, &self.notifier, &self.tables).await?;
        let mut inner = self.lock();
        let taken = inner.live.contains_key(&name) || inner.failed.contains_key(&name);
        if taken != existing.is_some() {
            return Err(CqError::AlreadyExists(name));
        }
        let mut cut = inner.last_seq;
        if let (Some(from_us), Some(history)) = (start, history) {
            let plan = history(from_us, inner.last_seq)?;
            cut = plan.cut;
            live.def.backfill = Some(plan);
            live.backfill_queue = Some(Vec::new());
        }
        live.def.from_seq = cut + 1;
        live.seq = cut;
        live.checkpointed_seq = cut;
        let created_tables = live.ensure_tables()?;
        let old_failed = inner.failed.remove(&name);
        let old = inner.live.insert(name.clone(), live);
        let outcome = if let Some(old) = old {
            // A new version starts with fresh state; the old version's alerts stay listed
            // (and are resolved `rule_replaced` once the new definition is stored).
            let l = inner.live.get_mut(&name).expect("just inserted");
            l.book.alerts.extend(old.book.alerts);
            l.replaced_channels = old.channels;
            let old_events =
                std::mem::take(&mut *old.events.lock().unwrap_or_else(|p| p.into_inner()));
            l.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(old_events);
            Created::Replaced
        } else if old_failed.is_some() {
            Created::Replaced
        } else {
            Created::New
        };
        if let Err(e) = self.save_definitions(&inner) {
            inner.live.remove(&name);
            if let Some(f) = old_failed {
                inner.failed.insert(name, f);
            }
            for t in created_tables {
                let _ = self.tables.remove(&t);
            }
            return Err(e);
        }
        // Hold the WAL from the new CQ's first entry before anything can flush it away.
        self.update_hold(&inner);
        let dir = self.ckpt_dir.clone();
        if let Some(l) = inner.live.get_mut(&name) {
            let version = l.def.version;
            let at = event_now(l);
            let replaced =
                l.book
                    .close_all(|a| a.cq_version == version, "rule_replaced", at, now_us);
            // The old version's channels deliver its `rule_replaced` notices; the events are
            // this CQ's now, so the new version's ticks retry them on those channels too.
            let old_channels = std::mem::take(&mut l.replaced_channels);
            notify_on(&l.notifier, &l.events, &old_channels, &replaced, now_us);
            for c in old_channels {
                if !l.channels.iter().any(|k| k.name() == c.name()) {
                    l.channels.push(c);
                }
            }
            l.checkpoint(&dir, now_us)?;
        }
        self.update_hold(&inner);
        Ok(outcome)
    }

    /// `DROP CONTINUOUS QUERY [IF EXISTS]`; returns whether one was dropped. Its pending
    /// and firing alerts resolve with reason `rule_dropped` (notified on its channels once,
    /// with retries) and stay listed, with its events, for their retention.
    pub fn drop_query(&self, name: &str, if_exists: bool) -> Result<bool, CqError> {
        let now_us = super::now_us();
        let mut inner = self.lock();
        if let Some(failed) = inner.failed.remove(name) {
            if let Err(e) = self.save_definitions(&inner) {
                inner.failed.insert(name.to_string(), failed);
                return Err(e);
            }
            return Ok(true);
        }
        let Some(old) = inner.live.remove(name) else {
            return if if_exists {
                Ok(false)
            } else {
                Err(CqError::NotFound(name.to_string()))
            };
        };
        // Resolve copies, so a failed save leaves the CQ as it was.
        let mut closing = AlertBook::new(
            old.book.alerts.values().cloned(),
            BTreeMap::new(),
            old.def.version,
        );
        let resolved = closing.close_all(|_| false, "rule_dropped", event_now(&old), now_us);
        let kept_before = inner.dropped.clone();
        inner.dropped.extend(closing.alerts);
        let old_events: Vec<AlertEvent> = old
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let events_before = {
            let mut dropped = inner
                .dropped_events
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let before = dropped.clone();
            dropped.extend(old_events.into_iter().map(|e| (e.event_id.clone(), e)));
            before
        };
        if let Err(e) = self.save_definitions(&inner) {
            inner.dropped = kept_before;
            *inner
                .dropped_events
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = events_before;
            inner.live.insert(name.to_string(), old);
            return Err(e);
        }
        let events = Arc::clone(&inner.dropped_events);
        notify_on(&self.notifier, &events, &old.channels, &resolved, now_us);
        for c in old.channels {
            if !inner.dropped_channels.iter().any(|k| k.name() == c.name()) {
                inner.dropped_channels.push(c);
            }
        }
        self.update_hold(&inner);
        let path = checkpoint_path(&self.ckpt_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(storage(&path, e)),
        }
    }

    /// `ALTER CONTINUOUS QUERY … PAUSE | RESUME`. A resumed CQ re-reads the WAL from
    /// where it paused (its WAL hold kept those entries), so a pause skips nothing.
    pub fn set_state(&self, name: &str, state: CqState) -> Result<(), CqError> {
        let resume_from = {
            let mut inner = self.lock();
            let live = inner
                .live
                .get_mut(name)
                .ok_or_else(|| CqError::NotFound(name.to_string()))?;
            let before = live.def.state;
            live.def.state = state;
            let resumed = before != CqState::Running && state == CqState::Running;
            let from = live.seq + 1;
            if resumed {
                live.catching_up = true;
            }
            if let Err(e) = self.save_definitions(&inner) {
                if let Some(l) = inner.live.get_mut(name) {
                    l.def.state = before;
                    l.catching_up = false;
                }
                return Err(e);
            }
            resumed.then_some(from)
        };
        // Not under the registry lock: the feed's lock is taken first when it goes live.
        if let (Some(from), Some(feed)) = (resume_from, self.feed.get()) {
            feed.rewind(from);
        }
        Ok(())
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
        self.feed_entry(seq, batch, now_us, false);
    }

    /// Like [`Self::process`], for an entry read back from the WAL by a catch-up, which also
    /// feeds resumed CQs re-reading from where they paused.
    pub(crate) fn process_caught_up(&self, seq: u64, batch: &RecordBatch, now_us: i64) {
        self.feed_entry(seq, batch, now_us, true);
    }

    fn feed_entry(&self, seq: u64, batch: &RecordBatch, now_us: i64, from_wal: bool) {
        let mut inner = self.lock();
        inner.last_seq = inner.last_seq.max(seq);
        for live in inner.live.values_mut() {
            if seq <= live.seq
                || live.def.state != CqState::Running
                || (live.catching_up && !from_wal)
            {
                continue;
            }
            live.seq = seq;
            if let Some(queue) = &mut live.backfill_queue {
                if batch.num_rows() > 0 {
                    queue.push((seq, batch.clone()));
                }
                continue;
            }
            if batch.num_rows() == 0 {
                continue;
            }
            let outputs = live
                .runtime
                .process("wal", Position::Wal { seq }, batch, now_us);
            // `handle` also advances the alert state machine to the batch's watermark, as
            // BACKTEST and the WAL replay on open do, not only on the next 250 ms tick;
            // otherwise whether a later match folds into the old alert or fires a new one
            // would depend on ingest speed.
            live.handle(outputs, now_us);
        }
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
        let outputs = live.runtime.process("wal", position, batch, clock_us);
        if let Err(e) = &outputs {
            return Err(CqError::Input(e.to_string()));
        }
        live.handle(outputs, clock_us);
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
        let queue = live.backfill_queue.take().unwrap_or_default();
        for (seq, batch) in queue {
            let clock = super::max_ingest_time(&batch).unwrap_or(now_us);
            let outputs = live
                .runtime
                .process("wal", Position::Wal { seq }, &batch, clock);
            live.handle(outputs, clock);
        }
        if let Some(e) = error {
            live.error = Some(e);
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
        let dir = self.ckpt_dir.clone();
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
            if live.last_checkpoint.elapsed() >= live.checkpoint_interval
                && let Err(e) = live.checkpoint(&dir, now_us)
            {
                tracing::warn!(cq = %live.def.name, error = %e, "checkpoint failed");
                live.error = Some(e.to_string());
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
    }

    /// Checkpoints every CQ now (on shutdown, so a clean restart replays nothing).
    pub fn checkpoint_all(&self, now_us: i64) {
        let dir = self.ckpt_dir.clone();
        let mut inner = self.lock();
        for live in inner.live.values_mut() {
            if live.backfill_queue.is_some() {
                // Its definition still holds the backfill plan: a restart runs it again.
                continue;
            }
            if let Err(e) = live.checkpoint(&dir, now_us) {
                tracing::warn!(cq = %live.def.name, error = %e, "checkpoint failed");
                live.error = Some(e.to_string());
            }
        }
        self.update_hold(&inner);
    }

    /// The `alerts` system table, now.
    pub fn alerts_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let inner = self.lock();
        alerts_batch(
            inner
                .live
                .values()
                .flat_map(|l| l.book.alerts.values())
                .chain(inner.dropped.values()),
        )
    }

    /// The `alert_events` system table, now.
    pub fn events_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let inner = self.lock();
        let events: Vec<AlertEvent> = inner
            .live
            .values()
            .map(|l| &l.events)
            .chain(std::iter::once(&inner.dropped_events))
            .flat_map(|events| {
                events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        events_batch(&events)
    }

    /// The `continuous_queries` system table, now.
    pub fn queries_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let inner = self.lock();
        let live = Self::live_rows(&inner)?;
        if inner.failed.is_empty() {
            return Ok(live);
        }
        let failed: Vec<&(CqDefinition, String)> = inner.failed.values().collect();
        let schema = queries_schema();
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                let n = failed.len();
                match f.name().as_str() {
                    "name" => Arc::new(StringArray::from_iter_values(
                        failed.iter().map(|(d, _)| &d.name),
                    )),
                    "version" => Arc::new(Int64Array::from_iter_values(
                        failed
                            .iter()
                            .map(|(d, _)| i64::try_from(d.version).unwrap_or(i64::MAX)),
                    )),
                    "state" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        "FAILED", n,
                    ))),
                    "created_at" => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            failed.iter().map(|(d, _)| d.created_at),
                        )
                        .with_timezone("UTC"),
                    ),
                    "definition" => Arc::new(StringArray::from_iter_values(
                        failed.iter().map(|(d, _)| &d.sql_text),
                    )),
                    "emit" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
                    "error" => {
                        Arc::new(StringArray::from_iter_values(failed.iter().map(|(_, e)| e)))
                    }
                    _ if matches!(f.data_type(), DataType::Int64) => {
                        Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(0, n)))
                    }
                    _ => arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        let failed = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        arrow::compute::concat_batches(&schema, [&live, &failed])
    }

    fn live_rows(inner: &Inner) -> Result<RecordBatch, arrow::error::ArrowError> {
        let l: Vec<&LiveCq> = inner.live.values().collect();
        let s = |f: &dyn Fn(&LiveCq) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from_iter(l.iter().map(|x| f(x))))
        };
        let ts = |f: &dyn Fn(&LiveCq) -> Option<i64>| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter(l.iter().map(|x| f(x))).with_timezone("UTC"),
            )
        };
        let int = |f: &dyn Fn(&LiveCq) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                l.iter().map(|x| i64::try_from(f(x)).unwrap_or(i64::MAX)),
            ))
        };
        RecordBatch::try_new(
            queries_schema(),
            vec![
                s(&|x| Some(x.def.name.clone())),
                int(&|x| x.def.version),
                s(&|x| {
                    Some(if x.backfill_queue.is_some() {
                        "BACKFILL".to_string()
                    } else {
                        x.def.state.as_str().to_string()
                    })
                }),
                s(&|x| Some(x.def.sql_text.clone())),
                ts(&|x| Some(x.def.created_at)),
                s(&|x| {
                    Some(
                        match x.runtime.emit_policy() {
                            EmitPolicy::OnThreshold if x.runtime.plan.agg.is_some() => {
                                "ON THRESHOLD"
                            }
                            EmitPolicy::OnWindowClose if x.runtime.plan.agg.is_some() => {
                                "ON WINDOW CLOSE"
                            }
                            _ => "PER ROW",
                        }
                        .to_string(),
                    )
                }),
                ts(&|x| x.runtime.watermark().filter(|w| *w > i64::MIN)),
                int(&|x| x.runtime.metrics().rows_in),
                int(&|x| x.runtime.metrics().late_rows_updated),
                int(&|x| x.runtime.metrics().late_rows_dropped),
                int(&|x| x.runtime.live_keys() as u64),
                int(&|x| x.book.alerts.len() as u64),
                ts(&|x| x.last_fired),
                ts(&|x| x.last_checkpoint_at),
                int(&|x| x.seq),
                s(&|x| x.error.clone()),
            ],
        )
    }
}

/// Schema of the `continuous_queries` system table.
pub fn queries_schema() -> SchemaRef {
    let ts = crate::model::ts_type;
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("created_at", ts(), false),
        Field::new("emit", DataType::Utf8, false),
        Field::new("watermark", ts(), true),
        Field::new("rows_in", DataType::Int64, false),
        Field::new("late_rows_updated", DataType::Int64, false),
        Field::new("late_rows_dropped", DataType::Int64, false),
        Field::new("state_keys", DataType::Int64, false),
        Field::new("alerts", DataType::Int64, false),
        Field::new("last_fired", ts(), true),
        Field::new("last_checkpoint", ts(), true),
        Field::new("wal_seq", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
    ]))
}
