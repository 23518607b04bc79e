//! The running cluster-mode parts of one node: the Cassandra store, the Kafka source and
//! the producer HTTP ingest writes through.
//!
//! Startup never fails because a service is down: a background task connects to Cassandra
//! and Kafka, retrying with a log line per attempt, and [`Cluster::ready`] says what it is
//! waiting for (`/healthz` answers 503 with that text until both answer).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::watch;

use super::ClusterConfig;
use super::produce::LogProducer;
use crate::EngineError;
use crate::hot::HotStore;
use crate::hot::cassandra::CassandraStore;
use crate::ingest::DecodeOptions;
use crate::model::{UTC, ts_type};
use crate::source::kafka::{KafkaMetrics, KafkaSource, PartitionStatus};
use crate::source::{PartitionProgress, ProgressStore};

/// How long to wait between connection attempts to a service that does not answer.
const RETRY: Duration = Duration::from_secs(2);
/// How often `kafka_partitions` refreshes the group's progress and the high watermarks.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// What a connected node runs.
struct Running {
    store: Arc<CassandraStore>,
    source: KafkaSource,
}

/// One partition as `kafka_partitions` shows it.
#[derive(Debug, Clone)]
struct PartitionRow {
    progress: PartitionProgress,
    high_watermark: Option<i64>,
    local: Option<PartitionStatus>,
}

/// This node's cluster-mode parts.
pub struct Cluster {
    config: ClusterConfig,
    producer: LogProducer,
    running: OnceLock<Running>,
    /// What the node is waiting for, while it is not ready.
    waiting: Mutex<String>,
    /// The group's partitions as last read (every [`STATUS_REFRESH`]).
    partitions: Mutex<Vec<PartitionRow>>,
    /// Whether the cold manifest was read from Cassandra since start (scans wait for it).
    catalog_loaded: std::sync::atomic::AtomicBool,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts connecting in the background; returns at once.
    pub fn start(config: ClusterConfig, decode: DecodeOptions) -> Result<Arc<Self>, EngineError> {
        let producer = LogProducer::new(
            &config.kafka.brokers,
            super::idempotency::produce_timeout(config.ingest_key_lease),
        )?;
        let (stop, _) = watch::channel(false);
        let cluster = Arc::new(Self {
            config,
            producer,
            running: OnceLock::new(),
            waiting: Mutex::new("connecting to Cassandra".into()),
            partitions: Mutex::new(Vec::new()),
            catalog_loaded: std::sync::atomic::AtomicBool::new(false),
            stop,
        });
        tokio::spawn(connect(Arc::clone(&cluster), decode));
        Ok(cluster)
    }

    /// This node's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// `Ok` once Cassandra and Kafka answered and consumption started; otherwise what the
    /// node is waiting for.
    pub fn ready(&self) -> Result<(), String> {
        match self.running.get() {
            Some(_) => Ok(()),
            None => Err(self
                .waiting
                .lock()
                .map(|w| w.clone())
                .unwrap_or_else(|_| "starting".into())),
        }
    }

    /// Checks Cassandra now (for `/healthz`).
    pub async fn ping(&self) -> Result<(), String> {
        self.ready()?;
        match self.running.get() {
            Some(r) => r.store.ping().await.map_err(|e| e.to_string()),
            None => Err("not connected".into()),
        }
    }

    /// The producer HTTP ingest writes with.
    pub(super) fn producer(&self) -> &LogProducer {
        &self.producer
    }

    /// Produces a request body, read with `opts`, to the ingest topic (a message per record,
    /// with its provenance); answers after the brokers' ack.
    pub async fn produce(&self, body: &[u8], opts: &DecodeOptions) -> Result<usize, EngineError> {
        let records = crate::ingest::produced_records(body, opts);
        self.producer
            .send_produced(&self.config.kafka.ingest_topic, &records)
            .await
    }

    /// The Kafka source's counters, once it runs.
    pub fn kafka_metrics(&self) -> Option<&KafkaMetrics> {
        self.running.get().map(|r| r.source.metrics())
    }

    /// The partitions this node owns now.
    pub fn local_partitions(&self) -> Vec<PartitionStatus> {
        self.running
            .get()
            .map(|r| r.source.status())
            .unwrap_or_default()
    }

    /// Whether the cold manifest has been read from Cassandra since this node started.
    pub fn catalog_loaded(&self) -> bool {
        self.catalog_loaded
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notes that the local copy of the manifest is Cassandra's.
    pub fn set_catalog_loaded(&self) {
        self.catalog_loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The Cassandra store, once connected.
    pub fn store(&self) -> Option<Arc<CassandraStore>> {
        self.running.get().map(|r| Arc::clone(&r.store))
    }

    /// `kafka_partitions`: every partition of the group, its owner and how far behind it is.
    pub fn partitions_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut rows = self
            .partitions
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        // This node's own partitions are fresher than the last refresh.
        for status in self.local_partitions() {
            match rows
                .iter_mut()
                .find(|r| r.progress.partition == status.partition)
            {
                Some(row) => {
                    if row.progress.epoch <= status.epoch {
                        row.progress.owner = self.config.node_id.clone();
                        row.progress.epoch = status.epoch;
                        row.progress.next_offset = row.progress.next_offset.max(status.next_offset);
                        row.high_watermark = status.high_watermark.or(row.high_watermark);
                        row.local = Some(status);
                    }
                }
                None => rows.push(PartitionRow {
                    progress: PartitionProgress {
                        partition: status.partition.clone(),
                        next_offset: status.next_offset,
                        owner: self.config.node_id.clone(),
                        epoch: status.epoch,
                        updated_us: crate::continuous::now_us(),
                    },
                    high_watermark: status.high_watermark,
                    local: Some(status),
                }),
            }
        }
        rows.sort_by(|a, b| a.progress.partition.cmp(&b.progress.partition));
        partitions_batch(&rows)
    }

    /// Stops consuming (in-flight writes finish) and stops the background tasks.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.running.get() {
            r.source.stop().await;
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "producer not flushed at shutdown");
        }
    }

    fn set_waiting(&self, what: String) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = what;
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Connects to Cassandra, then Kafka, retrying each until it answers, then starts the
/// source and the `kafka_partitions` refresher.
async fn connect(cluster: Arc<Cluster>, decode: DecodeOptions) {
    let cfg = cluster.config.clone();
    let contact = cfg.cassandra.contact_points.join(",");
    let mut attempt = 0u64;
    let store = loop {
        if cluster.stopped() {
            return;
        }
        attempt += 1;
        match CassandraStore::connect(&cfg.cassandra, &cfg.kafka.group).await {
            Ok(store) => break store,
            Err(e) => {
                let what = format!(
                    "waiting for Cassandra at {contact} (attempt {attempt}, retrying every {}s): {e}",
                    RETRY.as_secs()
                );
                tracing::warn!("{what}");
                cluster.set_waiting(what);
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    tracing::info!(contact_points = %contact, keyspace = %cfg.cassandra.keyspace, "Cassandra connected");
    let metadata = match metadata_client(&cfg.kafka.brokers) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let what = format!("cannot create a Kafka client: {e}");
            tracing::error!("{what}");
            cluster.set_waiting(what);
            return;
        }
    };
    let mut attempt = 0u64;
    loop {
        if cluster.stopped() {
            return;
        }
        attempt += 1;
        let probe = Arc::clone(&metadata);
        let answer = tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match answer {
            Ok(()) => break,
            Err(e) => {
                let what = format!(
                    "waiting for Kafka at {} (attempt {attempt}, retrying every {}s): {e}",
                    cfg.kafka.brokers,
                    RETRY.as_secs()
                );
                tracing::warn!("{what}");
                cluster.set_waiting(what);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    tracing::info!(brokers = %cfg.kafka.brokers, "Kafka answered");
    let hot: Arc<dyn HotStore> = store.clone();
    let progress: Arc<dyn ProgressStore> = store.clone();
    let source = loop {
        if cluster.stopped() {
            return;
        }
        match KafkaSource::start(
            &cfg.kafka,
            &cfg.node_id,
            Arc::clone(&hot),
            Arc::clone(&progress),
            decode.clone(),
        )
        .await
        {
            Ok(s) => break s,
            Err(e) => {
                let what = format!("cannot start the Kafka consumer (retrying): {e}");
                tracing::warn!("{what}");
                cluster.set_waiting(what);
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    tracing::info!(
        node_id = %cfg.node_id, group = %cfg.kafka.group, topics = ?cfg.kafka.topics,
        "consuming"
    );
    if cluster.running.set(Running { store, source }).is_err() {
        return;
    }
    refresh_partitions(cluster, metadata).await;
}

fn metadata_client(brokers: &str) -> Result<BaseConsumer, EngineError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "logsphere-status")
        .create()
        .map_err(|e| EngineError::Kafka {
            context: format!("metadata client for '{brokers}'"),
            reason: e.to_string(),
        })
}

/// Keeps `kafka_partitions` current: the group's progress from Cassandra and every
/// partition's high watermark from Kafka.
async fn refresh_partitions(cluster: Arc<Cluster>, metadata: Arc<BaseConsumer>) {
    let mut stop = cluster.stop.subscribe();
    let mut last_error: Option<Instant> = None;
    loop {
        let Some(running) = cluster.running.get() else {
            return;
        };
        match running.store.list().await {
            Ok(progress) => {
                let client = Arc::clone(&metadata);
                // This node's own partitions get their watermark from the source's
                // statistics (`partitions_batch` merges them): ask Kafka only for the rest.
                let local: Vec<_> = running
                    .source
                    .status()
                    .into_iter()
                    .map(|s| s.partition)
                    .collect();
                let rows = tokio::task::spawn_blocking(move || {
                    progress
                        .into_iter()
                        .map(|p| {
                            let owned_here = local.contains(&p.partition);
                            let high_watermark = (!owned_here)
                                .then(|| {
                                    client.fetch_watermarks(
                                        &p.partition.topic,
                                        p.partition.partition,
                                        Duration::from_secs(2),
                                    )
                                })
                                .and_then(Result::ok)
                                .map(|(_, high)| high);
                            PartitionRow {
                                progress: p,
                                high_watermark,
                                local: None,
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                if let Ok(mut p) = cluster.partitions.lock() {
                    *p = rows;
                }
            }
            Err(e) => {
                // Once a minute at most: Cassandra being down is already loud elsewhere.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(error = %e, "cannot read the group's progress for kafka_partitions");
                    last_error = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_REFRESH) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The schema of `kafka_partitions`.
pub fn partitions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("owner", DataType::Utf8, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("next_offset", DataType::Int64, true),
        Field::new("high_watermark", DataType::Int64, true),
        Field::new("lag_records", DataType::Int64, true),
        Field::new("lag_seconds", DataType::Float64, true),
        Field::new("paused", DataType::Boolean, true),
        Field::new("updated_at", ts_type(), false),
    ]))
}

fn partitions_batch(rows: &[PartitionRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let col = |f: &dyn Fn(&PartitionRow) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(f)))
    };
    // A partition claimed but never advanced has no progress yet (stored as -1).
    let next = |r: &PartitionRow| (r.progress.next_offset >= 0).then_some(r.progress.next_offset);
    let lag = |r: &PartitionRow| Some((r.high_watermark? - next(r)?).max(0));
    let columns: Vec<ArrayRef> = vec![
        col(&|r| Some(r.progress.partition.topic.clone())),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.progress.partition.partition),
        )),
        col(&|r| Some(r.progress.owner.clone())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.progress.epoch),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(next))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.high_watermark))),
        Arc::new(Int64Array::from_iter(rows.iter().map(lag))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
            match (&r.local, lag(r)) {
                (_, Some(0)) => Some(0.0),
                (Some(local), _) => local.lag_seconds,
                _ => None,
            }
        }))),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| r.local.as_ref().map(|l| l.paused)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.progress.updated_us))
                .with_timezone(UTC),
        ),
    ];
    RecordBatch::try_new(partitions_schema(), columns)
}
