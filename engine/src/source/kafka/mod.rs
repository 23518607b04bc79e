//! The Kafka source (cluster mode): a consumer group reads the configured topics and
//! every owned partition is written to the hot store with an exactly-once effect.
//!
//! - The group only *assigns* partitions (cooperative-sticky). The offset of record is the
//!   partition's progress in the [`ProgressStore`], beside the data: on assignment a
//!   partition task claims the partition (bumping its fencing epoch), seeks to its
//!   progress, then loops: read up to `batch_records` or `linger`, decode once into Arrow
//!   ([`crate::ingest::RecordDecoder`]), [`HotStore::append`] (idempotent by
//!   (topic, partition, offset)), and advance progress over what was written (at most once
//!   a second). A stale owner's advance is refused (fenced) and its task stops.
//! - Progress is mirrored to the group's committed offsets so `kafka-consumer-groups
//!   --describe` shows true lag; those offsets are never read back.
//! - Each partition has its own librdkafka queue (split before the assignment is applied)
//!   and task; one thread polls the consumer all the time for rebalances and statistics.
//!   On revocation a task stops reading, finishes its in-flight write within a third of
//!   the session timeout, and drops its buffer.
//! - Memory per partition is bounded by librdkafka's prefetch (`fetch_queue_kbytes`) plus
//!   one batch (`partition_buffer_bytes`); while writes fail the partition is paused and
//!   retried with backoff, then resumed.
//!
//! `kafka.md` beside this file walks through a partition's life, a crash, and the memory
//! bound. Partition tasks need a multi-threaded Tokio runtime in production: rebalance
//! callbacks block the consumer thread while the tasks (on the runtime) drain.

mod assignment;
mod batch;
mod consumer;
mod partition;
pub mod reader;
mod status;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{info, warn};

pub use status::{KafkaMetrics, PartitionStatus};

use self::assignment::Shared;
use crate::EngineError;
use crate::cluster::KafkaConfig;
use crate::cluster::produce::LogProducer;
use crate::hot::HotStore;
use crate::ingest::DecodeOptions;
use crate::source::ProgressStore;

/// How long a dead-letter produce may wait for the brokers.
const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Kafka source: a group member writing its partitions to the hot store.
#[derive(Debug)]
pub struct KafkaSource {
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    finished: Mutex<Option<oneshot::Receiver<()>>>,
}

impl KafkaSource {
    /// Joins `config.group` as `node_id` and starts consuming; partitions arrive through
    /// rebalances. `opts` decodes records (its `max_record_bytes` is replaced by
    /// `config.max_record_bytes`).
    pub async fn start(
        config: &KafkaConfig,
        node_id: &str,
        hot: Arc<dyn HotStore>,
        progress: Arc<dyn ProgressStore>,
        mut opts: DecodeOptions,
    ) -> Result<KafkaSource, EngineError> {
        validate(config)?;
        let runtime = Handle::try_current().map_err(|e| EngineError::Kafka {
            context: format!("starting the source of group '{}'", config.group),
            reason: format!("not inside a Tokio runtime: {e}"),
        })?;
        opts.max_record_bytes = config.max_record_bytes;
        let dead_letters = match &config.dead_letter_topic {
            Some(_) => Some(LogProducer::new(&config.brokers, DEAD_LETTER_TIMEOUT)?),
            None => None,
        };
        let shared = Arc::new(Shared::new(
            config.clone(),
            node_id.to_string(),
            hot,
            progress,
            opts,
            dead_letters,
            runtime,
        ));
        let consumer = consumer::subscribe(&shared)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let (done, finished) = oneshot::channel();
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name(format!("kafka-{}", config.group))
            .spawn(move || consumer::drive(consumer, stop, done))
            .map_err(|e| EngineError::Kafka {
                context: format!("starting the consumer thread of group '{}'", config.group),
                reason: e.to_string(),
            })?;
        info!(source = "kafka", group = %config.group, topics = ?config.topics, node = node_id, "Kafka source started");
        Ok(KafkaSource {
            shared,
            shutdown,
            finished: Mutex::new(Some(finished)),
        })
    }

    /// The partitions this node owns now, with durable progress and lag.
    pub fn status(&self) -> Vec<PartitionStatus> {
        self.shared.status()
    }

    /// Counters since start.
    pub fn metrics(&self) -> &KafkaMetrics {
        &self.shared.metrics
    }

    /// Stops reading, lets in-flight writes finish (bounded by a third of the session
    /// timeout), and leaves the group so its partitions move at once. Idempotent.
    pub async fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        let finished = self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(finished) = finished else {
            return;
        };
        let bound = self.shared.drain_bound() * 2
            + self.shared.config.session_timeout
            + Duration::from_secs(10);
        if tokio::time::timeout(bound, finished).await.is_err() {
            warn!(source = "kafka", group = %self.shared.config.group, "consumer did not close in {bound:?}");
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Without stop(), the consumer thread still drains and leaves on its own.
        self.shutdown.store(true, Ordering::Release);
    }
}

/// Refuses settings librdkafka would reject later with a less helpful message.
fn validate(config: &KafkaConfig) -> Result<(), EngineError> {
    let bad = |reason: String| EngineError::Kafka {
        context: format!("configuration of group '{}'", config.group),
        reason,
    };
    if config.topics.is_empty() {
        return Err(bad(
            "kafka.topics is empty: name at least one topic or ^regex".into(),
        ));
    }
    if !matches!(config.auto_offset_reset.as_str(), "earliest" | "latest") {
        return Err(bad(format!(
            "kafka.auto_offset_reset is '{}'; expected 'earliest' or 'latest'",
            config.auto_offset_reset
        )));
    }
    if config.batch_records == 0 || config.partition_buffer_bytes == 0 {
        return Err(bad(
            "kafka.batch_records and kafka.partition_buffer_bytes must be positive".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
