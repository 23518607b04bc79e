//! # logsphere-engine
//!
//! The storage and query engine behind LogSphere: decoding log records into Arrow once,
//! the write-ahead log, the hot buffer, the Parquet cold tier, tiering, the local catalog
//! and the DataFusion session that answers SQL over both tiers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use logsphere_engine::{Engine, EngineConfig, ingest::DecodeOptions};
//! let engine = Engine::open(EngineConfig::new("./logsphere-data")).await?;
//! let body = bytes::Bytes::from_static(br#"{"level":"error","message":"disk full","host":"web-1"}"#);
//! let outcome = engine.ingest(body, None, DecodeOptions::default()).await?;
//! assert_eq!(outcome.accepted, 1);
//! let batches = engine.session_context().sql("SELECT count(*) FROM logs").await?.collect().await?;
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod cluster;
pub mod cold;
pub mod compaction;
pub mod continuous;
pub mod fields;
pub mod hot;
pub mod ingest;
pub mod model;
pub mod query;
pub mod source;

pub use source::wal;

mod engine;
mod error;
mod idempotency;
mod tiering;

pub use engine::{ColdStats, Engine, EngineConfig, EngineMetrics, IngestOutcome};
pub use error::EngineError;

#[cfg(test)]
mod tests;
