//! One partition's task: claim it, seek to its durable progress, then read, decode, write
//! and advance batch after batch until it is revoked or fenced.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

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
use super::write::Checkpoint;
use crate::source::{PartitionClaim, PartitionId};

/// Longest wait between two looks at the partition queue (guards a missed wake-up).
const IDLE_POLL: Duration = Duration::from_millis(100);

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
pub(super) enum Exit {
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

    /// Reads and writes with one batch of overlap: while a batch is written to the hot
    /// store, the next one is read and decoded, so decoding is off the write's critical
    /// path. Batches are still written one after another in offset order, and progress only
    /// ever covers written ones.
    async fn consume_from(&self, claim: &PartitionClaim, checkpoint: &mut Checkpoint) -> Exit {
        let mut expected = claim.next_offset;
        let mut ready: Option<Box<PendingBatch<'_>>> = None;
        loop {
            let (written, collected) = match ready.take() {
                Some(batch) => {
                    // Give up collecting soon if nothing comes, so an idle partition does
                    // not hold back the progress of the batch being written.
                    let idle = Some(Instant::now() + self.shared.config.linger);
                    tokio::join!(
                        self.write(*batch, checkpoint),
                        self.collect(&mut expected, idle)
                    )
                }
                None => (
                    Ok(()),
                    self.collect(&mut expected, checkpoint.due_at()).await,
                ),
            };
            if let Err(exit) = written {
                return exit;
            }
            match collected {
                Collected::Batch(batch) => ready = Some(batch),
                Collected::Idle => {}
                // A batch read but not written is dropped: the next owner reads it again.
                Collected::Stopped => return Exit::Stopped,
            }
            if checkpoint.is_due()
                && let Err(exit) = self.advance(claim, checkpoint, true).await
            {
                return exit;
            }
        }
    }

    pub(super) fn stopped(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn until_stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sleeps for `d`; `false` when stopped meanwhile.
    pub(super) async fn sleep_unless_stopped(&self, d: Duration) -> bool {
        tokio::select! {
            _ = sleep(d) => !self.stopped(),
            _ = self.until_stopped() => false,
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

    /// This partition as a one-element list, with `offset` when given.
    pub(super) fn tpl(&self, offset: Option<i64>) -> TopicPartitionList {
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
