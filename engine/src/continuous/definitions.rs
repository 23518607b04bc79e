//! The definitions file, `<data_dir>/continuous_queries.json`: every CQ as written (so
//! what `SHOW CREATE` prints is what a restart runs), plus the alerts and events of dropped
//! CQs, replaced atomically as one file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::alerts::Alert;
use super::backfill::BackfillPlan;
use super::notify::AlertEvent;
use super::{CqError, StorageError};
use crate::catalog::atomic_write;

/// Whether a CQ consumes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CqState {
    Running,
    Paused,
}

impl CqState {
    /// `RUNNING` or `PAUSED`, as `continuous_queries` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            CqState::Running => "RUNNING",
            CqState::Paused => "PAUSED",
        }
    }
}

/// A stored continuous-query definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CqDefinition {
    pub name: String,
    /// 1, bumped by `CREATE OR REPLACE`.
    pub version: u64,
    /// The statement as written, for `SHOW CREATE` and to rebuild the CQ on restart.
    pub sql_text: String,
    pub state: CqState,
    /// Wall-clock µs of the `CREATE`.
    pub created_at: i64,
    /// The first WAL sequence number the CQ reads.
    pub from_seq: u64,
    /// `START FROM` before NOW: what the backfill reads, kept until it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillPlan>,
}

/// The definitions, and the alerts of dropped CQs: in one file, so a DROP that removes a
/// definition and keeps its (now resolved) alerts is one atomic replace.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct DefinitionsFile {
    pub(super) queries: Vec<CqDefinition>,
    #[serde(default)]
    pub(super) dropped_alerts: Vec<Alert>,
    #[serde(default)]
    pub(super) dropped_events: Vec<AlertEvent>,
}
impl DefinitionsFile {
    /// The file at `path`; empty when there is none yet. A file that does not parse (a
    /// bit flip or a torn write on a failing disk: the file is only ever replaced whole) is
    /// set aside as `<name>.corrupt-<unix seconds>`, named in the log, and the engine starts
    /// without CQs rather than not at all: ingest and queries must not depend on alert
    /// rules. Their checkpoints stay, so restoring a repaired file resumes them.
    pub(super) fn load(path: &Path) -> Result<Self, CqError> {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(file) => Ok(file),
                Err(e) => {
                    let aside = set_aside(path).map_err(|io| StorageError::io(path, io))?;
                    tracing::error!(
                        file = %path.display(),
                        set_aside = %aside.display(),
                        error = %e,
                        "the continuous-query definitions do not parse; set aside, starting without continuous queries"
                    );
                    Ok(Self::default())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    /// Replaces the file at `path` atomically.
    pub(super) fn store(&self, path: &Path) -> Result<(), CqError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StorageError::json(path, e))?;
        atomic_write(path, &bytes).map_err(|e| StorageError::write(path, e))
    }
}

/// Renames a damaged file to `<name>.corrupt-<unix seconds>` beside it; returns the new path.
pub(super) fn set_aside(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{secs}"));
    let aside = path.with_file_name(name);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}
