//! The local catalog: one small JSON manifest, replaced atomically.
//!
//! The manifest names every committed cold file and the sequence horizon: the WAL entries
//! with `seq <= flushed_seq` are in those files, the ones above it are in the hot buffer.
//! It is written to a temporary file, fsynced, renamed over the old one and the directory
//! fsynced, so a crash leaves either the old manifest or the new one, never a mix.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// One committed Parquet file of the cold tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdFile {
    /// Path below the cold root, e.g. `logs/date=2026-11-24/hour=13/<uuid>.parquet`.
    pub path: String,
    /// Smallest and largest value of the table's time column in the file (µs since epoch).
    pub min_ts: i64,
    pub max_ts: i64,
    /// Rows and bytes in the file.
    pub rows: u64,
    pub bytes: u64,
    /// Promoted fields the file holds as typed columns (`fields`); none in files written
    /// before promotion or with it off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<crate::fields::FileColumn>,
}

/// The catalog's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bumped by every commit.
    pub version: u64,
    /// Every WAL entry up to and including this sequence number is in the cold files.
    pub flushed_seq: u64,
    /// Cold files of `logs`.
    pub logs: Vec<ColdFile>,
    /// Cold files of `dead_letters`.
    pub dead_letters: Vec<ColdFile>,
    /// Cluster mode: which Kafka-sourced hot rows the cold files hold (embedded: `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<TierCut>,
    /// Files a compaction replaced: no query plans them any more, but one planned before
    /// the compaction may still read them, so they are deleted only after a grace period
    /// (`compaction::remove_retired`). Named here so start-up does not take them for debris.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredFile>,
    /// The registry of promoted fields: the extra columns of `logs`, in column order
    /// (`fields`). Committed with the files that carry them, so it survives as they do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<crate::fields::PromotedField>,
}

/// Cluster mode's tiering horizon: the cold tier holds exactly the rows with a time before
/// `horizon_us` *and* a Kafka offset before their partition's entry in `offsets`; every
/// other row is answered by the hot tier. A late record (old time, new offset) therefore
/// stays visible in the hot tier until a later round moves it (see `docs/cluster.md`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierCut {
    /// Rows with a time (`timestamp`; `ingest_time` for dead letters) at or after this, µs,
    /// are hot.
    pub horizon_us: i64,
    /// Topic → partition → first offset not in the cold tier.
    pub offsets: std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>,
}

impl TierCut {
    /// Whether the row with this time and Kafka identity is in the cold tier.
    pub fn covers(&self, time_us: i64, topic: &str, partition: i32, offset: i64) -> bool {
        time_us < self.horizon_us
            && self
                .offsets
                .get(topic)
                .and_then(|p| p.get(&partition))
                .is_some_and(|next| offset < *next)
    }

    /// The first offset of `topic`/`partition` not covered (0 when none is).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.offsets
            .get(topic)
            .and_then(|p| p.get(&partition))
            .copied()
            .unwrap_or(0)
    }
}

/// A cold file replaced by a compaction, waiting for its grace period to pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredFile {
    /// Path below the cold root.
    pub path: String,
    /// When the compaction that replaced it was committed (µs since the epoch).
    pub retired_at_us: i64,
}

/// Where the manifest lives and how it is replaced.
#[derive(Debug)]
pub struct LocalCatalog {
    path: PathBuf,
}

impl LocalCatalog {
    /// The catalog in `dir` (`dir/catalog.json`).
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("catalog.json"),
        }
    }

    /// Reads the manifest; a missing file is an empty catalog.
    pub fn load(&self) -> Result<Manifest, EngineError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EngineError::Catalog {
                path: self.path.clone(),
                reason: format!("not a valid manifest: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(source) => Err(EngineError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Replaces the manifest atomically and durably.
    pub fn commit(&self, manifest: &Manifest) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| EngineError::Catalog {
            path: self.path.clone(),
            reason: format!("cannot encode manifest: {e}"),
        })?;
        atomic_write(&self.path, &bytes)
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old content or the new, never
/// a mix: write a temporary file, fsync it, rename it over `path`, fsync the directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}
