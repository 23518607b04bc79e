//! One partition's task: claim it, seek to its durable progress, then read, decode, write
//! and advance batch after batch until it is revoked or fenced.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use arrow::array::{Array, BinaryArray};
use rdkafka::consumer::Consumer;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use super::assignment::Shared;
use super::batch::{PendingBatch, timestamp_ms};
use super::consumer::{SourceConsumer, SourceContext};
use super::status::PartitionState;
use crate::EngineError;
use crate::source::{PartitionClaim, PartitionId, SourcedBatch};

/// Longest wait between two looks at the partition queue (guards a missed wake-up).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Progress advances at most this often per partition (see [`Checkpoint`]).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// One owned partition's loop and everything it needs.
pub(super) struct PartitionTask {
    pub(super) queue: PartitionQueue<SourceContext>,
    pub(super) consumer: Arc<SourceConsumer>,
    pub(super) shared: Arc<Shared>,
    pub(super) id: PartitionId,
    pub(super) state: Arc<PartitionState>,
    /// Notified by librdkafka when the queue becomes non-empty.
    pub(super) wake: Arc<Notify>,
    /// Becomes `true` on revocation or shutdown.
    pub(super) stop: watch::Receiver<bool>,
    /// Dropped last: tells the revoking thread the queue and consumer handle are gone.
    pub(super) _done: SyncSender<()>,
}

/// Why a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Revoked or shut down.
    Stopped,
    /// Another owner claimed the partition.
    Fenced,
}

/// What [`PartitionTask::collect`] ended with.
enum Collected<'a> {
    /// Records to write.
    Batch(Box<PendingBatch<'a>>),
    /// Nothing arrived before progress was due to be advanced.
    Idle,
    /// Revoked or shut down; nothing read is kept.
    Stopped,
}

/// Written but not yet durable progress: progress is a lightweight transaction, so it
/// advances at most once per [`PROGRESS_INTERVAL`] (a crash replays at most that much,
/// idempotently), and at once when the partition goes idle after it.
struct Checkpoint {
    /// The offset after the last written record, when progress does not cover it yet.
    pending: Option<i64>,
    /// When progress last advanced.
    last: Instant,
}

impl Checkpoint {
    fn new() -> Self {
        Self {
            pending: None,
            last: Instant::now(),
        }
    }

    fn due_at(&self) -> Option<Instant> {
        self.pending.map(|_| self.last + PROGRESS_INTERVAL)
    }

    fn is_due(&self) -> bool {
        self.due_at().is_some_and(|d| Instant::now() >= d)
    }
}

/// Exponential backoff between retries of a failed write.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
}

impl PartitionTask {
    /// Runs until the partition is revoked, the source stops, or another owner fences it.
    pub(super) async fn run(self) {
        let exit = self.consume().await;
        self.resume_if_paused();
        if exit == Exit::Fenced {
            // Not ours any more: keep librdkafka from fetching it until the group moves it.
            if let Err(e) = self.consumer.pause(&self.tpl(None)) {
                debug!(source = "kafka", partition = %self.id, error = %e, "pause after fencing");
            }
        }
        debug!(source = "kafka", partition = %self.id, ?exit, "partition task ended");
    }

    async fn consume(&self) -> Exit {
        let Some(claim) = self.claim().await else {
            return Exit::Stopped;
        };
        self.state.claimed(&claim);
        self.resume_if_paused();
        info!(source = "kafka", partition = %self.id, epoch = claim.epoch,
              next_offset = ?claim.next_offset, "partition claimed");
        if !self.seek(claim.next_offset).await {
            return Exit::Stopped;
        }
        let mut checkpoint = Checkpoint::new();
        let exit = self.consume_from(&claim, &mut checkpoint).await;
        if exit == Exit::Stopped {
            // Revoked or shutting down: one attempt to make what was written durable, so
            // the next owner does not write it again.
            let _ = self.advance(&claim, &mut checkpoint, false).await;
        }
        exit
    }

    async fn consume_from(&self, claim: &PartitionClaim, checkpoint: &mut Checkpoint) -> Exit {
        let mut expected = claim.next_offset;
        loop {
            let step = match self.collect(&mut expected, checkpoint.due_at()).await {
                Collected::Batch(batch) => self.write(*batch, checkpoint).await,
                Collected::Idle => Ok(()),
                Collected::Stopped => Err(Exit::Stopped),
            };
            let step = match step {
                Ok(()) if checkpoint.is_due() => self.advance(claim, checkpoint, true).await,
                other => other,
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn until_stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sleeps for `d`; `false` when stopped meanwhile.
    async fn sleep_unless_stopped(&self, d: Duration) -> bool {
        tokio::select! {
            _ = sleep(d) => !self.stopped(),
            _ = self.until_stopped() => false,
        }
    }

    /// Runs `op` until it succeeds, pausing the partition while it fails; `None` when
    /// stopped first. Retrying is safe: hot-store writes are idempotent by identity and
    /// progress is fenced.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let mut backoff = Backoff(Backoff::FIRST);
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.shared
                        .metrics
                        .write_retries
                        .fetch_add(1, Ordering::Relaxed);
                    self.pause();
                    warn!(source = "kafka", partition = %self.id, error = %e, "{what} failed; retrying");
                    if !self.sleep_unless_stopped(backoff.next()).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn claim(&self) -> Option<PartitionClaim> {
        let (progress, node) = (&self.shared.progress, &self.shared.node_id);
        self.retry("claiming the partition", || progress.claim(&self.id, node))
            .await
    }

    /// Seeks to the durable progress, or to the configured reset point when there is none
    /// (the group's committed offsets only mirror progress; they are never trusted).
    async fn seek(&self, next_offset: Option<i64>) -> bool {
        let offset = match next_offset {
            Some(n) => Offset::Offset(n),
            None if self.shared.config.auto_offset_reset == "latest" => Offset::End,
            None => Offset::Beginning,
        };
        let mut delay = Duration::from_millis(20);
        loop {
            let consumer = self.consumer.clone();
            let (topic, partition) = (self.id.topic.clone(), self.id.partition);
            let sought = tokio::task::spawn_blocking(move || {
                consumer.seek(&topic, partition, offset, Duration::from_secs(5))
            })
            .await;
            match sought {
                Ok(Ok(())) => return true,
                // librdkafka refuses a seek until the assignment has started fetching.
                Ok(Err(e)) => {
                    debug!(source = "kafka", partition = %self.id, error = %e, "seek refused; retrying")
                }
                Err(e) => {
                    warn!(source = "kafka", partition = %self.id, error = %e, "seek task failed")
                }
            }
            if !self.sleep_unless_stopped(delay).await {
                return false;
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Reads until the batch holds `batch_records` records or `partition_buffer_bytes`,
    /// or `linger` passed since its first record; [`Collected::Idle`] when nothing came
    /// before `checkpoint_due`. When stopped the buffer is dropped, and the next owner
    /// reads those records again from durable progress.
    async fn collect(
        &self,
        expected: &mut Option<i64>,
        checkpoint_due: Option<Instant>,
    ) -> Collected<'_> {
        let config = &self.shared.config;
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut batch = PendingBatch::new(&self.id, &self.shared.opts, now_us);
        let mut deadline: Option<Instant> = None;
        loop {
            let full = |b: &PendingBatch<'_>| {
                b.len() >= config.batch_records || b.bytes() >= config.partition_buffer_bytes
            };
            while !full(&batch) {
                let Some(polled) = self.queue.poll(Duration::ZERO) else {
                    break;
                };
                let msg = match polled {
                    Ok(msg) => msg,
                    Err(e) => {
                        warn!(source = "kafka", partition = %self.id, error = %e, "fetch error");
                        continue;
                    }
                };
                // Already written (a prefetch from before the seek): never twice in a batch.
                if expected.is_some_and(|e| msg.offset() < e) {
                    continue;
                }
                if batch.len() == 0 {
                    self.state.pending_since(timestamp_ms(&msg));
                    deadline = Some(Instant::now() + config.linger);
                }
                *expected = Some(msg.offset() + 1);
                batch.push(&msg);
                self.shared
                    .metrics
                    .records_consumed
                    .fetch_add(1, Ordering::Relaxed);
            }
            let now = Instant::now();
            if full(&batch) || deadline.is_some_and(|d| now >= d) {
                return Collected::Batch(Box::new(batch));
            }
            if self.stopped() {
                return Collected::Stopped;
            }
            let idle_until = if batch.len() == 0 {
                checkpoint_due
            } else {
                None
            };
            if idle_until.is_some_and(|d| now >= d) {
                return Collected::Idle;
            }
            let wait = [deadline, idle_until]
                .into_iter()
                .flatten()
                .fold(now + IDLE_POLL, Instant::min);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep_until(wait) => {}
                _ = self.until_stopped() => return Collected::Stopped,
            }
        }
    }

    /// Writes the batch to the hot store (retrying while it fails); its offsets become
    /// the checkpoint's pending progress.
    async fn write(
        &self,
        pending: PendingBatch<'_>,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), Exit> {
        let batch = pending.finish();
        let hot = &self.shared.hot;
        if self
            .retry("hot store append", || hot.append(&batch))
            .await
            .is_none()
        {
            return Err(Exit::Stopped);
        }
        self.resume_if_paused();
        self.state.appended();
        checkpoint.pending = Some(batch.next_offset);
        let m = &self.shared.metrics;
        m.records_written
            .fetch_add(batch.logs.num_rows() as u64, Ordering::Relaxed);
        m.dead_letters
            .fetch_add(batch.dead_letters.num_rows() as u64, Ordering::Relaxed);
        m.batches_written.fetch_add(1, Ordering::Relaxed);
        self.produce_dead_letters(&batch);
        Ok(())
    }

    /// Advances durable progress over everything written (always a contiguous run of
    /// offsets from the last progress), retrying while the store fails when `retry`.
    /// A refused advance means another owner claimed the partition: fenced.
    async fn advance(
        &self,
        claim: &PartitionClaim,
        checkpoint: &mut Checkpoint,
        retry: bool,
    ) -> Result<(), Exit> {
        let Some(next) = checkpoint.pending.take() else {
            return Ok(());
        };
        let progress = &self.shared.progress;
        let advanced = if retry {
            self.retry("advancing progress", || {
                progress.advance(&self.id, claim.epoch, next)
            })
            .await
        } else {
            progress.advance(&self.id, claim.epoch, next).await.ok()
        };
        match advanced {
            None if retry => Err(Exit::Stopped),
            None => Ok(()),
            Some(false) => {
                self.shared.metrics.fenced.fetch_add(1, Ordering::Relaxed);
                self.state.set_fenced();
                warn!(source = "kafka", partition = %self.id, epoch = claim.epoch,
                      "fenced: another node claimed the partition; its buffer is dropped");
                Err(Exit::Fenced)
            }
            Some(true) => {
                self.resume_if_paused();
                self.state.advanced(next);
                self.store_offset(next);
                checkpoint.last = Instant::now();
                Ok(())
            }
        }
    }

    /// Mirrors progress into the group's offsets (committed by the consumer thread) so
    /// lag tools see it. `store_offsets` stores the offset as given (`store_offset` would
    /// add one).
    fn store_offset(&self, next_offset: i64) {
        match self.consumer.store_offsets(&self.tpl(Some(next_offset))) {
            Ok(()) => self.shared.offsets_stored.store(true, Ordering::Release),
            Err(e) => debug!(source = "kafka", partition = %self.id, error = %e, "storing offset"),
        }
    }

    /// Best effort: dead letters' raw bytes also go to `dead_letter_topic` when set.
    fn produce_dead_letters(&self, batch: &SourcedBatch) {
        let (Some(producer), Some(topic)) = (
            self.shared.dead_letters.clone(),
            self.shared.config.dead_letter_topic.clone(),
        ) else {
            return;
        };
        let Some(raw) = batch
            .dead_letters
            .column_by_name("raw")
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        else {
            return;
        };
        if raw.is_empty() {
            return;
        }
        let records: Vec<Vec<u8>> = raw.iter().map(|r| r.unwrap_or_default().to_vec()).collect();
        let id = self.id.clone();
        self.shared.runtime.spawn(async move {
            let sent = producer
                .send_records(&topic, records.iter().map(Vec::as_slice))
                .await;
            if let Err(e) = sent {
                warn!(source = "kafka", partition = %id, topic, error = %e, "dead letters not produced");
            }
        });
    }

    /// Stops fetching while writes fail, so librdkafka's prefetch does not grow.
    fn pause(&self) {
        if self.state.is_paused() {
            return;
        }
        match self.consumer.pause(&self.tpl(None)) {
            Ok(()) => {
                self.state.set_paused(true);
                self.shared
                    .metrics
                    .paused_partitions
                    .fetch_add(1, Ordering::Relaxed);
                info!(source = "kafka", partition = %self.id, "paused while writes fail");
            }
            Err(e) => warn!(source = "kafka", partition = %self.id, error = %e, "pause failed"),
        }
    }

    fn resume_if_paused(&self) {
        if !self.state.is_paused() {
            return;
        }
        if let Err(e) = self.consumer.resume(&self.tpl(None)) {
            debug!(source = "kafka", partition = %self.id, error = %e, "resume failed");
        }
        self.state.set_paused(false);
        self.shared
            .metrics
            .paused_partitions
            .fetch_sub(1, Ordering::Relaxed);
        info!(source = "kafka", partition = %self.id, "resumed");
    }

    /// This partition as a one-element list, with `offset` when given.
    fn tpl(&self, offset: Option<i64>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let (topic, partition) = (self.id.topic.as_str(), self.id.partition);
        match offset {
            Some(o) => {
                if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(o)) {
                    debug!(source = "kafka", partition = %self.id, error = %e, "offset list");
                }
            }
            None => {
                tpl.add_partition(topic, partition);
            }
        }
        tpl
    }
}

impl Drop for PartitionTask {
    /// Also runs when a task is aborted after the drain bound: the paused gauge and the
    /// consumer's pause state must not outlive it.
    fn drop(&mut self) {
        self.resume_if_paused();
    }
}
