//! The idempotency table: which `Idempotency-Key`s were answered, and with what.
//!
//! Keys live in memory for [`RETENTION`]. A key is durable from the moment its WAL entry is:
//! replaying the WAL brings it back. When a flush moves entries into Parquet, the keys of
//! those entries are written to a small key file (`keys/<horizon>.keys`, fsynced) *before*
//! the WAL segments holding them are deleted, so segments can go as soon as their records are
//! in Parquet while retries within the retention window are still recognised after a crash.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{EngineError, IngestOutcome};

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(15 * 60);

/// The shared answer of a request still being written.
pub(crate) type Shared = watch::Receiver<Option<Result<IngestOutcome, String>>>;

/// In-memory state of the idempotency table.
#[derive(Default)]
pub(crate) struct Idempotency {
    pub(crate) done: HashMap<String, (IngestOutcome, Instant)>,
    pub(crate) inflight: HashMap<String, Shared>,
    /// Keys of durable WAL entries not yet in a key file, by sequence number.
    unflushed: BTreeMap<u64, (String, IngestOutcome)>,
    inserts: u64,
}

impl Idempotency {
    /// Remembers the answer to `key`, first given `age` ago.
    pub(crate) fn record(&mut self, key: String, outcome: IngestOutcome, age: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.done.insert(key, (outcome, at));
        self.inserts += 1;
        if self.inserts.is_multiple_of(4096) {
            self.done.retain(|_, (_, at)| at.elapsed() < RETENTION);
        }
    }

    /// Notes that the WAL entry `seq` carrying `key` is durable.
    pub(crate) fn durable(&mut self, seq: u64, key: String, outcome: IngestOutcome) {
        self.unflushed.insert(seq, (key, outcome));
    }

    /// Takes the keys of entries up to `horizon`, for a key file.
    fn take_through(&mut self, horizon: u64) -> Vec<(String, IngestOutcome)> {
        let rest = self.unflushed.split_off(&(horizon + 1));
        std::mem::replace(&mut self.unflushed, rest)
            .into_values()
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyLine {
    k: String,
    a: usize,
    r: usize,
    /// When the key's request was stored (ms since the epoch).
    t: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The key files of a data directory.
#[derive(Debug)]
pub(crate) struct KeyFiles {
    dir: PathBuf,
}

impl KeyFiles {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("keys"),
        }
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + use<> {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    }

    /// Loads the keys still within the retention into `idem`; deletes expired files.
    pub(crate) fn load(&self, idem: &mut Idempotency) -> Result<usize, EngineError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let now = unix_ms();
        let mut loaded = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(self.io(&self.dir))? {
            let path = entry.map_err(self.io(&self.dir))?.path();
            let bytes = std::fs::read(&path).map_err(self.io(&path))?;
            // Damaged bytes must not keep the server from starting: lossy text, and a line
            // that does not parse is skipped (and counted).
            let text = String::from_utf8_lossy(&bytes);
            let mut live = false;
            let mut damaged = 0usize;
            let lines: Vec<&str> = text.lines().collect();
            let parsed = lines.iter().enumerate().filter_map(|(i, l)| {
                let line = serde_json::from_str::<KeyLine>(l).ok();
                // A torn last line (a crash while writing, no newline after it) is expected:
                // its keys are still in the WAL, which is only cut after this file is whole.
                let torn_tail = i + 1 == lines.len() && !text.ends_with('\n');
                if line.is_none() && !torn_tail {
                    damaged += 1;
                }
                line
            });
            let parsed: Vec<KeyLine> = parsed.collect();
            if damaged > 0 {
                tracing::warn!(
                    file = %path.display(),
                    damaged_lines = damaged,
                    "idempotency key lines do not parse (a damaged disk?); their keys are forgotten, so a retry of those requests may be stored again"
                );
            }
            for line in parsed {
                let age = Duration::from_millis(now.saturating_sub(line.t));
                if age < RETENTION {
                    live = true;
                    loaded += 1;
                    let outcome = IngestOutcome {
                        accepted: line.a,
                        rejected: line.r,
                        replayed: true,
                    };
                    idem.record(line.k, outcome, age);
                }
            }
            if !live {
                std::fs::remove_file(&path).map_err(self.io(&path))?;
            }
        }
        Ok(loaded)
    }

    /// Writes the keys of entries up to `horizon` to a key file and fsyncs it, then deletes
    /// key files past the retention. Call before deleting WAL segments up to `horizon`.
    pub(crate) fn persist(&self, idem: &mut Idempotency, horizon: u64) -> Result<(), EngineError> {
        let keys = idem.take_through(horizon);
        if !keys.is_empty() {
            let now = unix_ms();
            let mut text = Vec::with_capacity(keys.len() * 64);
            for (k, o) in keys {
                let line = KeyLine {
                    k,
                    a: o.accepted,
                    r: o.rejected,
                    t: now,
                };
                serde_json::to_writer(&mut text, &line)
                    .map_err(|e| EngineError::Wal(format!("key file: {e}")))?;
                text.push(b'\n');
            }
            let path = self.dir.join(format!("{horizon:020}.keys"));
            let mut f = std::fs::File::create(&path).map_err(self.io(&path))?;
            f.write_all(&text)
                .and_then(|_| f.sync_all())
                .map_err(self.io(&path))?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io(&self.dir))?;
        }
        let expired = SystemTime::now()
            .checked_sub(RETENTION)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for entry in std::fs::read_dir(&self.dir)
            .map_err(self.io(&self.dir))?
            .flatten()
        {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|m| m < expired)
                .unwrap_or(false);
            if old {
                std::fs::remove_file(&path).map_err(self.io(&path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file with a damaged line in the middle (not UTF-8, not JSON) and a torn last
    /// line still loads: the good keys are remembered, the damaged line is skipped.
    #[test]
    fn damaged_key_lines_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        let now = unix_ms();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(
            format!("{{\"k\":\"good-1\",\"a\":2,\"r\":0,\"t\":{now}}}\n").as_bytes(),
        );
        bytes.extend_from_slice(b"{\"k\":\"bro\xff\xfeken\",\"a\n");
        bytes.extend_from_slice(
            format!("{{\"k\":\"good-2\",\"a\":1,\"r\":1,\"t\":{now}}}\n").as_bytes(),
        );
        bytes.extend_from_slice(b"{\"k\":\"torn");
        std::fs::write(dir.path().join("keys/00000000000000000001.keys"), bytes).unwrap();
        let mut idem = Idempotency::default();
        assert_eq!(files.load(&mut idem).unwrap(), 2);
        assert!(idem.done.contains_key("good-1") && idem.done.contains_key("good-2"));
        assert_eq!(idem.done.len(), 2);
    }
}
