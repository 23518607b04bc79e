//! # logsphere-engine
//!
//! The storage and query engine behind LogSphere: decoding log records into Arrow, the
//! write-ahead log, the hot buffer, the Parquet cold tier, tiering, the local catalog and
//! the DataFusion session that answers SQL over both tiers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), logsphere_engine::EngineError> {
//! use logsphere_engine::{Engine, EngineConfig};
//! let engine = Engine::open(EngineConfig::new("./logsphere-data")).await?;
//! let ctx = engine.session_context();
//! let df = ctx.sql("SELECT count(*) FROM logs").await?;
//! # Ok(()) }
//! ```

pub mod model;

mod engine;
pub mod ingest;
pub mod wal;
mod error;

pub use engine::{Engine, EngineConfig};
pub use error::EngineError;
