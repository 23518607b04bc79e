//! The engine's error type.

use std::path::PathBuf;

/// Everything the engine can fail with, each with the context a user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Wal(String),
    #[error("corrupt WAL entry {seq}: {reason}")]
    WalEntry { seq: u64, reason: String },
    #[error("catalog {path}: {reason}")]
    Catalog { path: PathBuf, reason: String },
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    #[error("cold store: {context}: {reason}")]
    Cold { context: String, reason: String },
    #[error("Cassandra: {context}: {reason}")]
    Cassandra { context: String, reason: String },
    #[error("Kafka: {context}: {reason}")]
    Kafka { context: String, reason: String },
    /// Another request with the same `Idempotency-Key` is being stored (cluster mode).
    #[error(
        "a request with Idempotency-Key {key:?} is being stored; retry after {retry_after_secs} s"
    )]
    KeyInProgress { key: String, retry_after_secs: u64 },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The operation exists in one mode only (e.g. `POST /v1/flush` is embedded-only).
    #[error("{0}")]
    Unsupported(String),
}
