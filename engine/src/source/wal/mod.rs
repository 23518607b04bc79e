//! The write-ahead log: segmented, checksummed, group-committed, replayed on start.
//!
//! See `wal.md` beside this file for the format, the commit path and what survives a crash.

mod payload;
mod segment;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::EngineError;
pub use payload::IngestEntry;
pub use segment::{ReadEntry, encode_entry, parse_segment_name, scan_segment, segment_path};

/// Called on the WAL thread once an entry is durable, before its writer is answered, with
/// the entry's sequence number. Entries are applied in sequence order.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

struct Append {
    payload: Vec<u8>,
    on_durable: OnDurable,
    reply: oneshot::Sender<Result<u64, String>>,
}

/// Counters the WAL keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct WalMetrics {
    /// Bytes appended (headers included).
    pub bytes: AtomicU64,
    /// Entries appended.
    pub entries: AtomicU64,
    /// fsync calls (one per group commit).
    pub syncs: AtomicU64,
    /// Why the WAL acknowledges nothing more (a failed fsync), until a restart.
    pub broken: Mutex<Option<String>>,
}

/// What opening the WAL found on disk.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Segments read.
    pub segments: usize,
    /// Valid entries found (including those already flushed).
    pub entries: usize,
    /// Bytes cut off torn or corrupt tails.
    pub cut_bytes: u64,
}

/// A handle on the WAL; appends from any thread or task.
pub struct Wal {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Append>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<WalMetrics>,
    /// Sequence number of the first entry of the segment being written.
    active_first_seq: Arc<AtomicU64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Wal {
    /// Opens the WAL in `dir`, hands every valid entry to `replay` in order, cuts off torn
    /// or corrupt tails (keeping a `.corrupt` copy of a damaged segment), and starts a new
    /// segment. Sequence numbers continue after the largest of the entries found and
    /// `min_next_seq - 1`.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        min_next_seq: u64,
        mut replay: impl FnMut(ReadEntry) -> Result<(), EngineError>,
    ) -> Result<(Self, ReplayReport), EngineError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut report = ReplayReport::default();
        let mut next_seq = min_next_seq.max(1);
        for (first_seq, path) in list_segments(dir)? {
            let scan = scan_segment(&path).map_err(io_err(&path))?;
            report.segments += 1;
            if let Some(damage) = &scan.damage {
                let cut = scan.file_len - scan.valid_len;
                tracing::warn!(
                    segment = %path.display(), valid_bytes = scan.valid_len, cut_bytes = cut,
                    "WAL segment damaged ({damage}); cutting it off after the last valid entry"
                );
                let keep = path.with_extension(format!("wal.corrupt-{}", unix_secs()));
                std::fs::copy(&path, &keep).map_err(io_err(&keep))?;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(scan.valid_len).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                report.cut_bytes += cut;
            }
            if scan.entries.is_empty() && first_seq >= next_seq {
                next_seq = first_seq;
            }
            for entry in scan.entries {
                next_seq = next_seq.max(entry.seq + 1);
                report.entries += 1;
                replay(entry)?;
            }
        }
        let metrics = Arc::new(WalMetrics::default());
        let active_first_seq = Arc::new(AtomicU64::new(next_seq));
        let writer = Writer::create(
            dir,
            segment_bytes,
            next_seq,
            Arc::clone(&metrics),
            Arc::clone(&active_first_seq),
        )?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("logsphere-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        let wal = Self {
            dir: dir.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            metrics,
            active_first_seq,
        };
        Ok((wal, report))
    }

    /// Appends one entry; resolves with its sequence number once it is fsynced and
    /// `on_durable` has run. Concurrent appends share one fsync (group commit).
    pub async fn append(
        &self,
        payload: Vec<u8>,
        on_durable: OnDurable,
    ) -> Result<u64, EngineError> {
        let (reply, rx) = oneshot::channel();
        {
            let tx = self.tx.lock().map_err(|_| EngineError::ShuttingDown)?;
            let tx = tx.as_ref().ok_or(EngineError::ShuttingDown)?;
            tx.send(Append {
                payload,
                on_durable,
                reply,
            })
            .map_err(|_| EngineError::ShuttingDown)?;
        }
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(msg)) => Err(EngineError::Wal(msg)),
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }

    /// The sequence number the active segment starts at; right after [`Wal::open`], the
    /// next entry's.
    pub fn next_seq(&self) -> u64 {
        self.active_first_seq.load(Ordering::Acquire)
    }

    /// The WAL's counters.
    pub fn metrics(&self) -> &WalMetrics {
        &self.metrics
    }

    /// Deletes closed segments whose every entry has `seq <= durable_through` (their
    /// records are in committed Parquet and no reader holds them). Returns how many.
    pub fn delete_segments(&self, durable_through: u64) -> Result<usize, EngineError> {
        let active = self.active_first_seq.load(Ordering::Acquire);
        let segments = list_segments(&self.dir)?;
        let mut deleted = 0;
        for pair in segments.windows(2) {
            let ((first, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *first >= active || next_first.saturating_sub(1) > durable_through {
                break;
            }
            std::fs::remove_file(path).map_err(io_err(path))?;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Reads the entries with `from <= seq <= through` back from disk, in order, one segment
    /// in memory at a time, for a reader that fell behind (a continuous query catching up).
    /// Entries up to `through` must be durable and their segments held (see
    /// `Engine::hold_wal`); a missing entry is an error naming the first one not found.
    pub fn read_range(
        &self,
        from: u64,
        through: u64,
        mut each: impl FnMut(ReadEntry) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        if from > through {
            return Ok(());
        }
        let segments = list_segments(&self.dir)?;
        let mut next = from;
        for (i, (first, path)) in segments.iter().enumerate() {
            let next_first = segments.get(i + 1).map(|(f, _)| *f);
            if next_first.is_some_and(|n| n <= next) || *first > through {
                continue;
            }
            let scan = scan_segment(path).map_err(io_err(path))?;
            for entry in scan.entries {
                if entry.seq < next || entry.seq > through {
                    continue;
                }
                next = entry.seq + 1;
                each(entry)?;
            }
            if next > through {
                return Ok(());
            }
        }
        if next <= through {
            return Err(EngineError::Wal(format!(
                "entries {next}..={through} are no longer in the WAL at {}",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Stops the WAL thread after every queued append is written and synced.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, EngineError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The WAL thread's state: the open segment and the next sequence number.
struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    path: PathBuf,
    written: u64,
    next_seq: u64,
    metrics: Arc<WalMetrics>,
    active_first_seq: Arc<AtomicU64>,
    broken: Option<String>,
    /// Test hook (`LOGSPHERE_FAULT_WAL_FSYNC_FAIL_AFTER`): fsyncs that succeed before one
    /// is made to fail, as a failing disk's would.
    fsync_fault_after: Option<u64>,
}

/// Most bytes gathered into one group commit.
const GROUP_BYTES: usize = 8 * 1024 * 1024;

impl Writer {
    fn create(
        dir: &Path,
        segment_bytes: u64,
        next_seq: u64,
        metrics: Arc<WalMetrics>,
        active_first_seq: Arc<AtomicU64>,
    ) -> Result<Self, EngineError> {
        let (file, path) = Self::new_segment(dir, next_seq)?;
        active_first_seq.store(next_seq, Ordering::Release);
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            path,
            written: 0,
            next_seq,
            metrics,
            active_first_seq,
            broken: None,
            fsync_fault_after: std::env::var("LOGSPHERE_FAULT_WAL_FSYNC_FAIL_AFTER")
                .ok()
                .and_then(|v| v.parse().ok()),
        })
    }

    /// fsync of the active segment (or the injected failure of the test hook).
    fn sync(&mut self) -> std::io::Result<()> {
        if let Some(left) = self.fsync_fault_after.as_mut() {
            if *left == 0 {
                return Err(std::io::Error::other(
                    "injected fsync failure (LOGSPHERE_FAULT_WAL_FSYNC_FAIL_AFTER)",
                ));
            }
            *left -= 1;
        }
        self.file.sync_data()
    }

    fn new_segment(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), EngineError> {
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok((file, path))
    }

    fn run(mut self, rx: mpsc::Receiver<Append>) {
        let mut buf = Vec::with_capacity(GROUP_BYTES);
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut bytes = group[0].payload.len();
            while bytes < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(a) => {
                        bytes += a.payload.len();
                        group.push(a);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group, &mut buf);
        }
        let _ = self.file.sync_data();
    }

    fn commit(&mut self, group: Vec<Append>, buf: &mut Vec<u8>) {
        if let Some(why) = &self.broken {
            for a in group {
                let _ = a.reply.send(Err(why.clone()));
            }
            return;
        }
        buf.clear();
        let first_seq = self.next_seq;
        for (i, a) in group.iter().enumerate() {
            encode_entry(first_seq + i as u64, &a.payload, buf);
        }
        let result = self.file.write_all(buf);
        if result.is_ok()
            && let Err(e) = self.sync()
        {
            // After a failed fsync the page cache cannot be trusted (PostgreSQL's
            // "fsyncgate"): the kernel may have dropped the dirty pages and a later fsync
            // would report success for data that never reached the disk. Acknowledge
            // nothing more; a restart replays what is really on disk, checksummed.
            let why = format!(
                "fsync of WAL segment {} failed: {e}; nothing more is acknowledged until a \
                 restart replays the WAL from disk",
                self.path.display()
            );
            tracing::error!(segment = %self.path.display(), error = %e, "WAL fsync failed; refusing further appends");
            // Best effort: the group was not acknowledged, so it should not come back.
            let _ = self.file.set_len(self.written);
            self.broken = Some(why.clone());
            *self
                .metrics
                .broken
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            for a in group {
                let _ = a.reply.send(Err(why.clone()));
            }
            return;
        }
        if let Err(e) = result {
            let why = format!("WAL write to {} failed: {e}", self.path.display());
            tracing::error!(segment = %self.path.display(), error = %e, "WAL write failed");
            // Cut back whatever part of the group reached the file, so no entry that was
            // never acknowledged is replayed; if even that fails, refuse further appends.
            if self
                .file
                .set_len(self.written)
                .and_then(|_| self.file.sync_data())
                .is_err()
            {
                self.broken = Some(why.clone());
                *self
                    .metrics
                    .broken
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            }
            for a in group {
                let _ = a.reply.send(Err(why.clone()));
            }
            return;
        }
        self.written += buf.len() as u64;
        self.next_seq += group.len() as u64;
        self.metrics
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.metrics
            .entries
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
        for (i, a) in group.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            (a.on_durable)(seq);
            let _ = a.reply.send(Ok(seq));
        }
        if self.written >= self.segment_bytes {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        match Self::new_segment(&self.dir, self.next_seq) {
            Ok((file, path)) => {
                self.file = file;
                self.path = path;
                self.written = 0;
                self.active_first_seq
                    .store(self.next_seq, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new WAL segment; staying on the current one")
            }
        }
    }
}

#[cfg(test)]
mod tests;
