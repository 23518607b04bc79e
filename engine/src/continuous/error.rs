//! What can go wrong planning, running, storing or checkpointing a CQ: [`CqError`] and the
//! typed reasons it carries.

use std::path::PathBuf;

use arrow::datatypes::{DataType, SchemaRef};

/// What can go wrong planning or running a CQ.
#[derive(Debug, thiserror::Error)]
pub enum CqError {
    /// The body is not a supported continuous query shape.
    #[error("continuous query not supported: {reason} (in: {sql})")]
    Unsupported { sql: String, reason: String },
    /// DataFusion failed planning or evaluating the body.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed building or reading batches.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// An input batch does not look like `logs`.
    #[error("input batch: {0}")]
    Input(#[from] InputError),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// `CREATE` of a name that is taken.
    #[error("continuous query \"{0}\" already exists")]
    AlreadyExists(String),
    /// A statement names a CQ that does not exist.
    #[error("continuous query \"{0}\" does not exist")]
    NotFound(String),
    /// Definitions, checkpoints or tables could not be stored or loaded.
    #[error("continuous query storage: {0}")]
    Storage(#[from] StorageError),
    /// A NOTIFY channel cannot work as written (an option, URL, CA file or Kafka brokers).
    #[error("NOTIFY {channel}: {reason}")]
    Notify {
        /// The channel as written, e.g. `WEBHOOK 'http://…'`.
        channel: String,
        reason: String,
    },
    /// An INTO / NOTIFY TABLE table cannot be used as written (a key column missing, a
    /// name that is not a plain table name).
    #[error("{0}")]
    Table(String),
    /// An INTO / NOTIFY TABLE name is taken: a system table, or a table with other columns.
    #[error("{0}")]
    TableExists(String),
    /// Cluster mode: the shared catalog in Cassandra could not be read or changed.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Why an input batch cannot be processed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("expected the logs schema, got {0:?}")]
    NotLogs(SchemaRef),
    #[error("the event time column is not Timestamp(µs)")]
    EventTimeNotTimestamp,
    #[error("column {index} is {data_type}, not Timestamp(µs)")]
    ColumnNotTimestamp { index: usize, data_type: DataType },
    #[error("logs.timestamp is not Timestamp(µs)")]
    LogsTimestampNotMicros,
    #[error("an aggregate FILTER is not boolean")]
    FilterNotBoolean,
    #[error("{keys} keys for {rows} rows upserted into \"{table}\"")]
    KeysDoNotMatchRows {
        keys: usize,
        rows: usize,
        table: String,
    },
}

/// Why a checkpoint cannot be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a LogSphere CQ checkpoint")]
    NotACheckpoint,
    #[error("truncated")]
    Truncated,
    #[error("truncated header")]
    TruncatedHeader,
    #[error("header too long")]
    HeaderTooLong,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("the checkpoint was taken for a different query body")]
    OtherBody,
    #[error("checkpoint file: no CQ state")]
    NoHostState,
    #[error("checkpoint is of version {checkpoint}, the definition is version {definition}")]
    OtherVersion { checkpoint: u64, definition: u64 },
    #[error("window_start column")]
    WindowStartColumn,
    #[error("a windowed query without a group key converter")]
    NoKeyConverter,
}

/// Why definitions, checkpoints or CQ tables cannot be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    /// An atomic replace (temporary file, fsync, rename) failed.
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: Box<crate::EngineError>,
    },
    /// A table file that is not what this version writes.
    #[error("{}: {what}", path.display())]
    BadTableFile { path: PathBuf, what: &'static str },
    /// A stored `CREATE` that no longer parses.
    #[error("{0}")]
    Definition(#[from] logsphere_sql::ParseError),
    #[error("stored definition is not a CREATE CONTINUOUS QUERY")]
    NotACreate,
    /// A `START FROM` cut beyond what the hot tier holds.
    #[error("the hot tier does not hold WAL entry {0} yet")]
    HotTierBehind(u64),
}

impl StorageError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> CqError {
        StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }

    pub(crate) fn write(path: &std::path::Path, source: crate::EngineError) -> CqError {
        StorageError::Write {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
        .into()
    }

    pub(crate) fn bad_table_file(path: &std::path::Path, what: &'static str) -> CqError {
        StorageError::BadTableFile {
            path: path.to_path_buf(),
            what,
        }
        .into()
    }

    pub(crate) fn json(path: &std::path::Path, source: serde_json::Error) -> CqError {
        StorageError::Json {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }
}
