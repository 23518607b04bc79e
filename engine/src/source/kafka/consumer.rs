//! The group consumer: its librdkafka settings, the rebalance callbacks that start and
//! stop partition tasks, and the thread that keeps polling it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::assignment::Shared;
use crate::EngineError;
use crate::cluster::KafkaConfig;
use crate::source::PartitionId;

/// The consumer every partition task reads through (each from its own split queue).
pub(super) type SourceConsumer = BaseConsumer<SourceContext>;

/// How long one poll of the main queue blocks: the latency of noticing `stop()`.
const POLL: Duration = Duration::from_millis(100);

/// How often stored offsets are committed to the group (lag tools read them).
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How often librdkafka reports statistics, where the partitions' ends come from.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// The consumer's librdkafka settings.
///
/// Progress lives in the [`ProgressStore`](crate::source::ProgressStore), so nothing is
/// committed or stored automatically; the group only assigns partitions (cooperatively,
/// so a rebalance moves only the partitions that change owner). Once partition queues are
/// split librdkafka prefetches up to `queued.max.messages.kbytes` *per partition*, hence
/// the explicit cap and a `queued.min.messages` of two batches instead of 100 000.
pub(super) fn client_config(config: &KafkaConfig, node_id: &str) -> ClientConfig {
    let ms = |d: Duration| d.as_millis().to_string();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("client.id", format!("logsphere-{node_id}"))
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", &config.auto_offset_reset)
        .set(
            "queued.max.messages.kbytes",
            config.fetch_queue_kbytes.to_string(),
        )
        .set(
            "queued.min.messages",
            queued_min_messages(config).to_string(),
        )
        .set("session.timeout.ms", ms(config.session_timeout))
        .set("heartbeat.interval.ms", ms(config.session_timeout / 3))
        .set(
            "topic.metadata.refresh.interval.ms",
            ms(config.metadata_refresh),
        )
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    c
}

/// Two batches: the next one is fetched while one is being written.
fn queued_min_messages(config: &KafkaConfig) -> usize {
    config.batch_records.saturating_mul(2).clamp(1, 10_000_000)
}

/// Creates the consumer and subscribes it to the configured topics (`^…` are regexes).
pub(super) fn subscribe(shared: &Arc<Shared>) -> Result<Arc<SourceConsumer>, EngineError> {
    let config = &shared.config;
    let context = SourceContext {
        shared: shared.clone(),
        consumer: OnceLock::new(),
    };
    let consumer: SourceConsumer = client_config(config, &shared.node_id)
        .create_with_context(context)
        .map_err(|e| EngineError::Kafka {
            context: format!(
                "creating the consumer of group '{}' on '{}'",
                config.group, config.brokers
            ),
            reason: e.to_string(),
        })?;
    let consumer = Arc::new(consumer);
    // The rebalance callback splits partition queues, which needs the consumer's Arc.
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| EngineError::Kafka {
            context: format!(
                "subscribing group '{}' to {:?}",
                config.group, config.topics
            ),
            reason: e.to_string(),
        })?;
    Ok(consumer)
}

/// The consumer's callbacks: rebalances start and stop partition tasks, statistics carry
/// the partitions' ends.
pub(super) struct SourceContext {
    shared: Arc<Shared>,
    consumer: OnceLock<Weak<SourceConsumer>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        self.shared.record_watermarks(&statistics);
    }
}

impl ConsumerContext for SourceContext {
    /// Runs before librdkafka applies the change: new partitions get their queue split
    /// off before any fetch can reach the main queue, and revoked ones are drained while
    /// still assigned.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (ids, assigned) = match rebalance {
            Rebalance::Assign(tpl) => (partition_ids(tpl), true),
            Rebalance::Revoke(tpl) => (partition_ids(tpl), false),
            Rebalance::Error(e) => {
                warn!(source = "kafka", error = %e, "rebalance error");
                return;
            }
        };
        // librdkafka may deliver empty lists with the cooperative protocol.
        if ids.is_empty() {
            return;
        }
        self.shared
            .metrics
            .rebalances
            .fetch_add(1, Ordering::Relaxed);
        if assigned {
            self.assign(ids);
        } else {
            self.revoke(ids);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            debug!(source = "kafka", error = %e, "offset commit (lag mirror) failed");
        }
    }
}

impl SourceContext {
    fn assign(&self, ids: Vec<PartitionId>) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            error!(
                source = "kafka",
                "assignment while the consumer is closing; ignored"
            );
            return;
        };
        info!(source = "kafka", partitions = ?ids, "partitions assigned");
        for id in ids {
            self.shared.start_partition(&consumer, id);
        }
    }

    fn revoke(&self, ids: Vec<PartitionId>) {
        info!(source = "kafka", partitions = ?ids, "partitions revoked");
        self.shared.stop_partitions(&ids);
        // Mirror the last progress of the drained partitions while they are still ours.
        if let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) {
            commit_stored(&consumer, &self.shared);
        }
    }
}

fn partition_ids(tpl: &TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| PartitionId {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

/// Commits the offsets partition tasks stored since the last commit (asynchronously).
fn commit_stored(consumer: &SourceConsumer, shared: &Shared) {
    if shared.offsets_stored.swap(false, Ordering::AcqRel)
        && let Err(e) = consumer.commit_consumer_state(CommitMode::Async)
    {
        // Try again at the next interval rather than wait for the next batch.
        shared.offsets_stored.store(true, Ordering::Release);
        debug!(source = "kafka", error = %e, "committing stored offsets failed");
    }
}

/// The consumer's own thread: polls the main queue all the time (rebalances, statistics
/// and the group's liveness are served there), commits stored offsets every second, and
/// on shutdown leaves the group after draining every partition.
pub(super) fn drive(
    consumer: Arc<SourceConsumer>,
    shutdown: Arc<AtomicBool>,
    finished: oneshot::Sender<()>,
) {
    let shared = consumer.context().shared.clone();
    let mut last_commit = Instant::now();
    while !shutdown.load(Ordering::Acquire) {
        poll_once(&consumer);
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit_stored(&consumer, &shared);
            last_commit = Instant::now();
        }
    }
    leave(consumer, &shared);
    let _ = finished.send(());
}

fn poll_once(consumer: &SourceConsumer) {
    match consumer.poll(POLL) {
        None => {}
        Some(Ok(msg)) => error!(
            source = "kafka",
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            "record on the main queue of a partition without a split queue; not consumed"
        ),
        Some(Err(e)) => warn!(source = "kafka", error = %e, "consumer error"),
    }
}

/// Unsubscribes (the revoke callback drains every partition), stops whatever the group
/// did not revoke in time, then closes the consumer, which leaves the group.
fn leave(consumer: Arc<SourceConsumer>, shared: &Shared) {
    consumer.unsubscribe();
    let deadline = Instant::now() + shared.drain_bound() + Duration::from_secs(5);
    while Instant::now() < deadline && !shared.owns_nothing() {
        poll_once(&consumer);
    }
    shared.stop_all();
    commit_stored(&consumer, shared);
    // Dropping the last handle closes the consumer; it polls until closed, which is why
    // this happens here and not on a runtime thread.
    drop(consumer);
    info!(source = "kafka", group = %shared.config.group, "left the consumer group");
}
