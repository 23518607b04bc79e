//! The partitions this node owns: one task each, started on assignment and drained on
//! revocation, plus what the source shares with its tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use super::consumer::SourceConsumer;
use super::partition::PartitionTask;
use super::status::{KafkaMetrics, PartitionState, PartitionStatus};
use crate::cluster::KafkaConfig;
use crate::cluster::produce::LogProducer;
use crate::hot::HotStore;
use crate::ingest::DecodeOptions;
use crate::source::{PartitionId, ProgressStore};

/// What the source, its consumer callbacks and its partition tasks share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: KafkaConfig,
    pub(super) node_id: String,
    pub(super) hot: Arc<dyn HotStore>,
    pub(super) progress: Arc<dyn ProgressStore>,
    pub(super) opts: DecodeOptions,
    pub(super) metrics: KafkaMetrics,
    /// Producer for `dead_letter_topic`, when one is set.
    pub(super) dead_letters: Option<LogProducer>,
    /// The runtime partition tasks run on (rebalance callbacks run on the consumer thread).
    pub(super) runtime: Handle,
    /// Set when a task stored an offset the driver has not committed yet.
    pub(super) offsets_stored: AtomicBool,
    owned: Mutex<BTreeMap<PartitionId, OwnedPartition>>,
    watermarks: Mutex<HashMap<PartitionId, i64>>,
}

/// A running partition task, as the registry holds it.
#[derive(Debug)]
struct OwnedPartition {
    state: Arc<PartitionState>,
    stop: watch::Sender<bool>,
    /// Disconnects when the task (and its queue) is dropped.
    done: Receiver<()>,
    task: JoinHandle<()>,
}

impl OwnedPartition {
    fn wait_done(&self, bound: Duration) -> bool {
        matches!(
            self.done.recv_timeout(bound),
            Ok(()) | Err(RecvTimeoutError::Disconnected)
        )
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn new(
        config: KafkaConfig,
        node_id: String,
        hot: Arc<dyn HotStore>,
        progress: Arc<dyn ProgressStore>,
        opts: DecodeOptions,
        dead_letters: Option<LogProducer>,
        runtime: Handle,
    ) -> Self {
        Self {
            config,
            node_id,
            hot,
            progress,
            opts,
            metrics: KafkaMetrics::default(),
            dead_letters,
            runtime,
            offsets_stored: AtomicBool::new(false),
            owned: Mutex::new(BTreeMap::new()),
            watermarks: Mutex::new(HashMap::new()),
        }
    }

    /// How long a revoked partition's in-flight write may take before it is abandoned:
    /// well under the session timeout, so the rebalance completes in time.
    pub(super) fn drain_bound(&self) -> Duration {
        (self.config.session_timeout / 3).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Splits `id`'s queue off the consumer and starts its task. Called before librdkafka
    /// applies the assignment, so no record of `id` ever reaches the main queue.
    pub(super) fn start_partition(
        self: &Arc<Self>,
        consumer: &Arc<SourceConsumer>,
        id: PartitionId,
    ) {
        let Some(mut queue) = consumer.split_partition_queue(&id.topic, id.partition) else {
            error!(source = "kafka", partition = %id, "cannot split the partition's queue; not consumed");
            return;
        };
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        queue.set_nonempty_callback(move || waker.notify_one());
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = sync_channel(0);
        let state = Arc::new(PartitionState::new());
        let task = PartitionTask {
            queue,
            consumer: consumer.clone(),
            shared: self.clone(),
            id: id.clone(),
            state: state.clone(),
            wake,
            stop: stop_rx,
            _done: done_tx,
        };
        let task = self.runtime.spawn(task.run());
        let owned = OwnedPartition {
            state,
            stop,
            done,
            task,
        };
        if let Some(previous) = locked(&self.owned).insert(id.clone(), owned) {
            warn!(source = "kafka", partition = %id, "assigned twice; the older task is stopped");
            let _ = previous.stop.send(true);
        }
    }

    /// Stops the tasks of `ids`: they stop reading at once, finish an in-flight write
    /// within [`Shared::drain_bound`] (or are aborted), and their buffers are dropped.
    pub(super) fn stop_partitions(&self, ids: &[PartitionId]) {
        let removed: Vec<(PartitionId, OwnedPartition)> = {
            let mut owned = locked(&self.owned);
            ids.iter()
                .filter_map(|id| owned.remove(id).map(|o| (id.clone(), o)))
                .collect()
        };
        self.drain(removed);
    }

    /// Stops every task (shutdown, when the group did not revoke in time).
    pub(super) fn stop_all(&self) {
        let removed: Vec<_> = std::mem::take(&mut *locked(&self.owned))
            .into_iter()
            .collect();
        self.drain(removed);
    }

    fn drain(&self, removed: Vec<(PartitionId, OwnedPartition)>) {
        for (_, owned) in &removed {
            let _ = owned.stop.send(true);
        }
        let deadline = Instant::now() + self.drain_bound();
        for (id, owned) in removed {
            if !owned.wait_done(deadline.saturating_duration_since(Instant::now())) {
                warn!(source = "kafka", partition = %id, "in-flight write not finished in time; abandoned");
                owned.task.abort();
                owned.wait_done(Duration::from_secs(1));
            }
            locked(&self.watermarks).remove(&id);
        }
    }

    pub(super) fn owns_nothing(&self) -> bool {
        locked(&self.owned).is_empty()
    }

    /// Keeps the end (last stable offset, else high watermark) of each owned partition
    /// from librdkafka's statistics: no extra request per partition.
    pub(super) fn record_watermarks(&self, stats: &Statistics) {
        let owned = locked(&self.owned);
        let mut marks = locked(&self.watermarks);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let id = PartitionId {
                    topic: topic.clone(),
                    partition: *partition,
                };
                if end >= 0 && owned.contains_key(&id) {
                    marks.insert(id, end);
                }
            }
        }
    }

    /// The partitions this node owns now (fenced ones excluded).
    pub(super) fn status(&self) -> Vec<PartitionStatus> {
        let owned = locked(&self.owned);
        let marks = locked(&self.watermarks);
        let now_ms = chrono::Utc::now().timestamp_millis();
        owned
            .iter()
            .filter(|(_, o)| !o.state.is_fenced())
            .map(|(id, o)| o.state.status(id.clone(), marks.get(id).copied(), now_ms))
            .collect()
    }
}
