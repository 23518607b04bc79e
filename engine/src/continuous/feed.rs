//! The hand-off of durable WAL entries from the WAL thread to the CQ task.
//!
//! Bounded, in WAL order, and never blocking ingest: the WAL thread offers each entry to a
//! bounded channel. When the channel is full (the CQs are slower than ingest), the feed
//! switches to *catch-up*: it stops sending, remembers the first entry not sent, and wakes
//! the CQ task, which drains what was sent and then reads the rest back from the WAL on
//! disk (the segments are held for the CQs, see `Engine::hold_wal`). Once it has read
//! everything up to the newest durable entry — checked under the same lock the WAL thread
//! takes to offer, so not one entry falls between the two — the feed goes live again.
//!
//! `ALTER … RESUME` uses the same path: the resumed CQ re-reads the WAL from where it
//! paused, so a pause skips nothing (CONTINUOUS_QUERIES.md §5.7).

use std::sync::Mutex;

use arrow::array::RecordBatch;
use tokio::sync::{Notify, mpsc};

use super::CqInput;

/// Entries the channel holds before the feed falls back to reading the WAL *(design)*.
pub(crate) const FEED_CAPACITY: usize = 1024;

#[derive(Debug, Default)]
struct FeedState {
    /// The newest entry offered (durable).
    last_seq: u64,
    /// Set while catching up: the first entry the CQ task must read from the WAL.
    catch_up_from: Option<u64>,
}

/// The WAL-thread side of the feed; see the module docs.
#[derive(Debug)]
pub(crate) struct Feed {
    tx: mpsc::Sender<CqInput>,
    state: Mutex<FeedState>,
    wake: Notify,
    catch_ups: std::sync::atomic::AtomicU64,
}

/// What the CQ task reads from the WAL next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Read `from..=through`.
    Read { from: u64, through: u64 },
    /// Caught up; the feed is live again.
    Live,
}

impl Feed {
    pub(crate) fn new(capacity: usize, last_seq: u64) -> (Self, mpsc::Receiver<CqInput>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let feed = Self {
            tx,
            state: Mutex::new(FeedState {
                last_seq,
                catch_up_from: None,
            }),
            wake: Notify::new(),
            catch_ups: Default::default(),
        };
        (feed, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called on the WAL thread for every durable entry, in sequence order.
    pub(crate) fn offer(&self, seq: u64, logs: Option<RecordBatch>) {
        let mut state = self.lock();
        state.last_seq = state.last_seq.max(seq);
        if state.catch_up_from.is_some() {
            return;
        }
        let Some(logs) = logs else {
            return;
        };
        match self.tx.try_send((seq, logs)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                state.catch_up_from = Some(seq);
                self.catch_ups
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(state);
                self.wake.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Makes the CQ task re-read the WAL from `from` (a resumed CQ catching up).
    pub(crate) fn rewind(&self, from: u64) {
        let mut state = self.lock();
        state.catch_up_from = Some(state.catch_up_from.map_or(from, |f| f.min(from)));
        drop(state);
        self.wake.notify_one();
    }

    /// Resolves when a catch-up was requested.
    pub(crate) async fn wanted(&self) {
        self.wake.notified().await;
    }

    /// After the CQ task has processed everything through `done_through` (or, first, with
    /// `None`): the next range to read, or [`Next::Live`] when nothing is left, in which
    /// case the feed sends to the channel again from the next entry on. `on_live` runs
    /// under the feed lock, before any later entry can be offered.
    pub(crate) fn next(&self, done_through: Option<u64>, on_live: impl FnOnce()) -> Next {
        let mut state = self.lock();
        let Some(from) = state.catch_up_from else {
            return Next::Live;
        };
        let from = done_through.map_or(from, |d| d + 1);
        if from > state.last_seq {
            state.catch_up_from = None;
            on_live();
            return Next::Live;
        }
        Next::Read {
            from,
            through: state.last_seq,
        }
    }

    /// Ends a catch-up that cannot go on (the WAL could not be read): live again from the
    /// next entry. `on_live` runs under the feed lock.
    pub(crate) fn give_up(&self, on_live: impl FnOnce()) {
        let mut state = self.lock();
        state.catch_up_from = None;
        on_live();
    }

    /// How often the feed fell back to the WAL because the channel was full.
    pub(crate) fn catch_ups(&self) -> u64 {
        self.catch_ups.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from(vec![1])) as arrow::array::ArrayRef,
        )])
        .unwrap()
    }

    #[test]
    fn a_full_channel_switches_to_the_wal_and_back_without_a_gap() {
        let (feed, mut rx) = Feed::new(2, 0);
        for seq in 1..=5 {
            feed.offer(seq, Some(batch()));
        }
        // 1 and 2 went through, 3 found the channel full: 3..=5 come from the WAL.
        assert_eq!(rx.try_recv().unwrap().0, 1);
        assert_eq!(rx.try_recv().unwrap().0, 2);
        assert!(rx.try_recv().is_err());
        assert_eq!(
            feed.next(None, || {}),
            Next::Read {
                from: 3,
                through: 5
            }
        );
        feed.offer(6, Some(batch()));
        assert!(rx.try_recv().is_err(), "nothing is sent while catching up");
        assert_eq!(
            feed.next(Some(5), || {}),
            Next::Read {
                from: 6,
                through: 6
            }
        );
        let mut live = false;
        assert_eq!(feed.next(Some(6), || live = true), Next::Live);
        assert!(live);
        feed.offer(7, Some(batch()));
        assert_eq!(rx.try_recv().unwrap().0, 7);
        assert_eq!(feed.catch_ups(), 1);
    }

    #[test]
    fn rewind_reads_from_the_earliest_position_asked() {
        let (feed, _rx) = Feed::new(8, 0);
        for seq in 1..=4 {
            feed.offer(seq, None);
        }
        feed.rewind(3);
        feed.rewind(2);
        assert_eq!(
            feed.next(None, || {}),
            Next::Read {
                from: 2,
                through: 4
            }
        );
        assert_eq!(feed.next(Some(4), || {}), Next::Live);
        assert_eq!(feed.next(None, || {}), Next::Live);
    }
}
