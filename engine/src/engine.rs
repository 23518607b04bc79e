//! The embedded engine: ingest → WAL → hot buffer → Parquet, and SQL over both tiers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionContext;
use tokio::sync::{Notify, watch};

use crate::EngineError;
use datafusion::catalog::TableProvider;

use crate::catalog::LocalCatalog;
use crate::cluster::Cluster;
use crate::cold::ColdStore;
use crate::continuous::feed::{FEED_CAPACITY, Feed};
use crate::continuous::{CqRegistry, WalReader};
use crate::hot::{HotEntry, Tiers};
use crate::idempotency::{Idempotency, KeyFiles, Shared};
use crate::ingest::{DecodeOptions, decode_body};
use crate::query::tables::{TableKind, TierScope, TierTable};
use crate::tiering;
use crate::wal::{IngestEntry, Wal, WalMetrics};

/// How the embedded engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory holding the WAL, the cold tier and the catalog.
    pub data_dir: PathBuf,
    /// Flush the hot buffer once its oldest record is this old.
    pub flush_interval: Duration,
    /// Flush the hot buffer once it holds this many rows.
    pub flush_max_rows: usize,
    /// Ingest waits (back-pressure) while the hot buffer holds this many rows.
    pub max_hot_rows: usize,
    /// WAL segment size before rollover.
    pub wal_segment_bytes: u64,
    /// Fault injection for crash tests: pause between writing Parquet and committing it.
    pub fault_flush_pause: Option<Duration>,
    /// Fault injection for crash tests: pause between writing a compaction's merged file
    /// and committing it.
    pub fault_compact_pause: Option<Duration>,
    /// Compaction of the cold tier's small files (embedded mode).
    pub compaction: crate::compaction::CompactionConfig,
    /// Which `attributes` keys tiering writes as typed columns (`fields`; embedded mode).
    pub fields: crate::fields::FieldsConfig,
    /// NOTIFY delivery: threads, queue, retry policy, retention, Kafka brokers.
    pub notify: crate::continuous::NotifyConfig,
    /// WAL entries queued for the continuous queries before they catch up from the WAL
    /// instead (continuous/feed.rs).
    pub cq_feed_capacity: usize,
    /// The cold tier's URL (`file:///…`, `hdfs://namenode:port/…`); `None`: `<data_dir>/cold`.
    pub cold_url: Option<String>,
    /// How long one cold-store write may take before the flush or round fails (and is
    /// retried).
    pub cold_timeout: Duration,
    /// Cluster mode (Kafka in, Cassandra hot) when set; embedded otherwise.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Decoding limits for the records the Kafka source reads (cluster mode).
    pub decode: DecodeOptions,
    /// Memory all running SQL queries may hold together, in bytes: sorts, aggregations and
    /// joins share it fairly and spill to disk beyond their share; an operator that cannot
    /// spill fails its query (SQLSTATE 53200) instead of growing the server. `None`: no
    /// limit.
    pub query_memory: Option<usize>,
}

impl EngineConfig {
    /// A configuration with defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            flush_interval: Duration::from_secs(300),
            flush_max_rows: 1_000_000,
            max_hot_rows: 4_000_000,
            wal_segment_bytes: 64 * 1024 * 1024,
            fault_flush_pause: None,
            fault_compact_pause: None,
            compaction: crate::compaction::CompactionConfig::default(),
            fields: crate::fields::FieldsConfig::default(),
            notify: crate::continuous::NotifyConfig::default(),
            cq_feed_capacity: FEED_CAPACITY,
            cold_url: None,
            cold_timeout: crate::cold::DEFAULT_TIMEOUT,
            cluster: None,
            decode: DecodeOptions::default(),
            query_memory: None,
        }
    }
}

/// What an ingest request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Records stored in `logs`.
    pub accepted: usize,
    /// Records stored in `dead_letters`.
    pub rejected: usize,
    /// True when this answer repeats an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Ingest requests answered.
    pub requests: AtomicU64,
    /// Records accepted into `logs`.
    pub records_accepted: AtomicU64,
    /// Records rejected into `dead_letters`.
    pub records_rejected: AtomicU64,
    /// Requests answered from the idempotency table.
    pub requests_replayed: AtomicU64,
    /// Completed flushes to Parquet.
    pub flushes: AtomicU64,
    /// Rows written to Parquet.
    pub flushed_rows: AtomicU64,
    /// Failed flush attempts.
    pub flush_failures: AtomicU64,
    /// SQL queries run.
    pub queries: AtomicU64,
    /// Compactions committed (one per merged group).
    pub compactions: AtomicU64,
    /// Cold files merged away by compactions.
    pub compacted_files: AtomicU64,
    /// Failed compaction rounds.
    pub compaction_failures: AtomicU64,
    /// Retired cold files deleted after their grace period.
    pub retired_files_removed: AtomicU64,
}

/// The cold tier as the committed manifest names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdStats {
    /// Live files of `logs` and of `dead_letters`.
    pub log_files: usize,
    pub dead_letter_files: usize,
    /// Bytes in the live files.
    pub bytes: u64,
    /// Files replaced by a compaction, waiting for their grace period.
    pub retired_files: usize,
}

/// What an idempotency-key lookup tells a request to do.
enum Claim {
    Done(IngestOutcome),
    Wait(Shared),
    Owner(watch::Sender<Option<Result<IngestOutcome, String>>>),
}

/// The running engine, shared by every connection.
pub struct Engine {
    config: EngineConfig,
    pub(crate) tiers: Arc<Tiers>,
    pub(crate) wal: Wal,
    pub(crate) cold: ColdStore,
    pub(crate) catalog: LocalCatalog,
    idempotency: Arc<Mutex<Idempotency>>,
    pub(crate) keys: KeyFiles,
    /// WAL positions readers still need (name → first seq needed); segments at or above the
    /// smallest are kept.
    wal_holds: Mutex<HashMap<String, u64>>,
    metrics: EngineMetrics,
    runtime: Arc<RuntimeEnv>,
    /// Cluster tiering's counters and state.
    tiering: Arc<tiering::TieringMetrics>,
    tables: Vec<(&'static str, Arc<dyn TableProvider>)>,
    /// Cluster mode's Kafka source, Cassandra store and producer.
    cluster: Option<Arc<Cluster>>,
    /// Cluster mode's continuous queries (shared definitions, feeder, alerts).
    cluster_cq: Option<Arc<crate::cluster::continuous::ClusterCq>>,
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    pub(crate) compaction: crate::compaction::Scheduler,
    flush_wanted: Arc<Notify>,
    continuous: Arc<CqRegistry>,
    cq_feed: Arc<Feed>,
    stop: watch::Sender<bool>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) the data directory, removes debris of interrupted flushes,
    /// replays the WAL into the hot buffer and starts the background flusher.
    pub async fn open(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let dir = &config.data_dir;
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(EngineError::Catalog {
                path: lock_path,
                reason: "another logsphere process is using this data directory".into(),
            });
        }
        let catalog = LocalCatalog::new(dir);
        let mut manifest = catalog.load()?;
        let cold = match &config.cold_url {
            Some(url) => ColdStore::open(url, "cold.url")?,
            None => ColdStore::local(&dir.join("cold"))?,
        }
        .with_timeout(config.cold_timeout);
        // In cluster mode the manifest that names the shared cold files is in Cassandra, and
        // its tierer removes the debris; the local manifest knows none of them.
        let orphans = if config.cluster.is_none() {
            cold.remove_orphans(&manifest).await?
        } else {
            0
        };
        // A damaged committed file would fail every query over its table: set it aside.
        if config.cluster.is_none() {
            let damaged = cold.set_aside_damaged(&mut manifest).await?;
            if !damaged.is_empty() {
                manifest.version += 1;
                catalog.commit(&manifest)?;
            }
        }
        // Cluster mode's manifest is Cassandra's, loaded by the tierer within a second; until
        // then nothing counts as tiered and every hot row is answered (none is deleted).
        let tiers = Arc::new(Tiers::new(if config.cluster.is_some() {
            crate::catalog::Manifest::default()
        } else {
            manifest.clone()
        }));
        let mut idempotency = Idempotency::default();
        let keys = KeyFiles::new(dir);
        let keys_loaded = keys.load(&mut idempotency)?;
        let continuous = Arc::new(CqRegistry::open_with(dir, &config.notify).await.map_err(
            |e| EngineError::Catalog {
                path: dir.join("continuous_queries.json"),
                reason: e.to_string(),
            },
        )?);
        let cq_replay_from = continuous.replay_from();
        let mut cq_replay = Vec::new();
        // Unfinished START FROM backfills read their hot part back from the WAL.
        let backfills = continuous.pending_backfills();
        let mut backfill_hot: Vec<Vec<(u64, arrow::array::RecordBatch)>> =
            vec![Vec::new(); backfills.len()];
        let started = Instant::now();
        let (wal, report) = Wal::open(
            &dir.join("wal"),
            config.wal_segment_bytes,
            manifest.flushed_seq + 1,
            |e| {
                let entry = IngestEntry::decode(e.seq, &e.payload)?;
                if let Some(key) = entry.key {
                    let outcome = IngestOutcome {
                        accepted: entry.logs.num_rows(),
                        rejected: entry.dead_letters.num_rows(),
                        replayed: true,
                    };
                    idempotency.record(key.clone(), outcome, Duration::ZERO);
                    idempotency.durable(e.seq, key, outcome);
                }
                if cq_replay_from.is_some_and(|from| e.seq >= from) && entry.logs.num_rows() > 0 {
                    cq_replay.push((e.seq, entry.logs.clone()));
                }
                for ((_, _, plan), hot) in backfills.iter().zip(&mut backfill_hot) {
                    if plan.reads_wal_entry(e.seq) && entry.logs.num_rows() > 0 {
                        hot.push((e.seq, entry.logs.clone()));
                    }
                }
                tiers.insert(HotEntry::new(e.seq, entry.logs, entry.dead_letters));
                Ok(())
            },
        )?;
        let (hot_rows, _) = tiers.hot_stats();
        tracing::info!(
            segments = report.segments,
            entries = report.entries,
            cut_bytes = report.cut_bytes,
            hot_rows,
            cold_files = manifest.logs.len(),
            orphans_removed = orphans,
            idempotency_keys_loaded = keys_loaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "WAL replayed"
        );
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::start(c.clone(), config.decode.clone())?),
            None => None,
        };
        let tables = register_tables(&tiers, &cold, cluster.as_ref());
        let cluster_cq = cluster.as_ref().map(|c| {
            let logs = tables
                .iter()
                .find(|(n, _)| *n == "logs")
                .map(|(_, t)| Arc::clone(t));
            crate::cluster::continuous::ClusterCq::start(
                Arc::clone(c),
                Arc::clone(&continuous),
                dir,
                config.decode.clone(),
                logs,
            )
        });
        // Every CQ resumes from its checkpoint: the WAL entries after it are fed again
        // (alerts are upserted by deterministic id, so this adds no duplicates).
        if let Some(from) = cq_replay_from {
            let oldest = cq_replay.first().map(|(seq, _)| *seq);
            tracing::info!(
                from,
                oldest,
                entries = cq_replay.len(),
                "replaying WAL into continuous queries"
            );
        }
        for (seq, logs) in cq_replay {
            let now =
                crate::continuous::max_ingest_time(&logs).unwrap_or_else(crate::continuous::now_us);
            continuous.process(seq, &logs, now);
        }
        let last_seq = wal.next_seq().saturating_sub(1);
        let (cq_feed, cq_rx) = Feed::new(config.cq_feed_capacity, last_seq);
        let cq_feed = Arc::new(cq_feed);
        continuous.set_feed(Arc::clone(&cq_feed));
        let (stop, _) = watch::channel(false);
        let runtime = match config.query_memory {
            Some(bytes) => RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::new(FairSpillPool::new(bytes)))
                .build_arc()?,
            None => Arc::new(RuntimeEnv::default()),
        };
        let engine = Arc::new(Self {
            config,
            tiers,
            wal,
            cold,
            catalog,
            idempotency: Arc::new(Mutex::new(idempotency)),
            keys,
            wal_holds: Mutex::new(HashMap::new()),
            metrics: EngineMetrics::default(),
            runtime,
            tiering: Default::default(),
            tables,
            cluster,
            cluster_cq,
            flush_lock: tokio::sync::Mutex::new(()),
            compaction: crate::compaction::Scheduler::default(),
            flush_wanted: Arc::new(Notify::new()),
            continuous: Arc::clone(&continuous),
            cq_feed: Arc::clone(&cq_feed),
            stop,
            _lock: lock,
        });
        let weak = Arc::downgrade(&engine);
        continuous.set_wal_hold(Box::new(move |from| {
            if let Some(engine) = weak.upgrade() {
                engine.hold_wal_for_cqs(from);
            }
        }));
        for ((name, version, plan), hot) in backfills.into_iter().zip(backfill_hot) {
            tracing::info!(cq = %name, "resuming an unfinished START FROM backfill from its start");
            engine.spawn_backfill(name, version, plan, hot);
        }
        let weak = Arc::downgrade(&engine);
        let read: WalReader = Arc::new(move |from, through, each| {
            let engine = weak.upgrade().ok_or("the engine is shutting down")?;
            engine
                .wal
                .read_range(from, through, |e| {
                    let entry = IngestEntry::decode(e.seq, &e.payload)?;
                    if entry.logs.num_rows() > 0 {
                        each(e.seq, &entry.logs);
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())
        });
        tokio::spawn(crate::continuous::run(
            continuous,
            cq_feed,
            cq_rx,
            read,
            engine.stop.subscribe(),
        ));
        if engine.cluster.is_some() {
            tokio::spawn(crate::cluster::tiering::run(
                Arc::downgrade(&engine),
                engine.stop.subscribe(),
            ));
        }
        tokio::spawn(tiering::run_flusher(
            Arc::downgrade(&engine),
            Arc::clone(&engine.flush_wanted),
            engine.stop.subscribe(),
        ));
        Ok(engine)
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Decodes a request body and makes its records durable. Answers only after the WAL
    /// entry is fsynced; a repeated `key` gets the first request's answer and stores nothing.
    pub async fn ingest(
        &self,
        body: bytes::Bytes,
        key: Option<String>,
        opts: DecodeOptions,
    ) -> Result<IngestOutcome, EngineError> {
        if let Some(cluster) = &self.cluster {
            return self.produce(cluster, &body, key.as_deref(), &opts).await;
        }
        let Some(key) = key else {
            return self.ingest_new(body, None, opts).await;
        };
        loop {
            match self.claim(&key)? {
                Claim::Done(outcome) => return Ok(self.replayed(outcome)),
                Claim::Owner(tx) => {
                    let result = self.ingest_new(body, Some(key.clone()), opts).await;
                    if let Ok(mut idem) = self.idempotency.lock() {
                        idem.inflight.remove(&key);
                        if let Ok(outcome) = &result {
                            idem.record(key, *outcome, Duration::ZERO);
                        }
                    }
                    let _ = tx.send(Some(result.as_ref().map(|o| *o).map_err(|e| e.to_string())));
                    return result;
                }
                Claim::Wait(mut rx) => {
                    // Another request with the same key is being written: answer as it does.
                    let shared = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone());
                    if let Ok(Some(Ok(outcome))) = shared {
                        return Ok(self.replayed(outcome));
                    }
                    // It failed: try again, as the owner if nobody else got there first.
                }
            }
        }
    }

    /// Cluster mode: the records go to Kafka; the answer waits for the brokers' ack, and
    /// decoding happens where they are consumed (so `accepted` counts records produced),
    /// as `opts` says: each message carries the request's format and origin, and the
    /// records of `opts.rejected` go as dead letters with their reason.
    /// A `key` is claimed in Cassandra first, so a repeat on any node stores nothing.
    async fn produce(
        &self,
        cluster: &Cluster,
        body: &[u8],
        key: Option<&str>,
        opts: &DecodeOptions,
    ) -> Result<IngestOutcome, EngineError> {
        let produced = match key {
            None => cluster.produce(body, opts).await?,
            Some(key) => {
                let outcome = cluster.produce_once(key, body, opts).await?;
                if outcome.replayed {
                    return Ok(self.replayed(outcome));
                }
                outcome.accepted
            }
        };
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .records_accepted
            .fetch_add(produced as u64, Ordering::Relaxed);
        Ok(IngestOutcome {
            accepted: produced,
            rejected: 0,
            replayed: false,
        })
    }

    /// The answer to a repeated request: the first one's, flagged as a replay.
    fn replayed(&self, outcome: IngestOutcome) -> IngestOutcome {
        self.metrics
            .requests_replayed
            .fetch_add(1, Ordering::Relaxed);
        IngestOutcome {
            replayed: true,
            ..outcome
        }
    }

    /// Decides, under the lock, whether this request writes, waits or answers at once.
    fn claim(&self, key: &str) -> Result<Claim, EngineError> {
        let mut idem = self
            .idempotency
            .lock()
            .map_err(|_| EngineError::ShuttingDown)?;
        if let Some((outcome, _)) = idem.done.get(key) {
            return Ok(Claim::Done(*outcome));
        }
        if let Some(rx) = idem.inflight.get(key) {
            return Ok(Claim::Wait(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        idem.inflight.insert(key.to_string(), rx);
        Ok(Claim::Owner(tx))
    }

    async fn ingest_new(
        &self,
        body: bytes::Bytes,
        key: Option<String>,
        opts: DecodeOptions,
    ) -> Result<IngestOutcome, EngineError> {
        self.wait_for_room().await;
        let ingest_time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let decoded = if body.len() > 256 * 1024 {
            tokio::task::spawn_blocking(move || decode_body(&body, ingest_time, &opts))
                .await
                .map_err(|_| EngineError::ShuttingDown)?
        } else {
            decode_body(&body, ingest_time, &opts)
        };
        let outcome = IngestOutcome {
            accepted: decoded.accepted(),
            rejected: decoded.rejected(),
            replayed: false,
        };
        let entry = IngestEntry {
            key,
            logs: decoded.logs,
            dead_letters: decoded.dead_letters,
        };
        let payload = entry.encode()?;
        let tiers = Arc::clone(&self.tiers);
        let idempotency = Arc::clone(&self.idempotency);
        let (key, logs, dead) = (entry.key, entry.logs, entry.dead_letters);
        let cq_feed = Arc::clone(&self.cq_feed);
        let on_durable = move |seq| {
            // Runs on the WAL thread in sequence order: hand the rows off, never evaluate here.
            // The hot tier first: whatever the CQ task has seen, the hot tier holds (or has
            // flushed), which a `START FROM` backfill relies on to cut without waiting.
            let cq_logs = (logs.num_rows() > 0).then(|| logs.clone());
            tiers.insert(HotEntry::new(seq, logs, dead));
            cq_feed.offer(seq, cq_logs);
            if let (Some(key), Ok(mut idem)) = (key, idempotency.lock()) {
                idem.durable(seq, key, outcome);
            }
        };
        self.wal.append(payload, Box::new(on_durable)).await?;
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .records_accepted
            .fetch_add(outcome.accepted as u64, Ordering::Relaxed);
        self.metrics
            .records_rejected
            .fetch_add(outcome.rejected as u64, Ordering::Relaxed);
        if self.tiers.hot_stats().0 >= self.config.flush_max_rows {
            self.flush_wanted.notify_one();
        }
        Ok(outcome)
    }

    /// Back-pressure: while the hot buffer is over its bound (flushes are failing or slow),
    /// ingest waits instead of growing memory without limit.
    async fn wait_for_room(&self) {
        while self.tiers.hot_stats().0 >= self.config.max_hot_rows && !*self.stop.borrow() {
            self.flush_wanted.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Flushes the whole hot buffer to Parquet now; returns the rows moved.
    /// Embedded: flushes the hot buffer. Cluster: runs a tiering round now (waiting for
    /// another node's lease) and answers once it is committed.
    pub async fn flush(&self) -> Result<u64, EngineError> {
        if self.cluster.is_some() {
            let now = chrono::Utc::now().timestamp_micros();
            return crate::cluster::tiering::round(self, now, true)
                .await
                .map(|r| r.rows);
        }
        tiering::flush(self).await
    }

    /// Runs one compaction round now (see `compaction.rs`): retired files past their grace
    /// are deleted, and the small files of each partition directory are merged.
    pub async fn compact(&self) -> Result<crate::compaction::CompactionReport, EngineError> {
        if self.cluster.is_some() {
            return crate::cluster::tiering::compact(self, true).await;
        }
        crate::compaction::run_round(self, false).await
    }

    /// A fresh DataFusion session (one per client connection) with `logs`, `logs_hot`,
    /// `logs_cold` and `dead_letters` registered, the log functions, and
    /// `information_schema` on.
    pub fn session_context(&self) -> SessionContext {
        let ctx = crate::query::base_session(Arc::clone(&self.runtime));
        // CQ tables are looked up at planning time: a CQ may create one after this session.
        if let Some(catalog) = ctx.catalog("logsphere")
            && let Some(public) = catalog.schema("public")
        {
            // Cluster mode: the tables every node shares through Cassandra.
            let managed: Arc<dyn crate::query::managed::ManagedTables> = match &self.cluster_cq {
                Some(cq) => Arc::clone(cq) as _,
                None => Arc::clone(self.continuous.tables()) as _,
            };
            let schema = crate::query::managed::PublicSchema::new(public, managed);
            if let Err(e) = catalog.register_schema("public", Arc::new(schema)) {
                tracing::error!(error = %e, "cannot register the CQ tables");
            }
        }
        for (name, table) in &self.tables {
            if let Err(e) = ctx.register_table(*name, Arc::clone(table)) {
                tracing::error!(table = name, error = %e, "cannot register table");
            }
        }
        let system = [
            (
                "alerts",
                crate::continuous::alerts_schema(),
                Arc::clone(&self.continuous),
                CqRegistry::alerts_batch as fn(&CqRegistry) -> _,
            ),
            (
                "alert_events",
                crate::continuous::alert_events_schema(),
                Arc::clone(&self.continuous),
                CqRegistry::events_batch,
            ),
            (
                "continuous_queries",
                crate::continuous::queries_schema(),
                Arc::clone(&self.continuous),
                CqRegistry::queries_batch,
            ),
        ];
        if self.cluster.is_none() {
            ctx.add_analyzer_rule(Arc::new(crate::fields::rewrite::PromotedFieldRewrite));
            let tiers = Arc::clone(&self.tiers);
            let table = crate::query::system::SnapshotTable::new(
                crate::fields::promoted_fields_schema(),
                move || crate::fields::promoted_fields_batch(&tiers.manifest()),
            );
            if let Err(e) = ctx.register_table("promoted_fields", Arc::new(table)) {
                tracing::error!(table = "promoted_fields", error = %e, "cannot register table");
            }
        }
        let (tiers, metrics) = (Arc::clone(&self.tiers), Arc::clone(&self.tiering));
        let table =
            crate::query::system::SnapshotTable::new(tiering::tiering_schema(), move || {
                tiering::tiering_batch(&tiers.manifest(), &metrics)
            });
        if let Err(e) = ctx.register_table("tiering", Arc::new(table)) {
            tracing::error!(table = "tiering", error = %e, "cannot register table");
        }
        if let Some(cluster) = &self.cluster {
            let cluster = Arc::clone(cluster);
            let table = crate::query::system::SnapshotTable::new(
                crate::cluster::runtime::partitions_schema(),
                move || cluster.partitions_batch(),
            );
            if let Err(e) = ctx.register_table("kafka_partitions", Arc::new(table)) {
                tracing::error!(table = "kafka_partitions", error = %e, "cannot register table");
            }
        }
        if let Some(cq) = &self.cluster_cq {
            let cq = Arc::clone(cq);
            let table = crate::query::system::SnapshotTable::new(
                crate::cluster::continuous::nodes_schema(),
                move || cq.nodes_batch(),
            );
            if let Err(e) = ctx.register_table("continuous_query_nodes", Arc::new(table)) {
                tracing::error!(table = "continuous_query_nodes", error = %e, "cannot register table");
            }
        }
        for (name, schema, queries, snapshot) in system {
            if let (Some(cq), "continuous_queries") = (&self.cluster_cq, name) {
                // Cluster mode: with the nodes that run each query.
                let cq = Arc::clone(cq);
                let table =
                    crate::query::system::SnapshotTable::new(schema, move || cq.queries_batch());
                if let Err(e) = ctx.register_table(name, Arc::new(table)) {
                    tracing::error!(table = name, error = %e, "cannot register table");
                }
                continue;
            }
            if let (Some(cq), "alerts") = (&self.cluster_cq, name) {
                // Cluster mode: the alerts of every node, from Cassandra.
                let cq = Arc::clone(cq);
                let table =
                    crate::query::system::SnapshotTable::new(schema, move || cq.alerts_batch());
                if let Err(e) = ctx.register_table(name, Arc::new(table)) {
                    tracing::error!(table = name, error = %e, "cannot register table");
                }
                continue;
            }
            let table =
                crate::query::system::SnapshotTable::new(schema, move || snapshot(&queries));
            if let Err(e) = ctx.register_table(name, Arc::new(table)) {
                tracing::error!(table = name, error = %e, "cannot register table");
            }
        }
        ctx
    }

    /// Cluster mode's parts; `None` embedded.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The continuous queries and their alerts.
    pub fn continuous(&self) -> &CqRegistry {
        &self.continuous
    }

    /// `CREATE CONTINUOUS QUERY`, with `START FROM` before NOW backfilling from the stored
    /// logs. Returns once the definition is stored; the backfill runs in the background
    /// (state `BACKFILL` in `continuous_queries`) and then the CQ continues live.
    pub async fn create_continuous_query(
        self: &Arc<Self>,
        cq: &logsphere_sql::CreateContinuousQuery,
    ) -> Result<crate::continuous::Created, crate::continuous::CqError> {
        use crate::continuous::{BackfillPlan, CqError};
        if let Some(cluster_cq) = &self.cluster_cq {
            return cluster_cq.create(cq).await;
        }
        if cq.start_from == logsphere_sql::StartFrom::Now {
            return self
                .continuous
                .create(cq, crate::continuous::now_us())
                .await;
        }
        // Until the plan is stored, keep the WAL entries it will name from being deleted.
        let holder = format!("backfill:{}", cq.name);
        self.hold_wal(&holder, self.tiers.manifest().flushed_seq + 1);
        let snapshot = Mutex::new(None);
        let history = |from_us: i64, fed: u64| -> Result<BackfillPlan, CqError> {
            // Every entry is in the hot tier before it is offered to the CQs (see
            // `on_durable`), so the snapshot holds everything CQs were fed: it is history.
            let s = self.tiers.snapshot();
            let top = s
                .hot
                .last()
                .map_or(0, |e| e.seq)
                .max(s.manifest.flushed_seq);
            if top < fed {
                return Err(crate::continuous::StorageError::HotTierBehind(fed).into());
            }
            let plan = BackfillPlan::new(from_us, &s.manifest, top);
            if let Ok(mut slot) = snapshot.lock() {
                *slot = Some(s.hot);
            }
            Ok(plan)
        };
        let created = self
            .continuous
            .create_with_history(cq, crate::continuous::now_us(), Some(&history), None)
            .await;
        self.release_wal(&holder);
        let created = created?;
        if created != crate::continuous::Created::Exists {
            let name = cq.name.to_string();
            let pending = self.continuous.pending_backfills();
            let hot = snapshot.into_inner().ok().flatten().unwrap_or_default();
            if let Some((_, version, plan)) = pending.into_iter().find(|(n, _, _)| *n == name) {
                let hot = hot
                    .iter()
                    .filter(|e| plan.reads_wal_entry(e.seq) && e.logs.num_rows() > 0)
                    .map(|e| (e.seq, e.logs.clone()))
                    .collect();
                self.spawn_backfill(name, version, plan, hot);
            }
        }
        Ok(created)
    }

    /// `DROP CONTINUOUS QUERY [IF EXISTS]`: on every node in cluster mode.
    pub async fn drop_continuous_query(
        &self,
        name: &str,
        if_exists: bool,
    ) -> Result<bool, crate::continuous::CqError> {
        match &self.cluster_cq {
            Some(c) => c.drop_query(name, if_exists).await,
            None => self.continuous.drop_query(name, if_exists),
        }
    }

    /// `ALTER CONTINUOUS QUERY … PAUSE | RESUME`: on every node in cluster mode.
    pub async fn alter_continuous_query(
        &self,
        name: &str,
        state: crate::continuous::CqState,
    ) -> Result<(), crate::continuous::CqError> {
        match &self.cluster_cq {
            Some(c) => c.set_state(name, state).await,
            None => self.continuous.set_state(name, state),
        }
    }

    fn spawn_backfill(
        self: &Arc<Self>,
        name: String,
        version: u64,
        plan: crate::continuous::BackfillPlan,
        hot: Vec<(u64, arrow::array::RecordBatch)>,
    ) {
        let input = crate::continuous::BackfillInput {
            plan,
            hot,
            cold: self.cold.clone(),
        };
        let weak = Arc::downgrade(self);
        let stopped = move || weak.upgrade().is_none_or(|e| e.stopped());
        tokio::spawn(crate::continuous::run_backfill(
            Arc::clone(&self.continuous),
            name,
            version,
            input,
            stopped,
        ));
    }

    /// Keeps the WAL entries continuous queries would replay after a restart.
    fn hold_wal_for_cqs(&self, from: Option<u64>) {
        match from {
            Some(seq) => self.hold_wal("continuous_queries", seq),
            None => self.release_wal("continuous_queries"),
        }
    }

    /// Keeps WAL segments holding entries from `from_seq` on, for a reader (e.g. a
    /// continuous query that must replay them after a restart) named `holder`. A new call
    /// moves the holder's mark; segments below every mark and the flush horizon are deleted.
    pub fn hold_wal(&self, holder: &str, from_seq: u64) {
        if let Ok(mut holds) = self.wal_holds.lock() {
            holds.insert(holder.to_string(), from_seq);
        }
    }

    /// Drops `holder`'s mark (see [`Engine::hold_wal`]).
    pub fn release_wal(&self, holder: &str) {
        if let Ok(mut holds) = self.wal_holds.lock() {
            holds.remove(holder);
        }
    }

    /// The last WAL sequence number that may be deleted, given the flush `horizon`.
    pub(crate) fn wal_deletable_through(&self, horizon: u64) -> u64 {
        let held = self
            .wal_holds
            .lock()
            .ok()
            .and_then(|h| h.values().min().copied());
        match held {
            Some(first_needed) => horizon.min(first_needed.saturating_sub(1)),
            None => horizon,
        }
    }

    /// Writes the idempotency keys of entries up to `horizon` to a key file.
    pub(crate) fn persist_keys(&self, horizon: u64) -> Result<(), EngineError> {
        let mut idem = self
            .idempotency
            .lock()
            .map_err(|_| EngineError::ShuttingDown)?;
        self.keys.persist(&mut idem, horizon)
    }

    /// Counts one SQL query (for `/metrics`).
    pub fn note_query(&self) {
        self.metrics.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// The engine's counters.
    /// What tiering (flushes, cluster rounds) did.
    pub fn tiering_metrics(&self) -> &tiering::TieringMetrics {
        &self.tiering
    }

    /// The engine's counters.
    /// Bytes the running queries hold in the query memory pool (`pg.query_memory_mb`).
    pub fn query_memory_reserved(&self) -> usize {
        self.runtime.memory_pool.reserved()
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// How often continuous queries fell behind ingest and read the WAL back to catch up.
    pub fn cq_catch_ups(&self) -> u64 {
        self.cq_feed.catch_ups()
    }

    /// The WAL's counters.
    pub fn wal_metrics(&self) -> &WalMetrics {
        self.wal.metrics()
    }

    /// Why ingest is refused until a restart (the WAL's fsync failed), if it is.
    pub fn not_durable(&self) -> Option<String> {
        self.wal
            .metrics()
            .broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Cluster mode: the committed cold horizon (µs), once a round moved anything.
    pub fn tier_horizon_us(&self) -> Option<i64> {
        self.tiers.manifest().cut.as_ref().map(|c| c.horizon_us)
    }

    /// Rows in the hot buffer, and cold files committed.
    pub fn tier_stats(&self) -> (usize, usize) {
        (self.tiers.hot_stats().0, self.tiers.manifest().logs.len())
    }

    /// The committed cold files: live, their bytes, and retired ones not yet deleted.
    pub fn cold_stats(&self) -> ColdStats {
        let m = self.tiers.manifest();
        ColdStats {
            log_files: m.logs.len(),
            dead_letter_files: m.dead_letters.len(),
            bytes: m.logs.iter().chain(&m.dead_letters).map(|f| f.bytes).sum(),
            retired_files: m.retired.len(),
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stops the flusher and closes the WAL after every acknowledged append is synced.
    pub async fn shutdown(&self) {
        if let Some(cq) = &self.cluster_cq {
            cq.stop();
        }
        if let Some(cluster) = &self.cluster {
            cluster.stop().await;
        }
        let _ = self.stop.send(true);
        let _guard = self.flush_lock.lock().await;
        self.wal.close();
        // Entries still on their way to the CQ task are after this and replayed on open.
        self.continuous.checkpoint_all(crate::continuous::now_us());
    }
}

/// `logs`, `logs_hot`, `logs_cold` and `dead_letters`: the embedded tiers, or in cluster
/// mode the Cassandra hot tier in place of the in-memory one, cut by the manifest that the
/// same scan reads the cold files of (one snapshot: no row twice, none missing).
fn register_tables(
    tiers: &Arc<Tiers>,
    cold: &ColdStore,
    cluster: Option<&Arc<Cluster>>,
) -> Vec<(&'static str, Arc<dyn TableProvider>)> {
    let tier = |kind, scope| -> Arc<dyn TableProvider> {
        Arc::new(TierTable::new(kind, scope, Arc::clone(tiers), cold.clone()))
    };
    let Some(cluster) = cluster else {
        return vec![
            ("logs", tier(TableKind::Logs, TierScope::Both)),
            ("logs_hot", tier(TableKind::Logs, TierScope::Hot)),
            ("logs_cold", tier(TableKind::Logs, TierScope::Cold)),
            (
                "dead_letters",
                tier(TableKind::DeadLetters, TierScope::Both),
            ),
        ];
    };
    let cut = |kind, scope| -> Arc<dyn TableProvider> {
        Arc::new(
            TierTable::new(kind, scope, Arc::clone(tiers), cold.clone())
                .with_cluster(Arc::clone(cluster)),
        )
    };
    vec![
        ("logs", cut(TableKind::Logs, TierScope::Both)),
        ("logs_hot", cut(TableKind::Logs, TierScope::Hot)),
        ("logs_cold", cut(TableKind::Logs, TierScope::Cold)),
        ("dead_letters", cut(TableKind::DeadLetters, TierScope::Both)),
    ]
}
