//! Writing one partition's batches: the hot-store append (retried, the partition paused
//! while it fails), fenced progress, its mirror in the group's offsets, and dead letters
//! to their topic.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::{Array, BinaryArray};
use rdkafka::consumer::Consumer;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::batch::PendingBatch;
use super::partition::{Exit, PartitionTask};
use crate::EngineError;
use crate::source::{PartitionClaim, SourcedBatch};

/// Progress advances at most this often per partition (see [`Checkpoint`]).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Written but not yet durable progress: progress is a lightweight transaction, so it
/// advances at most once per [`PROGRESS_INTERVAL`] (a crash replays at most that much,
/// idempotently), and at once when the partition goes idle after it.
pub(super) struct Checkpoint {
    /// The offset after the last written record, when progress does not cover it yet.
    pending: Option<i64>,
    /// When progress last advanced.
    last: Instant,
}

impl Checkpoint {
    pub(super) fn new() -> Self {
        Self {
            pending: None,
            last: Instant::now(),
        }
    }

    pub(super) fn due_at(&self) -> Option<Instant> {
        self.pending.map(|_| self.last + PROGRESS_INTERVAL)
    }

    pub(super) fn is_due(&self) -> bool {
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
    /// Runs `op` until it succeeds, pausing the partition while it fails; `None` when
    /// stopped first. Retrying is safe: hot-store writes are idempotent by identity and
    /// progress is fenced.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
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

    /// Writes the batch to the hot store (retrying while it fails); its offsets become
    /// the checkpoint's pending progress.
    pub(super) async fn write(
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
    pub(super) async fn advance(
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
    pub(super) fn store_offset(&self, next_offset: i64) {
        match self.consumer.store_offsets(&self.tpl(Some(next_offset))) {
            Ok(()) => self.shared.offsets_stored.store(true, Ordering::Release),
            Err(e) => debug!(source = "kafka", partition = %self.id, error = %e, "storing offset"),
        }
    }

    /// Best effort: dead letters' raw bytes also go to `dead_letter_topic` when set.
    pub(super) fn produce_dead_letters(&self, batch: &SourcedBatch) {
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
    pub(super) fn pause(&self) {
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

    pub(super) fn resume_if_paused(&self) {
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
}
